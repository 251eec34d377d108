# cython: boundscheck=False, wraparound=False
"""Refunds of paid orders (docs/products.md "Refunds").

A refund is one event of ``refund_orders``: the merchant returns ``amount`` of a paid order to
its payer (a leg merchant -> payer), and the fee account returns the matching part of the
order's fee to the merchant (a second leg in the same chain): after refunds totalling ``R`` of
an order of ``A`` with fee ``F``, exactly ``floor(F * R / A)`` of the fee has gone back, so
the last refund returns the rest and fees returned never exceed fees taken. The refund id is
derived from (order, ``out_refund_no``) as an order's is from (merchant, ``out_trade_no``): a
retry is ``exists``.

>>> from core.order_keys import refund_id, order_id
>>> refund_id(order_id(7, b"A-1"), b"R-1") != refund_id(order_id(7, b"A-1"), b"R-2")
True
"""

import numpy as np

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp

from core.digest cimport key_id_digest
from core.idmap cimport IDMAP_NOT_FOUND, idmap_get, idmap_t
from core.ledger cimport LEGS_MAX, Ledger, chain_mark_t
from core.merchants cimport Merchants, merchant_terms_t
from core.orders cimport Orders, leg_id_of, trade_no_valid
from core.product cimport event_prologue
from core.records cimport *  # result_t codes, records, order states
from core.table cimport Table, table_find

from core import constants, table as table_module
from core.operations import Operation
from core.records import REFUND_DTYPE, TransferCode

cdef extern from *:
    """
    /* floor(a * b / c) with a 128-bit product (c > 0). */
    static inline uint64_t tally_mul_div(uint64_t a, uint64_t b, uint64_t c) {
        return (uint64_t) (((unsigned __int128) a * b) / c);
    }
    """
    uint64_t tally_mul_div(uint64_t a, uint64_t b, uint64_t c) nogil

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

cdef enum:
    NS_PER_S = 1000000000

if Operation.refund_orders != OPERATION_REFUND_ORDERS:
    raise ImportError("core/refunds.pxd and core/operations.py number refund_orders differently")
if TransferCode.order_refund != TRANSFER_CODE_ORDER_REFUND or TransferCode.order_fee_refund != TRANSFER_CODE_ORDER_FEE_REFUND:
    raise ImportError("core/refunds.pxd and core.TransferCode disagree on the refund legs' codes")

#: The checkpoint arrays the refunds declare (core/checkpoint.py).
CHECKPOINT_ARRAYS = table_module.checkpoint_arrays("refunds")
cdef uint64_t _REFUNDS_PER_ORDER_MAX = constants.REFUNDS_PER_ORDER_MAX
cdef uint64_t _REFUND_WINDOW_NS = constants.REFUND_WINDOW_S * NS_PER_S


