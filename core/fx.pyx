# cython: boundscheck=False, wraparound=False
"""Cross-border payments: rates, quotes, payments at a locked rate, refunds at that rate
(docs/products.md "Cross-border payments").

The payer pays in its wallet's currency A, the merchant is credited in its own B. An admin sets
the rate of a pair (``set_rates``, logged: replay uses the same rates), as ``rate_ppb``, B minor
units per 10^9 A minor units, with the pair's FX pool account in each currency. A quote tells the
payer ``payer_amount = ceil(merchant_amount x 10^9 / rate_ppb)`` (the payer pays the rounding);
the payment names the quoted rate's version and amount, and locks the rate in its record; its
legs are payer -> pool(A) and pool(B) -> merchant, each within one currency. A refund of b' in B
returns ``floor(b' x payer_amount / merchant_amount)`` in A, the last refund the rest, so a full
refund returns exactly what was paid: the merchant bears no FX drift, and no minor unit is made
or lost.

>>> from core.fx import payer_amount_of, refund_payer_amount
>>> payer_amount_of(100_00, 138_000_000)     # 100.00 USD at 0.138 USD per CNY: 724.64 CNY
72464
>>> refund_payer_amount(72464, 100_00, 0, 0, 50_00), refund_payer_amount(72464, 100_00, 36232, 50_00, 50_00)
(36232, 36232)
"""

import numpy as np

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from core.digest cimport key_id_digest
from core.idmap cimport IDMAP_NOT_FOUND, IdMap, idmap_get, idmap_put, idmap_t
from core.ledger cimport INDEX_NONE, LEGS_MAX, Ledger, chain_mark_t
from core.orders cimport leg_id_of
from core.product cimport all_zero, event_prologue, product_account
from core.table cimport Table, table_find
from core.records cimport *  # result_t codes, records

from core import constants, memory, table as table_module
from core.checkpoint import RAW
from core.operations import Operation
from core.records import FX_PAYMENT_DTYPE, FX_QUOTE_DTYPE, FX_RATE_DTYPE, FX_REFUND_DTYPE, ID_DTYPE, AccountCode, TransferCode

cdef extern from *:
    """
    /* ceil(b * 10^9 / rate) and floor(x * a / b) with 128-bit products; an amount past 64
       bits sets *overflow (its value is then 0). */
    static inline uint64_t tally_fx_payer_amount(uint64_t b, uint64_t rate, int *overflow) {
        unsigned __int128 q = (((unsigned __int128) b * 1000000000u) + rate - 1) / rate;
        *overflow = q > UINT64_MAX;
        return *overflow ? 0 : (uint64_t) q;
    }
    static inline uint64_t tally_fx_share(uint64_t x, uint64_t a, uint64_t b) {
        return (uint64_t) (((unsigned __int128) x * a) / b);
    }
    """
    uint64_t tally_fx_payer_amount(uint64_t b, uint64_t rate, int *overflow) nogil
    uint64_t tally_fx_share(uint64_t x, uint64_t a, uint64_t b) nogil

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

cdef extern from "assert.h" nogil:
    void tally_assert "assert"(bint)

cdef uint64_t RATES_MAX = constants.RATES_MAX
cdef uint64_t RATE_PPB_MAX = constants.RATE_PPB_MAX
cdef uint64_t REFUNDS_PER_PAYMENT_MAX = constants.REFUNDS_PER_ORDER_MAX  # (as an order's: 50)
cdef uint16_t ACCOUNT_CODE_POOL = AccountCode.fx_pool
cdef uint16_t CODE_FX = TransferCode.fx

for _name, _number in (("set_rates", OPERATION_SET_RATES), ("pay_cross_border", OPERATION_PAY_CROSS_BORDER),
                       ("refund_cross_border", OPERATION_REFUND_CROSS_BORDER)):
    if Operation[_name] != _number:
        raise ImportError(f"core/fx.pxd numbers {_name} {_number}, core/operations.py {int(Operation[_name])}")

#: The checkpoint arrays the cross-border payments declare (core/checkpoint.py).
CHECKPOINT_ARRAYS = dict(table_module.checkpoint_arrays("fx_payments"), **table_module.checkpoint_arrays("fx_refunds"),
                         fx_rates=RAW)


