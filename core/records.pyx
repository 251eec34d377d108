"""Record layouts as NumPy dtypes, result codes and flags as Python enums, and converters.

The C structs in ``records.pxd`` are the source of truth; this module mirrors them for Python
and checks at import that sizes and offsets agree, so the two can never drift apart silently.
Batches cross the API as NumPy structured arrays viewed straight over the C records: no Python
object per record on the hot path. The dict converters are for tests, tools and the REPL.
"""

import enum

import numpy as np

from core.records cimport (
    tally_account_t, tally_transfer_t, ACCOUNT_SIZE, TRANSFER_SIZE, ACCOUNT_RESERVED_SIZE,
    TRANSFER_RESERVED_SIZE, result_t, account_flag_t, transfer_flag_t, tally_order_create_t, tally_order_pay_t,
    tally_order_close_t, tally_order_t, tally_order_created_t, order_state_t, close_reason_t, tally_merchant_t,
    tally_refund_t, event_flag_t, tally_code_issue_t, tally_code_issued_t, tally_code_charge_t, tally_code_confirm_t,
    tally_code_t, code_state_t, confirm_flag_t, order_kind_t, tally_limits_t, tally_wallet_tier_t, tally_tier_limits_t,
    tally_wallet_limits_t,
)

_U64 = "<u8"
_U32 = "<u4"
_U16 = "<u2"

ACCOUNT_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64),
    ("debits_pending", _U64), ("debits_posted", _U64),
    ("credits_pending", _U64), ("credits_posted", _U64),
    ("user_data_128_lo", _U64), ("user_data_128_hi", _U64),
    ("user_data_64", _U64), ("user_data_32", _U32),
    ("ledger", _U32), ("code", _U16), ("flags", _U16),
    ("reserved", f"V{ACCOUNT_RESERVED_SIZE}"),
    ("timestamp", _U64),
])

TRANSFER_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64),
    ("debit_account_id_lo", _U64), ("debit_account_id_hi", _U64),
    ("credit_account_id_lo", _U64), ("credit_account_id_hi", _U64),
    ("amount", _U64),
    ("pending_id_lo", _U64), ("pending_id_hi", _U64),
    ("user_data_128_lo", _U64), ("user_data_128_hi", _U64),
    ("user_data_64", _U64), ("user_data_32", _U32),
    ("timeout", _U32), ("ledger", _U32), ("code", _U16), ("flags", _U16),
    ("reserved", f"V{TRANSFER_RESERVED_SIZE}"),
    ("timestamp", _U64),
])

# The orders' records (docs/products.md "Orders: the reference").
ORDER_CREATE_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("amount", _U64), ("out_trade_no", "u1", (32,)),
    ("expire_after_s", _U32), ("ledger", _U32), ("description_code", _U32), ("flags", _U16),
    ("reserved", "V34"),
    ("timestamp", _U64),
])

ORDER_PAY_DTYPE = np.dtype([
    ("order_id_lo", _U64), ("order_id_hi", _U64),
    ("payer_id_lo", _U64), ("payer_id_hi", _U64),
    ("amount", _U64), ("token", "u1", (10,)), ("reserved_a", "V2"),
    ("ledger", _U32), ("flags", _U16), ("reserved", "V62"),
    ("timestamp", _U64),
])

ORDER_CLOSE_DTYPE = np.dtype([
    ("order_id_lo", _U64), ("order_id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("flags", _U16), ("reserved", "V86"),
    ("timestamp", _U64),
])

ORDER_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("payer_id_lo", _U64), ("payer_id_hi", _U64),
    ("amount", _U64), ("refunded", _U64),
    ("expires_at", _U64), ("paid_at", _U64), ("closed_at", _U64),
    ("token", "u1", (10,)), ("state", "u1"), ("close_reason", "u1"), ("refund_count", _U16),
    ("kind", "u1"), ("reserved_a", "V1"), ("ledger", _U32), ("description_code", _U32), ("fee", _U64),
    ("timestamp", _U64),
])

#: ``create_orders``' reply per event: the result and, on ok or exists, the order's token.
ORDER_CREATED_DTYPE = np.dtype([("result", _U32), ("token", "u1", (10,)), ("reserved", "V2")])

#: A refund: ``refund_orders``' events (fee_refunded, payer_id, timestamp 0) and, as kept,
#: ``lookup_refunds``' records.
REFUND_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64),
    ("order_id_lo", _U64), ("order_id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("amount", _U64), ("out_refund_no", "u1", (32,)), ("ledger", _U32), ("flags", _U16), ("reserved", "V2"),
    ("fee_refunded", _U64), ("payer_id_lo", _U64), ("payer_id_hi", _U64),
    ("timestamp", _U64),
])

#: A settlement of a merchant's closed windows: ``settle_merchants``' events and
#: ``lookup_settlements``' records (the merchant's last one).
SETTLEMENT_DTYPE = np.dtype([
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64), ("window", _U64),
    ("ledger", _U32), ("flags", _U16), ("reserved", "V2"),
    ("paid", _U64), ("refunded", _U64), ("fees", _U64), ("fees_returned", _U64), ("net", "<i8"),
    ("transfer_id_lo", _U64), ("transfer_id_hi", _U64),
    ("settlement_account_id_lo", _U64), ("settlement_account_id_hi", _U64),
    ("reserved_b", "V16"), ("timestamp", _U64),
])

#: A merchant notification (core/notifications.py): where it is in the log (its cursor), what
#: happened, to which order; ``subscribe_notifications``' records.
NOTIFICATION_DTYPE = np.dtype([
    ("sequence", _U64), ("index", _U32), ("kind", "u1"), ("reserved", "V3"),
    ("order_id_lo", _U64), ("order_id_hi", _U64), ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("refund_id_lo", _U64), ("refund_id_hi", _U64),   # a refund's; 0 otherwise
    ("amount", _U64),                                 # paid or refunded (minor units); 0 for a close
    ("timestamp", _U64),                              # the event's engine time
])

