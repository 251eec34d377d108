"""Merchant notifications read from the log (docs/products.md "Notifications"): every paid,
refunded, closed and revoked order, in log order, from a cursor.

The log is the source: an entry holds a batch's events and (format 2) which of them failed
(``core.store.LogEntry.failures``), so the notifications of a batch are its events of
``pay_orders``, ``close_orders``, ``refund_orders``, ``charge_codes`` and ``confirm_charges``
that succeeded, as whole arrays (a held charge, ``user_paying``, notifies when it is
confirmed or declined), and (log format 3) the orders the batch's start closed by the clock.
A cursor is ``(sequence, index)``: the log entry and the event in it (or 65,536 + the expiry's
place) of the last notification processed; reading resumes strictly after it, so a subscriber
that keeps its cursor gets every notification at least once across disconnects and restarts.
The store reads them (``Store.notifications``), the server streams them
(``subscribe_notifications``).

>>> NOTIFICATION_DTYPE.itemsize
80
"""

from __future__ import annotations

import enum

import numpy as np

from core import id_values
from core.operations import Operation
from core.records import NOTIFICATION_DTYPE, ConfirmFlags, TransferCode

#: A payment's payer -> merchant leg, as a batch of payments made it: when, and to whom.
PAYMENT_LEG_DTYPE = np.dtype([("timestamp", "<u8"), ("merchant_id_lo", "<u8"), ("merchant_id_hi", "<u8")])


class NotificationKind(enum.IntEnum):
    paid = 1
    refunded = 2
    closed = 3       # by its merchant (an expiry is not an event: next, from the log's expiries)
    revoked = 4      # a payment code's held charge ended unpaid: revoked by the merchant, declined by the user,
                     # or not confirmed in time
    expired = 5      # an unpaid order's time ran out


#: An order closed by the clock at a batch's start is notified with this index plus its place in
#: the batch's expiries (the log entry's section): after the batch's events, whose indexes are
#: below it, so that a cursor orders them all.
EXPIRY_INDEX_BASE = 1 << 16


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
    if entry.failures is None:
        raise ValueError(f"log entry {entry.sequence} is of format 1: it does not say which events failed")
    if entry.failures.shape[0]:
        ok = np.ones(count, dtype=bool)
        ok[entry.failures["index"]] = False
        index = np.flatnonzero(ok)
        chosen = events[index]
    else:  # every event succeeded (the common case): no mask, no copy of the events
        index = np.arange(count, dtype=np.uint32)
        chosen = events
    out = np.empty(index.shape[0], dtype=NOTIFICATION_DTYPE)
    out["sequence"], out["index"], out["kind"], out["reserved"] = entry.sequence, index, kind, b""
    for name, field in (("order_id", order), ("merchant_id", merchant), ("refund_id", refund)):
        if field is not None:
            out[f"{name}_lo"], out[f"{name}_hi"] = chosen[f"{field}_lo"], chosen[f"{field}_hi"]
        else:
            out[f"{name}_lo"], out[f"{name}_hi"] = 0, 0
    out["amount"] = chosen[amount] if amount is not None else 0
    if entry.operation == Operation.confirm_charges:
        out["kind"][(chosen["flags"] & int(ConfirmFlags.decline)) != 0] = NotificationKind.revoked
    # A product batch's event k is at base + k * LEGS_MAX; the entry logs the last timestamp.
    base = entry.last_timestamp + 1 - count * legs_max
    out["timestamp"] = base + index.astype(np.uint64) * np.uint64(legs_max)
    return out


def of_expired(entry) -> np.ndarray:
    """The notifications of the orders a log entry's batch closed by the clock at its start
    (``entry.expired``): kind ``expired``, their merchant, amount and time left 0 (the caller
    resolves them through the order, and a held charge's to ``revoked``)."""
    expired = entry.expired if entry.expired is not None else np.zeros(0, dtype=NOTIFICATION_DTYPE)
    out = np.zeros(expired.shape[0], dtype=NOTIFICATION_DTYPE)
    out["sequence"], out["kind"] = entry.sequence, NotificationKind.expired
    out["index"] = EXPIRY_INDEX_BASE + np.arange(expired.shape[0], dtype=np.uint32)
    if expired.shape[0]:
        out["order_id_lo"], out["order_id_hi"] = expired["lo"], expired["hi"]
    return out


def payment_legs(transfers: np.ndarray) -> np.ndarray:
    """The payer -> merchant legs (``TransferCode.order_payment``: one per payment that
    succeeded, at its event's first timestamp, crediting the order's merchant) among the
    transfers a batch made (ledger rows, e.g. ``Ledger.transfers_range`` right after the batch
    is applied), copied out as ``PAYMENT_LEG_DTYPE``: the merchants of the batch's payments
    with no lookup of their orders."""
    chosen = np.flatnonzero(transfers["code"] == TransferCode.order_payment)
    out = np.empty(chosen.shape[0], dtype=PAYMENT_LEG_DTYPE)
    for name, field in (("timestamp", "timestamp"), ("merchant_id_lo", "credit_account_id_lo"),
                        ("merchant_id_hi", "credit_account_id_hi")):
        out[name] = transfers[field][chosen]
    return out


def merchants_from_legs(notes: np.ndarray, legs: np.ndarray) -> bool:
    """Set the merchants of a batch of payments' notifications from the batch's
    ``payment_legs``; False (nothing set) unless those are exactly their legs (one each, at
    the same times)."""
    if (legs.shape[0] != notes.shape[0] or not np.array_equal(legs["timestamp"], notes["timestamp"])
            or not np.all(notes["kind"] == NotificationKind.paid)):
        return False
    notes["merchant_id_lo"], notes["merchant_id_hi"] = legs["merchant_id_lo"], legs["merchant_id_hi"]
    return True


def after(notes: np.ndarray, sequence: int, index: int) -> np.ndarray:
    """The notifications strictly after the cursor ``(sequence, index)``."""
    keep = (notes["sequence"] > sequence) | ((notes["sequence"] == sequence) & (notes["index"] > index))
    return notes[keep]


def of_merchants(notes: np.ndarray, merchants) -> np.ndarray:
    """The notifications of these merchants (ints), or all when ``merchants`` is None."""
    if merchants is None:
        return notes
    return notes[np.isin(id_values.of_field(notes, "merchant_id"), id_values.of_ints(merchants))]
