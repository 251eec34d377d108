# Lossless packing of 128-byte records for the log: most of a record is zero or small numbers
# (high id halves, unused user data, reserved bytes), and the commit cost is the bytes written.

from libc.stdint cimport uint8_t, uint64_t

cdef enum:
    RECORD_WORDS = 16           # u64 words per 128-byte record
    PACKED_HEADER_BYTES = 8     # 16 nibbles: significant bytes of each word
    PACKED_RECORD_BYTES_MAX = 136

cdef size_t pack_records(const uint8_t *records, size_t count, uint8_t *out) noexcept nogil
cdef Py_ssize_t unpack_records(const uint8_t *src, size_t size, size_t count, uint8_t *out) noexcept nogil
