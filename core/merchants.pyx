# cython: boundscheck=False, wraparound=False
"""Merchants' terms: fee rate, fee account, settlement account (docs/products.md "Merchants
and fees").

``set_merchants`` (an admin's operation) creates or changes a merchant's terms; a payment of an
order then takes the fee at the rate in force, as a second leg merchant -> fee account in the
same chain (core/orders.pyx). Re-sending the same terms is ``exists`` and changes nothing.

>>> import core
>>> from core.machine import Machine
>>> m = Machine(accounts_max=8, transfers_hot_max=64, secret=bytes(32))
>>> _ = m.apply(1, core.accounts_from_dicts([{"id": 7, "ledger": 156, "code": 2}, {"id": 9, "ledger": 156, "code": 5}]), 1)
>>> terms = core.records_from_dicts([{"merchant_id": 7, "fee_account_id": 9, "fee_bps": 60, "ledger": 156}], core.MERCHANT_DTYPE)
>>> [core.Result(code).name for code in m.apply(104, terms, 2)]
['ok']
"""

import numpy as np

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp

from core.idmap cimport IDMAP_NOT_FOUND, IdMap, idmap_get, idmap_put, idmap_t
from core.ledger cimport INDEX_NONE, LEGS_MAX, Ledger
from core.product cimport Product
from core.records cimport *  # result_t codes, tally_merchant_t, tally_store_fence

from core import constants, memory
from core.checkpoint import RAW
from core.records import MERCHANT_DTYPE, SETTLEMENT_DTYPE




#: The checkpoint arrays the merchants declare (core/checkpoint.py): copied whole between batches.
CHECKPOINT_ARRAYS = {"merchants": RAW, "merchant_books": RAW, "settlements": RAW}
BOOK_DTYPE = np.dtype([(name, "<u8") for name in (
    "window", "closed_newest", "settled_through", "open_paid", "open_refunded", "open_fees", "open_fees_returned",
    "closed_paid", "closed_refunded", "closed_fees", "closed_fees_returned", "_pad")])
TERMS_DTYPE = np.dtype([("fee_index", "<u4"), ("settlement_index", "<u4"), ("fee_bps", "<u2"), ("card_pack", "<u2"),
                        ("slot", "<u4")])


