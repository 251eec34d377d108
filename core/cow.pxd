# Copy-on-write snapshot of one in-place array, for checkpoints without a pause.
#
# A checkpoint needs the array as it was between two batches, but copying 129 MB of balances
# there held every batch up for about 90 ms. Instead the submitting thread marks every 4 KiB
# region "to copy" (a memset of one byte per region) and goes on; the checkpoint thread copies
# the regions into the snapshot buffer, and the submitting thread, before it first writes into
# a region still marked, copies that region itself. The writer never waits for the copier
# (which runs at a lower priority):
#
#   state 1 (to copy) --writer claims (CAS 1->3), copies, writes--> 0
#   state 1 --copier reads the region into a scratch, then claims (CAS 1->2): if that succeeds
#             no writer claimed it meanwhile, so the scratch is clean; the writer may now write
#             the source at once--> 2 --copier puts the scratch in the snapshot--> 0
#
# ``bytes`` is set (begin) and cleared (end) by the writer only, between batches; the copier
# reads it after the hand-off of its job. The struct lives in its owner (core.Ledger).

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef extern from * nogil:
    """
    #include <sched.h>
    static inline unsigned char tally_cow_load(unsigned char *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline int tally_cow_claim(unsigned char *p, unsigned char claimed) {
        unsigned char expected = 1;
        return __atomic_compare_exchange_n(p, &expected, claimed, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline void tally_cow_done(unsigned char *p) { __atomic_store_n(p, 0, __ATOMIC_RELEASE); }
    """
    unsigned char tally_cow_load(unsigned char *p)
    bint tally_cow_claim(unsigned char *p, unsigned char claimed)
    void tally_cow_done(unsigned char *p)
    int sched_yield()


cdef enum:
    COW_REGION_SHIFT = 12       # 4 KiB: 32 account records; a batch touches few of them


cdef struct cow_t:
    char *source                # the live array
    char *target                # the snapshot buffer
    uint8_t *state              # per region: 0 done (or not in the snapshot), 1 to copy,
                                # 2 the copier holds a clean copy, 3 the writer is copying it
    uint64_t bytes              # the snapshot's length; 0: no snapshot being taken


cdef inline uint64_t cow_region_bytes(cow_t *c, uint64_t region) noexcept nogil:
    cdef uint64_t n = c.bytes - (region << COW_REGION_SHIFT)
    return n if n < (1 << COW_REGION_SHIFT) else (1 << COW_REGION_SHIFT)


cdef inline void cow_before_write(cow_t *c, uint64_t offset, uint64_t size) noexcept nogil:
    """The writer's side: call before writing ``size`` bytes at ``offset`` of the source."""
    cdef uint64_t region, last
    if c.bytes == 0 or offset >= c.bytes:
        return
    last = offset + size - 1
    if last >= c.bytes:
        last = c.bytes - 1
    region = offset >> COW_REGION_SHIFT
    while region <= (last >> COW_REGION_SHIFT):
        # State 0: in the snapshot; 2: the copier holds a clean copy; 1: ours to copy, if the
        # claim wins (else the copier won it a moment ago, with a clean copy).
        if tally_cow_load(&c.state[region]) == 1 and tally_cow_claim(&c.state[region], 3):
            memcpy(c.target + (region << COW_REGION_SHIFT), c.source + (region << COW_REGION_SHIFT),
                   cow_region_bytes(c, region))
            tally_cow_done(&c.state[region])
        region += 1


cdef inline void cow_copy_all(cow_t *c) noexcept nogil:
    """The copier's side: every region still to copy; then wait for those the writer is copying."""
    cdef char scratch[1 << COW_REGION_SHIFT]
    cdef uint64_t region, n, regions = (c.bytes + (1 << COW_REGION_SHIFT) - 1) >> COW_REGION_SHIFT
    cdef int spins
    for region in range(regions):
        if tally_cow_load(&c.state[region]) != 1:
            continue
        n = cow_region_bytes(c, region)
        memcpy(scratch, c.source + (region << COW_REGION_SHIFT), n)
        if tally_cow_claim(&c.state[region], 2):   # nobody wrote it while we read it
            memcpy(c.target + (region << COW_REGION_SHIFT), scratch, n)
            tally_cow_done(&c.state[region])
    for region in range(regions):
        spins = 0
        while tally_cow_load(&c.state[region]) != 0:   # the writer is copying it: about 1 us
            spins += 1
            if spins > 64:
                sched_yield()
