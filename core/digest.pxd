# SHA-256 and HMAC-SHA256 in C (core/digest.pyx), shared by the wire and the core.

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
cdef void hmac_begin(const hmac_key_t *k, sha256_t *c) noexcept nogil
cdef void hmac_end(const hmac_key_t *k, sha256_t *c, uint8_t *mac) noexcept nogil
cdef void hmac_sha256(const hmac_key_t *k, const uint8_t *data, size_t n, uint8_t *mac) noexcept nogil
cdef void sha256(const uint8_t *data, size_t n, uint8_t *digest) noexcept nogil
cdef void key_id_digest(const char *domain, const uint8_t *key, const uint8_t *number, uint8_t *id_out) noexcept nogil
cdef void order_id_digest(const uint8_t *merchant_id, const uint8_t *out_trade_no, uint8_t *id_out) noexcept nogil

# The id of leg ``leg`` of a product event (docs/products.md): a fixed mix, so replay derives it.
cdef void leg_id_of(uint64_t lo, uint64_t hi, uint64_t operation, uint64_t leg, uint64_t *out_lo,
                    uint64_t *out_hi) noexcept nogil
# The id of a red envelope's claim transfer at ``position`` (docs/products.md "Red envelopes").
cdef void claim_transfer_id_of(uint64_t lo, uint64_t hi, uint32_t position, uint64_t *out_lo,
                               uint64_t *out_hi) noexcept nogil
