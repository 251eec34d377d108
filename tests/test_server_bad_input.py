"""Hostile bytes against a live server on loopback: every kind of bad input gets its documented treatment.

Each test starts a server over a fresh store (in-process, on the test's event loop), creates
accounts and transfers through a well-behaved ``Client``, then sends hostile bytes over a raw
socket and checks, against docs/protocol.md:

* the reply: its status, ``request_id`` (0 when the header could not be read: statuses 1-5),
  client id (0, signed with the empty key, for frames refused by the frame checks; the
  client's own for ``bad_record_size`` of a lookup and ``bad_body``) and an empty body;
* whether the connection is then closed or stays open (a good frame on the same connection is
  answered) exactly as the status table says;
* that nothing was applied: the accounts and ``store.sequence`` are the same before and after;
* that the server still serves a well-behaved client, on its old connection and on a new one,
  and that the hostile connection is gone from the server once the client left.

Further tests hold the server to the rest of the contract where bad input meets it: replies in
request order around error replies, a closing error as the last reply, linked chains that never
cross a request, and the limits on what a client that never reads its replies can make the
server accept and hold. Where the documentation and the code disagree, the tests assert the
documentation (and fail until one of them is fixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import socket
import struct
import time
import zlib

import numpy as np
import pytest

import core
from engine import constants, frame
from engine.client import Client
from engine.frame import HEADER, MAGIC, VERSION, Status
from engine.protocol import FILTER_ENCODER, OPERATIONS, AccountTransfersFilter, Operation
from engine.server import Server
from tests import workload
from tests.holding import holding_the_batcher

SECRETS = {1: b"service-one", 2: b"service-two"}
CLIENT = 1
SECRET = SECRETS[CLIENT]
TIMEOUT_S = 5.0       # for anything that must happen
QUIET_S = 0.3         # to see that nothing happens
LEDGER = core.Currency.CNY


def run(coroutine):
    return asyncio.run(coroutine)


# ---------------------------------------------------------------------------------------- frames

def build(operation: int = Operation.ping, request_id: int = 7, body: bytes = b"", *, event_count: int = 0,
          client_id: int = CLIENT, secret: bytes = SECRET, status: int = 0, magic: bytes = MAGIC,
          version: int = VERSION, length: int | None = None, body_length: int | None = None,
          reserved: bytes = bytes(8), checksum: int | None = None, mac: bytes | None = None) -> bytes:
    """A frame with any header field set as given; checksum and MAC computed unless given.

    The checksum and MAC cover the header as it is (with those two fields zero) and the body,
    exactly as ``engine.frame.encode`` computes them: a sender that knows ``secret`` can build
    every one of these frames, so each reaches the check that the field it breaks is for.
    """
    if length is None:
        length = HEADER.size - frame.LENGTH_PREFIX_BYTES + len(body)
    if body_length is None:
        body_length = len(body)
    header = bytearray(HEADER.pack(length, magic, version, operation, event_count, request_id, client_id, status,
                                   body_length, 0, bytes(constants.MAC_BYTES), reserved))
    if checksum is None:
        checksum = zlib.crc32(body, zlib.crc32(header))
    if mac is None:
        mac = hmac.new(secret, bytes(header) + body, hashlib.sha256).digest()[:constants.MAC_BYTES]
    struct.pack_into("<I", header, 36, checksum)
    header[40:56] = mac
    return bytes(header) + body


def transfers(first_id: int, count: int = 1, amount: int = 1) -> np.ndarray:
    """Plain transfers from the funding card (account 64) to wallet 1: they always succeed."""
    batch = np.zeros(count, dtype=core.TRANSFER_DTYPE)
    batch["id_lo"] = np.arange(first_id, first_id + count)
    batch["debit_account_id_lo"] = workload.ACCOUNTS
    batch["credit_account_id_lo"] = 1
    batch["amount"] = amount
    batch["ledger"] = LEDGER
    batch["code"] = core.TransferCode.p2p
    return batch


def create_transfers_frame(request_id: int, first_id: int, count: int = 1) -> bytes:
    """A valid, signed create_transfers request: it would change balances if it were applied."""
    return frame.encode(Operation.create_transfers, request_id, transfers(first_id, count).tobytes(),
                        client_id=CLIENT, secret=SECRET, event_count=count)


def ping_frame(request_id: int) -> bytes:
    return frame.encode(Operation.ping, request_id, client_id=CLIENT, secret=SECRET)


def reply_decoder() -> frame.Decoder:
    # Replies are signed with the client's secret; error frames for unreadable headers use
    # client id 0 and the empty secret.
    return frame.Decoder({CLIENT: SECRET, 0: b""}, set(OPERATIONS) | {0}, set())


# ---------------------------------------------------------------------------------------- the server

class Env:
    """A live server, its store, and a well-behaved client that has set up some balances."""

    def __init__(self, store: core.Store, server: Server, port: int, good: Client):
        self.store, self.server, self.port, self.good = store, server, port, good
        self.before: tuple[np.ndarray, int] | None = None

    async def snapshot(self) -> tuple[np.ndarray, int]:
        await self.good.lookup_accounts([1])  # waits for every batch received so far to be committed
        return self.store.ledger.accounts().copy(), self.store.sequence

    async def assert_untouched_and_serving(self, hostile_connections: int = 0) -> None:
        """Nothing was applied since ``before``, the hostile connections are gone, good clients work."""
        accounts, sequence = await self.snapshot()
        before_accounts, before_sequence = self.before
        assert sequence == before_sequence, "a rejected frame was logged"
        assert np.array_equal(accounts, before_accounts), "a rejected frame changed the ledger"
        await self.wait_connections(1 + hostile_connections)
        await asyncio.wait_for(self.good.ping(), TIMEOUT_S)
        found = await asyncio.wait_for(self.good.lookup_accounts(range(1, workload.ACCOUNTS + 1)), TIMEOUT_S)
        assert len(found) == workload.ACCOUNTS
        fresh = await Client.connect("127.0.0.1", self.port, client_id=2, secret=SECRETS[2])
        try:
            await asyncio.wait_for(fresh.ping(), TIMEOUT_S)
        finally:
            fresh.close()

    async def wait_connections(self, count: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while len(self.server.connections) != count and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert len(self.server.connections) == count, "the server kept a connection the client had left"


@contextlib.asynccontextmanager
async def serving(data_dir):
    store = core.open(data_dir, accounts_max=1000, transfers_hot_max=100_000)
    server = Server(store, SECRETS)
    good = None
    try:
        port = await server.start()
        good = await Client.connect("127.0.0.1", port, client_id=CLIENT, secret=SECRET)
        assert (await good.create_accounts(workload.account_batch())).tolist() == [0] * workload.ACCOUNTS
        assert (await good.create_transfers(transfers(1, 10, amount=100))).tolist() == [0] * 10
        env = Env(store, server, port, good)
        env.before = await env.snapshot()
        yield env
    finally:
        if good is not None:
            good.close()
        await server.close()
        store.close()


class Raw:
    """A raw connection to the server: hostile bytes out, replies decoded as they come back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.decoder = reply_decoder()
        self.replies: list[frame.Frame] = []
        self.eof = False

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> "Raw":
        if rcvbuf is None:
            return cls(*await asyncio.open_connection("127.0.0.1", port))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: no autotuning
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(*await asyncio.open_connection(sock=sock))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read_some(self, timeout: float) -> bool:
        """Read what comes within ``timeout``; False if nothing did."""
        try:
            chunk = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        except asyncio.TimeoutError:
            return False
        except ConnectionResetError:  # the server closed with our bytes unread: closed all the same
            chunk = b""
        if not chunk:
            self.eof = True
            return True
        for item in self.decoder.feed(chunk):
            assert isinstance(item, frame.Frame), f"the server sent a frame that does not check: {item}"
            self.replies.append(item)
        return True

    async def reply(self) -> frame.Frame:
        """The next reply (fails if none comes)."""
        deadline = time.monotonic() + TIMEOUT_S
        while not self.replies:
            assert not self.eof, "the connection was closed without a reply"
            assert await self._read_some(max(0.0, deadline - time.monotonic())), "no reply came"
        return self.replies.pop(0)

    async def assert_closed(self) -> None:
        """The server closes the connection, after sending nothing more."""
        deadline = time.monotonic() + TIMEOUT_S
        while not self.eof:
            assert await self._read_some(max(0.0, deadline - time.monotonic())), "the connection stayed open"
        assert self.replies == [], "the server answered frames that followed a closing error"

    async def assert_quiet(self) -> None:
        """Nothing comes back for a while, and the connection is not closed."""
        await self._read_some(QUIET_S)
        assert self.replies == [] and not self.eof

    async def assert_open(self, request_id: int = 999) -> None:
        """The connection is open and in step: a good ping on it is answered."""
        self.send(ping_frame(request_id))
        assert_ok(await self.reply(), Operation.ping, request_id)

    def close(self) -> None:
        self.writer.transport.abort()


