# cython: boundscheck=False, wraparound=False
"""Red envelopes: send, claim, refund at expiry, look up (docs/products.md "Red envelopes").

A sender funds a packet (a total, a count of shares) from the wallet into an escrow account
(``send_envelopes``); up to ``count`` different users claim it, once each
(``claim_envelopes``), each share drawn at claim time by the double-mean rule from a keyed hash
(replay draws the same, a client cannot predict it); at ``expires_at`` the rest returns to the
sender at a batch's start (the ledger's start legs). Each batch is one C loop over its records:
no Python object per event.

>>> from core.envelopes import share_bounds
>>> share_bounds(100, 10), share_bounds(11, 10), share_bounds(7, 1)
((1, 20), (1, 2), (7, 7))
"""

import numpy as np

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from core.digest cimport claim_transfer_id_of, hmac_key_init, hmac_sha256, key_id_digest
from core.expiry cimport HEAP_POSITION_NONE, expiry_t, heap_count_due, heap_push, heap_remove
from core.idmap cimport IDMAP_NOT_FOUND, idmap_get, idmap_home, idmap_t
from core.ledger cimport LEGS_MAX, PREFETCH_DISTANCE, START_LEGS_MAX, Ledger, account_hot_t, chain_mark_t
from core.orders cimport keyed_event_checks, leg_id_of
from core.product cimport event_prologue, product_account
from core.table cimport Table, table_find, table_set_pinned
from core.records cimport *  # result_t codes, records, envelope states

from core import constants, memory, table as table_module
from core.checkpoint import RAW
from core.operations import Operation
from core.orders import EXPIRY_DTYPE, SECRET_BYTES, room_reserved
from core.records import CLAIM_DTYPE, ENVELOPE_DTYPE, ID_DTYPE, AccountCode, TransferCode

cdef extern from *:
    """
    /* floor(h * m / 2^64): h uniform over u64 -> uniform over [0, m) (bias < m / 2^64). */
    static inline uint64_t tally_mul_shift(uint64_t h, uint64_t m) {
        return (uint64_t) (((unsigned __int128) h * m) >> 64);
    }
    """
    uint64_t tally_mul_shift(uint64_t h, uint64_t m) nogil

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

cdef extern from "assert.h" nogil:
    void tally_assert "assert"(bint)

cdef enum:
    NS_PER_S = 1000000000
    OPERATION_LEG_REFUND = 1                    # the refund is the send's leg 1

cdef uint64_t EXPIRE_AFTER_MAX_S = constants.ENVELOPE_EXPIRE_AFTER_MAX_S
cdef uint32_t COUNT_MAX = constants.ENVELOPE_COUNT_MAX
cdef uint16_t ACCOUNT_CODE_ESCROW = AccountCode.escrow
cdef uint16_t CODE_SEND = TransferCode.red_envelope_fund
cdef uint16_t CODE_CLAIM = TransferCode.red_envelope_claim
cdef uint16_t CODE_REFUND = TransferCode.red_envelope_refund

for _name, _number in (("send_envelopes", OPERATION_SEND_ENVELOPES), ("claim_envelopes", OPERATION_CLAIM_ENVELOPES)):
    if Operation[_name] != _number:
        raise ImportError(f"core/envelopes.pxd numbers {_name} {_number}, core/operations.py {int(Operation[_name])}")
if Operation.claim_envelopes != 117:  # core/digest.pyx's claim_transfer_id_of salts with it
    raise ImportError("core/digest.pyx numbers claim_envelopes 117")
if constants.ENVELOPE_REFUNDS_PER_BATCH_MAX != START_LEGS_MAX:
    raise ImportError("constants.ENVELOPE_REFUNDS_PER_BATCH_MAX and core/ledger.pxd START_LEGS_MAX differ")

