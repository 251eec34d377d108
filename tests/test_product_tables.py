"""The product tables' tiers (docs/tables.md "The write-back table"): a store whose order and
refund tables hold a handful of records in memory answers exactly as one that holds them all,
reaches the same state hash, and recovers to it; what leaves memory is found again (in the
outbox, then in the cold side) by a payment, a close, a refund, a retried create and a lookup.
"""

import shutil

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


# ----------------------------------------------------------------------------- found in review


def _run_clock_step_back(store):
    """An order expired by a pulse (an empty batch: engine time moves to the pulse's base, the
    ledger's last_timestamp does not), then the wall clock steps back (NTP) and more orders
    push the expired one out of memory and into the cold side; then it is named again."""
    out = []
    operation, batch = batch_of(("create", [0]))
    out.append(replies(store, operation, batch, T0 + S))
    assert store.pulse(T0 + 3 * HOUR) is not None  # order 0 expires: its version is T0 + 3 h
    now = T0 + 2 * S  # the clock stepped back: begin_batch clamps to last_timestamp + 1
    for first in range(1, 41, 4):
        for kind in ("create", "pay"):
            operation, batch = batch_of((kind, range(first, first + 4)))
            out.append(replies(store, operation, batch, now))
        store.checkpoint()  # waits for the flushes: the evicted versions are cold only
    for kind in ("pay", "close", "create"):
        operation, batch = batch_of((kind, [0]))
        out.append(replies(store, operation, batch, now))
    return out


def test_order_expired_by_a_pulse_is_found_after_the_clock_steps_back(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "_OUTBOX_FLUSH_ENTRIES", 1)
    with open_store(tmp_path / "small", SMALL) as small, open_store(tmp_path / "large", LARGE) as large:
        set_up(small)
        set_up(large)
        small_out, large_out = _run_clock_step_back(small), _run_clock_step_back(large)
        # The expired order: pay -> order_expired, close -> exists (closed), create -> exists.
        last = [np.frombuffer(r, dtype=np.uint32)[0] for r in large_out[-3:]]
        assert last == [Result.order_expired, Result.exists, Result.exists]
        small_last = [Result(np.frombuffer(r, dtype=np.uint32)[0]).name for r in small_out[-3:]]
        assert small_out == large_out, small_last  # small: order_not_found, order_not_found, ok
        assert small.state_hash() == large.state_hash()


def _resident_or_outbox(store, oid):
    rows, found = store.machine.tables["orders"].lookup([oid])
    resident = store.machine.tables["orders"].resident_mask(core.ids_array([oid]))[0]
    return bool(resident), bool(found[0])


def test_recovery_replays_a_stepped_back_clock_to_the_same_state(tmp_path, monkeypatch):
    """Same capacities, same log: the recovered store must reach the state the live one had.
    Live: the expired order's version (T0 + 3 h, newer than last_timestamp) is in the cold side
    only, so the before_ts rule hides it. Replay: it is still in the restored outbox, which
    ignores before_ts, so the replay finds it and answers differently."""
    monkeypatch.setattr(store_module, "_OUTBOX_FLUSH_ENTRIES", 10**9)  # stays in the outbox
    oid = order_id(MERCHANT, number(0))
    path = tmp_path / "s"
    with open_store(path, SMALL) as store:
        set_up(store)
        operation, batch = batch_of(("create", [0]))
        replies(store, operation, batch, T0 + S)
        assert store.pulse(T0 + 3 * HOUR) is not None
        now, first = T0 + 2 * S, 1
        while _resident_or_outbox(store, oid)[0]:
            for kind in ("create", "pay"):
                operation, batch = batch_of((kind, range(first, first + 4)))
                replies(store, operation, batch, now)
            first += 4
        assert _resident_or_outbox(store, oid) == (False, True)  # in the outbox
        store.checkpoint()  # ... with the order in its outbox
        monkeypatch.setattr(store_module, "_OUTBOX_FLUSH_ENTRIES", 1)
        for kind in ("create", "pay"):
            operation, batch = batch_of((kind, range(first, first + 4)))
            replies(store, operation, batch, now)
        store._reap(wait_all=True)  # the flush is done: the order is in the cold side only
        assert _resident_or_outbox(store, oid) == (False, False)
        live = []
        for kind in ("pay", "create"):
            operation, batch = batch_of((kind, [0]))
            live.append(np.frombuffer(replies(store, operation, batch, now), dtype=np.uint32)[0])
        expected = store.state_hash()
    with open_store(path, SMALL) as again:  # the checkpoint, then the log after it
        assert again.recovery.replayed_batches > 0
        assert again.state_hash() == expected, f"live replies {[Result(r).name for r in live]}"


def _sale(store, numbers, now):
    for kind in ("create", "pay"):
        operation, batch = batch_of((kind, numbers))
        replies(store, operation, batch, now)


def test_a_stale_checkpoint_is_not_used_over_a_rebuilt_cold_side(tmp_path, monkeypatch):
    """The cold side is lost and rebuilt by a full replay (as test_tiering does for transfers);
    that run stops before its first checkpoint. The next open finds the old checkpoint, whose
    resident order R is clean at a version only the lost cold side had: the recovery check
    (``written() >= outbox_tail``) compares counts of two different numberings and passes."""
    monkeypatch.setattr(store_module, "_OUTBOX_FLUSH_ENTRIES", 1)
    big = {"orders_max": 64, "refunds_max": 64}
    path, r = tmp_path / "s", 24
    oid = order_id(MERCHANT, number(r))
    now = T0 + S
    with open_store(path, SMALL) as store:  # 8 slots: R is paid (version v1) and evicted
        set_up(store)
        for first in range(0, 48, 4):
            _sale(store, range(first, first + 4), now)
            now += S
        assert not store.machine.tables["orders"].resident_mask(core.ids_array([oid]))[0]
        store.checkpoint()
    with open_store(path, big) as store:  # reopened larger: old orders loaded back (clean)
        others = [n for n in range(48) if n != r]
        for group in [others[:4], others[4:8], [r]] + [others[f:f + 4] for f in range(8, 47, 4)]:
            operation, batch = batch_of(("close", group))
            replies(store, operation, batch, now)  # order_paid: no change, loaded clean
        store.checkpoint()  # C1: R resident and clean at v1
        for first in range(1000, 1024, 4):
            _sale(store, range(first, first + 4), now)
            now += S
        operation, batch = batch_of(("refund", [(r, 100, 1)]))
        assert list(store.submit(operation, batch, now).result()) == [Result.ok]
        for first in range(2000, 2080, 4):
            _sale(store, range(first, first + 4), now)
            now += S
    shutil.rmtree(path / "cold")  # the cold side is lost
    with open_store(path, big) as store:  # rebuilt by the whole log; one batch; no checkpoint
        assert store.recovery.checkpoint_sequence == 0
        operation, batch = batch_of(("close", [r]))
        replies(store, operation, batch, now)
        truth = store.state_hash()
    with open_store(path, big) as store:  # (the stale checkpoint was dropped with the old cold tier)
        assert store.recovery.checkpoint_sequence == 0
        assert store.state_hash() == truth
