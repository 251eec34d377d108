# The compiled part of the wire protocol (docs/protocol.md, docs/request-path.md): frame checks
# and seals in C, so that a socket read's frames are checked in one call with no Python object
# per check. CRC-32 (IEEE, as zlib's) is implemented here and SHA-256 in
# core/digest.pyx: the extensions then need no OpenSSL or zlib headers to build.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from core.digest cimport hmac_key_t, sha256_t


cdef uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t n) noexcept nogil
