# cython: boundscheck=False, wraparound=False
"""Frame checks and seals in C (see wire.pxd and docs/request-path.md).

``FrameChecker.check_at`` checks the frame that starts at an offset of a receive buffer in one
call: length, magic, version, body length, CRC-32, reserved bytes, client, HMAC-SHA256,
operation and record size, in the order docs/protocol.md documents, and returns one tuple.
``MacKey.seal`` fills in a header's checksum and MAC. ``engine.frame`` is the Python face of
both (its ``Checker`` and ``encode_header``); the pure-Python reference they replaced is kept
in ``tests/frame_reference.py``, and property tests hold the two to the same answers.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from core.digest cimport hmac_begin, hmac_end, hmac_key_init, sha256_update

import hashlib

from engine import constants

cdef enum:
    # Bodies above this many bytes are MACed by OpenSSL (through ``hashlib``): 0.7 ms per MiB
    # here against 6.2 ms for core/digest.pyx's portable C (measured before core/digest used the
    # CPU's SHA extensions where it has them, as OpenSSL does). Below it, the C code's lack of
    # Python calls wins (a 128-byte body: 2.0 us portable, hmac.new 2.2 us).
    LARGE_BODY = 4096

LARGE_BODY_BYTES = LARGE_BODY

cdef enum:
    REPLY_BYTES_MAX = 16    # the largest create reply per event (create_orders': core/operations.py)

# ---------------------------------------------------------------------------- CRC-32

cdef uint32_t _crc_table[8][256]


cdef void _crc_tables() noexcept nogil:
    cdef uint32_t c
    cdef int i, j, k
    for i in range(256):
        c = <uint32_t> i
        for j in range(8):
            c = (c >> 1) ^ (<uint32_t> 0xEDB88320 if c & 1 else <uint32_t> 0)
        _crc_table[0][i] = c
    for i in range(256):
        for k in range(1, 8):
            _crc_table[k][i] = (_crc_table[k - 1][i] >> 8) ^ _crc_table[0][_crc_table[k - 1][i] & 0xFF]


_crc_tables()


cdef uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t n) noexcept nogil:
    """As ``zlib.crc32(data, crc)`` (slicing by 8: eight table lookups per 8 bytes)."""
    cdef uint32_t lo, hi
    crc = ~crc
    while n >= 8:
        lo = crc ^ ((<uint32_t> data[0]) | (<uint32_t> data[1] << 8) | (<uint32_t> data[2] << 16)
                    | (<uint32_t> data[3] << 24))
        hi = (<uint32_t> data[4]) | (<uint32_t> data[5] << 8) | (<uint32_t> data[6] << 16) | (<uint32_t> data[7] << 24)
        crc = (_crc_table[7][lo & 0xFF] ^ _crc_table[6][(lo >> 8) & 0xFF] ^ _crc_table[5][(lo >> 16) & 0xFF]
               ^ _crc_table[4][lo >> 24] ^ _crc_table[3][hi & 0xFF] ^ _crc_table[2][(hi >> 8) & 0xFF]
               ^ _crc_table[1][(hi >> 16) & 0xFF] ^ _crc_table[0][hi >> 24])
        data += 8
        n -= 8
    while n:
        crc = (crc >> 8) ^ _crc_table[0][(crc ^ data[0]) & 0xFF]
        data += 1
        n -= 1
    return ~crc


# ---------------------------------------------------------------------------- frames

# Header offsets (engine.frame.HEADER: "<I4sHHIQIIII16s8s").
cdef enum:
    HEADER_BYTES = 64
    PREFIX_BYTES = 4
    OFF_MAGIC = 4
    OFF_VERSION = 8
    OFF_OPERATION = 10
    OFF_EVENT_COUNT = 12
    OFF_REQUEST_ID = 16
    OFF_CLIENT_ID = 24
    OFF_STATUS = 28
    OFF_BODY_LENGTH = 32
    OFF_CHECKSUM = 36
    OFF_MAC = 40
    MAC_KEPT = 16
    OFF_RESERVED = 56
    RECORD_BYTES = 128

# Statuses (engine.frame.Status; checked equal at import there).
cdef enum:
    ST_OK = 0
    ST_TOO_LARGE = 1
    ST_TOO_SMALL = 2
    ST_BAD_MAGIC = 3
    ST_BAD_VERSION = 4
    ST_BAD_LENGTH = 5
    ST_BAD_CHECKSUM = 6
    ST_RESERVED_NOT_ZERO = 7
    ST_UNKNOWN_CLIENT = 8
    ST_BAD_MAC = 9
    ST_UNKNOWN_OPERATION = 10
    ST_BAD_RECORD_SIZE = 11
    ST_TOO_MANY_EVENTS = 12

#: ``check_at``'s status for a frame not yet complete in the buffer (its size is known once
#: its first 4 bytes are there; 0 before).
INCOMPLETE = -1

cdef uint64_t _FRAME_BYTES_MAX = constants.FRAME_BYTES_MAX
cdef uint64_t _EVENTS_MAX = constants.EVENTS_PER_REQUEST_MAX
cdef uint32_t _MAGIC = 0x594C4154  # b"TALY" little-endian
cdef uint16_t _VERSION = 1

if constants.MAC_BYTES != MAC_KEPT or constants.FRAME_HEADER_BYTES != HEADER_BYTES:
    raise ImportError("engine/wire.pyx and engine/constants.py disagree on the header")


cdef inline uint32_t _u32(const uint8_t *p) noexcept nogil:
    return (<uint32_t> p[0]) | (<uint32_t> p[1] << 8) | (<uint32_t> p[2] << 16) | (<uint32_t> p[3] << 24)


cdef inline uint64_t _u64(const uint8_t *p) noexcept nogil:
    return <uint64_t> _u32(p) | (<uint64_t> _u32(p + 4) << 32)


cdef inline void _put_u32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t> v
    p[1] = <uint8_t> (v >> 8)
    p[2] = <uint8_t> (v >> 16)
    p[3] = <uint8_t> (v >> 24)


cdef void _digests(const hmac_key_t *key, const uint8_t *header, const uint8_t *body, size_t body_bytes,
                   uint8_t *zeroed, uint32_t *crc, uint8_t *mac) noexcept nogil:
    """CRC-32 and HMAC of a header (its checksum and MAC taken as zero, copied so into
    ``zeroed``) followed by its body; the HMAC only for a known key and a small body."""
    cdef sha256_t c
    memcpy(zeroed, header, HEADER_BYTES)
    memset(zeroed + OFF_CHECKSUM, 0, OFF_RESERVED - OFF_CHECKSUM)
    crc[0] = crc32_update(crc32_update(0, zeroed, HEADER_BYTES), body, body_bytes)
    if key != NULL and body_bytes <= LARGE_BODY:
        hmac_begin(key, &c)
        sha256_update(&c, zeroed, HEADER_BYTES)
        sha256_update(&c, body, body_bytes)
        hmac_end(key, &c, mac)


cdef class MacKey:
    """A secret made ready for HMAC-SHA256 (its padded blocks compressed once, in C for small
    messages and in ``hashlib`` objects for large ones)."""
    cdef hmac_key_t key
    cdef object _inner, _outer   # hashlib.sha256 fed with the padded key

    def __cinit__(self, bytes secret):
        hmac_key_init(&self.key, <const uint8_t *> secret, len(secret))
        padded = (hashlib.sha256(secret).digest() if len(secret) > 64 else secret).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    cdef bytes _large_mac(self, const uint8_t *zeroed_header, body):
        """The full HMAC of a zeroed header and a large body, by OpenSSL."""
        inner = self._inner.copy()
        inner.update(zeroed_header[:HEADER_BYTES])
        inner.update(body)  # hashlib lets the GIL go for large buffers
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def mac(self, data) -> bytes:
        """The full 32-byte HMAC-SHA256 of ``data`` (for tests against ``hmac``)."""
        cdef const uint8_t[::1] view = memoryview(data).cast("B")
        cdef sha256_t c
        cdef uint8_t out[32]
        hmac_begin(&self.key, &c)
        if view.shape[0]:
            sha256_update(&c, &view[0], view.shape[0])
        hmac_end(&self.key, &c, out)
        return out[:32]

    def seal(self, header, body) -> None:
        """Fill in the checksum and MAC of an encoded 64-byte ``header`` (a bytearray) whose
        frame carries ``body`` (both computed with those fields zero)."""
        cdef uint8_t[::1] h = header
        body = memoryview(body).cast("B")
        cdef const uint8_t[::1] b = body
        cdef uint32_t crc
        cdef uint8_t mac[32]
        cdef uint8_t zeroed[HEADER_BYTES]
        cdef const uint8_t *body_ptr = &b[0] if b.shape[0] else NULL
        cdef size_t body_bytes = b.shape[0]
        cdef bytes large
        if h.shape[0] != HEADER_BYTES:
            raise ValueError("a header is 64 bytes")
        with nogil:
            _digests(&self.key, &h[0], body_ptr, body_bytes, zeroed, &crc, mac)
        if body_bytes > LARGE_BODY:
            large = self._large_mac(zeroed, body)
            memcpy(mac, <const uint8_t *> large, 32)
        _put_u32(&h[OFF_CHECKSUM], crc)
        memcpy(&h[OFF_MAC], mac, MAC_KEPT)


def crc32(data, uint32_t crc=0) -> int:
    """As ``zlib.crc32`` (for tests)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    return crc32_update(crc, &view[0] if view.shape[0] else NULL, view.shape[0])