def assert_error(reply: frame.Frame, status: Status, request_id: int = 0) -> None:
    """An error reply to a frame refused by the frame checks, as docs/protocol.md describes it
    (its ``operation`` has a test of its own: test_error_replies_carry_the_request_operation)."""
    assert Status(reply.status) == status
    assert reply.request_id == request_id
    assert reply.client_id == 0  # MACed with the empty key: the reply decoder checked it
    assert len(reply.body) == 0 and reply.event_count == 0


def assert_ok(reply: frame.Frame, operation: int, request_id: int) -> None:
    assert Status(reply.status) == Status.ok, Status(reply.status).name
    assert (reply.operation, reply.request_id, reply.client_id) == (operation, request_id, CLIENT)


async def closing_case(env: Env, bad: bytes, status: Status, request_id: int = 0) -> None:
    """``bad`` is answered with ``status``, then the connection is closed; a valid create sent
    right behind it on the same connection is never read, so it applies nothing either."""
    assert status.closes_connection
    raw = await Raw.open(env.port)
    raw.send(bad + create_transfers_frame(100, 10_000))
    assert_error(await raw.reply(), status, request_id)
    await raw.assert_closed()
    raw.close()
    await env.assert_untouched_and_serving()


async def open_case(env: Env, bad: bytes, status: Status, request_id: int) -> None:
    """``bad`` is answered with ``status``; the connection stays open and in step: a good frame
    sent right behind it, and another one later, are both answered."""
    assert not status.closes_connection
    raw = await Raw.open(env.port)
    raw.send(bad + ping_frame(101))
    assert_error(await raw.reply(), status, request_id)
    assert_ok(await raw.reply(), Operation.ping, 101)
    await raw.assert_open(102)
    raw.send(frame.encode(Operation.lookup_accounts, 103, core.ids_array([1, 2]).tobytes(), client_id=CLIENT,
                          secret=SECRET))
    found = await raw.reply()
    assert_ok(found, Operation.lookup_accounts, 103)
    assert len(found.body) == 2 * core.ACCOUNT_DTYPE.itemsize
    raw.close()
    await env.assert_untouched_and_serving()


