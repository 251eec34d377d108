# Cross-border payments (docs/products.md "Cross-border payments"): the rates by currency pair
# (in memory: at most RATES_MAX pairs), and write-back tables of the payments (their rate
# locked) and of their refunds. A payment and a refund are two legs, each within one currency,
# through the pair's FX pool accounts.

from libc.stdint cimport uint32_t, uint64_t

from core.idmap cimport IdMap
from core.product cimport Product
from core.table cimport Table
from core.records cimport result_t, tally_fx_pay_t, tally_fx_payment_t, tally_fx_rate_t, tally_fx_refund_t


cdef enum:
    # The operations this module applies, by their numbers in core/operations.py (checked at import).
    OPERATION_SET_RATES = 125
    OPERATION_PAY_CROSS_BORDER = 126
    OPERATION_REFUND_CROSS_BORDER = 127


# What a pair's rate resolves to (its pools' account indexes): set with the rate.
cdef struct fx_pair_t:
    uint32_t pool_from_index
    uint32_t pool_to_index


cdef class Fx(Product):
    cdef readonly uint64_t rate_count
    cdef IdMap rate_map                         # pair id (from | to << 32, 0) -> rate slot
    cdef tally_fx_rate_t *rates
    cdef fx_pair_t *pairs
    cdef readonly Table payments
    cdef readonly Table refunds
    cdef tally_fx_payment_t *payment_rows
    cdef tally_fx_refund_t *refund_rows
    cdef dict _arrays

    cdef result_t set_rate(self, const tally_fx_rate_t *e, uint64_t ts) noexcept nogil
    cdef result_t pay(self, const tally_fx_pay_t *e, uint64_t ts) noexcept nogil
    cdef result_t refund(self, const tally_fx_refund_t *e, uint64_t ts) noexcept nogil
