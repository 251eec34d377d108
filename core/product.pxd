# The shape every product table shares (docs/products.md "A product operation in the batch
# loop"): a table over a ledger that applies the create operations the operation table
# (core/operations.py) gives to its component. ``Product.apply`` checks a batch, enters the
# ledger, assigns the batch's timestamps (LEGS_MAX per event; the ledger's begin hook expires
# what is due) and calls the table's ``run_batch``: C over the batch's records, no Python
# object per event, its legs through the ledger's chain primitive (core/ledger.pxd).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from core.records cimport EVENT_FLAG_FORBIDDEN, R_FORBIDDEN, R_OK, R_RESERVED_FIELD, R_TIMESTAMP_MUST_BE_ZERO, result_t

from core.ledger cimport Ledger


cdef class Product:
    cdef Ledger ledger
    cdef str component                          # its name in the operation table

    # Apply ``count`` events of ``operation`` (checked: one of the table's) based at engine time
    # ``base`` (event k at base + k * LEGS_MAX); one reply record per event into ``out``.
    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil


# Whether n bytes are all zero (an event's reserved bytes, the fields the engine fills).
cdef inline bint all_zero(const uint8_t *p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if p[i]:
            return False
    return True


# A product's own account (an escrow, an FX pool, a coupon budget: AccountCode 4, 6, 7) holds
# money owed to others: it may not send a packet, claim one, be a stock's merchant or pay
# across borders (``product_account``), so no product spends another's money.
cdef inline bint product_account(uint16_t code) noexcept nogil:
    return code == 4 or code == 6 or code == 7


# The checks a product event begins with, in this order: the server's mark for an event its
# client's role may not make (engine/roles.py), a timestamp the engine sets, reserved bytes.
cdef inline result_t event_prologue(uint16_t flags, uint64_t timestamp, const uint8_t *reserved,
                                    size_t reserved_bytes) noexcept nogil:
    if flags & EVENT_FLAG_FORBIDDEN:
        return R_FORBIDDEN
    if timestamp != 0:
        return R_TIMESTAMP_MUST_BE_ZERO
    if not all_zero(reserved, reserved_bytes):
        return R_RESERVED_FIELD
    return R_OK
