"""Frames of the Tally wire protocol (docs/protocol.md): encoding, and incremental decoding.

A frame is a u32 length prefix, a fixed 64-byte header (magic, version, operation, event count,
request id, client id, status, body length, CRC-32, truncated HMAC-SHA256) and a body. The
decoder never trusts a length before checking it against ``FRAME_BYTES_MAX``, never allocates
for a frame it will reject, and reports every malformed frame as a ``FrameError`` with a status
code from the documented table instead of raising. Bodies are returned as memoryviews, so record
bodies reach the core without a Python object per record.

The checks and seals run in C (``engine.wire``: one call per frame, no Python object per check);
``tests/frame_reference.py`` keeps the plain-Python definition they are tested against.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass

from engine import constants, wire

MAGIC = b"TALY"
VERSION = 1

#: length, magic, version, operation, event_count, request_id, client_id, status, body_length,
#: checksum, mac, reserved.
HEADER = struct.Struct("<I4sHHIQIIII16s8s")
LENGTH_PREFIX_BYTES = 4

if HEADER.size != constants.FRAME_HEADER_BYTES:
    raise ImportError("frame header layout disagrees with FRAME_HEADER_BYTES")


class Status(enum.IntEnum):
    """Frame-level status: why a frame was rejected (0: it was not)."""
    ok = 0
    too_large = 1
    too_small = 2
    bad_magic = 3
    bad_version = 4
    bad_length = 5
    bad_checksum = 6
    reserved_not_zero = 7
    unknown_client = 8
    bad_mac = 9
    unknown_operation = 10
    bad_record_size = 11
    too_many_events = 12
    bad_body = 13
    unavailable = 14
    forbidden = 15           # the client's role may not run this operation (engine/roles.py)

    @property
    def closes_connection(self) -> bool:
        """Whether the server must close the connection after answering this status."""
        return self in _CLOSING


if [status.value for status in Status][:13] != list(range(13)):
    raise ImportError("engine.frame.Status and engine/wire.pyx's statuses must agree")

_CLOSING = {Status.too_large, Status.too_small, Status.bad_magic, Status.bad_version, Status.bad_length,
            Status.unknown_client, Status.bad_mac, Status.unavailable}


@dataclass(frozen=True, slots=True)
class Frame:
    operation: int
    request_id: int
    client_id: int
    event_count: int
    status: int
    body: memoryview


@dataclass(frozen=True, slots=True)
class FrameError:
    status: Status
    request_id: int  # 0 when the header could not be read


@functools.lru_cache(maxsize=256)
def mac_key(secret: bytes) -> wire.MacKey:
    """A secret made ready for sealing (kept: making one costs two SHA-256 blocks)."""
    return wire.MacKey(secret)


def encode_header(operation: int, request_id: int, body: bytes | memoryview = b"", *, client_id: int,
                  secret: bytes, event_count: int = 0, status: int = 0) -> bytes:
    """The sealed 64-byte header of a frame carrying ``body`` (sent right after it).

    Large bodies are sent as they are, after this header, so that they are never copied.
    """
    body = memoryview(body).cast("B")
    if len(body) > constants.FRAME_BODY_BYTES_MAX:
        raise ValueError(f"body of {len(body)} bytes exceeds {constants.FRAME_BODY_BYTES_MAX}")
    header = bytearray(HEADER.pack(HEADER.size - LENGTH_PREFIX_BYTES + len(body), MAGIC, VERSION, operation,
                                   event_count, request_id, client_id, status, len(body), 0, _NO_MAC, _NO_RESERVED))
    mac_key(secret).seal(header, body)
    return bytes(header)


_NO_MAC, _NO_RESERVED = bytes(constants.MAC_BYTES), bytes(8)


def encode(operation: int, request_id: int, body: bytes | memoryview = b"", *, client_id: int, secret: bytes,
           event_count: int = 0, status: int = 0) -> bytes:
    """One frame, ready to send.

    >>> frame = encode(1000, 7, client_id=1, secret=b"s3cret")   # a ping
    >>> len(frame)
    64
    """
    return encode_header(operation, request_id, body, client_id=client_id, secret=secret,
                         event_count=event_count, status=status) + bytes(body)


def frame_bytes(buffer, offset: int = 0) -> int | Status:
    """The size of the frame starting at ``offset`` (length prefix included), once 4 bytes are there.

    Returns ``too_large`` or ``too_small`` instead when the length cannot be a frame: the caller
    must then close the connection without reading on (the stream cannot be re-synchronised).
    """
    (length,) = struct.unpack_from("<I", buffer, offset)
    if length > constants.FRAME_BYTES_MAX - LENGTH_PREFIX_BYTES:
        return Status.too_large
    if length < HEADER.size - LENGTH_PREFIX_BYTES:
        return Status.too_small
    return LENGTH_PREFIX_BYTES + length


class Checker:
    """Checks complete frames against the documented order (docs/protocol.md).

    ``secrets`` maps client ids to their secrets; ``operations`` is the set of known operations,
    ``record_operations`` those whose body is ``event_count`` 128-byte records.
    """

    def __init__(self, secrets: dict[int, bytes], operations: set[int], record_operations: set[int]):
        self._checker = wire.FrameChecker(secrets, operations, record_operations)
        #: ``check_at(buffer, offset, end)``: the compiled check of the frame at ``offset``
        #: (``engine.wire.FrameChecker.check_at``), for callers that read frames in place.
        self.check_at = self._checker.check_at

    def check(self, raw: memoryview) -> Frame | FrameError:
        """``raw`` is one whole frame (``frame_bytes`` long); the Frame's body is a view into it."""
        status, total, operation, event_count, request_id, client_id, header_status = self.check_at(raw, 0, len(raw))
        if status == wire.INCOMPLETE or (status in (Status.too_large, Status.too_small)) or total != len(raw):
            if status in (Status.too_large, Status.too_small):
                return FrameError(Status(status), 0)
            return FrameError(Status.bad_length, 0)  # not one whole frame: the caller framed it wrong
        if status != Status.ok:
            return FrameError(Status(status), request_id)
        return Frame(operation, request_id, client_id, event_count, header_status, memoryview(raw)[HEADER.size:])


