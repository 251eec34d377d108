# The ledger state machine: accounts, a bounded window of recent transfers, unresolved pending
# transfers, expiry and activity features, all in preallocated arrays; 128-bit ids mapped by
# IdMap. Older transfers live in the store's cold tier (docs/tiering.md): what a batch needs of
# them is handed to the ledger before the batch runs (prefetch), so the loops never do I/O.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from core.cow cimport cow_t
from core.expiry cimport expiry_heap_t
from core.filter cimport IdFilter
from core.idmap cimport IdMap
from core.records cimport tally_account_t, tally_transfer_t, result_t


cdef enum:
    INDEX_NONE = 0xFFFFFFFF     # "no slot / no entry"
    PRUNE_LAG_EPOCHS = 3        # a resolved pending leaves the table this many epochs after its own
    CODE_BUCKETS = 16           # activity counters per account (FEATURE_CODE_BUCKETS)
    PREFETCH_DISTANCE = 16      # events looked ahead by the prefetching passes
    LEGS_MAX = 4                # engine timestamps (and so transfers) a product event may use
    BEGIN_HOOKS_MAX = 4         # product tables expiring at a batch's start (orders, codes, ...)
    START_LEGS_MAX = 256        # transfers a table makes at a batch's start at most (constants.ENVELOPE_REFUNDS_PER_BATCH_MAX)
    START_LEGS_TABLES_MAX = 4   # tables making transfers at a batch's start
    FIELD_UNDO_MAX = 64         # product fields one chain may change (core/product.pxd)
    FIELD_UNDO_BYTES = 16       # the widest product field an undo entry saves
    # The operations the ledger applies, by their numbers in core/operations.py (checked at import).
    OPERATION_CREATE_ACCOUNTS = 1
    OPERATION_CREATE_TRANSFERS = 2
    # Wallet tiers (docs/products.md "Wallet limits and real-name tiers (built)"): the tier is
    # account_hot_t.flags' two top bits (the client's account flags are bits 0-3, kept in the
    # account row), so an untiered transfer tests a word it has in the cache and nothing else.
    TIER_SHIFT = 14
    TIER_MASK = 0xC000
    TIERS_MAX = 3               # 1 unverified, 2 verified, 3 bank-card linked (0: none)
    TIER_RULES_MAX = 99         # the 3 defaults and TIER_LEDGERS_MAX (32) ledgers x 3 tiers


ctypedef enum transfer_state_t:
    STATE_SETTLED = 0           # single-phase transfer, post or void: nothing left to resolve
    STATE_PENDING = 1
    STATE_POSTED = 2
    STATE_VOIDED = 3
    STATE_EXPIRED = 4
    STATE_FREE = 0xFF           # a pending-table entry not in use


# One per ring slot: which transfer the slot holds and its place in both accounts' chains.
# Chains hold transfer numbers + 1 (0 = none); a link is followed only while the number is in
# the hot window, so evicted transfers need no unlinking.
cdef struct transfer_links_t:
    uint64_t number_plus1       # the transfer number held by this slot, plus 1 (0: empty)
    uint64_t prev_debit         # number + 1 of the previous transfer debiting the same account
    uint64_t prev_credit        # number + 1 of the previous transfer crediting the same account
    uint32_t debit_index        # dense index of the debit account
    uint32_t credit_index       # dense index of the credit account


# Everything a transfer reads or writes of an account, in two adjacent cache lines (128-byte
# aligned): with a million accounts the payer's record is a cache miss per transfer, so it must
# be one fetch, not one per array. The client-facing fields that transfers never touch (id,
# user_data, timestamp) stay in the 128-byte wire records; lookups join the two.
cdef struct account_hot_t:
    uint64_t debits_pending     # minor units
    uint64_t debits_posted      # minor units (also the "spend" activity feature)
    uint64_t credits_pending    # minor units
    uint64_t credits_posted     # minor units (also the "receive" activity feature)
    uint32_t ledger
    uint16_t flags
    uint16_t code
    uint32_t last_debit         # ring slot of the newest transfer debiting the account, or INDEX_NONE
    uint32_t last_credit        # ring slot of the newest transfer crediting the account, or INDEX_NONE
    uint64_t first_activity_ts  # ns, 0 = never
    uint64_t last_activity_ts   # ns, 0 = never
    uint32_t code_counts[16]    # settled transfers per code bucket (CODE_BUCKETS)


