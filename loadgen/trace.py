"""Load traces: every request of a load run with its send order, due time, connection, kind and result.

``tally load run … --record FILE`` writes one with a ``TraceWriter``; ``tally load replay FILE``
reads it back with ``read`` (or chunk by chunk with ``TraceReader``/``iter_chunks`` when it is
larger than memory). The byte layout, the limits and the version policy are in
docs/trace-format.md; this docstring only says how the code is organised.

Writing (on the load generator's event loop, up to ~1M requests/s):

- ``append`` copies one frame's columns and records into a preallocated chunk buffer of its
  operation: a handful of NumPy slice assignments per frame, no Python object per request. The
  caller may reuse its arrays as soon as ``append`` returns.
- A full chunk (``chunk_events`` requests, at most ``CHUNK_EVENTS_MAX``) goes to one writer
  thread, which packs the records with ``core.codec``, computes the CRC-32 and writes the chunk
  with one ``writev``; all three release the GIL, so the event loop is not stalled for the few
  milliseconds a chunk takes. At most ``IN_FLIGHT_CHUNKS_MAX`` chunks wait for the thread; past
  that ``append`` waits (the disk is the bottleneck, and memory stays bounded).
- The file is written as ``path + ".partial"`` and renamed to ``path`` by ``close()`` after the
  end record and an fsync: a file at ``path`` is always a finished trace. A killed run leaves
  the ``.partial`` file, readable with ``allow_truncated=True`` up to its last whole chunk.

Reading checks every length against its limit and against the bytes left in the file before
allocating anything, then each record's CRC-32, then the totals in the end record: a damaged,
truncated or hostile file raises ``TraceError`` naming the byte offset, never a ``MemoryError``,
a NumPy error or a silently wrong array.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import struct
import zlib
from typing import Any, Iterator, NamedTuple

import msgspec
import numpy as np

from core import codec
from core.operations import CREATE_COMPONENTS, CREATE_EVENT_DTYPES
from engine.protocol import Operation

TRACE_MAGIC = b"TALLYTRC"
TRACE_VERSION = 1           # major: a reader refuses a newer one
TRACE_MINOR_VERSION = 4     # minor: additions an older reader of the same major may skip (1.1: FLAG_PRODUCTS,
                            # 1.2: FLAG_CODES, 1.3: FLAG_ENVELOPES, 1.4: FLAG_COUPONS, FLAG_FX)
CHUNK_MAGIC = b"TRCH"
END_MAGIC = b"TREN"

#: Flag (file header): chunks may hold the payment products' operations, and the end record
#: counts their requests (48 bytes). Set only when the writer was told it would write them, so
#: that a trace of transfers stays readable by a 1.0 reader.
FLAG_PRODUCTS = 1
#: Flag (file header, 1.2): chunks may hold the payment codes' operations (issue_codes,
#: charge_codes, confirm_charges), and each issue_codes chunk carries the codes its requests were
#: answered (an extra section, ``code`` u64[n]): a charge's code is that of an earlier answer,
#: which a replay against another store must substitute. Set with FLAG_PRODUCTS.
FLAG_CODES = 2
#: Flag (file header, 1.3): chunks may hold the red envelopes' operations (send_envelopes,
#: claim_envelopes), and each claim_envelopes chunk carries what its requests were answered (an
#: extra section, ``claimed``: the share u64[n], then the position u32[n]): a share is drawn
#: under the store's secret, so a trace is the only record of what the run's claims got. Set
#: with FLAG_PRODUCTS.
FLAG_ENVELOPES = 4
#: Flag (file header, 1.4): chunks may hold the coupons' operations (create_stocks,
#: grant_coupons, pay_with_coupon). No extra section: a coupon's and a payment's ids are digests
#: of what the events hold. Set with FLAG_PRODUCTS.
FLAG_COUPONS = 8
#: Flag (file header, 1.4): chunks may hold the cross-border payments' operations (set_rates,
#: pay_cross_border, refund_cross_border; a quote is a query, not traced). No extra section: a
#: payment holds the payer amount and rate version it was quoted. Set with FLAG_PRODUCTS.
FLAG_FX = 16
#: Flags (file header) this reader understands; a file with any other bit set is refused.
FLAGS_KNOWN = FLAG_PRODUCTS | FLAG_CODES | FLAG_ENVELOPES | FLAG_COUPONS | FLAG_FX

#: Limits (a limit on everything).
HEADER_BYTES_MAX = 1 << 20          # the msgpack run header
FOOTER_BYTES_MAX = 1 << 20          # the msgpack footer of the end record
CHUNK_EVENTS_MAX = 65_536           # requests per chunk
CHUNK_EXTRA_BYTES_MAX = 1 << 24     # sections a later minor version adds after the events
IN_FLIGHT_CHUNKS_MAX = 2            # full chunks queued for the writer thread

RECORD_BYTES = 128
PACKED_RECORD_BYTES_MIN = 8         # core.codec: an all-zero record is its 8-byte nibble header
PACKED_RECORD_BYTES_MAX = 136       # core.codec: no record packs to more
#: Column bytes per request: request_index u64, scheduled_ns u64, result u32, connection u16, kind u8.
COLUMN_BYTES_PER_EVENT = 23

# Fixed headers, little-endian (docs/trace-format.md has the tables).
FILE_HEADER = struct.Struct("<8sHHIIQI")       # magic, version, minor, flags, header_bytes, reserved, checksum
CHUNK_HEADER = struct.Struct("<4sHHIIIIII")    # magic, operation, reserved, count, columns_bytes,
                                               # events_bytes, extra_bytes, sequence, checksum
END_RECORD = struct.Struct("<4sIIIQQII")       # magic, reserved, chunks, footer_bytes,
                                               # account_events, transfer_events, chunks_crc, checksum
END_RECORD_PRODUCTS = struct.Struct("<4sIIIQQQII")   # with FLAG_PRODUCTS: product_events after transfer_events
assert FILE_HEADER.size == 32 and CHUNK_HEADER.size == 32 and END_RECORD.size == 40
assert END_RECORD_PRODUCTS.size == 48

#: Every logged operation's requests may be traced (core/operations.py's table); those of the
#: products only in a file with FLAG_PRODUCTS.
OPERATION_DTYPES = {int(operation): dtype for operation, dtype in CREATE_EVENT_DTYPES.items()}
PRODUCT_OPERATIONS = frozenset(int(operation) for operation, component in CREATE_COMPONENTS.items()
                               if component != "ledger")
#: The payment codes' operations: only in a file with FLAG_CODES (and FLAG_PRODUCTS).
CODE_OPERATIONS = frozenset(int(operation) for operation, component in CREATE_COMPONENTS.items()
                            if component == "codes")
#: The operation whose chunks carry the ``code`` extra section (with FLAG_CODES).
ISSUE_CODES = int(Operation.issue_codes)
#: The red envelopes' operations: only in a file with FLAG_ENVELOPES (and FLAG_PRODUCTS).
ENVELOPE_OPERATIONS = frozenset(int(operation) for operation, component in CREATE_COMPONENTS.items()
                                if component == "envelopes")
#: The operation whose chunks carry the ``claimed`` extra section (with FLAG_ENVELOPES).
CLAIM_ENVELOPES = int(Operation.claim_envelopes)
#: The coupons' and the cross-border payments' operations: only in a file with their flag.
COUPON_OPERATIONS = frozenset(int(operation) for operation, component in CREATE_COMPONENTS.items()
                              if component == "coupons")
FX_OPERATIONS = frozenset(int(operation) for operation, component in CREATE_COMPONENTS.items() if component == "fx")
#: Each product's flag, its operations and what they are called in a writer's refusal.
_PRODUCT_FLAGS = ((FLAG_PRODUCTS, PRODUCT_OPERATIONS, "a product's"),
                  (FLAG_CODES, CODE_OPERATIONS, "a payment code's"),
                  (FLAG_ENVELOPES, ENVELOPE_OPERATIONS, "a red envelope's"),
                  (FLAG_COUPONS, COUPON_OPERATIONS, "a coupon's"),
                  (FLAG_FX, FX_OPERATIONS, "a cross-border payment's"))


def _flags_of(operations) -> int:
    """The flags a file holding these operations sets."""
    return sum(flag for flag, members, _ in _PRODUCT_FLAGS if members.intersection(operations))


def _flagged_out(operation: int, flags: int) -> str | None:
    """What ``operation`` is if a file with ``flags`` may not hold it (None: it may)."""
    for flag, members, name in _PRODUCT_FLAGS:
        if operation in members and not flags & flag:
            return name
    return None

_U64, _U32, _U16, _U8 = np.dtype(np.uint64), np.dtype(np.uint32), np.dtype(np.uint16), np.dtype(np.uint8)
_LIMITS = {dtype: int(np.iinfo(dtype).max) for dtype in (_U64, _U32, _U16, _U8)}
_ZEROS = bytes(8)


def _pad8(n: int) -> int:
    return -n % 8


def _columns_bytes(count: int) -> int:
    size = COLUMN_BYTES_PER_EVENT * count
    return size + _pad8(size)


def _claimed_bytes(count: int) -> int:
    """A claim_envelopes chunk's ``claimed`` section: the shares u64[n], the positions u32[n], padding."""
    return 12 * count + _pad8(12 * count)


