# cython: boundscheck=False, wraparound=False
"""Open-addressing hash map from 128-bit ids to dense u32 indexes (see idmap.pxd)."""

import numpy as np

from libc.stdint cimport int64_t, uint32_t, uint64_t

from core.records cimport tally_touch_pages

from core import constants
from core.records import ids_array


cdef int idmap_put(idmap_t *m, uint64_t lo, uint64_t hi, uint32_t index) noexcept nogil:
    """Insert a new id (the caller checked it is absent and not 0). -1 when full."""
    cdef uint64_t s
    if m.count >= m.count_max:
        return -1
    s = idmap_slot(m, lo, hi)
    while not (m.slots[s].lo == 0 and m.slots[s].hi == 0):
        s = (s + 1) & m.mask
    m.slots[s].lo = lo
    m.slots[s].hi = hi
    m.slots[s].index = index
    m.count += 1
    return 0


cdef void idmap_remove(idmap_t *m, uint64_t lo, uint64_t hi) noexcept nogil:
    """Remove an id if present, shifting later entries of its probe run back."""
    cdef uint64_t s = idmap_slot(m, lo, hi), j, home
    while True:
        if m.slots[s].lo == lo and m.slots[s].hi == hi:
            break
        if m.slots[s].lo == 0 and m.slots[s].hi == 0:
            return
        s = (s + 1) & m.mask
    j = s
    while True:
        j = (j + 1) & m.mask
        if m.slots[j].lo == 0 and m.slots[j].hi == 0:
            break
        home = idmap_slot(m, m.slots[j].lo, m.slots[j].hi)
        # Move slot j into the hole at s unless its home lies cyclically in (s, j].
        if (j > s and (home <= s or home > j)) or (j < s and (home <= s and home > j)):
            m.slots[s] = m.slots[j]
            s = j
    m.slots[s].lo = 0
    m.slots[s].hi = 0
    m.slots[s].index = 0
    m.count -= 1


cdef class IdMap:
    """Maps 128-bit ids to dense indexes; holds at most ``count_max`` entries.

    The Python methods are for tests and tools; the ledger uses the inline C functions.
    """

    def __cinit__(self, uint64_t count_max):
        cdef uint64_t capacity = 16
        if count_max == 0 or count_max > (1 << 33):
            raise ValueError(f"count_max must be in 1..2**33, got {count_max}")
        while capacity < 2 * count_max:
            capacity <<= 1
        # np.zeros gets zeroed pages from the OS lazily: a large, mostly empty map costs
        # address space, not memory, until prefault() or use.
        self._buffer = np.zeros(capacity * sizeof(idmap_slot_t), dtype=np.uint8)
        cdef unsigned char[::1] view = self._buffer
        self.map.slots = <idmap_slot_t *> &view[0]
        self.map.mask = capacity - 1
        self.map.count = 0
        self.map.count_max = count_max

    def indexes_of(self, ids):
        """The indexes of these ids (ints or an ID_DTYPE array, at most BATCH_EVENTS_MAX) that
        are in the map, in order, as an int64 array: a table's lookup is its rows at them."""
        array = ids_array(ids)
        if array.shape[0] > constants.BATCH_EVENTS_MAX:
            raise ValueError(f"at most {constants.BATCH_EVENTS_MAX} ids per lookup")
        cdef const uint64_t[:, ::1] keys = array.view(np.uint64).reshape(-1, 2)
        out = np.empty(keys.shape[0], dtype=np.int64)
        cdef int64_t[::1] found = out
        cdef Py_ssize_t i, count = 0
        cdef uint32_t index
        for i in range(keys.shape[0]):
            index = idmap_get(&self.map, keys[i, 0], keys[i, 1])
            if index != IDMAP_NOT_FOUND:
                found[count] = index
                count += 1
        return out[:count]

    def prefault(self):
        """Touch every page of the slot array now (see Ledger.prefault). Returns bytes touched."""
        cdef unsigned char[::1] view = self._buffer
        cdef uint64_t n = view.shape[0]
        with nogil:
            tally_touch_pages(&view[0], n)
        return n

    @property
    def capacity_slots(self):
        return self.map.mask + 1

    def __len__(self):
        return self.map.count

    def lookup(self, id_):
        cdef object i = int(id_)
        cdef uint32_t index = idmap_get(&self.map, i & 0xFFFFFFFFFFFFFFFF, i >> 64)
        return None if index == IDMAP_NOT_FOUND else index

    def insert(self, id_, uint32_t index):
        cdef object i = int(id_)
        if i == 0:
            raise ValueError("id 0 is reserved")
        if self.lookup(i) is not None:
            raise KeyError(f"id {i} already present")
        if idmap_put(&self.map, i & 0xFFFFFFFFFFFFFFFF, i >> 64, index) != 0:
            raise MemoryError("IdMap is full")

    def discard(self, id_):
        cdef object i = int(id_)
        idmap_remove(&self.map, i & 0xFFFFFFFFFFFFFFFF, i >> 64)