# A pending transfer from its creation until it is resolved and the resolution is in the cold
# tier (the store prunes it then). 160 bytes.
cdef struct pending_t:
    tally_transfer_t row
    uint64_t number             # the pending transfer's number
    uint64_t resolved_at        # transfer_count when it was posted, voided or expired
    uint32_t debit_index
    uint32_t credit_index
    uint32_t heap_pos           # its place in the expiry heap, or INDEX_NONE
    uint8_t state               # transfer_state_t (STATE_FREE: entry unused)
    uint8_t limited             # counted in its debit wallet's windows at creation: given back if unused
    uint8_t _pad[2]


# What a linked chain must restore if one of its events fails.
cdef struct account_undo_t:
    account_hot_t saved
    uint32_t index
    uint32_t _pad


cdef struct state_undo_t:
    uint64_t resolved_at
    uint32_t entry
    uint8_t state


# A tiered wallet's outgoing windows (per account index, 32 bytes; read only for a tiered
# account): the debits counted in the engine day ``day`` (UTC) and in the calendar year ``year``.
cdef struct wallet_window_t:
    uint64_t day_spent          # minor units
    uint64_t year_spent         # minor units
    uint64_t tier_set_at        # engine ns the tier was last set (0: never)
    uint32_t day                # engine day (timestamp // 86,400 s) day_spent counts
    uint32_t year               # calendar year (UTC) year_spent counts


# One tier's limits in one ledger (ledger 0: the defaults), minor units. 48 bytes.
cdef struct tier_rule_t:
    uint64_t payment_max        # one debit at most
    uint64_t daily_max          # a day's debits at most
    uint64_t yearly_max         # a year's debits at most
    uint64_t balance_max        # credits_posted + credits_pending - debits_posted at most
    uint64_t timestamp          # engine ns it was set (0: the built-in default)
    uint32_t ledger
    uint8_t tier
    uint8_t _pad[3]


cdef struct window_undo_t:
    wallet_window_t saved
    uint32_t index
    uint32_t _pad


cdef extern from *:
    """
    #define TALLY_NS_PER_DAY 86400000000000ULL
    """
    const uint64_t NS_PER_DAY "TALLY_NS_PER_DAY"   # a constant: a division by it is a multiplication


# The limits of ``tier`` (1..3) in ``ledger``: its own rule, else the default (``rules[tier - 1]``).
cdef inline const tier_rule_t *tier_rule_of(const tier_rule_t *rules, uint32_t count, uint32_t ledger,
                                            uint32_t tier) noexcept nogil:
    cdef uint32_t i
    for i in range(TIERS_MAX, count):
        if rules[i].ledger == ledger and rules[i].tier == tier:
            return &rules[i]
    return &rules[tier - 1]


# The calendar year (proleptic Gregorian, UTC) of an engine day (days since 1970-01-01): Howard
# Hinnant's civil_from_days, integer only.
cdef inline uint32_t civil_year(uint64_t day) noexcept nogil:
    cdef uint64_t z = day + 719468
    cdef uint64_t era = z // 146097
    cdef uint64_t doe = z - era * 146097
    cdef uint64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef uint64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef uint64_t mp = (5 * doy + 2) // 153
    return <uint32_t> (yoe + era * 400 + (1 if mp >= 10 else 0))


# A product record's field as it was before a chain changed it (docs/products.md "Typed undo").
cdef struct field_undo_t:
    uint8_t *address
    uint32_t size
    uint8_t saved[16]           # FIELD_UNDO_BYTES


# Where a chain began: what ``chain_abort`` restores the ledger to.
cdef struct chain_mark_t:
    uint64_t account_count
    uint64_t transfer_count
    uint64_t expiring_count


# Called with a batch's base timestamp once it is assigned (after the batch's checks), before
# its events: a product table expires its records there (core/orders.pyx), so that every batch
# of every operation, and a pulse, does it at the same engine time, live and in replay.
ctypedef void (*begin_hook_t)(void *owner, uint64_t base_ts) noexcept nogil

# A product's work at a batch's start that makes transfers (the red envelopes' refunds at
# expiry, a coupon stock's budget returned at its end): ``due`` says how many it will make by
# engine time ``at_ts`` (at most START_LEGS_MAX; a pure function of the state and the time, so
# replay asks the same), ``run`` makes them with the timestamps first_ts .. first_ts + count - 1,
# before the batch's events (the tables in the order they were added, each after the other's).
ctypedef uint64_t (*start_legs_due_t)(void *owner, uint64_t at_ts) noexcept nogil
ctypedef void (*start_legs_run_t)(void *owner, uint64_t first_ts, uint64_t count) noexcept nogil


