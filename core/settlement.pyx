# cython: boundscheck=False, wraparound=False
"""Merchant settlement (docs/products.md "Settlement").

``settle_merchants`` takes one event per merchant: "settle every window up to ``window``"
(windows are engine days, ``constants.SETTLEMENT_WINDOW_S``; T+1: yesterday's once today has
begun). The merchant's book (core/merchants.pxd) has summed its sales per window as they
happened; the closed windows' net moves from its wallet to its settlement account in one
transfer (code ``order_settlement``, id derived from the merchant and the window), and the
settlement is kept as the merchant's last (``lookup_settlements``). A net of zero or below moves
nothing: it is carried into the next settlement.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from core.digest cimport key_id_digest
from core.idmap cimport IDMAP_NOT_FOUND, idmap_get
from core.ledger cimport INDEX_NONE, LEGS_MAX, Ledger, chain_mark_t
from core.merchants cimport Merchants, book_roll, merchant_book_t, merchant_terms_t
from core.orders cimport leg_id_of
from core.product cimport all_zero
from core.records cimport *  # result_t codes, records

from core.operations import Operation
from core.records import TransferCode

cdef extern from *:
    """
    typedef __int128 tally_i128;
    """
    ctypedef long long tally_i128  # (a 128-bit signed integer in C)

cdef extern from "<stdint.h>":
    const int64_t I64_MAX "INT64_MAX"

if Operation.settle_merchants != OPERATION_SETTLE_MERCHANTS:
    raise ImportError("core/settlement.pxd and core/operations.py number settle_merchants differently")
if TransferCode.order_settlement != TRANSFER_CODE_ORDER_SETTLEMENT:
    raise ImportError("core/settlement.pxd and core.TransferCode disagree on the settlement's code")

#: The settlement keeps nothing of its own: the books and last settlements are the merchants'.
CHECKPOINT_ARRAYS = {}


def settlement_id(merchant_id: int, window: int) -> int:
    """The id of a merchant's settlement through ``window`` (its transfer's is
    ``core.orders.leg_id(settlement_id, 108, 0)``)."""
    cdef bytes key = int(merchant_id).to_bytes(16, "little")
    cdef bytes number = int(window).to_bytes(8, "little") + bytes(24)
    cdef uint8_t digest[32]
    key_id_digest(b"setl", <const uint8_t *> key, <const uint8_t *> number, digest)
    return int.from_bytes(digest[:16], "little")


cdef class Settlement(Product):
    """Settles merchants' closed windows (the books are ``merchants``')."""

    def __cinit__(self, Ledger ledger not None, Merchants merchants not None):
        self.ledger = ledger
        self.merchants = merchants
        self.component = "settlement"

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        for k in range(count):
            (<uint32_t *> out)[k] = self.settle(&(<const tally_settlement_t *> events)[k], base + k * LEGS_MAX)
        tally_store_fence()

    cdef result_t settle(self, const tally_settlement_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t slot, merchant
        cdef const merchant_terms_t *terms
        cdef merchant_book_t *b
        cdef tally_settlement_t *kept
        cdef tally_i128 net
        cdef uint64_t current, leg_lo = 0, leg_hi = 0
        cdef uint8_t number[32]
        cdef uint8_t digest[32]
        cdef chain_mark_t mark
        cdef result_t r
        if e.flags & EVENT_FLAG_FORBIDDEN:
            return R_FORBIDDEN
        if e.timestamp != 0:
            return R_TIMESTAMP_MUST_BE_ZERO
        if (not all_zero(e.reserved, sizeof(e.reserved)) or not all_zero(e.reserved_b, sizeof(e.reserved_b))
                or not all_zero(<const uint8_t *> &e.paid, 72)):  # paid .. settlement account: the engine's
            return R_RESERVED_FIELD
        if e.flags != 0:
            return R_RESERVED_FLAG
        if e.merchant_id_lo == 0 and e.merchant_id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if e.ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        merchant = idmap_get(&self.ledger.account_map.map, e.merchant_id_lo, e.merchant_id_hi)
        if merchant == IDMAP_NOT_FOUND:
            return R_MERCHANT_NOT_FOUND
        slot = self.merchants.slot_of(e.merchant_id_lo, e.merchant_id_hi)
        if slot == IDMAP_NOT_FOUND:
            return R_MERCHANT_NOT_REGISTERED
        if e.ledger != self.merchants.rows[slot].ledger:
            return R_CURRENCY_MISMATCH
        terms = &self.merchants.terms[slot]
        if terms.settlement_index == INDEX_NONE:
            return R_SETTLEMENT_ACCOUNT_NOT_FOUND
        current = ts // self.merchants.window_ns
        if e.window >= current:
            return R_SETTLEMENT_WINDOW_OPEN
        b = &self.merchants.books[slot]
        if e.window < b.settled_through:
            return R_EXISTS  # settled already (a re-run, or an earlier window)
        # Roll a copy: a refused settlement changes nothing, the book included.
        cdef merchant_book_t rolled = b[0]
        book_roll(&rolled, current)
        if rolled.closed_newest > e.window + 1:
            return R_SETTLEMENT_WINDOW_BEHIND
        net = (<tally_i128> rolled.closed_paid + <tally_i128> rolled.closed_fees_returned
               - <tally_i128> rolled.closed_refunded - <tally_i128> rolled.closed_fees)
        if net > <tally_i128> I64_MAX:
            return R_OVERFLOWS_DEBITS
        if net > 0:
            memset(number, 0, 32)
            memcpy(number, &e.window, 8)
            key_id_digest(b"setl", <const uint8_t *> &e.merchant_id_lo, number, digest)
            leg_id_of((<uint64_t *> digest)[0], (<uint64_t *> digest)[1], OPERATION_SETTLE_MERCHANTS, 0,
                      &leg_lo, &leg_hi)
            self.ledger.chain_begin(&mark)
            r = self.ledger.leg(leg_lo, leg_hi, merchant, terms.settlement_index, <uint64_t> net, e.ledger,
                                TRANSFER_CODE_ORDER_SETTLEMENT, 0, e.merchant_id_lo, e.merchant_id_hi, ts)
            if r != R_OK:
                self.ledger.chain_abort(&mark)
                return r
        kept = &self.merchants.settlements[slot]
        kept[0] = e[0]
        kept.paid = rolled.closed_paid
        kept.refunded = rolled.closed_refunded
        kept.fees = rolled.closed_fees
        kept.fees_returned = rolled.closed_fees_returned
        kept.net = <int64_t> net
        kept.transfer_id_lo = leg_lo
        kept.transfer_id_hi = leg_hi
        kept.settlement_account_id_lo = self.merchants.rows[slot].settlement_account_id_lo
        kept.settlement_account_id_hi = self.merchants.rows[slot].settlement_account_id_hi
        kept.timestamp = ts
        if net >= 0:  # settled (a net below zero stays in the closed counts, for the next one)
            rolled.closed_paid = rolled.closed_refunded = rolled.closed_fees = rolled.closed_fees_returned = 0
            rolled.closed_newest = 0
        rolled.settled_through = e.window + 1
        b[0] = rolled
        return R_OK
