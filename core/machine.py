"""The state machine as one: the ledger and the product tables, dispatched by operation.

``Machine.apply`` is the one place that turns an operation number into the component that
applies it (core/operations.py names the component); the store applies its batches and replays
its log through it, and the property tests drive it beside the reference model. Before any
batch's events, once its checks passed and its base timestamp is assigned, the orders due by
then close (the ledger's begin hook, core/orders.pyx; docs/products.md "Time"), so a ledger
batch or a pulse advances them as it advances the pending transfers, and a refused batch
changes nothing.

>>> from core.machine import Machine
>>> machine = Machine(accounts_max=8, transfers_hot_max=64, orders_max=8, secret=bytes(32))
>>> machine.apply(1, [], now_ns=1).shape
(0,)
"""

from __future__ import annotations

import numpy as np

from core import constants
from core.ledger import Ledger
from core.operations import CREATE_COMPONENTS, Operation
from core.codes import Codes
from core.coupons import Coupons
from core.envelopes import Envelopes
from core.fx import Fx
from core.limits import Limits
from core.merchants import Merchants
from core.orders import Orders
from core.refunds import Refunds
from core.settlement import Settlement
from core.tiers import Tiers


#: The card pack's tables a payment at a merchant may change (pay and get, membership).
CARD_PACK_TABLES = ("coupons", "holdings", "members")


