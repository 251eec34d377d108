# Red envelopes (docs/products.md "Red envelopes"): a write-back table of packets (open ones
# pinned, on an expiry heap), a write-back table of claims (one per claimer and packet), and
# the refunds of expired packets, made at a batch's start (the ledger's start legs).

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from core.digest cimport hmac_key_t
from core.expiry cimport expiry_heap_t
from core.product cimport Product
from core.table cimport Table
from core.records cimport (
    result_t, tally_claim_t, tally_envelope_claim_t, tally_envelope_claimed_t, tally_envelope_send_t, tally_envelope_t,
)


cdef enum:
    # The operations this module applies, by their numbers in core/operations.py (checked at import).
    OPERATION_SEND_ENVELOPES = 116
    OPERATION_CLAIM_ENVELOPES = 117


cdef class Envelopes(Product):
    cdef readonly uint64_t envelopes_max        # resident packets
    cdef readonly uint64_t claims_max           # resident claims
    cdef public uint64_t open_max               # open packets in force (core/limits.pyx; <= table.pinned_max)
    cdef public uint64_t total_max              # a packet's total at most (the envelope_total limit)
    cdef readonly uint64_t open_count
    cdef readonly Table table                   # packets; a slot's aux: the sender's account index
    cdef readonly Table claims                  # claims; a slot's aux: the claimer's account index
    cdef tally_envelope_t *rows
    cdef tally_claim_t *claim_rows
    cdef uint32_t *heap_positions               # per packet slot: its place in the expiry heap
    cdef expiry_heap_t expiry_heap              # open packets by expires_at
    cdef hmac_key_t share_key                   # the store secret: keys the shares' draw
    cdef uint64_t *scratch_claim_ids            # per event of a claim batch: its claim's id (lo, hi),
    cdef uint32_t *scratch_claimers             # and its claimer's account index
    cdef dict _arrays

    cdef uint64_t refunds_due(self, uint64_t at_ts) noexcept nogil
    cdef void refund_due(self, uint64_t first_ts, uint64_t count) noexcept nogil
    cdef void ended(self, uint32_t slot, uint8_t state, uint64_t ts) noexcept nogil
    cdef uint64_t share_of(self, const tally_envelope_t *p, const tally_envelope_claim_t *e) noexcept nogil
    cdef result_t send(self, const tally_envelope_send_t *e, uint64_t ts) noexcept nogil
    cdef void claim_batch(self, const tally_envelope_claim_t *events, uint64_t count, uint64_t base,
                          tally_envelope_claimed_t *out) noexcept nogil
    cdef result_t claim(self, const tally_envelope_claim_t *e, uint64_t ts, const uint64_t *claim_id, uint32_t claimer,
                        tally_envelope_claimed_t *out) noexcept nogil