# ---------------------------------------------------------------------------------------- framing

@pytest.mark.parametrize("cut", [2, frame.LENGTH_PREFIX_BYTES, 30, HEADER.size, HEADER.size + 100],
                         ids=["in-length", "after-length", "in-header", "after-header", "in-body"])
def test_truncated_frame_then_the_client_disconnects(data_dir, cut):
    async def scenario():
        async with serving(data_dir) as env:
            raw = await Raw.open(env.port)
            raw.send(create_transfers_frame(5, 10_000, count=3)[:cut])
            await raw.assert_quiet()  # the server waits for the rest of the frame
            assert len(env.server.connections) == 2
            raw.writer.close()        # and the client leaves mid-frame
            await env.assert_untouched_and_serving()
    run(scenario())


@pytest.mark.parametrize("length", [(1 << 20) + 65, 1 << 30, 0xFFFF_FFFF])
def test_oversized_length_prefix_is_too_large_and_closes(data_dir, length):
    async def scenario():
        async with serving(data_dir) as env:
            # Only the header follows: the server must answer without waiting for the body.
            await closing_case(env, build(length=length, body_length=length - 60), Status.too_large)
    run(scenario())


@pytest.mark.parametrize("length,too_large", [(constants.FRAME_BYTES_MAX - 4, False),
                                               (constants.FRAME_BYTES_MAX - 3, True)], ids=["largest", "one-more"])
def test_too_large_boundary_is_the_documented_one(data_dir, length, too_large):
    """docs/protocol.md: too_large when ``length`` > FRAME_BYTES_MAX - 4. Below that the server
    waits for the rest of the frame; above it, it answers at once, without the body."""
    async def scenario():
        async with serving(data_dir) as env:
            header = build(Operation.create_transfers, 5, length=length, body_length=length - 60,
                           event_count=constants.EVENTS_PER_REQUEST_MAX)
            if too_large:
                await closing_case(env, header, Status.too_large)
                return
            raw = await Raw.open(env.port)
            raw.send(header)
            await raw.assert_quiet()
            raw.close()
            await env.assert_untouched_and_serving()
    run(scenario())


@pytest.mark.parametrize("length", [0, 1, 59])
def test_too_small_length_closes(data_dir, length):
    async def scenario():
        async with serving(data_dir) as env:
            await closing_case(env, struct.pack("<I", length) + bytes(max(length, 0)), Status.too_small)
    run(scenario())


def test_wrong_magic_closes(data_dir):
    async def scenario():
        async with serving(data_dir) as env:
            await closing_case(env, build(Operation.ping, 5, magic=b"TALX"), Status.bad_magic)
    run(scenario())


