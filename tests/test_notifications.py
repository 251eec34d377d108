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


def test_the_live_notifications_of_a_batch_of_payments_name_their_merchants_from_their_legs(tmp_path):
    """What a server builds for its subscribers from a batch it has just applied (its payments'
    merchants read from their payer -> merchant legs, fee legs between them, no order looked
    up) is what the log gives; legs that do not fit the batch are not used."""
    from core import notifications

    accounts = ACCOUNTS + [{"id": 9, "ledger": CNY, "code": 2}]
    with core.open(str(tmp_path / "s"), accounts_max=16, transfers_hot_max=1 << 14, secret=SECRET) as store:
        assert not store.create_accounts(core.accounts_from_dicts(accounts), T0).any()
        assert not store.create_transfers(core.transfers_from_dicts([{
            "id": 500, "debit_account_id": 1, "credit_account_id": 2, "amount": 10**12, "ledger": CNY,
            "code": 4}]), T0).any()
        # Merchant 8 takes a fee: its payments make two legs each.
        assert not store.set_merchants(core.records_from_dicts([{"merchant_id": 8, "fee_account_id": 9, "fee_bps": 60,
                                                                 "ledger": CNY}], core.MERCHANT_DTYPE), T0).any()
        orders = [(7 if n % 3 else 8, b"N%d" % n) for n in range(12)]
        creates = order_creates([{"merchant_id": m, "out_trade_no": no, "amount": 1000, "ledger": CNY}
                                 for m, no in orders])
        assert (store.create_orders(creates, T0 + S)["result"] == 0).all()
        pays = order_pays([{"order_id": order_id(m, no), "payer_id": 2, "amount": 1000 if n not in (2, 5) else 99,
                            "ledger": CNY, "token": token_of(SECRET, order_id(m, no))}
                           for n, (m, no) in enumerate(orders)])
        first = store.ledger.transfer_count
        pending = store.stage(Operation.pay_orders, pays, T0 + 2 * S)
        legs = notifications.payment_legs(store.ledger.transfers_range(first, store.ledger.transfer_count))
        last_timestamp = store.ledger.last_timestamp
        store.commit_staged()
        results = pending.result()
        assert np.flatnonzero(results).tolist() == [2, 5]
        assert legs.shape[0] == 10 and store.ledger.transfer_count - first == 10 + 4  # and merchant 8's 4 fees
        logged = store.notifications((pending.sequence - 1, 1 << 31))
        live = store.notifications_of_batch(pending.sequence, Operation.pay_orders, pays, results, last_timestamp,
                                            pending.expired, legs)
        assert live.tobytes() == logged.tobytes() and seen(live)[0][2] == 8
        for wrong in (legs[1:], legs[::-1].copy()):  # not this batch's legs: the orders are looked up
            again = store.notifications_of_batch(pending.sequence, Operation.pay_orders, pays, results,
                                                 last_timestamp, pending.expired, legs=wrong)
            assert again.tobytes() == logged.tobytes()


# ----------------------------------------------------------------------------- over the protocol


