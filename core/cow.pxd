# Copy-on-write snapshot of one in-place array, for checkpoints without a pause.
#
# A checkpoint needs the array as it was between two batches, but copying 129 MB of balances
# there held every batch up for about 90 ms. Instead the submitting thread marks every 4 KiB
# region "to copy" (a memset of one byte per region) and goes on; the checkpoint thread copies
# the regions into the snapshot buffer, and the submitting thread, before it first writes into
# a region still marked, copies that region itself. A region is claimed by compare-and-swap
# (1 to copy -> 2 being copied -> 0 done), so each is copied exactly once, before any write.
#
#   writer (submitting thread)          copier (checkpoint thread)
#   cow_before_write(c, offset, size)   cow_copy_all(c)
#   ... writes ...                      ... reads the target ...
#
# ``bytes`` is set (begin) and cleared (end) by the writer only, between batches; the copier
# reads it after the hand-off of its job. The struct lives in its owner (core.Ledger).

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef extern from * nogil:
    """
    #include <sched.h>
    static inline unsigned char tally_cow_load(unsigned char *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline int tally_cow_claim(unsigned char *p) {
        unsigned char expected = 1;
        return __atomic_compare_exchange_n(p, &expected, 2, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline void tally_cow_done(unsigned char *p) { __atomic_store_n(p, 0, __ATOMIC_RELEASE); }
    """
    unsigned char tally_cow_load(unsigned char *p)
    bint tally_cow_claim(unsigned char *p)
    void tally_cow_done(unsigned char *p)
    int sched_yield()


cdef enum:
    COW_REGION_SHIFT = 12       # 4 KiB: 32 account records; a batch touches few of them


cdef struct cow_t:
    char *source                # the live array
    char *target                # the snapshot buffer
    uint8_t *state              # per region: 0 done (or not in the snapshot), 1 to copy, 2 being copied
    uint64_t bytes              # the snapshot's length; 0: no snapshot being taken


cdef inline void cow_region(cow_t *c, uint64_t region) noexcept nogil:
    """Region ``region`` is in the snapshot when this returns (copied now, or by the other side)."""
    cdef uint64_t offset, n
    cdef int spins = 0
    if tally_cow_load(&c.state[region]) == 0:
        return
    if tally_cow_claim(&c.state[region]):
        offset = region << COW_REGION_SHIFT
        n = c.bytes - offset
        if n > (1 << COW_REGION_SHIFT):
            n = 1 << COW_REGION_SHIFT
        memcpy(c.target + offset, c.source + offset, n)
        tally_cow_done(&c.state[region])
        return
    while tally_cow_load(&c.state[region]) != 0:   # the other side is copying it: about 1 us
        spins += 1
        if spins > 64:
            sched_yield()


cdef inline void cow_before_write(cow_t *c, uint64_t offset, uint64_t size) noexcept nogil:
    """Call before writing ``size`` bytes at ``offset`` of the source."""
    cdef uint64_t region, last
    if c.bytes == 0 or offset >= c.bytes:
        return
    last = offset + size - 1
    if last >= c.bytes:
        last = c.bytes - 1
    region = offset >> COW_REGION_SHIFT
    while region <= (last >> COW_REGION_SHIFT):
        cow_region(c, region)
        region += 1


cdef inline void cow_copy_all(cow_t *c) noexcept nogil:
    """The copier's side: every region not yet copied, then wait for those the writer is copying."""
    cdef uint64_t region, regions = (c.bytes + (1 << COW_REGION_SHIFT) - 1) >> COW_REGION_SHIFT
    for region in range(regions):
        cow_region(c, region)
