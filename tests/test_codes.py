"""Payment codes (docs/products.md "Payment codes (built)"): issue, charge at once or held for
the user's confirmation (the no-password threshold by amount and by the day's count), confirm,
decline, revoke, the 45 s hold and the 60 s code ending by the clock, one live code per wallet,
single use, every documented result code with the ledger untouched, and codes through the
store's eviction to the cold tier, recovery after a restart and replay of the log."""

import numpy as np
import pytest

import core
from core import CloseReason, CodeState, ConfirmFlags, OrderState, Result
from core import replay_log
from core.machine import Machine
from core.operations import Operation
from core.order_keys import (
    charge_confirms, code_charges, code_issues, code_of, format_code, order_closes, order_id, parse_code, refunds,
)
from core.orders import leg_id

SECRET = bytes(range(32))
T0 = 1_700_000_000 * 10**9
S = 10**9
DAY = 86_400 * S
CNY, USD = 156, 840
FUNDING, WALLET, MERCHANT, OTHER, FEES, POOR, DOLLARS = 1, 2, 7, 8, 20, 3, 9
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": POOR, "ledger": CNY, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": OTHER, "ledger": CNY, "code": 2},
    {"id": DOLLARS, "ledger": USD, "code": 1},
    {"id": FEES, "ledger": CNY, "code": 6},
]
FUNDS = 10**9


def machine(fee_bps=60, codes_max=64):
    m = Machine(accounts_max=32, transfers_hot_max=1 << 14, pending_max=64, orders_max=64, codes_max=codes_max,
                secret=SECRET)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    terms = core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": FEES, "fee_bps": fee_bps,
                                      "ledger": CNY}], core.MERCHANT_DTYPE)
    assert not m.apply(Operation.set_merchants, terms, T0).any()
    return m


def issue(m, now, wallet=WALLET, request=1, **fields):
    reply = m.apply(Operation.issue_codes, code_issues([dict({"wallet_id": wallet, "request_id": request,
                                                              "ledger": CNY}, **fields)]), now)
    return Result(int(reply["result"][0])), int(reply["code"][0])


def charge(m, code, amount, now, number=b"P-1", merchant=MERCHANT, **fields):
    row = dict({"merchant_id": merchant, "code": code, "amount": amount, "out_trade_no": number, "ledger": CNY}, **fields)
    return Result(int(m.apply(Operation.charge_codes, code_charges([row]), now)[0]))


def confirm(m, number, now, wallet=WALLET, decline=False, merchant=MERCHANT):
    rows = [{"order_id": order_id(merchant, number), "wallet_id": wallet,
             "flags": int(ConfirmFlags.decline) if decline else 0}]
    return Result(int(m.apply(Operation.confirm_charges, charge_confirms(rows), now)[0]))


def balances(m, *accounts):
    rows = m.ledger.lookup_accounts(list(accounts))
    return [(int(r["debits_pending"]), int(r["debits_posted"]), int(r["credits_pending"]), int(r["credits_posted"]))
            for r in rows]


def order(m, number, merchant=MERCHANT):
    return core.to_dicts(m.lookup_orders([order_id(merchant, number)]))[0]


def code_record(m, code):
    return core.to_dicts(m.lookup_codes([code]))[0]


def state(m):
    """Everything a refused event must leave as it was."""
    return (m.ledger.lookup_accounts([a["id"] for a in ACCOUNTS]).tobytes(), m.ledger.transfer_count,
            m.orders.order_count, m.codes.code_count, sorted(m.hash_parts().items(), key=lambda kv: kv[0]).__repr__())


def test_issue_gives_the_documented_code_and_a_retry_the_same_one():
    m = machine()
    result, code = issue(m, T0 + S, request=42)
    assert result == Result.ok and code == code_of(SECRET, WALLET, 42)
    assert len(format_code(code)) == 18 and 10 <= code // 10**16 <= 15 and parse_code(format_code(code)) == code
    kept = code_record(m, code)
    assert (kept["state"], kept["wallet_id"], kept["request_id"], kept["expires_at"], kept["timestamp"]) == (
        CodeState.LIVE, WALLET, 42, kept["timestamp"] + 60 * S, kept["timestamp"])
    assert (kept["no_password_limit"], kept["free_payments_per_day"]) == (300_000, 10)  # the defaults
    before = state(m)
    assert issue(m, T0 + 2 * S, request=42) == (Result.exists, code)
    assert issue(m, T0 + 2 * S, request=42, no_password_limit=5) == (Result.exists_with_different_fields, 0)
    assert state(m) == before


