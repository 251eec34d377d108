# cython: boundscheck=False, wraparound=False
"""User-presented payment codes: issue, charge, confirm, look up, expire (docs/products.md
"Payment codes (built)").

The wallet is issued a one-time 18-digit code (``issue_codes``), valid 60 s, one live code per
wallet; a merchant's POS charges it once (``charge_codes``), which creates an order of the
merchant's (core/orders' table) paid by the code's wallet. Above the wallet's no-password
threshold the charge is held: a pending leg wallet -> merchant with the ledger's own 45 s
timeout, the order ``USERPAYING`` until the user confirms or declines (``confirm_charges``),
the merchant revokes it (``close_orders``) or the clock ends it. Each batch is one C loop over
its records: no Python object per event.

>>> from core.codes import code_valid
>>> code_valid(100000000000000000), code_valid(160000000000000000), code_valid(99999999999999999)
(True, False, False)
"""

import numpy as np

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from core.digest cimport hmac_key_init, hmac_sha256, order_id_digest
from core.expiry cimport HEAP_POSITION_NONE, expiry_t, heap_push, heap_remove
from core.idmap cimport IDMAP_NOT_FOUND, idmap_get, idmap_t
from core.ledger cimport LEGS_MAX, Ledger, chain_mark_t
from core.merchants cimport Merchants, fee_of, merchant_terms_t
from core.orders cimport (
    OPERATION_CHARGE_CODES, TRANSFER_CODE_ORDER_FEE, TRANSFER_CODE_ORDER_PAYMENT, Orders, card_pack_after,
    keyed_event_checks, leg_id_of,
)
from core.product cimport Product, all_zero, event_prologue
from core.table cimport Table, table_find, table_set_pinned
from core.records cimport *  # result_t codes, records, order and code states

from core import constants, memory, table as table_module
from core.checkpoint import RAW
from core.operations import Operation
from core.orders import EXPIRY_DTYPE, SECRET_BYTES, room_reserved
from core.records import CODE_DTYPE, ID_DTYPE, id_pairs

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

cdef extern from "assert.h" nogil:
    void tally_assert "assert"(bint)

cdef enum:
    NS_PER_S = 1000000000

cdef uint64_t CODE_RANGE = 10000000000000000ULL         # 10**16: the 16 digits after the prefix
cdef uint64_t CODE_MIN = 10 * CODE_RANGE                # prefix 10
cdef uint64_t CODE_END = 16 * CODE_RANGE                # past prefix 15
cdef uint64_t NS_PER_DAY = 86400ULL * NS_PER_S
cdef uint64_t CODE_VALID_NS = constants.CODE_VALID_S * NS_PER_S
cdef uint32_t CHARGE_HOLD_S = constants.CHARGE_HOLD_S
cdef uint64_t NO_PASSWORD_LIMIT_DEFAULT = constants.NO_PASSWORD_LIMIT_DEFAULT
cdef uint32_t FREE_PAYMENTS_PER_DAY_DEFAULT = constants.FREE_PAYMENTS_PER_DAY_DEFAULT

for _name, _number in (("issue_codes", OPERATION_ISSUE_CODES), ("charge_codes", OPERATION_CHARGE_CODES),
                       ("confirm_charges", OPERATION_CONFIRM_CHARGES)):
    if Operation[_name] != _number:
        raise ImportError(f"core/codes.pxd numbers {_name} {_number}, core/operations.py {int(Operation[_name])}")

#: Per wallet account: its live code and today's code payments (code_wallet_t).
CODE_WALLET_DTYPE = np.dtype([("live_code", "<u8"), ("day", "<u4"), ("payments_today", "<u4")])
#: The checkpoint arrays the codes declare (core/checkpoint.py).
CHECKPOINT_ARRAYS = dict(table_module.checkpoint_arrays("codes"), code_expiries=RAW, code_wallets=RAW)

if sizeof(code_wallet_t) != CODE_WALLET_DTYPE.itemsize:
    raise ImportError("code_wallet_t and CODE_WALLET_DTYPE disagree")


