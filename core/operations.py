"""The one table of operations: number, kind, event record, reply (docs/products.md).

Everything that numbers or dispatches an operation reads this table: the store and its log
(which operations are logged, and the record type of their events), ``replay-log``, the
server's frame checks and stages, the client and the load generator. It is part of the wire's
vocabulary, so it imports nothing heavy: a client loads it without LMDB or the ledger.

>>> from core.operations import OPERATIONS, Kind, Operation
>>> OPERATIONS[Operation.create_transfers].kind is Kind.create
True
>>> OPERATIONS[Operation.lookup_accounts].reply_dtype.itemsize
128

Numbers: 1–99 the ledger's, 100–199 the payment products' (reserved), 1000 and up control.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

from core import constants
from core.records import (
    ACCOUNT_DTYPE, ID_DTYPE, MERCHANT_DTYPE, ORDER_CLOSE_DTYPE, ORDER_CREATE_DTYPE, ORDER_CREATED_DTYPE, ORDER_DTYPE, ORDER_PAY_DTYPE,
    NOTIFICATION_DTYPE, REFUND_DTYPE, SETTLEMENT_DTYPE, TRANSFER_DTYPE, CODE_CHARGE_DTYPE, CODE_CONFIRM_DTYPE,
    CODE_DTYPE, CODE_ISSUE_DTYPE, CODE_ISSUED_DTYPE, LIMITS_DTYPE, ENVELOPE_SEND_DTYPE, ENVELOPE_CLAIM_DTYPE,
    ENVELOPE_CLAIMED_DTYPE, ENVELOPE_DTYPE, CLAIM_DTYPE, STOCK_CREATE_DTYPE, STOCK_DTYPE, COUPON_GRANT_DTYPE,
    COUPON_DTYPE, COUPON_PAY_DTYPE, FX_RATE_DTYPE, FX_PAY_DTYPE, FX_PAYMENT_DTYPE, FX_REFUND_DTYPE, FX_QUOTE_DTYPE,
    TIER_LIMITS_DTYPE, WALLET_LIMITS_DTYPE, WALLET_TIER_DTYPE,
)

#: A create's reply: one ``core.Result`` per event.
RESULT_DTYPE = np.dtype(np.uint32)


class Operation(enum.IntEnum):
    create_accounts = 1
    create_transfers = 2
    lookup_accounts = 3
    lookup_transfers = 4
    get_account_transfers = 5
    set_limits = 6
    set_wallet_tiers = 7
    lookup_wallet_limits = 8
    set_tier_limits = 9
    # 100-199: the payment products (docs/products.md).
    create_orders = 100
    pay_orders = 101
    close_orders = 102
    lookup_orders = 103
    set_merchants = 104
    lookup_merchants = 105
    refund_orders = 106
    lookup_refunds = 107
    settle_merchants = 108
    lookup_settlements = 109
    list_merchants = 110
    subscribe_notifications = 111
    issue_codes = 112
    charge_codes = 113
    confirm_charges = 114
    lookup_codes = 115
    send_envelopes = 116
    claim_envelopes = 117
    lookup_envelopes = 118
    lookup_envelope_claims = 119
    create_stocks = 120
    grant_coupons = 121
    pay_with_coupon = 122
    lookup_stocks = 123
    lookup_coupons = 124
    set_rates = 125
    pay_cross_border = 126
    refund_cross_border = 127
    lookup_fx_payments = 128
    lookup_fx_refunds = 129
    lookup_rates = 130
    quote_cross_border = 131
    ping = 1000


class Kind(enum.Enum):
    #: Events of ``event_dtype`` (every one ``RECORD_SIZE_BYTES``), applied as a batch and
    #: logged; the reply is one ``reply_dtype`` per event (``RESULT_DTYPE``, or a record that
    #: starts with the u32 result: ``create_orders``' carries the order's token).
    create = "create"
    #: 16-byte ids (``event_dtype`` = ``ID_DTYPE``); the reply is the records found, in order.
    lookup = "lookup"
    #: A msgpack body (docs/protocol.md); the reply is records of ``reply_dtype``.
    query = "query"
    #: No state: the reply has no body.
    control = "control"


#: A ``reads`` field the component computes from each event (``derived_ids``) rather than an
#: event field: an issued code's number.
DERIVED = ""


class Spec(NamedTuple):
    operation: Operation
    kind: Kind
    event_dtype: np.dtype | None   # the request body's records (None: not records)
    reply_dtype: np.dtype | None   # the reply body's records (None: no body)
    component: str | None = None   # who applies a create: "ledger" or a product module ("orders", "settlement", ...)
    legs: int = 0                  # transfers an event may make, at most (the ring's room for a batch)
    # The product records an event names, as (table, id field) pairs: a store loads those of a
    # batch that are not in memory before it runs (docs/tables.md), one slot per event and table.
    reads: tuple[tuple[str, str], ...] = ()


OPERATIONS: dict[Operation, Spec] = {spec.operation: spec for spec in (
    Spec(Operation.create_accounts, Kind.create, ACCOUNT_DTYPE, RESULT_DTYPE, "ledger"),
    Spec(Operation.create_transfers, Kind.create, TRANSFER_DTYPE, RESULT_DTYPE, "ledger", legs=1),
    Spec(Operation.lookup_accounts, Kind.lookup, ID_DTYPE, ACCOUNT_DTYPE),
    Spec(Operation.lookup_transfers, Kind.lookup, ID_DTYPE, TRANSFER_DTYPE),
    Spec(Operation.get_account_transfers, Kind.query, None, TRANSFER_DTYPE),
    # The limits in force (core/limits.pyx): logged, so a replay answers as the live run did.
    Spec(Operation.set_limits, Kind.create, LIMITS_DTYPE, RESULT_DTYPE, "limits"),
    # Wallet tiers and their limits (docs/products.md "Wallet limits and real-name tiers (built)"):
    # the ledger's transfer path checks them; these set them (logged) and read a wallet's.
    Spec(Operation.set_wallet_tiers, Kind.create, WALLET_TIER_DTYPE, RESULT_DTYPE, "tiers"),
    Spec(Operation.lookup_wallet_limits, Kind.lookup, ID_DTYPE, WALLET_LIMITS_DTYPE),
    Spec(Operation.set_tier_limits, Kind.create, TIER_LIMITS_DTYPE, RESULT_DTYPE, "tiers"),
    Spec(Operation.create_orders, Kind.create, ORDER_CREATE_DTYPE, ORDER_CREATED_DTYPE, "orders",
         reads=(("orders", "id"),)),
    # A payment at a merchant whose terms ask for the card pack may change its payer's holding of
    # the award stock and its member record (docs/products.md "Pay and get, membership cards"):
    # ids the component derives once the order (or the code) is resident, so they are read last.
    Spec(Operation.pay_orders, Kind.create, ORDER_PAY_DTYPE, RESULT_DTYPE, "orders", legs=2,
         reads=(("orders", "order_id"), ("coupons", DERIVED), ("holdings", DERIVED), ("members", DERIVED))),
    Spec(Operation.close_orders, Kind.create, ORDER_CLOSE_DTYPE, RESULT_DTYPE, "orders", legs=1,
         reads=(("orders", "order_id"),)),
    Spec(Operation.lookup_orders, Kind.lookup, ID_DTYPE, ORDER_DTYPE),
    Spec(Operation.set_merchants, Kind.create, MERCHANT_DTYPE, RESULT_DTYPE, "merchants"),
    Spec(Operation.lookup_merchants, Kind.lookup, ID_DTYPE, MERCHANT_DTYPE),
    Spec(Operation.refund_orders, Kind.create, REFUND_DTYPE, RESULT_DTYPE, "refunds", legs=2,
         reads=(("orders", "order_id"), ("refunds", "id"))),
    Spec(Operation.lookup_refunds, Kind.lookup, ID_DTYPE, REFUND_DTYPE),
    Spec(Operation.settle_merchants, Kind.create, SETTLEMENT_DTYPE, RESULT_DTYPE, "settlement", legs=1),
    Spec(Operation.lookup_settlements, Kind.lookup, ID_DTYPE, SETTLEMENT_DTYPE),
    Spec(Operation.list_merchants, Kind.query, None, MERCHANT_DTYPE),
    # A query whose request stays open: later pages come as frames with its request id.
    Spec(Operation.subscribe_notifications, Kind.query, None, NOTIFICATION_DTYPE),
    # Payment codes (docs/products.md "Payment codes (built)"): an issued code's number is the
    # store secret's HMAC of the event, so the codes component derives the ids an issue reads.
    Spec(Operation.issue_codes, Kind.create, CODE_ISSUE_DTYPE, CODE_ISSUED_DTYPE, "codes",
         reads=(("codes", DERIVED),)),
    Spec(Operation.charge_codes, Kind.create, CODE_CHARGE_DTYPE, RESULT_DTYPE, "codes", legs=2,
         reads=(("orders", "order_id"), ("codes", "code"), ("coupons", DERIVED), ("holdings", DERIVED),
                ("members", DERIVED))),
    Spec(Operation.confirm_charges, Kind.create, CODE_CONFIRM_DTYPE, RESULT_DTYPE, "codes", legs=2,
         reads=(("orders", "order_id"), ("coupons", DERIVED), ("holdings", DERIVED), ("members", DERIVED))),
    Spec(Operation.lookup_codes, Kind.lookup, ID_DTYPE, CODE_DTYPE),
    # Red envelopes (docs/products.md "Red envelopes"): a claim's record id is a digest of the
    # packet and the claimer, so the envelopes component derives the ids a claim reads.
    Spec(Operation.send_envelopes, Kind.create, ENVELOPE_SEND_DTYPE, RESULT_DTYPE, "envelopes", legs=1,
         reads=(("envelopes", "id"),)),
    Spec(Operation.claim_envelopes, Kind.create, ENVELOPE_CLAIM_DTYPE, ENVELOPE_CLAIMED_DTYPE, "envelopes", legs=1,
         reads=(("envelopes", "envelope_id"), ("claims", DERIVED))),
    Spec(Operation.lookup_envelopes, Kind.lookup, ID_DTYPE, ENVELOPE_DTYPE),
    Spec(Operation.lookup_envelope_claims, Kind.lookup, ID_DTYPE, CLAIM_DTYPE),
    # Coupons (docs/products.md "Coupons and the card pack"): a user's holding of a stock (the
    # per-user cap) has an id the coupons component derives from the stock and the user.
    Spec(Operation.create_stocks, Kind.create, STOCK_CREATE_DTYPE, RESULT_DTYPE, "coupons", legs=1,
         reads=(("stocks", "id"),)),
    Spec(Operation.grant_coupons, Kind.create, COUPON_GRANT_DTYPE, RESULT_DTYPE, "coupons",
         reads=(("coupons", "id"), ("stocks", "stock_id"), ("holdings", DERIVED))),
    Spec(Operation.pay_with_coupon, Kind.create, COUPON_PAY_DTYPE, RESULT_DTYPE, "coupons", legs=2,
         reads=(("coupon_payments", DERIVED), ("coupons", "coupon_id"), ("stocks", "stock_id"), ("holdings", DERIVED),
                ("members", DERIVED))),
    Spec(Operation.lookup_stocks, Kind.lookup, ID_DTYPE, STOCK_DTYPE),
    Spec(Operation.lookup_coupons, Kind.lookup, ID_DTYPE, COUPON_DTYPE),
    # Cross-border payments (docs/products.md "Cross-border payments"): a payment's id is a digest
    # of the payer and the wallet service's request, which the fx component derives.
    Spec(Operation.set_rates, Kind.create, FX_RATE_DTYPE, RESULT_DTYPE, "fx"),
    Spec(Operation.pay_cross_border, Kind.create, FX_PAY_DTYPE, RESULT_DTYPE, "fx", legs=2,
         reads=(("fx_payments", DERIVED),)),
    Spec(Operation.refund_cross_border, Kind.create, FX_REFUND_DTYPE, RESULT_DTYPE, "fx", legs=2,
         reads=(("fx_payments", "payment_id"), ("fx_refunds", "id"))),
    Spec(Operation.lookup_fx_payments, Kind.lookup, ID_DTYPE, FX_PAYMENT_DTYPE),
    Spec(Operation.lookup_fx_refunds, Kind.lookup, ID_DTYPE, FX_REFUND_DTYPE),
    # The rates by pair id (from_ledger | to_ledger << 32, hi 0); a quote is a msgpack body.
    Spec(Operation.lookup_rates, Kind.lookup, ID_DTYPE, FX_RATE_DTYPE),
    Spec(Operation.quote_cross_border, Kind.query, None, FX_QUOTE_DTYPE),
    Spec(Operation.ping, Kind.control, None, None),
)}

#: The logged operations and their events' record type (the store, its log, replay, the server).
CREATE_EVENT_DTYPES: dict[Operation, np.dtype] = {
    spec.operation: spec.event_dtype for spec in OPERATIONS.values() if spec.kind is Kind.create}
#: The lookups and the records they answer with.
LOOKUP_REPLY_DTYPES: dict[Operation, np.dtype] = {
    spec.operation: spec.reply_dtype for spec in OPERATIONS.values() if spec.kind is Kind.lookup}

#: The largest reply record of a create (engine/wire.pyx builds replies up to it).
CREATE_REPLY_BYTES_MAX = 16

#: The logged operations and the component that applies each.
CREATE_COMPONENTS: dict[Operation, str] = {
    spec.operation: spec.component for spec in OPERATIONS.values() if spec.kind is Kind.create}
#: A create's reply record per event.
CREATE_REPLY_DTYPES: dict[Operation, np.dtype] = {
    spec.operation: spec.reply_dtype for spec in OPERATIONS.values() if spec.kind is Kind.create}

for _spec in OPERATIONS.values():  # the log and the wire assume fixed 128-byte event records
    if _spec.kind is Kind.create and _spec.event_dtype.itemsize != constants.RECORD_SIZE_BYTES:
        raise ImportError(f"{_spec.operation.name}: event records must be {constants.RECORD_SIZE_BYTES} bytes")
    if _spec.kind is Kind.create and (_spec.component is None or _spec.reply_dtype.itemsize % 4
                                      or _spec.reply_dtype.itemsize > CREATE_REPLY_BYTES_MAX
                                      or _spec.reply_dtype.fields and _spec.reply_dtype.fields["result"][1] != 0):
        raise ImportError(f"{_spec.operation.name}: a create names its component and replies u32 result first")
del _spec
