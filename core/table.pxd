# A product table's memory (docs/tables.md "The write-back table"): ``capacity`` slots of
# 128-byte records (their first 16 bytes the id) with an id map, a u32 of the owner's per slot
# (an order's fee account), and the time of each record's last change. The batch loop finds,
# inserts and changes records here and never does I/O; the store evicts (a dirty record to the
# outbox, a ring the cold tier is written from) and loads what a batch needs before it runs.
#
# The state hash covers every record ever inserted, resident or not: a sum over the records of
# a 128-bit hash of each one's bytes (and its u32), kept up to date as records change, so that
# where a record lives (a slot, the outbox, the cold tier) and the capacity change nothing.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from core.idmap cimport IDMAP_NOT_FOUND, IdMap, idmap_get


cdef enum:
    TABLE_RECORD_BYTES = 128
    SLOT_USED = 1           # holds a record
    SLOT_DIRTY = 2          # changed since it was loaded: its newest version is not in the cold tier
    SLOT_TOUCHED = 4        # changed since the hash last took it in (on the touched list)
    SLOT_PINNED = 8         # never evicted (the owner's choice: an unpaid order)


# What the owner does when one of its records leaves memory (orders: drop its expiry-heap entry).
ctypedef void (*evict_hook_t)(void *owner, uint32_t slot) noexcept nogil


# A slot's bookkeeping (checkpointed with the records).
cdef packed struct slot_t:
    uint32_t aux
    uint32_t flags
    uint64_t modified_at    # engine ns of the record's last change (its version in the cold tier)


# A record on its way to the cold tier: its bytes, its slot's u32 and its version (144 bytes,
# stored as it is under the key id || modified_at).
cdef packed struct outbox_entry_t:
    uint8_t record[128]
    uint32_t aux
    uint32_t flags
    uint64_t modified_at


cdef class Table:
    cdef readonly str name                      # prefixes its checkpoint arrays and scalars
    cdef readonly uint64_t capacity
    cdef readonly uint64_t used                 # resident records
    cdef readonly uint64_t slots_high           # slots ever used (free ones are reused lowest first)
    cdef readonly uint64_t records_total        # records ever inserted
    cdef public uint64_t pinned_max             # records the owner may pin at most (the rest: a batch's room)
    cdef readonly uint64_t outbox_max
    cdef readonly uint64_t outbox_head          # entries ever put in the outbox
    cdef readonly uint64_t outbox_tail          # entries released (written to the cold tier)
    cdef IdMap map                              # id -> slot
    cdef uint8_t *rows
    cdef slot_t *slots
    cdef uint64_t *hashed                       # per slot, 2 words: its part of the sum
    cdef uint32_t *free_slots                   # a stack
    cdef uint64_t free_count
    cdef uint32_t *touched
    cdef uint64_t touched_count
    cdef uint64_t hash_lo, hash_hi              # the sum (mod 2**64 per word)
    cdef uint64_t hand                          # the eviction sweep's next slot
    cdef outbox_entry_t *outbox
    cdef IdMap outbox_map                       # id -> outbox position (mod outbox_max), newest
    cdef evict_hook_t evict_hook
    cdef void *evict_hook_owner
    cdef object dtype
    cdef dict _arrays

    cdef uint32_t insert(self, const void *record, uint32_t aux, uint64_t ts) noexcept nogil
    cdef void touch(self, uint32_t slot, uint64_t ts) noexcept nogil
    cdef void settle(self) noexcept nogil
    cdef uint64_t evict(self, uint64_t free_wanted) noexcept nogil
    cdef void load_entry(self, const outbox_entry_t *entry) noexcept nogil


cdef inline uint32_t table_find(Table t, uint64_t lo, uint64_t hi) noexcept nogil:
    """A resident record's slot, or IDMAP_NOT_FOUND."""
    return idmap_get(&t.map.map, lo, hi)


cdef inline void *table_row(Table t, uint32_t slot) noexcept nogil:
    return t.rows + <uint64_t> slot * TABLE_RECORD_BYTES


cdef inline void table_set_pinned(Table t, uint32_t slot, bint pinned) noexcept nogil:
    if pinned:
        t.slots[slot].flags = t.slots[slot].flags | SLOT_PINNED
    else:
        t.slots[slot].flags = t.slots[slot].flags & ~(<uint32_t> SLOT_PINNED)
