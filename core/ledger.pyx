# cython: boundscheck=False, wraparound=False
"""The ledger state machine: batches of events in, one result code per event out.

Design, in the spirit of TigerBeetle's state machine:

* All state lives in arrays preallocated when the ledger is opened (``accounts_max``,
  ``transfers_hot_max``, ``pending_max``), indexed by dense u32 indexes; 128-bit ids map to
  indexes through ``IdMap``. Transfers are numbered in the order they are applied and held in a
  ring of the ``transfers_hot_max`` newest (the hot window); older ones are in the store's cold
  tier, and whatever a batch needs of them is prefetched into a per-batch cache before the
  batch runs (docs/tiering.md). Without a cold tier (a bare ``Ledger``) the ring never wraps and
  ``transfers_hot_max`` is the ledger's capacity. Nothing is allocated per event and no Python object is touched in the loops: the
  loops run without the GIL.
* The core has no clock: a batch is applied at a caller-given ``now_ns`` (the store logs it), so
  the same batches always give the same state and results (replay, recovery).
* Outcomes are result codes, checked in the documented order (docs/data-model.md); exceptions are
  only for misuse at the Python boundary (wrong dtype, batch too large).
* A linked chain is all-or-nothing: while inside a chain, every account and pending state an
  event changes is saved to an undo log first, and a failure restores them in reverse.
* Transfers are applied in two prefetching passes: the first resolves both account ids per event
  while the id-map slots of events a few places ahead are being fetched, the second applies the
  events while their account records are being fetched. With a million accounts, the records do
  not fit any cache, and this overlaps the misses instead of paying them one by one.
* Activity features for the pay score are updated after the batch by one typed pass over the
  transfers it appended (failed events and undone chains never reach them).
"""

import numpy as np

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from core.cow cimport COW_REGION_SHIFT, cow_t, cow_before_write, cow_copy_all
from core.expiry cimport HEAP_POSITION_NONE, expiry_t, heap_push, heap_remove
from core.filter cimport IdFilter, idfilter_t, idfilter_maybe, idfilter_block, idfilter_hash
from core.idmap cimport (
    IdMap, idmap_t, IDMAP_NOT_FOUND, idmap_get, idmap_home, idmap_put, idmap_remove,
)
from core.records cimport (
    tally_account_t, tally_transfer_t, result_t, TALLY_UNLIKELY, TALLY_PREFETCH, tally_touch_pages,
    tally_stream_store, tally_store_fence,
    ACCOUNT_LINKED, ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS, ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS,
    ACCOUNT_CLOSED, ACCOUNT_FLAGS_KNOWN, ACCOUNT_RESERVED_SIZE,
    TRANSFER_LINKED, TRANSFER_PENDING, TRANSFER_POST_PENDING, TRANSFER_VOID_PENDING,
    TRANSFER_BALANCING_DEBIT, TRANSFER_BALANCING_CREDIT, TRANSFER_FLAGS_KNOWN, LEG_ID_TAG, R_ID_RESERVED,
)
from core.records cimport (
    R_OK, R_LINKED_EVENT_FAILED, R_LINKED_EVENT_CHAIN_OPEN, R_TIMESTAMP_MUST_BE_ZERO,
    R_RESERVED_FIELD, R_RESERVED_FLAG, R_ID_MUST_NOT_BE_ZERO, R_ID_MUST_NOT_BE_INT_MAX,
    R_FLAGS_ARE_MUTUALLY_EXCLUSIVE, R_DEBITS_PENDING_MUST_BE_ZERO, R_DEBITS_POSTED_MUST_BE_ZERO,
    R_CREDITS_PENDING_MUST_BE_ZERO, R_CREDITS_POSTED_MUST_BE_ZERO, R_LEDGER_MUST_NOT_BE_ZERO,
    R_CODE_MUST_NOT_BE_ZERO, R_EXISTS_WITH_DIFFERENT_FLAGS, R_EXISTS_WITH_DIFFERENT_USER_DATA_128,
    R_EXISTS_WITH_DIFFERENT_USER_DATA_64, R_EXISTS_WITH_DIFFERENT_USER_DATA_32,
    R_EXISTS_WITH_DIFFERENT_LEDGER, R_EXISTS_WITH_DIFFERENT_CODE, R_EXISTS,
    R_ACCOUNTS_LIMIT_REACHED, R_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
    R_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, R_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
    R_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, R_ACCOUNTS_MUST_BE_DIFFERENT,
    R_PENDING_ID_MUST_BE_ZERO, R_PENDING_ID_MUST_NOT_BE_ZERO, R_PENDING_ID_MUST_NOT_BE_INT_MAX,
    R_PENDING_ID_MUST_BE_DIFFERENT, R_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
    R_AMOUNT_MUST_NOT_BE_ZERO, R_DEBIT_ACCOUNT_NOT_FOUND, R_CREDIT_ACCOUNT_NOT_FOUND,
    R_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER, R_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS,
    R_PENDING_TRANSFER_NOT_FOUND, R_PENDING_TRANSFER_NOT_PENDING,
    R_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
    R_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, R_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER,
    R_PENDING_TRANSFER_HAS_DIFFERENT_CODE, R_EXCEEDS_PENDING_TRANSFER_AMOUNT,
    R_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT, R_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
    R_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID, R_EXISTS_WITH_DIFFERENT_AMOUNT,
    R_EXISTS_WITH_DIFFERENT_PENDING_ID, R_EXISTS_WITH_DIFFERENT_TIMEOUT,
    R_PENDING_TRANSFER_ALREADY_POSTED, R_PENDING_TRANSFER_ALREADY_VOIDED,
    R_PENDING_TRANSFER_EXPIRED, R_DEBIT_ACCOUNT_CLOSED, R_CREDIT_ACCOUNT_CLOSED,
    R_OVERFLOWS_DEBITS_PENDING, R_OVERFLOWS_CREDITS_PENDING, R_OVERFLOWS_DEBITS_POSTED,
    R_OVERFLOWS_CREDITS_POSTED, R_OVERFLOWS_DEBITS, R_OVERFLOWS_CREDITS, R_OVERFLOWS_TIMEOUT,
    R_EXCEEDS_CREDITS, R_EXCEEDS_DEBITS, R_TRANSFERS_LIMIT_REACHED, R_EXCEEDS_PAYMENT_LIMIT, R_EXCEEDS_DAILY_LIMIT,
    R_EXCEEDS_YEARLY_LIMIT, R_EXCEEDS_BALANCE_LIMIT,
)

from core import constants, records
from core.checkpoint import APPEND_RECORDS, COPY_ON_WRITE, RAW
from core.operations import Operation
from core.records import ACCOUNT_DTYPE, TRANSFER_DTYPE, ID_DTYPE, ids_array

if (OPERATION_CREATE_ACCOUNTS, OPERATION_CREATE_TRANSFERS) != (Operation.create_accounts, Operation.create_transfers):
    raise ImportError("ledger.pxd's operation numbers and core/operations.py's table disagree")

cdef extern from "assert.h" nogil:
    void tally_assert "assert"(bint)

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

cdef enum:
    NS_PER_S = 1000000000
    # A batch this large is applied with the GIL released. A smaller one keeps it: it takes
    # tens of microseconds, and giving the GIL away costs a wait of up to a switch interval to
    # get it back from a background thread (epoch flush, sink) that took it meanwhile: on the
    # server's event loop that wait is every payment's latency.
    NOGIL_EVENTS_MIN = 1024


cdef inline bint is_max(uint64_t lo, uint64_t hi) noexcept nogil:
    return lo == U64_MAX and hi == U64_MAX


cdef inline bint id_above(uint64_t lo, uint64_t hi, uint64_t max_lo, uint64_t max_hi) noexcept nogil:
    """Whether the 128-bit id (hi, lo) is above (max_hi, max_lo)."""
    return hi > max_hi or (hi == max_hi and lo > max_lo)


cdef inline bint add_overflows(uint64_t a, uint64_t b) noexcept nogil:
    return a > U64_MAX - b


cdef inline uint64_t expires_at_of(const tally_transfer_t *t) noexcept nogil:
    # Validated not to overflow when the pending transfer was created.
    return t.timestamp + <uint64_t> t.timeout * NS_PER_S if t.timeout != 0 else 0


cdef inline uint64_t chain_end(const uint16_t *first_flags, size_t stride, uint64_t i,
                               uint64_t count, uint16_t linked) noexcept nogil:
    """Index of the last event of the chain starting at ``i`` (``i`` itself when unlinked)."""
    cdef const char *p = <const char *> first_flags
    while i < count - 1 and (<const uint16_t *> (p + i * stride))[0] & linked:
        i += 1
    return i


cdef inline void fail_chain(uint32_t *results, uint64_t first, uint64_t last,
                            uint64_t failed) noexcept nogil:
    """Every event of a failed chain but the failing one reports linked_event_failed."""
    cdef uint64_t k
    for k in range(first, last + 1):
        if k != failed:
            results[k] = R_LINKED_EVENT_FAILED


cdef object _buffer(dict arrays, str name, object dtype, uint64_t count):
    # np.zeros maps fresh zero pages lazily: capacity costs address space until it is used.
    array = np.zeros(max(count, 1), dtype=dtype)
    arrays[name] = array
    return array


cdef object _aligned(dict arrays, str name, object dtype, uint64_t count, uint64_t alignment):
    """Like _buffer, with the first record at an ``alignment``-byte boundary."""
    raw = np.zeros(max(count, 1) * dtype.itemsize + alignment, dtype=np.uint8)
    cdef uint64_t skip = (-raw.ctypes.data) % alignment
    array = raw[skip:skip + max(count, 1) * dtype.itemsize].view(dtype)
    arrays[name] = array
    return array


if CODE_BUCKETS != constants.FEATURE_CODE_BUCKETS:
    raise ImportError("ledger.pxd CODE_BUCKETS and constants.FEATURE_CODE_BUCKETS disagree")


#: NumPy mirror of account_hot_t (ledger.pxd), for snapshots and feature views.
HOT_DTYPE = np.dtype([
    ("debits_pending", "<u8"), ("debits_posted", "<u8"), ("credits_pending", "<u8"),
    ("credits_posted", "<u8"), ("ledger", "<u4"), ("flags", "<u2"), ("code", "<u2"),
    ("last_debit", "<u4"), ("last_credit", "<u4"), ("first_activity_ts", "<u8"),
    ("last_activity_ts", "<u8"), ("code_counts", "<u4", (CODE_BUCKETS,)),
])

#: NumPy mirror of transfer_links_t: one per ring slot.
LINKS_DTYPE = np.dtype([
    ("number_plus1", "<u8"), ("prev_debit", "<u8"), ("prev_credit", "<u8"),
    ("debit_index", "<u4"), ("credit_index", "<u4"),
])

#: NumPy mirror of pending_t: one per pending-table entry.
PENDING_DTYPE = np.dtype([
    ("row", TRANSFER_DTYPE), ("number", "<u8"), ("resolved_at", "<u8"), ("debit_index", "<u4"),
    ("credit_index", "<u4"), ("heap_pos", "<u4"), ("state", "u1"), ("limited", "u1"), ("_pad", "u1", (2,)),
])

#: NumPy mirror of wallet_window_t: a tiered wallet's outgoing windows, per account index.
WINDOW_DTYPE = np.dtype([("day_spent", "<u8"), ("year_spent", "<u8"), ("tier_set_at", "<u8"), ("day", "<u4"),
                         ("year", "<u4")])

#: NumPy mirror of tier_rule_t: one tier's limits in one ledger (0: the defaults).
TIER_RULE_DTYPE = np.dtype([("payment_max", "<u8"), ("daily_max", "<u8"), ("yearly_max", "<u8"),
                            ("balance_max", "<u8"), ("timestamp", "<u8"), ("ledger", "<u4"), ("tier", "u1"),
                            ("_pad", "u1", (3,))])

#: NumPy mirror of expiry_t: the expiry heap.
EXPIRY_DTYPE = np.dtype([("expires_at", "<u8"), ("number", "<u8"), ("entry", "<u4"), ("_pad", "<u4")])