#: The checkpoint arrays the envelopes declare (core/checkpoint.py).
CHECKPOINT_ARRAYS = dict(table_module.checkpoint_arrays("envelopes"), **table_module.checkpoint_arrays("claims"),
                         envelope_expiries=RAW)


def share_bounds(uint64_t remaining, uint32_t left):
    """The range a claim's share is drawn from with ``remaining`` minor units and ``left``
    shares to go: (1, min(2 remaining / left, remaining - (left - 1))); the last takes the rest."""
    if left == 0 or remaining < left:
        raise ValueError("at least one share and one minor unit per share")
    if left == 1:
        return (remaining, remaining)
    return (1, share_max(remaining, left))


cdef inline uint64_t share_max(uint64_t remaining, uint32_t left) noexcept nogil:
    cdef uint64_t double_mean = 2 * remaining // left, room = remaining - (left - 1)
    return double_mean if double_mean < room else room


def claim_transfer_id(envelope_id: int, position: int) -> int:
    """The id of a packet's claim transfer at ``position`` (0 first): "who claimed what, when"
    is ``lookup_transfers`` of these for positions 0 .. claimed - 1."""
    cdef uint64_t lo, hi
    claim_transfer_id_of(envelope_id & U64_MAX, envelope_id >> 64, position, &lo, &hi)
    return (int(hi) << 64) | lo


cdef inline void claim_id_of(const tally_envelope_claim_t *e, uint64_t *out) noexcept nogil:
    """SHA-256(b"clam" || envelope_id || claimer_id || 16 zero bytes)[:16]."""
    cdef uint8_t number[32]
    memcpy(number, &e.claimer_id_lo, 16)
    memset(number + 16, 0, 16)
    key_id_digest(b"clam", <const uint8_t *> &e.envelope_id_lo, number, <uint8_t *> out)


cdef inline bint ids_equal(uint64_t a_lo, uint64_t a_hi, uint64_t b_lo, uint64_t b_hi) noexcept nogil:
    return a_lo == b_lo and a_hi == b_hi