class Machine:
    """A ledger and its product tables, applied as one (no durability: see ``core.open``)."""

    def __init__(self, *, accounts_max: int = constants.ACCOUNTS_MAX_DEFAULT,
                 transfers_hot_max: int = constants.TRANSFERS_HOT_MAX_DEFAULT,
                 pending_max: int = constants.PENDING_MAX_DEFAULT,
                 orders_max: int = constants.ORDERS_MAX_DEFAULT,
                 merchants_max: int = constants.MERCHANTS_MAX_DEFAULT,
                 refunds_max: int = constants.REFUNDS_MAX_DEFAULT, codes_max: int = constants.CODES_MAX_DEFAULT,
                 envelopes_max: int = constants.ENVELOPES_MAX_DEFAULT, claims_max: int = constants.CLAIMS_MAX_DEFAULT,
                 stocks_max: int = constants.STOCKS_MAX_DEFAULT, coupons_max: int = constants.COUPONS_MAX_DEFAULT,
                 holdings_max: int = constants.HOLDINGS_MAX_DEFAULT, members_max: int = constants.MEMBERS_MAX_DEFAULT,
                 coupon_payments_max: int = constants.COUPON_PAYMENTS_MAX_DEFAULT,
                 fx_payments_max: int = constants.FX_PAYMENTS_MAX_DEFAULT,
                 fx_refunds_max: int = constants.FX_REFUNDS_MAX_DEFAULT, secret: bytes):
        self.ledger = Ledger(accounts_max=accounts_max, transfers_hot_max=transfers_hot_max, pending_max=pending_max)
        self.merchants = Merchants(self.ledger, merchants_max)
        self.orders = Orders(self.ledger, orders_max, secret, self.merchants)
        self.refunds = Refunds(self.ledger, self.orders, self.merchants, refunds_max)
        self.settlement = Settlement(self.ledger, self.merchants)
        self.codes = Codes(self.ledger, self.orders, self.merchants, codes_max, secret)
        self.envelopes = Envelopes(self.ledger, envelopes_max, claims_max, secret)
        self.coupons = Coupons(self.ledger, self.merchants, self.orders, stocks_max, coupons_max, holdings_max,
                               members_max, coupon_payments_max)
        self.fx = Fx(self.ledger, fx_payments_max, fx_refunds_max)
        self.limits = Limits(self.ledger, self.merchants, self.orders, self.codes, self.envelopes, self.coupons)
        self.tiers = Tiers(self.ledger)
        #: The write-back tables (core/table.pyx) by the name the operation table's ``reads`` use.
        self.tables = {"orders": self.orders.table, "refunds": self.refunds.table, "codes": self.codes.table,
                       "envelopes": self.envelopes.table, "claims": self.envelopes.claims,
                       "stocks": self.coupons.stocks, "coupons": self.coupons.coupons, "holdings": self.coupons.holdings,
                       "members": self.coupons.members, "coupon_payments": self.coupons.payments,
                       "fx_payments": self.fx.payments, "fx_refunds": self.fx.refunds}
        self._components = {"ledger": self.ledger, "orders": self.orders, "merchants": self.merchants,
                            "refunds": self.refunds, "settlement": self.settlement, "codes": self.codes,
                            "envelopes": self.envelopes, "coupons": self.coupons, "fx": self.fx, "limits": self.limits,
                            "tiers": self.tiers}
        #: The components with tables and state of their own, in the order they restore (the
        #: limits last: they are checked against the others' capacities).
        self._stateful = (self.merchants, self.orders, self.refunds, self.codes, self.envelopes, self.coupons,
                          self.fx, self.tiers, self.limits)

    def apply(self, operation: int, batch, now_ns: int) -> np.ndarray:
        """Apply one batch of a create operation at engine time ``now_ns``: one reply record
        per event (``core.operations``' reply type: u32 results, or ``create_orders``')."""
        component = CREATE_COMPONENTS.get(operation)
        if component is None:
            raise ValueError(f"no create operation {operation}")
        if isinstance(batch, list) and not batch:  # an empty batch of any type
            batch = b""
        return self._components[component].apply(operation, batch, now_ns)

    def lookup_orders(self, ids) -> np.ndarray:
        return self.orders.lookup_orders(ids)

    def lookup_merchants(self, ids) -> np.ndarray:
        return self.merchants.lookup_merchants(ids)

    def lookup_refunds(self, ids) -> np.ndarray:
        return self.refunds.lookup_refunds(ids)

    def lookup_codes(self, ids) -> np.ndarray:
        return self.codes.lookup_codes(ids)

    def lookup_wallet_limits(self, ids) -> np.ndarray:
        return self.tiers.lookup_wallet_limits(ids)

    def lookup_envelopes(self, ids) -> np.ndarray:
        return self.envelopes.lookup_envelopes(ids)

    def lookup_envelope_claims(self, ids) -> np.ndarray:
        return self.envelopes.lookup_envelope_claims(ids)

    def lookup_stocks(self, ids) -> np.ndarray:
        return self.coupons.lookup_stocks(ids)

    def lookup_coupons(self, ids) -> np.ndarray:
        return self.coupons.lookup_coupons(ids)

    def lookup_members(self, ids) -> np.ndarray:
        return self.coupons.lookup_members(ids)

    def lookup_fx_payments(self, ids) -> np.ndarray:
        return self.fx.lookup_fx_payments(ids)

    def lookup_fx_refunds(self, ids) -> np.ndarray:
        return self.fx.lookup_fx_refunds(ids)

    def lookup_rates(self, ids) -> np.ndarray:
        return self.fx.lookup_rates(ids)

    def derived_ids(self, operation: int, table: str, batch) -> np.ndarray:
        """The ids of ``table`` a batch reads that its component computes (``core.operations.DERIVED``):
        for a payment by another component (a QR order's, a code's), the card pack's records it
        may change, from its merchant, payer and order."""
        component = self._components[CREATE_COMPONENTS[operation]]
        if table in CARD_PACK_TABLES and component is not self.coupons:
            return self.coupons.card_pack_ids(table, *component.payment_keys(operation, batch))
        return component.derived_ids(operation, table, batch)

    def lookup_settlements(self, ids) -> np.ndarray:
        return self.merchants.lookup_settlements(ids)

    def list_merchants(self, offset: int, limit: int) -> np.ndarray:
        return self.merchants.list_merchants(offset, limit)

    @property
    def next_expiry_ns(self) -> int:
        """Engine time (ns) of the soonest expiry of any component; 0: none."""
        due = [ns for ns in (self.ledger.next_expiry_ns, self.orders.next_expiry_ns, self.codes.next_expiry_ns,
                             self.envelopes.next_expiry_ns, self.coupons.next_expiry_ns) if ns]
        return min(due) if due else 0

    def prefault(self) -> int:
        """Touch every page of every component's memory now (``core.open(prefault=True)``):
        bytes touched."""
        return self.ledger.prefault() + sum(component.prefault() for component in self._stateful)

    def snapshot(self):
        """Every component's in-place arrays and scalars, for a checkpoint (they alias live
        memory): the names are the components' own, declared in their CHECKPOINT_ARRAYS."""
        arrays, scalars = self.ledger.snapshot()
        for component in self._stateful:
            more_arrays, more_scalars = component.snapshot()
            arrays.update(more_arrays)
            scalars.update(more_scalars)
        return arrays, scalars

    def restore(self, arrays, scalars) -> None:
        """Load the product tables' part of a snapshot (after ``Ledger.restore``: they resolve
        accounts)."""
        for component in self._stateful:
            component.restore(arrays, scalars)

    def hash_parts(self) -> dict:
        """What of memory the state hash covers, by name (core/state_hash.py)."""
        parts = self.ledger.hash_parts()
        for component in self._stateful:
            parts.update(component.hash_parts())
        return parts

    def __repr__(self) -> str:
        return (f"Machine(accounts={self.ledger.account_count}, transfers={self.ledger.transfer_count}, "
                f"merchants={self.merchants.merchant_count}, orders={self.orders.order_count}, "
                f"refunds={self.refunds.refund_count}, codes={self.codes.code_count}, "
                f"envelopes={self.envelopes.envelope_count}, stocks={self.coupons.stock_count})")


__all__ = ["Machine", "Operation"]
