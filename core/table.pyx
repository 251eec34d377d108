# cython: boundscheck=False, wraparound=False
"""A product table's memory: resident records, their eviction to an outbox, the hash of all
records (see table.pxd and docs/tables.md "The write-back table").

The C methods are the batch loop's (no Python object, no I/O); the Python methods are the
store's, called per batch on whole arrays: which ids of a batch are not resident, loading what
the outbox or the cold tier gave back, making room, handing the outbox to the cold tier.

>>> import numpy as np
>>> from core.records import REFUND_DTYPE
>>> t = Table(REFUND_DTYPE, 4, "refund")
>>> t.capacity, t.used, t.records_total
(4, 0, 0)
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from core.idmap cimport idmap_home, idmap_mix64, idmap_put, idmap_remove
from core.records cimport TALLY_PREFETCH, tally_touch_pages

from core import constants
from core.checkpoint import RAW
from core.records import ID_DTYPE, ids_array

#: A slot's bookkeeping and an outbox entry as NumPy sees them (table.pxd's structs).
SLOT_DTYPE = np.dtype([("aux", "<u4"), ("flags", "<u4"), ("modified_at", "<u8")])
OUTBOX_ENTRY_DTYPE = np.dtype([("record", "V128"), ("aux", "<u4"), ("flags", "<u4"), ("modified_at", "<u8")])
#: Outbox entries per table: room for eight full batches' evictions before a batch waits for
#: the cold tier (9.4 MB; untouched pages cost nothing).
OUTBOX_MAX_DEFAULT = 8 * constants.BATCH_EVENTS_MAX

cdef enum:
    PREFETCH_AHEAD = 8  # ids probed ahead: their map lines are fetched while the current one is read

if sizeof(slot_t) != SLOT_DTYPE.itemsize or sizeof(outbox_entry_t) != OUTBOX_ENTRY_DTYPE.itemsize:
    raise ImportError("core/table.pxd's structs and their dtypes disagree")


def checkpoint_arrays(str prefix):
    """The checkpoint arrays (core/checkpoint.py) of a table named ``prefix``: its records,
    its slots' bookkeeping, and the outbox entries not yet in the cold tier."""
    return {f"{prefix}_rows": RAW, f"{prefix}_slots": RAW, f"{prefix}_outbox": RAW}


cdef inline void record_hash(const uint8_t *record, uint32_t aux, uint64_t *out) noexcept nogil:
    """A 128-bit hash of a record's 128 bytes and its u32 (two multiply-xor lanes, each
    finished by a full mix): the state hash's summand, not a cryptographic digest."""
    cdef uint64_t a = <uint64_t> 0x9E3779B97F4A7C15 ^ aux, b = <uint64_t> 0xC2B2AE3D27D4EB4F + aux, w
    cdef int i
    for i in range(16):
        memcpy(&w, record + 8 * i, 8)
        a = (a ^ w) * <uint64_t> 0xFF51AFD7ED558CCD
        a ^= a >> 32
        b = (b + w) * <uint64_t> 0xC4CEB9FE1A85EC53
        b ^= b >> 29
    out[0] = idmap_mix64(a)
    out[1] = idmap_mix64(b ^ out[0])