def code_valid(code: int) -> bool:
    """Whether ``code`` has the form of a payment code: 18 digits, the first two 10-15."""
    return CODE_MIN <= code < CODE_END


cdef inline bint ids_equal(uint64_t a_lo, uint64_t a_hi, uint64_t b_lo, uint64_t b_hi) noexcept nogil:
    return a_lo == b_lo and a_hi == b_hi


cdef class Codes(Product):
    """The payment codes of a ledger (docs/products.md "Payment codes (built)").

    ``codes_max`` codes are resident (128 bytes + 52 of bookkeeping each); a store evicts the
    others to its cold tier. Live codes stay resident: at most ``live_max`` (``codes_max`` less
    a batch's room), past which ``issue_codes`` answers ``codes_limit_reached``. ``secret``
    (the store's) keys the codes. Charges create orders in ``orders``' table; ``merchants``
    gives the fee rates.
    """

    def __cinit__(self, Ledger ledger not None, Orders orders not None, Merchants merchants not None,
                  uint64_t codes_max=constants.CODES_MAX_DEFAULT, bytes secret=None):
        if not 2 <= codes_max <= constants.CODES_MAX_LIMIT:
            raise ValueError(f"codes_max must be in 2..{constants.CODES_MAX_LIMIT}")
        if secret is None or len(secret) != SECRET_BYTES:
            raise ValueError(f"secret must be {SECRET_BYTES} bytes")
        self.ledger, self.orders, self.merchants = ledger, orders, merchants
        self.component = "codes"
        self.codes_max = codes_max
        self.live_max = codes_max - room_reserved(codes_max)
        self.table = Table(CODE_DTYPE, codes_max, "codes")
        self.table.pinned_max = self.live_max
        self.table.evict_hook = _forget_expiry
        self.table.evict_hook_owner = <void *> self
        self.rows = <tally_code_t *> self.table.rows
        a = self._arrays = {}
        a["code_expiries"] = np.zeros(codes_max, dtype=EXPIRY_DTYPE)
        a["heap_positions"] = np.full(codes_max, 0xFFFFFFFF, dtype=np.uint32)  # HEAP_POSITION_NONE
        a["code_wallets"] = np.zeros(ledger.accounts_max, dtype=CODE_WALLET_DTYPE)  # pages mapped when written
        self.wallets = <code_wallet_t *> _ptr(a["code_wallets"])
        self.heap_positions = <uint32_t *> _ptr(a["heap_positions"])
        self.expiry_heap.items = <expiry_t *> _ptr(a["code_expiries"])
        self.expiry_heap.count = 0
        self.expiry_heap.positions = <char *> self.heap_positions
        self.expiry_heap.stride = sizeof(uint32_t)
        hmac_key_init(&self.code_key, <const uint8_t *> secret, len(secret))
        ledger.add_begin_hook(_expire_at_batch_start, <void *> self)  # after the orders'

    def __dealloc__(self):
        if self.ledger is not None:
            self.ledger.remove_begin_hook(<void *> self)

    # ---------------------------------------------------------------- Python API (the boundary)

    @property
    def code_count(self):
        """Codes ever issued."""
        return self.table.records_total

    @property
    def next_expiry_ns(self):
        """Engine time (ns) at which the soonest live code expires; 0: none."""
        self.drop_resolved()
        return self.expiry_heap.items[0].expires_at if self.expiry_heap.count else 0

    def lookup_codes(self, ids):
        """The codes with these ids (ints or an ID_DTYPE array) that are resident or on their
        way to the cold tier, in order; the others are left out (a store looks them up cold)."""
        return self.table.lookup_found(ids)

    def wallet_state(self, account_index):
        """A wallet account's live code and today's code payments (tests and tools)."""
        return self._arrays["code_wallets"][account_index].copy()

    def payment_keys(self, operation, events):
        """Each charge's or confirm's merchant, payer and order, as (n, 2) uint64 arrays (see
        ``Orders.payment_keys``): a charge's merchant and its code's wallet (the code is
        resident: read first), a confirm's order's merchant and payer; 0 where not found."""
        words = np.ascontiguousarray(events).view(np.uint64).reshape(-1, 16)
        if operation == OPERATION_CONFIRM_CHARGES:
            rows, found = self.orders.table.lookup(words[:, 0:2].copy().view(ID_DTYPE).reshape(-1))
            merchants, payers = id_pairs(rows, "merchant_id"), id_pairs(rows, "payer_id")
        else:
            rows, found = self.table.lookup(words[:, 4:6].copy().view(ID_DTYPE).reshape(-1))
            merchants, payers = words[:, 2:4].copy(), id_pairs(rows, "wallet_id")
        merchants[~found] = 0
        return merchants, payers, words[:, 0:2]

    def derived_ids(self, operation, str table, events):
        """The code each ``issue_codes`` event would issue, as an ID_DTYPE array: what a store
        loads from the cold tier before the batch (a retry finds its code, a collision the other
        one)."""
        cdef const unsigned char[::1] raw = np.ascontiguousarray(events).view(np.uint8).reshape(-1)
        cdef uint64_t count = raw.shape[0] // sizeof(tally_code_issue_t), k
        out = np.zeros(count, dtype=ID_DTYPE)
        cdef uint64_t[:, ::1] ids = out.view(np.uint64).reshape(-1, 2)
        cdef const tally_code_issue_t *e = <const tally_code_issue_t *> &raw[0] if count else NULL
        with nogil:
            for k in range(count):
                ids[k, 0] = self.code_of(&e[k])
        return out

    def prefault(self):
        """Touch every page of the table now (see Ledger.prefault). Returns bytes touched."""
        return self.table.prefault() + memory.touch_pages(self._arrays.values())

    def snapshot(self):
        """The table's state as named NumPy views and scalars, for a checkpoint (they alias
        live memory): the wallets' part up to the ledger's accounts."""
        arrays, scalars = self.table.snapshot()
        arrays["code_expiries"] = self._arrays["code_expiries"][:self.expiry_heap.count]
        arrays["code_wallets"] = self._arrays["code_wallets"][:self.ledger.account_count]
        scalars.update(code_expiry_count=self.expiry_heap.count, code_live_count=self.live_count)
        return arrays, scalars

    def hash_parts(self):
        """The sum of every code's hash and their count, and the wallets' day counters
        (nothing while no code was ever issued: a store without codes hashes as before)."""
        if not self.table.records_total:
            return {}
        return {"codes": self.table.hash_part(),
                "code_wallets": self._arrays["code_wallets"][:self.ledger.account_count]}

    def restore(self, arrays, scalars):
        """Load a snapshot into this empty table (after the ledger's); rebuild the heap positions."""
        if self.table.records_total:
            raise RuntimeError("restore needs an empty code table")
        if "codes_rows" not in arrays:
            return  # a checkpoint from before payment codes: none was issued
        self.table.restore(arrays, scalars)
        cdef uint64_t n_e = scalars["code_expiry_count"], i
        flat = np.frombuffer(arrays["code_expiries"], dtype=EXPIRY_DTYPE)
        wallets = np.frombuffer(arrays["code_wallets"], dtype=CODE_WALLET_DTYPE)
        if flat.shape[0] != n_e:
            raise ValueError(f"snapshot's code_expiries has {flat.shape[0]} records, says {n_e}")
        if wallets.shape[0] > self.ledger.accounts_max:
            raise ValueError(f"snapshot's code_wallets has {wallets.shape[0]} records, the ledger takes fewer")
        self._arrays["code_expiries"][:n_e] = flat
        self._arrays["code_wallets"][:wallets.shape[0]] = wallets
        for i in range(n_e):
            if self.expiry_heap.items[i].entry >= self.codes_max:
                raise ValueError("snapshot's code expiry heap names a code it does not hold")
            self.heap_positions[self.expiry_heap.items[i].entry] = <uint32_t> i
        self.expiry_heap.count = n_e
        self.live_count = scalars["code_live_count"]

    # ---------------------------------------------------------------- the state machine

    cdef uint64_t code_of(self, const tally_code_issue_t *e) noexcept nogil:
        """HMAC(secret, "code" || wallet_id || request_id) as prefix 10-15 and 16 digits."""
        cdef uint8_t message[36]
        cdef uint8_t digest[32]
        cdef uint64_t a, b
        memcpy(message, b"code", 4)
        memcpy(message + 4, &e.wallet_id_lo, 16)
        memcpy(message + 20, &e.request_id_lo, 16)
        hmac_sha256(&self.code_key, message, 36, digest)
        memcpy(&a, digest, 8)
        memcpy(&b, digest + 8, 8)
        return (10 + a % 6) * CODE_RANGE + b % CODE_RANGE

    cdef void expire_due(self, uint64_t base_ts) noexcept nogil:
        # Versions no later than the ledger's last timestamp (see Orders.expire_due).
        cdef uint64_t version_ts = base_ts if base_ts <= self.ledger.last_timestamp else self.ledger.last_timestamp
        cdef uint32_t slot
        while self.expiry_heap.count and self.expiry_heap.items[0].expires_at <= base_ts:
            slot = self.expiry_heap.items[0].entry
            heap_remove(&self.expiry_heap, 0)
            if self.rows[slot].state == CODE_LIVE:
                self.code_ended(slot, CODE_EXPIRED, self.rows[slot].expires_at, version_ts)

    cdef void code_ended(self, uint32_t slot, uint8_t state, uint64_t ended_at, uint64_t ts) noexcept nogil:
        """A live code is charged, expires or is replaced (at ``ended_at``; the change's version
        time ``ts``): it may leave memory now."""
        cdef tally_code_t *c = &self.rows[slot]
        cdef code_wallet_t *w = &self.wallets[self.table.slots[slot].aux]
        c.state = state
        c.ended_at = ended_at
        if w.live_code == c.id_lo:
            w.live_code = 0
        table_set_pinned(self.table, slot, False)
        self.live_count -= 1
        self.table.touch(slot, ts)

    cdef void drop_resolved(self) noexcept nogil:
        """Pop the heap's soonest entries that are no longer live (no state changes)."""
        while self.expiry_heap.count and self.rows[self.expiry_heap.items[0].entry].state != CODE_LIVE:
            heap_remove(&self.expiry_heap, 0)

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        # (The batch's begin_batch has expired the due codes and orders: the ledger's begin hooks.)
        cdef uint64_t k
        cdef uint32_t *results = <uint32_t *> out
        cdef tally_code_issued_t *issued = <tally_code_issued_t *> out
        if operation == OPERATION_ISSUE_CODES:
            for k in range(count):
                issued[k].code = 0
                issued[k].result = self.issue(&(<const tally_code_issue_t *> events)[k], base + k * LEGS_MAX,
                                              &issued[k].code)
        elif operation == OPERATION_CHARGE_CODES:
            for k in range(count):
                results[k] = self.charge(&(<const tally_code_charge_t *> events)[k], base + k * LEGS_MAX)
        else:
            for k in range(count):
                results[k] = self.confirm(&(<const tally_code_confirm_t *> events)[k], base + k * LEGS_MAX)
        self.ledger.schedule_expiries()
        self.drop_resolved()
        self.orders.drop_resolved()
        tally_store_fence()

    cdef result_t issue(self, const tally_code_issue_t *e, uint64_t ts, uint64_t *code) noexcept nogil:
        cdef result_t r
        cdef uint32_t wallet, slot, old
        cdef uint64_t number, limit
        cdef uint32_t free_per_day
        cdef tally_code_t *c
        cdef tally_code_t new
        cdef code_wallet_t *w
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.flags != 0:
            return R_RESERVED_FLAG
        if e.request_id_lo == 0 and e.request_id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if e.ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        wallet = idmap_get(&self.ledger.account_map.map, e.wallet_id_lo, e.wallet_id_hi)
        if wallet == IDMAP_NOT_FOUND:
            return R_PAYER_NOT_FOUND
        if self.ledger.hot[wallet].ledger != e.ledger:
            return R_CURRENCY_MISMATCH
        limit = e.no_password_limit if e.no_password_limit else NO_PASSWORD_LIMIT_DEFAULT
        free_per_day = e.free_payments_per_day if e.free_payments_per_day else FREE_PAYMENTS_PER_DAY_DEFAULT
        number = self.code_of(e)
        slot = table_find(self.table, number, 0)
        if slot != IDMAP_NOT_FOUND:
            c = &self.rows[slot]
            if not (ids_equal(c.wallet_id_lo, c.wallet_id_hi, e.wallet_id_lo, e.wallet_id_hi)
                    and ids_equal(c.request_id_lo, c.request_id_hi, e.request_id_lo, e.request_id_hi)):
                return R_CODE_COLLISION
            if c.no_password_limit != limit or c.free_payments_per_day != free_per_day or c.ledger != e.ledger:
                return R_EXISTS_WITH_DIFFERENT_FIELDS
            code[0] = number
            return R_EXISTS
        if self.live_count >= self.live_max or self.table.free_count == 0:
            return R_CODES_LIMIT_REACHED
        w = &self.wallets[wallet]
        if w.live_code != 0:  # one live code per wallet: the older one is replaced
            old = table_find(self.table, w.live_code, 0)
            tally_assert(old != IDMAP_NOT_FOUND)  # live codes are pinned
            if old != IDMAP_NOT_FOUND:
                self.code_ended(old, CODE_REPLACED, ts, ts)
        c = &new
        memset(c, 0, sizeof(tally_code_t))
        c.id_lo = number
        c.wallet_id_lo = e.wallet_id_lo
        c.wallet_id_hi = e.wallet_id_hi
        c.request_id_lo = e.request_id_lo
        c.request_id_hi = e.request_id_hi
        c.no_password_limit = limit
        c.expires_at = ts + CODE_VALID_NS
        c.free_payments_per_day = free_per_day
        c.ledger = e.ledger
        c.state = CODE_LIVE
        c.timestamp = ts
        slot = self.table.insert(c, wallet, ts)
        table_set_pinned(self.table, slot, True)
        self.live_count += 1
        heap_push(&self.expiry_heap, c.expires_at, ts, slot)
        w.live_code = number
        code[0] = number
        return R_OK

    cdef result_t charge(self, const tally_code_charge_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t merchant, payer, slot, code_slot
        cdef uint64_t fee = 0, today, leg_lo, leg_hi
        cdef uint8_t digest[32]
        cdef bint held
        cdef tally_order_t *o
        cdef tally_order_t new
        cdef tally_code_t *c
        cdef code_wallet_t *w
        cdef const merchant_terms_t *terms
        cdef chain_mark_t mark
        cdef result_t r
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = keyed_event_checks(e.flags, e.timestamp, e.reserved, sizeof(e.reserved), e.order_id_lo, e.order_id_hi,
                               e.amount, e.ledger, e.out_trade_no)
        if r != R_OK:
            return r
        if e.code_hi != 0 or not (CODE_MIN <= e.code_lo < CODE_END):
            return R_CODE_INVALID
        merchant = idmap_get(accounts, e.merchant_id_lo, e.merchant_id_hi)
        if merchant == IDMAP_NOT_FOUND:
            return R_MERCHANT_NOT_FOUND
        if self.ledger.hot[merchant].ledger != e.ledger:
            return R_CURRENCY_MISMATCH
        order_id_digest(<const uint8_t *> &e.merchant_id_lo, e.out_trade_no, digest)
        if memcmp(digest, &e.order_id_lo, 16) != 0:
            return R_ID_MISMATCH
        slot = table_find(self.orders.table, e.order_id_lo, e.order_id_hi)
        if slot != IDMAP_NOT_FOUND:  # a retry (or another charge with this out_trade_no)
            o = &self.orders.rows[slot]
            if (o.kind != ORDER_KIND_CODE or memcmp(o.token, &e.code_lo, 8) != 0 or o.amount != e.amount
                    or not ids_equal(o.merchant_id_lo, o.merchant_id_hi, e.merchant_id_lo, e.merchant_id_hi)
                    or o.ledger != e.ledger or o.description_code != e.description_code):
                return R_EXISTS_WITH_DIFFERENT_FIELDS
            if o.state == ORDER_USERPAYING:  # (its time up, the hold is gone: the next batch start closes it)
                return R_ORDER_EXPIRED if o.expires_at <= ts else R_USER_PAYING
            if o.state == ORDER_CLOSED:
                return R_ORDER_EXPIRED if o.close_reason == CLOSE_REASON_TIMEOUT else R_ORDER_CLOSED
            return R_EXISTS
        code_slot = table_find(self.table, e.code_lo, 0)
        if code_slot == IDMAP_NOT_FOUND:
            return R_CODE_NOT_FOUND
        c = &self.rows[code_slot]
        if c.state == CODE_CHARGED:
            return R_CODE_USED
        if c.state == CODE_EXPIRED or c.expires_at <= ts:
            return R_CODE_EXPIRED
        if c.state == CODE_REPLACED:
            return R_CODE_REPLACED
        payer = self.table.slots[code_slot].aux
        if self.ledger.hot[payer].ledger != e.ledger:
            return R_CURRENCY_MISMATCH
        if payer == merchant:
            return R_ACCOUNTS_MUST_BE_DIFFERENT
        w = &self.wallets[payer]
        today = w.payments_today if w.day == ts // NS_PER_DAY else 0
        held = e.amount > c.no_password_limit or today >= c.free_payments_per_day
        if (held and self.orders.open_count >= self.orders.open_max) or self.orders.table.free_count == 0:
            return R_ORDERS_LIMIT_REACHED
        terms = self.merchants.terms_of(e.merchant_id_lo, e.merchant_id_hi)
        if not held and terms != NULL:
            fee = fee_of(e.amount, terms.fee_bps)
        # The legs: the payment (held: pending, expired by the ledger at the order's expiry).
        leg_id_of(e.order_id_lo, e.order_id_hi, OPERATION_CHARGE_CODES, 0, &leg_lo, &leg_hi)
        self.ledger.chain_begin(&mark)
        r = self.ledger.leg(leg_lo, leg_hi, payer, merchant, e.amount, e.ledger, TRANSFER_CODE_ORDER_PAYMENT,
                            TRANSFER_PENDING if held else 0, e.order_id_lo, e.order_id_hi, ts,
                            CHARGE_HOLD_S if held else 0)
        if r == R_OK and fee != 0:
            leg_id_of(e.order_id_lo, e.order_id_hi, OPERATION_CHARGE_CODES, 1, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, merchant, terms.fee_index, fee, e.ledger, TRANSFER_CODE_ORDER_FEE, 0,
                                e.order_id_lo, e.order_id_hi, ts + 1)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r  # the code stays live
        o = &new
        memset(o, 0, sizeof(tally_order_t))
        o.id_lo = e.order_id_lo
        o.id_hi = e.order_id_hi
        o.merchant_id_lo = e.merchant_id_lo
        o.merchant_id_hi = e.merchant_id_hi
        o.payer_id_lo = c.wallet_id_lo
        o.payer_id_hi = c.wallet_id_hi
        o.amount = e.amount
        # A held charge ends with its pending leg's timeout: the same instant (ledger expires_at_of).
        o.expires_at = ts + <uint64_t> CHARGE_HOLD_S * NS_PER_S if held else ts
        o.paid_at = 0 if held else ts
        memcpy(o.token, &e.code_lo, 8)
        o.state = ORDER_USERPAYING if held else ORDER_SUCCESS
        o.kind = ORDER_KIND_CODE
        o.ledger = e.ledger
        o.description_code = e.description_code
        o.fee = fee
        o.timestamp = ts
        slot = self.orders.insert_order(o, held)
        tally_assert(slot != IDMAP_NOT_FOUND)  # free_count was checked
        if fee != 0:
            self.orders.table.slots[slot].aux = terms.fee_index  # where its refunds take the fee back
        self.code_ended(code_slot, CODE_CHARGED, ts, ts)
        c.order_id_lo = e.order_id_lo
        c.order_id_hi = e.order_id_hi
        if held:
            return R_USER_PAYING
        count_payment(w, ts)
        if terms != NULL:
            self.merchants.book(terms, ts, e.amount, 0, fee, 0)
        card_pack_after(self.orders, &self.orders.rows[slot], terms, ts)
        return R_OK

    cdef result_t confirm(self, const tally_code_confirm_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t slot, payer, merchant
        cdef uint64_t fee = 0, leg_lo, leg_hi, pending_lo, pending_hi
        cdef bint decline = (e.flags & CONFIRM_DECLINE) != 0
        cdef tally_order_t *o
        cdef const merchant_terms_t *terms
        cdef chain_mark_t mark
        cdef result_t r
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.flags & ~(<uint16_t> CONFIRM_DECLINE):
            return R_RESERVED_FLAG
        if e.order_id_lo == 0 and e.order_id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        slot = table_find(self.orders.table, e.order_id_lo, e.order_id_hi)
        if slot == IDMAP_NOT_FOUND:
            return R_ORDER_NOT_FOUND
        o = &self.orders.rows[slot]
        if o.kind != ORDER_KIND_CODE:
            return R_ORDER_NOT_USER_PAYING
        if not ids_equal(o.payer_id_lo, o.payer_id_hi, e.wallet_id_lo, e.wallet_id_hi):
            return R_PAYER_MISMATCH
        if o.state == ORDER_SUCCESS or o.state == ORDER_REFUND:
            return R_ORDER_PAID if decline else R_EXISTS
        if o.state == ORDER_CLOSED:
            if o.close_reason == CLOSE_REASON_DECLINED and decline:
                return R_EXISTS
            return R_ORDER_EXPIRED if o.close_reason == CLOSE_REASON_TIMEOUT else R_ORDER_CLOSED
        if o.expires_at <= ts:
            return R_ORDER_EXPIRED  # its hold ended within this batch: the next batch closes it
        if decline:
            r = self.orders.void_hold(o, OPERATION_CONFIRM_CHARGES, ts)
            if r != R_OK:
                return r
            o.state = ORDER_CLOSED
            o.close_reason = CLOSE_REASON_DECLINED
            o.closed_at = ts
            self.orders.settled(slot, ts)
            return R_OK
        payer = idmap_get(accounts, o.payer_id_lo, o.payer_id_hi)
        merchant = idmap_get(accounts, o.merchant_id_lo, o.merchant_id_hi)
        terms = self.merchants.terms_of(o.merchant_id_lo, o.merchant_id_hi)
        if terms != NULL:
            fee = fee_of(o.amount, terms.fee_bps)
        leg_id_of(o.id_lo, o.id_hi, OPERATION_CHARGE_CODES, 0, &pending_lo, &pending_hi)
        leg_id_of(o.id_lo, o.id_hi, OPERATION_CONFIRM_CHARGES, 0, &leg_lo, &leg_hi)
        self.ledger.chain_begin(&mark)
        r = self.ledger.leg_resolve(leg_lo, leg_hi, pending_lo, pending_hi, True, ts)
        if r == R_OK and fee != 0:
            leg_id_of(o.id_lo, o.id_hi, OPERATION_CONFIRM_CHARGES, 1, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, merchant, terms.fee_index, fee, o.ledger, TRANSFER_CODE_ORDER_FEE, 0,
                                o.id_lo, o.id_hi, ts + 1)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        self.orders.mark_paid(slot, ts, fee, terms)
        count_payment(&self.wallets[payer], ts)
        return R_OK


cdef inline void count_payment(code_wallet_t *w, uint64_t ts) noexcept nogil:
    """One more code payment of the wallet today (the step-up's count)."""
    cdef uint32_t day = <uint32_t> (ts // NS_PER_DAY)
    if w.day != day:
        w.day = day
        w.payments_today = 0
    w.payments_today += 1


cdef void _expire_at_batch_start(void *owner, uint64_t base_ts) noexcept nogil:
    (<Codes> owner).expire_due(base_ts)


cdef void _forget_expiry(void *owner, uint32_t slot) noexcept nogil:
    """A code leaves memory (never a live one): its entry leaves the expiry heap now."""
    cdef uint32_t position = (<Codes> owner).heap_positions[slot]
    if position != HEAP_POSITION_NONE:
        heap_remove(&(<Codes> owner).expiry_heap, position)


cdef inline void *_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]