cdef class Envelopes(Product):
    """The red envelopes of a ledger (docs/products.md "Red envelopes").

    ``envelopes_max`` packets and ``claims_max`` claims are resident (128 bytes + 52 of
    bookkeeping each); a store evicts the others to its cold tier. Open packets stay resident:
    at most ``open_max`` (``envelopes_max`` less a batch's room), past which ``send_envelopes``
    answers ``envelopes_limit_reached``. ``secret`` (the store's) keys the shares' draw.
    """

    def __cinit__(self, Ledger ledger not None, uint64_t envelopes_max=constants.ENVELOPES_MAX_DEFAULT,
                  uint64_t claims_max=constants.CLAIMS_MAX_DEFAULT, bytes secret=None):
        if not 2 <= envelopes_max <= constants.ENVELOPES_MAX_LIMIT:
            raise ValueError(f"envelopes_max must be in 2..{constants.ENVELOPES_MAX_LIMIT}")
        if not 2 <= claims_max <= constants.CLAIMS_MAX_LIMIT:
            raise ValueError(f"claims_max must be in 2..{constants.CLAIMS_MAX_LIMIT}")
        if secret is None or len(secret) != SECRET_BYTES:
            raise ValueError(f"secret must be {SECRET_BYTES} bytes")
        self.ledger = ledger
        self.component = "envelopes"
        self.envelopes_max, self.claims_max = envelopes_max, claims_max
        self.open_max = envelopes_max - room_reserved(envelopes_max)
        self.total_max = constants.ENVELOPE_TOTAL_MAX_DEFAULT
        self.table = Table(ENVELOPE_DTYPE, envelopes_max, "envelopes")
        self.table.pinned_max = self.open_max
        self.claims = Table(CLAIM_DTYPE, claims_max, "claims")
        self.rows = <tally_envelope_t *> self.table.rows
        self.claim_rows = <tally_claim_t *> self.claims.rows
        a = self._arrays = {}
        a["envelope_expiries"] = np.zeros(envelopes_max, dtype=EXPIRY_DTYPE)
        a["heap_positions"] = np.full(envelopes_max, 0xFFFFFFFF, dtype=np.uint32)  # HEAP_POSITION_NONE
        self.heap_positions = <uint32_t *> _ptr(a["heap_positions"])
        self.expiry_heap.items = <expiry_t *> _ptr(a["envelope_expiries"])
        self.expiry_heap.count = 0
        self.expiry_heap.positions = <char *> self.heap_positions
        self.expiry_heap.stride = sizeof(uint32_t)
        a["scratch_claim_ids"] = np.zeros(2 * constants.BATCH_EVENTS_MAX, dtype=np.uint64)
        a["scratch_claimers"] = np.zeros(constants.BATCH_EVENTS_MAX, dtype=np.uint32)
        self.scratch_claim_ids = <uint64_t *> _ptr(a["scratch_claim_ids"])
        self.scratch_claimers = <uint32_t *> _ptr(a["scratch_claimers"])
        hmac_key_init(&self.share_key, <const uint8_t *> secret, len(secret))
        ledger.add_start_legs(_refunds_due, _refund_due, <void *> self)

    def __dealloc__(self):
        if self.ledger is not None:
            self.ledger.remove_start_legs(<void *> self)

    # ---------------------------------------------------------------- Python API (the boundary)

    @property
    def envelope_count(self):
        """Packets ever sent."""
        return self.table.records_total

    @property
    def claim_count(self):
        """Claims ever made."""
        return self.claims.records_total

    @property
    def next_expiry_ns(self):
        """Engine time (ns) at which the soonest open packet expires; 0: none."""
        return self.expiry_heap.items[0].expires_at if self.expiry_heap.count else 0

    def lookup_envelopes(self, ids):
        """The packets with these ids (ints or an ID_DTYPE array) that are resident or on their
        way to the cold tier, in order; the others are left out (a store looks them up cold)."""
        return self.table.lookup_found(ids)

    def lookup_envelope_claims(self, ids):
        """The claims with these ids, as ``lookup_envelopes``."""
        return self.claims.lookup_found(ids)

    def derived_ids(self, operation, str table, events):
        """The claim id of each ``claim_envelopes`` event (an ENVELOPE_CLAIM_DTYPE array), as an
        ID_DTYPE array: what a store loads from the cold tier before the batch (a retry finds
        its claim)."""
        cdef const unsigned char[::1] raw = np.ascontiguousarray(events).view(np.uint8).reshape(-1)
        cdef uint64_t count = raw.shape[0] // sizeof(tally_envelope_claim_t), k
        out = np.zeros(count, dtype=ID_DTYPE)
        cdef uint64_t[:, ::1] ids = out.view(np.uint64).reshape(-1, 2)
        cdef const tally_envelope_claim_t *e = <const tally_envelope_claim_t *> &raw[0] if count else NULL
        with nogil:
            for k in range(count):
                claim_id_of(&e[k], &ids[k, 0])
        return out

    def prefault(self):
        """Touch every page of the tables now (see Ledger.prefault). Returns bytes touched."""
        return self.table.prefault() + self.claims.prefault() + memory.touch_pages(self._arrays.values())

    def snapshot(self):
        """Both tables' state and the expiry heap as named NumPy views and scalars, for a
        checkpoint (they alias live memory)."""
        arrays, scalars = self.table.snapshot()
        more_arrays, more_scalars = self.claims.snapshot()
        arrays.update(more_arrays)
        scalars.update(more_scalars)
        arrays["envelope_expiries"] = self._arrays["envelope_expiries"][:self.expiry_heap.count]
        scalars.update(envelope_expiry_count=self.expiry_heap.count, envelope_open_count=self.open_count)
        return arrays, scalars

    def hash_parts(self):
        """The sums of every packet's and claim's hash and their counts (nothing while no packet
        was ever sent: a store without envelopes hashes as before)."""
        if not self.table.records_total:
            return {}
        return {"envelopes": self.table.hash_part(), "claims": self.claims.hash_part()}

    def restore(self, arrays, scalars):
        """Load a snapshot into these empty tables (after the ledger's); rebuild the heap positions."""
        if self.table.records_total or self.claims.records_total:
            raise RuntimeError("restore needs empty envelope tables")
        if "envelopes_rows" not in arrays:
            return  # a checkpoint from before red envelopes: none was sent
        self.table.restore(arrays, scalars)
        self.claims.restore(arrays, scalars)
        cdef uint64_t n_e = scalars["envelope_expiry_count"], i
        flat = np.frombuffer(arrays["envelope_expiries"], dtype=EXPIRY_DTYPE)
        if flat.shape[0] != n_e:
            raise ValueError(f"snapshot's envelope_expiries has {flat.shape[0]} records, says {n_e}")
        self._arrays["envelope_expiries"][:n_e] = flat
        for i in range(n_e):
            if self.expiry_heap.items[i].entry >= self.envelopes_max:
                raise ValueError("snapshot's envelope expiry heap names a packet it does not hold")
            self.heap_positions[self.expiry_heap.items[i].entry] = <uint32_t> i
        self.expiry_heap.count = n_e
        self.open_count = scalars["envelope_open_count"]

    # ---------------------------------------------------------------- the state machine

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        cdef tally_envelope_claimed_t *claimed = <tally_envelope_claimed_t *> out
        if operation == OPERATION_SEND_ENVELOPES:
            for k in range(count):
                (<uint32_t *> out)[k] = self.send(&(<const tally_envelope_send_t *> events)[k], base + k * LEGS_MAX)
        else:
            self.claim_batch(<const tally_envelope_claim_t *> events, count, base, claimed)
        tally_store_fence()

    cdef void claim_batch(self, const tally_envelope_claim_t *events, uint64_t count, uint64_t base,
                          tally_envelope_claimed_t *out) noexcept nogil:
        """Claims in three passes, as payments are (core/orders.pyx pay_batch): the claims' ids
        (a SHA-256 each), then the claimers' indexes with the claim map's and the account map's
        slots fetched PREFETCH_DISTANCE events ahead, then the claims with the claimers' records
        fetched ahead. The maps the first passes read do not change within the batch but by
        its own claims (a claim id found in pass 3 is looked up again there)."""
        cdef uint64_t k, ahead
        cdef uint64_t *ids = self.scratch_claim_ids
        cdef uint32_t *claimers = self.scratch_claimers
        cdef idmap_t *accounts = &self.ledger.account_map.map
        cdef account_hot_t *hot = self.ledger.hot
        for k in range(count):
            claim_id_of(&events[k], &ids[2 * k])
        for k in range(count):
            ahead = k + PREFETCH_DISTANCE
            if ahead < count:
                TALLY_PREFETCH(idmap_home(&self.claims.map.map, ids[2 * ahead], ids[2 * ahead + 1]))
                TALLY_PREFETCH(idmap_home(accounts, events[ahead].claimer_id_lo, events[ahead].claimer_id_hi))
            claimers[k] = idmap_get(accounts, events[k].claimer_id_lo, events[k].claimer_id_hi)
        for k in range(count):
            ahead = k + PREFETCH_DISTANCE
            if ahead < count and claimers[ahead] != IDMAP_NOT_FOUND:
                TALLY_PREFETCH(&hot[claimers[ahead]])
            out[k].position = 0
            out[k].amount = 0
            out[k].result = self.claim(&events[k], base + k * LEGS_MAX, &ids[2 * k], claimers[k], &out[k])

    cdef uint64_t refunds_due(self, uint64_t at_ts) noexcept nogil:
        """Open packets expired by ``at_ts``, at most START_LEGS_MAX."""
        return heap_count_due(&self.expiry_heap, at_ts, START_LEGS_MAX)

    cdef void refund_due(self, uint64_t first_ts, uint64_t count) noexcept nogil:
        """Refund the ``count`` soonest expired packets (refunds_due counted them), the k-th
        with timestamp first_ts + k: the remainder escrow -> sender."""
        cdef uint64_t k, leg_lo, leg_hi, ts
        cdef uint32_t slot, escrow
        cdef tally_envelope_t *p
        cdef chain_mark_t mark
        cdef result_t r
        for k in range(count):
            tally_assert(self.expiry_heap.count > 0)
            slot = self.expiry_heap.items[0].entry
            p = &self.rows[slot]
            ts = first_ts + k
            tally_assert(p.state == ENVELOPE_OPEN and p.expires_at <= first_ts and p.remaining > 0)
            escrow = idmap_get(&self.ledger.account_map.map, p.escrow_id_lo, p.escrow_id_hi)
            leg_id_of(p.id_lo, p.id_hi, OPERATION_SEND_ENVELOPES, OPERATION_LEG_REFUND, &leg_lo, &leg_hi)
            self.ledger.chain_begin(&mark)
            r = self.ledger.leg(leg_lo, leg_hi, escrow, self.table.slots[slot].aux, p.remaining, p.ledger, CODE_REFUND,
                                0, p.id_lo, p.id_hi, ts)
            if r == R_TRANSFERS_LIMIT_REACHED:
                self.ledger.chain_abort(&mark)
                return  # a full ring (no cold tier): it stays due, for the next batch's start
            if r != R_OK:
                self.ledger.chain_abort(&mark)
                p.refund_result = <uint16_t> r
                self.ended(slot, ENVELOPE_REFUND_FAILED, ts)
                continue
            p.refunded = p.remaining
            p.remaining = 0
            self.ended(slot, ENVELOPE_REFUNDED, ts)

    cdef void ended(self, uint32_t slot, uint8_t state, uint64_t ts) noexcept nogil:
        """An open packet is emptied or expires (at ``ts``): off the heap, free to leave memory."""
        cdef tally_envelope_t *p = &self.rows[slot]
        p.state = state
        p.ended_at = ts
        if self.heap_positions[slot] != HEAP_POSITION_NONE:
            heap_remove(&self.expiry_heap, self.heap_positions[slot])
        table_set_pinned(self.table, slot, False)
        self.open_count -= 1
        self.table.touch(slot, ts)

    cdef uint64_t share_of(self, const tally_envelope_t *p, const tally_envelope_claim_t *e) noexcept nogil:
        """The next claim's share (docs/products.md "The share"): the last takes the rest, the
        others 1 + (h * m >> 64), h = HMAC(secret, "shar" || packet || claimer || position)."""
        cdef uint32_t left = p.count - p.claimed
        cdef uint8_t message[40]
        cdef uint8_t digest[32]
        cdef uint64_t h
        if left == 1:
            return p.remaining
        memcpy(message, b"shar", 4)
        memcpy(message + 4, &p.id_lo, 16)
        memcpy(message + 20, &e.claimer_id_lo, 16)
        memcpy(message + 36, &p.claimed, 4)
        hmac_sha256(&self.share_key, message, 40, digest)
        memcpy(&h, digest, 8)
        return 1 + tally_mul_shift(h, share_max(p.remaining, left))

    cdef result_t send(self, const tally_envelope_send_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t sender, escrow, slot
        cdef uint64_t leg_lo, leg_hi, expire_after_s
        cdef uint8_t digest[32]
        cdef tally_envelope_t *p
        cdef tally_envelope_t new
        cdef chain_mark_t mark
        cdef result_t r
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = keyed_event_checks(e.flags, e.timestamp, e.reserved, sizeof(e.reserved), e.id_lo, e.id_hi, e.total,
                               e.ledger, e.out_envelope_no)
        if r != R_OK:
            return r
        key_id_digest(b"rpkt", <const uint8_t *> &e.sender_id_lo, e.out_envelope_no, digest)
        if not ids_equal((<uint64_t *> digest)[0], (<uint64_t *> digest)[1], e.id_lo, e.id_hi):
            return R_ID_MISMATCH
        expire_after_s = e.expire_after_s if e.expire_after_s else EXPIRE_AFTER_MAX_S
        slot = table_find(self.table, e.id_lo, e.id_hi)
        if slot != IDMAP_NOT_FOUND:  # a retry (or another send with this out_envelope_no)
            p = &self.rows[slot]
            if (not ids_equal(p.escrow_id_lo, p.escrow_id_hi, e.escrow_id_lo, e.escrow_id_hi)
                    or p.total != e.total or p.count != e.count or p.ledger != e.ledger
                    or p.description_code != e.description_code
                    or p.expires_at - p.timestamp != expire_after_s * NS_PER_S):
                return R_EXISTS_WITH_DIFFERENT_FIELDS
            return R_EXISTS
        if e.total > self.total_max:
            return R_ENVELOPE_TOTAL_OUT_OF_RANGE
        if e.count == 0 or e.count > COUNT_MAX or e.count > e.total:
            return R_ENVELOPE_COUNT_OUT_OF_RANGE
        if expire_after_s > EXPIRE_AFTER_MAX_S:
            return R_EXPIRE_AFTER_OUT_OF_RANGE
        sender = idmap_get(accounts, e.sender_id_lo, e.sender_id_hi)
        if sender == IDMAP_NOT_FOUND:
            return R_PAYER_NOT_FOUND
        if self.ledger.hot[sender].ledger != e.ledger:
            return R_CURRENCY_MISMATCH
        if product_account(self.ledger.hot[sender].code):
            return R_PRODUCT_ACCOUNT  # (an escrow's open packets' money, say)
        escrow = idmap_get(accounts, e.escrow_id_lo, e.escrow_id_hi)
        if (escrow == IDMAP_NOT_FOUND or escrow == sender or self.ledger.hot[escrow].ledger != e.ledger
                or self.ledger.hot[escrow].code != ACCOUNT_CODE_ESCROW):
            return R_ESCROW_INVALID
        if self.open_count >= self.open_max or self.table.free_count == 0:
            return R_ENVELOPES_LIMIT_REACHED
        leg_id_of(e.id_lo, e.id_hi, OPERATION_SEND_ENVELOPES, 0, &leg_lo, &leg_hi)
        self.ledger.chain_begin(&mark)
        r = self.ledger.leg(leg_lo, leg_hi, sender, escrow, e.total, e.ledger, CODE_SEND, 0, e.id_lo, e.id_hi, ts)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r
        p = &new
        memset(p, 0, sizeof(tally_envelope_t))
        p.id_lo = e.id_lo
        p.id_hi = e.id_hi
        p.sender_id_lo = e.sender_id_lo
        p.sender_id_hi = e.sender_id_hi
        p.escrow_id_lo = e.escrow_id_lo
        p.escrow_id_hi = e.escrow_id_hi
        p.total = e.total
        p.remaining = e.total
        p.expires_at = ts + expire_after_s * NS_PER_S
        p.count = e.count
        p.ledger = e.ledger
        p.description_code = e.description_code
        p.state = ENVELOPE_OPEN
        p.timestamp = ts
        slot = self.table.insert(p, sender, ts)
        table_set_pinned(self.table, slot, True)
        self.open_count += 1
        heap_push(&self.expiry_heap, p.expires_at, ts, slot)
        return R_OK

    cdef result_t claim(self, const tally_envelope_claim_t *e, uint64_t ts, const uint64_t *claim_id, uint32_t claimer,
                        tally_envelope_claimed_t *out) noexcept nogil:
        cdef uint32_t slot, escrow, claim_slot
        cdef uint64_t share, leg_lo, leg_hi
        cdef tally_envelope_t *p
        cdef tally_claim_t *c
        cdef tally_claim_t new
        cdef chain_mark_t mark
        cdef result_t r
        cdef idmap_t *accounts = &self.ledger.account_map.map
        r = event_prologue(e.flags, e.timestamp, e.reserved, sizeof(e.reserved))
        if r != R_OK:
            return r
        if e.flags != 0:
            return R_RESERVED_FLAG
        if e.envelope_id_lo == 0 and e.envelope_id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        slot = table_find(self.table, e.envelope_id_lo, e.envelope_id_hi)
        if slot == IDMAP_NOT_FOUND:
            return R_ENVELOPE_NOT_FOUND
        p = &self.rows[slot]
        if claimer == IDMAP_NOT_FOUND:
            return R_CLAIMER_NOT_FOUND
        if self.ledger.hot[claimer].ledger != p.ledger:
            return R_CURRENCY_MISMATCH
        if product_account(self.ledger.hot[claimer].code):
            return R_PRODUCT_ACCOUNT
        claim_slot = table_find(self.claims, claim_id[0], claim_id[1])
        if claim_slot != IDMAP_NOT_FOUND:  # a retry: the same place and share
            c = &self.claim_rows[claim_slot]
            out.position = c.position
            out.amount = c.amount
            return R_EXISTS
        if p.state == ENVELOPE_EMPTY:
            return R_ENVELOPE_EMPTY
        if p.state != ENVELOPE_OPEN or p.expires_at <= ts:
            return R_ENVELOPE_EXPIRED
        if self.claims.free_count == 0:
            return R_CLAIMS_LIMIT_REACHED
        share = self.share_of(p, e)
        tally_assert(1 <= share <= p.remaining - (p.count - p.claimed - 1))
        escrow = idmap_get(accounts, p.escrow_id_lo, p.escrow_id_hi)
        claim_transfer_id_of(p.id_lo, p.id_hi, p.claimed, &leg_lo, &leg_hi)
        self.ledger.chain_begin(&mark)
        r = self.ledger.leg(leg_lo, leg_hi, escrow, claimer, share, p.ledger, CODE_CLAIM, 0, p.id_lo, p.id_hi, ts)
        if r != R_OK:
            self.ledger.chain_abort(&mark)
            return r  # no place taken
        c = &new
        memset(c, 0, sizeof(tally_claim_t))
        c.id_lo = claim_id[0]
        c.id_hi = claim_id[1]
        c.envelope_id_lo = p.id_lo
        c.envelope_id_hi = p.id_hi
        c.claimer_id_lo = e.claimer_id_lo
        c.claimer_id_hi = e.claimer_id_hi
        c.transfer_id_lo = leg_lo
        c.transfer_id_hi = leg_hi
        c.amount = share
        c.position = p.claimed
        c.ledger = p.ledger
        c.timestamp = ts
        self.claims.insert(c, claimer, ts)
        out.position = p.claimed
        out.amount = share
        p.claimed += 1
        p.remaining -= share
        if p.claimed == p.count:
            tally_assert(p.remaining == 0)
            self.ended(slot, ENVELOPE_EMPTY, ts)
        else:
            self.table.touch(slot, ts)
        return R_OK


cdef uint64_t _refunds_due(void *owner, uint64_t at_ts) noexcept nogil:
    return (<Envelopes> owner).refunds_due(at_ts)


cdef void _refund_due(void *owner, uint64_t first_ts, uint64_t count) noexcept nogil:
    (<Envelopes> owner).refund_due(first_ts, count)


cdef inline void *_ptr(object array) except NULL:
    cdef unsigned char[::1] view = array.view(np.uint8).reshape(-1)
    return <void *> &view[0]