class TraceError(Exception):
    """A trace that cannot be read: damaged, truncated, hostile or of an unsupported version."""

    def __init__(self, path: str, offset: int, what: str):
        super().__init__(f"{path}: at byte {offset}: {what}")
        self.path = path
        self.offset = offset
        self.what = what


# --------------------------------------------------------------------------------------------
# Writing


class _Chunk:
    """Column buffers for up to ``capacity`` requests of one operation (reused chunk after chunk)."""

    __slots__ = ("operation", "fill", "request_index", "scheduled_ns", "result", "connection", "kind",
                 "events", "code", "claimed_amount", "claimed_position")

    def __init__(self, operation: int, capacity: int):
        self.operation = operation
        self.fill = 0
        self.request_index = np.empty(capacity, _U64)
        self.scheduled_ns = np.empty(capacity, _U64)
        self.result = np.empty(capacity, _U32)
        self.connection = np.empty(capacity, _U16)
        self.kind = np.empty(capacity, _U8)
        self.events = np.empty(capacity * RECORD_BYTES, _U8)
        # issue_codes: the code each request was answered (the chunk's extra section).
        self.code = np.empty(capacity if operation == ISSUE_CODES else 0, _U64)
        # claim_envelopes: the share and position each request was answered (its extra section).
        self.claimed_amount = np.empty(capacity if operation == CLAIM_ENVELOPES else 0, _U64)
        self.claimed_position = np.empty(capacity if operation == CLAIM_ENVELOPES else 0, _U32)
        # Touch every page now: a first touch while copying a frame in would be a page fault per
        # 4 KiB on the event loop (tens of ms for a chunk's 9 MiB).
        for array in (self.request_index, self.scheduled_ns, self.result, self.connection, self.kind,
                      self.events, self.code, self.claimed_amount, self.claimed_position):
            array.fill(0)


