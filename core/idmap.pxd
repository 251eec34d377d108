# A hash map from 128-bit ids to dense u32 indexes: open addressing, linear probing.
#
# Ids are client-chosen, so the map never trusts their distribution: the slot comes from a full
# 64-bit mix of both halves. Id 0 is reserved by the data model and marks an empty slot, so no
# separate occupancy array is needed. Deletion (only used to undo a failed linked chain) shifts
# entries back rather than leaving tombstones, so probe lengths never degrade.
#
# The lookups are inline functions over a plain C struct, so that the ledger's loops compile
# them in place: no call, no vtable, and the compiler sees the whole probe.

from libc.stdint cimport uint32_t, uint64_t

cdef struct idmap_slot_t:
    uint64_t lo         # id bits 0..63; lo == hi == 0 marks an empty slot
    uint64_t hi         # id bits 64..127
    uint32_t index      # dense index of the record
    uint32_t _pad


cdef struct idmap_t:
    idmap_slot_t *slots
    uint64_t mask       # capacity_slots - 1 (capacity is a power of two)
    uint64_t count
    uint64_t count_max  # the most entries the map takes (load factor <= 1/2)


cdef enum:
    IDMAP_NOT_FOUND = 0xFFFFFFFF


cdef inline uint64_t idmap_mix64(uint64_t x) noexcept nogil:
    # The murmur3 finalizer: every input bit affects every output bit.
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    x *= 0xc4ceb9fe1a85ec53ULL
    x ^= x >> 33
    return x


cdef inline uint64_t idmap_slot(const idmap_t *m, uint64_t lo, uint64_t hi) noexcept nogil:
    return idmap_mix64(lo ^ idmap_mix64(hi + 0x9e3779b97f4a7c15ULL)) & m.mask


cdef inline const idmap_slot_t *idmap_home(const idmap_t *m, uint64_t lo, uint64_t hi) noexcept nogil:
    # For TALLY_PREFETCH(idmap_home(...)) at the call site. Not an inline function that
    # prefetches: GCC deems such a function pure and drops the call, prefetch and all.
    return &m.slots[idmap_slot(m, lo, hi)]


cdef inline uint32_t idmap_get(const idmap_t *m, uint64_t lo, uint64_t hi) noexcept nogil:
    cdef uint64_t s = idmap_slot(m, lo, hi)
    cdef const idmap_slot_t *slot
    if lo == 0 and hi == 0:
        return IDMAP_NOT_FOUND  # id 0 is reserved: it would match an empty slot
    while True:
        slot = &m.slots[s]
        if slot.lo == lo and slot.hi == hi:
            return slot.index
        if slot.lo == 0 and slot.hi == 0:
            return IDMAP_NOT_FOUND
        s = (s + 1) & m.mask


cdef int idmap_put(idmap_t *m, uint64_t lo, uint64_t hi, uint32_t index) noexcept nogil
cdef void idmap_remove(idmap_t *m, uint64_t lo, uint64_t hi) noexcept nogil


cdef class IdMap:
    cdef idmap_t map
    cdef object _buffer         # NumPy array owning the slots (zeroed lazily by the OS)
