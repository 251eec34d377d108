# A binary min-heap of expiries whose entries know their place in it, shared by the ledger's
# pending transfers and the products' records (orders; later payment codes and packets): an
# entry that is resolved early leaves the heap at once, so a heap never holds more than its
# table. Ordered by expiry time, ties broken by ``number`` (a creation order: determinism).

from libc.stdint cimport uint32_t, uint64_t


cdef enum:
    HEAP_POSITION_NONE = 0xFFFFFFFF     # an entry not in the heap


cdef struct expiry_t:
    uint64_t expires_at         # engine ns
    uint64_t number             # the entry's creation number (ties)
    uint32_t entry              # its slot in its table
    uint32_t _pad


cdef struct expiry_heap_t:
    expiry_t *items
    uint64_t count
    char *positions             # entry e's position is the uint32 at positions + e * stride
    uint64_t stride


cdef inline bint expiry_before(const expiry_t *a, const expiry_t *b) noexcept nogil:
    return a.expires_at < b.expires_at or (a.expires_at == b.expires_at and a.number < b.number)


cdef inline void heap_set_position(expiry_heap_t *h, uint32_t entry, uint32_t position) noexcept nogil:
    (<uint32_t *> (h.positions + <uint64_t> entry * h.stride))[0] = position


cdef inline uint32_t heap_position(const expiry_heap_t *h, uint32_t entry) noexcept nogil:
    return (<uint32_t *> (h.positions + <uint64_t> entry * h.stride))[0]


cdef inline void heap_place(expiry_heap_t *h, uint64_t i, expiry_t item) noexcept nogil:
    h.items[i] = item
    heap_set_position(h, item.entry, <uint32_t> i)


cdef inline void heap_sift_up(expiry_heap_t *h, uint64_t i, expiry_t item) noexcept nogil:
    cdef uint64_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if not expiry_before(&item, &h.items[parent]):
            break
        heap_place(h, i, h.items[parent])
        i = parent
    heap_place(h, i, item)


cdef inline void heap_sift_down(expiry_heap_t *h, uint64_t i, expiry_t item) noexcept nogil:
    cdef uint64_t n = h.count, child
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and expiry_before(&h.items[child + 1], &h.items[child]):
            child += 1
        if not expiry_before(&h.items[child], &item):
            break
        heap_place(h, i, h.items[child])
        i = child
    heap_place(h, i, item)


cdef inline void heap_push(expiry_heap_t *h, uint64_t expires_at, uint64_t number, uint32_t entry) noexcept nogil:
    """Add an entry (the caller's table bounds the heap: it has room)."""
    cdef expiry_t item
    item.expires_at = expires_at
    item.number = number
    item.entry = entry
    item._pad = 0
    h.count += 1
    heap_sift_up(h, h.count - 1, item)


cdef inline void heap_remove(expiry_heap_t *h, uint64_t i) noexcept nogil:
    """Remove the item at position ``i`` (0: the soonest)."""
    cdef expiry_t last
    heap_set_position(h, h.items[i].entry, HEAP_POSITION_NONE)
    h.count -= 1
    if i == h.count:
        return
    last = h.items[h.count]
    if i > 0 and expiry_before(&last, &h.items[(i - 1) >> 1]):
        heap_sift_up(h, i, last)
    else:
        heap_sift_down(h, i, last)


cdef inline uint64_t heap_count_due(const expiry_heap_t *h, uint64_t at, uint64_t most) noexcept nogil:
    """How many entries expire by ``at``, counting at most ``most`` (<= 256): a walk of the
    heap's nodes due by then (a due node's parent is due too). At most ``most`` + 1 nodes wait
    on the stack, since each counted node adds two."""
    cdef uint64_t stack[257]
    cdef uint64_t depth = 1, due = 0, i, child
    if h.count == 0 or h.items[0].expires_at > at or most == 0:
        return 0
    stack[0] = 0
    while depth and due < most:
        depth -= 1
        i = stack[depth]
        due += 1
        for child in range(2 * i + 1, 2 * i + 3):
            if child < h.count and h.items[child].expires_at <= at and depth < 257:
                stack[depth] = child
                depth += 1
    return due
