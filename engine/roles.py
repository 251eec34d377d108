"""Who may do what (docs/protocol.md "Roles"): each client of the server's config has a role.

* ``admin`` (the default): every operation.
* ``wallet``: a wallet service: accounts, transfers between them, paying orders, issuing
  payment codes and confirming (or declining) their held charges, sending and claiming red
  envelopes, receiving coupons (a scan) and paying with them, and reading them (lookups, an
  account's transfers, codes, packets, claims, stocks, coupons, a wallet's tier and limits),
  paying across currencies at a quoted rate.
* ``merchant``: a merchant gateway bound to ``merchants`` (merchant account ids): creates, closes
  and refunds orders, charges payment codes (and revokes a held charge by closing its order),
  creates coupon stocks and grants their coupons, refunds cross-border payments,
  and reads orders, refunds, terms and settlements, only for its merchants.

An operation outside the role is refused whole, with frame status ``forbidden``, before
anything is staged. An event of an allowed operation that names another merchant is applied as
refused: the server sets ``EVENT_FLAG_FORBIDDEN`` in its flags (``core.records``), so the core
answers ``forbidden`` for it, changes nothing, and the log holds it like any failed event (a
replay gives the same answer). A lookup by a merchant gateway is answered with its merchants'
records only.

>>> role = Role.of("merchant", merchants=[7])
>>> role.allows(Operation.create_orders), role.allows(Operation.create_transfers)
(True, False)
"""

from __future__ import annotations

import numpy as np

from core import id_values
from core.operations import OPERATIONS, Operation
from core.records import EVENT_FLAG_FORBIDDEN_BIT as EVENT_FLAG_FORBIDDEN

ROLES = ("admin", "wallet", "merchant")

_WALLET = frozenset({
    Operation.create_accounts, Operation.create_transfers, Operation.lookup_accounts, Operation.lookup_transfers,
    Operation.get_account_transfers, Operation.pay_orders, Operation.lookup_orders, Operation.lookup_refunds,
    Operation.issue_codes, Operation.confirm_charges, Operation.lookup_codes, Operation.send_envelopes,
    Operation.claim_envelopes, Operation.lookup_envelopes, Operation.lookup_envelope_claims, Operation.grant_coupons,
    Operation.pay_with_coupon, Operation.lookup_stocks, Operation.lookup_coupons, Operation.pay_cross_border,
    Operation.quote_cross_border, Operation.lookup_fx_payments, Operation.lookup_fx_refunds, Operation.lookup_rates,
    Operation.lookup_wallet_limits,
    Operation.ping,
})
_MERCHANT = frozenset({
    Operation.create_orders, Operation.close_orders, Operation.refund_orders, Operation.lookup_orders,
    Operation.lookup_refunds, Operation.lookup_merchants, Operation.lookup_settlements,
    Operation.subscribe_notifications, Operation.charge_codes, Operation.create_stocks, Operation.grant_coupons,
    Operation.lookup_stocks, Operation.refund_cross_border, Operation.lookup_fx_payments, Operation.lookup_fx_refunds,
    Operation.ping,
})

#: Per operation a merchant gateway may run: the field naming the merchant in its events (creates)
#: or in its reply records (lookups).
MERCHANT_FIELDS = {
    Operation.create_orders: "merchant_id", Operation.close_orders: "merchant_id",
    Operation.refund_orders: "merchant_id", Operation.lookup_orders: "merchant_id",
    Operation.lookup_refunds: "merchant_id", Operation.lookup_merchants: "merchant_id",
    Operation.lookup_settlements: "merchant_id", Operation.subscribe_notifications: "merchant_id",
    Operation.charge_codes: "merchant_id", Operation.create_stocks: "merchant_id", Operation.grant_coupons: "merchant_id",
    Operation.lookup_stocks: "merchant_id", Operation.refund_cross_border: "merchant_id",
    Operation.lookup_fx_payments: "merchant_id", Operation.lookup_fx_refunds: "merchant_id",
}
if set(MERCHANT_FIELDS) != _MERCHANT - {Operation.ping}:
    raise ImportError("engine.roles: every merchant operation names its merchant field")


class Role:
    """A client's role: the operations it may run, and for a merchant gateway its merchants."""

    __slots__ = ("name", "operations", "merchant_ids", "_merchants")

    def __init__(self, name: str, operations: frozenset, merchant_ids: list[int] | None):
        self.name = name
        self.operations = operations
        self.merchant_ids = merchant_ids  # None: any merchant
        self._merchants = None if merchant_ids is None else np.sort(id_values.of_ints(merchant_ids))

    @classmethod
    def of(cls, name: str, merchants=()) -> "Role":
        if name not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {name!r}")
        if name == "admin":
            return cls(name, frozenset(OPERATIONS), None)
        if name == "wallet":
            return cls(name, _WALLET, None)
        return cls(name, _MERCHANT, list(merchants))

    @property
    def bound(self) -> bool:
        """Whether the role acts for a set of merchants only."""
        return self._merchants is not None

    def merchants_wanted(self, wanted: list[int] | None) -> list[int] | None:
        """The merchants a request of this client may name of those it asks for (None: all)."""
        if self.merchant_ids is None:
            return wanted
        return self.merchant_ids if wanted is None else sorted(set(wanted) & set(self.merchant_ids))

    def allows(self, operation: int) -> bool:
        return operation in self.operations

    def merchants_mask(self, operation: int, records: np.ndarray) -> np.ndarray | None:
        """For records of ``operation`` (events or reply records), which name one of this
        client's merchants; None when the role is not bound to merchants."""
        if self._merchants is None:
            return None
        keys = id_values.of_field(records, MERCHANT_FIELDS[operation])
        at = np.minimum(np.searchsorted(self._merchants, keys), self._merchants.shape[0] - 1)
        return self._merchants[at] == keys if self._merchants.shape[0] else np.zeros(records.shape[0], dtype=bool)

    def mark_forbidden(self, operation: int, events: np.ndarray) -> int:
        """Flag the events (a writable view of the staged records) that name another merchant;
        returns how many."""
        mask = self.merchants_mask(operation, events)
        if mask is None or mask.all():
            return 0
        events["flags"][~mask] |= EVENT_FLAG_FORBIDDEN
        return int((~mask).sum())

    def visible(self, operation: int, records: np.ndarray) -> np.ndarray:
        """The reply records of a lookup this client may see."""
        mask = self.merchants_mask(operation, records)
        return records if mask is None else records[mask]


ADMIN = Role.of("admin")

__all__ = ["ADMIN", "MERCHANT_FIELDS", "ROLES", "Role"]
