# cython: boundscheck=False, wraparound=False
"""Merchant-presented QR orders: create, pay, close, look up, expire (docs/products.md).

The first product module over the ledger's shared primitive (``Ledger.chain_begin``, ``leg``,
``chain_abort``: transfers built in the core, all or nothing). An order's payment is a real
transfer payer -> merchant (code ``TRANSFER_CODE_ORDER_PAYMENT``, ``user_data_128`` = the order
id) whose id is derived from the order's (``leg_id``), so replay recreates it exactly. Each
batch is one C loop over its records: no Python object per event.

The keys services compute (order id, token, QR payload, batches from dicts) are in the light
``core.order_keys``, re-exported here.

>>> from core.orders import leg_id, order_id
>>> leg_id(order_id(7, b"20261207-0001"), 101, 0) != leg_id(order_id(7, b"20261207-0001"), 101, 1)
True
"""

import numpy as np

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from core.digest cimport hmac_key_init, hmac_sha256, order_id_digest
from core.expiry cimport HEAP_POSITION_NONE, expiry_t, heap_push, heap_remove
from core.idmap cimport IDMAP_NOT_FOUND, idmap_get, idmap_home, idmap_t
from core.ledger cimport INDEX_NONE, LEGS_MAX, PREFETCH_DISTANCE, Ledger, account_hot_t, chain_mark_t, transfer_links_t
from core.product cimport Product, all_zero, event_prologue
from core.table cimport Table, table_find, table_set_pinned
from core.merchants cimport Merchants, fee_of, merchant_terms_t
from core.records cimport (
    ORDER_TOKEN_BYTES, OUT_TRADE_NO_BYTES, TALLY_PREFETCH, tally_order_close_t, tally_order_create_t,
    tally_order_created_t, tally_order_pay_t, tally_order_t, tally_store_fence,
)
from core.records cimport *  # result_t codes, order states

from core import constants, memory, table as table_module
from core.checkpoint import RAW
from core.operations import Operation
from core.order_keys import order_creates, order_closes, order_id, order_pays, parse_qr_payload, qr_payload, token_of  # noqa: F401
from core.records import id_pairs
from core.records import (
    ID_DTYPE, ORDER_CLOSE_DTYPE, ORDER_CREATE_DTYPE, ORDER_CREATED_DTYPE, ORDER_DTYPE, ORDER_PAY_DTYPE, TransferCode,
)

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

cdef enum:
    NS_PER_S = 1000000000

cdef uint64_t _EXPIRIES_PER_BATCH_MAX = constants.EXPIRIES_PER_BATCH_MAX

for _name, _number in (("create_orders", OPERATION_CREATE_ORDERS), ("pay_orders", OPERATION_PAY_ORDERS),
                       ("close_orders", OPERATION_CLOSE_ORDERS), ("charge_codes", OPERATION_CHARGE_CODES)):
    if Operation[_name] != _number:
        raise ImportError(f"core/orders.pxd numbers {_name} {_number}, core/operations.py {int(Operation[_name])}")

if TransferCode.order_payment != TRANSFER_CODE_ORDER_PAYMENT or TransferCode.order_fee != TRANSFER_CODE_ORDER_FEE:
    raise ImportError("core/orders.pxd and core.TransferCode disagree on the order payment's code")

#: The checkpoint arrays the orders declare (core/checkpoint.py): copied whole between batches.
CHECKPOINT_ARRAYS = dict(table_module.checkpoint_arrays("orders"), order_expiries=RAW)
EXPIRY_DTYPE = np.dtype([("expires_at", "<u8"), ("number", "<u8"), ("entry", "<u4"), ("_pad", "<u4")])
#: Bytes of the secret the order tokens are keyed with (drawn by the store at creation).
SECRET_BYTES = 32
U64_MASK = (1 << 64) - 1