cdef class FrameChecker:
    """Checks frames in a receive buffer (docs/protocol.md's order), one call per frame."""
    cdef dict _keys                   # client id -> MacKey
    cdef uint8_t _operations[65536]   # 1: known operation, 3: known and its body is records

    def __init__(self, secrets: dict, operations, record_operations):
        self._keys = {int(client): MacKey(bytes(secret)) for client, secret in secrets.items()}
        memset(self._operations, 0, sizeof(self._operations))
        for operation in operations:
            self._operations[<uint16_t> operation] = 1
        for operation in record_operations:
            self._operations[<uint16_t> operation] |= 3

    def check_at(self, buffer, Py_ssize_t offset, Py_ssize_t end):
        """Check the frame starting at ``buffer[offset]``, of which ``end - offset`` bytes are there.

        Returns ``(status, frame_bytes, operation, event_count, request_id, client_id,
        header_status)`` (``header_status``: the header's own status field, a reply's):
        ``status`` is ``INCOMPLETE`` while the frame is not all there (``frame_bytes`` its size
        once its length is, else 0); ``too_large``/``too_small`` (``frame_bytes`` 0: the stream
        cannot be framed further); else ``ok`` or the first failed check's status, with what
        the header says (``request_id`` 0 for the statuses whose header cannot be trusted).
        """
        cdef Py_buffer view
        cdef const uint8_t *p
        cdef uint64_t length, total, body_bytes, request_id
        cdef uint32_t crc, client_id, event_count, header_status
        cdef uint16_t operation
        cdef uint8_t mac[32]
        cdef uint8_t zeroed[HEADER_BYTES]
        cdef int status
        cdef MacKey key
        cdef const hmac_key_t *hmac_key
        cdef bytes large
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        try:
            if offset < 0 or end > view.len or offset > end:
                raise ValueError("offset and end must lie within the buffer")
            if end - offset < PREFIX_BYTES:
                return INCOMPLETE, 0, 0, 0, 0, 0, 0
            p = <const uint8_t *> view.buf + offset
            length = _u32(p)
            if length > _FRAME_BYTES_MAX - PREFIX_BYTES:
                return ST_TOO_LARGE, 0, 0, 0, 0, 0, 0
            if length < HEADER_BYTES - PREFIX_BYTES:
                return ST_TOO_SMALL, 0, 0, 0, 0, 0, 0
            total = length + PREFIX_BYTES
            if <uint64_t> (end - offset) < total:
                return INCOMPLETE, total, 0, 0, 0, 0, 0
            operation = p[OFF_OPERATION] | (<uint16_t> p[OFF_OPERATION + 1] << 8)
            event_count = _u32(p + OFF_EVENT_COUNT)
            request_id = _u64(p + OFF_REQUEST_ID)
            client_id = _u32(p + OFF_CLIENT_ID)
            header_status = _u32(p + OFF_STATUS)
            body_bytes = _u32(p + OFF_BODY_LENGTH)
            if _u32(p + OFF_MAGIC) != _MAGIC:
                return ST_BAD_MAGIC, total, operation, event_count, 0, client_id, header_status
            if (p[OFF_VERSION] | (<uint16_t> p[OFF_VERSION + 1] << 8)) != _VERSION:
                return ST_BAD_VERSION, total, operation, event_count, 0, client_id, header_status
            if body_bytes != total - HEADER_BYTES:
                return ST_BAD_LENGTH, total, operation, event_count, 0, client_id, header_status
            key = self._keys.get(client_id)
            hmac_key = &key.key if key is not None else NULL
            with nogil:  # a full frame is a megabyte: let the other threads run meanwhile
                _digests(hmac_key, p, p + HEADER_BYTES, body_bytes, zeroed, &crc, mac)
            if key is not None and body_bytes > LARGE_BODY and crc == _u32(p + OFF_CHECKSUM):
                large = key._large_mac(zeroed, memoryview(buffer)[offset + HEADER_BYTES:offset + <Py_ssize_t> total])
                memcpy(mac, <const uint8_t *> large, 32)
            if crc != _u32(p + OFF_CHECKSUM):
                status = ST_BAD_CHECKSUM
            elif _u64(p + OFF_RESERVED) != 0:
                status = ST_RESERVED_NOT_ZERO
            elif key is None:
                status = ST_UNKNOWN_CLIENT
            elif not _equal_in_constant_time(mac, p + OFF_MAC, MAC_KEPT):
                status = ST_BAD_MAC
            elif not self._operations[operation]:
                status = ST_UNKNOWN_OPERATION
            elif self._operations[operation] == 3 and body_bytes != <uint64_t> event_count * RECORD_BYTES:
                status = ST_BAD_RECORD_SIZE
            elif self._operations[operation] == 3 and event_count > _EVENTS_MAX:
                status = ST_TOO_MANY_EVENTS  # a guard: such a body is too_large first
            else:
                status = ST_OK
            return status, total, operation, event_count, request_id, client_id, header_status
        finally:
            PyBuffer_Release(&view)