def payer_amount_of(uint64_t merchant_amount, uint64_t rate_ppb) -> int:
    """What the payer pays for ``merchant_amount`` at ``rate_ppb``: ceil(b x 10^9 / rate)."""
    cdef int overflow
    if rate_ppb == 0:
        raise ValueError("a rate is not 0")
    cdef uint64_t amount = tally_fx_payer_amount(merchant_amount, rate_ppb, &overflow)
    if overflow:
        raise OverflowError("the payer's amount does not fit 64 bits")
    return amount


def refund_payer_amount(uint64_t payer_amount, uint64_t merchant_amount, uint64_t payer_refunded,
                        uint64_t merchant_refunded, uint64_t refund) -> int:
    """What a refund of ``refund`` (merchant's currency) returns to the payer at the payment's
    locked rate: its share of what was paid, the last refund the rest."""
    if merchant_refunded + refund > merchant_amount:
        raise ValueError("above the amount not yet refunded")
    return refund_share(payer_amount, merchant_amount, payer_refunded, merchant_refunded, refund)


cdef inline uint64_t refund_share(uint64_t payer_amount, uint64_t merchant_amount, uint64_t payer_refunded,
                                  uint64_t merchant_refunded, uint64_t refund) noexcept nogil:
    if merchant_refunded + refund == merchant_amount:
        return payer_amount - payer_refunded
    return tally_fx_share(refund, payer_amount, merchant_amount)


cdef inline bint ids_equal(uint64_t a_lo, uint64_t a_hi, uint64_t b_lo, uint64_t b_hi) noexcept nogil:
    return a_lo == b_lo and a_hi == b_hi


cdef inline void pair_digest(const char *domain, const uint64_t *key, const uint64_t *first, uint64_t *out) noexcept nogil:
    """SHA-256(domain || key || first || 16 zero bytes)[:16] (core/order_keys.py ``_pair_id``)."""
    cdef uint8_t number[32]
    memcpy(number, first, 16)
    memset(number + 16, 0, 16)
    key_id_digest(domain, <const uint8_t *> key, number, <uint8_t *> out)