def test_a_subscriber_gets_the_history_then_live_ones_and_resumes_after_a_restart(tmp_path):
    import asyncio

    from engine.client import Client
    from engine.roles import Role
    from engine.server import Server

    secrets = {1: b"admin-service-secret", 3: b"merchant-gateway-secret"}
    roles = {1: Role.of("admin"), 3: Role.of("merchant", merchants=[8])}

    def sale(n, merchant):
        oid = order_id(merchant, b"N%d" % n)
        creates = order_creates([{"merchant_id": merchant, "out_trade_no": b"N%d" % n, "amount": 100 + n,
                                  "ledger": CNY}])
        pays = order_pays([{"order_id": oid, "payer_id": 2, "amount": 100 + n, "ledger": CNY,
                            "token": token_of(SECRET, oid)}])
        return oid, creates, pays

    async def serve(path, until):
        store = open_store(path)
        server = Server(store, secrets, roles)
        try:
            port = await server.start("127.0.0.1", 0)
            return await until(store, port)
        finally:
            await server.close()
            store.close()

    async def first_life(store, port):
        set_up(store)
        admin = await Client.connect("127.0.0.1", port, client_id=1, secret=secrets[1])
        gateway = await Client.connect("127.0.0.1", port, client_id=3, secret=secrets[3])
        paid = []
        for n in range(3):  # history, before anyone subscribes
            oid, creates, pays = sale(n, 7 + n % 2)
            assert (await admin.create_orders(creates))["result"][0] == 0 and not (await admin.pay_orders(pays)).any()
            paid.append(oid)
        everything, mine = admin.notifications(), gateway.notifications()
        got = [await anext(everything)]  # the history: one page
        assert [int(n["order_id_lo"]) | int(n["order_id_hi"]) << 64 for n in got[0]] == paid
        seen_by_gateway = await anext(mine)
        assert (seen_by_gateway["merchant_id_lo"] == 8).all() and seen_by_gateway.shape[0] == 1
        for n in range(3, 6):  # live: each committed payment comes as a frame
            oid, creates, pays = sale(n, 7)
            assert (await admin.create_orders(creates))["result"][0] == 0 and not (await admin.pay_orders(pays)).any()
            paid.append(oid)
            got.append(await asyncio.wait_for(anext(everything), 5))
        notes = np.concatenate(got)
        assert [int(n["order_id_lo"]) | int(n["order_id_hi"]) << 64 for n in notes] == paid
        await everything.aclose()
        await mine.aclose()
        admin.close()
        gateway.close()
        return paid, (int(notes["sequence"][2]), int(notes["index"][2]))

    paid, cursor = asyncio.run(serve(tmp_path / "s", first_life))

    async def second_life(store, port):  # the server restarted: resume after a saved cursor
        admin = await Client.connect("127.0.0.1", port, client_id=1, secret=secrets[1])
        resumed = await anext(admin.notifications(after=cursor))
        admin.close()
        return [int(n["order_id_lo"]) | int(n["order_id_hi"]) << 64 for n in resumed]

    assert asyncio.run(serve(tmp_path / "s", second_life)) == paid[3:]


def test_a_passes_notifications_go_in_frames_of_at_most_a_page_each_full_batch_as_it_is():
    from engine import server

    page = server.NOTIFICATIONS_PAGE
    parts = [np.arange(n, dtype=np.uint64) + 10**6 * k for k, n in enumerate([page, 3, 4, page - 5, 2 * page + 1])]
    pages = list(server._pages(parts))
    assert [p.shape[0] for p in pages] == [page, 7, page - 5, page, page, 1]
    assert np.array_equal(np.concatenate(pages), np.concatenate(parts))
    assert np.shares_memory(pages[0], parts[0]) and np.shares_memory(pages[3], parts[4])  # not copied
    assert list(server._pages([])) == [] and list(server._pages([parts[0][:0]])) == []


