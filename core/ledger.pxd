# The ledger state machine: accounts, transfers, two-phase state, expiry and activity features,
# all in preallocated arrays indexed by dense u32 indexes, with 128-bit ids mapped by IdMap.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from core.idmap cimport IdMap
from core.records cimport tally_account_t, tally_transfer_t, result_t


cdef enum:
    INDEX_NONE = 0xFFFFFFFF     # "no transfer" in chains, "not found" from lookups
    CODE_BUCKETS = 16           # activity counters per account (FEATURE_CODE_BUCKETS)
    PREFETCH_DISTANCE = 16      # events looked ahead by the prefetching passes


ctypedef enum transfer_state_t:
    STATE_SETTLED = 0           # single-phase transfer, post or void: nothing left to resolve
    STATE_PENDING = 1
    STATE_POSTED = 2
    STATE_VOIDED = 3
    STATE_EXPIRED = 4


cdef struct transfer_links_t:
    uint32_t debit_index        # dense index of the debit account
    uint32_t credit_index       # dense index of the credit account
    uint32_t prev_debit         # previous transfer debiting the same account, or INDEX_NONE
    uint32_t prev_credit        # previous transfer crediting the same account, or INDEX_NONE


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
    uint32_t last_debit         # newest transfer debiting the account, or INDEX_NONE
    uint32_t last_credit        # newest transfer crediting the account, or INDEX_NONE
    uint64_t first_activity_ts  # ns, 0 = never
    uint64_t last_activity_ts   # ns, 0 = never
    uint32_t code_counts[16]    # settled transfers per code bucket (CODE_BUCKETS)


cdef struct expiry_t:
    uint64_t expires_at         # ns
    uint32_t transfer_index
    uint32_t _pad


# What a linked chain must restore if one of its events fails.
cdef struct account_undo_t:
    account_hot_t saved
    uint32_t index
    uint32_t _pad


cdef struct state_undo_t:
    uint32_t transfer_index
    uint8_t state


cdef class Ledger:
    cdef readonly uint64_t accounts_max
    cdef readonly uint64_t transfers_max
    cdef readonly uint64_t account_count
    cdef readonly uint64_t transfer_count
    cdef readonly uint64_t last_timestamp   # ns, the last one assigned to an event
    cdef readonly uint64_t expiry_count     # entries in the expiry heap (some may be resolved)
    cdef bint busy                          # a batch is being applied (no re-entry)

    cdef IdMap account_map
    cdef IdMap transfer_map
    cdef tally_account_t *account_rows     # wire records: id, user_data, timestamp (balances in hot)
    cdef account_hot_t *hot
    cdef tally_transfer_t *transfer_rows
    cdef transfer_links_t *links
    cdef uint8_t *states
    cdef expiry_t *expiries

    # Per-batch scratch, preallocated for BATCH_EVENTS_MAX events.
    cdef uint32_t *scratch_debit
    cdef uint32_t *scratch_credit
    cdef account_undo_t *account_undo
    cdef uint64_t account_undo_count
    cdef state_undo_t *state_undo
    cdef uint64_t state_undo_count
    cdef uint32_t *expiring                 # pending transfers with a timeout, created this batch
    cdef uint64_t expiring_count

    cdef dict _arrays                       # NumPy arrays owning every buffer above

    cdef uint64_t begin_batch(self, uint64_t now_ns, uint64_t count) noexcept nogil
    cdef void expire_pending(self, uint64_t now_ns) noexcept nogil
    cdef void apply_accounts(self, tally_account_t *events, uint64_t count, uint64_t base_ts,
                             uint32_t *results) noexcept nogil
    cdef result_t create_account(self, tally_account_t *e, uint64_t ts) noexcept nogil
    cdef void apply_transfers(self, tally_transfer_t *events, uint64_t count, uint64_t base_ts,
                              uint32_t *results) noexcept nogil
    cdef result_t create_transfer(self, tally_transfer_t *e, uint64_t ts, uint32_t debit_index,
                                  uint32_t credit_index, bint in_chain) noexcept nogil
    cdef result_t post_or_void(self, tally_transfer_t *e, uint64_t ts, bint in_chain) noexcept nogil
    cdef uint32_t append_transfer(self, const tally_transfer_t *row, uint32_t debit_index,
                                  uint32_t credit_index, uint8_t state) noexcept nogil
    cdef void save_account(self, uint32_t index) noexcept nogil
    cdef void rollback(self, uint64_t account_count, uint64_t transfer_count,
                       uint64_t expiring_count) noexcept nogil
    cdef void schedule_expiries(self) noexcept nogil
    cdef void account_record(self, uint32_t index, tally_account_t *out) noexcept nogil
    cdef void expiry_push(self, uint64_t expires_at, uint32_t transfer_index) noexcept nogil
    cdef void expiry_pop(self) noexcept nogil
    cdef _enter(self)
    cdef object _apply(self, bint transfers, object batch, uint64_t now_ns)
