# cython: boundscheck=False, wraparound=False
"""Wallet tiers and their limits: the admin's operations and the lookup (docs/products.md
"Wallet limits and real-name tiers (built)").

A wallet's tier (1 unverified, 2 verified, 3 bank-card linked; 0 none) is two bits of its hot
account record, set by ``set_wallet_tiers`` (7); each tier's per-payment, daily, yearly and
balance limits, per ledger or as the defaults (ledger 0), by ``set_tier_limits`` (9). Both are
logged batches like any other, so a replay answers every transfer as the live run did. The
ledger's transfer path checks and counts the limits (``Ledger.tier_apply``) for every debit and
credit of a tiered wallet, product legs included; ``lookup_wallet_limits`` (8) reads a wallet's
tier, its limits in force and what its current day and year hold.

>>> import core
>>> from core.machine import Machine
>>> m = Machine(accounts_max=8, transfers_hot_max=64, secret=bytes(32))
>>> _ = m.apply(1, core.accounts_from_dicts([{"id": 42, "ledger": 156, "code": 1}]), 1)
>>> tier = core.records_from_dicts([{"account_id": 42, "ledger": 156, "tier": 2}], core.WALLET_TIER_DTYPE)
>>> [core.Result(code).name for code in m.apply(7, tier, 2)]
['ok']
>>> int(m.tiers.lookup_wallet_limits([42])["daily_limit"][0])
1000000
"""

import numpy as np

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from core.idmap cimport IDMAP_NOT_FOUND, idmap_get
from core.ledger cimport (
    LEGS_MAX, NS_PER_DAY, TIER_RULES_MAX, TIER_SHIFT, TIERS_MAX, Ledger, civil_year, tier_rule_of, tier_rule_t,
    wallet_window_t,
)
from core.product cimport Product, all_zero
from core.records cimport *  # result_t codes, the tiers' records

from core.checkpoint import RAW
from core.ledger import TIER_RULE_DTYPE, WINDOW_DTYPE
from core.operations import Operation
from core.records import WALLET_LIMITS_DTYPE, ids_array

cdef extern from "<stdint.h>":
    const uint64_t U64_MAX "UINT64_MAX"

for _name, _number in (("set_wallet_tiers", OPERATION_SET_WALLET_TIERS), ("set_tier_limits", OPERATION_SET_TIER_LIMITS)):
    if Operation[_name] != _number:
        raise ImportError(f"core/tiers.pxd numbers {_name} {_number}, core/operations.py {int(Operation[_name])}")

#: The checkpoint arrays of the tiers (core/checkpoint.py): copied between two batches (the
#: windows up to the ledger's accounts, 32 bytes each; the rules in force).
CHECKPOINT_ARRAYS = {"wallet_windows": RAW, "tier_rules": RAW}


