# Merchants' terms (docs/products.md "Merchants and fees"): per merchant account, its fee rate,
# fee account and settlement account, set by an admin and read by the products at payment.
# A bounded table in memory (``merchants_max``), keyed by the merchant's account id. Each
# merchant with terms also has a book: its sales per settlement window, as the payments and
# refunds happen, which the settlement (core/settlement.pyx) reads and clears.

from libc.stdint cimport uint16_t, uint32_t, uint64_t

from core.idmap cimport IdMap, idmap_t
from core.ledger cimport Ledger
from core.product cimport Product
from core.records cimport result_t, tally_merchant_t, tally_settlement_t


cdef enum:
    FEE_BPS_MAX = 10000                 # 100 %
    CARD_PACK_MEMBERSHIP = 1            # its payers join its membership card
    CARD_PACK_AWARD = 2                 # pay and get: its payments award a coupon of its award stock


# What a payment needs of a merchant, resolved when its terms are set (accounts never move).
cdef struct merchant_terms_t:
    uint32_t fee_index                  # the fee account's dense index
    uint32_t settlement_index           # the settlement account's, or INDEX_NONE
    uint16_t fee_bps
    uint16_t card_pack                  # CARD_PACK_*: what a payment at it does in the card pack
    uint32_t slot                       # its slot (its row: the award stock)


# A merchant's sales not yet settled: the open window's, and the closed windows' (summed).
cdef packed struct merchant_book_t:
    uint64_t window                     # the open window (engine ns // window ns)
    uint64_t closed_newest              # the newest window summed in closed_*, + 1 (0: none)
    uint64_t settled_through            # the windows before this one are settled
    uint64_t open_paid
    uint64_t open_refunded
    uint64_t open_fees
    uint64_t open_fees_returned
    uint64_t closed_paid
    uint64_t closed_refunded
    uint64_t closed_fees
    uint64_t closed_fees_returned
    uint64_t _pad


cdef inline void book_roll(merchant_book_t *b, uint64_t window) noexcept nogil:
    """Close the open window's counts into the closed ones when ``window`` is later."""
    if window <= b.window:
        return
    if b.open_paid or b.open_refunded or b.open_fees or b.open_fees_returned:
        b.closed_paid += b.open_paid
        b.closed_refunded += b.open_refunded
        b.closed_fees += b.open_fees
        b.closed_fees_returned += b.open_fees_returned
        b.closed_newest = b.window + 1
        b.open_paid = b.open_refunded = b.open_fees = b.open_fees_returned = 0
    b.window = window


cdef class Merchants(Product):
    cdef readonly uint64_t merchants_max
    cdef public uint64_t merchants_limit         # in force (core/limits.pyx): <= merchants_max
    cdef readonly uint64_t merchant_count
    cdef IdMap merchant_map                     # merchant account id -> slot
    cdef tally_merchant_t *rows                 # the terms as set (lookup_merchants' records)
    cdef merchant_terms_t *terms
    cdef merchant_book_t *books                 # per merchant: its sales not yet settled
    cdef tally_settlement_t *settlements        # per merchant: its last settlement
    cdef uint64_t window_ns                     # a settlement window
    cdef dict _arrays

    cdef bint resolve(self, const tally_merchant_t *e, merchant_terms_t *out) noexcept nogil
    cdef const merchant_terms_t *terms_of(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef uint32_t slot_of(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef void book(self, const merchant_terms_t *terms, uint64_t ts, uint64_t paid, uint64_t refunded, uint64_t fees,
                   uint64_t fees_returned) noexcept nogil
    cdef result_t set_merchant(self, const tally_merchant_t *e, uint64_t ts) noexcept nogil


cdef inline uint64_t fee_of(uint64_t amount, uint16_t fee_bps) noexcept nogil:
    """floor(amount * fee_bps / 10,000), exactly, with no 128-bit product."""
    return (amount // FEE_BPS_MAX) * fee_bps + (amount % FEE_BPS_MAX) * fee_bps // FEE_BPS_MAX
