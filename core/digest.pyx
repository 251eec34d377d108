# cython: boundscheck=False, wraparound=False
"""SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) in C, for the wire's frame MACs
(engine/wire.pyx) and the core's derived ids and order tokens (core/orders.pyx, docs/products.md):
no Python object per digest, and no OpenSSL headers to build. Checked against ``hashlib`` and
``hmac`` by tests/test_digest.py.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from core.records cimport LEG_ID_TAG


cdef uint32_t[64] _K = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]
cdef uint32_t[8] _IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]


cdef inline uint32_t _rotr(uint32_t x, int n) noexcept nogil:
    return (x >> n) | (x << (32 - n))


cdef inline uint32_t _load_be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t> p[0] << 24) | (<uint32_t> p[1] << 16) | (<uint32_t> p[2] << 8) | <uint32_t> p[3]


cdef inline void _store_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t> (v >> 24)
    p[1] = <uint8_t> (v >> 16)
    p[2] = <uint8_t> (v >> 8)
    p[3] = <uint8_t> v


cdef extern from *:
    """
    /* SHA-256's compression with the CPU's SHA extensions (x86 SHA-NI), about 10x the
       portable code's speed; chosen at import when the CPU has them (tally_sha_ni_usable). */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #include <cpuid.h>
    #include <immintrin.h>
    #define TALLY_SHA_NI 1
    static int tally_sha_ni_usable(void) {
        unsigned int a, b, c, d;
        if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)) || !(c & (1u << 9))) return 0;  /* SSE4.1, SSSE3 */
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
        return (b >> 29) & 1;  /* SHA */
    }
    __attribute__((target("sha,sse4.1,ssse3")))
    static void tally_sha256_compress_ni(uint32_t *state, const uint8_t *block, const uint32_t *k) {
        const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
        __m128i w[4], msg, tmp, abef, cdgh, abef_saved, cdgh_saved;
        int i;
        tmp = _mm_loadu_si128((const __m128i *) &state[0]);
        cdgh = _mm_loadu_si128((const __m128i *) &state[4]);
        tmp = _mm_shuffle_epi32(tmp, 0xB1);           /* CDAB */
        cdgh = _mm_shuffle_epi32(cdgh, 0x1B);         /* EFGH */
        abef = _mm_alignr_epi8(tmp, cdgh, 8);         /* ABEF */
        cdgh = _mm_blend_epi16(cdgh, tmp, 0xF0);      /* CDGH */
        abef_saved = abef;
        cdgh_saved = cdgh;
        for (i = 0; i < 4; i++)
            w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (block + 16 * i)), bswap);
        for (i = 0; i < 16; i++) {  /* four rounds a step; w[i % 4] holds words 4i..4i+3 */
            __m128i current = w[i & 3];
            msg = _mm_add_epi32(current, _mm_loadu_si128((const __m128i *) &k[4 * i]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, msg);
            msg = _mm_shuffle_epi32(msg, 0x0E);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, msg);
            if (i < 12) {  /* words 4(i+4)..: W[t-16] + s0(W[t-15]) + W[t-7], then + s1(W[t-2]) */
                __m128i next = _mm_sha256msg1_epu32(current, w[(i + 1) & 3]);
                next = _mm_add_epi32(next, _mm_alignr_epi8(w[(i + 3) & 3], w[(i + 2) & 3], 4));
                w[i & 3] = _mm_sha256msg2_epu32(next, w[(i + 3) & 3]);
            }
        }
        abef = _mm_add_epi32(abef, abef_saved);
        cdgh = _mm_add_epi32(cdgh, cdgh_saved);
        tmp = _mm_shuffle_epi32(abef, 0x1B);          /* FEBA */
        cdgh = _mm_shuffle_epi32(cdgh, 0xB1);         /* DCHG */
        abef = _mm_blend_epi16(tmp, cdgh, 0xF0);      /* DCBA */
        cdgh = _mm_alignr_epi8(cdgh, tmp, 8);         /* HGFE */
        _mm_storeu_si128((__m128i *) &state[0], abef);
        _mm_storeu_si128((__m128i *) &state[4], cdgh);
    }
    #else
    #define TALLY_SHA_NI 0
    static int tally_sha_ni_usable(void) { return 0; }
    static void tally_sha256_compress_ni(uint32_t *state, const uint8_t *block, const uint32_t *k) {}
    #endif
    """
    int tally_sha_ni_usable() nogil
    void tally_sha256_compress_ni(uint32_t *state, const uint8_t *block, const uint32_t *k) nogil


cdef bint _sha_ni = tally_sha_ni_usable()
#: Whether SHA-256 runs on the CPU's SHA extensions here (else the portable code below).
SHA_NI = bool(_sha_ni)


def tally_sha_ni_usable_for_tests() -> bool:
    """Whether this CPU has the SHA extensions (what the import chose from)."""
    return bool(tally_sha_ni_usable())


def _set_sha_ni(bint enabled):
    """Tests: run the portable code (False) or the SHA extensions (True, where usable)."""
    global _sha_ni, SHA_NI
    _sha_ni = enabled and tally_sha_ni_usable()
    SHA_NI = bool(_sha_ni)


cdef inline void _compress(uint32_t *state, const uint8_t *block) noexcept nogil:
    if _sha_ni:
        tally_sha256_compress_ni(state, block, _K)
    else:
        _compress_portable(state, block)


cdef void _compress_portable(uint32_t *state, const uint8_t *block) noexcept nogil:
    cdef uint32_t w[64]
    cdef uint32_t a, b, c, d, e, f, g, h, t1, t2, s0, s1
    cdef int i
    for i in range(16):
        w[i] = _load_be32(block + 4 * i)
    for i in range(16, 64):
        s0 = _rotr(w[i - 15], 7) ^ _rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
        s1 = _rotr(w[i - 2], 17) ^ _rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
        w[i] = w[i - 16] + s0 + w[i - 7] + s1
    a, b, c, d, e, f, g, h = state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7]
    for i in range(64):
        t1 = h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[i] + w[i]
        t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        h = g
        g = f
        f = e
        e = d + t1
        d = c
        c = b
        b = a
        a = t1 + t2
    state[0] += a
    state[1] += b
    state[2] += c
    state[3] += d
    state[4] += e
    state[5] += f
    state[6] += g
    state[7] += h


cdef void sha256_init(sha256_t *c) noexcept nogil:
    memcpy(c.state, _IV, sizeof(c.state))
    c.bytes = 0
    c.used = 0


cdef void sha256_update(sha256_t *c, const uint8_t *data, size_t n) noexcept nogil:
    cdef size_t take
    c.bytes += n
    if c.used:
        take = 64 - c.used
        if take > n:
            take = n
        memcpy(c.block + c.used, data, take)
        c.used += <uint32_t> take
        data += take
        n -= take
        if c.used < 64:
            return
        _compress(c.state, c.block)
        c.used = 0
    while n >= 64:  # whole blocks straight from the input
        _compress(c.state, data)
        data += 64
        n -= 64
    if n:
        memcpy(c.block, data, n)
        c.used = <uint32_t> n


cdef void sha256_final(sha256_t *c, uint8_t *digest) noexcept nogil:
    cdef uint64_t bits = c.bytes * 8
    cdef int i
    c.block[c.used] = 0x80
    c.used += 1
    if c.used > 56:
        memset(c.block + c.used, 0, 64 - c.used)
        _compress(c.state, c.block)
        c.used = 0
    memset(c.block + c.used, 0, 56 - c.used)
    for i in range(8):
        c.block[56 + i] = <uint8_t> (bits >> (56 - 8 * i))
    _compress(c.state, c.block)
    for i in range(8):
        _store_be32(digest + 4 * i, c.state[i])


cdef void hmac_key_init(hmac_key_t *k, const uint8_t *key, size_t n) noexcept nogil:
    cdef uint8_t padded[64]
    cdef uint8_t block[64]
    cdef sha256_t c
    cdef int i
    memset(padded, 0, 64)
    if n > 64:  # RFC 2104: a key longer than the block is hashed first
        sha256_init(&c)
        sha256_update(&c, key, n)
        sha256_final(&c, padded)
    else:
        memcpy(padded, key, n)
    for i in range(64):
        block[i] = padded[i] ^ 0x36
    memcpy(k.inner, _IV, sizeof(k.inner))
    _compress(k.inner, block)
    for i in range(64):
        block[i] = padded[i] ^ 0x5c
    memcpy(k.outer, _IV, sizeof(k.outer))
    _compress(k.outer, block)


cdef void hmac_begin(const hmac_key_t *k, sha256_t *c) noexcept nogil:
    memcpy(c.state, k.inner, sizeof(c.state))
    c.bytes = 64
    c.used = 0


cdef void hmac_end(const hmac_key_t *k, sha256_t *c, uint8_t *mac) noexcept nogil:
    cdef uint8_t inner[32]
    sha256_final(c, inner)
    memcpy(c.state, k.outer, sizeof(c.state))
    c.bytes = 64
    c.used = 0
    sha256_update(c, inner, 32)
    sha256_final(c, mac)


cdef void hmac_sha256(const hmac_key_t *k, const uint8_t *data, size_t n, uint8_t *mac) noexcept nogil:
    cdef sha256_t c
    hmac_begin(k, &c)
    sha256_update(&c, data, n)
    hmac_end(k, &c, mac)


cdef void sha256(const uint8_t *data, size_t n, uint8_t *digest) noexcept nogil:
    cdef sha256_t c
    sha256_init(&c)
    sha256_update(&c, data, n)
    sha256_final(&c, digest)


cdef void key_id_digest(const char *domain, const uint8_t *key, const uint8_t *number, uint8_t *id_out) noexcept nogil:
    """A product record's id from its business key (docs/products.md): the first 16 bytes of
    SHA-256(``domain``'s 4 bytes + ``key``'s 16 (an account or order id, LE) + ``number``'s 32
    (the merchant's out_trade_no or out_refund_no, NUL-padded)). One definition for the core's
    check and the services' batches (``key_ids``)."""
    cdef uint8_t preimage[52]
    cdef uint8_t digest[32]
    memcpy(preimage, domain, 4)
    memcpy(preimage + 4, key, 16)
    memcpy(preimage + 20, number, 32)
    sha256(preimage, 52, digest)
    memcpy(id_out, digest, 16)


cdef void order_id_digest(const uint8_t *merchant_id, const uint8_t *out_trade_no, uint8_t *id_out) noexcept nogil:
    """An order's id: ``key_id_digest`` of b"ordr", the merchant's id and the out_trade_no."""
    key_id_digest(b"ordr", merchant_id, out_trade_no, id_out)


def key_ids(bytes domain, keys, numbers):
    """Many records' ids at once: ``keys`` an (n, 2) uint64 array (lo, hi) and ``numbers`` an
    (n, 32) uint8 array; returns an (n, 2) uint64 array (lo, hi). ``domain``: b"ordr", b"rfnd"."""
    import numpy as np
    if len(domain) != 4:
        raise ValueError("a domain is 4 bytes")
    keys = np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1, 2)
    numbers = np.ascontiguousarray(numbers, dtype=np.uint8).reshape(-1, 32)
    if keys.shape[0] != numbers.shape[0]:
        raise ValueError("one number per key")
    out = np.empty((keys.shape[0], 2), dtype=np.uint64)
    cdef const uint8_t[:, ::1] k = keys.view(np.uint8)
    cdef const uint8_t[:, ::1] t = numbers
    cdef uint8_t[:, ::1] o = out.view(np.uint8)
    cdef const char *d = domain
    cdef Py_ssize_t i, n = keys.shape[0]
    with nogil:
        for i in range(n):
            key_id_digest(d, &k[i, 0], &t[i, 0], &o[i, 0])
    return out


def sha256_digest(data) -> bytes:
    """SHA-256 of ``data`` (a bytes-like object): the C code's Python face, for tests."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef uint8_t out[32]
    sha256(&view[0] if view.shape[0] else NULL, view.shape[0], out)
    return bytes(out[:32])


def hmac_sha256_digest(key, data) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key``: the C code's Python face, for tests."""
    cdef const uint8_t[::1] k = memoryview(key).cast("B")
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef hmac_key_t prepared
    cdef uint8_t out[32]
    hmac_key_init(&prepared, &k[0] if k.shape[0] else NULL, k.shape[0])
    hmac_sha256(&prepared, &view[0] if view.shape[0] else NULL, view.shape[0], out)
    return bytes(out[:32])


# ---------------------------------------------------------------------------- the legs' ids

cdef enum:
    OPERATION_CLAIM_ENVELOPES = 117             # core/operations.py's number (core/envelopes.pyx checks)


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EB
    return z ^ (z >> 31)


cdef void leg_id_of(uint64_t lo, uint64_t hi, uint64_t operation, uint64_t leg, uint64_t *out_lo,
                    uint64_t *out_hi) noexcept nogil:
    # A fixed mix of (event id, operation, leg): replay derives the same id; distinct events'
    # legs collide with probability ~2^-112 (the event ids are SHA-256 output).
    # The top 16 bits are LEG_ID_TAG, which clients' transfers may not use (id_reserved).
    cdef uint64_t salt = ((operation << 8) | leg) * <uint64_t> 0x9E3779B97F4A7C15
    out_lo[0] = mix64(lo ^ salt) ^ hi
    out_hi[0] = (mix64(hi ^ mix64(out_lo[0] ^ salt)) & <uint64_t> 0x0000FFFFFFFFFFFF) | (<uint64_t> LEG_ID_TAG << 48)


cdef void claim_transfer_id_of(uint64_t lo, uint64_t hi, uint32_t position, uint64_t *out_lo,
                               uint64_t *out_hi) noexcept nogil:
    # The leg mix's lo is mix(lo ^ salt) ^ hi: folding the position into hi gives every position
    # of a packet its own id.
    leg_id_of(lo, hi ^ position, OPERATION_CLAIM_ENVELOPES, 0, out_lo, out_hi)


def claim_transfer_ids(envelope_ids, uint32_t count):
    """The ids of a packet's claim transfers at positions 0 .. count - 1, as an (count, 2)
    uint64 array (lo, hi): ``envelope_ids`` one id as (lo, hi). "Who claimed what, when" is
    ``lookup_transfers`` of these (docs/products.md "Red envelopes")."""
    import numpy as np
    ids = np.ascontiguousarray(envelope_ids, dtype=np.uint64).reshape(2)
    out = np.empty((count, 2), dtype=np.uint64)
    cdef uint64_t[:, ::1] o = out
    cdef uint64_t lo = ids[0], hi = ids[1]
    cdef uint32_t p
    with nogil:
        for p in range(count):
            claim_transfer_id_of(lo, hi, p, &o[p, 0], &o[p, 1])
    return out