cdef class Merchants(Product):
    """The merchants' terms of a ledger; ``merchants_max`` of them (128 + 16 bytes each, and
    their index), past which ``set_merchants`` answers ``merchants_limit_reached``."""

    def __cinit__(self, Ledger ledger not None, uint64_t merchants_max=constants.MERCHANTS_MAX_DEFAULT):
        if not 1 <= merchants_max <= constants.MERCHANTS_MAX_LIMIT:
            raise ValueError(f"merchants_max must be in 1..{constants.MERCHANTS_MAX_LIMIT}")
        self.ledger = ledger
        self.component = "merchants"
        self.merchants_max = self.merchants_limit = merchants_max
        self.merchant_map = IdMap(merchants_max)
        a = self._arrays = {"merchants": np.zeros(merchants_max, dtype=MERCHANT_DTYPE),
                            "terms": np.zeros(merchants_max, dtype=TERMS_DTYPE),
                            "merchant_books": np.zeros(merchants_max, dtype=BOOK_DTYPE),
                            "settlements": np.zeros(merchants_max, dtype=SETTLEMENT_DTYPE)}
        self.rows = <tally_merchant_t *> _ptr(a["merchants"])
        self.terms = <merchant_terms_t *> _ptr(a["terms"])
        self.books = <merchant_book_t *> _ptr(a["merchant_books"])
        self.settlements = <tally_settlement_t *> _ptr(a["settlements"])
        self.window_ns = <uint64_t> constants.SETTLEMENT_WINDOW_S * 1000000000
        if sizeof(merchant_terms_t) != TERMS_DTYPE.itemsize or sizeof(merchant_book_t) != BOOK_DTYPE.itemsize:
            raise ImportError("merchants.pxd's structs and their dtypes disagree")

    def prefault(self):
        """Touch every page of the table now (see Ledger.prefault). Returns bytes touched."""
        return memory.touch_pages(self._arrays.values()) + self.merchant_map.prefault()

    def lookup_merchants(self, ids):
        """The terms of these merchant accounts (ints or an ID_DTYPE array), in order; merchants
        with no terms are left out."""
        return self._arrays["merchants"][self.merchant_map.indexes_of(ids)]

    def lookup_settlements(self, ids):
        """The last settlement of each of these merchants (ints or an ID_DTYPE array) that has
        one, in order."""
        found = self._arrays["settlements"][self.merchant_map.indexes_of(ids)]
        return found[found["timestamp"] != 0]

    def list_merchants(self, uint64_t offset, uint64_t limit):
        """Merchants' terms in the order they were first set: ``limit`` from ``offset``."""
        return self._arrays["merchants"][min(offset, self.merchant_count):min(offset + limit, self.merchant_count)].copy()

    def book_rows(self):
        """Each merchant's book (BOOK_DTYPE), in the order of ``list_merchants``."""
        return self._arrays["merchant_books"][:self.merchant_count].copy()

    # -- checkpoints and the state hash

    def snapshot(self):
        """The terms as set (the resolved indexes are rebuilt at restore) and the count."""
        n = self.merchant_count
        return ({name: self._arrays[name][:n] for name in CHECKPOINT_ARRAYS}, {"merchant_count": n})

    def hash_parts(self):
        """Every merchant's terms, in the order they were first set (nothing while none is)."""
        n = self.merchant_count
        return {name: self._arrays[name][:n] for name in CHECKPOINT_ARRAYS} if n else {}

    def restore(self, arrays, scalars):
        """Load a snapshot into this empty table (after the ledger's: accounts are resolved)."""
        if self.merchant_count:
            raise RuntimeError("restore needs an empty merchant table")
        cdef uint64_t n = scalars["merchant_count"], i
        rows = np.frombuffer(arrays["merchants"], dtype=MERCHANT_DTYPE)
        if n > self.merchants_max or rows.shape[0] != n:
            raise ValueError(f"snapshot holds {rows.shape[0]} merchants, says {n}; this table takes {self.merchants_max}")
        self._arrays["merchants"][:n] = rows
        for name in ("merchant_books", "settlements"):
            more = np.frombuffer(arrays[name], dtype=self._arrays[name].dtype)
            if more.shape[0] != n:
                raise ValueError(f"snapshot's {name} has {more.shape[0]} records, not {n}")
            self._arrays[name][:n] = more
        for i in range(n):
            if idmap_put(&self.merchant_map.map, self.rows[i].merchant_id_lo, self.rows[i].merchant_id_hi,
                         <uint32_t> i) != 0:
                raise RuntimeError("merchant map full while restoring")
            if not self.resolve(&self.rows[i], &self.terms[i]):
                raise ValueError("a merchant's accounts are missing from the ledger restored with it")
            self.terms[i].slot = <uint32_t> i
        self.merchant_count = n

    # ---------------------------------------------------------------- the state machine

    cdef bint resolve(self, const tally_merchant_t *e, merchant_terms_t *out) noexcept nogil:
        """The dense indexes of a merchant's fee and settlement accounts; False if one is missing."""
        cdef idmap_t *accounts = &self.ledger.account_map.map
        out.fee_index = idmap_get(accounts, e.fee_account_id_lo, e.fee_account_id_hi)
        out.settlement_index = INDEX_NONE
        if e.settlement_account_id_lo != 0 or e.settlement_account_id_hi != 0:
            out.settlement_index = idmap_get(accounts, e.settlement_account_id_lo, e.settlement_account_id_hi)
            if out.settlement_index == IDMAP_NOT_FOUND:
                return False
        out.fee_bps = e.fee_bps
        out.card_pack = ((CARD_PACK_MEMBERSHIP if e.flags & MERCHANT_MEMBERSHIP else 0)
                         | (CARD_PACK_AWARD if e.award_stock_id_lo != 0 or e.award_stock_id_hi != 0 else 0))
        out.slot = 0
        return out.fee_index != IDMAP_NOT_FOUND

    cdef const merchant_terms_t *terms_of(self, uint64_t lo, uint64_t hi) noexcept nogil:
        """A merchant's terms, or NULL when none were set (no fee is taken)."""
        cdef uint32_t slot = idmap_get(&self.merchant_map.map, lo, hi) if self.merchant_count else IDMAP_NOT_FOUND
        return NULL if slot == IDMAP_NOT_FOUND else &self.terms[slot]

    cdef uint32_t slot_of(self, uint64_t lo, uint64_t hi) noexcept nogil:
        """A merchant's slot, or IDMAP_NOT_FOUND when it has no terms."""
        return idmap_get(&self.merchant_map.map, lo, hi) if self.merchant_count else IDMAP_NOT_FOUND

    cdef void book(self, const merchant_terms_t *terms, uint64_t ts, uint64_t paid, uint64_t refunded, uint64_t fees,
                   uint64_t fees_returned) noexcept nogil:
        """Count a sale's amounts (a payment's or a refund's) in its merchant's book, in the
        window of ``ts``. Sums stay below the merchant account's credits, so never overflow."""
        cdef merchant_book_t *b = &self.books[terms - self.terms]
        book_roll(b, ts // self.window_ns)
        b.open_paid += paid
        b.open_refunded += refunded
        b.open_fees += fees
        b.open_fees_returned += fees_returned

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        for k in range(count):
            (<uint32_t *> out)[k] = self.set_merchant(&(<const tally_merchant_t *> events)[k], base + k * LEGS_MAX)
        tally_store_fence()

    cdef result_t set_merchant(self, const tally_merchant_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t merchant, fee, settlement = INDEX_NONE, slot
        cdef idmap_t *accounts = &self.ledger.account_map.map
        cdef uint64_t i
        cdef merchant_terms_t resolved
        cdef tally_merchant_t row
        if e.timestamp != 0:
            return R_TIMESTAMP_MUST_BE_ZERO
        for i in range(sizeof(e.reserved)):
            if e.reserved[i]:
                return R_RESERVED_FIELD
        if e.flags & ~(<uint16_t> MERCHANT_FLAGS_KNOWN):
            return R_RESERVED_FLAG
        if e.merchant_id_lo == 0 and e.merchant_id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if e.ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        if e.fee_bps > FEE_BPS_MAX:
            return R_FEE_RATE_OUT_OF_RANGE
        merchant = idmap_get(accounts, e.merchant_id_lo, e.merchant_id_hi)
        if merchant == IDMAP_NOT_FOUND:
            return R_MERCHANT_NOT_FOUND
        fee = idmap_get(accounts, e.fee_account_id_lo, e.fee_account_id_hi)
        if fee == IDMAP_NOT_FOUND:
            return R_FEE_ACCOUNT_NOT_FOUND
        if fee == merchant:
            return R_ACCOUNTS_MUST_BE_DIFFERENT
        if e.settlement_account_id_lo != 0 or e.settlement_account_id_hi != 0:
            settlement = idmap_get(accounts, e.settlement_account_id_lo, e.settlement_account_id_hi)
            if settlement == IDMAP_NOT_FOUND:
                return R_SETTLEMENT_ACCOUNT_NOT_FOUND
            if settlement == merchant:
                return R_ACCOUNTS_MUST_BE_DIFFERENT
        if (self.ledger.hot[merchant].ledger != e.ledger or self.ledger.hot[fee].ledger != e.ledger
                or (settlement != INDEX_NONE and self.ledger.hot[settlement].ledger != e.ledger)):
            return R_CURRENCY_MISMATCH
        row = e[0]
        row.timestamp = ts
        slot = idmap_get(&self.merchant_map.map, e.merchant_id_lo, e.merchant_id_hi) if self.merchant_count else IDMAP_NOT_FOUND
        if slot != IDMAP_NOT_FOUND:
            row.timestamp = self.rows[slot].timestamp
            if memcmp(&row, &self.rows[slot], sizeof(tally_merchant_t)) == 0:
                return R_EXISTS  # the same terms again: a retry
            row.timestamp = ts  # new terms, in force from now
        else:
            if self.merchant_count >= self.merchants_limit:
                return R_MERCHANTS_LIMIT_REACHED
            slot = <uint32_t> self.merchant_count
            if idmap_put(&self.merchant_map.map, e.merchant_id_lo, e.merchant_id_hi, slot) != 0:
                return R_MERCHANTS_LIMIT_REACHED  # unreachable: the map holds merchants_max ids
            self.merchant_count += 1
        self.resolve(&row, &resolved)
        resolved.slot = slot
        self.rows[slot] = row
        self.terms[slot] = resolved
        return R_OK


cdef inline void *_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]
