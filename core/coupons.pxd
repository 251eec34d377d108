# Coupons and the card pack (docs/products.md "Coupons and the card pack"): write-back tables of
# stocks (active ones pinned, on an expiry heap by their end), coupons (one per grant) and
# holdings (a user's count of one stock's coupons); a stock's budget is funded at creation and
# what is left returns to its merchant at the stock's end (the ledger's start legs).

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from core.expiry cimport expiry_heap_t
from core.merchants cimport Merchants, merchant_terms_t
from core.orders cimport Orders
from core.product cimport Product
from core.table cimport Table
from core.records cimport (
    result_t, tally_coupon_grant_t, tally_coupon_pay_t, tally_coupon_payment_t, tally_coupon_t, tally_holding_t, tally_member_t, tally_order_t,
    tally_stock_create_t, tally_stock_t,
)


cdef enum:
    # The operations this module applies, by their numbers in core/operations.py (checked at import).
    OPERATION_CREATE_STOCKS = 120
    OPERATION_GRANT_COUPONS = 121
    OPERATION_PAY_WITH_COUPON = 122


cdef class Coupons(Product):
    cdef readonly uint64_t stocks_max           # resident stocks
    cdef public uint64_t open_max               # active stocks in force (core/limits.pyx; <= stocks.pinned_max)
    cdef readonly uint64_t open_count
    cdef readonly Table stocks                  # a slot's aux: the budget account's index
    cdef readonly Table coupons                 # a slot's aux: the user's account index
    cdef readonly Table holdings
    cdef readonly Table members                 # membership cards' members (merchant, user)
    cdef readonly Table payments                # coupon payments, by their request's id
    cdef Merchants merchants                    # their terms: award stock, membership
    cdef Orders orders                          # whose payments call after_payment
    cdef tally_stock_t *stock_rows
    cdef tally_coupon_t *coupon_rows
    cdef tally_holding_t *holding_rows
    cdef tally_member_t *member_rows
    cdef tally_coupon_payment_t *payment_rows
    cdef uint32_t *heap_positions               # per stock slot: its place in the expiry heap
    cdef expiry_heap_t expiry_heap              # active stocks by ends_at
    cdef dict _arrays

    cdef uint64_t ends_due(self, uint64_t at_ts) noexcept nogil
    cdef void end_due(self, uint64_t first_ts, uint64_t count) noexcept nogil
    cdef void ended(self, uint32_t slot, uint64_t ts) noexcept nogil
    cdef result_t create(self, const tally_stock_create_t *e, uint64_t ts) noexcept nogil
    cdef result_t grant(self, const tally_coupon_grant_t *e, uint64_t ts) noexcept nogil
    cdef result_t pay(self, const tally_coupon_pay_t *e, uint64_t ts) noexcept nogil
    cdef result_t issue(self, uint32_t stock_slot, const uint64_t *coupon_id, const uint64_t *user_id,
                        const uint64_t *request_id, uint32_t user, uint8_t channel, uint64_t ts) noexcept nogil
    cdef void after_payment(self, const tally_order_t *o, const merchant_terms_t *terms, uint64_t ts) noexcept nogil
    cdef void visit(self, const uint64_t *merchant_id, const uint64_t *user_id, uint64_t amount,
                    uint64_t ts) noexcept nogil