def test_one_live_code_per_wallet_the_older_is_replaced():
    m = machine()
    _, first = issue(m, T0 + S, request=1)
    _, second = issue(m, T0 + 2 * S, request=2)
    assert code_record(m, first)["state"] == CodeState.REPLACED and code_record(m, first)["ended_at"] > 0
    assert code_record(m, second)["state"] == CodeState.LIVE and m.codes.live_count == 1
    assert charge(m, first, 100, T0 + 3 * S) == Result.code_replaced
    assert charge(m, second, 100, T0 + 3 * S) == Result.ok


def test_a_small_charge_pays_at_once_with_its_fee_and_the_code_is_single_use():
    m = machine(fee_bps=60)
    _, code = issue(m, T0 + S)
    assert charge(m, code, 10_000, T0 + 2 * S) == Result.ok
    paid = order(m, b"P-1")
    assert (paid["state"], paid["kind"], paid["payer_id"], paid["amount"], paid["fee"]) == (
        OrderState.SUCCESS, core.OrderKind.code, WALLET, 10_000, 60)
    assert int.from_bytes(bytes(paid["token"][:8]), "little") == code and paid["paid_at"] == paid["timestamp"]
    assert balances(m, WALLET, MERCHANT, FEES) == [(0, 10_000, 0, FUNDS), (0, 60, 0, 10_000), (0, 0, 0, 60)]
    kept = code_record(m, code)
    assert (kept["state"], kept["order_id"]) == (CodeState.CHARGED, order_id(MERCHANT, b"P-1"))
    assert m.ledger.lookup_transfers([leg_id(order_id(MERCHANT, b"P-1"), 113, 0)]).shape[0] == 1
    before = state(m)
    assert charge(m, code, 10_000, T0 + 3 * S) == Result.exists           # the POS's retry
    assert charge(m, code, 10_000, T0 + 3 * S, number=b"P-2") == Result.code_used
    assert charge(m, code, 9_999, T0 + 3 * S) == Result.exists_with_different_fields
    assert state(m) == before
    # A code's order is refunded as any order is.
    row = {"order_id": order_id(MERCHANT, b"P-1"), "merchant_id": MERCHANT, "amount": 10_000, "out_refund_no": b"R-1",
           "ledger": CNY}
    assert list(m.apply(Operation.refund_orders, refunds([row]), T0 + 4 * S)) == [0]
    assert order(m, b"P-1")["state"] == OrderState.REFUND
    assert balances(m, WALLET, FEES) == [(0, 10_000, 0, FUNDS + 10_000), (0, 60, 0, 60)]


def test_a_charge_above_the_limit_is_held_until_confirmed():
    m = machine(fee_bps=60)
    _, code = issue(m, T0 + S, no_password_limit=5_000)
    assert charge(m, code, 5_001, T0 + 2 * S) == Result.user_paying
    held = order(m, b"P-1")
    assert (held["state"], held["paid_at"], held["fee"], held["expires_at"]) == (
        OrderState.USERPAYING, 0, 0, held["timestamp"] + 45 * S)
    assert balances(m, WALLET, MERCHANT) == [(5_001, 0, 0, FUNDS), (0, 0, 5_001, 0)]
    assert code_record(m, code)["state"] == CodeState.CHARGED  # single use, whatever the charge becomes
    assert charge(m, code, 5_001, T0 + 3 * S) == Result.user_paying  # the POS's retry: still held
    assert confirm(m, b"P-1", T0 + 4 * S, wallet=OTHER) == Result.payer_mismatch
    assert confirm(m, b"P-1", T0 + 4 * S) == Result.ok
    paid = order(m, b"P-1")
    assert (paid["state"], paid["fee"], paid["paid_at"] > 0) == (OrderState.SUCCESS, 30, True)
    assert balances(m, WALLET, MERCHANT, FEES) == [(0, 5_001, 0, FUNDS), (0, 30, 0, 5_001), (0, 0, 0, 30)]
    assert confirm(m, b"P-1", T0 + 5 * S) == Result.exists
    assert confirm(m, b"P-1", T0 + 5 * S, decline=True) == Result.order_paid
    assert charge(m, code, 5_001, T0 + 6 * S) == Result.exists
    assert m.orders.open_count == 0