def _column(value: Any, dtype: np.dtype, n: int, name: str) -> Any:
    """``value`` as a ``dtype`` array of ``n`` (or an int for all n), range-checked unless already ``dtype``."""
    if type(value) is np.ndarray and value.dtype == dtype:
        if value.shape != (n,):
            raise ValueError(f"{name}: shape {value.shape}, expected ({n},)")
        return value
    limit = _LIMITS[dtype]
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not 0 <= value <= limit:
            raise ValueError(f"{name}: {value} is out of range 0..{limit}")
        return value
    array = np.asarray(value)
    if array.shape != (n,):
        raise ValueError(f"{name}: shape {array.shape}, expected ({n},)")
    if array.dtype.kind not in "uib":
        raise ValueError(f"{name}: integers expected, got {array.dtype}")
    if n and (int(array.min()) < 0 or int(array.max()) > limit):
        raise ValueError(f"{name}: values out of range 0..{limit}")
    return array.astype(dtype)


def _event_bytes(events: Any, dtype: np.dtype, operation: int) -> np.ndarray:
    """The records of ``events`` as a flat uint8 array (a view when possible)."""
    if isinstance(events, np.ndarray):
        if events.dtype.names is not None:
            if events.dtype != dtype:
                raise ValueError(f"events: records of another dtype than operation {operation}'s")
            if events.ndim != 1:
                raise ValueError("events: a 1-D array of records expected")
            return np.frombuffer(events if events.flags.c_contiguous else np.ascontiguousarray(events), _U8)
        if events.dtype != _U8:
            raise ValueError(f"events: records, or uint8 bytes of records, expected; got {events.dtype}")
        raw = np.ascontiguousarray(events).reshape(-1)
    else:
        raw = np.frombuffer(events, dtype=_U8)
    if raw.shape[0] % RECORD_BYTES:
        raise ValueError(f"events: {raw.shape[0]} bytes is not a whole number of {RECORD_BYTES}-byte records")
    return raw


def _part(value: Any, start: int, stop: int) -> Any:
    return value if type(value) is int else value[start:stop]


