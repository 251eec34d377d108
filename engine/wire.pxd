# The compiled part of the wire protocol (docs/protocol.md, docs/request-path.md): frame checks
# and seals in C, so that a socket read's frames are checked in one call with no Python object
# per check. SHA-256 (FIPS 180-4) and CRC-32 (IEEE, as zlib's) are implemented here: the
# extension then needs no OpenSSL or zlib headers to build.

from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef struct sha256_t:
    uint32_t state[8]
    uint8_t block[64]
    uint64_t bytes          # message bytes so far
    uint32_t used           # bytes in ``block``


# HMAC-SHA256 with the key's two padded blocks already compressed: a MAC then costs the
# message's blocks plus two, instead of four more (docs/request-path.md).
cdef struct hmac_key_t:
    uint32_t inner[8]
    uint32_t outer[8]


cdef void sha256_init(sha256_t *c) noexcept nogil
cdef void sha256_update(sha256_t *c, const uint8_t *data, size_t n) noexcept nogil
cdef void sha256_final(sha256_t *c, uint8_t *digest) noexcept nogil
cdef void hmac_key_init(hmac_key_t *k, const uint8_t *key, size_t n) noexcept nogil
cdef uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t n) noexcept nogil
