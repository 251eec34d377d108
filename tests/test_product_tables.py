"""The product tables' tiers (docs/tables.md "The write-back table"): a store whose order and
refund tables hold a handful of records in memory answers exactly as one that holds them all,
reaches the same state hash, and recovers to it; what leaves memory is found again (in the
outbox, then in the cold side) by a payment, a close, a refund, a retried create and a lookup.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import core
from core import Result
from core import store as store_module
from core.operations import Operation
from core.order_keys import order_closes, order_creates, order_id, order_pays, refund_id, refunds, token_of

SECRET = bytes(range(32))
T0 = 1_700_000_000 * 10**9
S = 10**9
HOUR = 3_600 * S
CNY = 156
FUNDING, WALLET, MERCHANT, FEES = 1, 2, 7, 20
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": FEES, "ledger": CNY, "code": 6},
]
SMALL = {"orders_max": 8, "refunds_max": 4}       # 4 unpaid orders at most; 4 events per batch
EVENTS = 4


@pytest.fixture(params=["flush at once", "flush by the quarter outbox"])
def outbox_flush(request, monkeypatch):
    """Outbox entries go to the cold side after every batch (so that the cold side is read), or
    as the server does it (they mostly stay in the outbox here)."""
    if request.param == "flush at once":
        monkeypatch.setattr(store_module, "_OUTBOX_FLUSH_ENTRIES", 1)
    return request.param
LARGE = {"orders_max": 4_096, "refunds_max": 4_096}


def open_store(path, limits, **options):
    return core.open(str(path), accounts_max=16, transfers_hot_max=1 << 14, cold_epoch_transfers=256,
                     id_filter_bytes=4096, secret=SECRET, **limits, **options)


def set_up(store):
    assert not store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                       "amount": 10**12, "ledger": CNY, "code": 4}])
    assert not store.create_transfers(fund, T0).any()
    terms = core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": FEES, "fee_bps": 60,
                                      "ledger": CNY}], core.MERCHANT_DTYPE)
    assert not store.set_merchants(terms, T0).any()


def number(n):
    return b"N-%d" % n


def batch_of(step):
    """The operation and batch of one generated step."""
    kind, items = step
    if kind == "create":
        return Operation.create_orders, order_creates(
            [{"merchant_id": MERCHANT, "out_trade_no": number(n), "amount": 1_000 + n, "ledger": CNY} for n in items])
    if kind == "pay":
        return Operation.pay_orders, order_pays(
            [{"order_id": order_id(MERCHANT, number(n)), "payer_id": WALLET, "amount": 1_000 + n, "ledger": CNY,
              "token": token_of(SECRET, order_id(MERCHANT, number(n)))} for n in items])
    if kind == "close":
        return Operation.close_orders, order_closes(
            [{"order_id": order_id(MERCHANT, number(n)), "merchant_id": MERCHANT} for n in items])
    return Operation.refund_orders, refunds(
        [{"order_id": order_id(MERCHANT, number(n)), "merchant_id": MERCHANT, "amount": amount,
          "out_refund_no": b"R-%d" % r, "ledger": CNY} for n, amount, r in items])


def replies(store, operation, batch, now):
    out = store.submit(operation, batch, now).result()
    return out.tobytes()  # results (and create's tokens), whatever the reply type


ORDER_NUMBERS = st.integers(0, 24)
STEPS = st.lists(st.one_of(
    st.tuples(st.just("sale"), st.lists(ORDER_NUMBERS, min_size=1, max_size=EVENTS)),  # create, then pay
    st.tuples(st.just("sale"), st.lists(ORDER_NUMBERS, min_size=1, max_size=EVENTS)),
    st.tuples(st.just("create"), st.lists(ORDER_NUMBERS, min_size=1, max_size=4)),
    st.tuples(st.just("pay"), st.lists(ORDER_NUMBERS, min_size=1, max_size=EVENTS)),
    st.tuples(st.just("close"), st.lists(ORDER_NUMBERS, min_size=1, max_size=3)),
    st.tuples(st.just("refund"), st.lists(st.tuples(ORDER_NUMBERS, st.integers(1, 700), st.integers(0, 5)),
                                          min_size=1, max_size=EVENTS)),
    st.tuples(st.just("sleep"), st.sampled_from([1, 3 * 3_600])),
), min_size=15, max_size=40)


def every_record(store):
    orders = store.lookup_orders([order_id(MERCHANT, number(n)) for n in range(41)])
    made = [refund_id(order_id(MERCHANT, number(n)), b"R-%d" % r) for n in range(61) for r in range(6)]
    return orders.tobytes(), b"".join(store.lookup_refunds(made[i:i + 128]).tobytes() for i in range(0, len(made), 128))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_a_small_table_answers_as_a_large_one_and_recovers(tmp_path_factory, outbox_flush, steps):
    small_answers_as_large(tmp_path_factory.mktemp("tables"), steps)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_a_small_table_answers_as_a_large_one_soak(tmp_path_factory, outbox_flush, steps):
    small_answers_as_large(tmp_path_factory.mktemp("tables"), steps)


def small_answers_as_large(base, steps):
    now = T0 + S
    with open_store(base / "small", SMALL, checkpoint_interval_batches=5) as small, \
            open_store(base / "large", LARGE) as large:
        set_up(small)
        set_up(large)
        for step in steps:
            if step[0] == "sleep":
                now += step[1] * S
                continue
            for kind in ("create", "pay") if step[0] == "sale" else (step[0],):
                operation, batch = batch_of((kind, step[1]))
                if operation == Operation.create_orders and large.machine.orders.open_count + len(step[1]) > EVENTS:
                    continue  # past the small table's unpaid orders (4), which the large one takes
                assert replies(small, operation, batch, now) == replies(large, operation, batch, now), step
            for name, table in small.machine.tables.items():
                assert table.used <= table.capacity
            now += S
        assert every_record(small) == every_record(large)
        assert small.state_hash() == large.state_hash()  # where a record lives is not state
        expected = small.state_hash(), every_record(small)
    with open_store(base / "small", SMALL) as again:  # a checkpoint, then the log after it
        assert (again.state_hash(), every_record(again)) == expected


def test_evicted_orders_are_paid_refunded_retried_and_looked_up(tmp_path, outbox_flush):
    with open_store(tmp_path / "s", SMALL) as store:
        set_up(store)
        now = T0 + S
        # 200 orders made and paid, 4 at a time: all but the newest leave memory.
        for first in range(0, 200, EVENTS):
            numbers = range(first, first + EVENTS)
            operation, batch = batch_of(("create", numbers))
            created = store.submit(operation, batch, now).result()
            assert (created["result"] == Result.ok).all()
            operation, batch = batch_of(("pay", numbers))
            assert not store.submit(operation, batch, now + 1).result().any()
            now += S
        stats = store.stats()
        assert stats["orders"] == 200 and stats["orders_resident"] <= 8
        if outbox_flush == "flush at once":
            assert stats["orders_resident"] + stats["orders_outbox"] < 100  # most are in the cold side only
        oldest = order_id(MERCHANT, number(0))
        # A retried create of an order long gone from memory: exists, with its token.
        operation, batch = batch_of(("create", [0]))
        created = store.submit(operation, batch, now).result()
        assert created["result"][0] == Result.exists
        assert bytes(created["token"][0]) == token_of(SECRET, oldest)
        # A second payment of it: exists (same payer, amount); a refund of it, twice.
        operation, batch = batch_of(("pay", [0]))
        assert list(store.submit(operation, batch, now).result()) == [Result.exists]
        operation, batch = batch_of(("refund", [(0, 400, 1)]))
        assert list(store.submit(operation, batch, now + S).result()) == [Result.ok]
        assert list(store.submit(operation, batch, now + 2 * S).result()) == [Result.exists]
        # Push it out again with more orders, then refund the rest of it: it comes back with its
        # first refund counted.
        for first in range(200, 264, EVENTS):
            for kind in ("create", "pay"):
                operation, batch = batch_of((kind, range(first, first + EVENTS)))
                store.submit(operation, batch, now + 3 * S).result()
        operation, batch = batch_of(("refund", [(0, 601, 2)]))
        assert list(store.submit(operation, batch, now + 4 * S).result()) == [Result.exceeds_paid_amount]
        operation, batch = batch_of(("refund", [(0, 600, 3)]))
        assert list(store.submit(operation, batch, now + 5 * S).result()) == [Result.ok]
        if outbox_flush == "flush at once":
            assert store.stats()["orders_cold_lookups"] > 0  # the refunds found it in the cold side
        found = core.to_dicts(store.lookup_orders([oldest]))[0]
        assert (found["state"], found["refunded"], found["refund_count"]) == (core.OrderState.REFUND, 1_000, 2)
        refund_rows = store.lookup_refunds([refund_id(oldest, b"R-1"), refund_id(oldest, b"R-3")])
        assert list(refund_rows["amount"]) == [400, 600]
        # Money: the merchant has what it was paid less fees and refunds, to the minor unit.
        paid = sum(1_000 + n for n in range(264))
        fees = sum((1_000 + n) * 60 // 10_000 for n in range(264))
        merchant = store.lookup_accounts([MERCHANT])[0]
        assert int(merchant["credits_posted"]) - int(merchant["debits_posted"]) == paid - fees - 1_000 + (1_000 * 60 // 10_000)
        assert store.machine.orders.open_count == 0
        states = store.lookup_orders([order_id(MERCHANT, number(n)) for n in range(264)])["state"]
        assert np.count_nonzero(states == core.OrderState.SUCCESS) == 263 and states[0] == core.OrderState.REFUND


def test_unpaid_orders_are_bounded_not_evicted(tmp_path):
    with open_store(tmp_path / "s", SMALL) as store:
        set_up(store)
        operation, batch = batch_of(("create", range(EVENTS)))
        assert (store.submit(operation, batch, T0 + S).result()["result"] == Result.ok).all()
        operation, batch = batch_of(("create", [EVENTS]))
        assert store.submit(operation, batch, T0 + S).result()["result"][0] == Result.orders_limit_reached
        # Once they expire (2 hours), new ones are taken again.
        assert store.submit(operation, batch, T0 + 3 * HOUR).result()["result"][0] == Result.ok