class TraceWriter:
    """Writes a trace to ``path`` (through ``path + ".partial"``, renamed by ``close``).

    ``header`` is the run's description (workload, seed, connections, kind names, ...), any
    msgpack-able dict (msgspec) of at most ``HEADER_BYTES_MAX`` bytes once encoded. An existing
    file at ``path`` is replaced only when the new trace is finished. ``operations``: those the
    run will append once its load starts (their buffers are made now, not mid-run; any other
    traceable operation gets them at its first request); a product operation among them makes
    the file a products trace (``FLAG_PRODUCTS``), the only kind that may hold them.
    ``background=False`` writes chunks on the calling thread (debugging, measurements).
    """

    def __init__(self, path: str | os.PathLike, header: dict, *, chunk_events: int = CHUNK_EVENTS_MAX,
                 background: bool = True, operations=(Operation.create_transfers,)):
        if not isinstance(header, dict):
            raise TypeError("header must be a dict")
        if not 1 <= chunk_events <= CHUNK_EVENTS_MAX:
            raise ValueError(f"chunk_events must be in 1..{CHUNK_EVENTS_MAX}")
        operations = sorted({int(operation) for operation in operations})
        unknown = [operation for operation in operations if operation not in OPERATION_DTYPES]
        if unknown:
            raise ValueError(f"operations {unknown}: only the logged ones can be traced")
        self._flags = _flags_of(operations)
        encoded = msgspec.msgpack.encode(header)
        if len(encoded) > HEADER_BYTES_MAX:
            raise ValueError(f"header is {len(encoded)} bytes encoded, more than {HEADER_BYTES_MAX}")
        self.path = os.fspath(path)
        self.partial_path = self.path + ".partial"
        self._chunk_events = chunk_events
        self._current: dict[int, _Chunk | None] = {op: None for op in OPERATION_DTYPES}
        self._free: dict[int, list[_Chunk]] = {op: [] for op in OPERATION_DTYPES}
        self._pending: collections.deque = collections.deque()
        self._packed = bytearray(codec.packed_size_max(chunk_events))
        # Written by the writer thread only (or under _wait_all), read after it is idle.
        self._sequence = 0
        self._chunks_crc = 0
        self._events = {op: 0 for op in OPERATION_DTYPES}
        self._offset = 0
        self._failed: BaseException | None = None
        self._closed = False
        self._totals: dict | None = None
        self._fd = os.open(self.partial_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fixed = bytearray(FILE_HEADER.pack(TRACE_MAGIC, TRACE_VERSION, TRACE_MINOR_VERSION, self._flags,
                                               len(encoded), 0, 0))
            padding = _ZEROS[:_pad8(len(encoded))]
            crc = zlib.crc32(padding, zlib.crc32(encoded, zlib.crc32(memoryview(fixed)[:28])))
            struct.pack_into("<I", fixed, 28, crc)
            self._write([fixed, encoded, padding])
        except BaseException:
            os.close(self._fd)
            raise
        self._executor = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trace-writer")
                          if background else None)
        for operation in operations:
            self._allocate(operation)

    @property
    def closed(self) -> bool:
        """Closed or aborted: appends are refused."""
        return self._closed

    # -- the hot path

    def append(self, operation: int, request_index: Any, scheduled_ns: Any, connection: Any, kind: Any,
               result: Any, events: Any, issued_code: Any = None, claimed: Any = None) -> None:
        """Buffer one frame's requests (see the module docstring); columns may be scalars for all.
        ``issued_code``: for issue_codes, the codes the requests were answered (None: 0s).
        ``claimed``: for claim_envelopes, the replies (``core.ENVELOPE_CLAIMED_DTYPE``: their
        ``amount`` and ``position`` are kept; None: 0s)."""
        if self._closed:
            raise ValueError("append to a closed TraceWriter")
        if self._failed is not None:
            raise RuntimeError("the trace writer failed earlier") from self._failed
        dtype = OPERATION_DTYPES.get(operation)
        if dtype is None:
            raise ValueError(f"operation {operation!r}: only the logged operations (core/operations.py) are traced")
        operation = int(operation)
        flagged_out = _flagged_out(operation, self._flags)
        if flagged_out is not None:
            raise ValueError(f"operation {operation}: {flagged_out}, in a trace not made for them "
                             "(give the writer operations= with it)")
        raw = _event_bytes(events, dtype, operation)
        n = raw.shape[0] // RECORD_BYTES
        if n == 0:
            return
        request_index = _column(request_index, _U64, n, "request_index")
        scheduled_ns = _column(scheduled_ns, _U64, n, "scheduled_ns")
        connection = _column(connection, _U16, n, "connection")
        kind = _column(kind, _U8, n, "kind")
        result = _column(result, _U32, n, "result")
        if operation == ISSUE_CODES:
            issued_code = _column(0 if issued_code is None else issued_code, _U64, n, "issued_code")
        elif issued_code is not None:
            raise ValueError(f"issued_code: only for issue_codes ({ISSUE_CODES}), not operation {operation}")
        if operation == CLAIM_ENVELOPES:
            if claimed is None:
                claimed_amount, claimed_position = 0, 0
            elif getattr(claimed, "shape", None) != (n,) or not {"amount", "position"} <= set(claimed.dtype.names or ()):
                raise ValueError(f"claimed: {n} replies with amount and position (ENVELOPE_CLAIMED_DTYPE) expected")
            else:
                claimed_amount = _column(claimed["amount"], _U64, n, "claimed amount")
                claimed_position = _column(claimed["position"], _U32, n, "claimed position")
        elif claimed is not None:
            raise ValueError(f"claimed: only for claim_envelopes ({CLAIM_ENVELOPES}), not operation {operation}")
        chunk = self._current[operation] or self._take_chunk(operation)
        done = 0
        while done < n:
            fill = chunk.fill
            take = min(n - done, self._chunk_events - fill)
            end = fill + take
            chunk.request_index[fill:end] = _part(request_index, done, done + take)
            chunk.scheduled_ns[fill:end] = _part(scheduled_ns, done, done + take)
            chunk.result[fill:end] = _part(result, done, done + take)
            chunk.connection[fill:end] = _part(connection, done, done + take)
            chunk.kind[fill:end] = _part(kind, done, done + take)
            if operation == ISSUE_CODES:
                chunk.code[fill:end] = _part(issued_code, done, done + take)
            elif operation == CLAIM_ENVELOPES:
                chunk.claimed_amount[fill:end] = _part(claimed_amount, done, done + take)
                chunk.claimed_position[fill:end] = _part(claimed_position, done, done + take)
            chunk.events[fill * RECORD_BYTES:end * RECORD_BYTES] = raw[done * RECORD_BYTES:(done + take) * RECORD_BYTES]
            chunk.fill = end
            done += take
            if end == self._chunk_events:
                self._submit(chunk)
                chunk = self._take_chunk(operation)

    def _take_chunk(self, operation: int) -> _Chunk:
        free = self._free[operation]
        if not free:
            self._allocate(operation)
        chunk = free.pop()
        self._current[operation] = chunk
        return chunk

    def _allocate(self, operation: int) -> None:
        """All of an operation's chunk buffers at once (the one being filled and the ones the
        writer thread may hold), touched, so that none is allocated or faulted in mid-run.

        Done for the run's operations by the constructor and for the others (the setup phase's
        create_accounts and set_merchants) at their first request; afterwards a buffer is always
        free when one fills, because _submit waits until fewer than IN_FLIGHT_CHUNKS_MAX are queued.
        """
        sets = 1 if self._executor is None else 1 + IN_FLIGHT_CHUNKS_MAX
        self._free[operation].extend(_Chunk(operation, self._chunk_events) for _ in range(sets))

    def _submit(self, chunk: _Chunk) -> None:
        self._current[chunk.operation] = None
        if self._executor is None:
            try:
                self._write_chunk(chunk)
            except BaseException as error:
                self._failed = error
                raise
            self._recycle(chunk)
            return
        while self._pending and (self._pending[0][0].done() or len(self._pending) >= IN_FLIGHT_CHUNKS_MAX):
            self._wait_oldest()
        self._pending.append((self._executor.submit(self._write_chunk, chunk), chunk))

    def _wait_oldest(self) -> None:
        future, chunk = self._pending.popleft()
        try:
            future.result()
        except BaseException as error:
            self._failed = error
            raise
        self._recycle(chunk)

    def _wait_all(self) -> None:
        while self._pending:
            self._wait_oldest()

    def _recycle(self, chunk: _Chunk) -> None:
        chunk.fill = 0
        self._free[chunk.operation].append(chunk)

    # -- the writer thread

    def _write_chunk(self, chunk: _Chunk) -> None:
        if self._failed is not None:      # an earlier chunk failed: write nothing after the gap
            raise RuntimeError("the trace writer failed earlier") from self._failed
        n = chunk.fill
        events_bytes = codec.pack_into(chunk.events[:n * RECORD_BYTES], self._packed)
        columns_padding = _ZEROS[:_pad8(COLUMN_BYTES_PER_EVENT * n)]
        if chunk.operation == ISSUE_CODES:          # the code section, 8n bytes
            extra = [chunk.code[:n]]
        elif chunk.operation == CLAIM_ENVELOPES:    # the claimed section: shares, positions, padding
            extra = [chunk.claimed_amount[:n], chunk.claimed_position[:n], _ZEROS[:_pad8(4 * n)]]
        else:
            extra = []
        extra_bytes = sum(memoryview(part).nbytes for part in extra)
        header = bytearray(CHUNK_HEADER.pack(CHUNK_MAGIC, chunk.operation, 0, n, _columns_bytes(n),
                                             events_bytes, extra_bytes, self._sequence, 0))
        body = [chunk.request_index[:n], chunk.scheduled_ns[:n], chunk.result[:n], chunk.connection[:n],
                chunk.kind[:n], columns_padding, memoryview(self._packed)[:events_bytes],
                _ZEROS[:_pad8(events_bytes)], *extra]
        crc = zlib.crc32(memoryview(header)[:28])
        for part in body:
            crc = zlib.crc32(part, crc)
        struct.pack_into("<I", header, 28, crc)
        try:
            self._write([header, *body])
        except BaseException as error:
            self._failed = error
            raise
        self._chunks_crc = zlib.crc32(header, self._chunks_crc)
        self._sequence += 1
        self._events[chunk.operation] += n

    def _write(self, parts: list) -> None:
        """Write all of ``parts`` at the end of the file (one writev; the rest if it came up short)."""
        total = sum(memoryview(part).nbytes for part in parts)
        written = os.writev(self._fd, parts)
        if written < total:
            rest = memoryview(b"".join(memoryview(part).cast("B") for part in parts))[written:]
            while rest:
                rest = rest[os.write(self._fd, rest):]
        self._offset += total

    # -- the end

    def flush(self) -> None:
        """Write every request appended so far (partly filled chunks included) to the file."""
        if self._closed:
            return
        if self._failed is not None:
            raise RuntimeError("the trace writer failed earlier") from self._failed
        for chunk in list(self._current.values()):
            if chunk is not None and chunk.fill:
                self._submit(chunk)
        self._wait_all()

    def close(self, footer: dict | None = None) -> dict:
        """Finish the trace: remaining chunks, the end record (with ``footer``, a dict, if given),
        fsync, rename ``.partial`` to ``path``. Returns the totals; a second call returns them again."""
        if self._totals is not None:
            return self._totals
        if self._closed:
            raise ValueError("the trace writer was aborted; its .partial file is all there is")
        if footer is not None and not isinstance(footer, dict):
            raise TypeError("footer must be a dict")
        encoded = msgspec.msgpack.encode(footer if footer is not None else {})
        if len(encoded) > FOOTER_BYTES_MAX:
            raise ValueError(f"footer is {len(encoded)} bytes encoded, more than {FOOTER_BYTES_MAX}")
        try:
            self.flush()
            accounts, transfers, products = _event_totals(self._events)
            if self._flags & FLAG_PRODUCTS:
                end = bytearray(END_RECORD_PRODUCTS.pack(END_MAGIC, 0, self._sequence, len(encoded), accounts,
                                                         transfers, products, self._chunks_crc, 0))
            else:
                end = bytearray(END_RECORD.pack(END_MAGIC, 0, self._sequence, len(encoded), accounts, transfers,
                                                self._chunks_crc, 0))
            padding = _ZEROS[:_pad8(len(encoded))]
            crc = zlib.crc32(padding, zlib.crc32(encoded, zlib.crc32(memoryview(end)[:-4])))
            struct.pack_into("<I", end, len(end) - 4, crc)
            self._write([end, encoded, padding])
            os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        self._finish()
        os.replace(self.partial_path, self.path)
        _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        self._totals = {
            "path": self.path, "chunks": self._sequence, "events": accounts + transfers + products,
            "account_events": accounts, "transfer_events": transfers, "product_events": products,
            "bytes": self._offset, "chunks_crc": self._chunks_crc,
        }
        return self._totals

    def abort(self) -> None:
        """Stop without an end record: write what is buffered (if the writer still can) and close,
        leaving the ``.partial`` file (readable with ``allow_truncated=True``)."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.flush()
        except Exception:
            pass                            # the .partial file keeps what was written before
        finally:
            try:
                self._wait_all()
            except Exception:
                pass
            self._finish()

    def _finish(self) -> None:
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        os.close(self._fd)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _event_totals(events: dict[int, int]) -> tuple[int, int, int]:
    """Requests per operation as the end record counts them: accounts, transfers, the products'."""
    accounts = events.get(int(Operation.create_accounts), 0)
    transfers = events.get(int(Operation.create_transfers), 0)
    return accounts, transfers, sum(events.values()) - accounts - transfers


