"""Merchant-presented QR orders (docs/products.md "Orders: the reference"): every rule and
result code on the machine (``core.Machine``), the store's log, checkpoint, recovery and
replay, and the client over a real server. The model comparison and the money properties are
in tests/test_order_properties.py.
"""

import asyncio

import numpy as np
import pytest

import core
from core import Result
from core.machine import Machine
from core.operations import Operation
from core.order_keys import (
    order_closes, order_creates, order_id, order_pays, parse_qr_payload, qr_payload, token_of,
)
from core import replay_log

SECRET = bytes(range(32))
T0 = 1_700_000_000 * 10**9
S = 10**9
CNY, USD = 156, 840
FUNDING, WALLET, POOR, MERCHANT, OTHER_MERCHANT, USD_WALLET, CLOSED_MERCHANT = 1, 2, 3, 7, 8, 9, 10
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": POOR, "ledger": CNY, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": OTHER_MERCHANT, "ledger": CNY, "code": 2},
    {"id": USD_WALLET, "ledger": USD, "code": 1},
    {"id": CLOSED_MERCHANT, "ledger": CNY, "code": 2, "flags": 8},
]


def machine(orders_max=64):
    m = Machine(accounts_max=32, transfers_hot_max=4096, pending_max=64, orders_max=orders_max, secret=SECRET)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                       "amount": 10_000, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    return m


def order(out_trade_no=b"A-1", merchant=MERCHANT, amount=2_500, **more):
    return dict({"merchant_id": merchant, "out_trade_no": out_trade_no, "amount": amount, "ledger": CNY}, **more)


def create(m, *rows, now=T0 + S):
    replies = m.apply(Operation.create_orders, order_creates(rows), now)
    return [Result(code) for code in replies["result"]], [bytes(token) for token in replies["token"]]


def pay(m, *rows, now=T0 + 2 * S):
    return [Result(code) for code in m.apply(Operation.pay_orders, order_pays(rows), now)]


def close(m, *rows, now=T0 + 2 * S):
    return [Result(code) for code in m.apply(Operation.close_orders, order_closes(rows), now)]


def payment(out_trade_no=b"A-1", payer=WALLET, amount=2_500, merchant=MERCHANT, **more):
    oid = order_id(merchant, out_trade_no)
    return dict({"order_id": oid, "payer_id": payer, "amount": amount, "ledger": CNY,
                 "token": token_of(SECRET, oid)}, **more)


def state(m):
    orders = m.orders.lookup_orders([order_id(MERCHANT, b"A-1"), order_id(MERCHANT, b"A-2")])
    return m.ledger.accounts().tobytes(), orders.tobytes(), m.ledger.transfer_count, m.orders.order_count


def balance(m, account):
    row = m.ledger.lookup_accounts([account])[0]
    return int(row["credits_posted"]) - int(row["debits_posted"])


def test_create_pay_and_retry():
    m = machine()
    results, tokens = create(m, order())
    oid = order_id(MERCHANT, b"A-1")
    assert results == [Result.ok] and tokens[0] == token_of(SECRET, oid)
    assert parse_qr_payload(qr_payload(oid, tokens[0])) == (oid, tokens[0])
    found = core.to_dicts(m.lookup_orders([oid]))[0]
    assert (found["state"], found["amount"], found["merchant_id"], found["timestamp"]) == (
        core.OrderState.NOTPAY, 2_500, MERCHANT, T0 + S)
    assert found["expires_at"] == T0 + S + 7_200 * S and found["token"] == tokens[0]
    assert pay(m, payment()) == [Result.ok]
    assert (balance(m, WALLET), balance(m, MERCHANT)) == (7_500, 2_500)
    found = core.to_dicts(m.lookup_orders([oid]))[0]
    assert (found["state"], found["payer_id"], found["paid_at"]) == (core.OrderState.SUCCESS, WALLET, T0 + 2 * S)
    # The payment is a real transfer: code order_payment, user_data_128 the order, a derived id.
    leg = core.to_dicts(m.ledger.lookup_transfers([core.orders.leg_id(oid, Operation.pay_orders, 0)]))[0]
    assert (leg["debit_account_id"], leg["credit_account_id"], leg["amount"], leg["code"], leg["user_data_128"]) == (
        WALLET, MERCHANT, 2_500, core.TransferCode.order_payment, oid)
    before = state(m)
    # Retries change nothing: the same create is exists (with the token again), the same payment exists.
    results, tokens = create(m, order(), now=T0 + 3 * S)
    assert results == [Result.exists] and tokens[0] == token_of(SECRET, oid)
    assert pay(m, payment(), now=T0 + 3 * S) == [Result.exists]
    assert state(m)[:2] == before[:2] and state(m)[3] == before[3]
    # Another payer, or the merchant closing it, is told it is paid.
    assert pay(m, payment(payer=POOR)) == [Result.order_paid]
    assert close(m, {"order_id": oid, "merchant_id": MERCHANT}) == [Result.order_paid]
    assert state(m)[:2] == before[:2]