cdef class Refunds(Product):
    """The refunds of a ledger's orders: a write-back table (core/table) of ``refunds_max``
    resident refunds (128 bytes + 52 of bookkeeping and index each); a store evicts the others
    to its cold tier, a bare table past it answers ``refunds_limit_reached``."""

    def __cinit__(self, Ledger ledger not None, Orders orders not None, Merchants merchants not None,
                  uint64_t refunds_max=constants.REFUNDS_MAX_DEFAULT):
        if not 2 <= refunds_max <= constants.REFUNDS_MAX_LIMIT:
            raise ValueError(f"refunds_max must be in 2..{constants.REFUNDS_MAX_LIMIT}")
        self.ledger, self.orders, self.merchants = ledger, orders, merchants
        self.component = "refunds"
        self.refunds_max = refunds_max
        self.table = Table(REFUND_DTYPE, refunds_max, "refunds")

    @property
    def refund_count(self):
        """Refunds ever made."""
        return self.table.records_total

    def prefault(self):
        """Touch every page of the table now (see Ledger.prefault). Returns bytes touched."""
        return self.table.prefault()

    def lookup_refunds(self, ids):
        """The refunds with these ids (ints or an ID_DTYPE array) that are resident or on their
        way to the cold tier, in order; the others are left out (a store looks them up cold)."""
        return self.table.lookup_found(ids)

    def snapshot(self):
        return self.table.snapshot()

    def hash_parts(self):
        """The sum of every refund's hash and their count (nothing while there is none)."""
        return {"refunds": self.table.hash_part()} if self.table.records_total else {}

    def restore(self, arrays, scalars):
        """Load a snapshot into this empty table."""
        self.table.restore(arrays, scalars)

    # ---------------------------------------------------------------- the state machine

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        for k in range(count):
            (<uint32_t *> out)[k] = self.refund(&(<const tally_refund_t *> events)[k], base + k * LEGS_MAX)
        tally_store_fence()

    cdef result_t refund(self, const tally_refund_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t order_slot, slot, payer, merchant, fee_index
        cdef uint64_t i, fee_back, leg_lo, leg_hi
        cdef uint8_t digest[32]
        cdef tally_order_t *o
        cdef tally_refund_t *x
        cdef tally_refund_t new
        cdef idmap_t *accounts = &self.ledger.account_map.map
        cdef chain_mark_t mark
        cdef result_t r
        cdef const merchant_terms_t *terms
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.fee_refunded != 0 or e.payer_id_lo != 0 or e.payer_id_hi != 0:
            return R_RESERVED_FIELD  # the engine's to fill in
        if e.flags != 0:
            return R_RESERVED_FLAG
        if e.id_lo == 0 and e.id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if e.id_lo == U64_MAX and e.id_hi == U64_MAX:
            return R_ID_MUST_NOT_BE_INT_MAX
        if e.amount == 0:
            return R_AMOUNT_MUST_NOT_BE_ZERO
        if not trade_no_valid(e.out_refund_no):
            return R_OUT_REFUND_NO_INVALID
        r = self.orders.find_order(e.order_id_lo, e.order_id_hi, &order_slot)
        if r != R_OK:
            return r
        o = &self.orders.rows[order_slot]
        if o.merchant_id_lo != e.merchant_id_lo or o.merchant_id_hi != e.merchant_id_hi:
            return R_MERCHANT_MISMATCH
        key_id_digest(b"rfnd", <const uint8_t *> &e.order_id_lo, e.out_refund_no, digest)
        if memcmp(digest, &e.id_lo, 16) != 0:
            return R_ID_MISMATCH
        slot = table_find(self.table, e.id_lo, e.id_hi)
        if slot != IDMAP_NOT_FOUND:
            x = <tally_refund_t *> self.table.rows + slot
            if x.amount != e.amount or x.ledger != e.ledger:
                return R_EXISTS_WITH_DIFFERENT_FIELDS
            return R_EXISTS
        if o.state != ORDER_SUCCESS and o.state != ORDER_REFUND:
            return R_ORDER_NOT_PAID
        if e.ledger != o.ledger:
            return R_CURRENCY_MISMATCH
        if ts - o.paid_at >= _REFUND_WINDOW_NS:
            return R_REFUND_WINDOW_CLOSED
        if o.refund_count >= _REFUNDS_PER_ORDER_MAX:
            return R_REFUNDS_PER_ORDER_LIMIT_REACHED
        if e.amount > o.amount - o.refunded:
            return R_EXCEEDS_PAID_AMOUNT
        if self.table.free_count == 0:
            return R_REFUNDS_LIMIT_REACHED  # a table with no store to evict to is full
        payer = idmap_get(accounts, o.payer_id_lo, o.payer_id_hi)
        merchant = idmap_get(accounts, o.merchant_id_lo, o.merchant_id_hi)
        # The fee back: what makes the fee returned so far floor(F * R / A) of the refunded R.
        fee_back = 0
        if o.fee:
            fee_back = (tally_mul_div(o.fee, o.refunded + e.amount, o.amount)
                        - tally_mul_div(o.fee, o.refunded, o.amount))
        self.ledger.chain_begin(&mark)
        leg_id_of(e.id_lo, e.id_hi, OPERATION_REFUND_ORDERS, 0, &leg_lo, &leg_hi)
        r = self.ledger.leg(leg_lo, leg_hi, merchant, payer, e.amount, o.ledger, TRANSFER_CODE_ORDER_REFUND, 0,
                            o.id_lo, o.id_hi, ts)
        if r == R_OK and fee_back != 0:
            # The account the fee went to at payment gives its part back (not the merchant's
            # fee account now: terms may have changed since).
            leg_id_of(e.id_lo, e.id_hi, OPERATION_REFUND_ORDERS, 1, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, self.orders.table.slots[order_slot].aux, merchant, fee_back, o.ledger,
                                TRANSFER_CODE_ORDER_FEE_REFUND, 0, o.id_lo, o.id_hi, ts + 1)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        x = &new
        x[0] = e[0]
        x.fee_refunded = fee_back
        x.payer_id_lo = o.payer_id_lo
        x.payer_id_hi = o.payer_id_hi
        x.timestamp = ts
        self.table.insert(x, 0, ts)  # a free slot: checked above
        o.refunded += e.amount
        o.refund_count += 1
        if o.refunded == o.amount:
            o.state = ORDER_REFUND
        self.orders.table.touch(order_slot, ts)
        terms = self.merchants.terms_of(o.merchant_id_lo, o.merchant_id_hi)
        if terms != NULL:  # (terms are never removed: set at payment, they are here)
            self.merchants.book(terms, ts, 0, e.amount, 0, fee_back)
        return R_OK
