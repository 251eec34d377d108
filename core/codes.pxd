# User-presented payment codes (docs/products.md "Payment codes (built)"): a write-back table of
# codes (core/table, a slot's aux: the wallet's account index), an expiry heap of the live ones
# (pinned: one per wallet at most), and per wallet account today's code payments. A charge
# creates an order in core/orders' table, paid by the code's wallet at once or held (a pending
# leg with a timeout) until the user confirms it.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from core.digest cimport hmac_key_t
from core.expiry cimport expiry_heap_t
from core.merchants cimport Merchants
from core.orders cimport Orders
from core.product cimport Product
from core.table cimport Table
from core.records cimport (
    result_t, tally_code_charge_t, tally_code_confirm_t, tally_code_issue_t, tally_code_t,
)


cdef enum:
    # The operations this module applies, by their numbers in core/operations.py (checked at import).
    OPERATION_ISSUE_CODES = 112
    OPERATION_CONFIRM_CHARGES = 114


# Per wallet account (by its index in the ledger): 16 bytes, in an array of accounts_max.
cdef packed struct code_wallet_t:
    uint64_t live_code          # its live code (0: none)
    uint32_t day                # the engine day (UTC) payments_today counts
    uint32_t payments_today     # code payments made that day (at once, or confirmed)


cdef class Codes(Product):
    cdef readonly uint64_t codes_max            # resident codes
    cdef public uint64_t live_max               # live codes in force (core/limits.pyx; <= table.pinned_max)
    cdef readonly uint64_t live_count
    cdef readonly Table table
    cdef Orders orders
    cdef Merchants merchants
    cdef tally_code_t *rows
    cdef code_wallet_t *wallets
    cdef uint32_t *heap_positions               # per slot: its place in the expiry heap
    cdef expiry_heap_t expiry_heap              # live codes by expires_at
    cdef hmac_key_t code_key                    # the store secret
    cdef dict _arrays

    cdef uint64_t code_of(self, const tally_code_issue_t *e) noexcept nogil
    cdef void expire_due(self, uint64_t base_ts) noexcept nogil
    cdef void drop_resolved(self) noexcept nogil
    cdef void code_ended(self, uint32_t slot, uint8_t state, uint64_t ended_at, uint64_t ts) noexcept nogil
    cdef result_t issue(self, const tally_code_issue_t *e, uint64_t ts, uint64_t *code) noexcept nogil
    cdef result_t charge(self, const tally_code_charge_t *e, uint64_t ts) noexcept nogil
    cdef result_t confirm(self, const tally_code_confirm_t *e, uint64_t ts) noexcept nogil
