"""The server and client on loopback: durable replies, request order, batching, bad frames."""

import asyncio
import contextlib
import struct

import numpy as np
import pytest

import core
from engine import frame
from engine.client import Client, ServerError
from engine.server import Server
from tests import workload
from tests.holding import holding_the_batcher

SECRETS = {1: b"service-one", 2: b"service-two"}

# Every test here on both event loops: stock asyncio, and uvloop as tally serve runs (conftest.py).
pytestmark = pytest.mark.usefixtures("event_loop_kind")


def run(coroutine):
    return asyncio.run(coroutine)


@contextlib.asynccontextmanager
async def serving(data_dir):
    """A server on a loopback port over a fresh store; everything closed afterwards."""
    store = core.open(data_dir, accounts_max=1000, transfers_hot_max=100_000)
    server = Server(store, SECRETS)
    try:
        yield store, server, await server.start()
    finally:
        await server.close()
        store.close()


def test_create_and_look_up_over_the_wire(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            client = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            assert (await client.create_accounts(workload.account_batch())).tolist() == [0] * workload.ACCOUNTS
            batch = workload.transfer_batch(1)
            batch["flags"] = 0  # no pending holds: the results then do not depend on the clock
            batch["timeout"] = 0
            results = await client.create_transfers(batch)
            # The same batches in memory give the same results.
            memory = core.Ledger(accounts_max=1000, transfers_hot_max=100_000)
            memory.create_accounts(workload.account_batch(), 1)
            assert results.tolist() == memory.create_transfers(batch, 2).tolist()
            remote = await client.lookup_accounts(range(1, workload.ACCOUNTS + 1))
            for balance in ("debits_pending", "debits_posted", "credits_pending", "credits_posted"):
                assert np.array_equal(remote[balance], memory.accounts()[balance])  # timestamps differ: wall clock
            ok_ids = batch["id_lo"][results == core.Result.ok].tolist()
            assert len(await client.lookup_transfers(ok_ids)) == len(ok_ids) > 0
            # Retrying what was acknowledged changes nothing, over the wire too.
            retry = await client.create_transfers(batch[results == core.Result.ok])
            assert set(retry.tolist()) == {core.Result.exists}
            await client.ping()
            client.close()
    run(scenario())


def test_concurrent_requests_from_many_clients_share_core_batches(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            first = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            await first.create_accounts(workload.account_batch())
            clients = [await Client.connect("127.0.0.1", port, client_id=1 + i % 2, secret=SECRETS[1 + i % 2])
                       for i in range(8)]
            batches_before = server.batches
            replies = await asyncio.gather(*[
                c.create_transfers(workload.transfer_batch(100 + k * 8 + i, size=50))
                for k in range(5) for i, c in enumerate(clients)])
            assert sum(len(r) for r in replies) == 40 * 50
            # 40 requests went into fewer core batches than requests.
            assert server.batches - batches_before < 40
            for c in clients + [first]:
                c.close()
    run(scenario())


def test_bad_frames_get_error_frames_and_change_nothing(data_dir):
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            good = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            await good.create_accounts(workload.account_batch())
            before = store.ledger.accounts()
            impostor = await Client.connect("127.0.0.1", port, client_id=1, secret=b"wrong")
            with pytest.raises(ServerError) as raised:
                await impostor.create_transfers(workload.transfer_batch(1))
            assert raised.value.status == frame.Status.bad_mac
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(struct.pack("<I", 1 << 30) + b"garbage")
            reply = await reader.read(1 << 16)
            assert frame.Decoder({0: b""}, {0}, set()).feed(reply)[0].status == frame.Status.too_large
            assert await reader.read(1) == b""  # closed by the server
            assert np.array_equal(store.ledger.accounts(), before)
            await good.ping()  # other clients are unaffected
            good.close()
            impostor.close()
            writer.close()
    run(scenario())


def test_an_open_chain_never_runs_into_another_request(data_dir):
    # Two requests gathered into one core batch: the first ends with a linked event (its chain
    # is open). It must fail alone, as at the end of a batch, not absorb the second request.
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            one = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            two = await Client.connect("127.0.0.1", port, client_id=2, secret=SECRETS[2])
            await one.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in (1, 2)]))

            def transfer(id_, amount, flags=0):
                return core.transfers_from_dicts([{"id": id_, "debit_account_id": 1, "credit_account_id": 2,
                                                   "amount": amount, "ledger": 156, "code": 1, "flags": flags}])

            # Hold the batcher, so that the three requests are gathered while it waits: the
            # first two share a stage, the open chain seals it, the third starts the next.
            batches_before = server.batches
            with holding_the_batcher(server):
                before = asyncio.ensure_future(two.create_transfers(transfer(9, 1)))
                while not server._stages:
                    await asyncio.sleep(0.001)
                first = asyncio.ensure_future(one.create_transfers(transfer(10, 5, int(core.TransferFlags.linked))))
                while sum(len(stage.requests) for stage in server._stages) < 2:
                    await asyncio.sleep(0.001)
                second = asyncio.ensure_future(two.create_transfers(transfer(11, 7)))
                while sum(len(stage.requests) for stage in server._stages) < 3:
                    await asyncio.sleep(0.001)
                assert [len(stage.requests) for stage in server._stages] == [2, 1]
            assert (await before).tolist() == [core.Result.ok]
            assert (await first).tolist() == [core.Result.linked_event_chain_open]
            assert (await second).tolist() == [core.Result.ok]
            assert server.batches - batches_before == 2  # the sealed stage, then the next
            accounts = await two.lookup_accounts([1])
            assert accounts["debits_posted"].tolist() == [1 + 7]
            one.close()
            two.close()
    run(scenario())