@pytest.mark.parametrize("version", [0, 2, 0xFFFF])
def test_wrong_version_closes(data_dir, version):
    async def scenario():
        async with serving(data_dir) as env:
            await closing_case(env, build(Operation.ping, 5, version=version), Status.bad_version)
    run(scenario())


@pytest.mark.parametrize("body_length", [0, 127, 129, 0xFFFF_FFFF])
def test_body_length_that_disagrees_with_length_closes(data_dir, body_length):
    async def scenario():
        async with serving(data_dir) as env:
            body = transfers(10_000).tobytes()
            bad = build(Operation.create_transfers, 5, body, event_count=1, body_length=body_length)
            await closing_case(env, bad, Status.bad_length)
    run(scenario())


@pytest.mark.parametrize("where", ["body", "header", "checksum"])
def test_bad_checksum_is_answered_and_the_connection_stays_open(data_dir, where):
    async def scenario():
        async with serving(data_dir) as env:
            good = bytearray(create_transfers_frame(55, 10_000))
            position = {"body": len(good) - 1, "header": 20, "checksum": 36}[where]  # 20: request_id, high byte
            good[position] ^= 0x01
            request_id = struct.unpack_from("<Q", good, 16)[0]
            await open_case(env, bytes(good), Status.bad_checksum, request_id)
    run(scenario())


def test_reserved_not_zero_is_answered_and_the_connection_stays_open(data_dir):
    async def scenario():
        async with serving(data_dir) as env:
            bad = build(Operation.create_transfers, 56, transfers(10_000).tobytes(), event_count=1,
                        reserved=b"\x00" * 7 + b"\x80")
            await open_case(env, bad, Status.reserved_not_zero, 56)
    run(scenario())


@pytest.mark.parametrize("client_id", [0, 3, 77, 0xFFFF_FFFF])
def test_unknown_client_id_closes(data_dir, client_id):
    async def scenario():
        async with serving(data_dir) as env:
            bad = build(Operation.create_transfers, 57, transfers(10_000).tobytes(), event_count=1,
                        client_id=client_id, secret=b"guessed")
            await closing_case(env, bad, Status.unknown_client, 57)
    run(scenario())


@pytest.mark.parametrize("client_id,secret", [(1, b"wrong"), (1, b""), (2, SECRETS[1])],
                         ids=["wrong-secret", "empty-secret", "other-client's-id"])
def test_bad_mac_closes(data_dir, client_id, secret):
    async def scenario():
        async with serving(data_dir) as env:
            bad = build(Operation.create_transfers, 58, transfers(10_000).tobytes(), event_count=1,
                        client_id=client_id, secret=secret)
            await closing_case(env, bad, Status.bad_mac, 58)
    run(scenario())


def test_bad_mac_with_a_forged_checksum_closes(data_dir):
    async def scenario():
        async with serving(data_dir) as env:
            # The checksum is right (anyone can compute it), the MAC is not.
            bad = build(Operation.create_transfers, 59, transfers(10_000).tobytes(), event_count=1,
                        mac=bytes(constants.MAC_BYTES))
            await closing_case(env, bad, Status.bad_mac, 59)
    run(scenario())


@pytest.mark.parametrize("operation", [0, 10, 150, 199, 999, 1001, 0xFFFF])
def test_unknown_operation_is_answered_and_the_connection_stays_open(data_dir, operation):
    async def scenario():
        async with serving(data_dir) as env:
            bad = build(operation, 60, transfers(10_000).tobytes(), event_count=1)
            await open_case(env, bad, Status.unknown_operation, 60)
    run(scenario())


@pytest.mark.parametrize("operation,event_count,body_bytes", [
    (Operation.create_transfers, 2, 3 * 128),
    (Operation.create_transfers, 3, 2 * 128),
    (Operation.create_transfers, 1, 100),
    (Operation.create_accounts, 0, 128),
    (Operation.create_accounts, 1, 129),
])
def test_wrong_record_size_is_answered(data_dir, operation, event_count, body_bytes):
    async def scenario():
        async with serving(data_dir) as env:
            body = (transfers(10_000, 3).tobytes() + bytes(256))[:body_bytes]
            bad = build(operation, 61, body, event_count=event_count)
            await open_case(env, bad, Status.bad_record_size, 61)
    run(scenario())