def test_the_eleventh_payment_of_the_day_is_held_and_the_count_restarts_tomorrow():
    m = machine()
    now = T0 + S
    for k in range(10):
        _, code = issue(m, now, request=100 + k)
        assert charge(m, code, 100, now + 1, number=b"D-%d" % k) == Result.ok
        now += S
    _, code = issue(m, now, request=200)
    assert charge(m, code, 100, now + 1, number=b"D-10") == Result.user_paying
    assert confirm(m, b"D-10", now + 2) == Result.ok
    tomorrow = (now // DAY + 1) * DAY
    _, code = issue(m, tomorrow, request=300)
    assert charge(m, code, 100, tomorrow + 1, number=b"E-0") == Result.ok
    assert int(m.codes.wallet_state(1)["payments_today"]) == 1  # WALLET is the second account


def test_decline_revoke_and_timeout_each_void_the_hold():
    m = machine()
    numbers = {b"H-decline": 1, b"H-revoke": 2, b"H-timeout": 3}
    for number, request in numbers.items():
        _, code = issue(m, T0 + request * S, request=request)
        assert charge(m, code, 400_000, T0 + request * S + 1, number=number) == Result.user_paying
    assert balances(m, WALLET)[0][0] == 3 * 400_000
    assert confirm(m, b"H-decline", T0 + 10 * S, decline=True) == Result.ok
    assert confirm(m, b"H-decline", T0 + 10 * S, decline=True) == Result.exists
    assert confirm(m, b"H-decline", T0 + 10 * S) == Result.order_closed
    close = order_closes([{"order_id": order_id(MERCHANT, b"H-revoke"), "merchant_id": MERCHANT}])
    assert list(m.apply(Operation.close_orders, close, T0 + 11 * S)) == [0]
    assert balances(m, WALLET)[0][0] == 400_000 and m.orders.next_expiry_ns == order(m, b"H-timeout")["expires_at"]
    # 45 s after its charge, the clock alone ends the last hold: its order and its pending leg.
    m.apply(Operation.create_accounts, [], order(m, b"H-timeout")["expires_at"])
    assert balances(m, WALLET, MERCHANT) == [(0, 0, 0, FUNDS), (0, 0, 0, 0)]
    reasons = {number: (order(m, number)["state"], order(m, number)["close_reason"]) for number in numbers}
    assert reasons == {b"H-decline": (OrderState.CLOSED, CloseReason.declined),
                       b"H-revoke": (OrderState.CLOSED, CloseReason.revoked),
                       b"H-timeout": (OrderState.CLOSED, CloseReason.timeout)}
    assert confirm(m, b"H-timeout", T0 + 100 * S) == Result.order_expired
    assert charge(m, 11 * 10**16, 400_000, T0 + 100 * S, number=b"H-timeout") == Result.exists_with_different_fields
    assert m.orders.open_count == 0 and m.ledger.pending_count <= 3


def test_a_code_ends_after_60_seconds_by_the_clock():
    m = machine()
    _, code = issue(m, T0 + S)
    expires_at = code_record(m, code)["expires_at"]
    assert m.next_expiry_ns == expires_at and m.codes.live_count == 1
    assert charge(m, code, 100, expires_at) == Result.code_expired  # (its batch began before, at expires_at)
    assert code_record(m, code)["state"] == CodeState.EXPIRED and m.codes.live_count == 0
    assert int(m.codes.wallet_state(1)["live_code"]) == 0
    assert m.codes.next_expiry_ns == 0


def test_a_failed_charge_leaves_the_code_live_and_nothing_changed():
    m = machine()
    _, poor_code = issue(m, T0 + S, wallet=POOR, request=9)
    before = state(m)
    assert charge(m, poor_code, 100, T0 + 2 * S) == Result.exceeds_credits
    assert state(m) == before and code_record(m, poor_code)["state"] == CodeState.LIVE


@pytest.mark.parametrize("fields,expected", [
    ({"code": 10**17 - 1}, Result.code_invalid),
    ({"code": 16 * 10**16}, Result.code_invalid),
    ({"code": 11 * 10**16 + 1}, Result.code_not_found),
    ({"merchant_id": 99, "order_id": order_id(99, b"P-1")}, Result.merchant_not_found),
    ({"merchant_id": DOLLARS, "order_id": order_id(DOLLARS, b"P-1")}, Result.currency_mismatch),
    ({"ledger": USD}, Result.currency_mismatch),
    ({"order_id": order_id(MERCHANT, b"P-2")}, Result.id_mismatch),
    ({"amount": 0}, Result.amount_must_not_be_zero),
    ({"amount": 2**64 - 1}, Result.exceeds_credits),
    ({"out_trade_no": b"bad number"}, Result.out_trade_no_invalid),
    ({"flags": 1}, Result.reserved_flag),
    ({"flags": 1 << 15}, Result.forbidden),
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"merchant_id": WALLET, "order_id": order_id(WALLET, b"P-1")}, Result.accounts_must_be_different),
])
def test_bad_charges_answer_their_code_and_change_nothing(fields, expected):
    m = machine()
    _, code = issue(m, T0 + S)
    row = dict({"merchant_id": MERCHANT, "code": code, "amount": 100, "out_trade_no": b"P-1", "ledger": CNY}, **fields)
    if "order_id" not in fields and row["out_trade_no"] != b"bad number":
        row["order_id"] = order_id(row["merchant_id"], row["out_trade_no"])
    elif "order_id" not in fields:
        row["order_id"] = order_id(MERCHANT, b"P-1")
    before = state(m)
    batch = code_charges([row])
    assert Result(int(m.apply(Operation.charge_codes, batch, T0 + 2 * S)[0])) == expected
    assert state(m) == before and code_record(m, code)["state"] == CodeState.LIVE