#: The arrays ``Ledger.snapshot`` gives a checkpoint, and their kinds (core/checkpoint.py):
#: account rows only grow; the balances are copied on write; the pending table and the expiry
#: heap are copied between two batches.
#: Engine timestamps a product event takes (``LEGS_MAX``; docs/products.md "Time").
EVENT_TIMESTAMPS = LEGS_MAX

CHECKPOINT_ARRAYS = {"accounts": APPEND_RECORDS, "hot": COPY_ON_WRITE, "pendings": RAW, "expiries": RAW}

#: A resolved pending transfer's final state, as the cold tier's status table holds it.
STATUS_DTYPE = np.dtype([("timestamp", "<u8"), ("state", "u1")])

#: Transfer states (transfer_state_t), as the cold tier's status table stores them.
STATE_NAMES = {STATE_SETTLED: "settled", STATE_PENDING: "pending", STATE_POSTED: "posted",
               STATE_VOIDED: "voided", STATE_EXPIRED: "expired"}


cdef class Ledger:
    """The in-memory ledger state machine (no durability: see ``core.open``).

    >>> led = Ledger(accounts_max=1000, transfers_hot_max=10000)
    >>> led.create_accounts(accounts_from_dicts([{"id": 1, "ledger": 156, "code": 1}]), now_ns=1)
    array([0], dtype=uint32)

    ``transfers_hot_max`` transfers are held in memory; a bare ledger refuses more with
    ``transfers_limit_reached``, a store (``core.open``) moves older ones to its cold tier.
    ``pending_max`` bounds the pending transfers not yet resolved (and, in a store, resolved but
    not yet in the cold tier); past it a new pending transfer gets ``transfers_limit_reached``.
    """

    def __cinit__(self, uint64_t accounts_max=constants.ACCOUNTS_MAX_DEFAULT,
                  uint64_t transfers_hot_max=constants.TRANSFERS_HOT_MAX_DEFAULT,
                  uint64_t pending_max=constants.PENDING_MAX_DEFAULT):
        if not 1 <= accounts_max <= constants.ACCOUNTS_MAX_LIMIT:
            raise ValueError(f"accounts_max must be in 1..{constants.ACCOUNTS_MAX_LIMIT}")
        if not 1 <= transfers_hot_max <= constants.TRANSFERS_HOT_MAX_LIMIT:
            raise ValueError(f"transfers_hot_max must be in 1..{constants.TRANSFERS_HOT_MAX_LIMIT}")
        if not 1 <= pending_max <= constants.PENDING_MAX_LIMIT:
            raise ValueError(f"pending_max must be in 1..{constants.PENDING_MAX_LIMIT}")
        cdef uint64_t batch_max = constants.BATCH_EVENTS_MAX
        cdef uint64_t ring = 1
        while ring < transfers_hot_max:
            ring <<= 1
        self.accounts_max = accounts_max
        self.transfers_hot_max = transfers_hot_max
        self.pending_max = pending_max
        self.accounts_limit, self.pending_limit = accounts_max, pending_max
        self.ring_mask = ring - 1
        self.account_map = IdMap(accounts_max)
        self.transfer_map = IdMap(transfers_hot_max)
        self.pending_map = IdMap(pending_max)
        self.cold_map = IdMap(2 * batch_max)
        self.cold_filter = None
        a = self._arrays = {}
        self.account_rows = <tally_account_t *> np_ptr(_buffer(a, "accounts", ACCOUNT_DTYPE, accounts_max))
        self.hot = <account_hot_t *> np_ptr(_aligned(a, "hot", HOT_DTYPE, accounts_max, 128))
        self.hot_cow.state = <uint8_t *> np_ptr(_buffer(
            a, "hot_cow_state", np.uint8, (accounts_max * sizeof(account_hot_t) >> COW_REGION_SHIFT) + 1))
        self.hot_cow.source = <char *> self.hot
        self.hot_cow.bytes = 0
        self.transfer_rows = <tally_transfer_t *> np_ptr(_aligned(a, "transfers", TRANSFER_DTYPE, ring, 128))
        self.links = <transfer_links_t *> np_ptr(_aligned(a, "links", LINKS_DTYPE, ring, 64))
        self.pendings = <pending_t *> np_ptr(_aligned(a, "pendings", PENDING_DTYPE, pending_max, 64))
        self.pending_free = <uint32_t *> np_ptr(_buffer(a, "pending_free", np.uint32, pending_max))
        self.expiry_heap.items = <expiry_t *> np_ptr(_buffer(a, "expiries", EXPIRY_DTYPE, pending_max))
        self.expiry_heap.count = 0
        self.expiry_heap.positions = <char *> &self.pendings[0].heap_pos
        self.expiry_heap.stride = sizeof(pending_t)
        self.field_undo = <field_undo_t *> np_ptr(
            _buffer(a, "field_undo", np.uint8, FIELD_UNDO_MAX * sizeof(field_undo_t)))
        self.cold_rows = <tally_transfer_t *> np_ptr(_aligned(a, "cold_rows", TRANSFER_DTYPE, 2 * batch_max, 128))
        self.cold_states = <uint8_t *> np_ptr(_buffer(a, "cold_states", np.uint8, 2 * batch_max))
        self.scratch_debit = <uint32_t *> np_ptr(_buffer(a, "scratch_debit", np.uint32, batch_max))
        self.scratch_credit = <uint32_t *> np_ptr(_buffer(a, "scratch_credit", np.uint32, batch_max))
        self.account_undo = <account_undo_t *> np_ptr(
            _buffer(a, "account_undo", np.uint8, 2 * batch_max * sizeof(account_undo_t)))
        self.state_undo = <state_undo_t *> np_ptr(
            _buffer(a, "state_undo", np.uint8, batch_max * sizeof(state_undo_t)))
        self.expiring = <uint32_t *> np_ptr(_buffer(a, "expiring", np.uint32, batch_max))
        # Wallet tiers: the windows' pages are mapped when a tiered wallet first writes them.
        self.windows = <wallet_window_t *> np_ptr(_buffer(a, "wallet_windows", WINDOW_DTYPE, accounts_max))
        rules = _buffer(a, "tier_rules", TIER_RULE_DTYPE, TIER_RULES_MAX)
        for tier, limits in constants.TIER_LIMITS_DEFAULT.items():
            rules[tier - 1] = (limits["payment"], limits["daily"], limits["yearly"], limits["balance"], 0, 0, tier, 0)
        self.tier_rules = <tier_rule_t *> np_ptr(rules)
        self.tier_rule_count = TIERS_MAX
        self.window_undo = <window_undo_t *> np_ptr(
            _buffer(a, "window_undo", np.uint8, 2 * batch_max * sizeof(window_undo_t)))
        if sizeof(account_hot_t) != HOT_DTYPE.itemsize or sizeof(account_hot_t) != 128:
            raise ImportError("account_hot_t and HOT_DTYPE disagree")
        if (sizeof(transfer_links_t) != LINKS_DTYPE.itemsize or sizeof(pending_t) != PENDING_DTYPE.itemsize
                or sizeof(expiry_t) != EXPIRY_DTYPE.itemsize or sizeof(wallet_window_t) != WINDOW_DTYPE.itemsize
                or sizeof(tier_rule_t) != TIER_RULE_DTYPE.itemsize
                or constants.TIERS != TIERS_MAX or TIER_RULES_MAX != TIERS_MAX * (1 + constants.TIER_LEDGERS_MAX)):
            raise ImportError("ledger.pxd structs and their NumPy mirrors disagree")

    # ---------------------------------------------------------------- Python API (the boundary)

    def create_accounts(self, batch, uint64_t now_ns):
        """Create a batch of accounts at engine time ``now_ns``; returns one Result per event.

        ``batch`` is an ACCOUNT_DTYPE array (or a buffer of 128-byte records) of at most
        ``BATCH_EVENTS_MAX`` events. The results are a uint32 array of ``core.Result`` codes.
        """
        return self._apply(OPERATION_CREATE_ACCOUNTS, batch, now_ns)

    def create_transfers(self, batch, uint64_t now_ns):
        """Create a batch of transfers at engine time ``now_ns``; returns one Result per event.

        ``batch`` is a TRANSFER_DTYPE array (or a buffer of 128-byte records) of at most
        ``BATCH_EVENTS_MAX`` events. The results are a uint32 array of ``core.Result`` codes.
        With a cold tier, call ``prefetch_scan`` and ``load_prefetched`` first (``core.Store``
        does).
        """
        return self._apply(OPERATION_CREATE_TRANSFERS, batch, now_ns)

    def apply(self, operation, batch, uint64_t now_ns):
        """Apply a batch of ``operation``'s events at engine time ``now_ns`` (a create operation
        of ``core.operations``: the store and replay dispatch by number); one Result per event."""
        if operation != OPERATION_CREATE_ACCOUNTS and operation != OPERATION_CREATE_TRANSFERS:
            raise ValueError(f"the ledger applies no operation {operation}")
        return self._apply(operation, batch, now_ns)

    cdef object _apply(self, uint32_t operation, object batch, uint64_t now_ns):
        # Every check of the input happens here, before the state is touched.
        _check_now(now_ns)
        cdef const unsigned char[::1] raw = batch_bytes(
            batch, TRANSFER_DTYPE if operation == OPERATION_CREATE_TRANSFERS else ACCOUNT_DTYPE)
        cdef uint64_t count = raw.shape[0] // 128
        results = np.empty(count, dtype=np.uint32)
        cdef uint32_t[::1] out = results
        cdef const unsigned char *events = &raw[0] if count else NULL
        cdef uint32_t *out_first = &out[0] if count else NULL
        self._enter()
        try:
            # Also released for the work a small batch may carry: a prune's scan of the pending
            # table (once an epoch), or a pulse's expiries (an empty batch).
            if count >= NOGIL_EVENTS_MIN or count == 0 or self.prune_due_below() != 0:
                with nogil:
                    self.run_batch(operation, events, count, now_ns, out_first)
            else:
                self.run_batch(operation, events, count, now_ns, out_first)
        finally:
            self.busy = False
        return results

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t now_ns,
                        uint32_t *out) noexcept nogil:
        cdef uint64_t k
        base = self.begin_batch(now_ns, count)
        if count and operation == OPERATION_CREATE_TRANSFERS:
            self.apply_transfers(<tally_transfer_t *> events, count, base, out)
            self.schedule_expiries()
            tally_store_fence()
        elif count:
            self.apply_accounts(<tally_account_t *> events, count, base, out)
        # The prefetch cache serves one batch.
        for k in range(self.cold_cached):
            idmap_remove(&self.cold_map.map, self.cold_rows[k].id_lo, self.cold_rows[k].id_hi)
        self.cold_cached = 0

    # -- the cold tier's side (docs/tiering.md): used by core.Store

    @property
    def expiry_count(self):
        """Pending transfers with a timeout on the expiry heap."""
        return self.expiry_heap.count

    def attach_filter(self, IdFilter cold_filter):
        """The filter over every cold id, probed by ``prefetch_scan``."""
        self.cold_filter = cold_filter

    def prefetch_scan(self, batch, uint64_t now_ns):
        """The ids a transfer batch applied at ``now_ns`` may need from the cold tier (an
        ID_DTYPE array, maybe empty).

        Evicts what the batch will need room for (its transfers and those its start makes:
        ``start_legs``) and prunes the pending table first (so the
        scan sees the hot window and the pending table the batch will run against). Listed: an event id neither hot nor pending that the filter
        does not rule out; a ``pending_id`` not in the pending table that is either hot with a
        pending row (resolved and pruned: its status is cold) or not ruled out by the filter.
        """
        cdef const unsigned char[::1] raw = batch_bytes(batch, TRANSFER_DTYPE)
        cdef uint64_t count = raw.shape[0] // 128, i, n = 0
        out = np.empty(2 * count, dtype=ID_DTYPE)
        cdef uint64_t[:, ::1] ids = out.view(np.uint64).reshape(-1, 2) if count else None
        cdef const tally_transfer_t *e
        cdef uint32_t slot
        cdef bint wanted
        if self.cold_filter is None or count == 0:
            return out[:0]
        cdef const idmap_t *hot_map = &self.transfer_map.map
        cdef const idmap_t *pending_map = &self.pending_map.map
        cdef const idfilter_t *f = &self.cold_filter.filter
        self._enter()
        try:
            with nogil:
                # The batch must be scanned against the window and the pending table it will run
                # against: evict and prune first (begin_batch then has nothing left to do).
                self.evict(count + self.start_legs_at(now_ns))
                self.prune()
                for i in range(count):
                    if i + PREFETCH_DISTANCE < count:
                        e = &(<const tally_transfer_t *> &raw[0])[i + PREFETCH_DISTANCE]
                        TALLY_PREFETCH(idfilter_block(f, idfilter_hash(e.id_lo, e.id_hi)))
                    e = &(<const tally_transfer_t *> &raw[0])[i]
                    # Cheapest first: time-ordered ids (core.new_id) are above every cold id; most
                    # new ids are then ruled out by the filter, before the hot map is probed.
                    if (e.id_lo or e.id_hi) and not is_max(e.id_lo, e.id_hi) \
                            and not id_above(e.id_lo, e.id_hi, self.cold_id_max_lo, self.cold_id_max_hi) \
                            and idfilter_maybe(f, e.id_lo, e.id_hi) \
                            and idmap_get(hot_map, e.id_lo, e.id_hi) == IDMAP_NOT_FOUND \
                            and idmap_get(pending_map, e.id_lo, e.id_hi) == IDMAP_NOT_FOUND:
                        ids[n, 0] = e.id_lo
                        ids[n, 1] = e.id_hi
                        n += 1
                    if not (e.flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING)):
                        continue
                    if (e.pending_id_lo == 0 and e.pending_id_hi == 0) or is_max(e.pending_id_lo, e.pending_id_hi):
                        continue
                    if idmap_get(pending_map, e.pending_id_lo, e.pending_id_hi) != IDMAP_NOT_FOUND:
                        continue
                    slot = idmap_get(hot_map, e.pending_id_lo, e.pending_id_hi)
                    if slot != IDMAP_NOT_FOUND:
                        wanted = (self.transfer_rows[slot].flags & TRANSFER_PENDING) != 0
                    else:
                        wanted = not id_above(e.pending_id_lo, e.pending_id_hi, self.cold_id_max_lo,
                                              self.cold_id_max_hi) and idfilter_maybe(f, e.pending_id_lo, e.pending_id_hi)
                    if wanted:
                        ids[n, 0] = e.pending_id_lo
                        ids[n, 1] = e.pending_id_hi
                        n += 1
        finally:
            self.busy = False
        return out[:n]

    def load_prefetched(self, rows, states):
        """Hand the next batch the cold transfers it needs: TRANSFER_DTYPE rows, u8 states."""
        rows = np.ascontiguousarray(rows, dtype=TRANSFER_DTYPE)
        cdef const uint8_t[::1] state_view = np.ascontiguousarray(states, dtype=np.uint8)
        cdef uint64_t n = rows.shape[0], k
        if n != <uint64_t> state_view.shape[0] or n > 2 * constants.BATCH_EVENTS_MAX:
            raise ValueError(f"{n} rows and {state_view.shape[0]} states; at most {2 * constants.BATCH_EVENTS_MAX}")
        cdef const tally_transfer_t *src = <const tally_transfer_t *> np_ptr(rows) if n else NULL
        self._enter()
        try:
            for k in range(self.cold_cached):
                idmap_remove(&self.cold_map.map, self.cold_rows[k].id_lo, self.cold_rows[k].id_hi)
            self.cold_cached = 0
            for k in range(n):
                if idmap_get(&self.cold_map.map, src[k].id_lo, src[k].id_hi) != IDMAP_NOT_FOUND:
                    continue
                self.cold_rows[self.cold_cached] = src[k]
                self.cold_states[self.cold_cached] = state_view[k]
                idmap_put(&self.cold_map.map, src[k].id_lo, src[k].id_hi, <uint32_t> self.cold_cached)
                self.cold_cached += 1
        finally:
            self.busy = False

    def set_cold_id_max(self, id_):
        """Every id in the cold tier is at most ``id_`` (it only grows)."""
        cdef object value = int(id_)
        cdef uint64_t lo = value & U64_MAX, hi = value >> 64
        if id_above(lo, hi, self.cold_id_max_lo, self.cold_id_max_hi):
            self.cold_id_max_lo, self.cold_id_max_hi = lo, hi

    @property
    def next_expiry_ns(self):
        """When the soonest pending transfer with a timeout expires (engine time, ns); 0: none."""
        return self.expiry_heap.items[0].expires_at if self.expiry_heap.count else 0

    @property
    def cold_id_max(self):
        return (int(self.cold_id_max_hi) << 64) | self.cold_id_max_lo  # Python ints: a C shift by 64 is undefined

    def set_cold_count(self, uint64_t cold_count):
        """Transfers ``[0, cold_count)`` are now readable from the cold tier: they may be evicted."""
        if not self.cold_count <= cold_count <= self.transfer_count:
            raise ValueError(f"cold_count {cold_count} outside {self.cold_count}..{self.transfer_count}")
        self.cold_count = cold_count

    def enable_pruning(self, uint64_t epoch_transfers):
        """Let resolved pendings leave the pending table once their status is in the cold tier.

        Deterministic, so that results are a function of the log: at the start of each batch,
        entries resolved before epoch ``transfer_count // epoch_transfers - PRUNE_LAG_EPOCHS``
        are dropped. The store makes sure those epochs are written first (it waits if not).
        """
        if epoch_transfers == 0:
            raise ValueError("epoch_transfers must be positive")
        self.prune_epoch_transfers = epoch_transfers
        self.pruned_below = 0

    def prune_boundary(self, uint64_t transfer_count):
        """Entries resolved before this transfer number are dropped by the next batch."""
        cdef uint64_t epochs
        if self.prune_epoch_transfers == 0:
            return 0
        epochs = transfer_count // self.prune_epoch_transfers
        return (epochs - PRUNE_LAG_EPOCHS) * self.prune_epoch_transfers if epochs > PRUNE_LAG_EPOCHS else 0

    def resolved_between(self, uint64_t first, uint64_t last):
        """Statuses of the pendings resolved at transfer numbers ``[first, last)``, by timestamp:
        a structured array of (timestamp, state)."""
        entries = self._arrays["pendings"][:self.pending_high]
        chosen = entries[(entries["state"] != STATE_FREE) & (entries["state"] != STATE_PENDING)
                         & (entries["resolved_at"] >= first) & (entries["resolved_at"] < last)]
        out = np.empty(chosen.shape[0], dtype=STATUS_DTYPE)
        out["timestamp"] = chosen["row"]["timestamp"]
        out["state"] = chosen["state"]
        return np.sort(out, order="timestamp")

    def unresolved_pendings(self):
        """The unresolved pending transfers' entries, by number (a copy)."""
        entries = self._arrays["pendings"][:self.pending_high]
        chosen = entries[entries["state"] == STATE_PENDING]
        return chosen[np.argsort(chosen["number"], kind="stable")]

    def transfers_range(self, uint64_t first, uint64_t last):
        """Rows of transfers ``[first, last)`` (all in the hot window), in order: a read-only
        view of the ring (or a copy where the range wraps), valid while none of them is evicted."""
        return self._ring_range("transfers", first, last)

    def links_range(self, uint64_t first, uint64_t last):
        """Links of transfers ``[first, last)`` (all in the hot window), like ``transfers_range``."""
        return self._ring_range("links", first, last)

    def _ring_range(self, str name, uint64_t first, uint64_t last):
        if not self.hot_first <= first <= last <= self.transfer_count:
            raise ValueError(f"transfers {first}..{last} are not all in memory ({self.hot_first}..{self.transfer_count})")
        ring = self._arrays[name]
        ring_size = self.ring_mask + 1
        a, b = first % ring_size, last - first
        if a + b <= ring_size:
            view = ring[a:a + b]  # read-only: these slots are not reused while the caller holds them
            view.flags.writeable = False
            return view
        return np.concatenate((ring[a:], ring[:a + b - ring_size]))

    def hot_first_timestamp(self):
        """Timestamp of the oldest transfer in memory (last_timestamp + 1 when none is)."""
        if self.hot_first < self.transfer_count:
            return self.transfer_rows[self.hot_first & self.ring_mask].timestamp
        return self.last_timestamp + 1

    def account_index(self, account_id):
        """Dense index of an account id, or None."""
        cdef object key = int(account_id)
        if not 0 <= key < (1 << 128):
            raise OverflowError("account id does not fit 128 bits")
        cdef uint32_t index = idmap_get(&self.account_map.map, key & U64_MAX, key >> 64)
        return None if index == IDMAP_NOT_FOUND else index

    # -- reads

    def lookup_accounts(self, ids):
        """The accounts with these ids (ints or an ID_DTYPE array), in order; missing ids are left out."""
        cdef const uint64_t[:, ::1] keys = _id_pairs(ids)
        cdef Py_ssize_t i, n = keys.shape[0], found = 0
        cdef uint32_t index
        out = np.empty(n, dtype=ACCOUNT_DTYPE)
        cdef tally_account_t *dst = <tally_account_t *> np_ptr(out)
        for i in range(n):
            index = idmap_get(&self.account_map.map, keys[i, 0], keys[i, 1])
            if index != IDMAP_NOT_FOUND:
                self.account_record(index, &dst[found])
                found += 1
        return out[:found].copy()

    def lookup_transfers(self, ids):
        """The transfers in memory with these ids (ints or an ID_DTYPE array), in order; missing
        ids are left out. A store also looks in its cold tier (``Store.lookup_transfers``)."""
        rows, found = self.lookup_transfers_hot(ids)
        return rows[found]

    def lookup_transfers_hot(self, ids):
        """(rows, found): a row per id (zeros where not in memory) and a bool mask of those found."""
        cdef const uint64_t[:, ::1] keys = _id_pairs(ids)
        cdef Py_ssize_t i, n = keys.shape[0]
        cdef const tally_transfer_t *row
        out = np.zeros(n, dtype=TRANSFER_DTYPE)
        found = np.zeros(n, dtype=bool)
        cdef tally_transfer_t *dst = <tally_transfer_t *> np_ptr(out)
        cdef uint8_t[::1] hit = found.view(np.uint8)
        for i in range(n):
            row = self.find_transfer(keys[i, 0], keys[i, 1])
            if row != NULL:
                dst[i] = row[0]
                hit[i] = 1
        return out, found

    def get_account_transfers(self, account_id, uint64_t timestamp_min=0, uint64_t timestamp_max=0,
                              uint32_t limit=constants.ACCOUNT_TRANSFERS_LIMIT_MAX,
                              bint debits=True, bint credits=True, bint reverse=False):
        """Transfers in memory debiting and/or crediting an account, in timestamp order, paged.

        Returns at most ``limit`` (<= ACCOUNT_TRANSFERS_LIMIT_MAX) transfers with
        ``timestamp_min <= timestamp <= timestamp_max`` (0 = unbounded), oldest first, or newest
        first with ``reverse=True``. To page, pass the last timestamp seen plus one as
        ``timestamp_min`` (or minus one as ``timestamp_max`` when reversed). Only the hot window
        is searched: ``Store.get_account_transfers`` continues into the cold tier.
        """
        if limit > constants.ACCOUNT_TRANSFERS_LIMIT_MAX:
            raise ValueError(f"limit must be <= {constants.ACCOUNT_TRANSFERS_LIMIT_MAX}")
        cdef object key = int(account_id)
        if not 0 <= key < (1 << 128):
            raise OverflowError("account id does not fit 128 bits")
        cdef uint32_t account = idmap_get(&self.account_map.map, key & U64_MAX, key >> 64)
        if account == IDMAP_NOT_FOUND or limit == 0:
            return np.empty(0, dtype=TRANSFER_DTYPE)
        cdef uint64_t hi_ts = timestamp_max if timestamp_max != 0 else U64_MAX
        # Both chains run newest to oldest; merge them by transfer number, newest first.
        cdef uint32_t d = self.hot[account].last_debit if debits else INDEX_NONE
        cdef uint32_t c = self.hot[account].last_credit if credits else INDEX_NONE
        cdef uint32_t t
        cdef uint64_t ts, next_number
        if d != INDEX_NONE and not self.chain_valid(d, account, True):
            d = INDEX_NONE
        if c != INDEX_NONE and not self.chain_valid(c, account, False):
            c = INDEX_NONE
        picked = []
        while d != INDEX_NONE or c != INDEX_NONE:
            if c == INDEX_NONE or (d != INDEX_NONE and self.links[d].number_plus1 > self.links[c].number_plus1):
                t = d
                next_number = self.links[t].prev_debit
                d = <uint32_t> ((next_number - 1) & self.ring_mask) if next_number > self.hot_first else INDEX_NONE
            else:
                t = c
                next_number = self.links[t].prev_credit
                c = <uint32_t> ((next_number - 1) & self.ring_mask) if next_number > self.hot_first else INDEX_NONE
            ts = self.transfer_rows[t].timestamp
            if ts < timestamp_min:
                break
            if ts > hi_ts:
                continue
            picked.append(t)
            if reverse and len(picked) == limit:
                break
        if not reverse:
            picked = picked[::-1][:limit]
        return self._arrays["transfers"][np.asarray(picked, dtype=np.int64)].copy()

    def accounts(self):
        """All accounts, in creation order (a copy)."""
        n = self.account_count
        out = self._arrays["accounts"][:n].copy()
        hot = self._arrays["hot"][:n]
        for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted"):
            out[name] = hot[name]
        return out

    def features(self):
        """Activity features per account index (copies): see docs/data-model.md."""
        return {name: view.copy() for name, view in self.features_view().items()}

    def features_view(self):
        """Zero-copy views of the activity features (valid until the next batch), for scoring.

        Settled debits are exactly ``debits_posted`` (and settled credits ``credits_posted``),
        so the spend and receive sums are views of the balances, not copies kept beside them.
        """
        hot = self._arrays["hot"][:self.account_count]
        return {
            "spend_minor": hot["debits_posted"],
            "receive_minor": hot["credits_posted"],
            "code_counts": hot["code_counts"],
            "first_activity_ts": hot["first_activity_ts"],
            "last_activity_ts": hot["last_activity_ts"],
        }

    def memory_bytes(self):
        """Bytes reserved per part of the in-memory state (address space; touched lazily)."""
        a = self._arrays
        return {
            "accounts": a["accounts"].nbytes + a["hot"].nbytes + a["wallet_windows"].nbytes
                        + self.account_map.capacity_slots * 24,
            "hot_window": a["transfers"].nbytes + a["links"].nbytes + self.transfer_map.capacity_slots * 24,
            "pending": a["pendings"].nbytes + a["expiries"].nbytes + a["pending_free"].nbytes
                       + self.pending_map.capacity_slots * 24,
        }

    def prefault(self):
        """Touch every page of the preallocated state now, so that first use costs no page fault.

        Buffers are mapped lazily; on a virtual machine the first touch of a page can cost
        microseconds (this machine: about 3.5 s per GiB the first time), which would otherwise
        land on the hot path. Call once at start-up. Returns the bytes touched.
        """
        cdef uint64_t total = 0
        for name in ("accounts", "hot", "transfers", "links", "pendings", "pending_free", "expiries", "wallet_windows"):
            total += _touch(self._arrays[name])
        total += self.account_map.prefault() + self.transfer_map.prefault() + self.pending_map.prefault()
        return total

    # ---------------------------------------------------------------- checkpoint support

    def snapshot(self):
        """The in-place state as named NumPy views (used parts) and scalars, for a checkpoint.

        The views alias live memory: copy or write them out before the next batch. The
        transfers in memory are not included: a checkpoint takes the ring's unflushed tail
        with ``transfers_range``/``links_range`` (see ``core.Store``).
        """
        a = self._arrays
        arrays = {
            "accounts": a["accounts"][:self.account_count],
            "hot": a["hot"][:self.account_count],
            "pendings": a["pendings"][:self.pending_high],
            "expiries": a["expiries"][:self.expiry_heap.count],
        }
        scalars = {"account_count": self.account_count, "transfer_count": self.transfer_count,
                   "expiry_count": self.expiry_heap.count, "pending_high": self.pending_high,
                   "last_timestamp": self.last_timestamp}
        return arrays, scalars

    def hash_parts(self):
        """The in-memory state the state hash covers (``core.state_hash``), by name: what is
        content, not layout. The transfers are not here: the hash chains them by epoch."""
        arrays, _ = self.snapshot()
        pendings = self.unresolved_pendings()
        # Chain heads are ring slots: where the hot window happens to be, not content.
        hot = arrays["hot"].copy()
        hot["last_debit"] = 0
        hot["last_credit"] = 0
        return {
            "accounts": arrays["accounts"],
            "hot": hot,
            "pending_rows": pendings["row"],
            "pending_numbers": pendings["number"],
            "pending_accounts": np.stack([pendings["debit_index"], pendings["credit_index"]], axis=-1),
        }

    def begin_hot_snapshot(self, target):
        """Start a copy-on-write copy of the accounts' hot records (balances, features) as they
        are now into ``target`` (a HOT_DTYPE array of at least ``account_count`` records): the
        copy is finished by ``copy_hot_snapshot`` on another thread while batches go on; each
        batch copies a record's region itself before it first changes it. ``end_hot_snapshot``
        once the copy is done. Returns the view of ``target`` that will hold it."""
        if self.hot_cow.bytes:
            raise RuntimeError("a hot snapshot is already being taken")
        if self.busy:
            raise RuntimeError("a batch is being applied")
        cdef uint64_t n = self.account_count * sizeof(account_hot_t)
        view = target[:self.account_count]
        if target.dtype != HOT_DTYPE or not target.flags.c_contiguous or target.shape[0] < self.account_count:
            raise ValueError("target must be a contiguous HOT_DTYPE array of at least account_count records")
        if n == 0:
            return view
        cdef unsigned char[::1] raw = view.view(np.uint8)
        self.hot_cow.target = <char *> &raw[0]
        memset(self.hot_cow.state, 1, (n + (1 << COW_REGION_SHIFT) - 1) >> COW_REGION_SHIFT)
        self.hot_cow.bytes = n
        return view

    def copy_hot_snapshot(self):
        """Finish the copy begun by ``begin_hot_snapshot`` (another thread may call this; no GIL)."""
        with nogil:
            cow_copy_all(&self.hot_cow)

    def end_hot_snapshot(self):
        """The copy is finished (``copy_hot_snapshot`` returned): batches stop checking."""
        self.hot_cow.bytes = 0

    def restore(self, arrays, scalars, tail_rows=None, tail_links=None):
        """Load a snapshot into this empty ledger, with the transfers ``[cold_count,
        transfer_count)`` (``tail_rows``/``tail_links``, in order) back in the ring; rebuild the
        id maps, the pending table's free list and the accounts' chain heads (the heap and its
        positions come with the snapshot)."""
        if self.account_count or self.transfer_count:
            raise RuntimeError("restore needs an empty ledger")
        cdef uint64_t n_a = scalars["account_count"], n_t = scalars["transfer_count"]
        cdef uint64_t n_e = scalars["expiry_count"], n_p = scalars["pending_high"]
        tail_rows = np.empty(0, TRANSFER_DTYPE) if tail_rows is None else np.frombuffer(tail_rows, TRANSFER_DTYPE)
        tail_links = np.empty(0, LINKS_DTYPE) if tail_links is None else np.frombuffer(tail_links, LINKS_DTYPE)
        cdef uint64_t n_tail = tail_rows.shape[0]
        if (n_a > self.accounts_max or n_p > self.pending_max or n_e > n_p or n_tail > n_t
                or n_tail > self.transfers_hot_max or tail_links.shape[0] != n_tail):
            raise ValueError(f"snapshot holds {n_a} accounts / {n_p} pending entries / {n_tail} hot transfers: "
                             "more than this ledger's capacity")
        for name in ("accounts", "hot", "pendings", "expiries"):
            flat = np.frombuffer(arrays[name], dtype=self._arrays[name].dtype)
            self._arrays[name][:flat.shape[0]] = flat
        cdef uint64_t i, slot, first = n_t - n_tail
        for i in range(n_a):
            if idmap_put(&self.account_map.map, self.account_rows[i].id_lo, self.account_rows[i].id_hi, i) != 0:
                raise RuntimeError("account map full while restoring")
        self.pending_high = n_p
        for i in range(n_p):
            if self.pendings[i].state == STATE_FREE:
                self.pending_free[self.pending_free_count] = <uint32_t> i
                self.pending_free_count += 1
            elif idmap_put(&self.pending_map.map, self.pendings[i].row.id_lo, self.pendings[i].row.id_hi, i) != 0:
                raise RuntimeError("pending map full while restoring")
            else:
                self.pending_count += 1
        ring = self._arrays["transfers"]
        ring_links = self._arrays["links"]
        # Chain heads are ring slots, which depend on the ring's size (it may have grown since):
        # thread them again from the transfers back in the ring; older ones are cold.
        hot = self._arrays["hot"][:n_a]
        hot["last_debit"] = 0xFFFFFFFF  # INDEX_NONE
        hot["last_credit"] = 0xFFFFFFFF
        for i in range(n_tail):
            slot = (first + i) & self.ring_mask
            ring[slot] = tail_rows[i]
            ring_links[slot] = tail_links[i]
            self.hot[self.links[slot].debit_index].last_debit = <uint32_t> slot
            self.hot[self.links[slot].credit_index].last_credit = <uint32_t> slot
            if idmap_put(&self.transfer_map.map, self.transfer_rows[slot].id_lo, self.transfer_rows[slot].id_hi,
                         <uint32_t> slot) != 0:
                raise RuntimeError("transfer map full while restoring")
        self.account_count = n_a
        self.transfer_count = n_t
        self.hot_first = self.cold_count = first
        self.pruned_below = 0  # the next batch prunes what a continuous run's would
        self.expiry_heap.count = n_e
        self.last_timestamp = scalars["last_timestamp"]

    cdef _enter(self):
        if self.busy:
            raise RuntimeError("Ledger is already applying a batch (one caller at a time)")
        self.busy = True

    # ---------------------------------------------------------------- the state machine

    cdef uint64_t begin_batch(self, uint64_t now_ns, uint64_t count) noexcept nogil:
        """Assign the batch's base timestamp, make room in the ring, expire what is due by then."""
        cdef uint64_t first = now_ns, base, start_legs
        if first <= self.last_timestamp:
            first = self.last_timestamp + 1
        # The transfers of the batch's start (refunds of expired packets) take its first
        # timestamps, the events those after: a pure function of the state and now_ns.
        start_legs = self.start_legs_at_first(first)
        base = first + start_legs
        if count + start_legs:
            self.last_timestamp = base + count - 1
        cdef uint32_t h
        for h in range(self.begin_hook_count):
            self.begin_hooks[h](self.begin_hook_owners[h], base)
        self.evict(count + start_legs)
        self.prune()
        # The pending transfers due by then expire before the start's transfers: a refund must
        # not count a hold that has already ended.
        self.expire_pending(base)
        for h in range(self.start_legs_tables):
            if self.start_legs_counts[h]:
                self.start_legs_run[h](self.start_legs_owners[h], first, self.start_legs_counts[h])
                first += self.start_legs_counts[h]
        return base

    cdef uint64_t start_legs_at(self, uint64_t now_ns) noexcept nogil:
        """The transfers a batch applied at ``now_ns`` would make at its start."""
        return self.start_legs_at_first(now_ns if now_ns > self.last_timestamp else self.last_timestamp + 1)

    cdef uint64_t start_legs_at_first(self, uint64_t first) noexcept nogil:
        """Ask each table making transfers at a batch's start how many it makes by ``first``
        (kept in start_legs_counts); their sum."""
        cdef uint64_t total = 0
        cdef uint32_t h
        for h in range(self.start_legs_tables):
            self.start_legs_counts[h] = self.start_legs_due[h](self.start_legs_owners[h], first)
            tally_assert(self.start_legs_counts[h] <= START_LEGS_MAX)
            total += self.start_legs_counts[h]
        return total

    cdef uint64_t prune_due_below(self) noexcept nogil:
        """The boundary the next prune releases resolved entries below; 0 when none is due."""
        cdef uint64_t epochs, boundary
        if self.prune_epoch_transfers == 0:
            return 0
        epochs = self.transfer_count // self.prune_epoch_transfers
        if epochs <= PRUNE_LAG_EPOCHS:
            return 0
        boundary = (epochs - PRUNE_LAG_EPOCHS) * self.prune_epoch_transfers
        return boundary if boundary > self.pruned_below else 0

    cdef void prune(self) noexcept nogil:
        """Drop pending entries resolved before the prune boundary (see ``enable_pruning``)."""
        cdef uint64_t boundary = self.prune_due_below(), i
        if boundary == 0:
            return
        for i in range(self.pending_high):
            if (self.pendings[i].state != STATE_FREE and self.pendings[i].state != STATE_PENDING
                    and self.pendings[i].resolved_at < boundary):
                self.pending_release(<uint32_t> i)
        self.pruned_below = boundary

    cdef void evict(self, uint64_t count) noexcept nogil:
        """Drop the oldest hot transfers that are already cold, as far as ``count`` new ones need.

        Lazy on purpose: the window stays as large as configured. Without a cold tier nothing is
        ever cold and a full ring refuses new transfers (transfers_limit_reached).
        """
        cdef uint64_t target, slot, ahead
        if self.transfer_count + count <= self.hot_first + self.transfers_hot_max:
            return
        target = self.transfer_count + count - self.transfers_hot_max
        if target > self.cold_count:
            target = self.cold_count
        while self.hot_first < target:
            ahead = self.hot_first + PREFETCH_DISTANCE
            if ahead < target:
                slot = ahead & self.ring_mask
                TALLY_PREFETCH(idmap_home(&self.transfer_map.map, self.transfer_rows[slot].id_lo, self.transfer_rows[slot].id_hi))
            slot = self.hot_first & self.ring_mask
            idmap_remove(&self.transfer_map.map, self.transfer_rows[slot].id_lo, self.transfer_rows[slot].id_hi)
            self.links[slot].number_plus1 = 0
            self.hot_first += 1

    cdef void expire_pending(self, uint64_t now_ns) noexcept nogil:
        cdef pending_t *p
        cdef account_hot_t *dr
        cdef account_hot_t *cr
        while self.expiry_heap.count and self.expiry_heap.items[0].expires_at <= now_ns:
            p = &self.pendings[self.expiry_heap.items[0].entry]
            heap_remove(&self.expiry_heap, 0)
            if p.state != STATE_PENDING:
                continue  # posted or voided since, not yet pruned
            p.state = STATE_EXPIRED
            p.resolved_at = self.transfer_count
            guard_hot(&self.hot_cow, p.debit_index)
            guard_hot(&self.hot_cow, p.credit_index)
            dr = &self.hot[p.debit_index]
            cr = &self.hot[p.credit_index]
            tally_assert(dr.debits_pending >= p.row.amount and cr.credits_pending >= p.row.amount)
            dr.debits_pending -= p.row.amount
            cr.credits_pending -= p.row.amount
            if p.limited:
                self.tier_give_back(p, p.row.amount, False)

    # -- the pending table

    cdef uint32_t pending_insert(self, const tally_transfer_t *row, uint32_t debit_index,
                                 uint32_t credit_index, bint limited) noexcept nogil:
        """Enter a new pending transfer (the caller checked there is room)."""
        cdef uint32_t entry
        cdef pending_t *p
        if self.pending_free_count:
            self.pending_free_count -= 1
            entry = self.pending_free[self.pending_free_count]
        else:
            entry = <uint32_t> self.pending_high
            self.pending_high += 1
        p = &self.pendings[entry]
        p.row = row[0]
        p.number = self.transfer_count - 1
        p.resolved_at = 0
        p.debit_index = debit_index
        p.credit_index = credit_index
        p.heap_pos = HEAP_POSITION_NONE
        p.state = STATE_PENDING
        p.limited = limited
        if idmap_put(&self.pending_map.map, row.id_lo, row.id_hi, entry) != 0:
            tally_assert(False)
        self.pending_count += 1
        return entry

    cdef void pending_release(self, uint32_t entry) noexcept nogil:
        cdef pending_t *p = &self.pendings[entry]
        idmap_remove(&self.pending_map.map, p.row.id_lo, p.row.id_hi)
        if p.heap_pos != HEAP_POSITION_NONE:
            heap_remove(&self.expiry_heap, p.heap_pos)
        p.state = STATE_FREE
        self.pending_free[self.pending_free_count] = entry
        self.pending_free_count += 1
        self.pending_count -= 1

    cdef const tally_transfer_t *find_transfer(self, uint64_t lo, uint64_t hi) noexcept nogil:
        """A transfer by id: hot window, pending table, then this batch's prefetched cold rows."""
        cdef uint32_t i = idmap_get(&self.transfer_map.map, lo, hi)
        if i != IDMAP_NOT_FOUND:
            return &self.transfer_rows[i]
        if self.pending_count:  # (an empty pending table: no probe, no cache miss)
            i = idmap_get(&self.pending_map.map, lo, hi)
            if i != IDMAP_NOT_FOUND:
                return &self.pendings[i].row
        if self.cold_cached:
            i = idmap_get(&self.cold_map.map, lo, hi)
            if i != IDMAP_NOT_FOUND:
                return &self.cold_rows[i]
        return NULL

    cdef uint8_t cold_state(self, uint64_t lo, uint64_t hi) noexcept nogil:
        """State of a pending transfer no longer in the pending table (prefetched with its row)."""
        cdef uint32_t i = idmap_get(&self.cold_map.map, lo, hi) if self.cold_cached else IDMAP_NOT_FOUND
        if i == IDMAP_NOT_FOUND:
            return STATE_FREE  # not prefetched: the caller answers without changing anything
        return self.cold_states[i]

    cdef bint chain_valid(self, uint32_t slot, uint32_t account, bint debit) noexcept nogil:
        """Whether an account's chain head (a ring slot) still holds one of its transfers."""
        cdef transfer_links_t *l = &self.links[slot]
        if l.number_plus1 == 0 or l.number_plus1 <= self.hot_first:
            return False
        return (l.debit_index if debit else l.credit_index) == account

    # -- accounts

    cdef void apply_accounts(self, tally_account_t *events, uint64_t count, uint64_t base_ts,
                             uint32_t *results) noexcept nogil:
        cdef uint64_t i = 0, last, k, account_count
        cdef result_t r
        while i < count:
            last = chain_end(&events[0].flags, sizeof(tally_account_t), i, count, ACCOUNT_LINKED)
            if last == i and not (events[i].flags & ACCOUNT_LINKED):
                results[i] = self.create_account(&events[i], base_ts + i)
            else:
                account_count = self.account_count
                # Account chains save nothing to undo (new accounts are simply dropped), but the
                # undo logs may still hold a previous batch's entries: start them empty.
                self.undo_begin()
                for k in range(i, last + 1):
                    if k == count - 1 and events[k].flags & ACCOUNT_LINKED:
                        r = R_LINKED_EVENT_CHAIN_OPEN
                    else:
                        r = self.create_account(&events[k], base_ts + k)
                    results[k] = r
                    if r != R_OK:
                        self.rollback(account_count, self.transfer_count, self.expiring_count)
                        fail_chain(results, i, last, k)
                        break
            i = last + 1

    cdef result_t create_account(self, tally_account_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t k, existing
        cdef tally_account_t *a
        if e.timestamp != 0:
            return R_TIMESTAMP_MUST_BE_ZERO
        for k in range(ACCOUNT_RESERVED_SIZE):
            if e.reserved[k] != 0:
                return R_RESERVED_FIELD
        if e.flags & ~ACCOUNT_FLAGS_KNOWN:
            return R_RESERVED_FLAG
        if e.id_lo == 0 and e.id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if is_max(e.id_lo, e.id_hi):
            return R_ID_MUST_NOT_BE_INT_MAX
        if (e.flags & ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS) and (e.flags & ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS):
            return R_FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if e.debits_pending != 0:
            return R_DEBITS_PENDING_MUST_BE_ZERO
        if e.debits_posted != 0:
            return R_DEBITS_POSTED_MUST_BE_ZERO
        if e.credits_pending != 0:
            return R_CREDITS_PENDING_MUST_BE_ZERO
        if e.credits_posted != 0:
            return R_CREDITS_POSTED_MUST_BE_ZERO
        if e.ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        if e.code == 0:
            return R_CODE_MUST_NOT_BE_ZERO
        existing = idmap_get(&self.account_map.map, e.id_lo, e.id_hi)
        if existing != IDMAP_NOT_FOUND:
            a = &self.account_rows[existing]
            if (a.flags & ~ACCOUNT_LINKED) != (e.flags & ~ACCOUNT_LINKED):
                return R_EXISTS_WITH_DIFFERENT_FLAGS
            if a.user_data_128_lo != e.user_data_128_lo or a.user_data_128_hi != e.user_data_128_hi:
                return R_EXISTS_WITH_DIFFERENT_USER_DATA_128
            if a.user_data_64 != e.user_data_64:
                return R_EXISTS_WITH_DIFFERENT_USER_DATA_64
            if a.user_data_32 != e.user_data_32:
                return R_EXISTS_WITH_DIFFERENT_USER_DATA_32
            if a.ledger != e.ledger:
                return R_EXISTS_WITH_DIFFERENT_LEDGER
            if a.code != e.code:
                return R_EXISTS_WITH_DIFFERENT_CODE
            return R_EXISTS
        if self.account_count >= self.accounts_limit:
            return R_ACCOUNTS_LIMIT_REACHED
        k = <uint32_t> self.account_count
        self.account_rows[k] = e[0]
        self.account_rows[k].timestamp = ts
        guard_hot(&self.hot_cow, k)
        memset(&self.hot[k], 0, sizeof(account_hot_t))
        self.hot[k].ledger = e.ledger
        self.hot[k].flags = e.flags
        self.hot[k].code = e.code
        self.hot[k].last_debit = INDEX_NONE
        self.hot[k].last_credit = INDEX_NONE
        idmap_put(&self.account_map.map, e.id_lo, e.id_hi, k)
        self.account_count += 1
        return R_OK

    # -- transfers

    cdef void apply_transfers(self, tally_transfer_t *events, uint64_t count, uint64_t base_ts,
                              uint32_t *results) noexcept nogil:
        cdef uint64_t i, k, last, ahead, account_count, transfer_count, expiring_count
        cdef uint32_t *dr = self.scratch_debit
        cdef uint32_t *cr = self.scratch_credit
        cdef bint chained, tiers_in_use = self.tiers_in_use
        cdef result_t r
        # Pass 1: resolve both accounts of every event, fetching the map slots of the events
        # PREFETCH_DISTANCE ahead. Accounts never change within a transfer batch.
        for i in range(count):
            ahead = i + PREFETCH_DISTANCE
            if ahead < count:
                TALLY_PREFETCH(idmap_home(&self.account_map.map, events[ahead].debit_account_id_lo, events[ahead].debit_account_id_hi))
                TALLY_PREFETCH(idmap_home(&self.account_map.map, events[ahead].credit_account_id_lo, events[ahead].credit_account_id_hi))
            dr[i] = idmap_get(&self.account_map.map, events[i].debit_account_id_lo, events[i].debit_account_id_hi)
            cr[i] = idmap_get(&self.account_map.map, events[i].credit_account_id_lo, events[i].credit_account_id_hi)
        # Pass 2: apply in order, fetching the account records and transfer-map slot ahead.
        i = 0
        while i < count:
            last = chain_end(&events[0].flags, sizeof(tally_transfer_t), i, count, TRANSFER_LINKED)
            chained = last != i or (events[i].flags & TRANSFER_LINKED) != 0
            account_count = self.account_count
            transfer_count = self.transfer_count
            expiring_count = self.expiring_count
            if chained:  # undo_begin(), written out (a call per transfer costs more than the stores);
                self.account_undo_count = 0  # a lone transfer saves nothing to undo
                self.state_undo_count = 0
                self.window_undo_count = 0
            for k in range(i, last + 1):
                ahead = k + PREFETCH_DISTANCE
                if ahead < count:
                    if dr[ahead] != INDEX_NONE:
                        TALLY_PREFETCH(&self.hot[dr[ahead]])
                        TALLY_PREFETCH(&self.hot[dr[ahead]].code_counts)
                    if cr[ahead] != INDEX_NONE:
                        TALLY_PREFETCH(&self.hot[cr[ahead]])
                        TALLY_PREFETCH(&self.hot[cr[ahead]].code_counts)
                    TALLY_PREFETCH(idmap_home(&self.transfer_map.map, events[ahead].id_lo, events[ahead].id_hi))
                # A tiered payer's windows: known once its record (fetched PREFETCH_DISTANCE
                # ahead) is in, so asked for half as far ahead.
                ahead = k + PREFETCH_DISTANCE // 2
                if tiers_in_use and ahead < count and dr[ahead] != INDEX_NONE and self.hot[dr[ahead]].flags & TIER_MASK:
                    TALLY_PREFETCH(&self.windows[dr[ahead]])
                if chained and k == count - 1 and events[k].flags & TRANSFER_LINKED:
                    r = R_LINKED_EVENT_CHAIN_OPEN
                else:
                    r = self.create_transfer(&events[k], base_ts + k, dr[k], cr[k], chained)
                results[k] = r
                if r != R_OK and chained:
                    self.rollback(account_count, transfer_count, expiring_count)
                    fail_chain(results, i, last, k)
                    break
            i = last + 1

    cdef result_t create_transfer(self, tally_transfer_t *e, uint64_t ts, uint32_t debit_index,
                                  uint32_t credit_index, bint in_chain, bint is_leg=False) noexcept nogil:
        cdef uint16_t flags = e.flags
        cdef uint64_t reserved, amount, available, existing_index
        cdef account_hot_t *dr
        cdef account_hot_t *cr
        cdef const tally_transfer_t *x
        cdef bint balancing, tiered = False
        cdef result_t r
        if e.timestamp != 0:
            return R_TIMESTAMP_MUST_BE_ZERO
        memcpy(&reserved, e.reserved, 8)
        if reserved != 0:
            return R_RESERVED_FIELD
        if flags & ~TRANSFER_FLAGS_KNOWN:
            return R_RESERVED_FLAG
        if e.id_lo == 0 and e.id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if is_max(e.id_lo, e.id_hi):
            return R_ID_MUST_NOT_BE_INT_MAX
        if (e.id_hi >> 48) == LEG_ID_TAG and not is_leg:
            return R_ID_RESERVED
        if ((flags & TRANSFER_PENDING != 0) + (flags & TRANSFER_POST_PENDING != 0)
                + (flags & TRANSFER_VOID_PENDING != 0)) > 1 or (
                (flags & (TRANSFER_BALANCING_DEBIT | TRANSFER_BALANCING_CREDIT))
                and (flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING))):
            return R_FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING):
            return self.post_or_void(e, ts, in_chain, is_leg)

        if e.pending_id_lo != 0 or e.pending_id_hi != 0:
            return R_PENDING_ID_MUST_BE_ZERO
        if e.timeout != 0 and not (flags & TRANSFER_PENDING):
            return R_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if e.debit_account_id_lo == 0 and e.debit_account_id_hi == 0:
            return R_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if is_max(e.debit_account_id_lo, e.debit_account_id_hi):
            return R_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if e.credit_account_id_lo == 0 and e.credit_account_id_hi == 0:
            return R_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if is_max(e.credit_account_id_lo, e.credit_account_id_hi):
            return R_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if e.debit_account_id_lo == e.credit_account_id_lo and e.debit_account_id_hi == e.credit_account_id_hi:
            return R_ACCOUNTS_MUST_BE_DIFFERENT
        if e.amount == 0:
            return R_AMOUNT_MUST_NOT_BE_ZERO
        if e.ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        if e.code == 0:
            return R_CODE_MUST_NOT_BE_ZERO
        if debit_index == INDEX_NONE:
            return R_DEBIT_ACCOUNT_NOT_FOUND
        if credit_index == INDEX_NONE:
            return R_CREDIT_ACCOUNT_NOT_FOUND
        dr = &self.hot[debit_index]
        cr = &self.hot[credit_index]
        if dr.ledger != cr.ledger:
            return R_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if e.ledger != dr.ledger:
            return R_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS

        x = self.find_transfer(e.id_lo, e.id_hi)
        if TALLY_UNLIKELY(x != NULL):
            balancing = (flags & (TRANSFER_BALANCING_DEBIT | TRANSFER_BALANCING_CREDIT)) != 0
            if (x.flags & ~TRANSFER_LINKED) != (flags & ~TRANSFER_LINKED):
                return R_EXISTS_WITH_DIFFERENT_FLAGS
            if x.debit_account_id_lo != e.debit_account_id_lo or x.debit_account_id_hi != e.debit_account_id_hi:
                return R_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
            if x.credit_account_id_lo != e.credit_account_id_lo or x.credit_account_id_hi != e.credit_account_id_hi:
                return R_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
            if (e.amount < x.amount) if balancing else (e.amount != x.amount):
                return R_EXISTS_WITH_DIFFERENT_AMOUNT
            return exists_tail(e, x, True)

        # Closed accounts and tiered wallets are rare: one test of both accounts' flags for both.
        if TALLY_UNLIKELY((dr.flags | cr.flags) & (ACCOUNT_CLOSED | TIER_MASK)):
            if dr.flags & ACCOUNT_CLOSED:
                return R_DEBIT_ACCOUNT_CLOSED
            if cr.flags & ACCOUNT_CLOSED:
                return R_CREDIT_ACCOUNT_CLOSED
            tiered = (dr.flags | cr.flags) & TIER_MASK

        amount = e.amount
        if flags & TRANSFER_BALANCING_DEBIT:
            # debits_pending + debits_posted never overflows: overflows_debits guards it.
            available = dr.debits_pending + dr.debits_posted
            available = dr.credits_posted - available if dr.credits_posted > available else 0
            if available == 0:
                return R_EXCEEDS_CREDITS
            if amount > available:
                amount = available
        if flags & TRANSFER_BALANCING_CREDIT:
            available = cr.credits_pending + cr.credits_posted
            available = cr.debits_posted - available if cr.debits_posted > available else 0
            if available == 0:
                return R_EXCEEDS_DEBITS
            if amount > available:
                amount = available

        if flags & TRANSFER_PENDING:
            if add_overflows(dr.debits_pending, amount):
                return R_OVERFLOWS_DEBITS_PENDING
            if add_overflows(cr.credits_pending, amount):
                return R_OVERFLOWS_CREDITS_PENDING
        else:
            if add_overflows(dr.debits_posted, amount):
                return R_OVERFLOWS_DEBITS_POSTED
            if add_overflows(cr.credits_posted, amount):
                return R_OVERFLOWS_CREDITS_POSTED
        if add_overflows(dr.debits_pending + dr.debits_posted, amount):
            return R_OVERFLOWS_DEBITS
        if add_overflows(cr.credits_pending + cr.credits_posted, amount):
            return R_OVERFLOWS_CREDITS
        if e.timeout != 0 and add_overflows(ts, <uint64_t> e.timeout * NS_PER_S):
            return R_OVERFLOWS_TIMEOUT
        if (dr.flags & ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS
                and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted):
            return R_EXCEEDS_CREDITS
        if (cr.flags & ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS
                and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted):
            return R_EXCEEDS_DEBITS
        if self.transfer_count - self.hot_first >= self.transfers_hot_max:
            return R_TRANSFERS_LIMIT_REACHED
        if flags & TRANSFER_PENDING and self.pending_count >= self.pending_limit:
            return R_TRANSFERS_LIMIT_REACHED
        # A tiered wallet's limits, last: checked and counted at once (nothing after can fail).
        if TALLY_UNLIKELY(tiered):
            r = self.tier_apply(debit_index, credit_index, amount, ts, in_chain)
            if r != R_OK:
                return r

        guard_hot(&self.hot_cow, debit_index)
        guard_hot(&self.hot_cow, credit_index)
        if in_chain:
            self.save_account(debit_index)
            self.save_account(credit_index)
        if flags & TRANSFER_PENDING:
            dr.debits_pending += amount
            cr.credits_pending += amount
            touch(dr, ts)
            touch(cr, ts)
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
            settle(dr, e.code, ts)
            settle(cr, e.code, ts)
        # Balances never wrap (the overflow checks above guarantee it; TALLY_DEBUG builds check).
        tally_assert(dr.debits_pending >= (amount if flags & TRANSFER_PENDING else 0)
                     and dr.debits_posted >= (0 if flags & TRANSFER_PENDING else amount)
                     and dr.debits_pending + dr.debits_posted >= dr.debits_posted
                     and cr.credits_pending + cr.credits_posted >= cr.credits_posted)
        cdef tally_transfer_t row = e[0]
        row.amount = amount
        row.timestamp = ts
        self.append_transfer(&row, debit_index, credit_index)
        cdef uint32_t entry
        if flags & TRANSFER_PENDING:
            entry = self.pending_insert(&row, debit_index, credit_index, (dr.flags & TIER_MASK) != 0)
            if e.timeout != 0:
                self.expiring[self.expiring_count] = entry
                self.expiring_count += 1
        return R_OK

    cdef result_t post_or_void(self, tally_transfer_t *e, uint64_t ts, bint in_chain, bint is_leg=False) noexcept nogil:
        cdef bint post = (e.flags & TRANSFER_POST_PENDING) != 0
        cdef uint32_t entry, debit_index, credit_index
        cdef const tally_transfer_t *p
        cdef const tally_transfer_t *x
        cdef pending_t *pending = NULL
        cdef account_hot_t *dr
        cdef account_hot_t *cr
        cdef uint64_t amount
        cdef uint8_t state
        if e.pending_id_lo == 0 and e.pending_id_hi == 0:
            return R_PENDING_ID_MUST_NOT_BE_ZERO
        if is_max(e.pending_id_lo, e.pending_id_hi):
            return R_PENDING_ID_MUST_NOT_BE_INT_MAX
        if e.pending_id_lo == e.id_lo and e.pending_id_hi == e.id_hi:
            return R_PENDING_ID_MUST_BE_DIFFERENT
        if e.timeout != 0:
            return R_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        # Unresolved (or recently resolved) pendings are in the table whatever their age; a
        # pending resolved long ago has its row and final state in the prefetch cache.
        entry = idmap_get(&self.pending_map.map, e.pending_id_lo, e.pending_id_hi)
        if entry != IDMAP_NOT_FOUND:
            pending = &self.pendings[entry]
            p = &pending.row
            state = pending.state
        else:
            p = self.find_transfer(e.pending_id_lo, e.pending_id_hi)
            if p == NULL:
                return R_PENDING_TRANSFER_NOT_FOUND
            state = self.cold_state(e.pending_id_lo, e.pending_id_hi) if p.flags & TRANSFER_PENDING else STATE_SETTLED
        if not (p.flags & TRANSFER_PENDING):
            return R_PENDING_TRANSFER_NOT_PENDING
        if (e.pending_id_hi >> 48) == LEG_ID_TAG and not is_leg:
            return R_ID_RESERVED  # a product's hold (a payment code's charge): only the product resolves it
        if ((e.debit_account_id_lo or e.debit_account_id_hi) and
                (e.debit_account_id_lo != p.debit_account_id_lo or e.debit_account_id_hi != p.debit_account_id_hi)):
            return R_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if ((e.credit_account_id_lo or e.credit_account_id_hi) and
                (e.credit_account_id_lo != p.credit_account_id_lo or e.credit_account_id_hi != p.credit_account_id_hi)):
            return R_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if e.ledger != 0 and e.ledger != p.ledger:
            return R_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if e.code != 0 and e.code != p.code:
            return R_PENDING_TRANSFER_HAS_DIFFERENT_CODE
        if post:
            if e.amount > p.amount:
                return R_EXCEEDS_PENDING_TRANSFER_AMOUNT
        elif e.amount != 0 and e.amount != p.amount:
            return R_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT

        x = self.find_transfer(e.id_lo, e.id_hi)
        if x != NULL:
            if (x.flags & ~TRANSFER_LINKED) != (e.flags & ~TRANSFER_LINKED):
                return R_EXISTS_WITH_DIFFERENT_FLAGS
            if x.pending_id_lo != e.pending_id_lo or x.pending_id_hi != e.pending_id_hi:
                return R_EXISTS_WITH_DIFFERENT_PENDING_ID
            if ((e.debit_account_id_lo or e.debit_account_id_hi) and
                    (x.debit_account_id_lo != e.debit_account_id_lo or x.debit_account_id_hi != e.debit_account_id_hi)):
                return R_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
            if ((e.credit_account_id_lo or e.credit_account_id_hi) and
                    (x.credit_account_id_lo != e.credit_account_id_lo or x.credit_account_id_hi != e.credit_account_id_hi)):
                return R_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
            if e.amount != 0 and e.amount != x.amount:
                return R_EXISTS_WITH_DIFFERENT_AMOUNT
            return exists_tail(e, x, False)

        if state == STATE_POSTED:
            return R_PENDING_TRANSFER_ALREADY_POSTED
        if state == STATE_VOIDED:
            return R_PENDING_TRANSFER_ALREADY_VOIDED
        if state == STATE_EXPIRED or (p.timeout != 0 and expires_at_of(p) <= ts):
            return R_PENDING_TRANSFER_EXPIRED
        if pending == NULL:
            # A pending state outside the pending table, or a status the store did not
            # prefetch: an invariant is broken. Refuse without changing anything.
            tally_assert(False)
            return R_PENDING_TRANSFER_NOT_FOUND
        debit_index = pending.debit_index
        credit_index = pending.credit_index
        dr = &self.hot[debit_index]
        cr = &self.hot[credit_index]
        amount = (e.amount if e.amount != 0 else p.amount) if post else p.amount
        if post:
            if add_overflows(dr.debits_posted, amount):
                return R_OVERFLOWS_DEBITS_POSTED
            if add_overflows(cr.credits_posted, amount):
                return R_OVERFLOWS_CREDITS_POSTED
        if self.transfer_count - self.hot_first >= self.transfers_hot_max:
            return R_TRANSFERS_LIMIT_REACHED

        guard_hot(&self.hot_cow, debit_index)
        guard_hot(&self.hot_cow, credit_index)
        if in_chain:
            self.save_account(debit_index)
            self.save_account(credit_index)
            self.state_undo[self.state_undo_count].entry = entry
            self.state_undo[self.state_undo_count].state = state
            self.state_undo[self.state_undo_count].resolved_at = pending.resolved_at
            self.state_undo_count += 1
        tally_assert(dr.debits_pending >= p.amount and cr.credits_pending >= p.amount)
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if post:
            dr.debits_posted += amount
            cr.credits_posted += amount
            settle(dr, p.code, ts)
            settle(cr, p.code, ts)
        else:
            touch(dr, ts)
            touch(cr, ts)
        if pending.limited and (not post or amount < p.amount):
            # The allowance the hold took and does not use comes back (docs/products.md).
            self.tier_give_back(pending, p.amount - amount if post else p.amount, in_chain)
        pending.state = STATE_POSTED if post else STATE_VOIDED
        pending.resolved_at = self.transfer_count
        cdef tally_transfer_t row = e[0]
        row.debit_account_id_lo = p.debit_account_id_lo
        row.debit_account_id_hi = p.debit_account_id_hi
        row.credit_account_id_lo = p.credit_account_id_lo
        row.credit_account_id_hi = p.credit_account_id_hi
        row.ledger = p.ledger
        row.code = p.code
        row.amount = amount
        row.timestamp = ts
        self.append_transfer(&row, debit_index, credit_index)
        return R_OK

    cdef void append_transfer(self, const tally_transfer_t *row, uint32_t debit_index,
                              uint32_t credit_index) noexcept nogil:
        """Store a new transfer (caller checked there is room) and thread it onto both chains."""
        cdef uint64_t n = self.transfer_count
        cdef uint32_t slot = <uint32_t> (n & self.ring_mask)
        cdef uint32_t head
        cdef transfer_links_t link
        tally_assert(n - self.hot_first < self.transfers_hot_max and self.links[slot].number_plus1 == 0)
        # Rows and links are written once, in order, and rarely read soon after: streaming
        # stores skip reading their cache lines from memory first.
        tally_stream_store(&self.transfer_rows[slot], row, sizeof(tally_transfer_t))
        link.number_plus1 = n + 1
        head = self.hot[debit_index].last_debit
        link.prev_debit = self.links[head].number_plus1 if head != INDEX_NONE and self.chain_valid(head, debit_index, True) else 0
        head = self.hot[credit_index].last_credit
        link.prev_credit = self.links[head].number_plus1 if head != INDEX_NONE and self.chain_valid(head, credit_index, False) else 0
        link.debit_index = debit_index
        link.credit_index = credit_index
        tally_stream_store(&self.links[slot], &link, sizeof(transfer_links_t))
        self.hot[debit_index].last_debit = slot
        self.hot[credit_index].last_credit = slot
        if idmap_put(&self.transfer_map.map, row.id_lo, row.id_hi, slot) != 0:
            tally_assert(False)
        self.transfer_count = n + 1

    cdef void save_account(self, uint32_t index) noexcept nogil:
        cdef account_undo_t *u = &self.account_undo[self.account_undo_count]
        u.index = index
        u.saved = self.hot[index]
        self.account_undo_count += 1

    cdef void undo_begin(self) noexcept nogil:
        """A chain begins: the undo logs start empty (a previous batch may have left entries)."""
        self.account_undo_count = 0
        self.state_undo_count = 0
        self.window_undo_count = 0

    # -- wallet tiers (docs/products.md "Wallet limits and real-name tiers (built)")

    cdef result_t tier_apply(self, uint32_t debit_index, uint32_t credit_index, uint64_t amount, uint64_t ts,
                             bint in_chain) noexcept nogil:
        """Check a transfer against its tiered wallets' limits (the debited one's per-payment,
        daily and yearly, the credited one's balance); if it passes, count it in the debited
        wallet's windows (saved first inside a chain). The caller's checks have all passed."""
        cdef account_hot_t *dr = &self.hot[debit_index]
        cdef account_hot_t *cr = &self.hot[credit_index]
        cdef uint32_t tier = dr.flags >> TIER_SHIFT
        cdef const tier_rule_t *rule
        cdef wallet_window_t *w = NULL
        cdef uint64_t day = ts // NS_PER_DAY, day_spent = 0, year_spent = 0, held
        cdef uint32_t year = 0
        if tier:
            rule = tier_rule_of(self.tier_rules, self.tier_rule_count, dr.ledger, tier)
            if amount > rule.payment_max:
                return R_EXCEEDS_PAYMENT_LIMIT
            w = &self.windows[debit_index]
            if w.year != 0 and w.day == day:  # (year 0: the windows were never used)
                day_spent, year, year_spent = w.day_spent, w.year, w.year_spent
            else:  # a new day: a new year only if the calendar says so
                year = civil_year(day)
                year_spent = w.year_spent if w.year == year else 0
            if amount > rule.daily_max or day_spent > rule.daily_max - amount:
                return R_EXCEEDS_DAILY_LIMIT
            if amount > rule.yearly_max or year_spent > rule.yearly_max - amount:
                return R_EXCEEDS_YEARLY_LIMIT
        tier = cr.flags >> TIER_SHIFT
        if tier:
            rule = tier_rule_of(self.tier_rules, self.tier_rule_count, cr.ledger, tier)
            # What the wallet would hold (no overflow: overflows_credits was checked).
            held = cr.credits_posted + cr.credits_pending + amount
            held = held - cr.debits_posted if held > cr.debits_posted else 0
            if held > rule.balance_max:
                return R_EXCEEDS_BALANCE_LIMIT
        if w != NULL:
            if in_chain:
                self.window_undo[self.window_undo_count].index = debit_index
                self.window_undo[self.window_undo_count].saved = w[0]
                self.window_undo_count += 1
            w.day = <uint32_t> day
            w.day_spent = day_spent + amount
            w.year = year
            w.year_spent = year_spent + amount
        return R_OK

    cdef void tier_give_back(self, const pending_t *p, uint64_t amount, bint in_chain) noexcept nogil:
        """A counted hold is voided, expires or is posted for less: ``amount`` leaves the counts
        of the windows it was counted in, if they are still the wallet's current ones."""
        cdef wallet_window_t *w = &self.windows[p.debit_index]
        cdef uint64_t day = p.row.timestamp // NS_PER_DAY
        cdef bint same_day = w.year != 0 and w.day == day
        cdef bint same_year = w.year != 0 and (same_day or w.year == civil_year(day))
        if not same_year or amount == 0:
            return
        if in_chain:
            self.window_undo[self.window_undo_count].index = p.debit_index
            self.window_undo[self.window_undo_count].saved = w[0]
            self.window_undo_count += 1
        if same_day:
            w.day_spent -= amount if amount < w.day_spent else w.day_spent
        w.year_spent -= amount if amount < w.year_spent else w.year_spent

    cdef void set_tier(self, uint32_t index, uint32_t tier, uint64_t ts) noexcept nogil:
        """An account's tier (0..3) from ``ts`` on (core/tiers.pyx checked it)."""
        guard_hot(&self.hot_cow, index)
        self.hot[index].flags = <uint16_t> ((self.hot[index].flags & ~(<uint16_t> TIER_MASK)) | (tier << TIER_SHIFT))
        if tier:
            self.tiers_in_use = True
        self.windows[index].tier_set_at = ts

    cdef void rollback(self, uint64_t account_count, uint64_t transfer_count,
                       uint64_t expiring_count) noexcept nogil:
        """Undo a failed chain: restore saved accounts, pending states and wallet windows
        (newest first), drop new records."""
        cdef account_undo_t *u
        cdef state_undo_t *s
        cdef window_undo_t *v
        cdef uint32_t slot, entry
        self.expiring_count = expiring_count
        while self.account_undo_count:
            self.account_undo_count -= 1
            u = &self.account_undo[self.account_undo_count]
            guard_hot(&self.hot_cow, u.index)
            self.hot[u.index] = u.saved
        while self.state_undo_count:
            self.state_undo_count -= 1
            s = &self.state_undo[self.state_undo_count]
            self.pendings[s.entry].state = s.state
            self.pendings[s.entry].resolved_at = s.resolved_at
        while self.window_undo_count:
            self.window_undo_count -= 1
            v = &self.window_undo[self.window_undo_count]
            self.windows[v.index] = v.saved
        while self.transfer_count > transfer_count:
            self.transfer_count -= 1
            slot = <uint32_t> (self.transfer_count & self.ring_mask)
            if self.transfer_rows[slot].flags & TRANSFER_PENDING:
                entry = idmap_get(&self.pending_map.map, self.transfer_rows[slot].id_lo, self.transfer_rows[slot].id_hi)
                tally_assert(entry != IDMAP_NOT_FOUND)
                self.pending_release(entry)
            idmap_remove(&self.transfer_map.map, self.transfer_rows[slot].id_lo, self.transfer_rows[slot].id_hi)
            memset(&self.transfer_rows[slot], 0, sizeof(tally_transfer_t))
            memset(&self.links[slot], 0, sizeof(transfer_links_t))
        # Every undo entry was applied, newest first: the logs are empty again.
        tally_assert(self.account_undo_count == 0 and self.state_undo_count == 0 and self.window_undo_count == 0)
        while self.account_count > account_count:
            self.account_count -= 1
            idmap_remove(&self.account_map.map, self.account_rows[self.account_count].id_lo,
                                    self.account_rows[self.account_count].id_hi)
            memset(&self.account_rows[self.account_count], 0, sizeof(tally_account_t))
            guard_hot(&self.hot_cow, <uint32_t> self.account_count)
            memset(&self.hot[self.account_count], 0, sizeof(account_hot_t))

    # -- legs and typed undo (docs/products.md): a product event's transfers and its own fields,
    # all or nothing. chain_begin marks, leg adds a transfer (every check of a client's transfer
    # applies), save_field records a product field before it is written, chain_abort undoes it all.

    cdef void chain_begin(self, chain_mark_t *mark) noexcept nogil:
        mark.account_count = self.account_count
        mark.transfer_count = self.transfer_count
        mark.expiring_count = self.expiring_count
        self.undo_begin()
        self.field_undo_count = 0

    cdef void chain_abort(self, const chain_mark_t *mark) noexcept nogil:
        cdef field_undo_t *f
        while self.field_undo_count:
            self.field_undo_count -= 1
            f = &self.field_undo[self.field_undo_count]
            memcpy(f.address, f.saved, f.size)
        self.rollback(mark.account_count, mark.transfer_count, mark.expiring_count)

    cdef void save_field(self, void *address, uint32_t size) noexcept nogil:
        cdef field_undo_t *f
        tally_assert(size <= FIELD_UNDO_BYTES and self.field_undo_count < FIELD_UNDO_MAX)
        f = &self.field_undo[self.field_undo_count]
        f.address = <uint8_t *> address
        f.size = size
        memcpy(f.saved, address, size)
        self.field_undo_count += 1

    cdef result_t leg(self, uint64_t id_lo, uint64_t id_hi, uint32_t debit_index, uint32_t credit_index,
                      uint64_t amount, uint32_t ledger, uint16_t code, uint16_t flags,
                      uint64_t user_data_lo, uint64_t user_data_hi, uint64_t ts, uint32_t timeout_s=0) noexcept nogil:
        """One transfer of a product event's chain, between accounts the product resolved; its
        result is a client transfer's (limits, overflows, closed accounts, an existing id). A
        pending leg may have a timeout: the ledger expires it by the clock (expire_pending)."""
        cdef tally_transfer_t row
        memset(&row, 0, sizeof(row))
        row.timeout = timeout_s
        row.id_lo = id_lo
        row.id_hi = id_hi
        row.debit_account_id_lo = self.account_rows[debit_index].id_lo
        row.debit_account_id_hi = self.account_rows[debit_index].id_hi
        row.credit_account_id_lo = self.account_rows[credit_index].id_lo
        row.credit_account_id_hi = self.account_rows[credit_index].id_hi
        row.amount = amount
        row.user_data_128_lo = user_data_lo
        row.user_data_128_hi = user_data_hi
        row.ledger = ledger
        row.code = code
        row.flags = flags
        return self.create_transfer(&row, ts, debit_index, credit_index, True, True)

    cdef result_t leg_resolve(self, uint64_t id_lo, uint64_t id_hi, uint64_t pending_lo, uint64_t pending_hi,
                              bint post, uint64_t ts) noexcept nogil:
        """Post (the whole amount) or void a pending leg, as a leg of the current chain."""
        cdef tally_transfer_t row
        memset(&row, 0, sizeof(row))
        row.id_lo = id_lo
        row.id_hi = id_hi
        row.pending_id_lo = pending_lo
        row.pending_id_hi = pending_hi
        row.flags = TRANSFER_POST_PENDING if post else TRANSFER_VOID_PENDING
        return self.post_or_void(&row, ts, True, True)

    cdef int add_begin_hook(self, begin_hook_t hook, void *owner) except -1:
        """Call ``hook(owner, base)`` at every batch's start, after those added before."""
        if self.begin_hook_count >= BEGIN_HOOKS_MAX:
            raise ValueError(f"a ledger takes at most {BEGIN_HOOKS_MAX} tables expiring at its batches' start")
        self.begin_hooks[self.begin_hook_count] = hook
        self.begin_hook_owners[self.begin_hook_count] = owner
        self.begin_hook_count += 1
        return 0

    cdef int add_start_legs(self, start_legs_due_t due, start_legs_run_t run, void *owner) except -1:
        """Let ``owner`` make transfers at every batch's start (see begin_batch), after those
        added before."""
        if self.start_legs_tables >= START_LEGS_TABLES_MAX:
            raise ValueError(f"a ledger takes at most {START_LEGS_TABLES_MAX} tables making transfers at its batches' start")
        self.start_legs_due[self.start_legs_tables] = due
        self.start_legs_run[self.start_legs_tables] = run
        self.start_legs_owners[self.start_legs_tables] = owner
        self.start_legs_tables += 1
        return 0

    cdef void remove_start_legs(self, void *owner) noexcept:
        cdef uint32_t h, kept = 0
        for h in range(self.start_legs_tables):
            if self.start_legs_owners[h] != owner:
                self.start_legs_due[kept] = self.start_legs_due[h]
                self.start_legs_run[kept] = self.start_legs_run[h]
                self.start_legs_owners[kept] = self.start_legs_owners[h]
                kept += 1
        self.start_legs_tables = kept

    def start_legs(self, uint64_t now_ns):
        """Transfers a batch applied at engine time ``now_ns`` would make at its start (the
        store makes room for them in the hot window as for the events' legs)."""
        return self.start_legs_at(now_ns)

    cdef void remove_begin_hook(self, void *owner) noexcept:
        cdef uint32_t h, kept = 0
        for h in range(self.begin_hook_count):
            if self.begin_hook_owners[h] != owner:
                self.begin_hooks[kept] = self.begin_hooks[h]
                self.begin_hook_owners[kept] = self.begin_hook_owners[h]
                kept += 1
        self.begin_hook_count = kept

    def run_legs_for_testing(self, legs, uint64_t now_ns, field):
        """Tests of the primitive (tests/test_legs.py): apply ``legs`` (a TRANSFER_DTYPE array:
        id, accounts by id, amount, ledger, code, flags, user_data_128 are used) as one chain
        after writing ``field`` (a writable uint8 NumPy array, set to 0xAB through save_field
        first); on a failed leg everything, the field included, is undone. Returns the results
        (the failing leg's code and linked_event_failed for the others, or all ok)."""
        cdef const unsigned char[::1] raw = batch_bytes(legs, TRANSFER_DTYPE)
        cdef uint64_t count = raw.shape[0] // 128, k
        cdef const tally_transfer_t *e = <const tally_transfer_t *> &raw[0] if count else NULL
        cdef unsigned char[::1] f = field
        cdef chain_mark_t mark
        cdef uint32_t dr, cr
        cdef result_t r = R_OK
        if count == 0 or count > LEGS_MAX or f.shape[0] > FIELD_UNDO_BYTES:
            raise ValueError(f"1..{LEGS_MAX} legs and a field of at most {FIELD_UNDO_BYTES} bytes")
        results = np.zeros(count, dtype=np.uint32)
        self._enter()
        try:
            base = self.begin_batch(now_ns, LEGS_MAX)
            self.chain_begin(&mark)
            if f.shape[0]:
                self.save_field(&f[0], f.shape[0])
                memset(&f[0], 0xAB, f.shape[0])
            for k in range(count):
                dr = idmap_get(&self.account_map.map, e[k].debit_account_id_lo, e[k].debit_account_id_hi)
                cr = idmap_get(&self.account_map.map, e[k].credit_account_id_lo, e[k].credit_account_id_hi)
                if dr == IDMAP_NOT_FOUND:
                    r = R_DEBIT_ACCOUNT_NOT_FOUND
                elif cr == IDMAP_NOT_FOUND:
                    r = R_CREDIT_ACCOUNT_NOT_FOUND
                else:
                    r = self.leg(e[k].id_lo, e[k].id_hi, dr, cr, e[k].amount, e[k].ledger, e[k].code, e[k].flags,
                                 e[k].user_data_128_lo, e[k].user_data_128_hi, base + k)
                if r != R_OK:
                    self.chain_abort(&mark)
                    results[:] = R_LINKED_EVENT_FAILED
                    results[k] = r
                    break
            self.schedule_expiries()
        finally:
            self.busy = False
        return results

    cdef void schedule_expiries(self) noexcept nogil:
        """Put the batch's surviving pending transfers with a timeout on the expiry heap."""
        cdef uint64_t k
        cdef pending_t *p
        for k in range(self.expiring_count):
            p = &self.pendings[self.expiring[k]]
            heap_push(&self.expiry_heap, expires_at_of(&p.row), p.number, self.expiring[k])
        self.expiring_count = 0

    cdef void account_record(self, uint32_t index, tally_account_t *out) noexcept nogil:
        """The wire record of an account: its cold row joined with its balances."""
        out[0] = self.account_rows[index]
        out.debits_pending = self.hot[index].debits_pending
        out.debits_posted = self.hot[index].debits_posted
        out.credits_pending = self.hot[index].credits_pending
        out.credits_posted = self.hot[index].credits_posted


