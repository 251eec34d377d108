"""The frame checks and seals as plain Python: the definition ``engine.wire`` (C) is held to.

This is the code the server and client ran before the request path was compiled
(docs/request-path.md); ``tests/test_wire.py`` checks that both give the same answers for
valid, damaged and hostile frames.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

from engine import constants
from engine import frame
from engine.frame import HEADER, MAGIC, VERSION, Frame, FrameError, Status

_CHECKSUM_OFFSET = 36
_MAC_OFFSET = 40
_ZERO_CHECK = bytes(4 + constants.MAC_BYTES)


def _seal(header: bytearray, body, secret: bytes) -> None:
    """Fill in the checksum and MAC of an encoded header (both computed with those fields zero)."""
    header[_CHECKSUM_OFFSET:_MAC_OFFSET + constants.MAC_BYTES] = _ZERO_CHECK
    checksum = zlib.crc32(body, zlib.crc32(header))
    mac = hmac.new(secret, header, hashlib.sha256)
    mac.update(body)
    struct.pack_into("<I", header, _CHECKSUM_OFFSET, checksum)
    header[_MAC_OFFSET:_MAC_OFFSET + constants.MAC_BYTES] = mac.digest()[:constants.MAC_BYTES]


def encode(operation: int, request_id: int, body: bytes | memoryview = b"", *, client_id: int, secret: bytes,
           event_count: int = 0, status: int = 0) -> bytes:
    """One frame sealed by ``_seal``: ``engine.frame.encode``'s header fields, this module's seal."""
    body = bytes(memoryview(body).cast("B"))
    header = bytearray(frame.encode_header(operation, request_id, body, client_id=client_id, secret=b"",
                                           event_count=event_count, status=status))
    _seal(header, body, secret)
    return bytes(header) + body


class Checker:
    """Checks complete frames against the documented order (docs/protocol.md).

    ``secrets`` maps client ids to their secrets; ``operations`` is the set of known operations,
    ``record_operations`` those whose body is ``event_count`` 128-byte records.
    """

    def __init__(self, secrets: dict[int, bytes], operations: set[int], record_operations: set[int]):
        self._secrets = secrets
        self._operations = operations
        self._record_operations = record_operations

    def check(self, raw: memoryview) -> Frame | FrameError:
        """``raw`` is one whole frame (``frame_bytes`` long); the Frame's body is a view into it."""
        (_, magic, version, operation, event_count, request_id, client_id, status, body_length, checksum, mac,
         reserved) = HEADER.unpack_from(raw, 0)
        if magic != MAGIC:
            return FrameError(Status.bad_magic, 0)
        if version != VERSION:
            return FrameError(Status.bad_version, 0)
        if body_length != len(raw) - HEADER.size:
            return FrameError(Status.bad_length, 0)
        header = bytearray(raw[:HEADER.size])
        body = raw[HEADER.size:]
        header[_CHECKSUM_OFFSET:_MAC_OFFSET + constants.MAC_BYTES] = _ZERO_CHECK
        if zlib.crc32(body, zlib.crc32(header)) != checksum:
            return FrameError(Status.bad_checksum, request_id)
        if reserved != bytes(8):
            return FrameError(Status.reserved_not_zero, request_id)
        secret = self._secrets.get(client_id)
        if secret is None:
            return FrameError(Status.unknown_client, request_id)
        expected = hmac.new(secret, header, hashlib.sha256)
        expected.update(body)
        if not hmac.compare_digest(expected.digest()[:constants.MAC_BYTES], mac):
            return FrameError(Status.bad_mac, request_id)
        if operation not in self._operations:
            return FrameError(Status.unknown_operation, request_id)
        if operation in self._record_operations:
            if body_length != event_count * 128:
                return FrameError(Status.bad_record_size, request_id)
            if event_count > constants.EVENTS_PER_REQUEST_MAX:  # a guard: such a body is too_large
                return FrameError(Status.too_many_events, request_id)
        return Frame(operation, request_id, client_id, event_count, status, body)