cdef class Tiers(Product):
    """The wallet tiers of a ledger (its arrays: ``Ledger`` allocates them, as its transfer path
    reads them)."""

    def __cinit__(self, Ledger ledger not None):
        self.ledger = ledger
        self.component = "tiers"

    # ---------------------------------------------------------------- Python API (the boundary)

    def lookup_wallet_limits(self, ids):
        """Each of these accounts' tier, its limits in force and what its windows hold as of
        the engine's last timestamp (WALLET_LIMITS_DTYPE), in order; unknown ids left out."""
        keys = ids_array(ids).view(np.uint64).reshape(-1, 2)
        cdef const uint64_t[:, ::1] pairs = keys
        cdef Py_ssize_t i, n = keys.shape[0], found = 0
        out = np.zeros(n, dtype=WALLET_LIMITS_DTYPE)
        cdef unsigned char[::1] raw = out.view(np.uint8) if n else None
        cdef tally_wallet_limits_t *rows = <tally_wallet_limits_t *> &raw[0] if n else NULL
        cdef tally_wallet_limits_t *r
        cdef uint32_t index, tier
        cdef const tier_rule_t *rule
        cdef const wallet_window_t *w
        cdef Ledger ledger = self.ledger
        cdef uint64_t as_of = ledger.last_timestamp, day = as_of // NS_PER_DAY
        cdef uint32_t year = civil_year(day)
        for i in range(n):
            index = idmap_get(&ledger.account_map.map, pairs[i, 0], pairs[i, 1])
            if index == IDMAP_NOT_FOUND:
                continue
            r = &rows[found]
            found += 1
            w = &ledger.windows[index]
            tier = ledger.hot[index].flags >> TIER_SHIFT
            r.account_id_lo, r.account_id_hi = pairs[i, 0], pairs[i, 1]
            r.ledger = ledger.hot[index].ledger
            r.tier = tier
            if tier:
                rule = tier_rule_of(ledger.tier_rules, ledger.tier_rule_count, r.ledger, tier)
                r.payment_limit, r.daily_limit = rule.payment_max, rule.daily_max
                r.yearly_limit, r.balance_limit = rule.yearly_max, rule.balance_max
            r.day = <uint32_t> day
            r.year = year
            r.day_spent = w.day_spent if w.year != 0 and w.day == day else 0
            r.year_spent = w.year_spent if w.year == year else 0
            r.tier_set_at = w.tier_set_at
            r.timestamp = as_of
        return out[:found]

    def rules(self):
        """The tier limits in force (TIER_RULE_DTYPE): the defaults (ledger 0), then each
        ledger's own in the order first set (a copy)."""
        return self.ledger._arrays["tier_rules"][:self.ledger.tier_rule_count].copy()

    def prefault(self):
        """Nothing: the ledger's prefault touches the windows (with huge pages: they are read
        at random, a payer's at each of its debits)."""
        return 0

    def snapshot(self):
        """The windows up to the ledger's accounts and the rules in force (they alias live memory)."""
        a = self.ledger._arrays
        return ({"wallet_windows": a["wallet_windows"][:self.ledger.account_count],
                 "tier_rules": a["tier_rules"][:self.ledger.tier_rule_count]},
                {"tier_changes": self.changes})

    def hash_parts(self):
        """The windows and the rules, once a tier or a limit was ever set (a store that never
        set one hashes as before: its windows are all zero, its rules the defaults). The tiers
        themselves are in the ledger's ``hot`` part."""
        if not self.changes:
            return {}
        return self.snapshot()[0]

    def restore(self, arrays, scalars):
        """Load a snapshot (after the ledger's, which holds the tiers in its accounts)."""
        if self.changes:
            raise RuntimeError("restore needs tiers never set")
        windows = np.frombuffer(arrays["wallet_windows"], dtype=WINDOW_DTYPE)
        rules = np.frombuffer(arrays["tier_rules"], dtype=TIER_RULE_DTYPE)
        if windows.shape[0] > self.ledger.accounts_max or not TIERS_MAX <= rules.shape[0] <= TIER_RULES_MAX:
            raise ValueError(f"snapshot holds {windows.shape[0]} wallet windows and {rules.shape[0]} tier rules: "
                             "more than this ledger takes")
        a = self.ledger._arrays
        a["wallet_windows"][:windows.shape[0]] = windows
        a["tier_rules"][:rules.shape[0]] = rules
        self.ledger.tier_rule_count = <uint32_t> rules.shape[0]
        self.changes = scalars["tier_changes"]
        self.ledger.tiers_in_use = self.changes != 0  # (only the windows' prefetch reads it)

    # ---------------------------------------------------------------- the state machine

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        cdef uint32_t *results = <uint32_t *> out
        cdef result_t r
        for k in range(count):
            if operation == OPERATION_SET_WALLET_TIERS:
                r = self.set_wallet_tier(&(<const tally_wallet_tier_t *> events)[k], base + k * LEGS_MAX)
            else:
                r = self.set_tier_limits(&(<const tally_tier_limits_t *> events)[k], base + k * LEGS_MAX)
            if r == R_OK:
                self.changes += 1
            results[k] = r

    cdef result_t set_wallet_tier(self, const tally_wallet_tier_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t index
        cdef result_t r = prologue(e.timestamp, e.reserved_a, e.reserved, sizeof(e.reserved), e.flags)
        if r != R_OK:
            return r
        if e.account_id_lo == 0 and e.account_id_hi == 0:
            return R_ID_MUST_NOT_BE_ZERO
        if e.account_id_lo == U64_MAX and e.account_id_hi == U64_MAX:
            return R_ID_MUST_NOT_BE_INT_MAX
        if e.ledger == 0:
            return R_LEDGER_MUST_NOT_BE_ZERO
        if e.tier > TIERS_MAX:
            return R_TIER_INVALID
        index = idmap_get(&self.ledger.account_map.map, e.account_id_lo, e.account_id_hi)
        if index == IDMAP_NOT_FOUND:
            return R_ACCOUNT_NOT_FOUND
        if self.ledger.hot[index].ledger != e.ledger:
            return R_CURRENCY_MISMATCH
        if self.ledger.hot[index].flags >> TIER_SHIFT == e.tier:
            return R_EXISTS
        self.ledger.set_tier(index, e.tier, ts)
        return R_OK

    cdef result_t set_tier_limits(self, const tally_tier_limits_t *e, uint64_t ts) noexcept nogil:
        cdef uint32_t i, found = TIER_RULES_MAX
        cdef tier_rule_t *rule
        cdef result_t r = prologue(e.timestamp, e.reserved_a, e.reserved, sizeof(e.reserved), e.flags)
        if r != R_OK:
            return r
        if not 1 <= e.tier <= TIERS_MAX:
            return R_TIER_INVALID
        if e.payment_limit > e.daily_limit or e.daily_limit > e.yearly_limit:
            return R_TIER_LIMITS_INVALID
        if e.ledger == 0:
            found = e.tier - 1
        else:
            for i in range(TIERS_MAX, self.ledger.tier_rule_count):
                if self.ledger.tier_rules[i].ledger == e.ledger and self.ledger.tier_rules[i].tier == e.tier:
                    found = i
                    break
        if found != TIER_RULES_MAX:
            rule = &self.ledger.tier_rules[found]
            if (rule.payment_max == e.payment_limit and rule.daily_max == e.daily_limit
                    and rule.yearly_max == e.yearly_limit and rule.balance_max == e.balance_limit):
                return R_EXISTS
        elif self.ledger.tier_rule_count >= TIER_RULES_MAX:
            return R_TIER_LEDGERS_LIMIT_REACHED
        else:
            found = self.ledger.tier_rule_count
            self.ledger.tier_rule_count += 1
            rule = &self.ledger.tier_rules[found]
            memset(rule, 0, sizeof(tier_rule_t))
            rule.ledger = e.ledger
            rule.tier = e.tier
        rule.payment_max = e.payment_limit
        rule.daily_max = e.daily_limit
        rule.yearly_max = e.yearly_limit
        rule.balance_max = e.balance_limit
        rule.timestamp = ts
        return R_OK


cdef inline result_t prologue(uint64_t timestamp, uint8_t reserved_a, const uint8_t *reserved, size_t reserved_bytes,
                              uint16_t flags) noexcept nogil:
    """The first checks of both operations, in order (no ``forbidden``: only an admin sends them)."""
    if timestamp != 0:
        return R_TIMESTAMP_MUST_BE_ZERO
    if reserved_a != 0 or not all_zero(reserved, reserved_bytes):
        return R_RESERVED_FIELD
    if flags != 0:
        return R_RESERVED_FLAG
    return R_OK