#: ``set_limits``' events (core/limits.pyx): the limits in force, 0 for one left as it is.
LIMITS_DTYPE = np.dtype([
    ("accounts", _U64), ("pending", _U64), ("merchants", _U64), ("orders_open", _U64), ("codes_live", _U64),
    ("flags", _U16), ("reserved_a", "V6"), ("envelopes_open", _U64), ("envelope_total", _U64), ("stocks_open", _U64), ("reserved", "V48"),
    ("timestamp", _U64),
])

# The payment codes' records (docs/products.md "Payment codes (built)").
CODE_ISSUE_DTYPE = np.dtype([
    ("wallet_id_lo", _U64), ("wallet_id_hi", _U64), ("request_id_lo", _U64), ("request_id_hi", _U64),
    ("no_password_limit", _U64), ("free_payments_per_day", _U32), ("ledger", _U32), ("flags", _U16),
    ("reserved", "V70"), ("timestamp", _U64),
])
#: ``issue_codes``' reply per event: the result and, on ok or exists, the code.
CODE_ISSUED_DTYPE = np.dtype([("result", _U32), ("reserved", "V4"), ("code", _U64)])
CODE_CHARGE_DTYPE = np.dtype([
    ("order_id_lo", _U64), ("order_id_hi", _U64), ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("code_lo", _U64), ("code_hi", _U64), ("amount", _U64), ("out_trade_no", "u1", (32,)),
    ("ledger", _U32), ("description_code", _U32), ("flags", _U16), ("reserved", "V22"), ("timestamp", _U64),
])
CODE_CONFIRM_DTYPE = np.dtype([
    ("order_id_lo", _U64), ("order_id_hi", _U64), ("wallet_id_lo", _U64), ("wallet_id_hi", _U64),
    ("flags", _U16), ("reserved", "V86"), ("timestamp", _U64),
])
#: A code as kept: ``lookup_codes``' records.
CODE_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("wallet_id_lo", _U64), ("wallet_id_hi", _U64),
    ("request_id_lo", _U64), ("request_id_hi", _U64), ("order_id_lo", _U64), ("order_id_hi", _U64),
    ("no_password_limit", _U64), ("expires_at", _U64), ("ended_at", _U64),
    ("free_payments_per_day", _U32), ("ledger", _U32), ("state", "u1"), ("reserved", "V23"), ("timestamp", _U64),
])

# The red envelopes' records (docs/products.md "Red envelopes").
ENVELOPE_SEND_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("sender_id_lo", _U64), ("sender_id_hi", _U64),
    ("escrow_id_lo", _U64), ("escrow_id_hi", _U64), ("total", _U64), ("out_envelope_no", "u1", (32,)),
    ("count", _U32), ("ledger", _U32), ("expire_after_s", _U32), ("description_code", _U32), ("flags", _U16),
    ("reserved", "V14"), ("timestamp", _U64),
])
ENVELOPE_CLAIM_DTYPE = np.dtype([
    ("envelope_id_lo", _U64), ("envelope_id_hi", _U64), ("claimer_id_lo", _U64), ("claimer_id_hi", _U64),
    ("flags", _U16), ("reserved", "V86"), ("timestamp", _U64),
])
#: ``claim_envelopes``' reply per event: the result and, on ok or exists, the claim's place and share.
ENVELOPE_CLAIMED_DTYPE = np.dtype([("result", _U32), ("position", _U32), ("amount", _U64)])
#: A packet as kept: ``lookup_envelopes``' records.
ENVELOPE_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("sender_id_lo", _U64), ("sender_id_hi", _U64),
    ("escrow_id_lo", _U64), ("escrow_id_hi", _U64), ("total", _U64), ("remaining", _U64),
    ("expires_at", _U64), ("ended_at", _U64), ("refunded", _U64), ("count", _U32), ("claimed", _U32),
    ("ledger", _U32), ("description_code", _U32), ("state", "u1"), ("reserved_a", "V1"), ("refund_result", _U16),
    ("reserved", "V12"), ("timestamp", _U64),
])
#: A claim as kept: ``lookup_envelope_claims``' records.
CLAIM_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("envelope_id_lo", _U64), ("envelope_id_hi", _U64),
    ("claimer_id_lo", _U64), ("claimer_id_hi", _U64), ("transfer_id_lo", _U64), ("transfer_id_hi", _U64),
    ("amount", _U64), ("position", _U32), ("ledger", _U32), ("reserved", "V40"), ("timestamp", _U64),
])

# The coupons' records (docs/products.md "Coupons and the card pack").
STOCK_CREATE_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("budget_account_id_lo", _U64), ("budget_account_id_hi", _U64), ("face_value", _U64), ("min_spend", _U64),
    ("out_stock_no", "u1", (32,)), ("total_count", _U32), ("per_user_max", _U32), ("valid_for_s", _U32),
    ("coupon_valid_s", _U32), ("ledger", _U32), ("flags", _U16), ("reserved", "V2"), ("timestamp", _U64),
])
#: A stock as kept, with its analytics: ``lookup_stocks``' records.
STOCK_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("budget_account_id_lo", _U64), ("budget_account_id_hi", _U64), ("face_value", _U64), ("min_spend", _U64),
    ("ends_at", _U64), ("total_count", _U32), ("per_user_max", _U32), ("coupon_valid_s", _U32), ("ledger", _U32),
    ("issued_scan", _U32), ("issued_api", _U32), ("issued_pay_and_get", _U32), ("redeemed", _U32),
    ("receivers", _U32), ("repeat_buyers", _U32), ("state", "u1"), ("reserved_a", "V1"), ("end_result", _U16),
    ("reserved", "V4"), ("timestamp", _U64),
])
COUPON_GRANT_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("stock_id_lo", _U64), ("stock_id_hi", _U64),
    ("user_id_lo", _U64), ("user_id_hi", _U64), ("request_id_lo", _U64), ("request_id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64), ("channel", "u1"), ("reserved_a", "V1"), ("flags", _U16),
    ("reserved", "V36"), ("timestamp", _U64),
])
#: A coupon in a card pack: ``lookup_coupons``' records.
COUPON_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("stock_id_lo", _U64), ("stock_id_hi", _U64),
    ("user_id_lo", _U64), ("user_id_hi", _U64), ("request_id_lo", _U64), ("request_id_hi", _U64),
    ("payment_id_lo", _U64), ("payment_id_hi", _U64), ("expires_at", _U64), ("redeemed_at", _U64), ("price", _U64),
    ("channel", "u1"), ("state", "u1"), ("reserved", "V14"), ("timestamp", _U64),
])
COUPON_PAY_DTYPE = np.dtype([
    ("payer_id_lo", _U64), ("payer_id_hi", _U64), ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("coupon_id_lo", _U64), ("coupon_id_hi", _U64), ("stock_id_lo", _U64), ("stock_id_hi", _U64),
    ("request_id_lo", _U64), ("request_id_hi", _U64), ("price", _U64), ("ledger", _U32), ("flags", _U16),
    ("reserved", "V26"), ("timestamp", _U64),
])
#: A user's count of one stock's coupons (the per-user cap, repeat buyers).
HOLDING_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("stock_id_lo", _U64), ("stock_id_hi", _U64),
    ("user_id_lo", _U64), ("user_id_hi", _U64), ("received", _U32), ("redeemed", _U32), ("reserved", "V64"),
    ("timestamp", _U64),
])