def test_a_payment_applied_in_the_same_run_as_the_first_subscription_is_notified(tmp_path):
    """A payment and a subscription (the server's first) read in the same pass of its loop: the
    payment, staged while no one subscribed (its notifications not kept for a push), is in the
    subscription's first page (the log read commits what is staged first), then live ones."""
    import asyncio

    from engine.client import Client
    from engine.server import Server

    async def scenario():
        store = open_store(tmp_path / "s")
        server = Server(store, {1: b"admin-service-secret"})
        try:
            port = await server.start("127.0.0.1", 0)
            set_up(store)
            admin = await Client.connect("127.0.0.1", port, client_id=1, secret=b"admin-service-secret")
            oids = [order_id(7, b"N%d" % n) for n in range(2)]
            for n, oid in enumerate(oids):
                creates = order_creates([{"merchant_id": 7, "out_trade_no": b"N%d" % n, "amount": 100, "ledger": CNY}])
                assert (await admin.create_orders(creates))["result"][0] == 0

            def pays(oid):
                return order_pays([{"order_id": oid, "payer_id": 2, "amount": 100, "ledger": CNY,
                                    "token": token_of(SECRET, oid)}])

            stream = admin.notifications()
            # Both frames go out in this turn of the client's loop: one run of the server's.
            paying = asyncio.ensure_future(admin.pay_orders(pays(oids[0])))
            first = asyncio.ensure_future(anext(stream))
            assert not (await paying).any()
            got = [await asyncio.wait_for(first, 5)]
            assert server.batches >= 3 and len(server._subscriptions) == 1
            assert not (await admin.pay_orders(pays(oids[1]))).any()
            while oids[1] not in seen_orders(got):
                got.append(await asyncio.wait_for(anext(stream), 5))
            await stream.aclose()
            admin.close()
            return seen_orders(got)
        finally:
            await server.close()
            store.close()

    def seen_orders(pages):
        return [int(n["order_id_lo"]) | int(n["order_id_hi"]) << 64 for page in pages for n in page]

    got = asyncio.run(scenario())
    assert got == [order_id(7, b"N0"), order_id(7, b"N1")]


def test_across_a_kill_9_every_committed_payment_is_notified_at_least_once_and_no_other(tmp_path):
    """A server process is killed (SIGKILL) while payments stream in and a subscriber reads;
    restarted on the same data, the subscriber resumes after its last cursor. What it got in
    all is every payment the log committed (at least once), and nothing the log does not hold."""
    import asyncio
    import secrets as secrets_module

    from engine.client import Client
    from tally import local_server

    secret = secrets_module.token_bytes(32)
    base = str(tmp_path / "srv")

    def ids(notes):
        return {(int(n["sequence"]), int(n["index"])): int(n["order_id_lo"]) | int(n["order_id_hi"]) << 64
                for n in notes}

    async def pay_until_killed(client, process):
        number = 0
        while True:
            batch = [{"merchant_id": 7, "out_trade_no": b"K%d" % (number + k), "amount": 100, "ledger": CNY}
                     for k in range(50)]
            number += 50
            try:
                created = await client.create_orders(order_creates(batch))
                oids = [order_id(7, row["out_trade_no"]) for row in batch]
                await client.pay_orders(order_pays([{"order_id": oid, "payer_id": 2, "amount": 100, "ledger": CNY,
                                                     "token": bytes(token)} for oid, token in
                                                    zip(oids, created["token"])]))
            except (ConnectionError, OSError):
                return
            if number == 1_000:
                process.kill()  # kill -9, mid-stream

    async def first_life(port, process):
        payer = await Client.connect("127.0.0.1", port, client_id=1, secret=secret, reconnect_attempts=0)
        subscriber = await Client.connect("127.0.0.1", port, client_id=1, secret=secret, reconnect_attempts=0)
        accounts = core.accounts_from_dicts(ACCOUNTS)
        assert not (await payer.create_accounts(accounts)).any()
        fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": 1, "credit_account_id": 2,
                                           "amount": 10**12, "ledger": CNY, "code": 4}])
        assert not (await payer.create_transfers(fund)).any()
        got = []

        async def read():
            try:
                async for notes in subscriber.notifications():
                    got.append(notes)
            except (ConnectionError, OSError):
                return

        reader = asyncio.ensure_future(read())
        await pay_until_killed(payer, process)
        await asyncio.wait_for(reader, 10)
        return got

    process, port = local_server.start(base, secret=secret, accounts_max=64)
    try:
        got = asyncio.run(first_life(port, process))
    finally:
        process.kill()
        process.wait()
    received = {}
    for notes in got:
        received.update(ids(notes))
    cursor = max(received) if received else (0, 0)

    async def second_life(port):
        client = await Client.connect("127.0.0.1", port, client_id=1, secret=secret)
        resumed, everything = [], []
        stream = client.notifications(after=cursor)
        try:  # (nothing may be left: the first life may have got every committed one before the kill)
            resumed.append(await asyncio.wait_for(anext(stream), 2))
        except asyncio.TimeoutError:
            pass
        await stream.aclose()
        stream = client.notifications()  # the truth: every committed payment, from the start
        while sum(n.shape[0] for n in everything) < 10**6:
            try:
                everything.append(await asyncio.wait_for(anext(stream), 1))
            except asyncio.TimeoutError:
                break
        await stream.aclose()
        client.close()
        return resumed, everything

    process, port = local_server.start(base, secret=secret, accounts_max=64)
    try:
        resumed, everything = asyncio.run(second_life(port))
    finally:
        assert local_server.stop(process) == 0
    truth = {}
    for notes in everything:
        truth.update(ids(notes))
    for notes in resumed:
        received.update(ids(notes))
    assert len(truth) >= 500  # most of the payments were committed before the kill
    assert received == truth  # every committed one (at least once), none that was not