@pytest.mark.parametrize("fields,code", [
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"reserved": 1}, Result.reserved_field),
    ({"flags": 1}, Result.reserved_flag),
    ({"id": 0}, Result.id_must_not_be_zero),
    ({"id": (1 << 128) - 1}, Result.id_must_not_be_int_max),
    ({"amount": 0}, Result.amount_must_not_be_zero),
    ({"ledger": 0}, Result.ledger_must_not_be_zero),
    ({"out_trade_no": b"A 1", "id": 5}, Result.out_trade_no_invalid),
    ({"out_trade_no": b"", "id": 5}, Result.out_trade_no_invalid),
    ({"out_trade_no": b"A\x001", "id": 5}, Result.out_trade_no_invalid),
    ({"expire_after_s": 59}, Result.expire_after_out_of_range),
    ({"expire_after_s": 90 * 86_400 + 1}, Result.expire_after_out_of_range),
    ({"merchant_id": 999}, Result.merchant_not_found),
    ({"ledger": USD}, Result.currency_mismatch),
    ({"id": 12345}, Result.id_mismatch),
])
def test_create_refusals_leave_everything_untouched(fields, code):
    m = machine()
    before = state(m)
    assert create(m, order(**fields))[0] == [code]
    assert state(m)[:2] == before[:2] and m.orders.order_count == 0


def test_create_duplicates_and_the_limit():
    # Unpaid orders are kept from the room a batch's orders need: half of a small table.
    m = machine(orders_max=4)
    assert m.orders.open_max == 2
    assert create(m, order(), order(b"A-2"))[0] == [Result.ok, Result.ok]
    assert create(m, order(amount=1))[0] == [Result.exists_with_different_fields]
    assert create(m, order(expire_after_s=60))[0] == [Result.exists_with_different_fields]
    assert create(m, order(description_code=3))[0] == [Result.exists_with_different_fields]
    assert create(m, order(expire_after_s=7_200))[0] == [Result.exists]  # 0 means 7,200
    assert create(m, order(b"A-3"))[0] == [Result.orders_limit_reached]
    assert m.orders.order_count == 2


@pytest.mark.parametrize("fields,code", [
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"reserved": 1}, Result.reserved_field),
    ({"reserved_a": 1}, Result.reserved_field),
    ({"flags": 1}, Result.reserved_flag),
    ({"order_id": 0}, Result.id_must_not_be_zero),
    ({"order_id": 77}, Result.order_not_found),
    ({"token": bytes(10)}, Result.order_token_invalid),
    ({"amount": 2_499}, Result.amount_mismatch),
    ({"ledger": USD}, Result.currency_mismatch),
    ({"payer_id": 999}, Result.payer_not_found),
    ({"payer_id": MERCHANT}, Result.accounts_must_be_different),
    ({"payer_id": USD_WALLET}, Result.currency_mismatch),
    ({"payer_id": POOR}, Result.exceeds_credits),          # the wallet has not the funds
])
def test_pay_refusals_leave_everything_untouched(fields, code):
    m = machine()
    assert create(m, order())[0] == [Result.ok]
    before = state(m)
    assert pay(m, payment(**fields)) == [code]
    assert state(m)[:2] == before[:2]
    assert core.to_dicts(m.lookup_orders([order_id(MERCHANT, b"A-1")]))[0]["state"] == core.OrderState.NOTPAY