# The cross-border payments' records (docs/products.md "Cross-border payments").
#: ``set_rates``' events and ``lookup_rates``' records (by the pair's id: from | to << 32).
FX_RATE_DTYPE = np.dtype([
    ("from_ledger", _U32), ("to_ledger", _U32), ("rate_ppb", _U64), ("pool_from_id_lo", _U64), ("pool_from_id_hi", _U64),
    ("pool_to_id_lo", _U64), ("pool_to_id_hi", _U64), ("version", _U32), ("flags", _U16), ("reserved_a", "V2"),
    ("updated_at", _U64), ("reserved", "V56"), ("timestamp", _U64),
])
FX_PAY_DTYPE = np.dtype([
    ("payer_id_lo", _U64), ("payer_id_hi", _U64), ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("request_id_lo", _U64), ("request_id_hi", _U64), ("merchant_amount", _U64), ("payer_amount", _U64),
    ("rate_version", _U32), ("payer_ledger", _U32), ("merchant_ledger", _U32), ("description_code", _U32),
    ("flags", _U16), ("reserved", "V38"), ("timestamp", _U64),
])
#: A cross-border payment as kept, its rate locked: ``lookup_fx_payments``' records.
FX_PAYMENT_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("payer_id_lo", _U64), ("payer_id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64), ("request_id_lo", _U64), ("request_id_hi", _U64),
    ("payer_amount", _U64), ("merchant_amount", _U64), ("payer_refunded", _U64), ("merchant_refunded", _U64),
    ("rate_ppb", _U64), ("payer_ledger", _U32), ("merchant_ledger", _U32), ("rate_version", _U32),
    ("refund_count", _U16), ("reserved", "V2"), ("timestamp", _U64),
])
#: ``refund_cross_border``' events, and the refunds as kept (``lookup_fx_refunds``).
FX_REFUND_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("payment_id_lo", _U64), ("payment_id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64), ("request_id_lo", _U64), ("request_id_hi", _U64),
    ("merchant_amount", _U64), ("payer_amount", _U64), ("flags", _U16), ("reserved", "V38"), ("timestamp", _U64),
])
#: ``quote_cross_border``' reply records: what the payer pays for the merchant's amount, now.
FX_QUOTE_DTYPE = np.dtype([
    ("result", _U32), ("rate_version", _U32), ("merchant_amount", _U64), ("payer_amount", _U64), ("rate_ppb", _U64),
])

# The wallet tiers' records (docs/products.md "Wallet limits and real-name tiers (built)").
#: ``set_wallet_tiers``' events: an account's tier (0 none, 1 unverified, 2 verified, 3 bank-card linked).
WALLET_TIER_DTYPE = np.dtype([
    ("account_id_lo", _U64), ("account_id_hi", _U64), ("ledger", _U32), ("tier", "u1"), ("reserved_a", "V1"),
    ("flags", _U16), ("reserved", "V96"), ("timestamp", _U64),
])
#: ``set_tier_limits``' events: one tier's limits in one ledger (0: the defaults), minor units.
TIER_LIMITS_DTYPE = np.dtype([
    ("ledger", _U32), ("tier", "u1"), ("reserved_a", "V1"), ("flags", _U16), ("payment_limit", _U64),
    ("daily_limit", _U64), ("yearly_limit", _U64), ("balance_limit", _U64), ("reserved", "V80"), ("timestamp", _U64),
])
#: ``lookup_wallet_limits``' records: an account's tier, its limits in force and what it spent.
WALLET_LIMITS_DTYPE = np.dtype([
    ("account_id_lo", _U64), ("account_id_hi", _U64), ("ledger", _U32), ("tier", "u1"), ("reserved_a", "V3"),
    ("payment_limit", _U64), ("daily_limit", _U64), ("yearly_limit", _U64), ("balance_limit", _U64),
    ("day", _U32), ("year", _U32), ("day_spent", _U64), ("year_spent", _U64), ("tier_set_at", _U64),
    ("reserved", "V32"), ("timestamp", _U64),
])

#: A merchant's terms: ``set_merchants``' events and ``lookup_merchants``' records.
MERCHANT_DTYPE = np.dtype([
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("fee_account_id_lo", _U64), ("fee_account_id_hi", _U64),
    ("settlement_account_id_lo", _U64), ("settlement_account_id_hi", _U64),
    ("fee_bps", _U16), ("flags", _U16), ("ledger", _U32), ("award_stock_id_lo", _U64), ("award_stock_id_hi", _U64),
    ("award_min_amount", _U64), ("reserved", "V40"), ("timestamp", _U64),
])
#: A coupon payment as kept (its request's record): ``Store.lookup_coupon_payments``.
COUPON_PAYMENT_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("payer_id_lo", _U64), ("payer_id_hi", _U64),
    ("merchant_id_lo", _U64), ("merchant_id_hi", _U64), ("coupon_id_lo", _U64), ("coupon_id_hi", _U64),
    ("stock_id_lo", _U64), ("stock_id_hi", _U64), ("request_id_lo", _U64), ("request_id_hi", _U64),
    ("price", _U64), ("face_value", _U64), ("ledger", _U32), ("reserved", "V4"), ("timestamp", _U64),
])
#: A member of a merchant's membership card (the card pack): ``lookup_members``' records.
MEMBER_DTYPE = np.dtype([
    ("id_lo", _U64), ("id_hi", _U64), ("merchant_id_lo", _U64), ("merchant_id_hi", _U64),
    ("user_id_lo", _U64), ("user_id_hi", _U64), ("spend", _U64), ("points", _U64), ("last_visit_at", _U64),
    ("visits", _U32), ("reserved", "V44"), ("timestamp", _U64),
])