cdef class Ledger:
    cdef readonly uint64_t accounts_max
    cdef readonly uint64_t transfers_hot_max    # transfers held in memory (the hot window)
    cdef readonly uint64_t pending_max          # pending-table entries
    # The limits in force (core/limits.pyx): at most the capacities; raised only by a logged
    # set_limits batch, so a replay answers as the live run did whatever the capacities now.
    cdef public uint64_t accounts_limit
    cdef public uint64_t pending_limit
    cdef readonly uint64_t account_count
    cdef readonly uint64_t transfer_count       # transfers ever applied (their numbers: 0..count-1)
    cdef readonly uint64_t hot_first            # oldest transfer number still in memory
    cdef readonly uint64_t cold_count           # transfers [0, cold_count) are in the cold tier
    cdef readonly uint64_t last_timestamp       # ns, the last one assigned to an event
    cdef readonly uint64_t pending_count        # pending-table entries in use
    cdef readonly uint64_t pending_high         # pending-table entries ever used (free ones below)
    cdef readonly uint64_t prune_epoch_transfers   # 0: never prune (no cold tier to hold statuses)
    cdef uint64_t pruned_below                  # entries resolved before this number are gone
    cdef readonly uint64_t cold_id_max_lo       # the largest id in the cold tier (0: none): a
    cdef readonly uint64_t cold_id_max_hi       # larger one is new without a filter probe
    cdef bint busy                              # a batch is being applied (no re-entry)
    cdef begin_hook_t begin_hooks[4]            # BEGIN_HOOKS_MAX, called in the order they were added
    cdef void *begin_hook_owners[4]             # their owners, which remove them when they go
    cdef uint32_t begin_hook_count
    cdef start_legs_due_t start_legs_due[4]     # START_LEGS_TABLES_MAX tables making transfers at a batch's start
    cdef start_legs_run_t start_legs_run[4]
    cdef void *start_legs_owners[4]
    cdef uint64_t start_legs_counts[4]          # the current batch's, per table
    cdef uint32_t start_legs_tables

    cdef IdMap account_map
    cdef IdMap transfer_map                     # hot window: id -> ring slot
    cdef IdMap pending_map                      # id -> pending-table entry
    cdef IdMap cold_map                         # this batch's prefetched cold transfers: id -> cache index
    cdef IdFilter cold_filter                   # over every cold id; None without a cold tier
    cdef uint64_t ring_mask                     # ring slots - 1 (a power of two >= transfers_hot_max)
    cdef tally_account_t *account_rows          # wire records: id, user_data, timestamp (balances in hot)
    cdef account_hot_t *hot
    cdef cow_t hot_cow                          # a checkpoint's copy of ``hot`` being taken (core/cow.pxd)
    cdef tally_transfer_t *transfer_rows        # the ring
    cdef transfer_links_t *links                # the ring's links
    cdef pending_t *pendings
    cdef uint32_t *pending_free                 # stack of free entries below pending_high
    cdef uint64_t pending_free_count
    cdef expiry_heap_t expiry_heap              # pending-table entries with a timeout (core/expiry.pxd)
    cdef tally_transfer_t *cold_rows            # prefetch cache
    cdef uint8_t *cold_states
    cdef uint64_t cold_cached

    # Per-batch scratch, preallocated for BATCH_EVENTS_MAX events.
    cdef uint32_t *scratch_debit
    cdef uint32_t *scratch_credit
    cdef account_undo_t *account_undo
    cdef uint64_t account_undo_count
    cdef state_undo_t *state_undo
    cdef uint64_t state_undo_count
    cdef uint32_t *expiring                     # pending-table entries with a timeout, created this batch
    cdef uint64_t expiring_count
    cdef field_undo_t *field_undo               # product fields changed by the current chain
    cdef uint64_t field_undo_count
    # Wallet tiers (core/tiers.pyx applies the operations that set them).
    cdef wallet_window_t *windows               # per account: its outgoing windows
    cdef tier_rule_t *tier_rules                # [0, TIERS_MAX): the defaults; then per ledger
    cdef readonly uint32_t tier_rule_count
    cdef public bint tiers_in_use               # a tier was ever given: the transfer loop fetches windows ahead
    cdef window_undo_t *window_undo             # windows changed by the current chain
    cdef uint64_t window_undo_count

    cdef dict _arrays                           # NumPy arrays owning every buffer above

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t now_ns,
                        uint32_t *out) noexcept nogil
    cdef uint64_t begin_batch(self, uint64_t now_ns, uint64_t count) noexcept nogil
    cdef void evict(self, uint64_t count) noexcept nogil
    cdef uint64_t prune_due_below(self) noexcept nogil
    cdef void prune(self) noexcept nogil
    cdef void expire_pending(self, uint64_t now_ns) noexcept nogil
    cdef void apply_accounts(self, tally_account_t *events, uint64_t count, uint64_t base_ts,
                             uint32_t *results) noexcept nogil
    cdef result_t create_account(self, tally_account_t *e, uint64_t ts) noexcept nogil
    cdef void apply_transfers(self, tally_transfer_t *events, uint64_t count, uint64_t base_ts,
                              uint32_t *results) noexcept nogil
    cdef result_t create_transfer(self, tally_transfer_t *e, uint64_t ts, uint32_t debit_index,
                                  uint32_t credit_index, bint in_chain, bint is_leg=*) noexcept nogil
    cdef result_t post_or_void(self, tally_transfer_t *e, uint64_t ts, bint in_chain, bint is_leg=*) noexcept nogil
    cdef const tally_transfer_t *find_transfer(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef uint8_t cold_state(self, uint64_t lo, uint64_t hi) noexcept nogil
    cdef void append_transfer(self, const tally_transfer_t *row, uint32_t debit_index,
                              uint32_t credit_index) noexcept nogil
    cdef uint32_t pending_insert(self, const tally_transfer_t *row, uint32_t debit_index,
                                 uint32_t credit_index, bint limited) noexcept nogil
    cdef void pending_release(self, uint32_t entry) noexcept nogil
    cdef void save_account(self, uint32_t index) noexcept nogil
    cdef void undo_begin(self) noexcept nogil
    cdef result_t tier_apply(self, uint32_t debit_index, uint32_t credit_index, uint64_t amount, uint64_t ts,
                             bint in_chain) noexcept nogil
    cdef void tier_give_back(self, const pending_t *p, uint64_t amount, bint in_chain) noexcept nogil
    cdef void set_tier(self, uint32_t index, uint32_t tier, uint64_t ts) noexcept nogil
    cdef void rollback(self, uint64_t account_count, uint64_t transfer_count,
                       uint64_t expiring_count) noexcept nogil
    cdef void schedule_expiries(self) noexcept nogil
    cdef void account_record(self, uint32_t index, tally_account_t *out) noexcept nogil
    cdef bint chain_valid(self, uint32_t slot, uint32_t account, bint debit) noexcept nogil
    # Legs and typed undo: the primitive product modules build on (docs/products.md).
    cdef void chain_begin(self, chain_mark_t *mark) noexcept nogil
    cdef void chain_abort(self, const chain_mark_t *mark) noexcept nogil
    cdef void save_field(self, void *address, uint32_t size) noexcept nogil
    cdef result_t leg(self, uint64_t id_lo, uint64_t id_hi, uint32_t debit_index, uint32_t credit_index,
                      uint64_t amount, uint32_t ledger, uint16_t code, uint16_t flags,
                      uint64_t user_data_lo, uint64_t user_data_hi, uint64_t ts, uint32_t timeout_s=*) noexcept nogil
    cdef result_t leg_resolve(self, uint64_t id_lo, uint64_t id_hi, uint64_t pending_lo, uint64_t pending_hi,
                              bint post, uint64_t ts) noexcept nogil
    cdef int add_begin_hook(self, begin_hook_t hook, void *owner) except -1
    cdef void remove_begin_hook(self, void *owner) noexcept
    cdef int add_start_legs(self, start_legs_due_t due, start_legs_run_t run, void *owner) except -1
    cdef void remove_start_legs(self, void *owner) noexcept
    cdef uint64_t start_legs_at(self, uint64_t now_ns) noexcept nogil
    cdef uint64_t start_legs_at_first(self, uint64_t first) noexcept nogil
    cdef _enter(self)
    cdef object _apply(self, uint32_t operation, object batch, uint64_t now_ns)


# A batch's raw bytes (a memoryview) after checking its record type and size (ValueError,
# TypeError): shared by the ledger and the product modules.
cdef object batch_bytes(object batch, object dtype)
