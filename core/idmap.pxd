# A hash map from 128-bit ids to dense u32 indexes: open addressing, linear probing.
#
# Ids are client-chosen, so the map never trusts their distribution: the slot comes from a full
# 64-bit mix of both halves. Id 0 is reserved by the data model and marks an empty slot, so no
# separate occupancy array is needed. Deletion (only used to undo a failed linked chain) shifts
# entries back rather than leaving tombstones, so probe lengths never degrade.

from libc.stdint cimport uint32_t, uint64_t


cdef struct idmap_slot_t:
    uint64_t lo         # id bits 0..63; lo == hi == 0 marks an empty slot
    uint64_t hi         # id bits 64..127
    uint32_t index      # dense index of the record
    uint32_t _pad


cdef enum:
    IDMAP_NOT_FOUND = 0xFFFFFFFF


cdef class IdMap:
    cdef idmap_slot_t *slots
    cdef uint64_t mask          # capacity_slots - 1 (capacity is a power of two)
    cdef uint64_t count
    cdef uint64_t count_max     # the most entries the map takes (load factor <= 1/2)
    cdef object _buffer         # NumPy array owning the slots (zeroed lazily by the OS)

    cdef inline uint64_t slot_of(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef uint32_t get(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef void prefetch(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef int put(self, uint64_t lo, uint64_t hi, uint32_t index) noexcept nogil
    cdef void remove(self, uint64_t lo, uint64_t hi) noexcept nogil