OrderState = enum.IntEnum("OrderState", {member.name[6:].upper(): int(member) for member in order_state_t})
OrderState.__doc__ = "An order's state (docs/products.md): NOTPAY, then SUCCESS or CLOSED; REFUND once refunded in full."
OrderState.__module__ = "core"
CloseReason = enum.IntEnum("CloseReason", {member.name[13:].lower(): int(member) for member in close_reason_t})
CloseReason.__module__ = "core"
CodeState = enum.IntEnum("CodeState", {member.name[5:]: int(member) for member in code_state_t})
CodeState.__doc__ = "A payment code's state (docs/products.md): LIVE, then CHARGED, EXPIRED or REPLACED."
CodeState.__module__ = "core"
EnvelopeState = enum.IntEnum("EnvelopeState", {member.name[9:]: int(member) for member in envelope_state_t})
EnvelopeState.__doc__ = "A red envelope's state (docs/products.md): OPEN, then EMPTY, REFUNDED or REFUND_FAILED."
EnvelopeState.__module__ = "core"
StockState = enum.IntEnum("StockState", {member.name[6:]: int(member) for member in stock_state_t})
StockState.__doc__ = "A coupon stock's state (docs/products.md): ACTIVE, then ENDED."
StockState.__module__ = "core"
CouponState = enum.IntEnum("CouponState", {member.name[7:]: int(member) for member in coupon_state_t})
CouponState.__doc__ = "A coupon's state (docs/products.md): AVAILABLE, then REDEEMED (expired by the clock)."
CouponState.__module__ = "core"
CouponChannel = enum.IntEnum("CouponChannel", {member.name[15:].lower(): int(member) for member in coupon_channel_t})
CouponChannel.__module__ = "core"
OrderKind = enum.IntEnum("OrderKind", {member.name[11:].lower(): int(member) for member in order_kind_t})
OrderKind.__module__ = "core"
#: The server's mark on a product event its client's role may not make (engine/roles.py).
EVENT_FLAG_FORBIDDEN_BIT = int(event_flag_t.EVENT_FLAG_FORBIDDEN)

#: A 128-bit id as two little-endian halves, for id arrays passed to lookups.
ID_DTYPE = np.dtype([("lo", _U64), ("hi", _U64)])

U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1


tally_fix_mmap_threshold()  # (core/records.pxd: before any table is made)


