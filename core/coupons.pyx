# cython: boundscheck=False, wraparound=False
"""Coupons and the card pack: stocks, grants, redemption in a payment's chain, a stock's end
(docs/products.md "Coupons and the card pack").

A merchant funds a stock (``create_stocks``: face value x count from its wallet to its budget
account); users receive its coupons into their card pack (``grant_coupons``: by scanning the
merchant's code, or the merchant's API), at most ``per_user_max`` each; a payment at the
merchant redeems one (``pay_with_coupon``): the user pays the price less the face, the budget
pays the face, in one chain. At the stock's end the unused budget returns to the merchant at a
batch's start (the ledger's start legs). The analytics are counters in the stock's record.
Each batch is one C loop over its records: no Python object per event.

>>> from core.order_keys import stock_id, coupon_id
>>> stock_id(7, b"SPRING-2027") != coupon_id(stock_id(7, b"SPRING-2027"), 42, 1)
True
"""

import numpy as np

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from core.digest cimport key_id_digest
from core.expiry cimport HEAP_POSITION_NONE, expiry_t, heap_count_due, heap_push, heap_remove
from core.idmap cimport IDMAP_NOT_FOUND, idmap_get, idmap_t
from core.ledger cimport LEGS_MAX, START_LEGS_MAX, Ledger, chain_mark_t
from core.merchants cimport CARD_PACK_AWARD, CARD_PACK_MEMBERSHIP, Merchants, merchant_terms_t
from core.orders cimport Orders, keyed_event_checks, leg_id_of
from core.product cimport event_prologue, product_account
from core.table cimport Table, table_find, table_set_pinned
from core.records cimport *  # result_t codes, records, stock and coupon states

from core import constants, memory, table as table_module
from core.checkpoint import RAW
from core.operations import Operation
from core.orders import EXPIRY_DTYPE, room_reserved
from core.records import (
    COUPON_DTYPE, COUPON_PAYMENT_DTYPE, HOLDING_DTYPE, ID_DTYPE, MEMBER_DTYPE, STOCK_DTYPE, AccountCode, TransferCode,
)

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

cdef extern from "assert.h" nogil:
    void tally_assert "assert"(bint)

cdef enum:
    NS_PER_S = 1000000000
    LEG_END = 1                                 # the budget's return is the creation's leg 1

cdef uint64_t STOCK_COUNT_MAX = constants.STOCK_COUNT_MAX
cdef uint64_t STOCK_VALID_MAX_S = constants.STOCK_VALID_MAX_S
cdef uint64_t STOCK_BUDGET_MAX = constants.STOCK_BUDGET_MAX
cdef uint16_t ACCOUNT_CODE_BUDGET = AccountCode.coupon_budget
cdef uint16_t CODE_PAYMENT = TransferCode.payment
cdef uint16_t CODE_COUPON = TransferCode.coupon

for _name, _number in (("create_stocks", OPERATION_CREATE_STOCKS), ("grant_coupons", OPERATION_GRANT_COUPONS),
                       ("pay_with_coupon", OPERATION_PAY_WITH_COUPON)):
    if Operation[_name] != _number:
        raise ImportError(f"core/coupons.pxd numbers {_name} {_number}, core/operations.py {int(Operation[_name])}")
if constants.STOCK_ENDS_PER_BATCH_MAX != START_LEGS_MAX:
    raise ImportError("constants.STOCK_ENDS_PER_BATCH_MAX and core/ledger.pxd START_LEGS_MAX differ")

#: The checkpoint arrays the coupons declare (core/checkpoint.py).
CHECKPOINT_ARRAYS = dict(table_module.checkpoint_arrays("stocks"), **table_module.checkpoint_arrays("coupons"),
                         **table_module.checkpoint_arrays("holdings"), **table_module.checkpoint_arrays("members"),
                         **table_module.checkpoint_arrays("coupon_payments"), stock_expiries=RAW)


cdef inline bint ids_equal(uint64_t a_lo, uint64_t a_hi, uint64_t b_lo, uint64_t b_hi) noexcept nogil:
    return a_lo == b_lo and a_hi == b_hi


cdef inline void pair_id(const char *domain, const uint64_t *key, const uint64_t *first, const uint64_t *second,
                         uint64_t *out) noexcept nogil:
    """SHA-256(domain || key || first || second)[:16], each 16 bytes LE (second NULL: zeros)."""
    cdef uint8_t number[32]
    memcpy(number, first, 16)
    if second != NULL:
        memcpy(number + 16, second, 16)
    else:
        memset(number + 16, 0, 16)
    key_id_digest(domain, <const uint8_t *> key, number, <uint8_t *> out)