cdef inline bint _equal_in_constant_time(const uint8_t *a, const uint8_t *b, size_t n) noexcept nogil:
    cdef uint8_t diff = 0
    cdef size_t i
    for i in range(n):
        diff |= a[i] ^ b[i]
    return diff == 0


cdef class ReplySealer:
    """Builds the replies to a committed create batch in one pass: per connection, its requests'
    reply frames (header sealed in C, the request's slice of the results as body) in one buffer,
    written with one call."""
    cdef dict _keys
    cdef MacKey _no_key

    def __init__(self, secrets: dict):
        self._keys = {int(client): MacKey(bytes(secret)) for client, secret in secrets.items()}
        self._no_key = MacKey(b"")  # error replies to unknown clients: the empty key

    def batch_replies(self, list requests, results, uint64_t reply_bytes=4) -> dict:
        """``requests``: the server's request tuples ``(connection, operation, request_id,
        client_id, first_event, event_count, frame_bytes, payload)``; ``results``: the batch's
        replies, ``reply_bytes`` per event (u32 result codes, or the operation's reply records:
        core/operations.py). Returns ``{connection: [frames, requests, frame_bytes]}`` in
        request order per connection."""
        cdef const uint8_t[::1] res = memoryview(results).cast("B")
        cdef uint8_t[::1] out
        cdef uint8_t zeroed[HEADER_BYTES]
        cdef uint8_t mac[32]
        cdef uint32_t crc
        cdef uint64_t first, count, body_bytes, at
        cdef MacKey key
        cdef dict grouped = {}
        cdef list entry
        cdef bytes large
        if not 1 <= reply_bytes <= REPLY_BYTES_MAX:  # the zeros below are sized for the largest
            raise ValueError(f"a create's reply record is 1..{REPLY_BYTES_MAX} bytes, not {reply_bytes}")
        for request in requests:
            connection = request[0]
            first, count = request[4], request[5]
            body_bytes = count * reply_bytes
            if (first + count) * reply_bytes > <uint64_t> res.shape[0]:
                raise ValueError("a request's results lie outside the batch's")
            entry = grouped.get(connection)
            if entry is None:
                entry = grouped[connection] = [bytearray(), 0, 0]
            frames = <bytearray> entry[0]
            at = len(frames)
            frames.extend(_zeros(HEADER_BYTES + body_bytes))
            out = frames
            key = self._keys.get(request[3], self._no_key)
            _write_header(&out[at], request[1], count, request[2], request[3], ST_OK, body_bytes)
            if body_bytes:
                memcpy(&out[at + HEADER_BYTES], &res[first * reply_bytes], body_bytes)
            _digests(&key.key, &out[at], &out[at + HEADER_BYTES], body_bytes, zeroed, &crc, mac)
            if body_bytes > LARGE_BODY:  # results of more than 1,024 transfers: OpenSSL's SHA-256
                large = key._large_mac(zeroed, memoryview(frames)[at + HEADER_BYTES:at + HEADER_BYTES + body_bytes])
                memcpy(mac, <const uint8_t *> large, 32)
            _put_u32(&out[at + OFF_CHECKSUM], crc)
            memcpy(&out[at + OFF_MAC], mac, MAC_KEPT)
            out = None  # the next extend may move the buffer: no view of it may be held
            entry[1] += 1
            entry[2] += request[6]
        return grouped