@pytest.mark.parametrize("garbage,status", [
    (b"GET / HTTP/1.1\r\nHost: tally\r\n\r\n", Status.too_large),
    (bytes.fromhex("1603010200010001fc0303") + bytes(100), Status.too_large),  # a TLS ClientHello
    (bytes(64), Status.too_small),
    (struct.pack("<I", 100) + bytes(range(100)), Status.bad_magic),
    (struct.pack("<I", 60) + np.random.default_rng(7).bytes(60), Status.bad_magic),
], ids=["http", "tls", "zeros", "counting", "random"])
def test_garbage_bytes_close(data_dir, garbage, status):
    async def scenario():
        async with serving(data_dir) as env:
            await closing_case(env, garbage, status)
    run(scenario())


# ---------------------------------------------------------------------------------------- bodies

@pytest.mark.parametrize("operation", [Operation.create_accounts, Operation.create_transfers])
def test_an_empty_create_batch_applies_and_logs_nothing(data_dir, operation):
    async def scenario():
        async with serving(data_dir) as env:
            raw = await Raw.open(env.port)
            raw.send(frame.encode(operation, 62, b"", client_id=CLIENT, secret=SECRET, event_count=0))
            reply = await raw.reply()
            assert_ok(reply, operation, 62)
            assert len(reply.body) == 0 and reply.event_count == 0
            await raw.assert_open()
            raw.close()
            await env.assert_untouched_and_serving()  # store.sequence included: no empty log entry
    run(scenario())


@pytest.mark.parametrize("operation", [Operation.lookup_accounts, Operation.lookup_transfers])
@pytest.mark.parametrize("body_bytes", [1, 15, 17, 16 * 3 + 8, 16 * (constants.EVENTS_PER_REQUEST_MAX + 1)],
                         ids=["1", "15", "17", "56", "too-many-ids"])