def _check_layout():
    cdef tally_account_t account
    cdef tally_transfer_t transfer
    cdef tally_order_create_t order_create
    cdef tally_order_pay_t order_pay
    cdef tally_order_close_t order_close
    cdef tally_order_t order
    cdef tally_order_created_t order_created
    cdef tally_merchant_t merchant
    cdef tally_refund_t refund
    cdef tally_settlement_t settlement
    cdef tally_code_issue_t code_issue
    cdef tally_code_issued_t code_issued
    cdef tally_code_charge_t code_charge
    cdef tally_code_confirm_t code_confirm
    cdef tally_code_t code
    cdef tally_limits_t limits
    cdef tally_envelope_send_t envelope_send
    cdef tally_envelope_claim_t envelope_claim
    cdef tally_envelope_claimed_t envelope_claimed
    cdef tally_envelope_t envelope
    cdef tally_claim_t claim
    cdef tally_stock_create_t stock_create
    cdef tally_stock_t stock
    cdef tally_coupon_grant_t coupon_grant
    cdef tally_coupon_t coupon
    cdef tally_coupon_pay_t coupon_pay
    cdef tally_holding_t holding
    cdef tally_fx_rate_t fx_rate
    cdef tally_fx_pay_t fx_pay
    cdef tally_fx_payment_t fx_payment
    cdef tally_fx_refund_t fx_refund
    cdef tally_member_t member
    cdef tally_coupon_payment_t coupon_payment
    cdef tally_wallet_tier_t wallet_tier
    cdef tally_tier_limits_t tier_limits
    cdef tally_wallet_limits_t wallet_limits
    c_offsets = {
        WALLET_TIER_DTYPE: {
            "ledger": <size_t> (<char *> &wallet_tier.ledger - <char *> &wallet_tier),
            "tier": <size_t> (<char *> &wallet_tier.tier - <char *> &wallet_tier),
            "flags": <size_t> (<char *> &wallet_tier.flags - <char *> &wallet_tier),
            "timestamp": <size_t> (<char *> &wallet_tier.timestamp - <char *> &wallet_tier),
        },
        TIER_LIMITS_DTYPE: {
            "tier": <size_t> (<char *> &tier_limits.tier - <char *> &tier_limits),
            "flags": <size_t> (<char *> &tier_limits.flags - <char *> &tier_limits),
            "payment_limit": <size_t> (<char *> &tier_limits.payment_limit - <char *> &tier_limits),
            "balance_limit": <size_t> (<char *> &tier_limits.balance_limit - <char *> &tier_limits),
            "timestamp": <size_t> (<char *> &tier_limits.timestamp - <char *> &tier_limits),
        },
        WALLET_LIMITS_DTYPE: {
            "tier": <size_t> (<char *> &wallet_limits.tier - <char *> &wallet_limits),
            "payment_limit": <size_t> (<char *> &wallet_limits.payment_limit - <char *> &wallet_limits),
            "day": <size_t> (<char *> &wallet_limits.day - <char *> &wallet_limits),
            "day_spent": <size_t> (<char *> &wallet_limits.day_spent - <char *> &wallet_limits),
            "tier_set_at": <size_t> (<char *> &wallet_limits.tier_set_at - <char *> &wallet_limits),
            "timestamp": <size_t> (<char *> &wallet_limits.timestamp - <char *> &wallet_limits),
        },
        ACCOUNT_DTYPE: {
            "id_lo": <size_t> (<char *> &account.id_lo - <char *> &account),
            "debits_pending": <size_t> (<char *> &account.debits_pending - <char *> &account),
            "credits_posted": <size_t> (<char *> &account.credits_posted - <char *> &account),
            "user_data_128_lo": <size_t> (<char *> &account.user_data_128_lo - <char *> &account),
            "user_data_32": <size_t> (<char *> &account.user_data_32 - <char *> &account),
            "ledger": <size_t> (<char *> &account.ledger - <char *> &account),
            "code": <size_t> (<char *> &account.code - <char *> &account),
            "flags": <size_t> (<char *> &account.flags - <char *> &account),
            "reserved": <size_t> (<char *> &account.reserved - <char *> &account),
            "timestamp": <size_t> (<char *> &account.timestamp - <char *> &account),
        },
        TRANSFER_DTYPE: {
            "debit_account_id_lo": <size_t> (<char *> &transfer.debit_account_id_lo - <char *> &transfer),
            "credit_account_id_lo": <size_t> (<char *> &transfer.credit_account_id_lo - <char *> &transfer),
            "amount": <size_t> (<char *> &transfer.amount - <char *> &transfer),
            "pending_id_lo": <size_t> (<char *> &transfer.pending_id_lo - <char *> &transfer),
            "user_data_128_lo": <size_t> (<char *> &transfer.user_data_128_lo - <char *> &transfer),
            "user_data_64": <size_t> (<char *> &transfer.user_data_64 - <char *> &transfer),
            "timeout": <size_t> (<char *> &transfer.timeout - <char *> &transfer),
            "ledger": <size_t> (<char *> &transfer.ledger - <char *> &transfer),
            "code": <size_t> (<char *> &transfer.code - <char *> &transfer),
            "flags": <size_t> (<char *> &transfer.flags - <char *> &transfer),
            "reserved": <size_t> (<char *> &transfer.reserved - <char *> &transfer),
            "timestamp": <size_t> (<char *> &transfer.timestamp - <char *> &transfer),
        },
        ORDER_CREATE_DTYPE: {
            "out_trade_no": <size_t> (<char *> &order_create.out_trade_no - <char *> &order_create),
            "expire_after_s": <size_t> (<char *> &order_create.expire_after_s - <char *> &order_create),
            "flags": <size_t> (<char *> &order_create.flags - <char *> &order_create),
            "timestamp": <size_t> (<char *> &order_create.timestamp - <char *> &order_create),
        },
        ORDER_PAY_DTYPE: {
            "token": <size_t> (<char *> &order_pay.token - <char *> &order_pay),
            "ledger": <size_t> (<char *> &order_pay.ledger - <char *> &order_pay),
            "flags": <size_t> (<char *> &order_pay.flags - <char *> &order_pay),
            "timestamp": <size_t> (<char *> &order_pay.timestamp - <char *> &order_pay),
        },
        ORDER_CLOSE_DTYPE: {
            "merchant_id_lo": <size_t> (<char *> &order_close.merchant_id_lo - <char *> &order_close),
            "flags": <size_t> (<char *> &order_close.flags - <char *> &order_close),
            "timestamp": <size_t> (<char *> &order_close.timestamp - <char *> &order_close),
        },
        ORDER_DTYPE: {
            "closed_at": <size_t> (<char *> &order.closed_at - <char *> &order),
            "token": <size_t> (<char *> &order.token - <char *> &order),
            "state": <size_t> (<char *> &order.state - <char *> &order),
            "refund_count": <size_t> (<char *> &order.refund_count - <char *> &order),
            "kind": <size_t> (<char *> &order.kind - <char *> &order),
            "ledger": <size_t> (<char *> &order.ledger - <char *> &order),
            "fee": <size_t> (<char *> &order.fee - <char *> &order),
            "timestamp": <size_t> (<char *> &order.timestamp - <char *> &order),
        },
        ORDER_CREATED_DTYPE: {
            "token": <size_t> (<char *> &order_created.token - <char *> &order_created),
        },
        REFUND_DTYPE: {
            "out_refund_no": <size_t> (<char *> &refund.out_refund_no - <char *> &refund),
            "flags": <size_t> (<char *> &refund.flags - <char *> &refund),
            "fee_refunded": <size_t> (<char *> &refund.fee_refunded - <char *> &refund),
            "payer_id_lo": <size_t> (<char *> &refund.payer_id_lo - <char *> &refund),
            "timestamp": <size_t> (<char *> &refund.timestamp - <char *> &refund),
        },
        SETTLEMENT_DTYPE: {
            "window": <size_t> (<char *> &settlement.window - <char *> &settlement),
            "paid": <size_t> (<char *> &settlement.paid - <char *> &settlement),
            "net": <size_t> (<char *> &settlement.net - <char *> &settlement),
            "settlement_account_id_lo": <size_t> (<char *> &settlement.settlement_account_id_lo - <char *> &settlement),
            "timestamp": <size_t> (<char *> &settlement.timestamp - <char *> &settlement),
        },
        CODE_ISSUE_DTYPE: {
            "no_password_limit": <size_t> (<char *> &code_issue.no_password_limit - <char *> &code_issue),
            "ledger": <size_t> (<char *> &code_issue.ledger - <char *> &code_issue),
            "flags": <size_t> (<char *> &code_issue.flags - <char *> &code_issue),
            "timestamp": <size_t> (<char *> &code_issue.timestamp - <char *> &code_issue),
        },
        CODE_ISSUED_DTYPE: {"code": <size_t> (<char *> &code_issued.code - <char *> &code_issued)},
        CODE_CHARGE_DTYPE: {
            "code_lo": <size_t> (<char *> &code_charge.code_lo - <char *> &code_charge),
            "out_trade_no": <size_t> (<char *> &code_charge.out_trade_no - <char *> &code_charge),
            "flags": <size_t> (<char *> &code_charge.flags - <char *> &code_charge),
            "timestamp": <size_t> (<char *> &code_charge.timestamp - <char *> &code_charge),
        },
        CODE_CONFIRM_DTYPE: {
            "flags": <size_t> (<char *> &code_confirm.flags - <char *> &code_confirm),
            "timestamp": <size_t> (<char *> &code_confirm.timestamp - <char *> &code_confirm),
        },
        LIMITS_DTYPE: {
            "codes_live": <size_t> (<char *> &limits.codes_live - <char *> &limits),
            "envelope_total": <size_t> (<char *> &limits.envelope_total - <char *> &limits),
            "flags": <size_t> (<char *> &limits.flags - <char *> &limits),
            "timestamp": <size_t> (<char *> &limits.timestamp - <char *> &limits),
        },
        CODE_DTYPE: {
            "expires_at": <size_t> (<char *> &code.expires_at - <char *> &code),
            "ledger": <size_t> (<char *> &code.ledger - <char *> &code),
            "state": <size_t> (<char *> &code.state - <char *> &code),
            "timestamp": <size_t> (<char *> &code.timestamp - <char *> &code),
        },
        ENVELOPE_SEND_DTYPE: {
            "total": <size_t> (<char *> &envelope_send.total - <char *> &envelope_send),
            "out_envelope_no": <size_t> (<char *> &envelope_send.out_envelope_no - <char *> &envelope_send),
            "count": <size_t> (<char *> &envelope_send.count - <char *> &envelope_send),
            "description_code": <size_t> (<char *> &envelope_send.description_code - <char *> &envelope_send),
            "flags": <size_t> (<char *> &envelope_send.flags - <char *> &envelope_send),
            "timestamp": <size_t> (<char *> &envelope_send.timestamp - <char *> &envelope_send),
        },
        ENVELOPE_CLAIM_DTYPE: {
            "claimer_id_lo": <size_t> (<char *> &envelope_claim.claimer_id_lo - <char *> &envelope_claim),
            "flags": <size_t> (<char *> &envelope_claim.flags - <char *> &envelope_claim),
            "timestamp": <size_t> (<char *> &envelope_claim.timestamp - <char *> &envelope_claim),
        },
        ENVELOPE_CLAIMED_DTYPE: {
            "position": <size_t> (<char *> &envelope_claimed.position - <char *> &envelope_claimed),
            "amount": <size_t> (<char *> &envelope_claimed.amount - <char *> &envelope_claimed),
        },
        ENVELOPE_DTYPE: {
            "remaining": <size_t> (<char *> &envelope.remaining - <char *> &envelope),
            "refunded": <size_t> (<char *> &envelope.refunded - <char *> &envelope),
            "claimed": <size_t> (<char *> &envelope.claimed - <char *> &envelope),
            "state": <size_t> (<char *> &envelope.state - <char *> &envelope),
            "refund_result": <size_t> (<char *> &envelope.refund_result - <char *> &envelope),
            "timestamp": <size_t> (<char *> &envelope.timestamp - <char *> &envelope),
        },
        CLAIM_DTYPE: {
            "transfer_id_lo": <size_t> (<char *> &claim.transfer_id_lo - <char *> &claim),
            "amount": <size_t> (<char *> &claim.amount - <char *> &claim),
            "position": <size_t> (<char *> &claim.position - <char *> &claim),
            "ledger": <size_t> (<char *> &claim.ledger - <char *> &claim),
            "timestamp": <size_t> (<char *> &claim.timestamp - <char *> &claim),
        },
        STOCK_CREATE_DTYPE: {
            "out_stock_no": <size_t> (<char *> &stock_create.out_stock_no - <char *> &stock_create),
            "coupon_valid_s": <size_t> (<char *> &stock_create.coupon_valid_s - <char *> &stock_create),
            "flags": <size_t> (<char *> &stock_create.flags - <char *> &stock_create),
            "timestamp": <size_t> (<char *> &stock_create.timestamp - <char *> &stock_create),
        },
        STOCK_DTYPE: {
            "ends_at": <size_t> (<char *> &stock.ends_at - <char *> &stock),
            "issued_scan": <size_t> (<char *> &stock.issued_scan - <char *> &stock),
            "repeat_buyers": <size_t> (<char *> &stock.repeat_buyers - <char *> &stock),
            "state": <size_t> (<char *> &stock.state - <char *> &stock),
            "end_result": <size_t> (<char *> &stock.end_result - <char *> &stock),
            "timestamp": <size_t> (<char *> &stock.timestamp - <char *> &stock),
        },
        COUPON_GRANT_DTYPE: {
            "merchant_id_lo": <size_t> (<char *> &coupon_grant.merchant_id_lo - <char *> &coupon_grant),
            "channel": <size_t> (<char *> &coupon_grant.channel - <char *> &coupon_grant),
            "flags": <size_t> (<char *> &coupon_grant.flags - <char *> &coupon_grant),
            "timestamp": <size_t> (<char *> &coupon_grant.timestamp - <char *> &coupon_grant),
        },
        COUPON_DTYPE: {
            "payment_id_lo": <size_t> (<char *> &coupon.payment_id_lo - <char *> &coupon),
            "price": <size_t> (<char *> &coupon.price - <char *> &coupon),
            "state": <size_t> (<char *> &coupon.state - <char *> &coupon),
            "timestamp": <size_t> (<char *> &coupon.timestamp - <char *> &coupon),
        },
        COUPON_PAY_DTYPE: {
            "request_id_lo": <size_t> (<char *> &coupon_pay.request_id_lo - <char *> &coupon_pay),
            "price": <size_t> (<char *> &coupon_pay.price - <char *> &coupon_pay),
            "flags": <size_t> (<char *> &coupon_pay.flags - <char *> &coupon_pay),
            "timestamp": <size_t> (<char *> &coupon_pay.timestamp - <char *> &coupon_pay),
        },
        HOLDING_DTYPE: {
            "received": <size_t> (<char *> &holding.received - <char *> &holding),
            "timestamp": <size_t> (<char *> &holding.timestamp - <char *> &holding),
        },
        COUPON_PAYMENT_DTYPE: {
            "face_value": <size_t> (<char *> &coupon_payment.face_value - <char *> &coupon_payment),
            "ledger": <size_t> (<char *> &coupon_payment.ledger - <char *> &coupon_payment),
            "timestamp": <size_t> (<char *> &coupon_payment.timestamp - <char *> &coupon_payment),
        },
        MEMBER_DTYPE: {
            "points": <size_t> (<char *> &member.points - <char *> &member),
            "visits": <size_t> (<char *> &member.visits - <char *> &member),
            "timestamp": <size_t> (<char *> &member.timestamp - <char *> &member),
        },
        FX_RATE_DTYPE: {
            "pool_to_id_lo": <size_t> (<char *> &fx_rate.pool_to_id_lo - <char *> &fx_rate),
            "version": <size_t> (<char *> &fx_rate.version - <char *> &fx_rate),
            "updated_at": <size_t> (<char *> &fx_rate.updated_at - <char *> &fx_rate),
            "timestamp": <size_t> (<char *> &fx_rate.timestamp - <char *> &fx_rate),
        },
        FX_PAY_DTYPE: {
            "payer_amount": <size_t> (<char *> &fx_pay.payer_amount - <char *> &fx_pay),
            "description_code": <size_t> (<char *> &fx_pay.description_code - <char *> &fx_pay),
            "flags": <size_t> (<char *> &fx_pay.flags - <char *> &fx_pay),
            "timestamp": <size_t> (<char *> &fx_pay.timestamp - <char *> &fx_pay),
        },
        FX_PAYMENT_DTYPE: {
            "rate_ppb": <size_t> (<char *> &fx_payment.rate_ppb - <char *> &fx_payment),
            "refund_count": <size_t> (<char *> &fx_payment.refund_count - <char *> &fx_payment),
            "timestamp": <size_t> (<char *> &fx_payment.timestamp - <char *> &fx_payment),
        },
        FX_REFUND_DTYPE: {
            "payer_amount": <size_t> (<char *> &fx_refund.payer_amount - <char *> &fx_refund),
            "flags": <size_t> (<char *> &fx_refund.flags - <char *> &fx_refund),
            "timestamp": <size_t> (<char *> &fx_refund.timestamp - <char *> &fx_refund),
        },
        MERCHANT_DTYPE: {
            "settlement_account_id_lo": <size_t> (<char *> &merchant.settlement_account_id_lo - <char *> &merchant),
            "fee_bps": <size_t> (<char *> &merchant.fee_bps - <char *> &merchant),
            "award_min_amount": <size_t> (<char *> &merchant.award_min_amount - <char *> &merchant),
            "ledger": <size_t> (<char *> &merchant.ledger - <char *> &merchant),
            "timestamp": <size_t> (<char *> &merchant.timestamp - <char *> &merchant),
        },
    }
    sizes = {ACCOUNT_DTYPE: (sizeof(account), ACCOUNT_SIZE), TRANSFER_DTYPE: (sizeof(transfer), TRANSFER_SIZE),
             ORDER_CREATE_DTYPE: (sizeof(order_create), 128), ORDER_PAY_DTYPE: (sizeof(order_pay), 128),
             ORDER_CLOSE_DTYPE: (sizeof(order_close), 128), ORDER_DTYPE: (sizeof(order), 128),
             ORDER_CREATED_DTYPE: (sizeof(order_created), 16), MERCHANT_DTYPE: (sizeof(merchant), 128),
             REFUND_DTYPE: (sizeof(refund), 128), SETTLEMENT_DTYPE: (sizeof(settlement), 128),
             CODE_ISSUE_DTYPE: (sizeof(code_issue), 128), CODE_ISSUED_DTYPE: (sizeof(code_issued), 16),
             CODE_CHARGE_DTYPE: (sizeof(code_charge), 128), CODE_CONFIRM_DTYPE: (sizeof(code_confirm), 128),
             CODE_DTYPE: (sizeof(code), 128), LIMITS_DTYPE: (sizeof(limits), 128),
             ENVELOPE_SEND_DTYPE: (sizeof(envelope_send), 128), ENVELOPE_CLAIM_DTYPE: (sizeof(envelope_claim), 128),
             ENVELOPE_CLAIMED_DTYPE: (sizeof(envelope_claimed), 16), ENVELOPE_DTYPE: (sizeof(envelope), 128),
             CLAIM_DTYPE: (sizeof(claim), 128), STOCK_CREATE_DTYPE: (sizeof(stock_create), 128),
             STOCK_DTYPE: (sizeof(stock), 128), COUPON_GRANT_DTYPE: (sizeof(coupon_grant), 128),
             COUPON_DTYPE: (sizeof(coupon), 128), COUPON_PAY_DTYPE: (sizeof(coupon_pay), 128),
             HOLDING_DTYPE: (sizeof(holding), 128), FX_RATE_DTYPE: (sizeof(fx_rate), 128),
             FX_PAY_DTYPE: (sizeof(fx_pay), 128), FX_PAYMENT_DTYPE: (sizeof(fx_payment), 128),
             FX_REFUND_DTYPE: (sizeof(fx_refund), 128), MEMBER_DTYPE: (sizeof(member), 128),
             COUPON_PAYMENT_DTYPE: (sizeof(coupon_payment), 128),
             WALLET_TIER_DTYPE: (sizeof(wallet_tier), 128), TIER_LIMITS_DTYPE: (sizeof(tier_limits), 128),
             WALLET_LIMITS_DTYPE: (sizeof(wallet_limits), 128)}
    for dtype, offsets in c_offsets.items():
        c_size, documented = sizes[dtype]
        if not (c_size == documented == dtype.itemsize):
            raise ImportError(f"record size mismatch: C {c_size}, documented {documented}, dtype {dtype.itemsize}")
        for name, c_offset in offsets.items():
            if dtype.fields[name][1] != c_offset:
                raise ImportError(f"offset of {name}: C {c_offset}, dtype {dtype.fields[name][1]}")