def test_a_closed_merchant_cannot_be_paid_and_nothing_moves():
    m = machine()
    assert create(m, order(merchant=CLOSED_MERCHANT))[0] == [Result.ok]
    before = m.ledger.accounts()
    assert pay(m, payment(merchant=CLOSED_MERCHANT)) == [Result.credit_account_closed]
    assert np.array_equal(m.ledger.accounts(), before)


def test_close_and_its_refusals():
    m = machine()
    assert create(m, order(), order(b"A-2"))[0] == [Result.ok, Result.ok]
    oid = order_id(MERCHANT, b"A-1")
    assert close(m, {"order_id": oid, "merchant_id": OTHER_MERCHANT}) == [Result.merchant_mismatch]
    assert close(m, {"order_id": 77, "merchant_id": MERCHANT}) == [Result.order_not_found]
    assert close(m, {"order_id": oid, "merchant_id": MERCHANT, "reserved": 1}) == [Result.reserved_field]
    assert close(m, {"order_id": oid, "merchant_id": MERCHANT}, now=T0 + 10 * S) == [Result.ok]
    assert close(m, {"order_id": oid, "merchant_id": MERCHANT}) == [Result.exists]
    found = core.to_dicts(m.lookup_orders([oid]))[0]
    assert (found["state"], found["close_reason"], found["closed_at"]) == (
        core.OrderState.CLOSED, core.CloseReason.merchant, T0 + 10 * S)
    assert pay(m, payment()) == [Result.order_closed]
    assert balance(m, MERCHANT) == 0


def test_orders_expire_by_the_engine_clock_before_any_batch():
    m = machine()
    assert create(m, order(expire_after_s=60), order(b"A-2", expire_after_s=120))[0] == [Result.ok, Result.ok]
    assert m.next_expiry_ns == T0 + S + 60 * S
    # A ledger batch (empty) at the first expiry closes the first order, not the second.
    m.apply(Operation.create_transfers, np.empty(0, core.TRANSFER_DTYPE), T0 + 61 * S)
    first, second = core.to_dicts(m.lookup_orders([order_id(MERCHANT, b"A-1"), order_id(MERCHANT, b"A-2")]))
    assert (first["state"], first["close_reason"], first["closed_at"]) == (
        core.OrderState.CLOSED, core.CloseReason.expired, T0 + 61 * S)
    second_expires_at = T0 + S + 4 + 120 * S  # the second event of its batch: 4 timestamps later
    assert second["state"] == core.OrderState.NOTPAY and m.next_expiry_ns == second_expires_at
    assert pay(m, payment(), now=T0 + 62 * S) == [Result.order_expired]
    # Due within a batch's time but after its base: refused as expired, closed by the next batch.
    base = second_expires_at - 3
    assert pay(m, payment(b"nothing"), payment(b"A-2"), now=base) == [Result.order_not_found, Result.order_expired]
    assert m.next_expiry_ns == second_expires_at
    m.apply(Operation.create_accounts, np.empty(0, core.ACCOUNT_DTYPE), base)
    assert m.next_expiry_ns == 0 and balance(m, MERCHANT) == 0
    second = core.to_dicts(m.lookup_orders([order_id(MERCHANT, b"A-2")]))[0]
    assert (second["state"], second["closed_at"]) == (core.OrderState.CLOSED, second_expires_at)


def test_a_batch_reserves_four_timestamps_per_event():
    m = machine()
    last = m.ledger.last_timestamp
    create(m, order(), order(b"A-2"), now=0)  # a clock behind the engine: time still moves on
    assert m.ledger.last_timestamp == last + 8
    found = m.lookup_orders([order_id(MERCHANT, b"A-1"), order_id(MERCHANT, b"A-2")])
    assert list(found["timestamp"]) == [last + 1, last + 5]


def test_bad_batches_raise_before_anything_changes():
    m = machine()
    before = state(m)
    with pytest.raises(TypeError):
        m.apply(Operation.create_orders, core.transfers_from_dicts([{"id": 1}]), T0)
    with pytest.raises(ValueError):
        m.apply(Operation.pay_orders, b"\0" * 100, T0)
    with pytest.raises(ValueError):
        m.apply(Operation.lookup_orders, b"", T0)
    with pytest.raises(ValueError):
        m.orders.apply(Operation.create_transfers, b"", T0)
    assert state(m) == before


# ---------------------------------------------------------------------------- the store

