"""Merchant notifications read from the log (docs/products.md "Notifications"): every paid,
refunded, closed and revoked order, in log order, from a cursor.

The log is the source: an entry holds a batch's events and (format 2) which of them failed
(``core.store.LogEntry.failures``), so the notifications of a batch are its events of
``pay_orders``, ``close_orders``, ``refund_orders``, ``charge_codes`` and ``confirm_charges``
that succeeded, as whole arrays (a held charge, ``user_paying``, notifies when it is
confirmed). A
cursor is ``(sequence, index)``: the log entry and the event in it of the last notification
processed; reading resumes strictly after it, so a subscriber that keeps its cursor gets every
notification at least once across disconnects and restarts. Built so far: this reader (the
store's ``notifications``); the stream over the protocol, expiries and revocations are next.

>>> NOTIFICATION_DTYPE.itemsize
80
"""

from __future__ import annotations

import enum

import numpy as np

from core import id_values
from core.operations import Operation
from core.records import NOTIFICATION_DTYPE, ConfirmFlags



class NotificationKind(enum.IntEnum):
    paid = 1
    refunded = 2
    closed = 3       # by its merchant (an expiry is not an event: next, from the log's expiries)
    revoked = 4      # a payment code's held charge ended unpaid: revoked by the merchant, declined by the user


#: The operations that notify, and what of their events (the order, the merchant, the refund,
#: the amount: a field name, or None when the event does not say).
_SOURCES = {
    Operation.pay_orders: (NotificationKind.paid, "order_id", None, None, "amount"),
    Operation.close_orders: (NotificationKind.closed, "order_id", "merchant_id", None, None),
    Operation.refund_orders: (NotificationKind.refunded, "order_id", "merchant_id", "id", "amount"),
    Operation.charge_codes: (NotificationKind.paid, "order_id", "merchant_id", None, "amount"),
    # Paid, or revoked when the user declined (the event's flags); the order names the rest.
    Operation.confirm_charges: (NotificationKind.paid, "order_id", None, None, None),
}
NOTIFYING_OPERATIONS = frozenset(_SOURCES)


def of_entry(entry, events: np.ndarray, legs_max: int) -> np.ndarray:
    """The notifications of one log entry (a ``LogEntry`` of a notifying operation, its body
    viewed as its events); what the event does not say (a payment's merchant, a confirmed
    charge's amount, whether a close revoked a held charge) the caller resolves through the
    order (``core.store.Store``)."""
    kind, order, merchant, refund, amount = _SOURCES[entry.operation]
    count = events.shape[0]
    ok = np.ones(count, dtype=bool)
    if entry.failures is None:
        raise ValueError(f"log entry {entry.sequence} is of format 1: it does not say which events failed")
    ok[entry.failures["index"]] = False
    index = np.flatnonzero(ok)
    out = np.zeros(index.shape[0], dtype=NOTIFICATION_DTYPE)
    out["sequence"], out["index"], out["kind"] = entry.sequence, index, kind
    chosen = events[index]
    for name, field in (("order_id", order), ("merchant_id", merchant), ("refund_id", refund)):
        if field is not None:
            out[f"{name}_lo"], out[f"{name}_hi"] = chosen[f"{field}_lo"], chosen[f"{field}_hi"]
    if amount is not None:
        out["amount"] = chosen[amount]
    if entry.operation == Operation.confirm_charges:
        out["kind"][(chosen["flags"] & int(ConfirmFlags.decline)) != 0] = NotificationKind.revoked
    # A product batch's event k is at base + k * LEGS_MAX; the entry logs the last timestamp.
    base = entry.last_timestamp + 1 - count * legs_max
    out["timestamp"] = base + index.astype(np.uint64) * np.uint64(legs_max)
    return out


def after(notes: np.ndarray, sequence: int, index: int) -> np.ndarray:
    """The notifications strictly after the cursor ``(sequence, index)``."""
    keep = (notes["sequence"] > sequence) | ((notes["sequence"] == sequence) & (notes["index"] > index))
    return notes[keep]


def of_merchants(notes: np.ndarray, merchants) -> np.ndarray:
    """The notifications of these merchants (ints), or all when ``merchants`` is None."""
    if merchants is None:
        return notes
    return notes[np.isin(id_values.of_field(notes, "merchant_id"), id_values.of_ints(merchants))]