class Decoder:
    """Splits a byte stream into frames and checks each one (see ``Checker``).

    Feed it what the socket delivered; it returns the frames and errors completed so far. After
    an error that closes the connection it ignores further input (``closed`` is set).
    """

    def __init__(self, secrets: dict[int, bytes], operations: set[int], record_operations: set[int]):
        self._checker = Checker(secrets, operations, record_operations)
        self._buffer = bytearray()
        self.closed = False

    def feed(self, data: bytes | memoryview) -> list[Frame | FrameError]:
        """The frames completed by ``data``. Their bodies are views of the bytes received, not
        copies: of ``data`` itself when it is ``bytes`` and no partial frame was waiting, else of
        the buffer the partial frame was completed in, which is never written again (what
        follows the last complete frame moves to a new one)."""
        out: list[Frame | FrameError] = []
        if self.closed:
            return out
        if not self._buffer and isinstance(data, bytes):
            buffer = data  # (immutable: the frames may keep views of it)
        else:
            self._buffer += data
            buffer = self._buffer
        view = memoryview(buffer)
        offset, end = 0, len(view)
        while end - offset >= LENGTH_PREFIX_BYTES:
            total = frame_bytes(view, offset)
            if isinstance(total, Status):
                self.closed = True
                out.append(FrameError(total, 0))
                break
            if end - offset < total:
                break
            result = self._checker.check(view[offset:offset + total])
            offset += total
            out.append(result)
            if isinstance(result, FrameError) and result.status.closes_connection:
                self.closed = True
                break
        if self.closed:
            self._buffer = bytearray()
        elif offset or buffer is not self._buffer:  # frames taken (views of it), or data's rest
            self._buffer = bytearray(view[offset:])
        view.release()  # (the frames' views hold the buffer, not this one)
        return out
        self._buffer += data
        while len(self._buffer) >= LENGTH_PREFIX_BYTES:
            total = frame_bytes(self._buffer)
            if isinstance(total, Status):
                self.closed = True
                self._buffer.clear()
                out.append(FrameError(total, 0))
                return out
            if len(self._buffer) < total:
                break
            raw = bytes(self._buffer[:total])
            del self._buffer[:total]
            result = self._checker.check(memoryview(raw))
            out.append(result)
            if isinstance(result, FrameError) and result.status.closes_connection:
                self.closed = True
                self._buffer.clear()
                break
        return out