_check_layout()


# The C enum result_t (cpdef) is the single source of the codes; Python gets friendly names.
Result = enum.IntEnum(
    "Result", {member.name[2:].lower(): int(member) for member in result_t if member.name != "R_COUNT"}
)
Result.__doc__ = "Result code of one event; the order of checks is documented in docs/data-model.md."
Result.__module__ = "core"


def _flags(name, c_enum, prefix, doc):
    # The C enums (cpdef, records.pxd) are the source; Python gets IntFlags with friendly names.
    members = {"none": 0}
    members.update({member.name[len(prefix):].lower(): int(member) for member in c_enum
                    if not member.name.endswith("_KNOWN")})
    flags = enum.IntFlag(name, members)
    flags.__doc__ = doc
    flags.__module__ = "core"
    return flags


AccountFlags = _flags("AccountFlags", account_flag_t, "ACCOUNT_", "Account flags (u16), docs/data-model.md.")
TransferFlags = _flags("TransferFlags", transfer_flag_t, "TRANSFER_", "Transfer flags (u16), docs/data-model.md.")
ConfirmFlags = _flags("ConfirmFlags", confirm_flag_t, "CONFIRM_",
                      "``confirm_charges``' flags (u16): ``decline``, the user refuses a held charge.")


class AccountCode(enum.IntEnum):
    """Account kinds. The ledger only requires a non-zero code; products give them meaning."""
    user_wallet = 1
    merchant = 2
    funding_card = 3
    escrow = 4
    fee = 5
    fx_pool = 6
    coupon_budget = 7
    credit_line = 8
    settlement = 9


