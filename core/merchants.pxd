# Merchants' terms (docs/products.md "Merchants and fees"): per merchant account, its fee rate,
# fee account and settlement account, set by an admin and read by the products at payment.
# A bounded table in memory (``merchants_max``), keyed by the merchant's account id.

from libc.stdint cimport uint16_t, uint32_t, uint64_t

from core.idmap cimport IdMap, idmap_t
from core.ledger cimport Ledger
from core.product cimport Product
from core.records cimport result_t, tally_merchant_t


cdef enum:
    FEE_BPS_MAX = 10000                 # 100 %


# What a payment needs of a merchant, resolved when its terms are set (accounts never move).
cdef struct merchant_terms_t:
    uint32_t fee_index                  # the fee account's dense index
    uint32_t settlement_index           # the settlement account's, or INDEX_NONE
    uint16_t fee_bps
    uint16_t _pad
    uint32_t _pad2


cdef class Merchants(Product):
    cdef readonly uint64_t merchants_max
    cdef readonly uint64_t merchant_count
    cdef IdMap merchant_map                     # merchant account id -> slot
    cdef tally_merchant_t *rows                 # the terms as set (lookup_merchants' records)
    cdef merchant_terms_t *terms
    cdef dict _arrays

    cdef bint resolve(self, const tally_merchant_t *e, merchant_terms_t *out) noexcept nogil
    cdef const merchant_terms_t *terms_of(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef result_t set_merchant(self, const tally_merchant_t *e, uint64_t ts) noexcept nogil


cdef inline uint64_t fee_of(uint64_t amount, uint16_t fee_bps) noexcept nogil:
    """floor(amount * fee_bps / 10,000), exactly, with no 128-bit product."""
    return (amount // FEE_BPS_MAX) * fee_bps + (amount % FEE_BPS_MAX) * fee_bps // FEE_BPS_MAX