cdef inline void guard_hot(cow_t *cow, uint32_t index) noexcept nogil:
    """Before the first write into an account's hot record while a checkpoint copies them."""
    cow_before_write(cow, <uint64_t> index * sizeof(account_hot_t), sizeof(account_hot_t))


cdef inline void touch(account_hot_t *a, uint64_t ts) noexcept nogil:
    """Activity (any successful transfer): first and last timestamps."""
    if a.first_activity_ts == 0:
        a.first_activity_ts = ts
    a.last_activity_ts = ts


cdef inline void settle(account_hot_t *a, uint16_t code, uint64_t ts) noexcept nogil:
    """A settled transfer (single-phase or post): counted in its code bucket, and activity."""
    a.code_counts[code if code < CODE_BUCKETS - 1 else CODE_BUCKETS - 1] += 1
    touch(a, ts)


cdef inline result_t exists_tail(const tally_transfer_t *e, const tally_transfer_t *x,
                                 bint compare_ledger_and_code_always) noexcept nogil:
    """The exists_with_different_* checks shared by both transfer paths, after the amount."""
    if x.user_data_128_lo != e.user_data_128_lo or x.user_data_128_hi != e.user_data_128_hi:
        return R_EXISTS_WITH_DIFFERENT_USER_DATA_128
    if x.user_data_64 != e.user_data_64:
        return R_EXISTS_WITH_DIFFERENT_USER_DATA_64
    if x.user_data_32 != e.user_data_32:
        return R_EXISTS_WITH_DIFFERENT_USER_DATA_32
    if x.timeout != e.timeout:
        return R_EXISTS_WITH_DIFFERENT_TIMEOUT
    if (compare_ledger_and_code_always or e.ledger != 0) and x.ledger != e.ledger:
        return R_EXISTS_WITH_DIFFERENT_LEDGER
    if (compare_ledger_and_code_always or e.code != 0) and x.code != e.code:
        return R_EXISTS_WITH_DIFFERENT_CODE
    return R_EXISTS


