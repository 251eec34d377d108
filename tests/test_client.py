"""The client library against a real server (in this process): batching of single calls, reconnect
and retry, ``BlockingClient``, ``get_account_transfers`` over the wire, ``failures()``, TLS, and the
configuration file. ``tests/test_serve.py`` has the ones that run ``tally serve`` as a process.
"""

import asyncio
import contextlib
import os
import shutil
import ssl
import stat
import subprocess
import threading
import time

import numpy as np
import pytest

import core
from engine import config as config_module, constants, frame
from engine.client import BlockingClient, Client, ServerError, failures
from engine.protocol import CREATE_RECORD_DTYPES, OPERATIONS
from engine.serve import tls_context
from engine.server import Server

SECRETS = {1: bytes.fromhex("a1" * 32), 2: bytes.fromhex("b2" * 32)}
CNY = core.Currency.CNY
FUNDING, WALLET, MERCHANT = 1, 2, 3          # the accounts of most scenarios
WALLET_FUNDS = 1_000                         # what the wallet holds; it may not go below zero
UNKNOWN = 999_999                            # no such account


def run(coroutine, timeout=30):
    """Run a scenario; a hang fails the test instead of blocking the suite."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


@contextlib.asynccontextmanager
async def serving(data_dir, *, port=0, ssl_context=None, accounts_max=20_000, transfers_hot_max=200_000):
    """A server over a store in ``data_dir`` on a loopback port; closed (gracefully) afterwards."""
    store = core.open(data_dir, accounts_max=accounts_max, transfers_hot_max=transfers_hot_max)
    server = Server(store, SECRETS)
    try:
        yield store, server, await server.start("127.0.0.1", port, ssl=ssl_context)
    finally:
        await server.close()
        store.close()


async def connect(port, **options):
    options.setdefault("client_id", 1)
    options.setdefault("secret", SECRETS[options["client_id"]])
    return await Client.connect("127.0.0.1", port, **options)


async def until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def base_accounts():
    return core.accounts_from_dicts([
        {"id": FUNDING, "ledger": CNY, "code": core.AccountCode.funding_card},
        {"id": WALLET, "ledger": CNY, "code": core.AccountCode.user_wallet,
         "flags": core.AccountFlags.debits_must_not_exceed_credits},
        {"id": MERCHANT, "ledger": CNY, "code": core.AccountCode.merchant},
    ])


def transfer(id, debit, credit, amount, **extra):
    return {"id": id, "debit_account_id": debit, "credit_account_id": credit, "amount": amount,
            "ledger": CNY, "code": core.TransferCode.payment, **extra}


async def set_up_accounts(client):
    """The three base accounts, and WALLET_FUNDS moved from the funding card to the wallet."""
    assert (await client.create_accounts(base_accounts())).tolist() == [0, 0, 0]
    top_up = core.transfers_from_dicts([transfer(1, FUNDING, WALLET, WALLET_FUNDS)])
    assert (await client.create_transfers(top_up)).tolist() == [0]


def balances(store_or_ledger, ids):
    """{id: (debits_posted, credits_posted)}, read in this process."""
    accounts = store_or_ledger.lookup_accounts(ids)
    return {int(a["id_lo"]): (int(a["debits_posted"]), int(a["credits_posted"])) for a in accounts}


# ---------------------------------------------------------------------- single calls are batched

def transfer_rows(count=10_000):
    """Single transfers with failures on purpose, and the result each must get.

    Every outcome is independent of the order in which the batch is split: the wallet's 100
    one-unit payments fit its funds, the 10,000-unit ones never do.
    """
    rows, expected = [], []
    for i in range(count):
        id = 1_000_000 + i
        kind = i % 100
        if kind == 7:
            rows.append(transfer(id, UNKNOWN, MERCHANT, 5))
            expected.append(core.Result.debit_account_not_found)
        elif kind == 13:
            rows.append(transfer(id, WALLET, MERCHANT, 10 * WALLET_FUNDS))
            expected.append(core.Result.exceeds_credits)
        elif kind == 21:
            rows.append(transfer(id, WALLET, MERCHANT, 1))
            expected.append(core.Result.ok)
        elif kind == 42:  # the previous transfer again, same id and fields: already there
            rows.append(dict(rows[-1]))
            expected.append(core.Result.exists)
        elif kind == 55:
            rows.append(transfer(id, FUNDING, FUNDING, 5))
            expected.append(core.Result.accounts_must_be_different)
        elif kind == 77:
            rows.append(transfer(id, FUNDING, MERCHANT, 5, ledger=core.Currency.USD))
            expected.append(core.Result.transfer_must_have_the_same_ledger_as_accounts)
        else:
            rows.append(transfer(id, FUNDING, MERCHANT, 1 + i % 7))
            expected.append(core.Result.ok)
    return rows, expected


def test_ten_thousand_concurrent_create_transfer_calls_take_two_frames_and_get_their_own_results(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await set_up_accounts(client)
            rows, expected = transfer_rows()
            frames_before = client.frames_sent
            results = await asyncio.gather(*[client.create_transfer(**row) for row in rows])
            assert client.frames_sent - frames_before == 2  # 8,190 + 1,810 events
            assert all(type(result) is core.Result for result in results)
            mismatches = [(i, got, want) for i, (got, want) in enumerate(zip(results, expected)) if got != want]
            assert mismatches == []
            assert {r for r in results} == set(expected) and len(set(expected)) == 6
            # Applied once each, as the results say.
            applied = [row for row, result in zip(rows, results) if result == core.Result.ok]
            from_wallet = sum(row["amount"] for row in applied if row["debit_account_id"] == WALLET)
            from_funding = sum(row["amount"] for row in applied if row["debit_account_id"] == FUNDING)
            assert from_wallet == 100
            assert balances(store, [FUNDING, WALLET, MERCHANT]) == {
                FUNDING: (WALLET_FUNDS + from_funding, 0),
                WALLET: (from_wallet, WALLET_FUNDS),
                MERCHANT: (0, from_wallet + from_funding)}
            ids = [row["id"] for row in applied]
            found = [await client.lookup_transfers(ids[i:i + 5000]) for i in range(0, len(ids), 5000)]
            assert sum(len(part) for part in found) == len(applied)
            # A second round of the same calls: every one was acknowledged, so now each exists or
            # fails again the same way (nothing is applied twice).
            again = await asyncio.gather(*[client.create_transfer(**row) for row in rows])
            assert [r for r, want in zip(again, expected) if want == core.Result.ok] == \
                [core.Result.exists] * expected.count(core.Result.ok)
            assert balances(store, [MERCHANT]) == {MERCHANT: (0, from_wallet + from_funding)}
            client.close()
    run(scenario())


def test_ten_thousand_concurrent_create_account_calls_take_two_frames_and_get_their_own_results(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await set_up_accounts(client)
            rows, expected = [], []
            for i in range(10_000):
                row = {"id": 100_000 + i, "ledger": CNY, "code": core.AccountCode.user_wallet}
                want = core.Result.ok
                if i % 50 == 3:
                    row["id"], want = 0, core.Result.id_must_not_be_zero
                elif i % 50 == 9:
                    row["ledger"], want = 0, core.Result.ledger_must_not_be_zero
                elif i % 50 == 17:
                    row["code"], want = 0, core.Result.code_must_not_be_zero
                elif i % 50 == 23:  # the wallet again, without its flag
                    row["id"], want = WALLET, core.Result.exists_with_different_flags
                elif i % 50 == 31:
                    row["flags"] = (core.AccountFlags.debits_must_not_exceed_credits
                                    | core.AccountFlags.credits_must_not_exceed_debits)
                    want = core.Result.flags_are_mutually_exclusive
                rows.append(row)
                expected.append(want)
            frames_before = client.frames_sent
            results = await asyncio.gather(*[client.create_account(**row) for row in rows])
            assert client.frames_sent - frames_before == 2
            assert all(type(result) is core.Result for result in results)
            assert [(i, r) for i, (r, w) in enumerate(zip(results, expected)) if r != w] == []
            created = [row["id"] for row, result in zip(rows, results) if result == core.Result.ok]
            assert len(created) == 9_000
            assert sum([len(await client.lookup_accounts(created[i:i + 4500])) for i in (0, 4500)]) == 9_000
            assert store.ledger.account_count == 3 + 9_000
            client.close()
    run(scenario())


def test_single_calls_of_both_kinds_in_one_turn_go_out_as_one_frame_each(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await set_up_accounts(client)
            frames_before = client.frames_sent
            calls = []
            for i in range(50):
                calls.append(client.create_account(id=500 + i, ledger=CNY, code=core.AccountCode.merchant))
                calls.append(client.create_transfer(**transfer(5_000 + i, FUNDING, MERCHANT, 1)))
            results = await asyncio.gather(*calls)
            assert client.frames_sent - frames_before == 2
            assert results == [core.Result.ok] * 100
            # Separate turns of the event loop: separate frames.
            frames_before = client.frames_sent
            for i in range(3):
                assert await client.create_transfer(**transfer(6_000 + i, FUNDING, MERCHANT, 1)) == core.Result.ok
            assert client.frames_sent - frames_before == 3
            client.close()
    run(scenario())


def test_a_bad_field_in_a_single_call_fails_that_call_only(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await set_up_accounts(client)
            good = client.create_transfer(**transfer(10, FUNDING, MERCHANT, 3))
            with pytest.raises(KeyError):
                await client.create_transfer(**transfer(11, FUNDING, MERCHANT, 3), no_such_field=1)
            assert await good == core.Result.ok
            client.close()
    run(scenario())


# ---------------------------------------------------------------------- reconnect and retry

class Link:
    """One relayed connection: what each side sent, and switches to hold it back."""

    def __init__(self, client_writer, server_writer, hold_requests, hold_replies):
        self.client_writer, self.server_writer = client_writer, server_writer
        self.hold_requests, self.hold_replies = hold_requests, hold_replies
        self.requests = bytearray()   # every byte the client sent
        self.replies = bytearray()    # every byte the server sent
        self.tasks = []

    def cut(self):
        """The network fails: both connections are dropped at once; nothing held is delivered."""
        for task in self.tasks:
            task.cancel()
        self.client_writer.transport.abort()
        self.server_writer.transport.abort()


class Proxy:
    """A TCP relay between clients and the server, to drop connections and lose bytes on purpose."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.links: list[Link] = []
        self.hold_requests = False   # for new links: keep the client's bytes instead of relaying them
        self.hold_replies = False
        self.cut_on_request = False  # for new links: drop the connection as soon as the client sends
        self._server = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def close(self):
        """Stop accepting and drop every link: the server is gone for good."""
        self._server.close()
        for link in self.links:
            link.cut()
        await self._server.wait_closed()

    async def _relay(self, client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        link = Link(client_writer, server_writer, self.hold_requests, self.hold_replies)
        self.links.append(link)

        async def pump(reader, writer, seen, held):
            while data := await reader.read(1 << 16):
                seen += data
                if self.cut_on_request and seen is link.requests:
                    link.cut()
                    return
                if not held():
                    writer.write(data)
            writer.close()

        link.tasks = [
            asyncio.ensure_future(pump(client_reader, server_writer, link.requests, lambda: link.hold_requests)),
            asyncio.ensure_future(pump(server_reader, client_writer, link.replies, lambda: link.hold_replies)),
        ]


def request_frames(data: bytes):
    """The client frames in bytes a proxy saw (checked with the client's secret)."""
    decoder = frame.Decoder({1: SECRETS[1]}, set(OPERATIONS), set(CREATE_RECORD_DTYPES))
    frames = decoder.feed(data)
    assert all(isinstance(f, frame.Frame) for f in frames)
    return frames


def payments(first_id, count, amount=10):
    return core.transfers_from_dicts([transfer(first_id + i, FUNDING, MERCHANT, amount) for i in range(count)])


def test_a_request_lost_with_its_connection_is_resent_with_the_same_ids_and_applied_once(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            proxy = Proxy(port)
            client = await connect(await proxy.start(), reconnect_attempts=3)
            await set_up_accounts(client)
            link = proxy.links[0]
            link.hold_requests = True  # the next request never reaches the server...
            sent_before = len(link.requests)
            batch = payments(100, 5)
            reply = asyncio.ensure_future(client.create_transfers(batch))
            frame_size = constants.FRAME_HEADER_BYTES + 5 * 128
            await until(lambda: len(link.requests) == sent_before + frame_size, what="the request at the proxy")
            link.cut()                 # ...and its connection drops
            assert (await reply).tolist() == [core.Result.ok] * 5
            assert client.reconnects == 1 and len(proxy.links) == 2
            [lost] = request_frames(bytes(link.requests[sent_before:]))
            [resent] = request_frames(bytes(proxy.links[1].requests))
            assert (resent.request_id, resent.operation, resent.event_count) == \
                (lost.request_id, lost.operation, lost.event_count)
            assert bytes(resent.body) == bytes(lost.body) == batch.tobytes()
            assert balances(store, [MERCHANT]) == {MERCHANT: (0, 50)}
            await client.ping()
            client.close()
            await proxy.close()
    run(scenario())


def test_a_request_applied_before_the_drop_answers_exists_on_the_retry_and_is_applied_once(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            proxy = Proxy(port)
            client = await connect(await proxy.start(), reconnect_attempts=3)
            await set_up_accounts(client)
            link = proxy.links[0]
            link.hold_replies = True  # the server applies and answers; the answer is lost
            replies_before = len(link.replies)
            batch = payments(200, 4, amount=25)
            reply = asyncio.ensure_future(client.create_transfers(batch))
            single = asyncio.ensure_future(client.create_transfer(**transfer(300, FUNDING, MERCHANT, 7)))
            reply_size = 2 * constants.FRAME_HEADER_BYTES + 5 * 4
            await until(lambda: len(link.replies) == replies_before + reply_size, what="the replies at the proxy")
            assert len(store.lookup_transfers([200, 201, 202, 203, 300])) == 5  # durable, not acknowledged
            link.cut()
            assert (await reply).tolist() == [core.Result.exists] * 4
            assert await single == core.Result.exists
            assert client.reconnects == 1
            assert [f.body.tobytes() for f in request_frames(bytes(proxy.links[1].requests))] == \
                [batch.tobytes(), core.transfers_from_dicts([transfer(300, FUNDING, MERCHANT, 7)]).tobytes()]
            assert balances(store, [FUNDING, MERCHANT]) == {FUNDING: (WALLET_FUNDS + 107, 0), MERCHANT: (0, 107)}
            client.close()
            await proxy.close()
    run(scenario())


def test_requests_in_flight_across_a_server_restart_are_all_applied_exactly_once(data_dir):
    """Close the server (gracefully) and start a new one on the same port and data directory
    while a client keeps sending: whatever the old server did not answer, the new one does."""
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)  # the default attempts: about 1.5 s of backoff
            await set_up_accounts(client)
            outcomes = []

            async def sender(worker):
                for k in range(40):
                    batch = payments(10_000 * (worker + 1) + 100 * k, 50, amount=1)
                    outcomes.append((batch, await client.create_transfers(batch)))

            senders = asyncio.gather(*[sender(w) for w in range(4)])
            await until(lambda: len(outcomes) >= 20, what="some replies")
        # The old server is closed and its store too; the senders are reconnecting.
        assert not senders.done()
        async with serving(data_dir, port=port) as (store, server, _):
            await senders
            assert client.reconnects >= 1
            codes = np.concatenate([results for _, results in outcomes])
            assert len(codes) == 4 * 40 * 50
            # The old server answered everything it had read before closing, so every retry is a
            # request it never saw: all are new (none "exists"), and none was lost.
            assert set(codes.tolist()) == {core.Result.ok}
            ids = np.concatenate([batch["id_lo"] for batch, _ in outcomes])
            assert len(store.lookup_transfers(ids.tolist())) == len(ids) == len(set(ids.tolist()))
            assert balances(store, [MERCHANT]) == {MERCHANT: (0, len(ids))}  # each applied once
            client.close()
    run(scenario())


def test_the_client_gives_up_with_connection_error_when_the_server_is_gone_for_good(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            proxy = Proxy(port)
            client = await connect(await proxy.start(), reconnect_attempts=3)
            await client.ping()
            proxy.links[0].hold_requests = True
            ping = asyncio.ensure_future(client.ping())
            await until(lambda: len(proxy.links[0].requests) == 2 * constants.FRAME_HEADER_BYTES)
            started = time.monotonic()
            await proxy.close()  # nothing listens on the port any more
            with pytest.raises(ConnectionError):
                await ping
            assert time.monotonic() - started < 3  # 3 attempts, 0.05 + 0.1 + 0.2 s of backoff
            assert client.reconnects == 0
            client.close()
    run(scenario())


def test_the_client_gives_up_when_every_reconnect_is_dropped_before_an_answer(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            proxy = Proxy(port)
            client = await connect(await proxy.start(), reconnect_attempts=3)
            proxy.cut_on_request = True
            with pytest.raises(ConnectionError):
                await client.ping()
            assert client.reconnects == 3
            assert len(proxy.links) == 4  # the first connection and three reconnects
            client.close()
            await proxy.close()
    run(scenario())


def test_a_connection_lost_while_idle_does_not_hang_the_next_request(data_dir):
    """The server restarts while the client has nothing in flight: the next request must be
    answered (after a reconnect) or fail with ConnectionError, not wait forever."""
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port, reconnect_attempts=3)
            await client.ping()
        async with serving(data_dir, port=port):
            await asyncio.sleep(0.05)  # the client has seen its connection close
            try:
                await asyncio.wait_for(client.ping(), 3)
            except ConnectionError:
                pass
            except asyncio.TimeoutError:
                pytest.fail("a request after the connection was lost while idle never completed")
            client.close()
    run(scenario())


def test_a_cancelled_request_that_gets_an_error_reply_leaves_the_connection_working(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await set_up_accounts(client)
            # A filter the server rejects (limit out of range): the reply is a bad_body error.
            with pytest.raises(ServerError) as raised:
                await client.get_account_transfers(FUNDING, limit=10**6)
            assert raised.value.status == frame.Status.bad_body
            # The same, but the caller gave up before the reply came.
            doomed = asyncio.ensure_future(client.get_account_transfers(FUNDING, limit=10**6))
            await asyncio.sleep(0)
            doomed.cancel()
            await client.ping()
            assert client.reconnects == 0
            assert len(await client.get_account_transfers(FUNDING)) == 1
            client.close()
    run(scenario())


def test_close_fails_what_is_in_flight_and_later_calls(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            pending = asyncio.ensure_future(client.ping())
            await asyncio.sleep(0)
            client.close()
            with pytest.raises(ConnectionError):
                await pending
            with pytest.raises(ConnectionError):
                await client.ping()
            with pytest.raises(ConnectionError):
                await client.create_transfer(**transfer(1, FUNDING, MERCHANT, 1))
    run(scenario())


# ---------------------------------------------------------------------- BlockingClient

class ThreadedServer:
    """A server running on a background thread's event loop, for code without one."""

    def __init__(self, data_dir):
        self.store = core.open(data_dir, accounts_max=1000, transfers_hot_max=100_000)
        self.server = Server(self.store, SECRETS)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_blocking_client_from_plain_code(data_dir):
    with ThreadedServer(data_dir) as served, \
            BlockingClient("127.0.0.1", served.port, client_id=2, secret=SECRETS[2]) as client:
        assert client.create_accounts(base_accounts()).tolist() == [0, 0, 0]
        assert client.create_transfer(**transfer(1, FUNDING, WALLET, WALLET_FUNDS)) == core.Result.ok
        results = client.create_transfers(core.transfers_from_dicts([
            transfer(2, WALLET, MERCHANT, 400), transfer(3, WALLET, MERCHANT, 700), transfer(4, UNKNOWN, MERCHANT, 1)]))
        assert failures(results) == [(1, core.Result.exceeds_credits), (2, core.Result.debit_account_not_found)]
        assert client.create_account(id=WALLET, ledger=CNY, code=core.AccountCode.user_wallet) == \
            core.Result.exists_with_different_flags
        wallet = client.lookup_accounts([WALLET])
        assert (int(wallet["debits_posted"][0]), int(wallet["credits_posted"][0])) == (400, WALLET_FUNDS)
        assert client.lookup_transfers([1, 2, 3, 4])["id_lo"].tolist() == [1, 2]
        assert client.get_account_transfers(WALLET, reverse=True)["id_lo"].tolist() == [2, 1]
        client.ping()
    client.close()  # a second close does nothing


def test_blocking_client_batches_calls_made_at_once_from_several_threads(data_dir):
    with ThreadedServer(data_dir) as served, \
            BlockingClient("127.0.0.1", served.port, client_id=1, secret=SECRETS[1]) as client:
        client.create_accounts(base_accounts())
        client.create_transfer(**transfer(1, FUNDING, WALLET, WALLET_FUNDS))
        inner = client._client
        # Hold the client's event loop while 32 threads call: their calls share one turn.
        holding, release = threading.Event(), threading.Event()
        client._loop.call_soon_threadsafe(lambda: (holding.set(), release.wait(10)))
        assert holding.wait(10)
        frames_before = inner.frames_sent
        results = {}

        def call(i):
            debit = UNKNOWN if i % 8 == 5 else FUNDING
            results[i] = client.create_transfer(**transfer(100 + i, debit, MERCHANT, 1 + i))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # every thread has handed its call to the loop
        release.set()
        for thread in threads:
            thread.join(10)
        assert inner.frames_sent - frames_before == 1
        assert results == {i: core.Result.debit_account_not_found if i % 8 == 5 else core.Result.ok
                           for i in range(32)}

        # Free-running threads: every call answered correctly, in fewer frames than calls.
        frames_before = inner.frames_sent
        results.clear()

        def calls(worker):
            for k in range(50):
                i = 1000 + worker * 50 + k
                results[i] = client.create_transfer(**transfer(i, FUNDING, MERCHANT, 1))

        threads = [threading.Thread(target=calls, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert set(results.values()) == {core.Result.ok} and len(results) == 400
        assert inner.frames_sent - frames_before < 400
        merchant = client.lookup_accounts([MERCHANT])
        assert int(merchant["credits_posted"][0]) == sum(1 + i for i in range(32) if i % 8 != 5) + 400


def test_blocking_client_raises_the_server_errors(data_dir):
    with ThreadedServer(data_dir) as served:
        with BlockingClient("127.0.0.1", served.port, client_id=1, secret=b"not the secret") as client:
            with pytest.raises(ServerError) as raised:
                client.ping()
            assert raised.value.status == frame.Status.bad_mac


# ---------------------------------------------------------------------- get_account_transfers

def test_get_account_transfers_over_the_wire_equals_the_store_in_process(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await client.create_accounts(core.accounts_from_dicts(
                [{"id": i, "ledger": CNY, "code": core.AccountCode.merchant} for i in range(1, 6)]))
            rng = np.random.default_rng(7)
            next_id = 1
            for _ in range(6):  # several batches: several commit timestamps
                rows = []
                for _ in range(60):
                    debit, credit = rng.choice(np.arange(1, 6), 2, replace=False)
                    rows.append(transfer(next_id, int(debit), int(credit), int(rng.integers(1, 100))))
                    next_id += 1
                assert set((await client.create_transfers(core.transfers_from_dicts(rows))).tolist()) == {0}
            everything = store.get_account_transfers(2)
            assert 100 < len(everything) < 360
            stamps = everything["timestamp"]
            queries = [
                {}, {"reverse": True}, {"limit": 0}, {"limit": 1}, {"limit": 17}, {"limit": 17, "reverse": True},
                {"debits": False}, {"credits": False}, {"debits": False, "credits": False},
                {"debits": False, "reverse": True, "limit": 9},
                {"timestamp_min": int(stamps[40])}, {"timestamp_max": int(stamps[40])},
                {"timestamp_min": int(stamps[10]), "timestamp_max": int(stamps[50]), "reverse": True},
                {"timestamp_min": int(stamps[-1]) + 1},
            ]
            for query in queries:
                remote = await client.get_account_transfers(2, **query)
                local = store.get_account_transfers(2, **query)
                assert remote.dtype == core.TRANSFER_DTYPE
                assert remote.tobytes() == local.tobytes(), query
            assert len(await client.get_account_transfers(UNKNOWN)) == 0
            assert len(await client.get_account_transfers(2, limit=17)) == 17

            # Paging forwards and backwards by timestamp gives the whole history.
            async def pages(direction_reverse, **query):
                out, bound = [], {}
                while True:
                    page = await client.get_account_transfers(2, limit=17, reverse=direction_reverse,
                                                              **query, **bound)
                    if len(page) == 0:
                        return np.concatenate(out)
                    out.append(page)
                    last = int(page["timestamp"][-1])
                    bound = {"timestamp_max": last - 1} if direction_reverse else {"timestamp_min": last + 1}

            assert (await pages(False)).tobytes() == everything.tobytes()
            assert (await pages(True)).tobytes() == everything[::-1].tobytes()
            credits = await pages(False, debits=False)
            assert credits.tobytes() == store.get_account_transfers(2, debits=False).tobytes()
            assert set(credits["credit_account_id_lo"].tolist()) == {2}
            client.close()
    run(scenario())


# ---------------------------------------------------------------------- failures()

def test_failures_lists_the_events_that_did_not_succeed(data_dir):
    assert failures(np.zeros(5, dtype=np.uint32)) == []
    assert failures(np.zeros(0, dtype=np.uint32)) == []
    listed = failures(np.array([0, 34, 0, 63, 21], dtype=np.uint32))
    assert listed == [(1, core.Result.debit_account_not_found), (3, core.Result.exceeds_credits),
                      (4, core.Result.exists)]
    assert all(type(i) is int and type(result) is core.Result for i, result in listed)

    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await set_up_accounts(client)
            results = await client.create_transfers(core.transfers_from_dicts([
                transfer(10, FUNDING, MERCHANT, 1), transfer(11, UNKNOWN, MERCHANT, 1),
                transfer(12, WALLET, MERCHANT, WALLET_FUNDS + 1), transfer(13, WALLET, MERCHANT, WALLET_FUNDS)]))
            assert failures(results) == [(1, core.Result.debit_account_not_found), (2, core.Result.exceeds_credits)]
            client.close()
    run(scenario())


# ---------------------------------------------------------------------- TLS

@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for localhost and 127.0.0.1: (cert path, key path)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def client_context(cert):
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)


def test_tls_client_against_tls_server(data_dir, certificate):
    cert, key = certificate

    async def scenario():
        async with serving(data_dir, ssl_context=tls_context(cert, key)) as (store, server, port):
            client = await connect(port, ssl=client_context(cert))
            await set_up_accounts(client)
            results = await asyncio.gather(*[client.create_transfer(**transfer(10 + i, FUNDING, MERCHANT, 2))
                                             for i in range(100)])
            assert results == [core.Result.ok] * 100
            assert balances(store, [MERCHANT]) == {MERCHANT: (0, 200)}
            client.close()

            # A client that does not trust the certificate cannot connect.
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(port, ssl=ssl.create_default_context())
    run(scenario())


def test_plaintext_client_against_tls_server_fails_cleanly(data_dir, certificate):
    cert, key = certificate

    async def scenario():
        async with serving(data_dir, ssl_context=tls_context(cert, key)) as (store, server, port):
            plain = await connect(port, reconnect_attempts=2)
            with pytest.raises((ConnectionError, ServerError)):
                await asyncio.wait_for(plain.create_transfer(**transfer(1, FUNDING, MERCHANT, 1)), 10)
            plain.close()
            await until(lambda: not server.connections, what="the plaintext connections to close")
            assert store.ledger.transfer_count == 0
            # The server is unharmed: a TLS client is served.
            client = await connect(port, ssl=client_context(cert))
            await set_up_accounts(client)
            assert store.ledger.transfer_count == 1
            client.close()
    run(scenario())


# ---------------------------------------------------------------------- the configuration file

def write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GOOD_CLIENT = '[[clients]]\nid = 1\nsecret = "' + "ab" * 16 + '"\n'


@pytest.mark.parametrize("text, problem", [
    ('[server]\nport = 7420\n', "no [[clients]]"),
    (GOOD_CLIENT + GOOD_CLIENT.replace("ab", "cd"), "unique"),
    ('[[clients]]\nid = 1\nsecret = "not hex at all, not hex at all!"\n', "not hex"),
    ('[[clients]]\nid = 1\nsecret = "abcd"\n', "shorter than 16 bytes"),
    ('[[clients]]\nid = 1\nsecret = "' + "ab" * 15 + '"\n', "shorter than 16 bytes"),
    ('[[clients]]\nid = 0\nsecret = "' + "ab" * 16 + '"\n', "0 is reserved"),
    ('[server]\ntls_cert = "cert.pem"\n' + GOOD_CLIENT, "tls_cert and tls_key go together"),
    ('[server]\ntls_key = "key.pem"\n' + GOOD_CLIENT, "tls_cert and tls_key go together"),
    ('[server]\nport = 70000\n' + GOOD_CLIENT, "port"),
    ('[server]\nprot = 7420\n' + GOOD_CLIENT, "prot"),
    ('[sever]\nport = 7420\n' + GOOD_CLIENT, "sever"),
    (GOOD_CLIENT.replace("id = 1", "id = 1\nname = \"shop\""), "name"),
    ('[server]\nport = "7420"\n' + GOOD_CLIENT, "port"),
    ('[[clients]]\nid = 1\n', "secret"),
    ('[server\nport = 1\n', ""),  # not TOML
])
def test_load_rejects_bad_files(tmp_path, text, problem):
    with pytest.raises(config_module.ConfigError) as raised:
        config_module.load(write(tmp_path, text))
    assert problem in str(raised.value)


def test_load_rejects_a_missing_file(tmp_path):
    with pytest.raises(config_module.ConfigError):
        config_module.load(str(tmp_path / "nope.toml"))


def test_load_reads_a_good_file(tmp_path):
    config = config_module.load(write(tmp_path, (
        '[server]\ndata = "d"\nhost = "0.0.0.0"\nport = 0\ntls_cert = "c.pem"\ntls_key = "k.pem"\n'
        'accounts_max = 5000\n' + GOOD_CLIENT + '[[clients]]\nid = 7\nsecret = "' + "0f" * 32 + '"\n')))
    assert (config.server.data, config.server.host, config.server.port) == ("d", "0.0.0.0", 0)
    assert (config.server.tls_cert, config.server.tls_key, config.server.accounts_max) == ("c.pem", "k.pem", 5000)
    assert config.secrets() == {1: bytes.fromhex("ab" * 16), 7: bytes.fromhex("0f" * 32)}


def test_load_or_create_writes_a_private_file_with_a_fresh_secret(tmp_path):
    path = str(tmp_path / "nested" / "config.toml")
    config = config_module.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    [credentials] = config.clients
    assert credentials.id == 1
    assert len(credentials.secret) == 64 and int(credentials.secret, 16) >= 0
    assert credentials.secret in open(path).read()
    assert config_module.check(config) is None
    again = config_module.load_or_create(path)  # the file is there now: read, not replaced
    assert again.secrets() == config.secrets()
    assert config_module.load(path).secrets() == config.secrets()
    other = config_module.load_or_create(str(tmp_path / "other.toml"))
    assert other.secrets() != config.secrets()  # a fresh secret each time


def test_get_account_transfers_of_an_account_id_beyond_64_bits(data_dir):
    big = (1 << 100) + 5

    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port)
            await client.create_accounts(core.accounts_from_dicts(
                [{"id": big, "ledger": CNY, "code": 1}, {"id": 2, "ledger": CNY, "code": 1}]))
            assert (await client.create_transfers(core.transfers_from_dicts([
                {"id": 9, "debit_account_id": big, "credit_account_id": 2, "amount": 3, "ledger": CNY,
                 "code": 1}]))).tolist() == [0]
            page = await client.get_account_transfers(big)
            assert page["id_lo"].tolist() == [9]
            client.close()
    run(scenario())


def test_a_client_that_gave_up_reconnects_when_asked_again(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await connect(port, reconnect_attempts=1)
            await client.ping()
        # The server is gone: the client gives up on requests, more than once...
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await client.ping()
        # ...and once a server is back on the port, a new request gets through.
        async with serving(data_dir, port=port):
            try:
                await client.ping()
            finally:
                client.close()
    run(scenario())
