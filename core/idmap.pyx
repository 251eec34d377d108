# cython: boundscheck=False, wraparound=False
"""Open-addressing hash map from 128-bit ids to dense u32 indexes (see idmap.pxd)."""

import numpy as np

from libc.stdint cimport uint32_t, uint64_t

from core.records cimport TALLY_LIKELY, TALLY_PREFETCH, tally_touch_pages


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    # The murmur3 finalizer: every input bit affects every output bit.
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    x *= 0xc4ceb9fe1a85ec53ULL
    x ^= x >> 33
    return x


cdef class IdMap:
    """Maps 128-bit ids to dense indexes; holds at most ``count_max`` entries."""

    def __cinit__(self, uint64_t count_max):
        cdef uint64_t capacity = 16
        if count_max == 0 or count_max > (1 << 33):
            raise ValueError(f"count_max must be in 1..2**33, got {count_max}")
        while capacity < 2 * count_max:
            capacity <<= 1
        # np.zeros gets zeroed pages from the OS lazily: a large, mostly empty map costs
        # address space, not memory.
        self._buffer = np.zeros(capacity * sizeof(idmap_slot_t), dtype=np.uint8)
        cdef unsigned char[::1] view = self._buffer
        self.slots = <idmap_slot_t *> &view[0]
        self.mask = capacity - 1
        self.count = 0
        self.count_max = count_max

    def prefault(self):
        """Touch every page of the slot array now (see Ledger.prefault). Returns bytes touched."""
        cdef unsigned char[::1] view = self._buffer
        cdef uint64_t n = view.shape[0]
        with nogil:
            tally_touch_pages(&view[0], n)
        return n

    @property
    def capacity_slots(self):
        return self.mask + 1

    def __len__(self):
        return self.count

    cdef inline uint64_t slot_of(self, uint64_t lo, uint64_t hi) noexcept nogil:
        return mix64(lo ^ mix64(hi + 0x9e3779b97f4a7c15ULL)) & self.mask

    cdef void prefetch(self, uint64_t lo, uint64_t hi) noexcept nogil:
        TALLY_PREFETCH(&self.slots[self.slot_of(lo, hi)])

    cdef uint32_t get(self, uint64_t lo, uint64_t hi) noexcept nogil:
        cdef uint64_t s = self.slot_of(lo, hi)
        cdef idmap_slot_t *slot
        while True:
            slot = &self.slots[s]
            if slot.lo == lo and slot.hi == hi:
                return slot.index
            if slot.lo == 0 and slot.hi == 0:
                return IDMAP_NOT_FOUND
            s = (s + 1) & self.mask

    cdef int put(self, uint64_t lo, uint64_t hi, uint32_t index) noexcept nogil:
        """Insert a new id (the caller checked it is absent and not 0). -1 when full."""
        cdef uint64_t s
        if self.count >= self.count_max:
            return -1
        s = self.slot_of(lo, hi)
        while not (self.slots[s].lo == 0 and self.slots[s].hi == 0):
            s = (s + 1) & self.mask
        self.slots[s].lo = lo
        self.slots[s].hi = hi
        self.slots[s].index = index
        self.count += 1
        return 0

    cdef void remove(self, uint64_t lo, uint64_t hi) noexcept nogil:
        """Remove an id if present, shifting later entries of its probe run back."""
        cdef uint64_t s = self.slot_of(lo, hi), j, home
        while True:
            if self.slots[s].lo == lo and self.slots[s].hi == hi:
                break
            if self.slots[s].lo == 0 and self.slots[s].hi == 0:
                return
            s = (s + 1) & self.mask
        j = s
        while True:
            j = (j + 1) & self.mask
            if self.slots[j].lo == 0 and self.slots[j].hi == 0:
                break
            home = self.slot_of(self.slots[j].lo, self.slots[j].hi)
            # Move slot j into the hole at s unless its home lies cyclically in (s, j].
            if (j > s and (home <= s or home > j)) or (j < s and (home <= s and home > j)):
                self.slots[s] = self.slots[j]
                s = j
        self.slots[s].lo = 0
        self.slots[s].hi = 0
        self.slots[s].index = 0
        self.count -= 1

    # Python-level access, for tests and tools (not the hot path).
    def lookup(self, id_):
        cdef object i = int(id_)
        cdef uint32_t index = self.get(i & 0xFFFFFFFFFFFFFFFF, i >> 64)
        return None if index == IDMAP_NOT_FOUND else index

    def insert(self, id_, uint32_t index):
        cdef object i = int(id_)
        if i == 0:
            raise ValueError("id 0 is reserved")
        if self.lookup(i) is not None:
            raise KeyError(f"id {i} already present")
        if self.put(i & 0xFFFFFFFFFFFFFFFF, i >> 64, index) != 0:
            raise MemoryError("IdMap is full")

    def discard(self, id_):
        cdef object i = int(id_)
        self.remove(i & 0xFFFFFFFFFFFFFFFF, i >> 64)
