# Merchant settlement (docs/products.md "Settlement"): a merchant's closed windows' net sales
# (payments - refunds - fees + fees returned, counted by the merchants' books as they happen)
# move from its wallet to its settlement account, one transfer per merchant and settlement,
# whose id is derived from (merchant, window): a re-run is ``exists`` and changes nothing.

from libc.stdint cimport uint64_t

from core.merchants cimport Merchants
from core.product cimport Product
from core.records cimport result_t, tally_settlement_t


cdef enum:
    OPERATION_SETTLE_MERCHANTS = 108            # core/operations.py's number (checked at import)
    TRANSFER_CODE_ORDER_SETTLEMENT = 0xF005     # merchant wallet -> settlement account


cdef class Settlement(Product):
    cdef Merchants merchants

    cdef result_t settle(self, const tally_settlement_t *e, uint64_t ts) noexcept nogil
