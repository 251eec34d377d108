"""Refunds of paid orders (docs/products.md "Refunds"): every rule and code, the fee returned
pro rata (exact: fees returned never exceed fees taken and the last refund returns the rest),
idempotency per out_refund_no, and refunds through the store's recovery and replay. The
property: any sequence of refunds never returns more than was paid, per currency debits equal
credits, and an order refunded in full is REFUND."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import core
from core import Result
from core import replay_log
from core.machine import Machine
from core.operations import Operation
from core.order_keys import order_creates, order_id, order_pays, refund_id, refunds, token_of

SECRET = bytes(range(32))
T0 = 1_700_000_000 * 10**9
S = 10**9
DAY = 86_400 * S
CNY, USD = 156, 840
FUNDING, WALLET, MERCHANT, OTHER, FEES = 1, 2, 7, 8, 20
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": OTHER, "ledger": CNY, "code": 2},
    {"id": FEES, "ledger": CNY, "code": 6},
]


def machine(fee_bps=60, refunds_max=64):
    m = Machine(accounts_max=32, transfers_hot_max=1 << 14, pending_max=64, orders_max=64, refunds_max=refunds_max,
                secret=SECRET)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                       "amount": 10**9, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    terms = core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": FEES, "fee_bps": fee_bps,
                                      "ledger": CNY}], core.MERCHANT_DTYPE)
    assert not m.apply(Operation.set_merchants, terms, T0).any()
    return m


def paid_order(m, amount=10_000, number=b"A-1", payer=WALLET, now=T0 + S):
    m.apply(Operation.create_orders, order_creates([{"merchant_id": MERCHANT, "out_trade_no": number,
                                                     "amount": amount, "ledger": CNY}]), now)
    oid = order_id(MERCHANT, number)
    paid = m.apply(Operation.pay_orders, order_pays([{"order_id": oid, "payer_id": payer, "amount": amount,
                                                      "ledger": CNY, "token": token_of(SECRET, oid)}]), now)
    assert paid[0] == Result.ok
    return oid


def refund(m, oid, amount, number=b"R-1", now=T0 + 2 * S, **fields):
    row = dict({"order_id": oid, "merchant_id": MERCHANT, "amount": amount, "out_refund_no": number, "ledger": CNY},
               **fields)
    return [Result(code) for code in m.apply(Operation.refund_orders, refunds([row]), now)]


def balance(m, account):
    row = m.ledger.lookup_accounts([account])[0]
    return int(row["credits_posted"]) - int(row["debits_posted"])


def order(m, oid):
    return core.to_dicts(m.lookup_orders([oid]))[0]


def test_partial_then_full_refund_returns_the_fee_pro_rata():
    m = machine(fee_bps=60)
    oid = paid_order(m, 10_001)                       # fee floor(10,001 * 0.006) = 60
    assert order(m, oid)["fee"] == 60 and balance(m, MERCHANT) == 10_001 - 60
    assert refund(m, oid, 3_333) == [Result.ok]       # fee back floor(60 * 3,333 / 10,001) = 19
    first = core.to_dicts(m.lookup_refunds([refund_id(oid, b"R-1")]))[0]
    assert (first["amount"], first["fee_refunded"], first["payer_id"], first["order_id"]) == (3_333, 19, WALLET, oid)
    assert order(m, oid)["state"] == core.OrderState.SUCCESS and order(m, oid)["refunded"] == 3_333
    assert refund(m, oid, 6_668, b"R-2", now=T0 + 3 * S) == [Result.ok]  # the rest: fee back 60 - 19
    assert (order(m, oid)["state"], order(m, oid)["refunded"], order(m, oid)["refund_count"]) == (
        core.OrderState.REFUND, 10_001, 2)
    assert (balance(m, MERCHANT), balance(m, FEES), balance(m, WALLET)) == (0, 0, 10**9)
    legs = core.to_dicts(m.ledger.lookup_transfers([core.orders.leg_id(refund_id(oid, b"R-2"), 106, k) for k in (0, 1)]))
    assert [(leg["debit_account_id"], leg["credit_account_id"], leg["amount"], leg["code"]) for leg in legs] == [
        (MERCHANT, WALLET, 6_668, core.TransferCode.order_refund), (FEES, MERCHANT, 41, core.TransferCode.order_fee_refund)]
    # Retries: exists, nothing changes; other fields under the same number: exists_with_different_fields.
    before = m.ledger.accounts()
    assert refund(m, oid, 6_668, b"R-2", now=T0 + 4 * S) == [Result.exists]
    assert refund(m, oid, 1, b"R-2", now=T0 + 4 * S) == [Result.exists_with_different_fields]
    assert refund(m, oid, 1, b"R-3", now=T0 + 4 * S) == [Result.exceeds_paid_amount]
    assert np.array_equal(m.ledger.accounts(), before)


@pytest.mark.parametrize("fields,code", [
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"reserved": 1}, Result.reserved_field),
    ({"fee_refunded": 1}, Result.reserved_field),
    ({"payer_id": WALLET}, Result.reserved_field),
    ({"flags": 1}, Result.reserved_flag),
    ({"id": 0}, Result.id_must_not_be_zero),
    ({"id": (1 << 128) - 1}, Result.id_must_not_be_int_max),
    ({"amount": 0}, Result.amount_must_not_be_zero),
    ({"out_refund_no": b"R 1", "id": 5}, Result.out_refund_no_invalid),
    ({"order_id": 0, "id": 5}, Result.id_must_not_be_zero),
    ({"order_id": 77, "id": 5}, Result.order_not_found),
    ({"merchant_id": OTHER}, Result.merchant_mismatch),
    ({"id": 12345}, Result.id_mismatch),
    ({"ledger": USD}, Result.currency_mismatch),
    ({"amount": 10_001}, Result.exceeds_paid_amount),
])
def test_refusals_change_nothing(fields, code):
    m = machine()
    oid = paid_order(m)
    before, before_order = m.ledger.accounts(), order(m, oid)
    assert refund(m, oid, fields.pop("amount", 1_000), **fields) == [code]
    assert np.array_equal(m.ledger.accounts(), before) and order(m, oid) == before_order
    assert m.refunds.refund_count == 0


def test_an_unpaid_order_the_window_and_the_limits():
    m = machine(refunds_max=60)
    m.apply(Operation.create_orders, order_creates([{"merchant_id": MERCHANT, "out_trade_no": b"U-1",
                                                     "amount": 100, "ledger": CNY}]), T0 + S)
    assert refund(m, order_id(MERCHANT, b"U-1"), 10) == [Result.order_not_paid]
    oid = paid_order(m, 1_000)
    results = [refund(m, oid, 1, b"R-%d" % k, now=T0 + 2 * S + k)[0] for k in range(51)]
    assert results == [Result.ok] * 50 + [Result.refunds_per_order_limit_reached]
    other = paid_order(m, 1_000, b"A-2", now=T0 + 3 * S)
    paid_at = order(m, other)["paid_at"]
    assert refund(m, other, 1, b"S-0", now=paid_at + 365 * DAY - 1) == [Result.ok]  # the window's last ns
    assert refund(m, other, 1, b"S-1", now=paid_at + 365 * DAY) == [Result.refund_window_closed]
    results = [refund(m, other, 1, b"S-%d" % k, now=paid_at + k)[0] for k in range(2, 12)]
    assert results == [Result.refund_window_closed] * 10  # time never goes back
    third = paid_order(m, 1_000, b"A-3", now=paid_at + 366 * DAY)
    results = [refund(m, third, 1, b"T-%d" % k, now=paid_at + 366 * DAY + k)[0] for k in range(10)]
    assert results == [Result.ok] * 9 + [Result.refunds_limit_reached]  # 60 refunds held


def test_a_failing_refund_leg_undoes_it():
    m = machine()
    oid = paid_order(m, 1_000)
    # A merchant whose wallet may not go below zero, emptied after the sale, cannot refund:
    # exceeds_credits, and nothing moves (not the fee's part either).
    limited = core.accounts_from_dicts([{"id": 40, "ledger": CNY, "code": 2, "flags": 2}])
    assert not m.apply(Operation.create_accounts, limited, T0 + S).any()
    terms = core.records_from_dicts([{"merchant_id": 40, "fee_account_id": FEES, "fee_bps": 60, "ledger": CNY}],
                                    core.MERCHANT_DTYPE)
    assert not m.apply(Operation.set_merchants, terms, T0 + S).any()
    m.apply(Operation.create_orders, order_creates([{"merchant_id": 40, "out_trade_no": b"L-1", "amount": 1_000,
                                                     "ledger": CNY}]), T0 + S)
    sold = order_id(40, b"L-1")
    assert m.apply(Operation.pay_orders, order_pays([{"order_id": sold, "payer_id": WALLET, "amount": 1_000,
                                                      "ledger": CNY, "token": token_of(SECRET, sold)}]), T0 + S)[0] == 0
    drain = core.transfers_from_dicts([{"id": 600, "debit_account_id": 40, "credit_account_id": FUNDING,
                                        "amount": balance(m, 40), "ledger": CNY, "code": 5}])
    assert not m.apply(Operation.create_transfers, drain, T0 + 2 * S).any()
    before, before_order = m.ledger.accounts(), order(m, sold)
    row = {"order_id": sold, "merchant_id": 40, "amount": 1_000, "out_refund_no": b"R-1", "ledger": CNY}
    assert m.apply(Operation.refund_orders, refunds([row]), T0 + 3 * S)[0] == Result.exceeds_credits
    assert np.array_equal(m.ledger.accounts(), before) and order(m, sold) == before_order
    assert m.refunds.refund_count == 0
    # A merchant without that limit may go below zero: its refund is made, its fee comes back.
    assert refund(m, oid, 1_000, now=T0 + 3 * S) == [Result.ok]
    assert order(m, oid)["state"] == core.OrderState.REFUND


@settings(max_examples=150, deadline=None)
@given(amount=st.integers(1, 10**8), fee_bps=st.integers(0, 10_000),
       parts=st.lists(st.integers(1, 10**8), min_size=1, max_size=8))
def test_refunds_never_exceed_payments_and_fees_come_back_exactly(amount, fee_bps, parts):
    m = machine(fee_bps=fee_bps)
    oid = paid_order(m, amount)
    fee = amount * fee_bps // 10_000
    refunded = 0
    for k, part in enumerate(parts):
        result = refund(m, oid, part, b"R-%d" % k, now=T0 + (2 + k) * S)[0]
        if refunded + part > amount:
            assert result == Result.exceeds_paid_amount
            continue
        assert result == Result.ok
        refunded += part
        # Fees returned so far: exactly floor(fee * refunded / amount).
        assert balance(m, FEES) == fee - fee * refunded // amount
    state = order(m, oid)
    assert state["refunded"] == refunded <= amount
    assert state["state"] == (core.OrderState.REFUND if refunded == amount else core.OrderState.SUCCESS)
    assert balance(m, WALLET) == 10**9 - amount + refunded
    accounts = m.ledger.accounts()
    assert int(accounts["debits_posted"].sum()) == int(accounts["credits_posted"].sum())


def test_refunds_through_recovery_and_replay(tmp_path):
    source = str(tmp_path / "source")
    with core.open(source, accounts_max=32, transfers_hot_max=1 << 14, pending_max=64, orders_max=64) as store:
        secret = store.secret
        store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0)
        store.create_transfers(core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING,
                                                           "credit_account_id": WALLET, "amount": 10**9,
                                                           "ledger": CNY, "code": 4}]), T0)
        store.set_merchants(core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": FEES,
                                                      "fee_bps": 60, "ledger": CNY}], core.MERCHANT_DTYPE), T0)
        store.create_orders(order_creates([{"merchant_id": MERCHANT, "out_trade_no": b"A-1", "amount": 5_000,
                                            "ledger": CNY}]), T0 + S)
        oid = order_id(MERCHANT, b"A-1")
        assert list(store.pay_orders(order_pays([{"order_id": oid, "payer_id": WALLET, "amount": 5_000, "ledger": CNY,
                                                  "token": token_of(secret, oid)}]), T0 + S)) == [0]
        store.checkpoint()
        rows = [{"order_id": oid, "merchant_id": MERCHANT, "amount": 2_000, "out_refund_no": b"R-1", "ledger": CNY}]
        assert list(store.refund_orders(refunds(rows), T0 + 2 * S)) == [0]
        live_hash, kept = store.state_hash(), store.lookup_refunds([refund_id(oid, b"R-1")])
    with core.open(source) as store:
        assert store.recovery.replayed_batches == 1
        assert store.state_hash() == live_hash and np.array_equal(store.lookup_refunds([refund_id(oid, b"R-1")]), kept)
        store.checkpoint()
    with core.open(source) as store:
        assert store.recovery.replayed_batches == 0 and store.state_hash() == live_hash
        assert store.stats()["refunds"] == 1
    assert replay_log.run(source, str(tmp_path / "replayed"))["equal"]


def test_the_fee_comes_back_from_the_account_it_went_to():
    m = machine(fee_bps=100)
    oid = paid_order(m, 10_000)  # fee 100 to FEES
    new_fees = core.accounts_from_dicts([{"id": 21, "ledger": CNY, "code": 6, "flags": 2}])  # may not go negative
    assert not m.apply(Operation.create_accounts, new_fees, T0 + S).any()
    terms = core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": 21, "fee_bps": 100, "ledger": CNY}],
                                    core.MERCHANT_DTYPE)
    assert not m.apply(Operation.set_merchants, terms, T0 + S).any()
    assert refund(m, oid, 10_000) == [Result.ok]
    assert (balance(m, FEES), balance(m, 21), balance(m, MERCHANT)) == (0, 0, 0)