cdef class Table:
    """``capacity`` resident records of ``dtype`` (128 bytes, the id first) and an outbox of
    ``outbox_max`` entries; ``name`` prefixes its checkpoint arrays and scalars."""

    def __cinit__(self, dtype, uint64_t capacity, str name, uint64_t outbox_max=OUTBOX_MAX_DEFAULT):
        dtype = np.dtype(dtype)
        if dtype.itemsize != TABLE_RECORD_BYTES:
            raise ValueError("a table's records are 128 bytes")
        if not 1 <= capacity < 0xFFFFFFFF or not 1 <= outbox_max < 0xFFFFFFFF:
            raise ValueError("a table's capacity and outbox hold 1 .. 2**32 - 2 records")
        self.dtype = dtype
        self.name = name
        self.capacity = capacity
        self.outbox_max = outbox_max
        self.map = IdMap(capacity)
        self.outbox_map = IdMap(outbox_max)
        a = self._arrays = {}
        a["rows"] = np.zeros(capacity, dtype=dtype)
        a["slots"] = np.zeros(capacity, dtype=SLOT_DTYPE)
        a["hashed"] = np.zeros(2 * capacity, dtype=np.uint64)
        a["free"] = np.arange(capacity, dtype=np.uint32)[::-1].copy()  # popped from the end: 0, 1, 2...
        a["touched"] = np.zeros(capacity, dtype=np.uint32)
        a["outbox"] = np.zeros(outbox_max, dtype=OUTBOX_ENTRY_DTYPE)
        self.rows = <uint8_t *> _ptr(a["rows"])
        self.slots = <slot_t *> _ptr(a["slots"])
        self.hashed = <uint64_t *> _ptr(a["hashed"])
        self.free_slots = <uint32_t *> _ptr(a["free"])
        self.touched = <uint32_t *> _ptr(a["touched"])
        self.outbox = <outbox_entry_t *> _ptr(a["outbox"])
        self.free_count = capacity

    # ---------------------------------------------------------------- the batch loop's

    cdef uint32_t insert(self, const void *record, uint32_t aux, uint64_t ts) noexcept nogil:
        """A new record (its id absent): its slot, or IDMAP_NOT_FOUND when none is free."""
        cdef uint32_t slot
        cdef const uint64_t *id_words = <const uint64_t *> record
        if self.free_count == 0:
            return IDMAP_NOT_FOUND
        self.free_count -= 1
        slot = self.free_slots[self.free_count]
        if idmap_put(&self.map.map, id_words[0], id_words[1], slot) != 0:
            self.free_count += 1  # unreachable: the map holds capacity ids
            return IDMAP_NOT_FOUND
        memcpy(self.rows + <uint64_t> slot * TABLE_RECORD_BYTES, record, TABLE_RECORD_BYTES)
        self.slots[slot].aux = aux
        self.slots[slot].flags = SLOT_USED
        self.hashed[2 * slot] = self.hashed[2 * slot + 1] = 0  # not in the sum yet
        self.used += 1
        if slot >= self.slots_high:
            self.slots_high = slot + 1
        self.records_total += 1
        self.touch(slot, ts)
        return slot

    cdef void touch(self, uint32_t slot, uint64_t ts) noexcept nogil:
        """Record that a resident record changed at engine time ``ts`` (after the change, or
        before it: the hash takes the record in as it is when settled)."""
        cdef slot_t *s = &self.slots[slot]
        s.modified_at = ts
        if not (s.flags & SLOT_TOUCHED):
            self.touched[self.touched_count] = slot
            self.touched_count += 1
        s.flags |= SLOT_DIRTY | SLOT_TOUCHED

    cdef void settle(self) noexcept nogil:
        """Take the touched records' changes into the hash."""
        cdef uint64_t i, h[2]
        cdef uint32_t slot
        for i in range(self.touched_count):
            slot = self.touched[i]
            self.slots[slot].flags &= ~SLOT_TOUCHED
            record_hash(self.rows + <uint64_t> slot * TABLE_RECORD_BYTES, self.slots[slot].aux, h)
            self.hash_lo += h[0] - self.hashed[2 * slot]
            self.hash_hi += h[1] - self.hashed[2 * slot + 1]
            self.hashed[2 * slot] = h[0]
            self.hashed[2 * slot + 1] = h[1]
        self.touched_count = 0

    cdef uint64_t evict(self, uint64_t free_wanted) noexcept nogil:
        """Evict records until ``free_wanted`` slots are free (or every unpinned record has
        gone, or the outbox is full): the sweep goes round the slots in order; a dirty record
        goes to the outbox, a clean one (its version is in the cold tier) is dropped. Returns
        the free slots."""
        cdef uint64_t scanned = 0, position
        cdef uint32_t slot, flags
        cdef const uint64_t *id_words
        cdef outbox_entry_t *entry
        self.settle()
        while self.free_count < free_wanted and scanned < self.capacity:
            slot = <uint32_t> self.hand
            self.hand = (self.hand + 1) % self.capacity
            scanned += 1
            flags = self.slots[slot].flags
            if not (flags & SLOT_USED) or (flags & SLOT_PINNED):
                continue
            id_words = <const uint64_t *> (self.rows + <uint64_t> slot * TABLE_RECORD_BYTES)
            if flags & SLOT_DIRTY:
                if self.outbox_head - self.outbox_tail >= self.outbox_max:
                    break
                position = self.outbox_head % self.outbox_max
                entry = &self.outbox[position]
                memcpy(entry.record, id_words, TABLE_RECORD_BYTES)
                entry.aux = self.slots[slot].aux
                entry.flags = 0
                entry.modified_at = self.slots[slot].modified_at
                idmap_remove(&self.outbox_map.map, id_words[0], id_words[1])  # an older version's
                idmap_put(&self.outbox_map.map, id_words[0], id_words[1], <uint32_t> position)
                self.outbox_head += 1
            if self.evict_hook != NULL:
                self.evict_hook(self.evict_hook_owner, slot)
            idmap_remove(&self.map.map, id_words[0], id_words[1])
            self.slots[slot].flags = 0
            self.hashed[2 * slot] = self.hashed[2 * slot + 1] = 0  # its part stays in the sum
            self.free_slots[self.free_count] = slot
            self.free_count += 1
            self.used -= 1
        return self.free_count

    cdef void load_entry(self, const outbox_entry_t *entry) noexcept nogil:
        """Make a record resident again, clean (the caller made room and checked it is absent):
        its part of the hash is its bytes as they are."""
        cdef uint32_t slot
        cdef const uint64_t *id_words = <const uint64_t *> entry.record
        self.free_count -= 1
        slot = self.free_slots[self.free_count]
        idmap_put(&self.map.map, id_words[0], id_words[1], slot)
        memcpy(self.rows + <uint64_t> slot * TABLE_RECORD_BYTES, entry.record, TABLE_RECORD_BYTES)
        self.slots[slot].aux = entry.aux
        self.slots[slot].flags = SLOT_USED
        self.slots[slot].modified_at = entry.modified_at
        record_hash(entry.record, entry.aux, &self.hashed[2 * slot])
        self.used += 1
        if slot >= self.slots_high:
            self.slots_high = slot + 1

    # ---------------------------------------------------------------- the store's (per batch)

    @property
    def free(self):
        return self.free_count

    @property
    def outbox_free(self):
        return self.outbox_max - (self.outbox_head - self.outbox_tail)

    def make_room(self, uint64_t free_wanted):
        """Evict until ``free_wanted`` slots are free; whether they are."""
        with nogil:
            self.evict(free_wanted)
        return self.free_count >= free_wanted

    def resident_mask(self, ids):
        """Which of these ids (an ID_DTYPE array) are resident."""
        cdef const uint64_t[:, ::1] keys = np.ascontiguousarray(ids).view(np.uint64).reshape(-1, 2)
        out = np.zeros(keys.shape[0], dtype=bool)
        cdef uint8_t[::1] mask = out.view(np.uint8)
        cdef Py_ssize_t i
        with nogil:
            for i in range(keys.shape[0]):
                if i + PREFETCH_AHEAD < keys.shape[0]:
                    TALLY_PREFETCH(idmap_home(&self.map.map, keys[i + PREFETCH_AHEAD, 0], keys[i + PREFETCH_AHEAD, 1]))
                mask[i] = idmap_get(&self.map.map, keys[i, 0], keys[i, 1]) != IDMAP_NOT_FOUND
        return out

    def outbox_take(self, ids):
        """(entries, found): the newest outbox entry of each id (ID_DTYPE array), if any."""
        cdef const uint64_t[:, ::1] keys = np.ascontiguousarray(ids).view(np.uint64).reshape(-1, 2)
        positions = np.full(keys.shape[0], -1, dtype=np.int64)
        cdef int64_t[::1] at = positions
        cdef uint32_t p
        cdef Py_ssize_t i
        if self.outbox_head != self.outbox_tail:
            for i in range(keys.shape[0]):
                p = idmap_get(&self.outbox_map.map, keys[i, 0], keys[i, 1])
                if p != IDMAP_NOT_FOUND:
                    at[i] = p
        found = positions >= 0
        return self._arrays["outbox"][positions[found]], found

    def load(self, entries):
        """Make these entries (OUTBOX_ENTRY_DTYPE; their ids absent, distinct, and as many
        slots free) resident, clean."""
        entries = np.ascontiguousarray(entries, dtype=OUTBOX_ENTRY_DTYPE)
        cdef Py_ssize_t i, n = entries.shape[0]
        if n > self.free_count:
            raise ValueError(f"{n} records to load, {self.free_count} slots free")
        if n == 0:
            return
        cdef const outbox_entry_t *first = <const outbox_entry_t *> _ptr(entries)
        with nogil:
            for i in range(n):
                self.load_entry(&first[i])

    def outbox_entries(self, uint64_t start, uint64_t end):
        """A copy of outbox entries ``[start, end)`` (counts since the table began)."""
        if not self.outbox_tail <= start <= end <= self.outbox_head:
            raise ValueError(f"outbox entries [{start}, {end}) are not in [{self.outbox_tail}, {self.outbox_head})")
        positions = np.arange(start, end, dtype=np.uint64) % np.uint64(self.outbox_max)
        return self._arrays["outbox"][positions]

    def outbox_ids(self, uint64_t start, uint64_t end):
        """The ids (ID_DTYPE) of outbox entries ``[start, end)``."""
        records = np.ascontiguousarray(self.outbox_entries(start, end)["record"])
        return records.view(np.uint64).reshape(-1, 16)[:, :2].copy().view(ID_DTYPE).reshape(-1)

    def release_outbox(self, uint64_t end):
        """The entries before ``end`` are in the cold tier: free them."""
        entries = self.outbox_entries(self.outbox_tail, end)
        id_words = np.ascontiguousarray(entries["record"]).view(np.uint64).reshape(-1, 16)
        cdef const uint64_t[:, ::1] words = id_words
        cdef uint64_t position, i
        for i in range(<uint64_t> words.shape[0]):
            position = (self.outbox_tail + i) % self.outbox_max
            if idmap_get(&self.outbox_map.map, words[i, 0], words[i, 1]) == position:
                idmap_remove(&self.outbox_map.map, words[i, 0], words[i, 1])
        self.outbox_tail = end

    def lookup_found(self, ids):
        """The records with these ids that are resident or in the outbox, in order, the others
        left out (a product's lookup; a store looks those up in the cold tier)."""
        rows, found = self.lookup(ids)
        return rows[found]

    def lookup(self, ids):
        """(rows, found): the records with these ids (ints or ID_DTYPE) that are resident or
        in the outbox, in order; the rest are the cold tier's."""
        keys = ids_array(ids)
        rows = np.zeros(keys.shape[0], dtype=self.dtype)
        cdef const uint64_t[:, ::1] words = keys.view(np.uint64).reshape(-1, 2)
        indexes = np.empty(keys.shape[0], dtype=np.int64)
        cdef int64_t[::1] at = indexes
        cdef uint32_t slot
        cdef Py_ssize_t i
        for i in range(words.shape[0]):
            slot = idmap_get(&self.map.map, words[i, 0], words[i, 1])
            at[i] = -1 if slot == IDMAP_NOT_FOUND else slot
        found = indexes >= 0
        rows[found] = self._arrays["rows"][indexes[found]]
        if not found.all():
            entries, in_outbox = self.outbox_take(keys[~found])
            missing = np.flatnonzero(~found)
            rows[missing[in_outbox]] = entries["record"].view(self.dtype).reshape(-1)
            found[missing[in_outbox]] = True
        return rows, found

    def rows_view(self):
        """The slots' records (free ones zero or stale: see ``used_mask``)."""
        return self._arrays["rows"]

    def used_mask(self):
        return (self._arrays["slots"]["flags"] & SLOT_USED) != 0

    def prefault(self):
        """Touch every page of the table now (see Ledger.prefault). Returns bytes touched."""
        cdef unsigned char[::1] view
        total = 0
        for array in self._arrays.values():
            view = array.view(np.uint8).reshape(-1)
            with nogil:
                tally_touch_pages(&view[0], view.shape[0])
            total += view.shape[0]
        return total + self.map.prefault() + self.outbox_map.prefault()

    # -- the state hash and checkpoints

    def hash_part(self):
        """The table's part of the state hash: the sum of its records' hashes (two words) and
        how many were ever inserted; independent of where the records are."""
        self.settle()
        return np.array([self.hash_lo, self.hash_hi, self.records_total], dtype=np.uint64)

    def snapshot(self):
        """Arrays (aliasing live memory, except the outbox's copy) and scalars, named with the
        table's prefix (``checkpoint_arrays``): the slots ever used, not the whole capacity."""
        self.settle()
        p = self.name
        n = self.slots_high
        return ({f"{p}_rows": self._arrays["rows"][:n], f"{p}_slots": self._arrays["slots"][:n],
                 f"{p}_outbox": self.outbox_entries(self.outbox_tail, self.outbox_head)},
                {f"{p}_records_total": self.records_total, f"{p}_hash_lo": self.hash_lo,
                 f"{p}_hash_hi": self.hash_hi, f"{p}_hand": self.hand,
                 f"{p}_outbox_tail": self.outbox_tail, f"{p}_outbox_head": self.outbox_head})

    def restore(self, arrays, scalars):
        """Load a snapshot into this empty table (as large or larger); rebuild the maps and hashes."""
        if self.records_total or self.used:
            raise RuntimeError("restore needs an empty table")
        p = self.name
        rows = np.frombuffer(arrays[f"{p}_rows"], dtype=self.dtype)
        slots = np.frombuffer(arrays[f"{p}_slots"], dtype=SLOT_DTYPE)
        outbox = np.frombuffer(arrays[f"{p}_outbox"], dtype=OUTBOX_ENTRY_DTYPE)
        tail, head = scalars[f"{p}_outbox_tail"], scalars[f"{p}_outbox_head"]
        if rows.shape[0] > self.capacity or slots.shape[0] != rows.shape[0]:
            raise ValueError(f"snapshot's {p} table holds {rows.shape[0]} slots, this one {self.capacity}")
        if outbox.shape[0] != head - tail or outbox.shape[0] > self.outbox_max:
            raise ValueError(f"snapshot's {p} outbox holds {outbox.shape[0]} entries, says {head - tail}")
        self.slots_high = rows.shape[0]
        self._arrays["rows"][:self.slots_high] = rows
        self._arrays["slots"][:self.slots_high] = slots
        self._arrays["slots"]["flags"] &= SLOT_USED | SLOT_DIRTY | SLOT_PINNED
        cdef int64_t s
        cdef uint32_t slot
        cdef uint64_t n_free = 0, i
        for s in range(<int64_t> self.capacity - 1, -1, -1):  # free slots are popped lowest first
            slot = <uint32_t> s
            if self.slots[slot].flags & SLOT_USED:
                idmap_put(&self.map.map, (<uint64_t *> (self.rows + <uint64_t> slot * 128))[0],
                          (<uint64_t *> (self.rows + <uint64_t> slot * 128))[1], slot)
                record_hash(self.rows + <uint64_t> slot * 128, self.slots[slot].aux, &self.hashed[2 * slot])
                self.used += 1
            else:
                self.free_slots[n_free] = slot
                n_free += 1
        self.free_count = n_free
        self.outbox_tail = self.outbox_head = tail
        for i in range(<uint64_t> outbox.shape[0]):
            self._arrays["outbox"][(tail + i) % self.outbox_max] = outbox[i]
        self.outbox_head = head
        words = np.ascontiguousarray(outbox["record"]).view(np.uint64).reshape(-1, 16)
        for i in range(<uint64_t> outbox.shape[0]):
            idmap_remove(&self.outbox_map.map, int(words[i, 0]), int(words[i, 1]))
            idmap_put(&self.outbox_map.map, int(words[i, 0]), int(words[i, 1]), <uint32_t> ((tail + i) % self.outbox_max))
        self.records_total = scalars[f"{p}_records_total"]
        self.hash_lo, self.hash_hi = scalars[f"{p}_hash_lo"], scalars[f"{p}_hash_hi"]
        self.hand = scalars[f"{p}_hand"]


cdef inline void *_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]