cdef class Fx(Product):
    """The cross-border payments of a ledger (docs/products.md "Cross-border payments").

    At most RATES_MAX currency pairs, in memory; ``fx_payments_max`` payments and
    ``fx_refunds_max`` refunds resident (the rest in a store's cold tier).
    """

    def __cinit__(self, Ledger ledger not None, uint64_t fx_payments_max=constants.FX_PAYMENTS_MAX_DEFAULT,
                  uint64_t fx_refunds_max=constants.FX_REFUNDS_MAX_DEFAULT):
        for name, value, limit in (("fx_payments_max", fx_payments_max, constants.FX_PAYMENTS_MAX_LIMIT),
                                   ("fx_refunds_max", fx_refunds_max, constants.FX_REFUNDS_MAX_LIMIT)):
            if not 2 <= value <= limit:
                raise ValueError(f"{name} must be in 2..{limit}")
        self.ledger = ledger
        self.component = "fx"
        self.rate_map = IdMap(RATES_MAX)
        a = self._arrays = {}
        a["fx_rates"] = np.zeros(RATES_MAX, dtype=FX_RATE_DTYPE)
        a["fx_pairs"] = np.zeros((RATES_MAX, 2), dtype=np.uint32)
        self.rates = <tally_fx_rate_t *> _ptr(a["fx_rates"])
        self.pairs = <fx_pair_t *> _ptr(a["fx_pairs"])
        self.payments = Table(FX_PAYMENT_DTYPE, fx_payments_max, "fx_payments")
        self.refunds = Table(FX_REFUND_DTYPE, fx_refunds_max, "fx_refunds")
        self.payment_rows = <tally_fx_payment_t *> self.payments.rows
        self.refund_rows = <tally_fx_refund_t *> self.refunds.rows

    # ---------------------------------------------------------------- Python API (the boundary)

    @property
    def payment_count(self):
        """Cross-border payments ever made."""
        return self.payments.records_total

    def quote(self, uint32_t from_ledger, uint32_t to_ledger, merchant_amounts):
        """What payers pay in ``from_ledger`` for ``merchant_amounts`` (minor units of
        ``to_ledger``) at the rate in force: FX_QUOTE_DTYPE records (``rate_not_found`` without
        a rate, ``rate_invalid`` for 0 or an amount that overflows)."""
        amounts = np.ascontiguousarray(merchant_amounts, dtype=np.uint64).reshape(-1)
        out = np.zeros(amounts.shape[0], dtype=FX_QUOTE_DTYPE)
        out["merchant_amount"] = amounts
        cdef uint32_t slot = idmap_get(&self.rate_map.map, from_ledger | (<uint64_t> to_ledger << 32), 0)
        if slot == IDMAP_NOT_FOUND:
            out["result"] = R_RATE_NOT_FOUND
            return out
        cdef const tally_fx_rate_t *rate = &self.rates[slot]
        cdef Py_ssize_t i
        cdef int overflow
        for i in range(amounts.shape[0]):
            payer = tally_fx_payer_amount(amounts[i], rate.rate_ppb, &overflow)
            if amounts[i] == 0 or overflow:
                out["result"][i] = R_RATE_INVALID if amounts[i] else R_AMOUNT_MUST_NOT_BE_ZERO
                continue
            out["payer_amount"][i] = payer
            out["rate_ppb"][i] = rate.rate_ppb
            out["rate_version"][i] = rate.version
        return out

    def lookup_rates(self, ids):
        """The rates of these pairs (ids: from_ledger | to_ledger << 32), those set, in order."""
        return self._arrays["fx_rates"][self.rate_map.indexes_of(ids)]

    def lookup_fx_payments(self, ids):
        """The payments with these ids that are resident or on their way to the cold tier."""
        return self.payments.lookup_found(ids)

    def lookup_fx_refunds(self, ids):
        """The refunds with these ids, as ``lookup_fx_payments``."""
        return self.refunds.lookup_found(ids)

    def derived_ids(self, operation, str table, events):
        """The payment id of each ``pay_cross_border`` event (payer, request), as ID_DTYPE."""
        cdef const unsigned char[::1] raw = np.ascontiguousarray(events).view(np.uint8).reshape(-1)
        cdef uint64_t count = raw.shape[0] // sizeof(tally_fx_pay_t), k
        out = np.zeros(count, dtype=ID_DTYPE)
        cdef uint64_t[:, ::1] ids = out.view(np.uint64).reshape(-1, 2)
        cdef const tally_fx_pay_t *e = <const tally_fx_pay_t *> &raw[0] if count else NULL
        with nogil:
            for k in range(count):
                pair_digest(b"fxpy", &e[k].payer_id_lo, &e[k].request_id_lo, &ids[k, 0])
        return out

    def prefault(self):
        return (self.payments.prefault() + self.refunds.prefault() + memory.touch_pages(self._arrays.values())
                + self.rate_map.prefault())

    def snapshot(self):
        arrays, scalars = self.payments.snapshot()
        more_arrays, more_scalars = self.refunds.snapshot()
        arrays.update(more_arrays)
        scalars.update(more_scalars)
        arrays["fx_rates"] = self._arrays["fx_rates"][:self.rate_count]
        scalars["fx_rate_count"] = self.rate_count
        return arrays, scalars

    def hash_parts(self):
        """The rates, and the sums of every payment's and refund's hash (nothing while no rate
        was ever set: a store without cross-border payments hashes as before)."""
        if not self.rate_count:
            return {}
        return {"fx_rates": self._arrays["fx_rates"][:self.rate_count], "fx_payments": self.payments.hash_part(),
                "fx_refunds": self.refunds.hash_part()}

    def restore(self, arrays, scalars):
        """Load a snapshot into these empty tables (after the ledger's: the pools are resolved)."""
        if self.rate_count or self.payments.records_total:
            raise RuntimeError("restore needs empty cross-border tables")
        if "fx_rates" not in arrays:
            return  # a checkpoint from before cross-border payments: no rate was set
        self.payments.restore(arrays, scalars)
        self.refunds.restore(arrays, scalars)
        cdef uint64_t n = scalars["fx_rate_count"], i
        rows = np.frombuffer(arrays["fx_rates"], dtype=FX_RATE_DTYPE)
        if n > RATES_MAX or rows.shape[0] != n:
            raise ValueError(f"snapshot holds {rows.shape[0]} rates, says {n}")
        self._arrays["fx_rates"][:n] = rows
        for i in range(n):
            if idmap_put(&self.rate_map.map, self.rates[i].from_ledger | (<uint64_t> self.rates[i].to_ledger << 32), 0,
                         <uint32_t> i) != 0:
                raise RuntimeError("rate map full while restoring")
            self.pairs[i].pool_from_index = idmap_get(&self.ledger.account_map.map, self.rates[i].pool_from_id_lo,
                                                      self.rates[i].pool_from_id_hi)
            self.pairs[i].pool_to_index = idmap_get(&self.ledger.account_map.map, self.rates[i].pool_to_id_lo,
                                                    self.rates[i].pool_to_id_hi)
            if self.pairs[i].pool_from_index == IDMAP_NOT_FOUND or self.pairs[i].pool_to_index == IDMAP_NOT_FOUND:
                raise ValueError("a rate's pools are missing from the ledger restored with it")
        self.rate_count = n

    # ---------------------------------------------------------------- the state machine

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        cdef uint32_t *results = <uint32_t *> out
        if operation == OPERATION_SET_RATES:
            for k in range(count):
                results[k] = self.set_rate(&(<const tally_fx_rate_t *> events)[k], base + k * LEGS_MAX)
        elif operation == OPERATION_PAY_CROSS_BORDER:
            for k in range(count):
                results[k] = self.pay(&(<const tally_fx_pay_t *> events)[k], base + k * LEGS_MAX)
        else:
            for k in range(count):
                results[k] = self.refund(&(<const tally_fx_refund_t *> events)[k], base + k * LEGS_MAX)
        tally_store_fence()

    cdef result_t set_rate(self, const tally_fx_rate_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t slot, pool_from, pool_to
        cdef tally_fx_rate_t *rate
        cdef idmap_t *accounts = &self.ledger.account_map.map
        if e.timestamp != 0:
            return R_TIMESTAMP_MUST_BE_ZERO
        if (not all_zero(e.reserved, sizeof(e.reserved)) or not all_zero(e.reserved_a, sizeof(e.reserved_a))
                or e.version != 0 or e.updated_at != 0):
            return R_RESERVED_FIELD
        if e.flags != 0:
            return R_RESERVED_FLAG
        if e.from_ledger == 0 or e.to_ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        if e.from_ledger == e.to_ledger or e.rate_ppb == 0 or e.rate_ppb > RATE_PPB_MAX:
            return R_RATE_INVALID
        pool_from = idmap_get(accounts, e.pool_from_id_lo, e.pool_from_id_hi)
        pool_to = idmap_get(accounts, e.pool_to_id_lo, e.pool_to_id_hi)
        if (pool_from == IDMAP_NOT_FOUND or pool_to == IDMAP_NOT_FOUND
                or self.ledger.hot[pool_from].ledger != e.from_ledger or self.ledger.hot[pool_to].ledger != e.to_ledger
                or self.ledger.hot[pool_from].code != ACCOUNT_CODE_POOL or self.ledger.hot[pool_to].code != ACCOUNT_CODE_POOL):
            return R_POOL_INVALID
        slot = idmap_get(&self.rate_map.map, e.from_ledger | (<uint64_t> e.to_ledger << 32), 0)
        if slot != IDMAP_NOT_FOUND:
            rate = &self.rates[slot]
            # A pair's pools are fixed at its first rate: its payments' refunds go through them.
            if (not ids_equal(rate.pool_from_id_lo, rate.pool_from_id_hi, e.pool_from_id_lo, e.pool_from_id_hi)
                    or not ids_equal(rate.pool_to_id_lo, rate.pool_to_id_hi, e.pool_to_id_lo, e.pool_to_id_hi)):
                return R_POOL_INVALID
            rate.rate_ppb = e.rate_ppb
            rate.version += 1
            rate.updated_at = ts
            return R_OK
        if self.rate_count >= RATES_MAX:
            return R_RATES_LIMIT_REACHED
        slot = <uint32_t> self.rate_count
        rate = &self.rates[slot]
        rate[0] = e[0]
        rate.version = 1
        rate.updated_at = ts
        rate.timestamp = ts
        self.pairs[slot].pool_from_index = pool_from
        self.pairs[slot].pool_to_index = pool_to
        if idmap_put(&self.rate_map.map, e.from_ledger | (<uint64_t> e.to_ledger << 32), 0, slot) != 0:
            return R_RATES_LIMIT_REACHED  # (the map holds RATES_MAX: it cannot be full here)
        self.rate_count += 1
        return R_OK

    cdef result_t pay(self, const tally_fx_pay_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t rate_slot, payer, merchant, slot
        cdef uint64_t payment_id[2]
        cdef uint64_t leg_lo, leg_hi, payer_amount
        cdef int overflow
        cdef const tally_fx_rate_t *rate
        cdef tally_fx_payment_t *p
        cdef tally_fx_payment_t new
        cdef chain_mark_t mark
        cdef result_t r
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.flags != 0:
            return R_RESERVED_FLAG
        if e.request_id_lo == 0 and e.request_id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if e.merchant_amount == 0 or e.payer_amount == 0:
            return R_AMOUNT_MUST_NOT_BE_ZERO
        if e.payer_ledger == 0 or e.merchant_ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        pair_digest(b"fxpy", &e.payer_id_lo, &e.request_id_lo, payment_id)
        slot = table_find(self.payments, payment_id[0], payment_id[1])
        if slot != IDMAP_NOT_FOUND:  # a retry
            p = &self.payment_rows[slot]
            if (not ids_equal(p.merchant_id_lo, p.merchant_id_hi, e.merchant_id_lo, e.merchant_id_hi)
                    or p.merchant_amount != e.merchant_amount or p.payer_amount != e.payer_amount
                    or p.payer_ledger != e.payer_ledger or p.merchant_ledger != e.merchant_ledger
                    or p.rate_version != e.rate_version):
                return R_EXISTS_WITH_DIFFERENT_FIELDS
            return R_EXISTS
        rate_slot = idmap_get(&self.rate_map.map, e.payer_ledger | (<uint64_t> e.merchant_ledger << 32), 0)
        if rate_slot == IDMAP_NOT_FOUND:
            return R_RATE_NOT_FOUND
        rate = &self.rates[rate_slot]
        if rate.version != e.rate_version:
            return R_RATE_CHANGED
        payer_amount = tally_fx_payer_amount(e.merchant_amount, rate.rate_ppb, &overflow)
        if overflow:
            return R_RATE_INVALID  # (the payer's amount would not fit 64 bits: as the quote says)
        if payer_amount != e.payer_amount:
            return R_AMOUNT_MISMATCH
        payer = idmap_get(accounts, e.payer_id_lo, e.payer_id_hi)
        if payer == IDMAP_NOT_FOUND:
            return R_PAYER_NOT_FOUND
        merchant = idmap_get(accounts, e.merchant_id_lo, e.merchant_id_hi)
        if merchant == IDMAP_NOT_FOUND:
            return R_MERCHANT_NOT_FOUND
        if self.ledger.hot[payer].ledger != e.payer_ledger or self.ledger.hot[merchant].ledger != e.merchant_ledger:
            return R_CURRENCY_MISMATCH
        if product_account(self.ledger.hot[payer].code) or product_account(self.ledger.hot[merchant].code):
            return R_PRODUCT_ACCOUNT
        if self.payments.free_count == 0:
            return R_FX_PAYMENTS_LIMIT_REACHED
        # Two legs, each within one currency: the pools carry the FX position.
        self.ledger.chain_begin(&mark)
        leg_id_of(payment_id[0], payment_id[1], OPERATION_PAY_CROSS_BORDER, 0, &leg_lo, &leg_hi)
        r = self.ledger.leg(leg_lo, leg_hi, payer, self.pairs[rate_slot].pool_from_index, e.payer_amount,
                            e.payer_ledger, CODE_FX, 0, payment_id[0], payment_id[1], ts)
        if r == R_OK:
            leg_id_of(payment_id[0], payment_id[1], OPERATION_PAY_CROSS_BORDER, 1, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, self.pairs[rate_slot].pool_to_index, merchant, e.merchant_amount,
                                e.merchant_ledger, CODE_FX, 0, payment_id[0], payment_id[1], ts + 1)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        p = &new
        memset(p, 0, sizeof(tally_fx_payment_t))
        p.id_lo = payment_id[0]
        p.id_hi = payment_id[1]
        p.payer_id_lo = e.payer_id_lo
        p.payer_id_hi = e.payer_id_hi
        p.merchant_id_lo = e.merchant_id_lo
        p.merchant_id_hi = e.merchant_id_hi
        p.request_id_lo = e.request_id_lo
        p.request_id_hi = e.request_id_hi
        p.payer_amount = e.payer_amount
        p.merchant_amount = e.merchant_amount
        p.rate_ppb = rate.rate_ppb
        p.payer_ledger = e.payer_ledger
        p.merchant_ledger = e.merchant_ledger
        p.rate_version = rate.version
        p.timestamp = ts
        self.payments.insert(p, rate_slot, ts)
        return R_OK

    cdef result_t refund(self, const tally_fx_refund_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t slot, payment_slot, rate_slot, payer, merchant
        cdef uint64_t id_[2]
        cdef uint64_t leg_lo, leg_hi, back
        cdef tally_fx_payment_t *p
        cdef tally_fx_refund_t *x
        cdef tally_fx_refund_t new
        cdef chain_mark_t mark
        cdef result_t r
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.payer_amount != 0:
            return R_RESERVED_FIELD
        if e.flags != 0:
            return R_RESERVED_FLAG
        if (e.id_lo == 0 and e.id_hi == 0) or (e.request_id_lo == 0 and e.request_id_hi == 0):
            return R_ID_MUST_NOT_BE_ZERO
        if e.merchant_amount == 0:
            return R_AMOUNT_MUST_NOT_BE_ZERO
        pair_digest(b"fxrf", &e.payment_id_lo, &e.request_id_lo, id_)
        if not ids_equal(id_[0], id_[1], e.id_lo, e.id_hi):
            return R_ID_MISMATCH
        payment_slot = table_find(self.payments, e.payment_id_lo, e.payment_id_hi)
        if payment_slot == IDMAP_NOT_FOUND:
            return R_FX_PAYMENT_NOT_FOUND
        p = &self.payment_rows[payment_slot]
        if not ids_equal(p.merchant_id_lo, p.merchant_id_hi, e.merchant_id_lo, e.merchant_id_hi):
            return R_MERCHANT_MISMATCH
        slot = table_find(self.refunds, e.id_lo, e.id_hi)
        if slot != IDMAP_NOT_FOUND:  # a retry
            return R_EXISTS if self.refund_rows[slot].merchant_amount == e.merchant_amount else R_EXISTS_WITH_DIFFERENT_FIELDS
        if e.merchant_amount > p.merchant_amount - p.merchant_refunded:
            return R_EXCEEDS_PAID_AMOUNT
        if p.refund_count >= REFUNDS_PER_PAYMENT_MAX:
            return R_REFUNDS_PER_ORDER_LIMIT_REACHED
        if self.refunds.free_count == 0:
            return R_REFUNDS_LIMIT_REACHED
        rate_slot = self.payments.slots[payment_slot].aux
        payer = idmap_get(accounts, p.payer_id_lo, p.payer_id_hi)
        merchant = idmap_get(accounts, p.merchant_id_lo, p.merchant_id_hi)
        back = refund_share(p.payer_amount, p.merchant_amount, p.payer_refunded, p.merchant_refunded, e.merchant_amount)
        self.ledger.chain_begin(&mark)
        leg_id_of(e.id_lo, e.id_hi, OPERATION_REFUND_CROSS_BORDER, 0, &leg_lo, &leg_hi)
        r = self.ledger.leg(leg_lo, leg_hi, merchant, self.pairs[rate_slot].pool_to_index, e.merchant_amount,
                            p.merchant_ledger, CODE_FX, 0, e.payment_id_lo, e.payment_id_hi, ts)
        if r == R_OK and back != 0:
            leg_id_of(e.id_lo, e.id_hi, OPERATION_REFUND_CROSS_BORDER, 1, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, self.pairs[rate_slot].pool_from_index, payer, back, p.payer_ledger,
                                CODE_FX, 0, e.payment_id_lo, e.payment_id_hi, ts + 1)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        x = &new
        x[0] = e[0]
        x.payer_amount = back
        x.timestamp = ts
        self.refunds.insert(x, payer, ts)
        p.merchant_refunded += e.merchant_amount
        p.payer_refunded += back
        p.refund_count += 1
        self.payments.touch(payment_slot, ts)
        return R_OK


cdef inline void *_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]