cdef uint64_t _touch(object array):
    """Write each page of an array's buffer once (with the value already there)."""
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    cdef uint64_t n = view.shape[0]
    with nogil:
        tally_touch_pages(&view[0], n)
    return n


cdef inline void *np_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]


cdef _check_now(uint64_t now_ns):
    # Engine time is ns since the epoch; 2**63 ns is the year 2262. The bound keeps every
    # timestamp and every pending expiry (timeout <= 2**32 s) far from u64 overflow.
    if now_ns >= constants.NOW_NS_LIMIT:
        raise ValueError(f"now_ns must be below {constants.NOW_NS_LIMIT}, got {now_ns}")


cdef object batch_bytes(object batch, object dtype):
    """The batch as raw bytes (a memoryview), after checking its type and size: errors here
    change nothing. Product modules check their batches with it too."""
    if isinstance(batch, np.ndarray):
        if batch.dtype != dtype:
            name = next((name for name, value in vars(records).items() if name.endswith("_DTYPE") and value == dtype), dtype)
            raise TypeError(f"batch must be an array of {name} records, got dtype {batch.dtype}")
        if batch.ndim != 1:
            raise ValueError("batch must be one-dimensional")
        batch = np.ascontiguousarray(batch).view(np.uint8)
    cdef const unsigned char[::1] raw = batch
    if raw.shape[0] % dtype.itemsize:
        raise ValueError(f"batch size {raw.shape[0]} is not a multiple of {dtype.itemsize} bytes")
    if raw.shape[0] // dtype.itemsize > constants.BATCH_EVENTS_MAX:
        raise ValueError(f"batch has {raw.shape[0] // dtype.itemsize} events; at most {constants.BATCH_EVENTS_MAX}")
    return raw


cdef const uint64_t[:, ::1] _id_pairs(object ids):
    array = ids_array(ids)
    if array.shape[0] > constants.BATCH_EVENTS_MAX:
        raise ValueError(f"at most {constants.BATCH_EVENTS_MAX} ids per lookup")
    return array.view(np.uint64).reshape(-1, 2)