@pytest.mark.parametrize("fields,expected", [
    ({"wallet_id": 99}, Result.payer_not_found),
    ({"ledger": USD}, Result.currency_mismatch),
    ({"ledger": 0}, Result.ledger_must_not_be_zero),
    ({"request_id": 0}, Result.id_must_not_be_zero),
    ({"flags": 2}, Result.reserved_flag),
    ({"timestamp": 5}, Result.timestamp_must_be_zero),
])
def test_bad_issues_answer_their_code_and_change_nothing(fields, expected):
    m = machine()
    before = state(m)
    assert issue(m, T0 + S, **fields) == (expected, 0)
    assert state(m) == before


def test_bad_confirms_answer_their_code():
    m = machine()
    assert confirm(m, b"none", T0 + S) == Result.order_not_found
    m.apply(Operation.create_orders, core.order_keys.order_creates([{"merchant_id": MERCHANT, "out_trade_no": b"Q-1",
                                                                      "amount": 100, "ledger": CNY}]), T0 + S)
    assert confirm(m, b"Q-1", T0 + 2 * S) == Result.order_not_user_paying
    rows = charge_confirms([{"order_id": order_id(MERCHANT, b"Q-1"), "wallet_id": WALLET, "flags": 4}])
    assert list(m.apply(Operation.confirm_charges, rows, T0 + 2 * S)) == [Result.reserved_flag]


def test_pay_orders_cannot_pay_a_code_order_with_its_code():
    m = machine()
    _, code = issue(m, T0 + S, no_password_limit=10)
    assert charge(m, code, 100, T0 + 2 * S) == Result.user_paying
    oid = order_id(MERCHANT, b"P-1")
    pay = core.order_keys.order_pays([{"order_id": oid, "payer_id": OTHER, "amount": 100, "ledger": CNY,
                                        "token": code.to_bytes(8, "little") + bytes(2)}])
    assert list(m.apply(Operation.pay_orders, pay, T0 + 3 * S)) == [Result.order_token_invalid]


def test_a_client_transfer_cannot_post_or_void_a_hold():
    m = machine()
    _, code = issue(m, T0 + S, no_password_limit=10)
    assert charge(m, code, 100, T0 + 2 * S) == Result.user_paying
    pending = leg_id(order_id(MERCHANT, b"P-1"), 113, 0)
    void = core.transfers_from_dicts([{"id": 77, "pending_id": pending, "flags": int(core.TransferFlags.void_pending)}])
    assert list(m.apply(Operation.create_transfers, void, T0 + 3 * S)) == [Result.id_reserved]
    assert order(m, b"P-1")["state"] == OrderState.USERPAYING