def _order_key(note):
    return int(note["order_id_lo"]) | int(note["order_id_hi"]) << 64


def test_orders_closed_by_the_clock_are_notified_expired_or_revoked(tmp_path):
    from core.order_keys import code_charges, code_issues

    with open_store(tmp_path / "s", orders_max=64) as store:
        set_up(store)
        creates = order_creates([{"merchant_id": 7, "out_trade_no": b"X%d" % n, "amount": 100 + n, "ledger": CNY,
                                  "expire_after_s": 60} for n in range(3)])
        assert (store.create_orders(creates, T0 + S)["result"] == 0).all()
        code = int(store.issue_codes(code_issues([{"wallet_id": 2, "request_id": 1, "ledger": CNY,
                                                   "no_password_limit": 10}]), T0 + S)["code"][0])
        charge = code_charges([{"merchant_id": 8, "code": code, "amount": 500, "out_trade_no": b"H", "ledger": CNY}])
        assert list(store.charge_codes(charge, T0 + S)) == [Result.user_paying]
        assert store.notifications().shape[0] == 0  # nothing paid or closed yet
        # 45 s on, the clock (an empty batch: a server's pulse) ends the hold; 60 s on, the orders.
        assert store.pulse(T0 + 47 * S) is not None and store.pulse(T0 + 62 * S) is not None
        notes = store.notifications()
        assert [(NotificationKind(int(n["kind"])), _order_key(n), int(n["merchant_id_lo"]), int(n["amount"]))
                for n in notes] == [(NotificationKind.revoked, order_id(8, b"H"), 8, 500)] + [
            (NotificationKind.expired, order_id(7, b"X%d" % n), 7, 100 + n) for n in range(3)]
        orders = store.lookup_orders([_order_key(n) for n in notes])
        assert list(notes["timestamp"]) == list(orders["closed_at"]) == list(orders["expires_at"])
        assert (notes["index"] >= 1 << 16).all() and notes["sequence"][0] < notes["sequence"][1]
        assert store.notifications(after=(int(notes["sequence"][1]), int(notes["index"][1]))).shape[0] == 2
        assert store.notifications(merchants=[8]).shape[0] == 1
        # The server's live push builds the same from the batch in memory (the last: the pulse).
        live = store.notifications_of_batch(int(notes["sequence"][-1]), Operation.create_accounts, None,
                                            np.zeros(0, np.uint32), 0, store.orders.expired_last())
        assert np.array_equal(live, notes[1:])
    with open_store(tmp_path / "s") as store:  # the log says the same after a restart
        assert np.array_equal(store.notifications(), notes)


