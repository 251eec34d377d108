# cython: boundscheck=False, wraparound=False
"""The limits in force (docs/storage.md "Capacities and limits").

A capacity is memory (``accounts_max``, ``orders_max``, ...: fixed when a store opens, and it
may grow when the store is reopened); a limit is what the state machine answers by
(``accounts_limit_reached`` past the accounts limit, ``orders_limit_reached`` past the open
orders limit, ...). They are apart so that growing a capacity cannot change a replayed answer:
a limit changes only by a ``set_limits`` batch, logged like any other, and a store that finds
its capacities grown logs one after its recovery (``core.store``).

>>> from core.machine import Machine
>>> machine = Machine(accounts_max=8, transfers_hot_max=64, orders_max=8, secret=bytes(32))
>>> machine.limits.current()["accounts"], machine.limits.capacities()["accounts"]
(8, 8)
"""

from libc.stdint cimport uint32_t, uint64_t

from core.ledger cimport Ledger
from core.product cimport all_zero
from core.records cimport *  # result_t codes, tally_limits_t

from core import constants
from core.operations import Operation

cdef uint64_t ENVELOPE_TOTAL_LIMIT_MAX = constants.ENVELOPE_TOTAL_LIMIT_MAX

if Operation.set_limits != OPERATION_SET_LIMITS:
    raise ImportError("core/limits.pxd and core/operations.py number set_limits differently")

#: The limits by name, in LIMITS_DTYPE's order.
NAMES = ("accounts", "pending", "merchants", "orders_open", "codes_live", "envelopes_open", "envelope_total",
         "stocks_open")
#: The capacities ``of_capacities`` takes beside the accounts' and the pending transfers'.
CAPACITIES = ("merchants_max", "orders_max", "codes_max", "envelopes_max", "stocks_max")
#: The limits that are policy, not capacity: a machine starts with their defaults, and a store
#: never raises them itself (only a set_limits batch does).
POLICY_DEFAULTS = {"envelope_total": constants.ENVELOPE_TOTAL_MAX_DEFAULT}


def of_capacities(*, accounts_max: int, pending_max: int, merchants_max: int, orders_max: int, codes_max: int,
                  envelopes_max: int, stocks_max: int) -> dict:
    """The limits that capacities allow (what a machine of them starts with, but the policy
    limits: POLICY_DEFAULTS)."""
    from core.orders import room_reserved
    return {"accounts": accounts_max, "pending": pending_max, "merchants": merchants_max,
            "orders_open": orders_max - room_reserved(orders_max), "codes_live": codes_max - room_reserved(codes_max),
            "envelopes_open": envelopes_max - room_reserved(envelopes_max),
            "stocks_open": stocks_max - room_reserved(stocks_max)}


cdef class Limits(Product):
    """The limits of a ledger and its product tables (each starts at its capacity)."""

    def __cinit__(self, Ledger ledger not None, Merchants merchants not None, Orders orders not None,
                  Codes codes not None, Envelopes envelopes not None, Coupons coupons not None):
        self.ledger, self.merchants, self.orders, self.codes = ledger, merchants, orders, codes
        self.envelopes, self.coupons = envelopes, coupons
        self.component = "limits"

    def current(self) -> dict:
        """The limits in force, by name."""
        return {"accounts": self.ledger.accounts_limit, "pending": self.ledger.pending_limit,
                "merchants": self.merchants.merchants_limit, "orders_open": self.orders.open_max,
                "codes_live": self.codes.live_max, "envelopes_open": self.envelopes.open_max,
                "envelope_total": self.envelopes.total_max, "stocks_open": self.coupons.open_max}

    def capacities(self) -> dict:
        """The most each limit may be: what memory holds (an open order and a live code are
        pinned in their table, less a batch's room)."""
        return {"accounts": self.ledger.accounts_max, "pending": self.ledger.pending_max,
                "merchants": self.merchants.merchants_max, "orders_open": self.orders.table.pinned_max,
                "codes_live": self.codes.table.pinned_max, "envelopes_open": self.envelopes.table.pinned_max,
                "envelope_total": constants.ENVELOPE_TOTAL_LIMIT_MAX, "stocks_open": self.coupons.stocks.pinned_max}

    def force(self, limits: dict) -> None:
        """Set limits outside the log: a store's limits at its log's start, or a checkpoint's
        (ValueError above a capacity)."""
        capacities = self.capacities()
        for name, value in limits.items():
            if not 1 <= value <= capacities[name]:
                raise ValueError(f"the {name} limit {value} is outside 1..{capacities[name]} (its capacity)")
        self.ledger.accounts_limit = limits.get("accounts", self.ledger.accounts_limit)
        self.ledger.pending_limit = limits.get("pending", self.ledger.pending_limit)
        self.merchants.merchants_limit = limits.get("merchants", self.merchants.merchants_limit)
        self.orders.open_max = limits.get("orders_open", self.orders.open_max)
        self.codes.live_max = limits.get("codes_live", self.codes.live_max)
        self.envelopes.open_max = limits.get("envelopes_open", self.envelopes.open_max)
        self.envelopes.total_max = limits.get("envelope_total", self.envelopes.total_max)
        self.coupons.open_max = limits.get("stocks_open", self.coupons.open_max)

    def snapshot(self):
        """No arrays; the limits as scalars (a checkpoint's)."""
        return {}, {f"limit_{name}": value for name, value in self.current().items()}

    def restore(self, arrays, scalars):
        """A checkpoint's limits (one written before limits were kept holds none: the store's
        limits at its log's start stand, which it set already)."""
        self.force({name: scalars[f"limit_{name}"] for name in NAMES if f"limit_{name}" in scalars})

    def hash_parts(self):
        """Nothing: limits are configuration, kept by the log and the checkpoints, like the
        capacities outside the state hash (a store hashes the same whatever its capacities)."""
        return {}

    def prefault(self):
        return 0

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        cdef uint64_t k
        for k in range(count):
            (<uint32_t *> out)[k] = self.set_limits(&(<const tally_limits_t *> events)[k])

    cdef result_t set_limits(self, const tally_limits_t *e) noexcept nogil:
        if e.timestamp != 0:
            return R_TIMESTAMP_MUST_BE_ZERO
        if not all_zero(e.reserved, sizeof(e.reserved)) or not all_zero(e.reserved_a, sizeof(e.reserved_a)):
            return R_RESERVED_FIELD
        if e.flags != 0:
            return R_RESERVED_FLAG
        if (e.accounts > self.ledger.accounts_max or e.pending > self.ledger.pending_max
                or e.merchants > self.merchants.merchants_max or e.orders_open > self.orders.table.pinned_max
                or e.codes_live > self.codes.table.pinned_max or e.envelopes_open > self.envelopes.table.pinned_max
                or e.envelope_total > ENVELOPE_TOTAL_LIMIT_MAX or e.stocks_open > self.coupons.stocks.pinned_max):
            return R_LIMIT_OUT_OF_RANGE
        if e.accounts:
            self.ledger.accounts_limit = e.accounts
        if e.pending:
            self.ledger.pending_limit = e.pending
        if e.merchants:
            self.merchants.merchants_limit = e.merchants
        if e.orders_open:
            self.orders.open_max = e.orders_open
        if e.codes_live:
            self.codes.live_max = e.codes_live
        if e.envelopes_open:
            self.envelopes.open_max = e.envelopes_open
        if e.envelope_total:
            self.envelopes.total_max = e.envelope_total
        if e.stocks_open:
            self.coupons.open_max = e.stocks_open
        return R_OK
