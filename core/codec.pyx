# cython: boundscheck=False, wraparound=False
"""Packing of record batches for the log (see codec.pxd).

Each 128-byte record is 16 little-endian u64 words. A packed record is an 8-byte header of 16
nibbles, nibble k holding how many low-order bytes of word k are significant (0..8), followed by
those bytes, word by word. A typical payment (small ids, zero high halves, no user data, zero
reserved bytes and timestamp) packs to about 25 bytes instead of 128; no record packs to more
than 136. Packing and unpacking are typed loops, no Python object per record.

Unpacking checks every length against the input and fails (returns -1) on any inconsistency
rather than reading past the end: a damaged log entry is reported, never misread.
"""

import numpy as np

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset


cdef inline unsigned significant_bytes(uint64_t word) noexcept nogil:
    if word == 0:
        return 0
    return (64 - __builtin_clzll(word) + 7) >> 3


cdef extern from *:
    """
    #define __builtin_clzll_safe(x) __builtin_clzll(x)
    """
    int __builtin_clzll(unsigned long long) nogil


cdef size_t pack_records(const uint8_t *records, size_t count, uint8_t *out) noexcept nogil:
    """Pack ``count`` records into ``out``; returns the bytes used.

    ``out`` must have room for ``packed_size_max(count)`` bytes (8 bytes of slack beyond the
    largest packing, for the fixed-size stores).
    """
    cdef size_t r, k, pos = 0, header_pos
    cdef uint64_t word, header
    cdef unsigned n
    for r in range(count):
        header_pos = pos
        pos += PACKED_HEADER_BYTES
        header = 0
        for k in range(RECORD_WORDS):
            memcpy(&word, records + r * 128 + k * 8, 8)
            n = significant_bytes(word)
            header |= (<uint64_t> n) << (4 * k)
            memcpy(out + pos, &word, 8)  # a fixed-size store; the output has 8 bytes of slack
            pos += n
        memcpy(out + header_pos, &header, 8)
    return pos


cdef Py_ssize_t unpack_records(const uint8_t *src, size_t size, size_t count, uint8_t *out) noexcept nogil:
    """Unpack ``count`` records from ``src[:size]`` into ``out``; -1 if the input is malformed."""
    cdef size_t r, k, pos = 0
    cdef uint64_t word, header
    cdef unsigned n
    for r in range(count):
        if pos + PACKED_HEADER_BYTES > size:
            return -1
        memcpy(&header, src + pos, 8)
        pos += PACKED_HEADER_BYTES
        for k in range(RECORD_WORDS):
            n = (header >> (4 * k)) & 0xF
            if n > 8 or pos + n > size:
                return -1
            if pos + 8 <= size:
                memcpy(&word, src + pos, 8)  # a fixed-size load, then keep the n low bytes
                word = word & ((<uint64_t> 0xFFFFFFFFFFFFFFFF) >> (64 - 8 * n)) if n else 0
            else:
                word = 0
                memcpy(&word, src + pos, n)
            # A packed word never has a zero top byte: that keeps the packing canonical.
            if n and (word >> (8 * (n - 1))) == 0:
                return -1
            memcpy(out + r * 128 + k * 8, &word, 8)
            pos += n
    return <Py_ssize_t> pos


def packed_size_max(size_t count):
    """Bytes a buffer must have to pack ``count`` records into it."""
    return count * PACKED_RECORD_BYTES_MAX + 8


def pack_into(records, out, size_t offset=0):
    """Pack a buffer of 128-byte records into the writable buffer ``out`` at ``offset``.

    Returns the number of bytes written. ``out`` needs ``offset + packed_size_max(count)`` bytes.
    """
    cdef const uint8_t[::1] raw = memoryview(records).cast("B")
    cdef uint8_t[::1] dst = out
    if raw.shape[0] % 128:
        raise ValueError("records must be a whole number of 128-byte records")
    cdef size_t count = raw.shape[0] // 128
    if <size_t> dst.shape[0] < offset + count * PACKED_RECORD_BYTES_MAX + 8:
        raise ValueError("output buffer too small for packing")
    if count == 0:
        return 0
    with nogil:
        used = pack_records(&raw[0], count, &dst[offset])
    return used


def pack(records) -> bytes:
    """Pack a buffer of 128-byte records (e.g. a TRANSFER_DTYPE array) for the log."""
    count = memoryview(records).nbytes // 128
    out = bytearray(packed_size_max(count))
    used = pack_into(records, out)
    return bytes(memoryview(out)[:used])


def unpack(data, size_t count):
    """Unpack ``count`` records packed by ``pack``; returns their bytes (a uint8 array)."""
    cdef const uint8_t[::1] src = memoryview(data).cast("B")
    out = np.empty(count * 128, dtype=np.uint8)
    cdef uint8_t[::1] dst = out
    cdef Py_ssize_t used
    if count == 0:
        if src.shape[0] != 0:
            raise ValueError("packed records: trailing bytes")
        return out
    if src.shape[0] == 0:
        raise ValueError("packed records: truncated")
    with nogil:
        used = unpack_records(&src[0], src.shape[0], count, &dst[0])
    if used < 0:
        raise ValueError("packed records: malformed or truncated")
    if <size_t> used != <size_t> src.shape[0]:
        raise ValueError("packed records: trailing bytes")
    return out
