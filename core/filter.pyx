# cython: boundscheck=False, wraparound=False
"""Blocked Bloom filter over 128-bit ids (see filter.pxd), sized by configuration."""

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint64_t

from core.records cimport TALLY_PREFETCH, tally_touch_pages
from core.checkpoint import REGIONS
from core.records import ID_DTYPE, ids_array

#: The store checkpoints its filter as one array of regions written when they changed
#: (core/checkpoint.py: an IdFilter provides what a REGIONS array's owner must).
CHECKPOINT_ARRAYS = {"filter": REGIONS}

cdef extern from * nogil:
    """
    /* A region's dirty byte is set after the bits it covers (release) and taken by exchange:
       a checkpoint reading the filter while the flush thread adds ids never loses a change. */
    static inline unsigned char tally_take_u8(unsigned char *p) { return __atomic_exchange_n(p, 0, __ATOMIC_ACQ_REL); }
    static inline void tally_mark_u8(unsigned char *p) { __atomic_store_n(p, 1, __ATOMIC_RELEASE); }
    """
    unsigned char tally_take_u8(unsigned char *p)
    void tally_mark_u8(unsigned char *p)


cdef enum:
    AHEAD = 8   # ids looked ahead: their lines are fetched while the current one is set


cdef class IdFilter:
    """A fixed-size filter of ``size_bytes`` (a multiple of 64, at most 2**38) over 128-bit ids.

    False positives, about 1 % at 10 bits per id (see docs/tiering.md), never false negatives.
    The ledger probes it in its prefetch scan; the store adds each flushed epoch's ids.

    >>> f = IdFilter(1 << 16)
    >>> f.add_ids([5, 7]); f.maybe(5), f.maybe(6) in (True, False)
    (True, True)
    """

    def __cinit__(self, uint64_t size_bytes):
        if size_bytes == 0 or size_bytes % IDFILTER_BLOCK_BYTES or size_bytes > (1 << 38):
            raise ValueError(f"filter size must be a positive multiple of 64 bytes, at most 2**38; got {size_bytes}")
        self._buffer = np.zeros(size_bytes // 8, dtype=np.uint64)  # zero pages mapped lazily
        cdef uint64_t[::1] view = self._buffer
        self.filter.words = &view[0]
        self.filter.blocks = size_bytes // IDFILTER_BLOCK_BYTES
        self.added = 0
        self._dirty = np.zeros((size_bytes + (1 << IDFILTER_REGION_SHIFT) - 1) >> IDFILTER_REGION_SHIFT, dtype=np.uint8)

    @property
    def size_bytes(self):
        return self.filter.blocks * IDFILTER_BLOCK_BYTES

    def prefault(self):
        """Touch every page now (see Ledger.prefault). Returns the bytes touched."""
        cdef unsigned char[::1] view = self._buffer.view(np.uint8)
        with nogil:
            tally_touch_pages(&view[0], view.shape[0])
        return view.shape[0]

    def words(self):
        """The filter's words (a live view), for checkpoints and the fill figure."""
        return self._buffer

    @property
    def region_bytes(self):
        """The granularity of ``take_dirty``."""
        return 1 << IDFILTER_REGION_SHIFT

    def take_dirty(self):
        """Indexes of the regions changed since the last call (or load), and mark them clean.

        Safe beside ``add_ids``/``add_rows`` on another thread (the flush thread adds while a
        checkpoint writes): a region changed after it was taken is marked again, and its bits are
        in memory before its mark, so a later read of a taken region sees every change whose mark
        was taken, and any other change stays marked for the next call.
        """
        cdef uint8_t[::1] dirty = self._dirty
        changed = np.empty(dirty.shape[0], dtype=np.int64)
        cdef int64_t[::1] out = changed
        cdef Py_ssize_t r, n = 0
        with nogil:
            for r in range(dirty.shape[0]):
                if tally_take_u8(&dirty[r]):
                    out[n] = r
                    n += 1
        return changed[:n]

    def load_region(self, uint64_t region, data):
        """Set one region's bytes (from a checkpoint); it is then clean."""
        start = region << IDFILTER_REGION_SHIFT
        flat = np.frombuffer(data, dtype=np.uint8)
        target = self._buffer.view(np.uint8)[start:start + (1 << IDFILTER_REGION_SHIFT)]
        if region >= <uint64_t> self._dirty.shape[0] or flat.shape[0] != target.shape[0]:
            raise ValueError(f"filter region {region} of {flat.shape[0]} bytes does not fit a {self.size_bytes}-byte filter")
        target[:] = flat
        self._dirty[region] = 0

    def set_added(self, uint64_t added):
        self.added = added

    def add_ids(self, ids):
        """Add ids (ints or an ID_DTYPE array)."""
        self._add_words(ids_array(ids).view(np.uint64).reshape(-1, 2))

    def add_rows(self, rows):
        """Add the ids of transfer rows (a TRANSFER_DTYPE array; ``id_lo``/``id_hi`` first)."""
        self._add_words(np.ascontiguousarray(rows).view(np.uint64).reshape(-1, 16))

    cdef _add_words(self, const uint64_t[:, ::1] words):
        """Add the ids in the first two words (lo, hi) of each row of ``words``."""
        cdef uint8_t[::1] dirty = self._dirty
        cdef Py_ssize_t i, n = words.shape[0]
        with nogil:
            for i in range(n):
                if i + AHEAD < n:
                    TALLY_PREFETCH(idfilter_block(&self.filter, idfilter_hash(words[i + AHEAD, 0], words[i + AHEAD, 1])))
                tally_mark_u8(&dirty[idfilter_add(&self.filter, words[i, 0], words[i, 1]) >> IDFILTER_REGION_SHIFT])
        self.added += n

    def maybe_mask(self, ids):
        """Which of these ids (an ID_DTYPE array) may have been added: a mask."""
        cdef const uint64_t[:, ::1] words = np.ascontiguousarray(ids).view(np.uint64).reshape(-1, 2)
        out = np.zeros(words.shape[0], dtype=bool)
        cdef uint8_t[::1] mask = out.view(np.uint8)
        cdef Py_ssize_t i
        with nogil:
            for i in range(words.shape[0]):
                if i + AHEAD < words.shape[0]:
                    TALLY_PREFETCH(idfilter_block(&self.filter, idfilter_hash(words[i + AHEAD, 0], words[i + AHEAD, 1])))
                mask[i] = idfilter_maybe(&self.filter, words[i, 0], words[i, 1])
        return out

    def maybe(self, id_):
        cdef object i = int(id_)
        return bool(idfilter_maybe(&self.filter, i & 0xFFFFFFFFFFFFFFFF, i >> 64))

    def fill(self):
        """Fraction of bits set (the false-positive rate is about fill ** 7)."""
        total = 0
        for start in range(0, self._buffer.shape[0], 1 << 20):
            total += int(np.bitwise_count(self._buffer[start:start + (1 << 20)]).sum())
        return total / (self._buffer.shape[0] * 64)
