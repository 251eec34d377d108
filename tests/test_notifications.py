"""Merchant notifications read from the log (core/notifications.py): every paid, refunded and
closed order that succeeded, in log order, with its merchant, amount and engine time, none of
the events that failed; resumed strictly after a cursor; filtered by merchant; the same after a
restart (recovery) and for orders the tables evicted to their cold tier."""

import numpy as np
from hypothesis import given, settings, strategies as st

import core
from core import Result
from core.notifications import NotificationKind
from core.operations import Operation
from core.order_keys import order_closes, order_creates, order_id, order_pays, refund_id, refunds, token_of

SECRET = bytes(range(32))
S = 10**9
T0 = 1_700_000_000 * S
CNY = 156
ACCOUNTS = [{"id": 1, "ledger": CNY, "code": 3}, {"id": 2, "ledger": CNY, "code": 1},
            {"id": 7, "ledger": CNY, "code": 2}, {"id": 8, "ledger": CNY, "code": 2}]


def open_store(path, **options):
    return core.open(str(path), accounts_max=16, transfers_hot_max=1 << 14, secret=SECRET, **options)


def set_up(store):
    assert not store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": 1, "credit_account_id": 2, "amount": 10**12,
                                       "ledger": CNY, "code": 4}])
    assert not store.create_transfers(fund, T0).any()


def run(store, steps):
    """Apply (kind, merchant, number, amount) steps, one batch each; the notifications expected
    from them, as (kind, order, merchant, refund, amount) in order."""
    expected = []
    now = T0 + S
    for kind, merchant, number, amount in steps:
        oid = order_id(merchant, b"N%d" % number)
        if kind == "create":
            operation, batch = Operation.create_orders, order_creates(
                [{"merchant_id": merchant, "out_trade_no": b"N%d" % number, "amount": amount, "ledger": CNY}])
        elif kind == "pay":
            operation, batch = Operation.pay_orders, order_pays(
                [{"order_id": oid, "payer_id": 2, "amount": amount, "ledger": CNY, "token": token_of(SECRET, oid)}])
        elif kind == "close":
            operation, batch = Operation.close_orders, order_closes([{"order_id": oid, "merchant_id": merchant}])
        else:
            operation, batch = Operation.refund_orders, refunds(
                [{"order_id": oid, "merchant_id": merchant, "amount": amount, "out_refund_no": b"R%d" % now,
                  "ledger": CNY}])
        reply = store.submit(operation, batch, now).result()
        result = reply["result"][0] if reply.dtype.names else reply[0]
        if result == Result.ok and kind != "create":
            notify = {"pay": NotificationKind.paid, "close": NotificationKind.closed,
                      "refund": NotificationKind.refunded}[kind]
            refund = refund_id(oid, b"R%d" % now) if kind == "refund" else 0
            expected.append((notify, oid, merchant, refund, 0 if kind == "close" else amount))
        now += S
    return expected


def seen(notes):
    return [(NotificationKind(int(n["kind"])), int(n["order_id_lo"]) | int(n["order_id_hi"]) << 64,
             int(n["merchant_id_lo"]) | int(n["merchant_id_hi"]) << 64,
             int(n["refund_id_lo"]) | int(n["refund_id_hi"]) << 64, int(n["amount"])) for n in notes]


STEPS = st.lists(st.tuples(st.sampled_from(["create", "create", "pay", "pay", "close", "refund"]),
                           st.sampled_from([7, 8]), st.integers(0, 6), st.sampled_from([100, 250])),
                 min_size=1, max_size=30)


@settings(max_examples=25, deadline=None)
@given(steps=STEPS, cut=st.integers(0, 40))
def test_notifications_are_the_successful_events_in_order_and_resume_after_a_cursor(tmp_path_factory, steps, cut):
    path = tmp_path_factory.mktemp("n") / "store"
    with open_store(path, orders_max=8, refunds_max=4) as store:  # small tables: orders go cold
        set_up(store)
        expected = run(store, steps)
        notes = store.notifications()
        assert seen(notes) == expected
        assert (np.diff(notes["sequence"].astype(np.int64)) > 0).all()  # one event per batch here
        assert (notes["timestamp"] > T0).all()
        # Resume after any one of them: exactly the rest.
        if notes.shape[0]:
            at = notes[min(cut, notes.shape[0] - 1)]
            rest = store.notifications((int(at["sequence"]), int(at["index"])))
            assert seen(rest) == expected[min(cut, notes.shape[0] - 1) + 1:]
        assert seen(store.notifications(merchants=[8])) == [e for e in expected if e[2] == 8]
        assert seen(store.notifications(limit=2)) == expected[:2]
    with open_store(path, orders_max=8, refunds_max=4) as again:  # after a restart: the same
        assert seen(again.notifications()) == expected


def test_a_batch_of_payments_notifies_its_ok_events_with_their_times(tmp_path):
    with open_store(tmp_path / "s") as store:
        set_up(store)
        creates = order_creates([{"merchant_id": 7, "out_trade_no": b"N%d" % n, "amount": 100, "ledger": CNY}
                                 for n in range(5)])
        assert (store.create_orders(creates, T0 + S)["result"] == 0).all()
        pays = order_pays([{"order_id": order_id(7, b"N%d" % n), "payer_id": 2, "amount": 100 if n != 2 else 99,
                            "ledger": CNY, "token": token_of(SECRET, order_id(7, b"N%d" % n))} for n in range(5)])
        results = store.pay_orders(pays, T0 + 2 * S)
        assert list(results) == [0, 0, Result.amount_mismatch, 0, 0]
        notes = store.notifications()
        assert notes["index"].tolist() == [0, 1, 3, 4] and (notes["merchant_id_lo"] == 7).all()
        assert np.diff(notes["timestamp"].astype(np.int64)).tolist() == [4, 8, 4]  # LEGS_MAX apart
        assert seen(store.notifications((int(notes["sequence"][1]), 1))) == seen(notes[2:])