class TransferCode(enum.IntEnum):
    """Business kinds of transfers; also the buckets of the per-account activity counts."""
    payment = 1
    refund = 2
    p2p = 3
    top_up = 4
    withdrawal = 5
    red_envelope_fund = 6
    red_envelope_claim = 7
    red_envelope_refund = 8
    coupon = 9
    fx = 10
    fee = 11
    order_payment = 0xF001  # an order's payment leg (docs/products.md)
    order_fee = 0xF002      # its fee leg, merchant -> fee account
    order_refund = 0xF003   # a refund's leg, merchant -> payer
    order_fee_refund = 0xF004  # the fee returned with it, fee account -> merchant
    order_settlement = 0xF005  # a merchant's settlement, its wallet -> its settlement account
    settlement = 12


class Currency(enum.IntEnum):
    """A few ISO 4217 numeric currency codes used as ledger numbers."""
    CNY = 156
    HKD = 344
    JPY = 392
    USD = 840
    EUR = 978


def id_pairs(records, str field):
    """A 128-bit id field of records as an (n, 2) uint64 array (lo, hi)."""
    return np.column_stack((records[f"{field}_lo"], records[f"{field}_hi"])).astype(np.uint64, copy=False)


def _id_fields(dtype):
    """Names of the 128-bit fields of a record dtype (split into _lo/_hi)."""
    return [name[:-3] for name in dtype.names if name.endswith("_lo")]