def test_a_pings_event_count_books_no_in_flight_budget(data_dir):
    # A ping's event_count means nothing: it must not count as 2**32 results in the budget that
    # pauses every connection.
    async def scenario():
        async with serving(data_dir) as (store, server, port):
            booked = []
            accept = server.accept
            server.accept = lambda connection, item, nbytes: (booked.append(nbytes), accept(connection, item, nbytes))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame.encode(1000, 5, client_id=1, secret=SECRETS[1], event_count=0xFFFF_FFFF))
            decoder = frame.Decoder({1: SECRETS[1], 0: b""}, {1000, 0}, set())
            replies = []
            while not replies:
                replies += decoder.feed(await reader.read(4096))
            assert (replies[0].request_id, replies[0].status) == (5, frame.Status.ok)
            assert booked == [frame.HEADER.size]
            writer.close()
    run(scenario())


def test_a_request_held_back_by_the_global_limit_is_answered_once_the_backlog_clears(data_dir, monkeypatch):
    from engine import constants

    monkeypatch.setattr(constants, "IN_FLIGHT_BYTES_MAX", constants.FRAME_BYTES_MAX)

    async def scenario():
        async with serving(data_dir) as (store, server, port):
            busy = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            await busy.create_accounts(workload.account_batch())
            big = workload.transfer_batch(1)
            big = np.resize(big, 4 * 2700)  # four requests: together more than the global limit
            big["id_lo"] = np.arange(1, len(big) + 1) + 10_000_000
            with holding_the_batcher(server) as release:
                backlog = [asyncio.ensure_future(busy.create_transfers(big[i:i + 2700]))
                           for i in range(0, len(big), 2700)]
                while server.in_flight_bytes < constants.IN_FLIGHT_BYTES_MAX:
                    await asyncio.sleep(0.001)
                # Over the global limit: this ping is held back in its connection's buffer.
                waiting = await Client.connect("127.0.0.1", port, client_id=2, secret=SECRETS[2])
                ping = asyncio.ensure_future(waiting.ping())
                await asyncio.sleep(0.05)
                assert not ping.done()
                release()
                await asyncio.wait_for(ping, 5)  # answered without the client sending anything more
            await asyncio.gather(*backlog)
            busy.close()
            waiting.close()
    run(asyncio.wait_for(scenario(), 20))


