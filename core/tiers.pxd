# Wallet tiers and their limits (docs/products.md "Wallet limits and real-name tiers (built)"):
# the operations that set an account's tier (set_wallet_tiers) and a tier's limits per ledger
# (set_tier_limits), the lookup of a wallet's limits and windows, and their checkpoint and
# hash. The limits themselves are checked and counted by the ledger's transfer path
# (core/ledger.pyx tier_apply), whose arrays (windows, tier rules) these operations write.

from libc.stdint cimport uint64_t

from core.product cimport Product
from core.records cimport result_t, tally_tier_limits_t, tally_wallet_tier_t


cdef enum:
    # The operations this module applies, by their numbers in core/operations.py (checked at import).
    OPERATION_SET_WALLET_TIERS = 7
    OPERATION_SET_TIER_LIMITS = 9


cdef class Tiers(Product):
    cdef readonly uint64_t changes              # set events that changed something, ever (0: hashed as before)

    cdef result_t set_wallet_tier(self, const tally_wallet_tier_t *e, uint64_t ts) noexcept nogil
    cdef result_t set_tier_limits(self, const tally_tier_limits_t *e, uint64_t ts) noexcept nogil