def _fsync_directory(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Reading


class TraceChunk(NamedTuple):
    """One chunk's requests in file order; arrays are views into the chunk's body (writable)."""
    operation: int
    request_index: np.ndarray   # uint64[n]
    scheduled_ns: np.ndarray    # uint64[n]
    connection: np.ndarray      # uint16[n]
    kind: np.ndarray            # uint8[n]
    result: np.ndarray          # uint32[n]
    events: np.ndarray | None   # uint8[n, 128], None when read with events=False
    issued_code: np.ndarray | None   # uint64[n]: issue_codes' answered codes (1.2); None for other operations
    claimed_amount: np.ndarray | None     # uint64[n]: claim_envelopes' answered shares (1.3); None for others
    claimed_position: np.ndarray | None   # uint32[n]: their answered positions (1.3); None for others
    offset: int                 # byte offset of the chunk record in the file
    end: int                    # byte offset just after it


class TraceReader:
    """Sequential reader: the header on construction, then chunks by iterating (once).

    After iteration ``complete`` says whether the end record was read and checked (``totals``,
    ``footer``); with ``allow_truncated=True`` a file that ends before its end record (a killed
    run's ``.partial`` file) yields its whole chunks, then stops with ``complete`` False and
    ``trailing_bytes`` the bytes after the last whole chunk that were ignored. Damage (a bad
    checksum, an unknown record, a length past a limit) is a ``TraceError`` in either mode.
    ``events=False`` skips unpacking the records (columns only; the checksums are still checked).
    """

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False, events: bool = True):
        self.path = os.fspath(path)
        self.allow_truncated = allow_truncated
        self.complete = False
        self.footer: dict | None = None
        self.totals: dict | None = None
        self.chunks = 0
        self.trailing_bytes = 0
        self._events = events
        self._iterated = False
        try:
            self._file = open(self.path, "rb")
        except OSError as error:
            raise TraceError(self.path, 0, f"cannot open: {error.strerror}") from error
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._read_file_header()
        except BaseException:
            self._file.close()
            raise

    def _error(self, offset: int, what: str) -> TraceError:
        return TraceError(self.path, offset, what)

    def _read(self, offset: int, size: int) -> np.ndarray:
        """``size`` bytes at ``offset``; the caller has checked they are in the file."""
        buffer = np.empty(size, _U8)
        self._file.seek(offset)
        if self._file.readinto(memoryview(buffer)) != size:
            raise self._error(offset, "the file changed while it was being read")
        return buffer

    def _read_file_header(self) -> None:
        fixed_size = FILE_HEADER.size
        if self.size < fixed_size:
            magic_ok = self.size >= 8 and self._read(0, 8).tobytes() == TRACE_MAGIC
            raise self._error(0, f"truncated file header ({self.size} of {fixed_size} bytes)" if magic_ok
                              else "not a Tally trace (too short)")
        fixed = self._read(0, fixed_size).tobytes()
        magic, version, minor, flags, header_bytes, _reserved, checksum = FILE_HEADER.unpack(fixed)
        if magic != TRACE_MAGIC:
            raise self._error(0, f"not a Tally trace (magic {magic!r}, expected {TRACE_MAGIC!r})")
        if version > TRACE_VERSION:
            raise self._error(8, f"trace format version {version}.{minor} is newer than this reader "
                                 f"supports ({TRACE_VERSION}.x): read it with a newer Tally")
        if version < TRACE_VERSION:
            raise self._error(8, f"trace format version {version} is not supported (only {TRACE_VERSION}.x)")
        if header_bytes > HEADER_BYTES_MAX:
            raise self._error(16, f"header length {header_bytes} exceeds the limit {HEADER_BYTES_MAX}")
        padded = header_bytes + _pad8(header_bytes)
        if fixed_size + padded > self.size:
            raise self._error(0, f"truncated run header: {self.size - fixed_size} of {padded} bytes "
                                 f"(or a damaged header length)")
        body = self._read(fixed_size, padded)
        if zlib.crc32(body, zlib.crc32(fixed[:28])) != checksum:
            raise self._error(0, "file header checksum mismatch (damaged)")
        if flags & ~FLAGS_KNOWN:
            raise self._error(12, f"the trace uses features this reader does not know (flags "
                                  f"{flags & ~FLAGS_KNOWN:#x}): read it with a newer Tally")
        if body[header_bytes:].any():
            raise self._error(fixed_size + header_bytes, "nonzero header padding")
        try:
            header = msgspec.msgpack.decode(memoryview(body[:header_bytes]))
        except (msgspec.DecodeError, RecursionError, ValueError, TypeError) as error:
            raise self._error(fixed_size, f"run header is not valid msgpack: {error}") from None
        if not isinstance(header, dict):
            raise self._error(fixed_size, f"run header is a {type(header).__name__}, not a map")
        self.header = header
        self.version = version
        self.minor_version = minor
        self.flags = flags
        self._data_start = fixed_size + padded

    def _truncated(self, offset: int, what: str) -> None:
        if not self.allow_truncated:
            raise self._error(offset, f"truncated: {what} (a run stopped before closing its trace? "
                                      f"read it with allow_truncated=True)")
        self.trailing_bytes = self.size - offset

    def __iter__(self) -> Iterator[TraceChunk]:
        if self._iterated:
            raise RuntimeError("a TraceReader is iterated once")
        self._iterated = True
        offset = self._data_start
        chunks_crc = 0
        events = {op: 0 for op in OPERATION_DTYPES}
        while True:
            left = self.size - offset
            if left < 4:
                self._truncated(offset, f"the file ends after {self.chunks} chunks, without an end record")
                return
            magic = self._read(offset, 4).tobytes()
            if magic == CHUNK_MAGIC:
                chunk = self._read_chunk(offset, left)
                if chunk is None:
                    return
                header, result = chunk
                chunks_crc = zlib.crc32(header, chunks_crc)
                events[result.operation] += len(result.request_index)
                self.chunks += 1
                yield result
                offset = result.end
            elif magic == END_MAGIC:
                self._read_end(offset, left, chunks_crc, events)
                return
            else:
                raise self._error(offset, f"unknown record {magic!r} (expected a chunk {CHUNK_MAGIC!r} "
                                          f"or the end record {END_MAGIC!r}): damaged")

    def _read_chunk(self, offset: int, left: int) -> tuple[bytes, TraceChunk] | None:
        if left < CHUNK_HEADER.size:
            self._truncated(offset, f"chunk {self.chunks} header cut short")
            return None
        header = self._read(offset, CHUNK_HEADER.size).tobytes()
        (_, operation, _reserved, count, columns_bytes, events_bytes, extra_bytes, sequence,
         checksum) = CHUNK_HEADER.unpack(header)
        if operation not in OPERATION_DTYPES or _flagged_out(operation, self.flags) is not None:
            raise self._error(offset + 4, f"chunk {self.chunks}: unknown operation {operation}")
        if not 1 <= count <= CHUNK_EVENTS_MAX:
            raise self._error(offset + 8, f"chunk {self.chunks}: count {count} is not in 1..{CHUNK_EVENTS_MAX}")
        if columns_bytes != _columns_bytes(count):
            raise self._error(offset + 12, f"chunk {self.chunks}: columns length {columns_bytes}, expected "
                                           f"{_columns_bytes(count)} for {count} requests")
        if not PACKED_RECORD_BYTES_MIN * count <= events_bytes <= PACKED_RECORD_BYTES_MAX * count:
            raise self._error(offset + 16, f"chunk {self.chunks}: events length {events_bytes} is impossible "
                                           f"for {count} packed records")
        if extra_bytes > CHUNK_EXTRA_BYTES_MAX or extra_bytes % 8:
            raise self._error(offset + 20, f"chunk {self.chunks}: extra sections length {extra_bytes} "
                                           f"(a multiple of 8, at most {CHUNK_EXTRA_BYTES_MAX})")
        if operation == ISSUE_CODES and extra_bytes < 8 * count:
            raise self._error(offset + 20, f"chunk {self.chunks}: extra sections length {extra_bytes}: an "
                                           f"issue_codes chunk starts them with its {count} codes ({8 * count} bytes)")
        if operation == CLAIM_ENVELOPES and extra_bytes < _claimed_bytes(count):
            raise self._error(offset + 20, f"chunk {self.chunks}: extra sections length {extra_bytes}: a "
                                           f"claim_envelopes chunk starts them with its {count} shares and "
                                           f"positions ({_claimed_bytes(count)} bytes)")
        if sequence != self.chunks:
            raise self._error(offset + 24, f"chunk sequence number {sequence}, expected {self.chunks} "
                                           f"(a chunk is missing, repeated or damaged)")
        events_padded = events_bytes + _pad8(events_bytes)
        body_size = columns_bytes + events_padded + extra_bytes
        end = offset + CHUNK_HEADER.size + body_size
        if end > self.size:
            self._truncated(offset, f"chunk {self.chunks} needs {body_size} body bytes, "
                                    f"the file has {left - CHUNK_HEADER.size}")
            return None
        body = self._read(offset + CHUNK_HEADER.size, body_size)
        if zlib.crc32(body, zlib.crc32(header[:28])) != checksum:
            raise self._error(offset, f"chunk {self.chunks} checksum mismatch (damaged)")
        n = count
        used = COLUMN_BYTES_PER_EVENT * n
        extra = columns_bytes + events_padded   # where the extra sections start
        if (body[used:columns_bytes].any() or body[columns_bytes + events_bytes:extra].any()
                or (operation == CLAIM_ENVELOPES and body[extra + 12 * n:extra + _claimed_bytes(n)].any())):
            raise self._error(offset, f"chunk {self.chunks}: nonzero padding")
        records = None
        if self._events:
            try:
                records = codec.unpack(body[columns_bytes:columns_bytes + events_bytes], n)
            except ValueError as error:
                raise self._error(offset + CHUNK_HEADER.size + columns_bytes,
                                  f"chunk {self.chunks}: events do not unpack ({error}) although the "
                                  f"checksum matches: written by a faulty writer") from None
            records = records.reshape(n, RECORD_BYTES)
        chunk = TraceChunk(
            operation=operation,
            request_index=body[:8 * n].view(_U64),
            scheduled_ns=body[8 * n:16 * n].view(_U64),
            result=body[16 * n:20 * n].view(_U32),
            connection=body[20 * n:22 * n].view(_U16),
            kind=body[22 * n:23 * n],
            events=records,
            issued_code=body[extra:extra + 8 * n].view(_U64) if operation == ISSUE_CODES else None,
            claimed_amount=body[extra:extra + 8 * n].view(_U64) if operation == CLAIM_ENVELOPES else None,
            claimed_position=body[extra + 8 * n:extra + 12 * n].view(_U32) if operation == CLAIM_ENVELOPES else None,
            offset=offset,
            end=end,
        )
        return header, chunk

    def _read_end(self, offset: int, left: int, chunks_crc: int, events: dict[int, int]) -> None:
        layout = END_RECORD_PRODUCTS if self.flags & FLAG_PRODUCTS else END_RECORD
        if left < layout.size:
            self._truncated(offset, "end record cut short")
            return
        fixed = self._read(offset, layout.size).tobytes()
        if layout is END_RECORD_PRODUCTS:
            (_, _reserved, chunks, footer_bytes, accounts, transfers, products, recorded_crc,
             checksum) = layout.unpack(fixed)
        else:
            (_, _reserved, chunks, footer_bytes, accounts, transfers, recorded_crc, checksum) = layout.unpack(fixed)
            products = 0
        if footer_bytes > FOOTER_BYTES_MAX:
            raise self._error(offset + 12, f"footer length {footer_bytes} exceeds the limit {FOOTER_BYTES_MAX}")
        padded = footer_bytes + _pad8(footer_bytes)
        end = offset + layout.size + padded
        if end > self.size:
            self._truncated(offset, "end record footer cut short")
            return
        body = self._read(offset + layout.size, padded)
        if zlib.crc32(body, zlib.crc32(fixed[:-4])) != checksum:
            raise self._error(offset, "end record checksum mismatch (damaged)")
        if body[footer_bytes:].any():
            raise self._error(offset + layout.size + footer_bytes, "nonzero footer padding")
        read_totals = _event_totals(events)
        if (chunks, accounts, transfers, products) != (self.chunks, *read_totals):
            raise self._error(offset, f"end record totals ({chunks} chunks, {accounts} account, {transfers} "
                                      f"transfer and {products} product events) differ from the file's "
                                      f"({self.chunks}, {', '.join(map(str, read_totals))})")
        if recorded_crc != chunks_crc:
            raise self._error(offset + layout.size - 8, "end record: the chunks' running checksum differs")
        if end != self.size:
            raise self._error(end, f"{self.size - end} bytes after the end record")
        try:
            footer = msgspec.msgpack.decode(memoryview(body[:footer_bytes]))
        except (msgspec.DecodeError, RecursionError, ValueError, TypeError) as error:
            raise self._error(offset + layout.size, f"footer is not valid msgpack: {error}") from None
        if not isinstance(footer, dict):
            raise self._error(offset + layout.size, f"footer is a {type(footer).__name__}, not a map")
        self.footer = footer
        self.totals = {"chunks": chunks, "events": accounts + transfers + products, "account_events": accounts,
                       "transfer_events": transfers, "product_events": products, "bytes": self.size,
                       "chunks_crc": recorded_crc}
        self.complete = True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_chunks(path: str | os.PathLike, *, allow_truncated: bool = False,
                events: bool = True) -> Iterator[TraceChunk]:
    """The trace's chunks in file order (reply order, not sorted), one at a time."""
    with TraceReader(path, allow_truncated=allow_truncated, events=events) as reader:
        yield from reader