def test_a_batch_start_closes_at_most_its_bound_and_the_next_batches_the_rest(tmp_path):
    count = core.constants.EXPIRIES_PER_BATCH_MAX + 100
    with open_store(tmp_path / "s", orders_max=2 * count + 8192) as store:
        set_up(store)
        for first in range(0, count, 8190):
            creates = order_creates([{"merchant_id": 7, "out_trade_no": b"M%d" % n, "amount": 1, "ledger": CNY,
                                      "expire_after_s": 60} for n in range(first, min(count, first + 8190))])
            assert (store.create_orders(creates, T0 + S)["result"] == 0).all()
        first_pulse = store.pulse(T0 + 70 * S)
        assert first_pulse.expired.shape[0] == core.constants.EXPIRIES_PER_BATCH_MAX
        assert store.stats()["orders_open"] == 100 and store.next_expiry_ns <= T0 + 70 * S  # due at once
        assert store.pulse(T0 + 70 * S).expired.shape[0] == 100 and store.stats()["orders_open"] == 0
        entries = list(store.log_entries())
        assert [e.expired.shape[0] for e in entries[-2:]] == [core.constants.EXPIRIES_PER_BATCH_MAX, 100]
        notes = store.notifications(limit=count + 10)
        assert notes.shape[0] == count and (notes["kind"] == NotificationKind.expired).all()
        assert len({_order_key(n) for n in notes}) == count
        live_hash = store.state_hash()
    from core import replay_log
    assert replay_log.run(str(tmp_path / "s"), str(tmp_path / "replayed"))["equal"]
    with open_store(tmp_path / "s") as store:
        assert store.state_hash() == live_hash


def test_a_live_subscriber_is_told_of_expiries_by_the_idle_servers_clock(tmp_path):
    import asyncio

    from engine.client import Client
    from engine.server import Server

    clock = [T0]

    async def main():
        store = open_store(tmp_path / "s", clock_ns=lambda: clock[0])
        server = Server(store, {1: b"admin-service-secret"})
        try:
            port = await server.start("127.0.0.1", 0)
            client = await Client.connect("127.0.0.1", port, client_id=1, secret=b"admin-service-secret")
            set_up(store)
            creates = order_creates([{"merchant_id": 7, "out_trade_no": b"E1", "amount": 300, "ledger": CNY,
                                      "expire_after_s": 60}])
            assert (await client.create_orders(creates))["result"][0] == 0
            stream = client.notifications()
            waiting = asyncio.ensure_future(anext(stream))  # the history is empty: no page comes yet
            for _ in range(500):
                if server._subscriptions and server._subscriptions[0].live:
                    break
                await asyncio.sleep(0.01)
            assert server._subscriptions[0].live and not waiting.done()
            clock[0] = T0 + 61 * S  # the idle server's pulse closes the order
            server._pulse()  # (what its timer calls; armed for the soonest expiry, at most PULSE_WAIT_MAX_S on)
            notes = await asyncio.wait_for(waiting, 5)
            await stream.aclose()
            client.close()
            return notes
        finally:
            await server.close()
            store.close()

    notes = asyncio.run(main())
    assert [(NotificationKind(int(n["kind"])), _order_key(n), int(n["amount"])) for n in notes] == [
        (NotificationKind.expired, order_id(7, b"E1"), 300)]


def test_a_log_written_before_the_expiry_bound_replays_every_expiry_it_had(tmp_path):
    # A log of format 2 closed every due order at a batch's start; recovery and replay-log must
    # do the same with it (a bound there made the merchant's close answer ok, not exists, and
    # the store refused to open: "replay diverged").
    import subprocess
    import sys

    from core import replay_log

    path = str(tmp_path / "old")
    written = subprocess.run([sys.executable, "-m", "tests.old_log_writer", path], capture_output=True, text=True,
                             timeout=300)
    assert written.returncode == 0, written.stderr
    assert int(written.stdout.split()[-1]) == Result.exists
    with open_store(path, orders_max=1 << 15) as store:
        assert store.recovery.replayed_batches >= 3 and store.stats()["orders_open"] == 0
        assert [e.expired for e in store.log_entries()][-1] is None  # (format 2 entries: no section)
    assert replay_log.run(path, str(tmp_path / "replayed"))["equal"]