def test_codes_limit_reached_past_the_live_codes_a_table_holds():
    m = machine(codes_max=4)  # live codes at most 4 - min(8190, 2) = 2
    wallets = [{"id": 40 + k, "ledger": CNY, "code": 1} for k in range(3)]
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(wallets), T0).any()
    results = [issue(m, T0 + S, wallet=40 + k, request=k + 1)[0] for k in range(3)]
    assert results == [Result.ok, Result.ok, Result.codes_limit_reached]


def _store_day(store):
    """A store's day of codes: issued, charged at once, held then confirmed, held then left."""
    store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0)
    store.create_transfers(core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING,
                                                       "credit_account_id": WALLET, "amount": FUNDS,
                                                       "ledger": CNY, "code": 4}]), T0)
    store.set_merchants(core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": FEES, "fee_bps": 60,
                                                  "ledger": CNY}], core.MERCHANT_DTYPE), T0)
    codes = []
    for k in range(40):  # more codes and orders than the tables hold: evicted and loaded back
        now = T0 + (k + 1) * S
        reply = store.issue_codes(code_issues([{"wallet_id": WALLET, "request_id": k + 1, "ledger": CNY,
                                                "no_password_limit": 1_000, "free_payments_per_day": 1_000}]), now)
        assert reply["result"][0] == 0
        codes.append(int(reply["code"][0]))
        amount = 2_000 if k % 4 == 0 else 100
        result = store.charge_codes(code_charges([{"merchant_id": MERCHANT, "code": codes[-1], "amount": amount,
                                                   "out_trade_no": b"S-%d" % k, "ledger": CNY}]), now + 1)
        assert result[0] in (Result.ok, Result.user_paying)
        if k % 8 == 0 and result[0] == Result.user_paying:
            assert store.confirm_charges(charge_confirms([{"order_id": order_id(MERCHANT, b"S-%d" % k),
                                                           "wallet_id": WALLET}]), now + 2)[0] == 0
    return codes


def test_codes_through_eviction_recovery_and_replay(tmp_path):
    source = str(tmp_path / "source")
    with core.open(source, accounts_max=32, transfers_hot_max=1 << 14, pending_max=64, orders_max=16,
                   codes_max=8, secret=SECRET) as store:
        codes = _store_day(store)
        assert store.stats()["codes"] == 40 and store.stats()["codes_resident"] <= 8
        first = store.lookup_codes([codes[0]])  # long evicted: from the cold tier
        assert first.shape[0] == 1 and first["state"][0] == CodeState.CHARGED
        again = store.issue_codes(code_issues([{"wallet_id": WALLET, "request_id": 1, "ledger": CNY,
                                                "no_password_limit": 1_000, "free_payments_per_day": 1_000}]),
                                  T0 + 100 * S)
        assert (again["result"][0], int(again["code"][0])) == (Result.exists, codes[0])  # loaded back to answer
        store.checkpoint()
        late = store.charge_codes(code_charges([{"merchant_id": MERCHANT, "code": codes[0], "amount": 100,
                                                 "out_trade_no": b"S-late", "ledger": CNY}]), T0 + 101 * S)
        assert late[0] == Result.code_used
        live_hash, kept = store.state_hash(), store.lookup_codes(codes)
    with core.open(source) as store:
        assert store.recovery.replayed_batches >= 1
        assert store.state_hash() == live_hash and np.array_equal(store.lookup_codes(codes), kept)
    assert replay_log.run(source, str(tmp_path / "replayed"))["equal"]


def test_a_retried_charge_whose_hold_has_ended_answers_order_expired():
    m = machine()
    _, code = issue(m, T0 + S, no_password_limit=10)
    assert charge(m, code, 100, T0 + 2 * S) == Result.user_paying
    expires_at = order(m, b"P-1")["expires_at"]
    # A batch that starts before the hold's end, its second event at it: the ledger's pending leg
    # ends at the next batch start, as does the order; the retry already says it is over.
    rows = [{"merchant_id": MERCHANT, "code": code, "amount": 100, "out_trade_no": b"P-1", "ledger": CNY}] * 2
    assert list(m.apply(Operation.charge_codes, code_charges(rows), expires_at - 4)) == [
        Result.user_paying, Result.order_expired]
    assert confirm(m, b"P-1", expires_at) == Result.order_expired  # (that batch's start closed it)
    assert order(m, b"P-1")["close_reason"] == CloseReason.timeout