def test_an_idle_server_releases_an_expired_hold_by_itself_and_replay_does_too(tmp_path):
    # The engine clock runs with no client traffic: a timer on the server's event loop waits
    # until the hold's timeout is due, then logs an empty batch (Store.pulse) that expires it.
    import time

    from core import replay_log

    data = str(tmp_path / "data")

    async def scenario():
        async with serving(data) as (store, server, port):
            client = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            await client.create_accounts(core.accounts_from_dicts(
                [{"id": 1, "ledger": 156, "code": 1}, {"id": 2, "ledger": 156, "code": 1}]))
            hold = core.transfers_from_dicts([{"id": 10, "debit_account_id": 1, "credit_account_id": 2, "amount": 5,
                                               "ledger": 156, "code": 1, "flags": int(core.TransferFlags.pending),
                                               "timeout": 1}])
            assert (await client.create_transfers(hold)).tolist() == [core.Result.ok]
            created = time.monotonic()
            sequence = store.sequence
            assert (await client.lookup_accounts([1]))["debits_pending"].tolist() == [5]
            while (await client.lookup_accounts([1]))["debits_pending"][0] != 0:
                assert time.monotonic() - created < 2.0, "a 1 s hold was not released within 2 s of an idle server"
                await asyncio.sleep(0.02)
            # Released by one logged pulse (lookups log nothing); then nothing is due, nothing logged.
            assert store.sequence == sequence + 1 and store.next_expiry_ns == 0
            await asyncio.sleep(0.3)
            assert store.sequence == sequence + 1
            # Expired: it can no longer be posted.
            post = core.transfers_from_dicts([{"id": 11, "pending_id": 10, "amount": 5, "ledger": 156, "code": 1,
                                               "flags": int(core.TransferFlags.post_pending)}])
            assert (await client.create_transfers(post)).tolist() == [core.Result.pending_transfer_expired]
            client.close()

    run(scenario())
    result = replay_log.run(data, str(tmp_path / "replayed"))
    assert result["equal"]
    with core.open(str(tmp_path / "replayed")) as replayed:
        assert replayed.lookup_accounts([1])["debits_pending"].tolist() == [0]


def test_a_stage_the_store_refuses_fails_the_server_after_answering_the_stages_before_it(data_dir):
    # Store.stage refuses a batch that cannot fit the hot window's room (a configuration too
    # small for a full request): the server fails safe, but a stage applied earlier in the same
    # run is committed and answered as usual (not left applied and unlogged).
    async def scenario():
        store = core.open(data_dir, accounts_max=1000, transfers_hot_max=10_000)  # room for 7,500 new
        server = Server(store, SECRETS)
        try:
            port = await server.start()
            one = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            two = await Client.connect("127.0.0.1", port, client_id=2, secret=SECRETS[2])
            await one.create_accounts(workload.account_batch()[:10])
            big = np.resize(workload.transfer_batch(1), 8000)
            big["id_lo"] = np.arange(1, 8001) + 10_000_000
            with holding_the_batcher(server):
                accounts = asyncio.ensure_future(one.create_accounts(workload.account_batch()[10:20]))
                while not server._stages:
                    await asyncio.sleep(0.001)
                refused = asyncio.ensure_future(two.create_transfers(big))
                while len(server._stages) < 2:
                    await asyncio.sleep(0.001)
            assert (await asyncio.wait_for(accounts, 10)).tolist() == [core.Result.ok] * 10
            with pytest.raises((ServerError, ConnectionError)):
                await asyncio.wait_for(refused, 10)
            assert store.sequence == 2 and not store._staged
            one.close()
            two.close()
        finally:
            await server.close()
            store.close()
        with core.open(data_dir) as reopened:
            assert reopened.ledger.account_count == 20
    run(scenario())