cdef bytes _ZEROS = bytes(HEADER_BYTES + REPLY_BYTES_MAX * 8190)


cdef inline object _zeros(Py_ssize_t n):
    return memoryview(_ZEROS)[:n]


cdef void _write_header(uint8_t *h, uint16_t operation, uint32_t event_count, uint64_t request_id, uint32_t client_id,
                        uint32_t status, uint32_t body_bytes) noexcept nogil:
    _put_u32(h, HEADER_BYTES - PREFIX_BYTES + body_bytes)
    _put_u32(h + OFF_MAGIC, _MAGIC)
    h[OFF_VERSION] = <uint8_t> _VERSION
    h[OFF_VERSION + 1] = 0
    h[OFF_OPERATION] = <uint8_t> operation
    h[OFF_OPERATION + 1] = <uint8_t> (operation >> 8)
    _put_u32(h + OFF_EVENT_COUNT, event_count)
    _put_u32(h + OFF_REQUEST_ID, <uint32_t> request_id)
    _put_u32(h + OFF_REQUEST_ID + 4, <uint32_t> (request_id >> 32))
    _put_u32(h + OFF_CLIENT_ID, client_id)
    _put_u32(h + OFF_STATUS, status)
    _put_u32(h + OFF_BODY_LENGTH, body_bytes)