class TraceData:
    """A whole trace in columns, sorted by ``request_index`` (send order; stable for equal indexes)."""

    header: dict
    version: int
    minor_version: int
    complete: bool               # the end record was read and its totals matched
    footer: dict | None          # the end record's footer (None when not complete)
    totals: dict | None          # the end record's totals (None when not complete)
    trailing_bytes: int          # bytes ignored after the last whole chunk (allow_truncated)
    operation: np.ndarray        # uint16[n]
    request_index: np.ndarray    # uint64[n]
    scheduled_ns: np.ndarray     # uint64[n]
    connection: np.ndarray       # uint16[n]
    kind: np.ndarray             # uint8[n]
    result: np.ndarray           # uint32[n]
    events: np.ndarray | None    # uint8[n, 128]; rows of one operation: .view(OPERATION_DTYPES[operation])
    issued_code: np.ndarray      # uint64[n]: the code an issue_codes request was answered (1.2), else 0
    claimed_amount: np.ndarray   # uint64[n]: the share a claim_envelopes request was answered (1.3), else 0
    claimed_position: np.ndarray  # uint32[n]: its position (1.3), else 0

    def __len__(self) -> int:
        return len(self.request_index)

    def result_counts(self, where: np.ndarray | None = None) -> dict[int, int]:
        """Result code -> number of requests (those selected by the boolean mask ``where``)."""
        codes = self.result if where is None else self.result[where]
        values, counts = np.unique(codes, return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))

    def records(self, operation: int, where: np.ndarray | None = None) -> np.ndarray:
        """The records of ``operation`` (optionally also selected by ``where``) as its structured dtype."""
        mask = self.operation == operation
        if where is not None:
            mask &= where
        if self.events is None:
            raise ValueError("the trace was read with events=False")
        return np.ascontiguousarray(self.events[mask]).view(OPERATION_DTYPES[operation]).reshape(-1)