def records_from_dicts(rows, dtype):
    """Build a batch of any record type from dicts: whole 128-bit ints for ids, bytes for byte
    arrays (``out_trade_no``, ``token``: NUL-padded), ints for the reserved fields."""
    wide = _id_fields(dtype)
    out = np.zeros(len(rows), dtype=dtype)
    for i, row in enumerate(rows):
        for key, value in row.items():
            field = dtype.fields.get(key)
            if field is not None and field[0].subdtype is not None:  # a byte array
                raw = bytes(value)
                if len(raw) > field[0].itemsize:
                    raise OverflowError(f"{key} holds at most {field[0].itemsize} bytes")
                out[i][key] = np.frombuffer(raw.ljust(field[0].itemsize, b"\0"), dtype=np.uint8)
                continue
            value = int(value)
            if key in wide:
                if not 0 <= value <= U128_MAX:
                    raise OverflowError(f"{key}={value} does not fit 128 bits")
                out[i][key + "_lo"] = value & U64_MAX
                out[i][key + "_hi"] = value >> 64
            elif key.startswith("reserved") and field is not None:
                out[i][key] = np.void(value.to_bytes(field[0].itemsize, "little"))
            elif key in dtype.names:
                out[i][key] = value  # NumPy raises OverflowError when out of range
            else:
                raise KeyError(f"unknown field {key!r} for this record")
    return out


def accounts_from_dicts(rows):
    """Build an account batch from dicts with whole 128-bit ints.

    >>> batch = accounts_from_dicts([{"id": 1, "ledger": 156, "code": 1}])
    """
    return records_from_dicts(rows, ACCOUNT_DTYPE)


def transfers_from_dicts(rows):
    """Build a transfer batch from dicts with whole 128-bit ints.

    >>> batch = transfers_from_dicts([{"id": 7, "debit_account_id": 1, "credit_account_id": 2,
    ...                                "amount": 100, "ledger": 156, "code": 1}])
    """
    return records_from_dicts(rows, TRANSFER_DTYPE)


def to_dicts(records):
    """Records (of any record dtype) as dicts with whole 128-bit ints (byte arrays as bytes)."""
    dtype = records.dtype
    wide = _id_fields(dtype)
    rows = []
    for record in records.tolist():
        fields = dict(zip(dtype.names, record))
        row = {}
        for name in dtype.names:
            if name.endswith("_hi") and name[:-3] in wide:
                continue
            if name.endswith("_lo") and name[:-3] in wide:
                base = name[:-3]
                row[base] = fields[name] | (fields[base + "_hi"] << 64)
            elif name.startswith("reserved"):
                row[name] = int.from_bytes(bytes(fields[name]), "little")
            elif dtype.fields[name][0].subdtype is not None:
                row[name] = bytes(bytearray(fields[name]))
            else:
                row[name] = int(fields[name])
        rows.append(row)
    return rows


def ids_array(ids):
    """128-bit ids (ints, or an ID_DTYPE array) as a contiguous ID_DTYPE array."""
    if isinstance(ids, np.ndarray) and ids.dtype == ID_DTYPE:
        return np.ascontiguousarray(ids)
    ids = [int(i) for i in ids]
    out = np.zeros(len(ids), dtype=ID_DTYPE)
    for k, value in enumerate(ids):
        if not 0 <= value <= U128_MAX:
            raise OverflowError(f"id {value} does not fit 128 bits")
        out[k] = (value & U64_MAX, value >> 64)
    return out