def test_lookup_with_a_bad_body_is_bad_record_size(data_dir, operation, body_bytes):
    async def scenario():
        async with serving(data_dir) as env:
            ids = core.ids_array([1] * (body_bytes // 16 + 1)).tobytes()[:body_bytes]
            raw = await Raw.open(env.port)
            raw.send(frame.encode(operation, 63, ids, client_id=CLIENT, secret=SECRET) + ping_frame(64))
            reply = await raw.reply()
            assert Status(reply.status) == Status.bad_record_size
            assert (reply.operation, reply.request_id, reply.client_id, len(reply.body)) == (operation, 63, CLIENT, 0)
            assert_ok(await raw.reply(), Operation.ping, 64)
            await raw.assert_open()
            raw.close()
            await env.assert_untouched_and_serving()
    run(scenario())


BAD_FILTERS = {
    "empty": b"",
    "not-msgpack": b"\xc1",
    "truncated-map": FILTER_ENCODER.encode({"account_id": 1, "limit": 10})[:-1],
    "array": FILTER_ENCODER.encode([1, 0, 0]),
    "plain-int": FILTER_ENCODER.encode(1),
    "text": b"account_id=1",
    "unknown-field": FILTER_ENCODER.encode({"account_id": 1, "drop_table": True}),
    "missing-account": FILTER_ENCODER.encode({"limit": 10}),
    "wrong-type": FILTER_ENCODER.encode({"account_id": "1"}),
    "bool-as-int": FILTER_ENCODER.encode({"account_id": 1, "debits": 2}),
    "negative-account": FILTER_ENCODER.encode({"account_id": -1}),
    "negative-timestamp": FILTER_ENCODER.encode({"account_id": 1, "timestamp_min": -5}),
    "limit-too-big": FILTER_ENCODER.encode({"account_id": 1, "limit": constants.EVENTS_PER_REQUEST_MAX + 1}),
    "negative-limit": FILTER_ENCODER.encode({"account_id": 1, "limit": -1}),
    "valid-then-junk": FILTER_ENCODER.encode(AccountTransfersFilter(account_id=1)) + b"\x00",
}


@pytest.mark.parametrize("name", list(BAD_FILTERS))
def test_get_account_transfers_with_a_bad_body_is_bad_body(data_dir, name):
    async def scenario():
        async with serving(data_dir) as env:
            raw = await Raw.open(env.port)
            raw.send(frame.encode(Operation.get_account_transfers, 65, BAD_FILTERS[name], client_id=CLIENT,
                                  secret=SECRET) + ping_frame(66))
            reply = await raw.reply()
            assert Status(reply.status) == Status.bad_body == 13
            assert (reply.operation, reply.request_id, reply.client_id, len(reply.body)) == (
                Operation.get_account_transfers, 65, CLIENT, 0)
            assert_ok(await raw.reply(), Operation.ping, 66)
            # The same connection still answers a good filter.
            raw.send(frame.encode(Operation.get_account_transfers, 67,
                                  FILTER_ENCODER.encode(AccountTransfersFilter(account_id=1)),
                                  client_id=CLIENT, secret=SECRET))
            page = await raw.reply()
            assert_ok(page, Operation.get_account_transfers, 67)
            assert len(page.body) == 10 * core.TRANSFER_DTYPE.itemsize
            raw.close()
            await env.assert_untouched_and_serving()
    run(scenario())


@pytest.mark.parametrize("follower", ["succeeds", "fails"])
def test_a_request_that_leaves_a_linked_chain_open_does_not_chain_into_the_next_request(data_dir, follower):
    """docs/protocol.md: "Linked chains never cross a request: a request whose last event is linked
    ends its batch, so that chain fails with linked_event_chain_open rather than absorb another
    request's events." Here the next request is another client's, gathered into the same stage."""
    async def scenario():
        async with serving(data_dir) as env:
            open_chain = transfers(40_000)
            open_chain["flags"] = core.TransferFlags.linked
            other = transfers(40_001)
            if follower == "fails":
                other["debit_account_id_lo"] = 2   # a wallet with no money: exceeds_credits
            # What each request gives on its own, in a ledger in memory with the same state.
            memory = core.Ledger(accounts_max=1000, transfers_hot_max=100_000)
            memory.create_accounts(workload.account_batch(), 1)
            memory.create_transfers(transfers(1, 10, amount=100), 2)
            alone = (memory.create_transfers(open_chain, 3).tolist(), memory.create_transfers(other, 4).tolist())
            assert alone[0] == [core.Result.linked_event_chain_open]

            with holding_the_batcher(env.server) as release:
                blocker = asyncio.ensure_future(env.good.create_transfers(transfers(39_999)))
                raw = await Raw.open(env.port)
                raw.send(frame.encode(Operation.create_transfers, 1, open_chain.tobytes(), client_id=1,
                                      secret=SECRETS[1], event_count=1)
                         + frame.encode(Operation.create_transfers, 2, other.tobytes(), client_id=2,
                                        secret=SECRETS[2], event_count=1))
                deadline = time.monotonic() + TIMEOUT_S
                while sum(len(stage.requests) for stage in list(env.server._stages)) < 3:  # with the blocker
                    assert time.monotonic() < deadline, "the two requests did not reach the server"
                    await asyncio.sleep(0.001)
                release()
                assert (await blocker).tolist() == [core.Result.ok]
            memory.create_transfers(transfers(39_999), 5)  # the blocker, in memory too

            decoder = frame.Decoder({1: SECRETS[1], 2: SECRETS[2], 0: b""}, set(OPERATIONS) | {0}, set())
            replies = []
            while len(replies) < 2:
                replies += decoder.feed(await asyncio.wait_for(raw.reader.read(1 << 16), TIMEOUT_S))
            got = {r.request_id: [core.Result(x).name for x in np.frombuffer(r.body, np.uint32)] for r in replies}
            assert got == {1: [core.Result(alone[0][0]).name], 2: [core.Result(alone[1][0]).name]}
            server_accounts = await env.good.lookup_accounts(range(1, workload.ACCOUNTS + 1))
            for balance in ("debits_pending", "debits_posted", "credits_pending", "credits_posted"):
                assert np.array_equal(server_accounts[balance], memory.accounts()[balance]), balance
            raw.close()
    run(scenario())


@pytest.mark.parametrize("operation,bad", [
    (Operation.ping, lambda f: f[:36] + bytes([f[36] ^ 1]) + f[37:]),
    (Operation.create_transfers, lambda f: f[:36] + bytes([f[36] ^ 1]) + f[37:]),
    (Operation.lookup_accounts, lambda f: f[:-1] + bytes([f[-1] ^ 1])),
], ids=["ping-bad-checksum", "create-bad-checksum", "lookup-bad-checksum"])
def test_frame_check_error_replies_carry_operation_and_client_zero(data_dir, operation, bad):
    """docs/protocol.md: an error reply for a frame refused by the frame checks names the
    request_id when the header was read (statuses 6-12), but carries operation 0 and client id
    0: nothing else in a refused header can be trusted."""
    async def scenario():
        async with serving(data_dir) as env:
            body = {Operation.ping: b"", Operation.create_transfers: transfers(10_000).tobytes(),
                    Operation.lookup_accounts: core.ids_array([1]).tobytes()}[operation]
            good = frame.encode(operation, 71, body, client_id=CLIENT, secret=SECRET,
                                event_count=1 if operation == Operation.create_transfers else 0)
            raw = await Raw.open(env.port)
            raw.send(bad(good))
            reply = await raw.reply()
            assert (Status(reply.status), reply.request_id) == (Status.bad_checksum, 71)
            assert (reply.operation, reply.client_id) == (0, 0)
            raw.close()
            await env.assert_untouched_and_serving()
    run(scenario())


# ---------------------------------------------------------------------------------------- order

def test_replies_keep_request_order_around_bad_frames(data_dir):
    """docs/protocol.md: "Replies keep request order even for errors: an error reply is sent after
    the replies to the requests before it." A create, then a bad frame that keeps the connection
    and a ping, on one connection: three replies in that order.
    (Whether a later reply overtakes the create depends on how long its commit takes: a few
    rounds with full batches make the test deterministic.)"""
    async def scenario():
        async with serving(data_dir) as env:
            raw = await Raw.open(env.port)
            bad_checksum = bytearray(ping_frame(2))
            bad_checksum[36] ^= 1  # the checksum field itself: request_id 2 stays readable
            events = constants.EVENTS_PER_REQUEST_MAX
            for round in range(5):
                raw.send(create_transfers_frame(1, 20_000 + round * events, events) + bytes(bad_checksum)
                         + ping_frame(3))
                got = [(r.operation, r.request_id, Status(r.status).name) for r in
                       [await raw.reply(), await raw.reply(), await raw.reply()]]
                assert got == [(Operation.create_transfers, 1, "ok"), (0, 2, "bad_checksum"),
                               (Operation.ping, 3, "ok")], f"round {round}"
            raw.close()
    run(scenario())


def test_a_closing_error_is_the_last_reply(data_dir):
    """docs/protocol.md: "When the connection is closed after an error, the replies to earlier
    requests are sent first". A create, then garbage: the create's reply, the error reply, the close."""
    async def scenario():
        async with serving(data_dir) as env:
            events = constants.EVENTS_PER_REQUEST_MAX
            for round in range(5):
                raw = await Raw.open(env.port)
                raw.send(create_transfers_frame(1, 20_000 + round * events, events) + b"GET / HTTP/1.1\r\n\r\n")
                got = [(r.operation, r.request_id, Status(r.status).name) for r in
                       [await raw.reply(), await raw.reply()]]
                assert got == [(Operation.create_transfers, 1, "ok"), (0, 0, "too_large")], f"round {round}"
                await raw.assert_closed()
    run(scenario())


# ---------------------------------------------------------------------------------------- clients that do not read

class AcceptCounter:
    """Counts the frames the server accepts from each connection, and the most it had in flight."""

    def __init__(self, server: Server):
        self.accepted: dict[object, int] = {}
        self.most_in_flight: dict[object, int] = {}
        accept = server.accept

        def counting(connection, item, nbytes):
            accept(connection, item, nbytes)
            self.accepted[connection] = self.accepted.get(connection, 0) + 1
            self.most_in_flight[connection] = max(self.most_in_flight.get(connection, 0),
                                                  connection.in_flight_requests)

        server.accept = counting  # an instance attribute: Connection calls self.server.accept


def _server_side(env: Env, exclude) -> object:
    (connection,) = [c for c in env.server.connections if c not in exclude]
    return connection


def test_a_client_that_never_reads_is_throttled_and_others_are_served(data_dir):
    async def scenario():
        async with serving(data_dir) as env:
            counter = AcceptCounter(env.server)
            known = set(env.server.connections)
            # Small lookups (8 accounts: 192 request bytes, 1088 reply bytes) that are never read.
            request = frame.encode(Operation.lookup_accounts, 1, core.ids_array(range(1, 9)).tobytes(),
                                   client_id=CLIENT, secret=SECRET)
            reply_bytes = HEADER.size + 8 * core.ACCOUNT_DTYPE.itemsize
            raw = await Raw.open(env.port, rcvbuf=64 * 1024)
            connection = _server_side(env, known)
            sent, stalled = 0, False
            started = time.monotonic()
            while not stalled and sent * len(request) < 256 << 20:
                raw.send(request * 512)
                sent += 512
                try:
                    await asyncio.wait_for(raw.writer.drain(), 0.3)
                except asyncio.TimeoutError:
                    stalled = True
            assert stalled, f"the server read all {sent} requests of a client that reads no reply"
            assert time.monotonic() - started < 10

            # Meanwhile another client is served at once: pings, lookups and new transfers.
            for i in range(5):
                t = time.monotonic()
                await asyncio.wait_for(env.good.ping(), 1.0)
                assert len(await asyncio.wait_for(env.good.lookup_accounts([1, 2, 3]), 1.0)) == 3
                results = await asyncio.wait_for(env.good.create_transfers(transfers(30_000 + i)), 1.0)
                assert results.tolist() == [core.Result.ok]
                assert time.monotonic() - t < 1.0

            # The non-reader's intake has stopped, and stays within the limits.
            accepted = counter.accepted[connection]
            await asyncio.sleep(QUIET_S)
            assert counter.accepted[connection] == accepted, "the server still reads from a client that reads nothing"
            assert connection in env.server.paused
            assert connection.in_flight_requests <= constants.IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX
            assert env.server.in_flight_bytes <= constants.IN_FLIGHT_BYTES_MAX
            sock = connection.transport.get_extra_info("socket")
            kernel_bytes = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                            + raw.writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            # What the server may have answered: the write high-water mark, what the kernels buffer,
            # and what it had in flight (requests read in one go included) when it stopped reading.
            bound = (math.ceil((constants.WRITE_BUFFER_BYTES_HIGH + kernel_bytes) / reply_bytes) + 1
                     + constants.IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX
                     + constants.RECEIVE_BUFFER_BYTES_MIN // len(request))
            assert accepted <= bound, (accepted, bound)
            assert accepted < sent

            # Once the client reads, every request it sent is answered, once and in order.
            for _ in range(sent):
                reply = await raw.reply()
                assert_ok(reply, Operation.lookup_accounts, 1)
                assert len(reply.body) == 8 * core.ACCOUNT_DTYPE.itemsize
            assert counter.accepted[connection] == sent
            await raw._read_some(0.05)
            assert raw.replies == []
            raw.close()
            await env.wait_connections(1)
    run(scenario())


def test_in_flight_requests_per_connection_stay_within_the_limit(data_dir):
    """docs/protocol.md (limits): 256 requests in flight per connection, then "the server stops
    reading from that connection until replies go out" (engine/constants.py: the most requests a
    connection may have received and not yet been answered). One write of many pings must not
    get more than that in flight."""
    async def scenario():
        async with serving(data_dir) as env:
            counter = AcceptCounter(env.server)
            known = set(env.server.connections)
            raw = await Raw.open(env.port)
            count = 4 * constants.RECEIVE_BUFFER_BYTES_MIN // HEADER.size
            raw.send(b"".join(ping_frame(i) for i in range(1, count + 1)))
            for i in range(1, count + 1):
                assert_ok(await raw.reply(), Operation.ping, i)
            connection = _server_side(env, known)
            most = counter.most_in_flight[connection]
            raw.close()
            assert most <= constants.IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, (
                f"{most} requests in flight on one connection, the limit is "
                f"{constants.IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX}")
    run(scenario())


def test_reply_bytes_held_for_a_client_that_never_reads_stay_bounded(data_dir):
    """docs/protocol.md (limits): "An overloaded server slows its clients down; its memory stays
    bounded", and reply bytes a client leaves unread are limited to about 2 MiB. Small requests with large replies (get_account_transfers pages of up to
    8,190 transfers, 1 MiB each) from a client that reads nothing must not make the server hold
    more than its write high-water mark plus a connection's in-flight budget."""
    async def scenario():
        async with serving(data_dir) as env:
            page = constants.EVENTS_PER_REQUEST_MAX
            for first in range(100_000, 100_000 + page, page):
                results = await env.good.create_transfers(transfers(first, page))
                assert results.tolist() == [0] * page
            counter = AcceptCounter(env.server)
            known = set(env.server.connections)
            raw = await Raw.open(env.port, rcvbuf=64 * 1024)
            query = frame.encode(Operation.get_account_transfers, 1,
                                 FILTER_ENCODER.encode(AccountTransfersFilter(account_id=workload.ACCOUNTS)),
                                 client_id=CLIENT, secret=SECRET)
            requests = 32  # 32 small requests: well within every request limit
            raw.send(query * requests)
            connection = _server_side(env, known)
            deadline = time.monotonic() + TIMEOUT_S
            while (counter.accepted.get(connection, 0) < requests or connection.in_flight_requests) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            held = connection.transport.get_write_buffer_size()
            bound = constants.WRITE_BUFFER_BYTES_HIGH + constants.IN_FLIGHT_BYTES_PER_CONNECTION_MAX
            raw.close()
            assert held <= bound, (
                f"{requests} requests of {len(query)} bytes made the server queue {held:,} reply bytes for a "
                f"client that reads nothing (write high-water mark {constants.WRITE_BUFFER_BYTES_HIGH:,}, "
                f"in-flight budget {constants.IN_FLIGHT_BYTES_PER_CONNECTION_MAX:,})")
    run(scenario())