def _store_scenario(store):
    store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0)
    store.create_transfers(core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING,
                                                       "credit_account_id": WALLET, "amount": 10_000,
                                                       "ledger": CNY, "code": 4}]), T0)
    replies = store.create_orders(order_creates([order(), order(b"A-2", expire_after_s=60), order(b"A-3")]), T0 + S)
    assert list(replies["result"]) == [0, 0, 0]
    secret = store.secret
    oid = order_id(MERCHANT, b"A-1")
    assert bytes(replies["token"][0]) == token_of(secret, oid)
    assert list(store.pay_orders(order_pays([dict(payment(), token=token_of(secret, oid))]), T0 + 2 * S)) == [0]
    assert list(store.close_orders(order_closes([{"order_id": order_id(MERCHANT, b"A-3"),
                                                  "merchant_id": MERCHANT}]), T0 + 3 * S)) == [0]


def test_the_store_logs_recovers_and_replays_orders(tmp_path):
    source = str(tmp_path / "source")
    ids = [order_id(MERCHANT, name) for name in (b"A-1", b"A-2", b"A-3")]
    with core.open(source, accounts_max=32, transfers_hot_max=4096, pending_max=64, orders_max=64) as store:
        _store_scenario(store)
        assert store.next_expiry_ns == T0 + S + 4 + 60 * S  # the second event of its batch
        assert store.pulse(T0 + 61 * S) is None  # not yet due
        assert store.pulse(T0 + 62 * S) is not None  # the idle pulse closes the expired order
        states = list(store.lookup_orders(ids)["state"])
        assert states == [core.OrderState.SUCCESS, core.OrderState.CLOSED, core.OrderState.CLOSED]
        live_hash, orders = store.state_hash(), store.lookup_orders(ids)
        secret = store.secret
    with core.open(source) as store:  # recovered from the log (no checkpoint was due)
        assert store.recovery.replayed_batches == 6 and store.secret == secret
        assert store.state_hash() == live_hash and np.array_equal(store.lookup_orders(ids), orders)
        store.checkpoint()
    with core.open(source) as store:  # from the checkpoint
        assert store.recovery.checkpoint_sequence == 6 and store.recovery.replayed_batches == 0
        assert store.state_hash() == live_hash and np.array_equal(store.lookup_orders(ids), orders)
    result = replay_log.run(source, str(tmp_path / "replayed"))  # the copy gets the same secret
    assert result["equal"] and result["replayed_hash"] == live_hash


def test_the_state_hash_covers_the_orders(tmp_path):
    hashes = []
    for close_it in (False, True):
        with core.open(str(tmp_path / f"s{close_it}"), accounts_max=32, transfers_hot_max=4096, pending_max=64,
                       orders_max=64, secret=SECRET) as store:
            store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0)
            store.create_orders(order_creates([order()]), T0 + S)
            rows = [{"order_id": order_id(MERCHANT, b"A-1"), "merchant_id": MERCHANT if close_it else OTHER_MERCHANT}]
            store.close_orders(order_closes(rows), T0 + 2 * S)
            hashes.append(store.state_hash())
    assert hashes[0] != hashes[1]


def test_the_secret_is_fixed_at_creation(tmp_path):
    with core.open(str(tmp_path), accounts_max=8, transfers_hot_max=4096, pending_max=8) as store:
        secret = store.secret
    assert len(secret) == 32
    with pytest.raises(core.StoreError, match="secret"):
        core.open(str(tmp_path), secret=bytes(32))
    with core.open(str(tmp_path), secret=secret) as store:
        assert store.secret == secret


# ---------------------------------------------------------------------------- over the wire