# out_trade_no: [0-9A-Za-z_-|*@.] (WeChat Pay's alphabet, plus '.'), then NULs.
cdef uint8_t _TRADE_NO_BYTE[256]
memset(_TRADE_NO_BYTE, 0, 256)
for _byte in bytearray(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-|*@."):
    _TRADE_NO_BYTE[_byte] = 1


# ---------------------------------------------------------------------------- ids and tokens

def leg_id(event_id: int, operation: int, leg: int) -> int:
    """The id of leg ``leg`` of a product event (the C ``leg_id_of``'s Python face)."""
    cdef uint64_t lo, hi
    leg_id_of(event_id & U64_MASK, event_id >> 64, operation, leg, &lo, &hi)
    return (int(hi) << 64) | lo


cdef inline bint is_zero(uint64_t lo, uint64_t hi) noexcept nogil:
    return lo == 0 and hi == 0


cdef inline bint tokens_equal(const uint8_t *a, const uint8_t *b) noexcept nogil:
    # In constant time, as the wire compares MACs: the time taken tells nothing of a guess.
    cdef uint8_t difference = 0
    cdef int i
    for i in range(ORDER_TOKEN_BYTES):
        difference |= a[i] ^ b[i]
    return difference == 0


cdef bint trade_no_valid(const uint8_t *p) noexcept nogil:
    """A merchant's number (out_trade_no, out_refund_no): 1..32 allowed bytes, then NULs."""
    cdef size_t i, n = 0
    while n < OUT_TRADE_NO_BYTES and p[n] != 0:
        if not _TRADE_NO_BYTE[p[n]]:
            return False
        n += 1
    if n == 0:
        return False
    for i in range(n, OUT_TRADE_NO_BYTES):
        if p[i] != 0:
            return False
    return True


# ---------------------------------------------------------------------------- the table

cdef class Orders(Product):
    """The orders of a ledger (docs/products.md "Orders: the reference").

    ``orders_max`` orders are resident (in memory: 128 bytes + 52 of bookkeeping and index
    each); a store evicts the others to its cold tier and loads them back for a batch that names
    them (docs/tables.md), a bare table keeps them all. Unpaid orders stay resident: at most
    ``open_max`` (``orders_max`` less the room a batch's orders need), past which
    ``create_orders`` answers ``orders_limit_reached``. ``secret`` (``SECRET_BYTES``) keys the
    order tokens; a store draws it once and keeps it in its meta. ``merchants``
    (core.merchants) gives the fee rates a payment takes its fee at; without it no fee is taken.
    """

    def __cinit__(self, Ledger ledger not None, uint64_t orders_max=constants.ORDERS_MAX_DEFAULT, bytes secret=None,
                  Merchants merchants=None):
        if not 2 <= orders_max <= constants.ORDERS_MAX_LIMIT:
            raise ValueError(f"orders_max must be in 2..{constants.ORDERS_MAX_LIMIT}")
        if secret is None or len(secret) != SECRET_BYTES:
            raise ValueError(f"secret must be {SECRET_BYTES} bytes")
        self.ledger = ledger
        self.component = "orders"
        self.merchants = merchants
        self.has_merchants = merchants is not None
        self.orders_max = orders_max
        self.open_max = orders_max - room_reserved(orders_max)
        self.table = Table(ORDER_DTYPE, orders_max, "orders")
        self.table.pinned_max = self.open_max
        self.table.evict_hook = _forget_expiry
        self.table.evict_hook_owner = <void *> self
        self.rows = <tally_order_t *> self.table.rows
        a = self._arrays = {}
        a["order_expiries"] = np.zeros(orders_max, dtype=EXPIRY_DTYPE)
        a["heap_positions"] = np.full(orders_max, 0xFFFFFFFF, dtype=np.uint32)  # HEAP_POSITION_NONE
        cdef uint64_t batch_max = constants.BATCH_EVENTS_MAX
        a["scratch"] = np.zeros(3 * batch_max, dtype=np.uint32)
        self.scratch_slot = <uint32_t *> _ptr(a["scratch"])
        self.scratch_payer = self.scratch_slot + batch_max
        self.scratch_merchant = self.scratch_payer + batch_max
        a["expired_ids"] = np.zeros(2 * _EXPIRIES_PER_BATCH_MAX, dtype=np.uint64)
        self.expired_ids = <uint64_t *> _ptr(a["expired_ids"])
        self.expiries_max = _EXPIRIES_PER_BATCH_MAX
        self.heap_positions = <uint32_t *> _ptr(a["heap_positions"])
        self.expiry_heap.items = <expiry_t *> _ptr(a["order_expiries"])
        self.expiry_heap.count = 0
        self.expiry_heap.positions = <char *> self.heap_positions
        self.expiry_heap.stride = sizeof(uint32_t)
        hmac_key_init(&self.token_key, <const uint8_t *> secret, len(secret))
        # Every batch of the ledger, whatever its operation, expires the due orders first.
        ledger.add_begin_hook(_expire_at_batch_start, <void *> self)
        if sizeof(expiry_t) != EXPIRY_DTYPE.itemsize:
            raise ImportError("expiry_t and EXPIRY_DTYPE disagree")

    def __dealloc__(self):
        if self.ledger is not None:
            self.ledger.remove_begin_hook(<void *> self)

    # ---------------------------------------------------------------- Python API (the boundary)

    @property
    def order_count(self):
        """Orders ever created."""
        return self.table.records_total

    @property
    def next_expiry_ns(self):
        """Engine time (ns) at which the soonest unpaid order expires; 0: none."""
        self.drop_resolved()
        return self.expiry_heap.items[0].expires_at if self.expiry_heap.count else 0

    def expired_last(self):
        """The ids (ID_DTYPE) of the orders the last batch's start closed by the clock, in the
        order it closed them: what its log entry holds (docs/storage.md)."""
        if self.expired_count > _EXPIRIES_PER_BATCH_MAX:  # (only when replaying an old log: expiries_max)
            raise RuntimeError(f"the last batch's start closed {self.expired_count} orders, more than a log "
                               f"entry holds ({_EXPIRIES_PER_BATCH_MAX})")
        return self._arrays["expired_ids"][:2 * self.expired_count].view(ID_DTYPE).copy()

    def payment_keys(self, operation, events):
        """Each ``pay_orders`` event's merchant (its order's: the order is resident, read first;
        0 if not found), payer and order, as (n, 2) uint64 arrays: what the card pack's records
        a payment may change derive from (``Coupons.card_pack_ids``)."""
        pays = np.ascontiguousarray(events).view(np.uint64).reshape(-1, 16)
        rows, found = self.table.lookup(pays[:, 0:2].copy().view(ID_DTYPE).reshape(-1))
        merchants = id_pairs(rows, "merchant_id")
        merchants[~found] = 0
        return merchants, pays[:, 2:4], pays[:, 0:2]

    def lookup_orders(self, ids):
        """The orders with these ids (ints or an ID_DTYPE array) that are resident or on their
        way to the cold tier, in order; the others are left out (a store looks them up cold)."""
        return self.table.lookup_found(ids)

    def prefault(self):
        """Touch every page of the table now (see Ledger.prefault). Returns bytes touched."""
        return self.table.prefault() + memory.touch_pages(self._arrays.values())

    # -- checkpoints and the state hash

    def snapshot(self):
        """The table's state as named NumPy views and scalars, for a checkpoint: they alias live
        memory (copy them before the next batch)."""
        arrays, scalars = self.table.snapshot()
        arrays["order_expiries"] = self._arrays["order_expiries"][:self.expiry_heap.count]
        scalars.update(order_expiry_count=self.expiry_heap.count, order_open_count=self.open_count)
        return arrays, scalars

    def hash_parts(self):
        """What of the orders the state hash covers: the sum of every order's hash, wherever it
        is (core/table.pyx), and their count (nothing while there is none: a store that never
        had an order hashes as its bare ledger)."""
        return {"orders": self.table.hash_part()} if self.table.records_total else {}

    def restore(self, arrays, scalars):
        """Load a snapshot into this empty table; rebuild the heap positions."""
        if self.table.records_total:
            raise RuntimeError("restore needs an empty order table")
        self.table.restore(arrays, scalars)
        cdef uint64_t n_e = scalars["order_expiry_count"], i
        flat = np.frombuffer(arrays["order_expiries"], dtype=EXPIRY_DTYPE)
        if flat.shape[0] != n_e:
            raise ValueError(f"snapshot's order_expiries has {flat.shape[0]} records, says {n_e}")
        self._arrays["order_expiries"][:n_e] = flat
        for i in range(n_e):
            if self.expiry_heap.items[i].entry >= self.orders_max:
                raise ValueError("snapshot's expiry heap names an order it does not hold")
            self.heap_positions[self.expiry_heap.items[i].entry] = <uint32_t> i
        self.expiry_heap.count = n_e
        self.open_count = scalars["order_open_count"]

    # ---------------------------------------------------------------- the state machine

    cdef void expire_due(self, uint64_t base_ts) noexcept nogil:
        cdef tally_order_t *o
        cdef uint32_t slot
        # The expiries' version time (core/table.pxd): the batch's base, but no later than the
        # ledger's last timestamp, which an empty batch (a pulse) leaves where it was: every
        # version must be older than the next batch's first timestamp (the store reads the cold
        # side "older than the batch"), even when the clock then steps back.
        cdef uint64_t version_ts = base_ts if base_ts <= self.ledger.last_timestamp else self.ledger.last_timestamp
        self.expired_count = 0
        while self.expiry_heap.count and self.expiry_heap.items[0].expires_at <= base_ts:
            slot = self.expiry_heap.items[0].entry
            o = &self.rows[slot]
            if order_open(o) and self.expired_count >= self.expiries_max:
                break  # the rest at the next batch's start (bounded work, and a bounded log entry)
            heap_remove(&self.expiry_heap, 0)
            if order_open(o):
                if self.expired_count < _EXPIRIES_PER_BATCH_MAX:
                    self.expired_ids[2 * self.expired_count] = o.id_lo
                    self.expired_ids[2 * self.expired_count + 1] = o.id_hi
                self.expired_count += 1
            if o.state == ORDER_NOTPAY:
                o.close_reason = CLOSE_REASON_EXPIRED
            elif o.state == ORDER_USERPAYING:
                # A held charge not confirmed in time: the ledger expires its pending leg in this
                # same batch start (its timeout ends at this expires_at: core/codes.pyx).
                o.close_reason = CLOSE_REASON_TIMEOUT
            else:
                continue  # paid or closed since it was created
            o.state = ORDER_CLOSED
            o.closed_at = o.expires_at
            self.settled(slot, version_ts)

    cdef void settled(self, uint32_t slot, uint64_t ts) noexcept nogil:
        """An open order (unpaid or held) was paid or closed at ``ts``: it may leave memory now."""
        table_set_pinned(self.table, slot, False)
        self.open_count -= 1
        self.table.touch(slot, ts)

    cdef void drop_resolved(self) noexcept nogil:
        """Pop the heap's soonest entries that are no longer unpaid (no state changes): the
        next expiry is then an unpaid order's, and an idle server is not woken for nothing."""
        while self.expiry_heap.count and not order_open(&self.rows[self.expiry_heap.items[0].entry]):
            heap_remove(&self.expiry_heap, 0)

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        # (The batch's begin_batch has expired the due orders: the ledger's begin hook.)
        cdef uint64_t k
        cdef uint32_t *results = <uint32_t *> out
        cdef tally_order_created_t *created = <tally_order_created_t *> out
        cdef const tally_order_create_t *creates = <const tally_order_create_t *> events
        cdef uint64_t ahead
        if operation == OPERATION_CREATE_ORDERS:
            for k in range(count):
                # The new order's id-map slot and its merchant's are fetched ahead (the map is
                # as large as the table: a cache miss each otherwise).
                ahead = k + PREFETCH_DISTANCE
                if ahead < count:
                    TALLY_PREFETCH(idmap_home(&self.table.map.map, creates[ahead].id_lo, creates[ahead].id_hi))
                    TALLY_PREFETCH(idmap_home(&self.ledger.account_map.map, creates[ahead].merchant_id_lo,
                                              creates[ahead].merchant_id_hi))
                created[k].result = self.create_order(&creates[k], base + k * LEGS_MAX, created[k].token)
        elif operation == OPERATION_PAY_ORDERS:
            self.pay_batch(<const tally_order_pay_t *> events, count, base, results)
        else:
            for k in range(count):
                results[k] = self.close_order(&(<const tally_order_close_t *> events)[k], base + k * LEGS_MAX)
        self.ledger.schedule_expiries()
        self.drop_resolved()
        tally_store_fence()

    cdef void pay_batch(self, const tally_order_pay_t *events, uint64_t count, uint64_t base,
                        uint32_t *results) noexcept nogil:
        """Payments in three passes, as transfers are applied (core/ledger.pyx): each fetches
        what a later one needs PREFETCH_DISTANCE events ahead. Neither map changes within a pay
        batch (payments add no order and no account), so what the first passes resolve holds."""
        cdef uint64_t k, ahead, leg_lo, leg_hi
        cdef uint32_t *slots = self.scratch_slot
        cdef uint32_t *payers = self.scratch_payer
        cdef uint32_t *merchants = self.scratch_merchant
        cdef const tally_order_t *o
        cdef idmap_t *accounts = &self.ledger.account_map.map
        cdef idmap_t *transfers = &self.ledger.transfer_map.map
        cdef account_hot_t *hot = self.ledger.hot
        # 1: the orders' slots and the payers' indexes.
        for k in range(count):
            ahead = k + PREFETCH_DISTANCE
            if ahead < count:
                TALLY_PREFETCH(idmap_home(&self.table.map.map, events[ahead].order_id_lo, events[ahead].order_id_hi))
                TALLY_PREFETCH(idmap_home(accounts, events[ahead].payer_id_lo, events[ahead].payer_id_hi))
            slots[k] = table_find(self.table, events[k].order_id_lo, events[k].order_id_hi)
            payers[k] = idmap_get(accounts, events[k].payer_id_lo, events[k].payer_id_hi)
        # 2: the merchants' indexes, from the orders.
        for k in range(count):
            ahead = k + PREFETCH_DISTANCE
            if ahead < count and slots[ahead] != IDMAP_NOT_FOUND:
                TALLY_PREFETCH(&self.rows[slots[ahead]])
            merchants[k] = IDMAP_NOT_FOUND
            if slots[k] != IDMAP_NOT_FOUND:
                o = &self.rows[slots[k]]
                merchants[k] = idmap_get(accounts, o.merchant_id_lo, o.merchant_id_hi)
        # 3: apply, with both accounts' records and the leg's transfer-map slot fetched ahead, and
        # (half as far ahead, once the records are in) the accounts' newest transfers' links,
        # which the legs chain onto.
        cdef transfer_links_t *links = self.ledger.links
        cdef uint64_t half
        cdef uint32_t newest
        for k in range(count):
            half = k + PREFETCH_DISTANCE // 2
            if half < count and slots[half] != IDMAP_NOT_FOUND and payers[half] != IDMAP_NOT_FOUND:
                newest = hot[payers[half]].last_debit
                if newest != INDEX_NONE:
                    TALLY_PREFETCH(&links[newest])
                newest = hot[merchants[half]].last_credit
                if newest != INDEX_NONE:
                    TALLY_PREFETCH(&links[newest])
            ahead = k + PREFETCH_DISTANCE
            if ahead < count and slots[ahead] != IDMAP_NOT_FOUND:
                if payers[ahead] != IDMAP_NOT_FOUND:
                    TALLY_PREFETCH(&hot[payers[ahead]])
                    TALLY_PREFETCH(&hot[payers[ahead]].code_counts)
                TALLY_PREFETCH(&hot[merchants[ahead]])
                TALLY_PREFETCH(&hot[merchants[ahead]].code_counts)
                leg_id_of(events[ahead].order_id_lo, events[ahead].order_id_hi, OPERATION_PAY_ORDERS, 0,
                          &leg_lo, &leg_hi)
                TALLY_PREFETCH(idmap_home(transfers, leg_lo, leg_hi))
            results[k] = self.pay_order(&events[k], base + k * LEGS_MAX, slots[k], payers[k], merchants[k])

    cdef result_t create_order(self, const tally_order_create_t *e, uint64_t ts, uint8_t *token) noexcept nogil:
        cdef result_t r
        cdef uint32_t merchant, slot
        cdef uint64_t span_ns
        cdef uint8_t digest[32]
        cdef uint8_t id_bytes[16]
        cdef tally_order_t *o
        cdef tally_order_t new
        r = keyed_event_checks(e.flags, e.timestamp, e.reserved, sizeof(e.reserved), e.id_lo, e.id_hi, e.amount,
                               e.ledger, e.out_trade_no)
        if r != R_OK:
            return r
        if e.expire_after_s != 0 and not (ORDER_EXPIRE_AFTER_S_MIN <= e.expire_after_s <= ORDER_EXPIRE_AFTER_S_MAX):
            return R_EXPIRE_AFTER_OUT_OF_RANGE
        merchant = idmap_get(&self.ledger.account_map.map, e.merchant_id_lo, e.merchant_id_hi)
        if merchant == IDMAP_NOT_FOUND:
            return R_MERCHANT_NOT_FOUND
        if self.ledger.hot[merchant].ledger != e.ledger:
            return R_CURRENCY_MISMATCH
        order_id_digest(<const uint8_t *> &e.merchant_id_lo, e.out_trade_no, digest)
        memcpy(id_bytes, &e.id_lo, 16)
        if memcmp(digest, id_bytes, 16) != 0:
            return R_ID_MISMATCH
        span_ns = <uint64_t> (e.expire_after_s if e.expire_after_s else ORDER_EXPIRE_AFTER_S_DEFAULT) * NS_PER_S
        slot = table_find(self.table, e.id_lo, e.id_hi)
        if slot != IDMAP_NOT_FOUND:
            o = &self.rows[slot]
            if (o.merchant_id_lo != e.merchant_id_lo or o.merchant_id_hi != e.merchant_id_hi or o.amount != e.amount
                    or o.ledger != e.ledger or o.description_code != e.description_code
                    or o.expires_at - o.timestamp != span_ns):
                return R_EXISTS_WITH_DIFFERENT_FIELDS
            memcpy(token, o.token, ORDER_TOKEN_BYTES)
            return R_EXISTS
        if self.open_count >= self.open_max:
            return R_ORDERS_LIMIT_REACHED
        o = &new
        memset(o, 0, sizeof(tally_order_t))
        o.id_lo = e.id_lo
        o.id_hi = e.id_hi
        o.merchant_id_lo = e.merchant_id_lo
        o.merchant_id_hi = e.merchant_id_hi
        o.amount = e.amount
        o.expires_at = ts + span_ns
        hmac_sha256(&self.token_key, id_bytes, 16, digest)
        memcpy(o.token, digest, ORDER_TOKEN_BYTES)
        o.state = ORDER_NOTPAY
        o.ledger = e.ledger
        o.description_code = e.description_code
        o.timestamp = ts
        slot = self.insert_order(o, True)
        if slot == IDMAP_NOT_FOUND:
            return R_ORDERS_LIMIT_REACHED  # a table with no store to evict to is full
        memcpy(token, o.token, ORDER_TOKEN_BYTES)
        return R_OK

    cdef uint32_t insert_order(self, const tally_order_t *o, bint open_) noexcept nogil:
        """A new order (its id absent; the caller checked ``open_count < open_max`` for an open
        one): its slot, or IDMAP_NOT_FOUND when the table has no free slot. An open order (unpaid,
        or a held charge) is pinned and on the expiry heap until it is paid or closed."""
        cdef uint32_t slot = self.table.insert(o, INDEX_NONE, o.timestamp)
        if slot == IDMAP_NOT_FOUND or not open_:
            return slot
        table_set_pinned(self.table, slot, True)
        self.open_count += 1
        heap_push(&self.expiry_heap, o.expires_at, o.timestamp, slot)
        return slot

    cdef result_t find_order(self, uint64_t lo, uint64_t hi, uint32_t *slot) noexcept nogil:
        """An event's order: its slot, or why there is none."""
        if is_zero(lo, hi):
            return R_ID_MUST_NOT_BE_ZERO
        slot[0] = table_find(self.table, lo, hi)
        return R_ORDER_NOT_FOUND if slot[0] == IDMAP_NOT_FOUND else R_OK

    cdef result_t pay_order(self, const tally_order_pay_t *e, uint64_t ts, uint32_t slot, uint32_t payer,
                            uint32_t merchant) noexcept nogil:
        """One payment; ``slot``, ``payer`` and ``merchant`` are the event's order, payer and
        the order's merchant as the batch resolved them (IDMAP_NOT_FOUND: none)."""
        cdef uint64_t leg_lo, leg_hi, fee
        cdef tally_order_t *o
        cdef result_t r
        cdef chain_mark_t mark
        cdef const merchant_terms_t *terms
        if e.timestamp != 0:
            return R_TIMESTAMP_MUST_BE_ZERO
        if not all_zero(e.reserved, sizeof(e.reserved)) or not all_zero(e.reserved_a, sizeof(e.reserved_a)):
            return R_RESERVED_FIELD
        if e.flags != 0:
            return R_RESERVED_FLAG
        if is_zero(e.order_id_lo, e.order_id_hi):
            return R_ID_MUST_NOT_BE_ZERO
        if slot == IDMAP_NOT_FOUND:
            return R_ORDER_NOT_FOUND
        o = &self.rows[slot]
        if o.kind != ORDER_KIND_QR or not tokens_equal(o.token, e.token):
            return R_ORDER_TOKEN_INVALID  # (a code's order holds the code there, not a tag)
        if o.state == ORDER_SUCCESS or o.state == ORDER_REFUND:
            if o.payer_id_lo == e.payer_id_lo and o.payer_id_hi == e.payer_id_hi and o.amount == e.amount:
                return R_EXISTS
            return R_ORDER_PAID
        if o.state == ORDER_CLOSED:
            return R_ORDER_EXPIRED if o.close_reason == CLOSE_REASON_EXPIRED else R_ORDER_CLOSED
        if o.expires_at <= ts:
            return R_ORDER_EXPIRED
        if e.amount != o.amount:
            return R_AMOUNT_MISMATCH
        if e.ledger != o.ledger:
            return R_CURRENCY_MISMATCH
        if payer == IDMAP_NOT_FOUND:
            return R_PAYER_NOT_FOUND
        if payer == merchant:
            return R_ACCOUNTS_MUST_BE_DIFFERENT
        if self.ledger.hot[payer].ledger != o.ledger:
            return R_CURRENCY_MISMATCH
        terms = self.merchants.terms_of(o.merchant_id_lo, o.merchant_id_hi) if self.has_merchants else NULL
        fee = fee_of(o.amount, terms.fee_bps) if terms != NULL else 0
        leg_id_of(o.id_lo, o.id_hi, OPERATION_PAY_ORDERS, 0, &leg_lo, &leg_hi)
        self.ledger.chain_begin(&mark)
        r = self.ledger.leg(leg_lo, leg_hi, payer, merchant, o.amount, o.ledger, TRANSFER_CODE_ORDER_PAYMENT, 0,
                            o.id_lo, o.id_hi, ts)
        if r == R_OK and fee != 0:  # the merchant's fee, at its rate now, in the same chain
            leg_id_of(o.id_lo, o.id_hi, OPERATION_PAY_ORDERS, 1, &leg_lo, &leg_hi)
            r = self.ledger.leg(leg_lo, leg_hi, merchant, terms.fee_index, fee, o.ledger, TRANSFER_CODE_ORDER_FEE, 0,
                                o.id_lo, o.id_hi, ts + 1)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        # The order stays on the expiry heap: the sweep skips what is no longer unpaid (a
        # removal from the middle would cost a walk of the heap, a cache miss per level).
        o.payer_id_lo = e.payer_id_lo
        o.payer_id_hi = e.payer_id_hi
        self.mark_paid(slot, ts, fee, terms)
        return R_OK

    cdef void mark_paid(self, uint32_t slot, uint64_t ts, uint64_t fee, const merchant_terms_t *terms) noexcept nogil:
        """An open order's payment (and its fee, at ``terms``' rate; NULL: none) went through at
        ``ts``: it is paid, its fee account kept for its refunds, its sale booked for settlement."""
        cdef tally_order_t *o = &self.rows[slot]
        o.state = ORDER_SUCCESS
        o.fee = fee
        self.table.slots[slot].aux = terms.fee_index if fee != 0 else INDEX_NONE  # where its refunds take it back
        o.paid_at = ts
        self.settled(slot, ts)
        if terms != NULL:
            self.merchants.book(terms, ts, o.amount, 0, fee, 0)
        card_pack_after(self, o, terms, ts)

    cdef result_t close_order(self, const tally_order_close_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t slot
        cdef tally_order_t *o
        cdef result_t r
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.flags != 0:
            return R_RESERVED_FLAG
        r = self.find_order(e.order_id_lo, e.order_id_hi, &slot)
        if r != R_OK:
            return r
        o = &self.rows[slot]
        if o.merchant_id_lo != e.merchant_id_lo or o.merchant_id_hi != e.merchant_id_hi:
            return R_MERCHANT_MISMATCH
        if o.state == ORDER_SUCCESS or o.state == ORDER_REFUND:
            return R_ORDER_PAID
        if o.state == ORDER_CLOSED:
            return R_EXISTS
        if o.state == ORDER_USERPAYING and o.expires_at <= ts:
            return R_ORDER_EXPIRED  # its hold has ended (the ledger's timeout); its close comes by the clock
        if o.state == ORDER_USERPAYING:
            # The merchant revokes a held charge: its pending leg is voided (core/codes.pyx).
            r = self.void_hold(o, OPERATION_CLOSE_ORDERS, ts)
            if r != R_OK:
                return r
            o.close_reason = CLOSE_REASON_REVOKED
        else:
            o.close_reason = CLOSE_REASON_MERCHANT
        o.state = ORDER_CLOSED  # left on the expiry heap, as a paid order is
        o.closed_at = ts
        self.settled(slot, ts)
        return R_OK

    cdef result_t void_hold(self, const tally_order_t *o, uint64_t operation, uint64_t ts) noexcept nogil:
        """Void a held charge's pending leg (leg 0 of charge_codes) as leg 0 of ``operation``."""
        cdef uint64_t leg_lo, leg_hi, pending_lo, pending_hi
        cdef chain_mark_t mark
        cdef result_t r
        leg_id_of(o.id_lo, o.id_hi, OPERATION_CHARGE_CODES, 0, &pending_lo, &pending_hi)
        leg_id_of(o.id_lo, o.id_hi, operation, 0, &leg_lo, &leg_hi)
        self.ledger.chain_begin(&mark)
        r = self.ledger.leg_resolve(leg_lo, leg_hi, pending_lo, pending_hi, False, ts)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
        return r


cdef void _expire_at_batch_start(void *owner, uint64_t base_ts) noexcept nogil:
    (<Orders> owner).expire_due(base_ts)


cdef void _forget_expiry(void *owner, uint32_t slot) noexcept nogil:
    """An order leaves memory (never an unpaid one): its entry leaves the expiry heap now."""
    cdef uint32_t position = (<Orders> owner).heap_positions[slot]
    if position != HEAP_POSITION_NONE:
        heap_remove(&(<Orders> owner).expiry_heap, position)


def room_reserved(uint64_t orders_max):
    """Slots a table of ``orders_max`` keeps from unpaid orders, so that a batch's orders (at
    most one per event) always find room: a full batch's, or half of a small table's."""
    return min(<uint64_t> constants.BATCH_EVENTS_MAX, orders_max // 2)


cdef inline void *_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]
