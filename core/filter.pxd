# A blocked Bloom filter over 128-bit ids: "is this id possibly in the cold tier?"
#
# One 64-byte line (512 bits) per id, 7 bits set in it: a probe is one cache miss, whatever the
# number of bits. Fixed size (chosen by configuration), inserts only, no deletes: the cold tier
# never forgets an id. A negative is certain (the id was never added); a positive is checked
# against LMDB by the store's prefetch. The probe functions are inline so that the ledger's
# prefetch scan compiles them in place.

from libc.stdint cimport uint64_t

from core.idmap cimport idmap_mix64


cdef struct idfilter_t:
    uint64_t *words     # blocks * 8 words; NULL when there is no filter (nothing is cold)
    uint64_t blocks     # 64-byte lines, < 2**32


cdef enum:
    IDFILTER_BITS_PER_ID = 7
    IDFILTER_BLOCK_BYTES = 64
    IDFILTER_REGION_SHIFT = 20      # dirty tracking per 1 MiB region (a checkpoint writes only those)


cdef inline uint64_t idfilter_hash(uint64_t lo, uint64_t hi) noexcept nogil:
    # A different seed from the id maps', so that map collisions and filter collisions are
    # independent.
    return idmap_mix64(lo ^ idmap_mix64(hi ^ 0x2545f4914f6cdd1dULL))


cdef inline uint64_t *idfilter_block(const idfilter_t *f, uint64_t h) noexcept nogil:
    # Multiply-shift maps the high 32 bits onto [0, blocks) without a division.
    return &f.words[((h >> 32) * f.blocks >> 32) * 8]


cdef inline bint idfilter_maybe(const idfilter_t *f, uint64_t lo, uint64_t hi) noexcept nogil:
    """False: the id was certainly never added. True: it may have been."""
    cdef uint64_t h, g
    cdef uint64_t *block
    cdef int k
    if f.words == NULL:
        return False
    h = idfilter_hash(lo, hi)
    block = idfilter_block(f, h)
    g = idmap_mix64(h)          # 7 bit positions of 9 bits each
    for k in range(IDFILTER_BITS_PER_ID):
        if not (block[(g >> 6) & 7] >> (g & 63)) & 1:
            return False
        g >>= 9
    return True


cdef inline uint64_t idfilter_add(idfilter_t *f, uint64_t lo, uint64_t hi) noexcept nogil:
    """Add an id; returns the byte offset of the line it set bits in."""
    cdef uint64_t h = idfilter_hash(lo, hi), g
    cdef uint64_t *block = idfilter_block(f, h)
    cdef int k
    g = idmap_mix64(h)
    for k in range(IDFILTER_BITS_PER_ID):
        block[(g >> 6) & 7] |= (<uint64_t> 1) << (g & 63)
        g >>= 9
    return <uint64_t> (block - f.words) * 8


cdef class IdFilter:
    cdef idfilter_t filter
    cdef object _buffer          # NumPy uint64 array owning the words
    cdef object _dirty           # NumPy uint8 per region: changed since take_dirty()
    cdef readonly uint64_t added # ids added (duplicates counted)

    cdef _add_words(self, const uint64_t[:, ::1] words)