cdef class Coupons(Product):
    """The coupons of a ledger's merchants (docs/products.md "Coupons and the card pack").

    ``stocks_max`` stocks, ``coupons_max`` coupons and ``holdings_max`` holdings are resident
    (128 bytes + 52 of bookkeeping each); a store evicts the others to its cold tier. Active
    stocks stay resident: at most ``open_max`` (``stocks_max`` less a batch's room), past which
    ``create_stocks`` answers ``stocks_limit_reached``.
    """

    def __cinit__(self, Ledger ledger not None, Merchants merchants not None, Orders orders not None,
                  uint64_t stocks_max=constants.STOCKS_MAX_DEFAULT, uint64_t coupons_max=constants.COUPONS_MAX_DEFAULT,
                  uint64_t holdings_max=constants.HOLDINGS_MAX_DEFAULT, uint64_t members_max=constants.MEMBERS_MAX_DEFAULT,
                  uint64_t coupon_payments_max=constants.COUPON_PAYMENTS_MAX_DEFAULT):
        for name, value, limit in (("stocks_max", stocks_max, constants.STOCKS_MAX_LIMIT),
                                   ("coupons_max", coupons_max, constants.COUPONS_MAX_LIMIT),
                                   ("holdings_max", holdings_max, constants.HOLDINGS_MAX_LIMIT),
                                   ("members_max", members_max, constants.MEMBERS_MAX_LIMIT),
                                   ("coupon_payments_max", coupon_payments_max, constants.COUPON_PAYMENTS_MAX_LIMIT)):
            if not 2 <= value <= limit:
                raise ValueError(f"{name} must be in 2..{limit}")
        self.ledger, self.merchants, self.orders = ledger, merchants, orders
        self.component = "coupons"
        self.stocks_max = stocks_max
        self.open_max = stocks_max - room_reserved(stocks_max)
        self.stocks = Table(STOCK_DTYPE, stocks_max, "stocks")
        self.stocks.pinned_max = self.open_max
        self.coupons = Table(COUPON_DTYPE, coupons_max, "coupons")
        self.holdings = Table(HOLDING_DTYPE, holdings_max, "holdings")
        self.members = Table(MEMBER_DTYPE, members_max, "members")
        self.member_rows = <tally_member_t *> self.members.rows
        self.payments = Table(COUPON_PAYMENT_DTYPE, coupon_payments_max, "coupon_payments")
        self.payment_rows = <tally_coupon_payment_t *> self.payments.rows
        self.stock_rows = <tally_stock_t *> self.stocks.rows
        self.coupon_rows = <tally_coupon_t *> self.coupons.rows
        self.holding_rows = <tally_holding_t *> self.holdings.rows
        a = self._arrays = {}
        a["stock_expiries"] = np.zeros(stocks_max, dtype=EXPIRY_DTYPE)
        a["heap_positions"] = np.full(stocks_max, 0xFFFFFFFF, dtype=np.uint32)  # HEAP_POSITION_NONE
        self.heap_positions = <uint32_t *> _ptr(a["heap_positions"])
        self.expiry_heap.items = <expiry_t *> _ptr(a["stock_expiries"])
        self.expiry_heap.count = 0
        self.expiry_heap.positions = <char *> self.heap_positions
        self.expiry_heap.stride = sizeof(uint32_t)
        ledger.add_start_legs(_ends_due, _end_due, <void *> self)
        orders.after_payment, orders.after_payment_owner = _after_payment, <void *> self

    def __dealloc__(self):
        if self.ledger is not None:
            self.ledger.remove_start_legs(<void *> self)
        if self.orders is not None and self.orders.after_payment_owner == <void *> self:
            self.orders.after_payment_owner = NULL

    # ---------------------------------------------------------------- Python API (the boundary)

    @property
    def stock_count(self):
        """Stocks ever created."""
        return self.stocks.records_total

    @property
    def coupon_count(self):
        """Coupons ever granted."""
        return self.coupons.records_total

    @property
    def next_expiry_ns(self):
        """Engine time (ns) at which the soonest active stock ends; 0: none."""
        return self.expiry_heap.items[0].expires_at if self.expiry_heap.count else 0

    def lookup_stocks(self, ids):
        """The stocks with these ids (ints or an ID_DTYPE array) that are resident or on their
        way to the cold tier, in order; the others are left out (a store looks them up cold)."""
        return self.stocks.lookup_found(ids)

    def lookup_coupons(self, ids):
        """The coupons with these ids, as ``lookup_stocks``."""
        return self.coupons.lookup_found(ids)

    def lookup_holdings(self, ids):
        """The holdings with these ids (``core.order_keys.holding_id``), as ``lookup_stocks``."""
        return self.holdings.lookup_found(ids)

    def lookup_coupon_payments(self, ids):
        """The coupon payments with these ids (``core.order_keys.coupon_payment_id``)."""
        return self.payments.lookup_found(ids)

    def lookup_members(self, ids):
        """The members with these ids (``core.order_keys.member_id``), as ``lookup_stocks``."""
        return self.members.lookup_found(ids)

    def derived_ids(self, operation, str table, events):
        """The records of ``table`` each event reads that the coupons compute (ID_DTYPE): a
        grant's or a coupon payment's holding (the stock and the user), a coupon payment's member
        (its merchant's card, when it has one); what a store loads from the cold tier first."""
        cdef const unsigned char[::1] raw = np.ascontiguousarray(events).view(np.uint8).reshape(-1)
        cdef uint64_t count = raw.shape[0] // sizeof(tally_coupon_grant_t), k
        cdef bint grants = operation == OPERATION_GRANT_COUPONS
        out = np.zeros(count, dtype=ID_DTYPE)
        cdef uint64_t[:, ::1] ids = out.view(np.uint64).reshape(-1, 2)
        cdef const tally_coupon_grant_t *g = <const tally_coupon_grant_t *> &raw[0] if count else NULL
        cdef const tally_coupon_pay_t *p = <const tally_coupon_pay_t *> &raw[0] if count else NULL
        if table == "members":
            words = np.ascontiguousarray(events).view(np.uint64).reshape(-1, 16)
            return self.card_pack_ids(table, words[:, 2:4], words[:, 0:2], None)  # (merchant, payer)
        cdef bint payments = table == "coupon_payments"
        with nogil:
            for k in range(count):
                if payments:
                    pair_id(b"cpay", &p[k].payer_id_lo, &p[k].request_id_lo, NULL, &ids[k, 0])
                elif grants:
                    pair_id(b"hold", &g[k].stock_id_lo, &g[k].user_id_lo, NULL, &ids[k, 0])
                else:
                    pair_id(b"hold", &p[k].stock_id_lo, &p[k].payer_id_lo, NULL, &ids[k, 0])
        return out

    def card_pack_ids(self, str table, merchant_ids, payer_ids, order_ids):
        """For payments (``order_ids``) at these merchants by these payers ((n, 2) uint64 arrays,
        lo and hi): the ``coupons`` they would award and the ``holdings`` of their award stocks,
        or the ``members`` of their membership cards, they may change (ID_DTYPE; 0 where the
        merchant's terms ask for none)."""
        cdef const uint64_t[:, :] m = np.asarray(merchant_ids, dtype=np.uint64)
        cdef const uint64_t[:, :] u = np.asarray(payer_ids, dtype=np.uint64)
        cdef const uint64_t[:, :] o = np.asarray(order_ids if order_ids is not None else merchant_ids, dtype=np.uint64)
        cdef Py_ssize_t k, count = m.shape[0]
        cdef bint award = table != "members", coupons = table == "coupons"
        cdef const merchant_terms_t *terms
        cdef uint64_t merchant[2]
        cdef uint64_t payer[2]
        cdef uint64_t order[2]
        out = np.zeros(count, dtype=ID_DTYPE)
        cdef uint64_t[:, ::1] ids = out.view(np.uint64).reshape(-1, 2)
        for k in range(count):
            terms = self.merchants.terms_of(m[k, 0], m[k, 1])
            if terms == NULL:
                continue
            merchant[0], merchant[1], payer[0], payer[1], order[0], order[1] = m[k, 0], m[k, 1], u[k, 0], u[k, 1], o[k, 0], o[k, 1]
            if award and terms.card_pack & CARD_PACK_AWARD:
                pair_id(b"cpon" if coupons else b"hold", &self.merchants.rows[terms.slot].award_stock_id_lo, payer,
                        order if coupons else NULL, &ids[k, 0])
            elif not award and terms.card_pack & CARD_PACK_MEMBERSHIP:
                pair_id(b"mbr_", merchant, payer, NULL, &ids[k, 0])
        return out

    def prefault(self):
        """Touch every page of the tables now (see Ledger.prefault). Returns bytes touched."""
        return (self.stocks.prefault() + self.coupons.prefault() + self.holdings.prefault() + self.members.prefault()
                + self.payments.prefault() + memory.touch_pages(self._arrays.values()))

    def snapshot(self):
        """The tables' state and the expiry heap as named NumPy views and scalars, for a
        checkpoint (they alias live memory)."""
        arrays, scalars = {}, {}
        for table in (self.stocks, self.coupons, self.holdings, self.members, self.payments):
            more_arrays, more_scalars = table.snapshot()
            arrays.update(more_arrays)
            scalars.update(more_scalars)
        arrays["stock_expiries"] = self._arrays["stock_expiries"][:self.expiry_heap.count]
        scalars.update(stock_expiry_count=self.expiry_heap.count, stock_open_count=self.open_count)
        return arrays, scalars

    def hash_parts(self):
        """The sums of every stock's, coupon's and holding's hash and their counts (nothing
        while no stock was ever created: a store without coupons hashes as before)."""
        if not self.stocks.records_total:
            return {"members": self.members.hash_part()} if self.members.records_total else {}
        parts = {"stocks": self.stocks.hash_part(), "coupons": self.coupons.hash_part(),
                 "holdings": self.holdings.hash_part(), "coupon_payments": self.payments.hash_part()}
        if self.members.records_total:  # (membership needs no stock)
            parts["members"] = self.members.hash_part()
        return parts

    def restore(self, arrays, scalars):
        """Load a snapshot into these empty tables (after the ledger's); rebuild the heap positions."""
        if (self.stocks.records_total or self.coupons.records_total or self.holdings.records_total
                or self.members.records_total or self.payments.records_total):
            raise RuntimeError("restore needs empty coupon tables")
        if "stocks_rows" not in arrays:
            return  # a checkpoint from before coupons: no stock was created
        for table in (self.stocks, self.coupons, self.holdings, self.members, self.payments):
            table.restore(arrays, scalars)
        cdef uint64_t n_e = scalars["stock_expiry_count"], i
        flat = np.frombuffer(arrays["stock_expiries"], dtype=EXPIRY_DTYPE)
        if flat.shape[0] != n_e:
            raise ValueError(f"snapshot's stock_expiries has {flat.shape[0]} records, says {n_e}")
        self._arrays["stock_expiries"][:n_e] = flat
        for i in range(n_e):
            if self.expiry_heap.items[i].entry >= self.stocks_max:
                raise ValueError("snapshot's stock expiry heap names a stock it does not hold")
            self.heap_positions[self.expiry_heap.items[i].entry] = <uint32_t> i
        self.expiry_heap.count = n_e
        self.open_count = scalars["stock_open_count"]

    # ---------------------------------------------------------------- the state machine

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        cdef uint32_t *results = <uint32_t *> out
        if operation == OPERATION_CREATE_STOCKS:
            for k in range(count):
                results[k] = self.create(&(<const tally_stock_create_t *> events)[k], base + k * LEGS_MAX)
        elif operation == OPERATION_GRANT_COUPONS:
            for k in range(count):
                results[k] = self.grant(&(<const tally_coupon_grant_t *> events)[k], base + k * LEGS_MAX)
        else:
            for k in range(count):
                results[k] = self.pay(&(<const tally_coupon_pay_t *> events)[k], base + k * LEGS_MAX)
        tally_store_fence()

    cdef uint64_t ends_due(self, uint64_t at_ts) noexcept nogil:
        """Active stocks ended by ``at_ts``, at most START_LEGS_MAX."""
        return heap_count_due(&self.expiry_heap, at_ts, START_LEGS_MAX)

    cdef void end_due(self, uint64_t first_ts, uint64_t count) noexcept nogil:
        """End the ``count`` soonest ended stocks (ends_due counted them), the k-th at first_ts
        + k: what the redemptions left of the budget returns budget -> merchant."""
        cdef uint64_t k, leg_lo, leg_hi, ts, rest
        cdef uint32_t slot, merchant
        cdef tally_stock_t *s
        cdef chain_mark_t mark
        cdef result_t r
        for k in range(count):
            tally_assert(self.expiry_heap.count > 0)
            slot = self.expiry_heap.items[0].entry
            s = &self.stock_rows[slot]
            ts = first_ts + k
            tally_assert(s.state == STOCK_ACTIVE and s.ends_at <= first_ts and s.redeemed < s.total_count)
            rest = s.face_value * (s.total_count - s.redeemed)
            merchant = idmap_get(&self.ledger.account_map.map, s.merchant_id_lo, s.merchant_id_hi)
            leg_id_of(s.id_lo, s.id_hi, OPERATION_CREATE_STOCKS, LEG_END, &leg_lo, &leg_hi)
            self.ledger.chain_begin(&mark)
            r = self.ledger.leg(leg_lo, leg_hi, self.stocks.slots[slot].aux, merchant, rest, s.ledger, CODE_COUPON,
                                0, s.id_lo, s.id_hi, ts)
            if r == R_TRANSFERS_LIMIT_REACHED:
                self.ledger.chain_abort(&mark)
                return  # a full ring (no cold tier): it stays due, for the next batch's start
            if r != R_OK:
                self.ledger.chain_abort(&mark)
                s.end_result = <uint16_t> r  # the rest stays in the budget account, for the operator
            self.ended(slot, ts)

    cdef void ended(self, uint32_t slot, uint64_t ts) noexcept nogil:
        """An active stock ends (every coupon redeemed, or its time is up): off the heap, free
        to leave memory."""
        self.stock_rows[slot].state = STOCK_ENDED
        if self.heap_positions[slot] != HEAP_POSITION_NONE:
            heap_remove(&self.expiry_heap, self.heap_positions[slot])
        table_set_pinned(self.stocks, slot, False)
        self.open_count -= 1
        self.stocks.touch(slot, ts)

    cdef result_t create(self, const tally_stock_create_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t merchant, budget, slot, per_user_max
        cdef uint64_t leg_lo, leg_hi, id_[2]
        cdef tally_stock_t *s
        cdef tally_stock_t new
        cdef chain_mark_t mark
        cdef result_t r
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = keyed_event_checks(e.flags, e.timestamp, e.reserved, sizeof(e.reserved), e.id_lo, e.id_hi, e.face_value,
                               e.ledger, e.out_stock_no)
        if r != R_OK:
            return r
        key_id_digest(b"stck", <const uint8_t *> &e.merchant_id_lo, e.out_stock_no, <uint8_t *> id_)
        if not ids_equal(id_[0], id_[1], e.id_lo, e.id_hi):
            return R_ID_MISMATCH
        per_user_max = e.per_user_max if e.per_user_max else 1
        slot = table_find(self.stocks, e.id_lo, e.id_hi)
        if slot != IDMAP_NOT_FOUND:  # a retry (or another stock with this out_stock_no)
            s = &self.stock_rows[slot]
            if (not ids_equal(s.budget_account_id_lo, s.budget_account_id_hi, e.budget_account_id_lo,
                              e.budget_account_id_hi)
                    or s.face_value != e.face_value or s.min_spend != e.min_spend or s.total_count != e.total_count
                    or s.per_user_max != per_user_max or s.coupon_valid_s != e.coupon_valid_s
                    or s.ledger != e.ledger or s.ends_at - s.timestamp != <uint64_t> e.valid_for_s * NS_PER_S):
                return R_EXISTS_WITH_DIFFERENT_FIELDS
            return R_EXISTS
        if e.total_count == 0 or e.total_count > STOCK_COUNT_MAX:
            return R_STOCK_COUNT_OUT_OF_RANGE
        if e.min_spend < e.face_value:
            return R_MIN_SPEND_BELOW_FACE
        if e.face_value > STOCK_BUDGET_MAX // e.total_count:
            return R_FACE_VALUE_OUT_OF_RANGE
        if e.valid_for_s == 0 or e.valid_for_s > STOCK_VALID_MAX_S or e.coupon_valid_s > e.valid_for_s:
            return R_EXPIRE_AFTER_OUT_OF_RANGE
        merchant = idmap_get(accounts, e.merchant_id_lo, e.merchant_id_hi)
        if merchant == IDMAP_NOT_FOUND:
            return R_MERCHANT_NOT_FOUND
        if self.ledger.hot[merchant].ledger != e.ledger:
            return R_CURRENCY_MISMATCH
        if product_account(self.ledger.hot[merchant].code):
            return R_PRODUCT_ACCOUNT  # (a budget's stocks' money, say)
        budget = idmap_get(accounts, e.budget_account_id_lo, e.budget_account_id_hi)
        if (budget == IDMAP_NOT_FOUND or budget == merchant or self.ledger.hot[budget].ledger != e.ledger
                or self.ledger.hot[budget].code != ACCOUNT_CODE_BUDGET):
            return R_BUDGET_ACCOUNT_INVALID
        if self.open_count >= self.open_max or self.stocks.free_count == 0:
            return R_STOCKS_LIMIT_REACHED
        leg_id_of(e.id_lo, e.id_hi, OPERATION_CREATE_STOCKS, 0, &leg_lo, &leg_hi)
        self.ledger.chain_begin(&mark)
        r = self.ledger.leg(leg_lo, leg_hi, merchant, budget, e.face_value * e.total_count, e.ledger, CODE_COUPON, 0,
                            e.id_lo, e.id_hi, ts)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        s = &new
        memset(s, 0, sizeof(tally_stock_t))
        s.id_lo = e.id_lo
        s.id_hi = e.id_hi
        s.merchant_id_lo = e.merchant_id_lo
        s.merchant_id_hi = e.merchant_id_hi
        s.budget_account_id_lo = e.budget_account_id_lo
        s.budget_account_id_hi = e.budget_account_id_hi
        s.face_value = e.face_value
        s.min_spend = e.min_spend
        s.ends_at = ts + <uint64_t> e.valid_for_s * NS_PER_S
        s.total_count = e.total_count
        s.per_user_max = per_user_max
        s.coupon_valid_s = e.coupon_valid_s
        s.ledger = e.ledger
        s.state = STOCK_ACTIVE
        s.timestamp = ts
        slot = self.stocks.insert(s, budget, ts)
        table_set_pinned(self.stocks, slot, True)
        self.open_count += 1
        heap_push(&self.expiry_heap, s.ends_at, ts, slot)
        return R_OK

    cdef result_t grant(self, const tally_coupon_grant_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t stock_slot, user, slot
        cdef uint64_t id_[2]
        cdef tally_stock_t *s
        cdef result_t r
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.reserved_a != 0:
            return R_RESERVED_FIELD
        if e.flags != 0:
            return R_RESERVED_FLAG
        if ((e.id_lo == 0 and e.id_hi == 0) or (e.stock_id_lo == 0 and e.stock_id_hi == 0)
                or (e.request_id_lo == 0 and e.request_id_hi == 0)):
            return R_ID_MUST_NOT_BE_ZERO
        if e.channel != COUPON_CHANNEL_SCAN and e.channel != COUPON_CHANNEL_API:
            return R_CHANNEL_INVALID
        pair_id(b"cpon", &e.stock_id_lo, &e.user_id_lo, &e.request_id_lo, id_)
        if not ids_equal(id_[0], id_[1], e.id_lo, e.id_hi):
            return R_ID_MISMATCH
        slot = table_find(self.coupons, e.id_lo, e.id_hi)
        if slot != IDMAP_NOT_FOUND:  # a retry: the id holds the stock, the user and the request
            return R_EXISTS if self.coupon_rows[slot].channel == e.channel else R_EXISTS_WITH_DIFFERENT_FIELDS
        stock_slot = table_find(self.stocks, e.stock_id_lo, e.stock_id_hi)
        if stock_slot == IDMAP_NOT_FOUND:
            return R_STOCK_NOT_FOUND
        s = &self.stock_rows[stock_slot]
        if not ids_equal(s.merchant_id_lo, s.merchant_id_hi, e.merchant_id_lo, e.merchant_id_hi):
            return R_MERCHANT_MISMATCH
        user = idmap_get(&self.ledger.account_map.map, e.user_id_lo, e.user_id_hi)
        if user == IDMAP_NOT_FOUND:
            return R_USER_NOT_FOUND
        if self.ledger.hot[user].ledger != s.ledger:
            return R_CURRENCY_MISMATCH
        if product_account(self.ledger.hot[user].code):
            return R_PRODUCT_ACCOUNT
        return self.issue(stock_slot, id_, &e.user_id_lo, &e.request_id_lo, user, e.channel, ts)

    cdef result_t issue(self, uint32_t stock_slot, const uint64_t *coupon_id, const uint64_t *user_id,
                        const uint64_t *request_id, uint32_t user, uint8_t channel, uint64_t ts) noexcept nogil:
        """A coupon of the stock into a user's card pack (by a grant, or awarded by a payment),
        if the stock is active, has one left, and the user is under its cap."""
        cdef uint32_t holding_slot
        cdef uint64_t holding_id[2]
        cdef uint64_t expires_at
        cdef tally_stock_t *s = &self.stock_rows[stock_slot]
        cdef tally_coupon_t *c
        cdef tally_coupon_t new
        cdef tally_holding_t *h
        cdef tally_holding_t new_holding
        if s.ends_at <= ts:  # by the clock (a stock every coupon of which was redeemed is exhausted)
            return R_STOCK_ENDED
        if <uint64_t> s.issued_scan + s.issued_api + s.issued_pay_and_get >= s.total_count:
            return R_STOCK_EXHAUSTED
        pair_id(b"hold", &s.id_lo, user_id, NULL, holding_id)
        holding_slot = table_find(self.holdings, holding_id[0], holding_id[1])
        if holding_slot != IDMAP_NOT_FOUND and self.holding_rows[holding_slot].received >= s.per_user_max:
            return R_PER_USER_LIMIT_REACHED
        if self.coupons.free_count == 0 or (holding_slot == IDMAP_NOT_FOUND and self.holdings.free_count == 0):
            return R_COUPONS_LIMIT_REACHED
        expires_at = s.ends_at
        if s.coupon_valid_s and ts + <uint64_t> s.coupon_valid_s * NS_PER_S < expires_at:
            expires_at = ts + <uint64_t> s.coupon_valid_s * NS_PER_S
        c = &new
        memset(c, 0, sizeof(tally_coupon_t))
        memcpy(&c.id_lo, coupon_id, 16)
        c.stock_id_lo = s.id_lo
        c.stock_id_hi = s.id_hi
        memcpy(&c.user_id_lo, user_id, 16)
        memcpy(&c.request_id_lo, request_id, 16)
        c.expires_at = expires_at
        c.channel = channel
        c.state = COUPON_AVAILABLE
        c.timestamp = ts
        self.coupons.insert(c, user, ts)
        if holding_slot == IDMAP_NOT_FOUND:
            h = &new_holding
            memset(h, 0, sizeof(tally_holding_t))
            h.id_lo = holding_id[0]
            h.id_hi = holding_id[1]
            h.stock_id_lo = s.id_lo
            h.stock_id_hi = s.id_hi
            memcpy(&h.user_id_lo, user_id, 16)
            h.received = 1
            h.timestamp = ts
            self.holdings.insert(h, user, ts)
            s.receivers += 1
        else:
            self.holding_rows[holding_slot].received += 1
            self.holdings.touch(holding_slot, ts)
        if channel == COUPON_CHANNEL_SCAN:
            s.issued_scan += 1
        elif channel == COUPON_CHANNEL_API:
            s.issued_api += 1
        else:
            s.issued_pay_and_get += 1
        self.stocks.touch(stock_slot, ts)
        return R_OK

    cdef void after_payment(self, const tally_order_t *o, const merchant_terms_t *terms, uint64_t ts) noexcept nogil:
        """A payment at a merchant whose terms ask for the card pack went through (its legs are
        made): pay and get (a coupon of the merchant's award stock, if the payment is large
        enough and the stock has one for the payer: otherwise none, the payment stands), and the
        payer's visit on the merchant's membership card."""
        cdef const tally_merchant_t *row = &self.merchants.rows[terms.slot]
        cdef uint32_t stock_slot, payer
        cdef uint64_t coupon_id[2]
        if terms.card_pack & CARD_PACK_AWARD and o.amount >= row.award_min_amount:
            stock_slot = table_find(self.stocks, row.award_stock_id_lo, row.award_stock_id_hi)
            payer = idmap_get(&self.ledger.account_map.map, o.payer_id_lo, o.payer_id_hi)
            if (stock_slot != IDMAP_NOT_FOUND and payer != IDMAP_NOT_FOUND
                    and ids_equal(self.stock_rows[stock_slot].merchant_id_lo, self.stock_rows[stock_slot].merchant_id_hi,
                                  o.merchant_id_lo, o.merchant_id_hi)
                    and self.ledger.hot[payer].ledger == self.stock_rows[stock_slot].ledger):
                # The order's id is the request: one coupon per payment, whatever retries.
                pair_id(b"cpon", &row.award_stock_id_lo, &o.payer_id_lo, &o.id_lo, coupon_id)
                if table_find(self.coupons, coupon_id[0], coupon_id[1]) == IDMAP_NOT_FOUND:
                    self.issue(stock_slot, coupon_id, &o.payer_id_lo, &o.id_lo, payer, COUPON_CHANNEL_PAY_AND_GET, ts)
        if terms.card_pack & CARD_PACK_MEMBERSHIP:
            self.visit(&o.merchant_id_lo, &o.payer_id_lo, o.amount, ts)

    cdef void visit(self, const uint64_t *merchant_id, const uint64_t *user_id, uint64_t amount, uint64_t ts) noexcept nogil:
        """A payment on the merchant's membership card: the first joins (a record, if the
        table has room), each adds a visit, the spend and its points (1 per 100 minor units)."""
        cdef uint64_t member_id[2]
        cdef uint32_t slot
        cdef tally_member_t *m
        cdef tally_member_t new
        pair_id(b"mbr_", merchant_id, user_id, NULL, member_id)
        slot = table_find(self.members, member_id[0], member_id[1])
        if slot != IDMAP_NOT_FOUND:
            m = &self.member_rows[slot]
            m.visits += 1
            m.spend += amount
            m.points += amount // 100
            m.last_visit_at = ts
            self.members.touch(slot, ts)
            return
        if self.members.free_count == 0:
            return  # (a store always has room: it loads and evicts for the batch)
        m = &new
        memset(m, 0, sizeof(tally_member_t))
        m.id_lo = member_id[0]
        m.id_hi = member_id[1]
        memcpy(&m.merchant_id_lo, merchant_id, 16)
        memcpy(&m.user_id_lo, user_id, 16)
        m.visits = 1
        m.spend = amount
        m.points = amount // 100
        m.last_visit_at = ts
        m.timestamp = ts
        self.members.insert(m, 0, ts)

    cdef result_t pay(self, const tally_coupon_pay_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t slot, stock_slot, holding_slot, payer, merchant
        cdef uint64_t payment_id[2]
        cdef uint64_t holding_id[2]
        cdef uint64_t leg_lo, leg_hi
        cdef tally_coupon_t *c
        cdef tally_stock_t *s
        cdef tally_holding_t *h
        cdef tally_coupon_payment_t *x
        cdef tally_coupon_payment_t new_payment
        cdef uint32_t payment_slot
        cdef const merchant_terms_t *terms
        cdef chain_mark_t mark
        cdef result_t r = R_OK
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.flags != 0:
            return R_RESERVED_FLAG
        if (e.coupon_id_lo == 0 and e.coupon_id_hi == 0) or (e.request_id_lo == 0 and e.request_id_hi == 0):
            return R_ID_MUST_NOT_BE_ZERO
        if e.price == 0:
            return R_AMOUNT_MUST_NOT_BE_ZERO
        if e.ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        pair_id(b"cpay", &e.payer_id_lo, &e.request_id_lo, NULL, payment_id)
        payment_slot = table_find(self.payments, payment_id[0], payment_id[1])
        if payment_slot != IDMAP_NOT_FOUND:  # a retry of the request (whatever its coupon since)
            x = &self.payment_rows[payment_slot]
            if (ids_equal(x.coupon_id_lo, x.coupon_id_hi, e.coupon_id_lo, e.coupon_id_hi) and x.price == e.price
                    and ids_equal(x.merchant_id_lo, x.merchant_id_hi, e.merchant_id_lo, e.merchant_id_hi)
                    and ids_equal(x.stock_id_lo, x.stock_id_hi, e.stock_id_lo, e.stock_id_hi) and x.ledger == e.ledger):
                return R_EXISTS
            return R_EXISTS_WITH_DIFFERENT_FIELDS
        slot = table_find(self.coupons, e.coupon_id_lo, e.coupon_id_hi)
        if slot == IDMAP_NOT_FOUND:
            return R_COUPON_NOT_FOUND
        c = &self.coupon_rows[slot]
        if (not ids_equal(c.user_id_lo, c.user_id_hi, e.payer_id_lo, e.payer_id_hi)
                or not ids_equal(c.stock_id_lo, c.stock_id_hi, e.stock_id_lo, e.stock_id_hi)):
            return R_COUPON_MISMATCH
        stock_slot = table_find(self.stocks, e.stock_id_lo, e.stock_id_hi)
        if stock_slot == IDMAP_NOT_FOUND:
            return R_STOCK_NOT_FOUND
        s = &self.stock_rows[stock_slot]
        if not ids_equal(s.merchant_id_lo, s.merchant_id_hi, e.merchant_id_lo, e.merchant_id_hi):
            return R_MERCHANT_MISMATCH
        if c.state == COUPON_REDEEMED:  # by another request (this one's record was found above)
            return R_COUPON_REDEEMED
        if c.expires_at <= ts or s.state != STOCK_ACTIVE:
            return R_COUPON_EXPIRED
        if e.price < s.min_spend:
            return R_BELOW_MIN_SPEND
        payer = idmap_get(accounts, e.payer_id_lo, e.payer_id_hi)
        merchant = idmap_get(accounts, e.merchant_id_lo, e.merchant_id_hi)
        tally_assert(payer != IDMAP_NOT_FOUND and merchant != IDMAP_NOT_FOUND)  # a coupon's user and a stock's merchant
        if e.ledger != s.ledger or self.ledger.hot[payer].ledger != s.ledger:
            return R_CURRENCY_MISMATCH
        pair_id(b"hold", &e.stock_id_lo, &e.payer_id_lo, NULL, holding_id)
        holding_slot = table_find(self.holdings, holding_id[0], holding_id[1])
        tally_assert(holding_slot != IDMAP_NOT_FOUND)  # the store loads it with the batch
        if holding_slot == IDMAP_NOT_FOUND:
            return R_COUPON_NOT_FOUND
        if self.payments.free_count == 0:
            return R_COUPONS_LIMIT_REACHED
        # The legs: the user pays the price less the face, the budget the face.
        self.ledger.chain_begin(&mark)
        if e.price > s.face_value:
            leg_id_of(payment_id[0], payment_id[1], OPERATION_PAY_WITH_COUPON, 0, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, payer, merchant, e.price - s.face_value, s.ledger, CODE_PAYMENT, 0,
                                e.coupon_id_lo, e.coupon_id_hi, ts)
        if r == R_OK:
            leg_id_of(payment_id[0], payment_id[1], OPERATION_PAY_WITH_COUPON, 1, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, self.stocks.slots[stock_slot].aux, merchant, s.face_value, s.ledger,
                                CODE_COUPON, 0, e.coupon_id_lo, e.coupon_id_hi, ts + 1)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        x = &new_payment
        memset(x, 0, sizeof(tally_coupon_payment_t))
        x.id_lo = payment_id[0]
        x.id_hi = payment_id[1]
        x.payer_id_lo = e.payer_id_lo
        x.payer_id_hi = e.payer_id_hi
        x.merchant_id_lo = e.merchant_id_lo
        x.merchant_id_hi = e.merchant_id_hi
        x.coupon_id_lo = e.coupon_id_lo
        x.coupon_id_hi = e.coupon_id_hi
        x.stock_id_lo = e.stock_id_lo
        x.stock_id_hi = e.stock_id_hi
        x.request_id_lo = e.request_id_lo
        x.request_id_hi = e.request_id_hi
        x.price = e.price
        x.face_value = s.face_value
        x.ledger = e.ledger
        x.timestamp = ts
        self.payments.insert(x, payer, ts)
        c.state = COUPON_REDEEMED
        c.payment_id_lo = payment_id[0]
        c.payment_id_hi = payment_id[1]
        c.price = e.price
        c.redeemed_at = ts
        self.coupons.touch(slot, ts)
        h = &self.holding_rows[holding_slot]
        h.redeemed += 1
        self.holdings.touch(holding_slot, ts)
        s.redeemed += 1
        if h.redeemed == 2:
            s.repeat_buyers += 1
        if s.redeemed == s.total_count:
            self.ended(stock_slot, ts)  # the whole budget is used: nothing returns
        else:
            self.stocks.touch(stock_slot, ts)
        terms = self.merchants.terms_of(e.merchant_id_lo, e.merchant_id_hi)
        if terms != NULL and terms.card_pack & CARD_PACK_MEMBERSHIP:
            self.visit(&e.merchant_id_lo, &e.payer_id_lo, e.price, ts)
        return R_OK


cdef uint64_t _ends_due(void *owner, uint64_t at_ts) noexcept nogil:
    return (<Coupons> owner).ends_due(at_ts)


cdef void _end_due(void *owner, uint64_t first_ts, uint64_t count) noexcept nogil:
    (<Coupons> owner).end_due(first_ts, count)


cdef void _after_payment(void *owner, const tally_order_t *o, const merchant_terms_t *terms, uint64_t ts) noexcept nogil:
    (<Coupons> owner).after_payment(o, terms, ts)


cdef inline void *_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]