def read(path: str | os.PathLike, *, allow_truncated: bool = False, events: bool = True) -> TraceData:
    """Read a whole trace (``TraceReader`` for the options); memory is at most ~5x the file's size."""
    with TraceReader(path, allow_truncated=allow_truncated, events=events) as reader:
        chunks = list(reader)
        data = TraceData()
        data.header, data.version, data.minor_version = reader.header, reader.version, reader.minor_version
        data.complete, data.footer, data.totals = reader.complete, reader.footer, reader.totals
        data.trailing_bytes = reader.trailing_bytes
    counts = [len(chunk.request_index) for chunk in chunks]
    total = sum(counts)

    def column(name: str, dtype: np.dtype) -> np.ndarray:
        """A column of every chunk; an extra section's (None in the chunks of other operations) 0 there."""
        parts = [getattr(chunk, name) for chunk in chunks]
        return (np.concatenate([np.zeros(count, dtype) if part is None else part for part, count in zip(parts, counts)])
                if chunks else np.empty(0, dtype))

    request_index = column("request_index", _U64)
    order = None
    if total > 1 and not bool(np.all(request_index[1:] >= request_index[:-1])):
        order = np.argsort(request_index, kind="stable")
    columns = {
        "operation": np.repeat(np.array([chunk.operation for chunk in chunks], _U16), counts),
        "request_index": request_index,
        "scheduled_ns": column("scheduled_ns", _U64),
        "connection": column("connection", _U16),
        "kind": column("kind", _U8),
        "result": column("result", _U32),
        "issued_code": column("issued_code", _U64),
        "claimed_amount": column("claimed_amount", _U64),
        "claimed_position": column("claimed_position", _U32),
    }
    for name, values in columns.items():
        setattr(data, name, values if order is None else values[order])
    if not events:
        data.events = None
        return data
    records = np.empty((total, RECORD_BYTES), _U8)
    rows = records.view(np.dtype((np.void, RECORD_BYTES))).reshape(-1)
    if order is None:
        position = np.arange(total)
    else:
        position = np.empty(total, np.intp)
        position[order] = np.arange(total)
    start = 0
    for i, chunk in enumerate(chunks):
        stop = start + counts[i]
        rows[position[start:stop]] = chunk.events.view(np.dtype((np.void, RECORD_BYTES))).reshape(-1)
        chunks[i] = None          # free each chunk's body as soon as it is placed
        start = stop
    data.events = records
    return data
