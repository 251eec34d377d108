"""Fuzzing a live server with random and mutated frames: it never crashes, never applies a bad frame.

One server per test function runs on its own event loop in a background thread. A well-behaved
client creates accounts with known balances; then each Hypothesis example opens a fresh raw
connection and sends a stream built from correctly signed frames (``engine.frame.encode`` with
the real secrets) that are then mutated: bytes flipped, header fields replaced (and optionally
re-checksummed, or re-checksummed and re-signed with the real secret, so that the frame gets past
the checks at every depth), truncated, garbage inserted or appended, random lengths, pure noise,
all sent in one piece or split across several writes.

The expected outcome of each stream comes from an oracle: ``engine.frame.frame_bytes`` and
``engine.frame.Checker`` (the reference implementation of docs/protocol.md) say which frames the
server must see, which check each one fails, and whether the connection must be closed; the
frames that pass go to an in-memory ``core.Ledger`` mirror. After each example:

* the server sent exactly the expected replies (statuses, request ids, result codes, records
  found), then closed the connection if and only if the oracle says so; an open connection is
  still in step (a ping on it is answered);
* the server dropped the connection once the client left, and a good client's ping works;
* the balances over the wire equal the mirror's: a frame that failed any check changed nothing
  (a mutated frame can only be valid if it was re-signed with the real secret), and
  ``store.sequence`` did not move unless a valid create was sent;

and at the end of the test, per ledger, debits equal credits (posted and pending), no request
bytes are left in flight, and the store reopened from disk has the same balances.

The mirror applies each valid request alone, in stream order: docs/protocol.md says each event
gets the result it would get alone in its position, and linked chains never cross a request,
however the server gathers requests into core batches. Replies must come back in request order,
errors included. Frames are never re-signed
into creates with bodies or operations of another kind: a transfer body re-read as accounts, or
the other way round, could create pending transfers with timeouts, whose expiry depends on the
server's clock.

``pytest -m slow`` runs many more examples.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import core
from engine import constants, frame
from engine.client import BlockingClient
from engine.frame import HEADER, FrameError, Status
from core.machine import Machine
from engine.protocol import (
    CREATE_RECORD_DTYPES, FILTER_DECODER, FILTER_ENCODER, ID_BYTES, LOOKUP_RECORD_DTYPES, NOTIFICATIONS_DECODER,
    OPERATIONS, PAGE_DECODER, QUOTE_DECODER,
    AccountTransfersFilter, Operation,
)
from engine.server import Server

SECRETS = {1: b"service-one", 2: b"service-two"}
ACCOUNTS_MAX = 1000
TRANSFERS_MAX = 100_000
TIMEOUT_S = 5.0
SENTINEL_ID = (1 << 64) - 1
CNY, USD = 156, 840

SETUP_ACCOUNTS = [
    {"id": 1, "ledger": CNY, "code": 3},                  # funding cards: may go negative
    {"id": 2, "ledger": CNY, "code": 3},
    {"id": 3, "ledger": CNY, "code": 1, "flags": 2},      # wallets: debits_must_not_exceed_credits
    {"id": 4, "ledger": CNY, "code": 1, "flags": 2},
    {"id": 5, "ledger": USD, "code": 8, "flags": 4},      # a credit line: credits_must_not_exceed_debits
    {"id": 6, "ledger": USD, "code": 2},
]
SETUP_TRANSFERS = [
    {"id": 1_000_001, "debit_account_id": 1, "credit_account_id": 3, "amount": 5_000, "ledger": CNY, "code": 4},
    {"id": 1_000_002, "debit_account_id": 2, "credit_account_id": 4, "amount": 5_000, "ledger": CNY, "code": 4},
    {"id": 1_000_003, "debit_account_id": 5, "credit_account_id": 6, "amount": 3_000, "ledger": USD, "code": 8},
    {"id": 1_000_004, "debit_account_id": 3, "credit_account_id": 4, "amount": 700, "ledger": CNY, "code": 1,
     "flags": 2},  # a pending transfer, no timeout
]
ACCOUNT_IDS = list(range(1, 13))        # 1-6 exist, 7-10 may be created by the fuzz, 11-12 never
TRANSFER_POOL = list(range(1, 41))      # reused ids: exists, exists_with_different_*, post/void targets
BALANCES = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
COMPARED = ("id_lo", "id_hi") + BALANCES + ("ledger", "code", "flags")

CHECKER = frame.Checker(SECRETS, set(OPERATIONS), set(CREATE_RECORD_DTYPES))


def reply_decoder() -> frame.Decoder:
    return frame.Decoder({**SECRETS, 0: b""}, set(OPERATIONS) | {0}, set())


# ---------------------------------------------------------------------------------------- a live server

class LiveServer:
    """A Server over a fresh store on its own event loop thread, and a good client."""

    def __init__(self, path: str):
        self.path = path
        self.store = core.open(path, accounts_max=ACCOUNTS_MAX, transfers_hot_max=TRANSFERS_MAX)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-server", daemon=True)
        self.thread.start()
        self.server = Server(self.store, SECRETS)
        self.port = self.call(self.server.start())
        self.good = BlockingClient("127.0.0.1", self.port, client_id=1, secret=SECRETS[1])

    def call(self, coroutine, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_connections(self, count: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while len(self.server.connections) != count and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(self.server.connections) == count, "the server kept a connection its client had left"

    def close(self) -> None:
        self.good.close()
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()
            self.store.close()


# ---------------------------------------------------------------------------------------- frames

@dataclass
class Plain:
    """A correctly signed request, before any mutation."""
    operation: int
    client_id: int
    body: bytes
    encoded: bytes


def reseal(raw: bytearray, secret: bytes | None) -> None:
    """Recompute the checksum (and, with ``secret``, the MAC) of a whole frame in place."""
    header = bytearray(raw[:HEADER.size])
    header[36:56] = bytes(20)
    body = bytes(raw[HEADER.size:])
    struct.pack_into("<I", raw, 36, zlib.crc32(body, zlib.crc32(header)))
    if secret is not None:
        raw[40:56] = hmac.new(secret, bytes(header) + body, hashlib.sha256).digest()[:constants.MAC_BYTES]


amounts = st.one_of(st.integers(1, 3_000), st.sampled_from([0, 1, 4_999, 5_000, 5_001]))


@st.composite
def transfer_rows(draw):
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        flags = draw(st.sampled_from([0, 0, 0, 0, 1, 1, 3, 2, 2, 4, 8, 16, 32]))  # 1: linked, 3: linked pending
        row = {"id": draw(st.one_of(st.sampled_from(TRANSFER_POOL), st.integers(1_000, 1 << 40))),
               "debit_account_id": draw(st.sampled_from(ACCOUNT_IDS)),
               "credit_account_id": draw(st.sampled_from(ACCOUNT_IDS)),
               "amount": draw(amounts), "ledger": draw(st.sampled_from([CNY, CNY, USD])),
               "code": draw(st.integers(1, 4)), "flags": flags}
        if flags & (4 | 8):
            row["pending_id"] = draw(st.one_of(st.sampled_from(TRANSFER_POOL), st.just(1_000_004)))
        rows.append(row)
    return core.transfers_from_dicts(rows).tobytes(), len(rows)


@st.composite
def account_rows(draw):
    rows = [{"id": draw(st.sampled_from(ACCOUNT_IDS)), "ledger": draw(st.sampled_from([CNY, USD])),
             "code": draw(st.integers(1, 4)), "flags": draw(st.sampled_from([0, 2, 4, 1]))}
            for _ in range(draw(st.integers(1, 2)))]
    return core.accounts_from_dicts(rows).tobytes(), len(rows)


@st.composite
def plain_frames(draw) -> Plain:
    operation = draw(st.sampled_from([Operation.ping, Operation.create_transfers, Operation.create_transfers,
                                      Operation.create_accounts, Operation.lookup_accounts,
                                      Operation.lookup_transfers, Operation.get_account_transfers]))
    client_id = draw(st.sampled_from([1, 1, 1, 2]))
    request_id = draw(st.one_of(st.integers(0, 20), st.integers(0, SENTINEL_ID - 1)))
    body, events = b"", 0
    if operation == Operation.create_transfers:
        body, events = draw(transfer_rows())
    elif operation == Operation.create_accounts:
        body, events = draw(account_rows())
    elif operation == Operation.lookup_accounts:
        body = core.ids_array(draw(st.lists(st.sampled_from(ACCOUNT_IDS), max_size=5))).tobytes()
    elif operation == Operation.lookup_transfers:
        body = core.ids_array(draw(st.lists(st.sampled_from(TRANSFER_POOL + [1_000_001, 1_000_004]),
                                            max_size=5))).tobytes()
    elif operation == Operation.get_account_transfers:
        body = FILTER_ENCODER.encode(AccountTransfersFilter(
            account_id=draw(st.sampled_from(ACCOUNT_IDS)), limit=draw(st.integers(0, 30)),
            debits=draw(st.booleans()), credits=draw(st.booleans()), reverse=draw(st.booleans())))
    encoded = frame.encode(operation, request_id, body, client_id=client_id, secret=SECRETS[client_id],
                           event_count=events)
    return Plain(int(operation), client_id, body, encoded)


FIELDS = {  # name: (offset, struct format)
    "length": (0, "<I"), "magic": (4, "4s"), "version": (8, "<H"), "operation": (10, "<H"),
    "event_count": (12, "<I"), "request_id": (16, "<Q"), "client_id": (24, "<I"), "status": (28, "<I"),
    "body_length": (32, "<I"), "checksum": (36, "<I"), "mac": (40, "16s"), "reserved": (56, "8s"),
}


def field_values(name: str, current: int | bytes):
    """Values worth trying for one header field."""
    if name in ("length", "body_length", "event_count"):
        limit = constants.FRAME_BYTES_MAX
        return st.one_of(st.integers(-130, 130).map(lambda d: (current + d) % (1 << 32)),
                         st.sampled_from([0, 1, 59, 60, 61, limit - 5, limit - 4, limit - 3, limit, limit + 1,
                                          constants.EVENTS_PER_REQUEST_MAX, constants.EVENTS_PER_REQUEST_MAX + 1,
                                          (1 << 31), (1 << 32) - 1]),
                         st.integers(0, (1 << 32) - 1))
    if name == "magic":
        return st.one_of(st.sampled_from([b"TALX", b"taly", b"YLAT", bytes(4)]), st.binary(min_size=4, max_size=4))
    if name == "version":
        return st.one_of(st.sampled_from([0, 2, 0xFFFF]), st.integers(0, 0xFFFF))
    if name == "operation":
        return st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 100, 199, 999, 1000, 1001, 0xFFFF]),
                         st.integers(0, 0xFFFF))
    if name == "request_id":
        return st.integers(0, SENTINEL_ID - 1)
    if name == "client_id":
        return st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, (1 << 32) - 1))
    if name in ("status", "checksum"):
        return st.one_of(st.sampled_from([0, 1, 6, 13]), st.integers(0, (1 << 32) - 1))
    if name == "mac":
        return st.binary(min_size=16, max_size=16)
    return st.one_of(st.binary(min_size=8, max_size=8), st.sampled_from([b"\x01" + bytes(7), bytes(7) + b"\x80"]))


FILTER_FIELDS = ["account_id", "timestamp_min", "timestamp_max", "limit", "debits", "credits", "reverse"]
msgpack_values = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.integers(-2, 10_000), st.booleans(),
                           st.text(max_size=5), st.none(), st.lists(st.integers(0, 9), max_size=3))
bodies = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(FILTER_FIELDS + ["x", ""]), msgpack_values, max_size=5).map(FILTER_ENCODER.encode),
    st.builds(lambda account, extra: FILTER_ENCODER.encode({"account_id": account, **extra}),
              st.sampled_from(ACCOUNT_IDS), st.dictionaries(st.sampled_from(FILTER_FIELDS[1:]), msgpack_values,
                                                            max_size=2)),
)


def reframed(raw: bytearray, body: bytes) -> bytearray:
    """The same header over another body, with length and body_length to match."""
    out = bytearray(raw[:HEADER.size]) + body
    struct.pack_into("<I", out, 0, HEADER.size - frame.LENGTH_PREFIX_BYTES + len(body))
    struct.pack_into("<I", out, 32, len(body))
    return out


@st.composite
def mutated(draw, plain: Plain) -> bytes:
    """``plain`` as is, or with one mutation, at a depth chosen by how it is re-sealed.

    ``flip`` and ``field`` break anything, optionally re-checksummed or re-signed; ``deep`` replaces
    a field that only the later checks (or the operation itself) look at and re-signs the frame;
    ``body`` gives the frame another body (another length too), re-signed.
    """
    raw = bytearray(plain.encoded)
    mode = draw(st.sampled_from(["none", "none", "none", "flip", "field", "field", "deep", "deep", "body",
                                 "truncate"]))
    if mode == "none":
        return bytes(raw)
    if mode == "truncate":
        return bytes(raw[:draw(st.integers(0, len(raw) - 1))])
    seal = draw(st.sampled_from(["none", "checksum", "signed"]))
    if mode == "flip":
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
    elif mode == "body":
        seal = "signed"
        body = draw(st.one_of(bodies, st.integers(-130, 130).map(
            lambda d: plain.body[:max(0, len(plain.body) + d)] + bytes(max(0, d)))))
        raw = reframed(raw, body)
    else:
        names = list(FIELDS) if mode == "field" else ["operation", "event_count", "client_id", "reserved", "status",
                                                      "request_id"]
        if mode == "deep":
            seal = draw(st.sampled_from(["signed", "signed", "checksum"]))
        name = draw(st.sampled_from(names))
        offset, fmt = FIELDS[name]
        (current,) = struct.unpack_from(fmt, raw, offset)
        struct.pack_into(fmt, raw, offset, draw(field_values(name, current)))
        if name in ("checksum", "mac"):
            seal = "none"  # the mutation is the point
    if seal != "none":
        (client_id,) = struct.unpack_from("<I", raw, 24)
        secret = SECRETS.get(client_id, SECRETS[plain.client_id]) if seal == "signed" else None
        reseal(raw, secret)
        (operation,) = struct.unpack_from("<H", raw, 10)
        if (seal == "signed" and operation in CREATE_RECORD_DTYPES
                and (operation != plain.operation or bytes(raw[HEADER.size:]) != plain.body)
                and _passes_every_check(raw)):
            # A valid create with records the generator did not write: keep it out of the ledger
            # (see the module's docstring) by making it an unknown operation instead.
            struct.pack_into("<H", raw, 10, 4242)
            reseal(raw, secret)
    return bytes(raw)


def _passes_every_check(raw: bytearray) -> bool:
    total = frame.frame_bytes(raw) if len(raw) >= frame.LENGTH_PREFIX_BYTES else 0
    return (not isinstance(total, Status) and total == len(raw)
            and not isinstance(CHECKER.check(memoryview(bytes(raw))), FrameError))


@st.composite
def streams(draw) -> tuple[bytes, list[int]]:
    """The bytes of one connection, and where to split them into separate writes."""
    kind = draw(st.sampled_from(["frames"] * 8 + ["noise", "noise-with-length"]))
    if kind == "noise":
        stream = draw(st.binary(max_size=300))
    elif kind == "noise-with-length":
        noise = draw(st.binary(max_size=300))
        stream = struct.pack("<I", draw(st.one_of(st.integers(55, 320), st.integers(0, (1 << 32) - 1)))) + noise
    else:
        parts = [draw(mutated(plain)) for plain in draw(st.lists(plain_frames(), min_size=1, max_size=4))]
        stream = b"".join(parts)
        extra = draw(st.sampled_from(["none", "none", "none", "truncate", "insert", "append"]))
        if extra == "truncate":
            stream = stream[:draw(st.integers(0, len(stream)))]
        elif extra in ("insert", "append"):
            junk = draw(st.one_of(st.binary(min_size=1, max_size=80),
                                  st.binary(min_size=0, max_size=80).map(lambda b: struct.pack("<I", 60) + b)))
            at = draw(st.integers(0, len(stream))) if extra == "insert" else len(stream)
            stream = stream[:at] + junk + stream[at:]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=3))))
    return stream, [c for c in cuts if 0 < c < len(stream)]


# ---------------------------------------------------------------------------------------- the oracle

def oracle(stream: bytes) -> tuple[list, bool, int]:
    """What the server must make of ``stream`` (docs/protocol.md): the frames and frame errors in
    order, whether the connection must then be closed, and how many bytes are left unframed."""
    items, position, view = [], 0, memoryview(stream)
    while len(stream) - position >= frame.LENGTH_PREFIX_BYTES:
        total = frame.frame_bytes(stream, position)
        if isinstance(total, Status):
            items.append(FrameError(total, 0))
            return items, True, 0
        if len(stream) - position < total:
            break
        item = CHECKER.check(view[position:position + total])
        position += total
        items.append(item)
        if isinstance(item, FrameError) and item.status.closes_connection:
            return items, True, 0
    return items, False, len(stream) - position


ANY = object()  # a reply body that is not predicted


def record_ids(body, dtype) -> tuple:
    """The key of each record of a reply (its first 16 bytes: an id, or a merchant's account)."""
    words = np.frombuffer(bytes(body), dtype=np.uint8).reshape(-1, dtype.itemsize)[:, :16].copy().view("<u8")
    return tuple(zip(words[:, 0].tolist(), words[:, 1].tolist()))


class Mirror:
    """The state machine as the documented protocol says it must be: valid frames applied in
    order, whatever their operation (a mutated frame re-signed may be of any of them)."""

    def __init__(self, secret: bytes):
        self.machine = Machine(accounts_max=ACCOUNTS_MAX, transfers_hot_max=TRANSFERS_MAX, secret=secret)
        self.ledger = self.machine.ledger
        self.now = time.time_ns()

    def _now(self) -> int:
        self.now = max(self.now + 1, time.time_ns())
        return self.now

    def create(self, operation: int, body) -> np.ndarray:
        return self.machine.apply(operation, np.frombuffer(bytes(body), dtype=CREATE_RECORD_DTYPES[operation]),
                                  self._now())

    def expect(self, item) -> tuple:
        """(operation, request_id, client_id, status, event_count, body key) of the reply to ``item``."""
        if isinstance(item, FrameError):
            return 0, item.request_id, 0, int(item.status), 0, b""
        head = (item.operation, item.request_id, item.client_id)
        if item.operation == Operation.ping:
            return (*head, Status.ok, 0, b"")
        if item.operation in CREATE_RECORD_DTYPES:
            results = self.create(item.operation, item.body)
            return (*head, Status.ok, len(results), results.tobytes())
        if item.operation in LOOKUP_RECORD_DTYPES:
            if len(item.body) % ID_BYTES or len(item.body) // ID_BYTES > constants.EVENTS_PER_REQUEST_MAX:
                return (*head, Status.bad_record_size, 0, b"")
            ids = np.frombuffer(bytes(item.body), dtype=core.ID_DTYPE)
            # Every lookup is the machine's (or its ledger's) method of the operation's name.
            owner = self.ledger if item.operation in (Operation.lookup_accounts, Operation.lookup_transfers) else self.machine
            found = getattr(owner, Operation(item.operation).name)(ids)
            return (*head, Status.ok, len(found), record_ids(found, LOOKUP_RECORD_DTYPES[item.operation]))
        decoder = {Operation.subscribe_notifications: NOTIFICATIONS_DECODER, Operation.list_merchants: PAGE_DECODER,
                   Operation.get_account_transfers: FILTER_DECODER,
                   Operation.quote_cross_border: QUOTE_DECODER}[item.operation]
        query = _decoded(decoder, bytes(item.body))
        if query is None:
            return (*head, Status.bad_body, 0, b"")
        if item.operation == Operation.quote_cross_border:
            found = self.machine.fx.quote(query.from_ledger, query.to_ledger, query.merchant_amounts)
            return (*head, Status.ok, len(found), record_ids(found.tobytes(), core.FX_QUOTE_DTYPE))
        if item.operation == Operation.subscribe_notifications:  # read from the log: not mirrored
            return (*head, Status.ok, ANY, ANY)
        if item.operation == Operation.list_merchants:
            found = self.machine.list_merchants(query.offset, query.limit)
            return (*head, Status.ok, len(found), record_ids(found, core.MERCHANT_DTYPE))
        if query.timestamp_min or query.timestamp_max:  # timestamps are the server's clock: not predictable
            return (*head, Status.ok, ANY, ANY)
        found = self.ledger.get_account_transfers(
            query.account_id, timestamp_min=0, timestamp_max=0, limit=query.limit, debits=query.debits,
            credits=query.credits, reverse=query.reverse)
        return (*head, Status.ok, len(found), record_ids(found, core.TRANSFER_DTYPE))


def _decoded(decoder, body: bytes):
    """A query's msgpack body decoded and in range, or None (the server answers bad_body)."""
    try:
        query = decoder.decode(body)
    except Exception:
        return None
    return query if query.check() is None else None


def reply_key(reply: frame.Frame) -> tuple:
    body = bytes(reply.body)
    if reply.status == Status.ok and reply.operation in LOOKUP_RECORD_DTYPES:
        body = record_ids(body, LOOKUP_RECORD_DTYPES[reply.operation])
    elif reply.status == Status.ok and reply.operation == Operation.list_merchants:
        body = record_ids(body, core.MERCHANT_DTYPE)
    elif reply.status == Status.ok and reply.operation == Operation.get_account_transfers:
        body = record_ids(body, core.TRANSFER_DTYPE)
    elif reply.status == Status.ok and reply.operation == Operation.quote_cross_border:
        body = record_ids(body, core.FX_QUOTE_DTYPE)
    return reply.operation, reply.request_id, reply.client_id, reply.status, reply.event_count, body


def assert_same_replies(got: list[tuple], expected: list[tuple]) -> None:
    """The same replies in the same order (replies keep request order); ANY matches any count and body."""
    assert len(got) == len(expected), f"{len(got)} replies, expected {len(expected)}\ngot {got}\nexpected {expected}"
    for index, (reply, want) in enumerate(zip(got, expected)):
        if ANY in want:
            assert reply[:4] == want[:4], f"reply {index}: {reply} != {want}\ngot {got}\nexpected {expected}"
        else:
            assert reply == want, f"reply {index}: {reply} != {want}\ngot {got}\nexpected {expected}"


# ---------------------------------------------------------------------------------------- one connection

class RawConnection:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = reply_decoder()
        self.replies: list[frame.Frame] = []
        self.eof = False
        self.subscriptions: set[int] = set()  # request ids of subscriptions answered

    def send(self, stream: bytes, cuts: list[int]) -> bool:
        """Send ``stream`` in pieces; False if the server closed the connection first."""
        for start, end in zip([0] + cuts, cuts + [len(stream)]):
            if start:
                time.sleep(0.002)  # separate reads on the server, most of the time
            try:
                self.sock.sendall(stream[start:end])
            except (BrokenPipeError, ConnectionResetError):
                return False
        return True

    def _read(self) -> None:
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:  # closed with our bytes unread: closed all the same
            chunk = b""
        except socket.timeout:
            raise AssertionError(f"no reply within {TIMEOUT_S} s ({len(self.replies)} so far)") from None
        if not chunk:
            self.eof = True
            return
        for item in self.decoder.feed(chunk):
            assert isinstance(item, frame.Frame), f"the server sent a frame that does not check: {item}"
            if not self._pushed(item):
                self.replies.append(item)

    def _pushed(self, item) -> bool:
        """A subscription's later frame (its first is the request's reply): not a reply."""
        if item.operation != Operation.subscribe_notifications or item.status != Status.ok:
            return False
        if item.request_id in self.subscriptions:
            return True
        self.subscriptions.add(item.request_id)
        return False

    def read_replies(self, count: int) -> list[frame.Frame]:
        while len(self.replies) < count and not self.eof:
            self._read()
        assert len(self.replies) >= count, f"closed after {len(self.replies)} of {count} replies"
        got, self.replies = self.replies[:count], self.replies[count:]
        return got

    def assert_closed(self) -> None:
        while not self.eof:
            self._read()
        assert not self.replies, f"replies after the expected ones: {self.replies}"

    def assert_in_step(self) -> None:
        self.sock.sendall(frame.encode(Operation.ping, SENTINEL_ID, client_id=1, secret=SECRETS[1]))
        (reply,) = self.read_replies(1)
        assert (reply.operation, reply.request_id, reply.status) == (Operation.ping, SENTINEL_ID, Status.ok), reply

    def assert_nothing_more(self) -> None:
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            data = None
        except ConnectionResetError:
            data = b"<reset>"
        if data and data != b"<reset>":  # a subscription's later frames may come: not replies
            data = [item for item in self.decoder.feed(data) if not self._pushed(item)] or None
        assert data is None, f"the server sent {data!r} after the expected replies"

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------------------- the test

def server_accounts(live: LiveServer) -> np.ndarray:
    return live.good.lookup_accounts(ACCOUNT_IDS)


def assert_balances_equal(server: np.ndarray, mirror: np.ndarray) -> None:
    assert len(server) == len(mirror), (record_ids(server, core.ACCOUNT_DTYPE), record_ids(mirror, core.ACCOUNT_DTYPE))
    for name in COMPARED:
        assert np.array_equal(server[name], mirror[name]), (name, server[name], mirror[name])


def assert_ledger_invariants(accounts: np.ndarray) -> None:
    for ledger in set(accounts["ledger"].tolist()):
        rows = accounts[accounts["ledger"] == ledger]
        for debits, credits in (("debits_posted", "credits_posted"), ("debits_pending", "credits_pending")):
            assert sum(map(int, rows[debits])) == sum(map(int, rows[credits])), (ledger, debits, credits)


def fuzz(data_dir: str, max_examples: int) -> None:
    live = LiveServer(data_dir)
    mirror = Mirror(live.store.secret)
    try:
        for rows, create in ((SETUP_ACCOUNTS, live.good.create_accounts),
                             (SETUP_TRANSFERS, live.good.create_transfers)):
            batch = (core.accounts_from_dicts(rows) if create == live.good.create_accounts
                     else core.transfers_from_dicts(rows))
            operation = (Operation.create_accounts if create == live.good.create_accounts
                         else Operation.create_transfers)
            assert create(batch).tolist() == [0] * len(rows)
            assert mirror.create(operation, batch.tobytes()).tolist() == [0] * len(rows)
        assert_balances_equal(server_accounts(live), mirror.ledger.lookup_accounts(ACCOUNT_IDS))
        stats = {"examples": 0, "closed": 0, "applied": 0}

        @settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(streams())
        def example(sent):
            stream, cuts = sent
            items, closes, left_over = oracle(stream)
            expected = [mirror.expect(item) for item in items]
            for reply in expected:  # pytest --hypothesis-show-statistics: how deep the frames got
                event(f"reply: {Status(reply[3]).name}")
            event("closes" if closes else "partial frame left" if left_over else "stays open")
            creates = sum(1 for item in items if not isinstance(item, FrameError)
                          and item.operation in CREATE_RECORD_DTYPES)
            sequence = live.store.sequence

            connection = RawConnection(live.port)
            try:
                if not connection.send(stream, cuts):
                    assert closes, "the server closed a connection it had no reason to close"
                got = [reply_key(r) for r in connection.read_replies(len(expected))]
                assert_same_replies(got, expected)
                if closes:
                    connection.assert_closed()
                elif left_over == 0:
                    connection.assert_in_step()
                else:
                    connection.assert_nothing_more()  # the server waits for the rest of a frame
            finally:
                connection.close()
            live.wait_connections(1)  # only the good client's is left

            live.good.ping()
            assert_balances_equal(server_accounts(live), mirror.ledger.lookup_accounts(ACCOUNT_IDS))
            if creates:
                assert sequence < live.store.sequence <= sequence + creates
            else:
                assert live.store.sequence == sequence, "a stream without a valid create was logged"
            stats["examples"] += 1
            stats["closed"] += closes
            stats["applied"] += bool(creates)

        example()
        assert stats["applied"] and stats["closed"] and stats["examples"] > stats["closed"]

        async def counters():  # on the server's loop: no reply is half sent
            return live.server.in_flight_bytes, len(live.server.paused), [
                (c.in_flight_requests, c.in_flight_bytes) for c in live.server.connections]
        assert live.call(counters()) == (0, 0, [(0, 0)]), "request bytes left in flight"
        live.good.lookup_accounts([1])  # every batch committed
        accounts = live.store.ledger.accounts()
        assert_ledger_invariants(accounts)
    finally:
        live.close()
    # What the server acknowledged is what recovery finds.
    with core.open(data_dir) as store:
        recovered = store.ledger.accounts()
        assert_ledger_invariants(recovered)
        for name in COMPARED:
            assert np.array_equal(recovered[name], accounts[name]), name


def test_fuzzed_frames_never_crash_the_server_nor_change_the_ledger(data_dir):
    fuzz(data_dir, max_examples=600)


@pytest.mark.slow
def test_fuzzed_frames_many_examples(data_dir):
    fuzz(data_dir, max_examples=5_000)