def test_orders_over_the_protocol(tmp_path):
    from engine.client import Client
    from engine.server import Server
    secrets = {1: bytes.fromhex("a1" * 32)}

    async def scenario():
        store = core.open(str(tmp_path), accounts_max=32, transfers_hot_max=4096, pending_max=64, orders_max=64)
        server = Server(store, secrets)
        port = await server.start("127.0.0.1", 0)
        client = await Client.connect("127.0.0.1", port, client_id=1, secret=secrets[1])
        try:
            assert not (await client.create_accounts(core.accounts_from_dicts(ACCOUNTS))).any()
            assert not (await client.create_transfers(core.transfers_from_dicts([
                {"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET, "amount": 10_000,
                 "ledger": CNY, "code": 4}]))).any()
            replies = await client.create_orders(order_creates([order(), order(b"A-2"), order(amount=1)]))
            assert replies.dtype == core.ORDER_CREATED_DTYPE
            assert [Result(code) for code in replies["result"]] == [Result.ok, Result.ok,
                                                                     Result.exists_with_different_fields]
            oid, token = parse_qr_payload(qr_payload(order_id(MERCHANT, b"A-1"), bytes(replies["token"][0])))
            paid = await client.pay_orders(order_pays([{"order_id": oid, "payer_id": WALLET, "amount": 2_500,
                                                        "ledger": CNY, "token": token}]))
            assert list(paid) == [Result.ok]
            closed = await client.close_orders(order_closes([{"order_id": order_id(MERCHANT, b"A-2"),
                                                              "merchant_id": MERCHANT}]))
            assert list(closed) == [Result.ok]
            found = await client.lookup_orders([oid, order_id(MERCHANT, b"A-2"), 12345])
            assert list(found["state"]) == [core.OrderState.SUCCESS, core.OrderState.CLOSED]
            accounts = await client.lookup_accounts([MERCHANT])
            assert int(accounts["credits_posted"][0]) == 2_500
        finally:
            client.close()
            await server.close()
            store.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_product_modules_examples_run():
    import doctest

    from core import machine, merchants, order_keys, orders, tiers
    for module in (machine, merchants, order_keys, orders, tiers):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ---------------------------------------------------------------------------- review findings

def test_a_refused_batch_expires_nothing():
    # Orders expire when a batch's base timestamp is assigned, after its checks: a batch that
    # raises changes nothing, so replay (which never sees it) agrees with what was answered.
    m = machine()
    assert create(m, order(expire_after_s=60))[0] == [Result.ok]
    with pytest.raises(ValueError):
        m.apply(Operation.create_accounts, b"\0" * 100, T0 + 100 * S)
    with pytest.raises(ValueError):
        m.apply(Operation.create_transfers, np.zeros(1, core.TRANSFER_DTYPE), 1 << 63)
    assert core.to_dicts(m.lookup_orders([order_id(MERCHANT, b"A-1")]))[0]["state"] == core.OrderState.NOTPAY
    assert pay(m, payment(), now=T0 + 30 * S) == [Result.ok]


def test_a_client_transfer_cannot_take_a_legs_id():
    m = machine()
    assert create(m, order())[0] == [Result.ok]
    leg = core.orders.leg_id(order_id(MERCHANT, b"A-1"), Operation.pay_orders, 0)
    assert leg >> 112 == 0xFFFE
    squat = core.transfers_from_dicts([{"id": leg, "debit_account_id": FUNDING, "credit_account_id": MERCHANT,
                                        "amount": 1, "ledger": CNY, "code": 4}])
    assert [Result(code) for code in m.apply(Operation.create_transfers, squat, T0 + S)] == [Result.id_reserved]
    assert pay(m, payment()) == [Result.ok]
    assert core.to_dicts(m.ledger.lookup_transfers([leg]))[0]["debit_account_id"] == WALLET


def test_a_product_batch_whose_legs_do_not_fit_the_hot_window_is_refused_whole(tmp_path):
    with core.open(str(tmp_path), accounts_max=32, transfers_hot_max=64, cold_epoch_transfers=16, pending_max=8,
                   orders_max=64, secret=SECRET) as store:
        store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0)
        store.create_transfers(core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING,
                                                           "credit_account_id": WALLET, "amount": 10_000,
                                                           "ledger": CNY, "code": 4}]), T0)
        numbers = [b"B-%d" % k for k in range(25)]
        assert not store.create_orders(order_creates([order(n, amount=1) for n in numbers]), T0 + S)["result"].any()
        before = store.state_hash()
        pays = order_pays([payment(n, amount=1) for n in numbers])  # 25 events, up to 50 legs > 48 of room
        with pytest.raises(ValueError, match="needs room for 50 transfers"):
            store.pay_orders(pays, T0 + 2 * S)
        assert store.state_hash() == before
        assert not store.pay_orders(pays[:24], T0 + 2 * S).any()  # 48 legs: they fit
