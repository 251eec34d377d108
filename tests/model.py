"""A pure-Python reference model of the ledger, written from docs/data-model.md alone.

Slow and plain on purpose: dicts and ints, one check after another in the documented order,
a deep copy of the whole state to undo a failed linked chain. The property tests run random
batches through this model and the compiled core and require identical results and state.
It shares no code with the core (not even the result-code numbers).

Orders (merchant-presented QR: ``create_orders``, ``pay_orders``, ``close_orders``,
``lookup_orders``, expiry by the engine clock) follow docs/products.md, "Orders: the reference":
an order is a dict, its pay leg goes through ``_transfer`` like any client transfer, ids and
tokens are computed here with hashlib/hmac.

Merchants' terms and fees (``set_merchants``), refunds (``refund_orders``) and payment codes
(``issue_codes``, ``charge_codes``, ``confirm_charges``, ``lookup_codes``; a held charge is a
pending leg with a 45 s timeout, its order ``USERPAYING``; codes and held charges expire by the
engine clock at each batch's base) follow docs/products.md, "Merchants and fees", "Refunds" and
"Payment codes (built)". Settlement books are not modelled.

Red envelopes (``send_envelopes``, ``claim_envelopes``, ``lookup_envelopes``,
``lookup_envelope_claims``; the ``envelope_total`` and ``envelopes_open`` limits of ``set_limits``)
follow docs/products.md "Red envelopes": a packet and a claim are dicts, the legs go through
``_transfer``, a claim's share is drawn here with hmac, and the refund of expired packets is made
at every batch's start with the batch's first timestamps (``_refund_due``).

Wallet tiers (``set_wallet_tiers``, ``set_tier_limits``, ``lookup_wallet_limits``; every
transfer and leg debiting a tiered wallet checked against its per-payment, daily and yearly
limits, every credit to one against its balance limit, holds counted at creation and given back
on void, expiry or a smaller post) follow docs/products.md "Wallet limits and real-name tiers
(built)": windows are dicts, the calendar year comes from ``datetime``.

Coupons (``create_stocks``, ``grant_coupons``, ``pay_with_coupon``, ``lookup_stocks``,
``lookup_coupons``, ``lookup_holdings``; the ``stocks_open`` limit) follow docs/products.md
"Coupons and the card pack": a stock, a coupon and a holding are dicts, the analytics counters
are kept as the document says, a coupon expires by the clock (no event), and a stock's end is
made at a batch's start after the packets' refunds (``_end_stocks``), each table's transfers
taking the next of the batch's first timestamps.

Cross-border payments (``set_rates``, ``quote``, ``pay_cross_border``, ``refund_cross_border``,
``lookup_rates``, ``lookup_fx_payments``, ``lookup_fx_refunds``) follow docs/products.md
"Cross-border payments": a rate per pair with a version, the payer's amount ceil(b x 10^9 / rate),
the rate locked in the payment, refunds at it, the last the rest. The document gives no order of
checks for them: the model's is the one written in core/fx.pyx (each check is the document's).
"""

from __future__ import annotations

import copy
import datetime
import enum
import hashlib
import hmac

U64 = (1 << 64) - 1
U128 = (1 << 128) - 1
NS_PER_S = 1_000_000_000
CODE_BUCKETS = 16

ACCOUNT_FIELDS = ("id", "debits_pending", "debits_posted", "credits_pending", "credits_posted", "user_data_128",
                  "user_data_64", "user_data_32", "ledger", "code", "flags", "reserved", "timestamp")
TRANSFER_FIELDS = ("id", "debit_account_id", "credit_account_id", "amount", "pending_id", "user_data_128",
                   "user_data_64", "user_data_32", "timeout", "ledger", "code", "flags", "reserved", "timestamp")

A_LINKED, A_DEBITS_LIMIT, A_CREDITS_LIMIT, A_CLOSED = 1, 2, 4, 8
T_LINKED, T_PENDING, T_POST, T_VOID, T_BAL_DEBIT, T_BAL_CREDIT = 1, 2, 4, 8, 16, 32

# Orders (docs/products.md, "Orders: the reference").
OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS = 1, 2
OP_CREATE_ORDERS, OP_PAY_ORDERS, OP_CLOSE_ORDERS = 100, 101, 102
OP_SET_MERCHANTS, OP_REFUND_ORDERS = 104, 106
OP_ISSUE_CODES, OP_CHARGE_CODES, OP_CONFIRM_CHARGES = 112, 113, 114
OP_SET_LIMITS, OP_SEND_ENVELOPES, OP_CLAIM_ENVELOPES = 6, 116, 117
OP_CREATE_STOCKS, OP_GRANT_COUPONS, OP_PAY_WITH_COUPON = 120, 121, 122
OP_SET_RATES, OP_PAY_CROSS_BORDER, OP_REFUND_CROSS_BORDER = 125, 126, 127
ORDER_CREATE_FIELDS = ("id", "merchant_id", "amount", "out_trade_no", "expire_after_s", "ledger",
                       "description_code", "flags", "reserved", "timestamp")
ORDER_PAY_FIELDS = ("order_id", "payer_id", "amount", "token", "reserved_a", "ledger", "flags", "reserved",
                    "timestamp")
ORDER_CLOSE_FIELDS = ("order_id", "merchant_id", "flags", "reserved", "timestamp")
ORDER_FIELDS = ("id", "merchant_id", "payer_id", "amount", "refunded", "expires_at", "paid_at", "closed_at", "token",
                "state", "close_reason", "refund_count", "kind", "reserved_a", "ledger", "description_code", "fee",
                "timestamp")
MERCHANT_FIELDS = ("merchant_id", "fee_account_id", "settlement_account_id", "fee_bps", "flags", "ledger", "reserved",
                   "timestamp")
REFUND_FIELDS = ("id", "order_id", "merchant_id", "amount", "out_refund_no", "ledger", "flags", "reserved",
                 "fee_refunded", "payer_id", "timestamp")
CODE_ISSUE_FIELDS = ("wallet_id", "request_id", "no_password_limit", "free_payments_per_day", "ledger", "flags",
                     "reserved", "timestamp")
CODE_CHARGE_FIELDS = ("order_id", "merchant_id", "code", "amount", "out_trade_no", "ledger", "description_code",
                      "flags", "reserved", "timestamp")
CODE_CONFIRM_FIELDS = ("order_id", "wallet_id", "flags", "reserved", "timestamp")
CODE_FIELDS = ("id", "wallet_id", "request_id", "order_id", "no_password_limit", "expires_at", "ended_at",
               "free_payments_per_day", "ledger", "state", "reserved", "timestamp")
OUT_TRADE_NO_SIZE, TOKEN_SIZE = 32, 10
BYTES_FIELDS = {"out_trade_no": OUT_TRADE_NO_SIZE, "token": TOKEN_SIZE, "out_refund_no": OUT_TRADE_NO_SIZE,
                "out_envelope_no": OUT_TRADE_NO_SIZE, "out_stock_no": OUT_TRADE_NO_SIZE}
OUT_TRADE_NO_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-|*@.")
NOTPAY, SUCCESS, CLOSED, REFUND, USERPAYING = 1, 2, 3, 4, 5
CLOSE_BY_MERCHANT, CLOSE_EXPIRED, CLOSE_REVOKED, CLOSE_DECLINED, CLOSE_TIMEOUT = 1, 2, 3, 4, 5
ORDER_KIND_QR, ORDER_KIND_CODE = 0, 1
EXPIRE_AFTER_DEFAULT_S, EXPIRE_AFTER_MIN_S, EXPIRE_AFTER_MAX_S = 7_200, 60, 7_776_000
LEGS_MAX = 4
BATCH_EVENTS_MAX = 8_190
TRANSFER_CODE_ORDER_PAYMENT, TRANSFER_CODE_ORDER_FEE = 0xF001, 0xF002
TRANSFER_CODE_ORDER_REFUND, TRANSFER_CODE_ORDER_FEE_REFUND = 0xF003, 0xF004
FEE_BPS_MAX = 10_000
REFUND_WINDOW_S, REFUNDS_PER_ORDER_MAX = 365 * 24 * 3600, 50
# Payment codes (docs/products.md, "Payment codes (built)").
CODE_LIVE, CODE_CHARGED, CODE_EXPIRED, CODE_REPLACED = 1, 2, 3, 4
CODE_VALID_S, CHARGE_HOLD_S = 60, 45
NO_PASSWORD_LIMIT_DEFAULT, FREE_PAYMENTS_PER_DAY_DEFAULT = 300_000, 10
CONFIRM_DECLINE = 1
DAY_NS = 86_400 * NS_PER_S
CODE_MIN, CODE_END = 10 * 10**16, 16 * 10**16     # 18 digits, the prefix 10..15
# Red envelopes (docs/products.md "Red envelopes").
ENVELOPE_SEND_FIELDS = ("id", "sender_id", "escrow_id", "total", "out_envelope_no", "count", "ledger",
                        "expire_after_s", "description_code", "flags", "reserved", "timestamp")
ENVELOPE_CLAIM_FIELDS = ("envelope_id", "claimer_id", "flags", "reserved", "timestamp")
ENVELOPE_FIELDS = ("id", "sender_id", "escrow_id", "total", "remaining", "expires_at", "ended_at", "refunded", "count",
                   "claimed", "ledger", "description_code", "state", "reserved_a", "refund_result", "reserved",
                   "timestamp")
CLAIM_FIELDS = ("id", "envelope_id", "claimer_id", "transfer_id", "amount", "position", "ledger", "reserved",
                "timestamp")
LIMITS_FIELDS = ("accounts", "pending", "merchants", "orders_open", "codes_live", "flags", "reserved_a",
                 "envelopes_open", "envelope_total", "stocks_open", "reserved", "timestamp")
ENVELOPE_OPEN, ENVELOPE_EMPTY, ENVELOPE_REFUNDED, ENVELOPE_REFUND_FAILED = 1, 2, 3, 4
ACCOUNT_CODE_ESCROW = 4
TRANSFER_CODE_ENVELOPE_FUND, TRANSFER_CODE_ENVELOPE_CLAIM, TRANSFER_CODE_ENVELOPE_REFUND = 6, 7, 8
ENVELOPE_COUNT_MAX = 10_000
ENVELOPE_EXPIRE_AFTER_MAX_S = 86_400
ENVELOPE_TOTAL_MAX_DEFAULT, ENVELOPE_TOTAL_LIMIT_MAX = 20_000, 1 << 53
ENVELOPE_REFUNDS_PER_BATCH_MAX = 256
# Coupons (docs/products.md "Coupons and the card pack").
STOCK_CREATE_FIELDS = ("id", "merchant_id", "budget_account_id", "face_value", "min_spend", "out_stock_no",
                       "total_count", "per_user_max", "valid_for_s", "coupon_valid_s", "ledger", "flags", "reserved",
                       "timestamp")
STOCK_FIELDS = ("id", "merchant_id", "budget_account_id", "face_value", "min_spend", "ends_at", "total_count",
                "per_user_max", "coupon_valid_s", "ledger", "issued_scan", "issued_api", "issued_pay_and_get",
                "redeemed", "receivers", "repeat_buyers", "state", "reserved_a", "end_result", "reserved", "timestamp")
COUPON_GRANT_FIELDS = ("id", "stock_id", "user_id", "request_id", "merchant_id", "channel", "reserved_a", "flags",
                       "reserved", "timestamp")
COUPON_FIELDS = ("id", "stock_id", "user_id", "request_id", "payment_id", "expires_at", "redeemed_at", "price",
                 "channel", "state", "reserved", "timestamp")
COUPON_PAY_FIELDS = ("payer_id", "merchant_id", "coupon_id", "stock_id", "request_id", "price", "ledger", "flags",
                     "reserved", "timestamp")
HOLDING_FIELDS = ("id", "stock_id", "user_id", "received", "redeemed", "reserved", "timestamp")
STOCK_ACTIVE, STOCK_ENDED = 1, 2
COUPON_AVAILABLE, COUPON_REDEEMED = 1, 2
CHANNEL_SCAN, CHANNEL_API = 1, 2
ACCOUNT_CODE_COUPON_BUDGET = 7
TRANSFER_CODE_PAYMENT, TRANSFER_CODE_COUPON = 1, 9
STOCK_COUNT_MAX = 10_000_000
STOCK_VALID_MAX_S = 366 * 86_400
STOCK_BUDGET_MAX = 1 << 62
STOCK_ENDS_PER_BATCH_MAX = 256
# Cross-border payments (docs/products.md "Cross-border payments").
FX_RATE_FIELDS = ("from_ledger", "to_ledger", "rate_ppb", "pool_from_id", "pool_to_id", "version", "flags",
                  "reserved_a", "updated_at", "reserved", "timestamp")
FX_PAY_FIELDS = ("payer_id", "merchant_id", "request_id", "merchant_amount", "payer_amount", "rate_version",
                 "payer_ledger", "merchant_ledger", "description_code", "flags", "reserved", "timestamp")
FX_PAYMENT_FIELDS = ("id", "payer_id", "merchant_id", "request_id", "payer_amount", "merchant_amount",
                     "payer_refunded", "merchant_refunded", "rate_ppb", "payer_ledger", "merchant_ledger",
                     "rate_version", "refund_count", "reserved", "timestamp")
FX_REFUND_FIELDS = ("id", "payment_id", "merchant_id", "request_id", "merchant_amount", "payer_amount", "flags",
                    "reserved", "timestamp")
ACCOUNT_CODE_FX_POOL = 6
TRANSFER_CODE_FX = 10
RATES_MAX = 1024
RATE_PPB_MAX = 10**18
PPB = 10**9

R = enum.IntEnum("R", [(name, code) for code, name in enumerate("""
ok linked_event_failed linked_event_chain_open timestamp_must_be_zero reserved_field reserved_flag
id_must_not_be_zero id_must_not_be_int_max flags_are_mutually_exclusive debits_pending_must_be_zero
debits_posted_must_be_zero credits_pending_must_be_zero credits_posted_must_be_zero ledger_must_not_be_zero
code_must_not_be_zero exists_with_different_flags exists_with_different_user_data_128
exists_with_different_user_data_64 exists_with_different_user_data_32 exists_with_different_ledger
exists_with_different_code exists accounts_limit_reached debit_account_id_must_not_be_zero
debit_account_id_must_not_be_int_max credit_account_id_must_not_be_zero credit_account_id_must_not_be_int_max
accounts_must_be_different pending_id_must_be_zero pending_id_must_not_be_zero pending_id_must_not_be_int_max
pending_id_must_be_different timeout_reserved_for_pending_transfer amount_must_not_be_zero
debit_account_not_found credit_account_not_found accounts_must_have_the_same_ledger
transfer_must_have_the_same_ledger_as_accounts pending_transfer_not_found pending_transfer_not_pending
pending_transfer_has_different_debit_account_id pending_transfer_has_different_credit_account_id
pending_transfer_has_different_ledger pending_transfer_has_different_code exceeds_pending_transfer_amount
pending_transfer_has_different_amount exists_with_different_debit_account_id
exists_with_different_credit_account_id exists_with_different_amount exists_with_different_pending_id
exists_with_different_timeout pending_transfer_already_posted pending_transfer_already_voided
pending_transfer_expired debit_account_closed credit_account_closed overflows_debits_pending
overflows_credits_pending overflows_debits_posted overflows_credits_posted overflows_debits overflows_credits
overflows_timeout exceeds_credits exceeds_debits transfers_limit_reached
out_trade_no_invalid expire_after_out_of_range merchant_not_found currency_mismatch id_mismatch
exists_with_different_fields orders_limit_reached order_not_found order_token_invalid order_paid order_closed
order_expired amount_mismatch payer_not_found merchant_mismatch
fee_account_not_found settlement_account_not_found fee_rate_out_of_range merchants_limit_reached
out_refund_no_invalid order_not_paid refund_window_closed refunds_per_order_limit_reached exceeds_paid_amount
refunds_limit_reached id_reserved merchant_not_registered settlement_window_open settlement_window_behind
forbidden code_invalid code_not_found code_used code_expired code_replaced code_collision codes_limit_reached
user_paying order_not_user_paying payer_mismatch limit_out_of_range
envelope_total_out_of_range envelope_count_out_of_range escrow_invalid envelopes_limit_reached envelope_not_found
envelope_empty envelope_expired claims_limit_reached claimer_not_found
stock_count_out_of_range min_spend_below_face face_value_out_of_range budget_account_invalid stocks_limit_reached channel_invalid stock_not_found user_not_found stock_ended stock_exhausted per_user_limit_reached coupons_limit_reached coupon_not_found coupon_mismatch coupon_redeemed coupon_expired below_min_spend
rate_invalid pool_invalid rates_limit_reached rate_not_found rate_changed fx_payments_limit_reached fx_payment_not_found product_account
exceeds_payment_limit exceeds_daily_limit exceeds_yearly_limit exceeds_balance_limit tier_invalid account_not_found tier_limits_invalid tier_ledgers_limit_reached
""".split())])
#: A product's own accounts (escrow, FX pool, coupon budget): they may not send or claim.
PRODUCT_ACCOUNT_CODES = (4, 6, 7)
#: The server's mark on an event its client's role may not make (engine/roles.py).
EVENT_FLAG_FORBIDDEN = 1 << 15

#: Orders a batch's start expires at most (core/constants.py): the log holds their ids.
EXPIRIES_PER_BATCH_MAX = 8190

#: Transfer ids with these top 16 bits are the products' legs': a client's may not use them.
LEG_ID_TAG = 0xFFFE

# Wallet tiers (docs/products.md "Wallet limits and real-name tiers (built)").
OP_SET_WALLET_TIERS, OP_SET_TIER_LIMITS = 7, 9
WALLET_TIER_FIELDS = ("account_id", "ledger", "tier", "reserved_a", "flags", "reserved", "timestamp")
TIER_LIMITS_FIELDS = ("ledger", "tier", "reserved_a", "flags", "payment_limit", "daily_limit", "yearly_limit",
                      "balance_limit", "reserved", "timestamp")
#: The defaults (ledger 0), minor units: per payment, daily, yearly, balance.
TIER_LIMITS_DEFAULT = {1: (50_000, 100_000, 100_000, 100_000), 2: (500_000, 1_000_000, 10_000_000, 10_000_000),
                       3: (5_000_000, 10_000_000, 20_000_000, 100_000_000)}
TIER_RULES_OWN_MAX = 32 * 3    # (ledger, tier) pairs with limits of their own


class ModelLedger:
    def __init__(self, accounts_max: int, transfers_max: int, orders_max: int = 0, secret: bytes = bytes(32),
                 codes_max: int = 1 << 17, refunds_max: int = 1 << 16, merchants_max: int = 1 << 17,
                 envelopes_max: int = 1 << 17, claims_max: int = 1 << 18, stocks_max: int = 1 << 16,
                 coupons_max: int = 1 << 18, holdings_max: int = 1 << 18, fx_payments_max: int = 1 << 17,
                 fx_refunds_max: int = 1 << 16):
        self.accounts_max = accounts_max
        self.transfers_max = transfers_max
        self.orders_max = orders_max
        self.codes_max = codes_max
        self.refunds_max = refunds_max
        self.merchants_max = merchants_max
        self.secret = bytes(secret)
        self.orders_by_id: dict[int, dict] = {}        # insertion order = creation order
        self.order_fee_account: dict[int, int] = {}    # order id -> the account its fee went to
        self.merchants_by_id: dict[int, dict] = {}     # merchant id -> its terms (MERCHANT record)
        self.refunds_by_id: dict[int, dict] = {}
        self.codes_by_id: dict[int, dict] = {}         # insertion order = issue order
        self.code_payments: dict[int, tuple] = {}      # wallet id -> (engine day, code payments made that day)
        self.accounts_by_id: dict[int, dict] = {}      # insertion order = creation order
        self.transfers_by_id: dict[int, dict] = {}     # insertion order = timestamp order
        self.state: dict[int, str] = {}                # pending transfer id -> pending/posted/voided/expired
        self.activity: dict[int, dict] = {}            # account id -> features
        self.envelopes_max = envelopes_max
        self.claims_max = claims_max
        self.envelopes_by_id: dict[int, dict] = {}     # insertion order = send order
        self.claims_by_id: dict[int, dict] = {}
        # The limits set_limits changes: open packets (a bare table's room for a batch kept back,
        # as for orders) and a packet's total.
        self.envelopes_pinned_max = envelopes_max - min(BATCH_EVENTS_MAX, envelopes_max // 2)
        self.envelopes_open_max = self.envelopes_pinned_max
        self.envelope_total_max = ENVELOPE_TOTAL_MAX_DEFAULT
        self.tiers: dict[int, int] = {}                # account id -> tier (absent: 0)
        self.windows: dict[int, dict] = {}             # account id -> day, day_spent, year, year_spent, tier_set_at
        self.counted: set[int] = set()                 # pending transfers counted in their wallet's windows
        self.tier_rules: dict[tuple, tuple] = {(0, t): v for t, v in TIER_LIMITS_DEFAULT.items()}
        self.stocks_max, self.coupons_max, self.holdings_max = stocks_max, coupons_max, holdings_max
        self.stocks_by_id: dict[int, dict] = {}        # insertion order = creation order
        self.coupons_by_id: dict[int, dict] = {}
        self.holdings_by_id: dict[int, dict] = {}
        self.coupon_payments_by_id: dict[int, dict] = {}
        self.stocks_pinned_max = stocks_max - min(BATCH_EVENTS_MAX, stocks_max // 2)
        self.stocks_open_max = self.stocks_pinned_max
        self.fx_payments_max, self.fx_refunds_max = fx_payments_max, fx_refunds_max
        self.rates: dict[tuple, dict] = {}             # (from ledger, to ledger) -> FX_RATE record
        self.fx_payments_by_id: dict[int, dict] = {}
        self.fx_refunds_by_id: dict[int, dict] = {}
        self.last = 0

    def _save(self):
        """What a failed chain restores (a deep copy)."""
        return copy.deepcopy((self.accounts_by_id, self.transfers_by_id, self.state, self.activity, self.windows,
                              self.counted))

    def _restore(self, saved):
        (self.accounts_by_id, self.transfers_by_id, self.state, self.activity, self.windows,
         self.counted) = saved

    # -- batches

    def _begin(self, now_ns, count, per_event=1):
        """The batch's base timestamp; ``per_event`` timestamps are reserved for each event
        (1 for the ledger's events, ``LEGS_MAX`` for a product's). Expires what is due by then.

        The batch's first timestamp ``first`` goes to the refunds of the packets expired by then
        (at most ENVELOPE_REFUNDS_PER_BATCH_MAX): they take first .. first + k - 1 and the events
        start at ``base = first + k``. (As the core does: orders and codes expire at ``base``
        first, then pending transfers at ``base``, then the refunds.) The stocks ended by
        ``first`` (at most STOCK_ENDS_PER_BATCH_MAX) take the timestamps after the refunds'
        (``first + k ..``), before the events: ``base = first + k + j``."""
        first = max(now_ns, self.last + 1)
        due = self.envelopes_due(first)
        ending = self.stocks_due(first)
        base = first + len(due) + len(ending)
        if count or due or ending:
            self.last = base + per_event * count - 1
        self.expire_orders(base)
        self.expire_codes(base)
        for tid, state in self.state.items():
            t = self.transfers_by_id[tid]
            if state == "pending" and t["timeout"] and t["timestamp"] + t["timeout"] * NS_PER_S <= base:
                self.state[tid] = "expired"
                self.accounts_by_id[t["debit_account_id"]]["debits_pending"] -= t["amount"]
                self.accounts_by_id[t["credit_account_id"]]["credits_pending"] -= t["amount"]
                self._give_back(t, t["amount"])
        self._refund_due(due, first)
        self._end_stocks(ending, first + len(due))
        return base

    def _run(self, events, now_ns, one, linked_flag):
        events = [_fill(e, TRANSFER_FIELDS if one == self._transfer else ACCOUNT_FIELDS) for e in events]
        base = self._begin(now_ns, len(events))
        results = [None] * len(events)
        i = 0
        while i < len(events):
            last = i
            while last < len(events) - 1 and events[last]["flags"] & linked_flag:
                last += 1
            if last == i and not events[i]["flags"] & linked_flag:
                results[i] = one(events[i], base + i)
            else:
                saved = self._save()
                for k in range(i, last + 1):
                    if k == len(events) - 1 and events[k]["flags"] & linked_flag:
                        r = R.linked_event_chain_open
                    else:
                        r = one(events[k], base + k)
                    results[k] = r
                    if r != R.ok:
                        self._restore(saved)
                        for j in range(i, last + 1):
                            if j != k:
                                results[j] = R.linked_event_failed
                        break
            i = last + 1
        return [int(r) for r in results]

    def create_accounts(self, events, now_ns):
        return self._run(events, now_ns, self._account, A_LINKED)

    def create_transfers(self, events, now_ns):
        return self._run(events, now_ns, self._transfer, T_LINKED)

    # -- one account

    def _account(self, e, ts):
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"]:
            return R.reserved_field
        if e["flags"] >= 16:
            return R.reserved_flag
        if e["id"] == 0:
            return R.id_must_not_be_zero
        if e["id"] == U128:
            return R.id_must_not_be_int_max
        if e["flags"] & A_DEBITS_LIMIT and e["flags"] & A_CREDITS_LIMIT:
            return R.flags_are_mutually_exclusive
        for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted"):
            if e[name]:
                return R[name + "_must_be_zero"]
        if e["ledger"] == 0:
            return R.ledger_must_not_be_zero
        if e["code"] == 0:
            return R.code_must_not_be_zero
        a = self.accounts_by_id.get(e["id"])
        if a is not None:
            if a["flags"] & ~A_LINKED != e["flags"] & ~A_LINKED:
                return R.exists_with_different_flags
            for name in ("user_data_128", "user_data_64", "user_data_32", "ledger", "code"):
                if a[name] != e[name]:
                    return R["exists_with_different_" + name]
            return R.exists
        if len(self.accounts_by_id) >= self.accounts_max:
            return R.accounts_limit_reached
        self.accounts_by_id[e["id"]] = dict(e, timestamp=ts)
        self.activity[e["id"]] = {"code_counts": [0] * CODE_BUCKETS, "first": 0, "last": 0}
        return R.ok

    # -- one transfer

    def _transfer(self, e, ts, is_leg=False):
        f = e["flags"]
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"]:
            return R.reserved_field
        if f >= 64:
            return R.reserved_flag
        if e["id"] == 0:
            return R.id_must_not_be_zero
        if e["id"] == U128:
            return R.id_must_not_be_int_max
        if e["id"] >> 112 == LEG_ID_TAG and not is_leg:
            return R.id_reserved   # a product's leg: only the product moves it
        if bin(f & (T_PENDING | T_POST | T_VOID)).count("1") > 1 or (
                f & (T_BAL_DEBIT | T_BAL_CREDIT) and f & (T_POST | T_VOID)):
            return R.flags_are_mutually_exclusive
        if f & (T_POST | T_VOID):
            return self._post_or_void(e, ts, is_leg)
        if e["pending_id"]:
            return R.pending_id_must_be_zero
        if e["timeout"] and not f & T_PENDING:
            return R.timeout_reserved_for_pending_transfer
        for side in ("debit", "credit"):
            if e[side + "_account_id"] == 0:
                return R[side + "_account_id_must_not_be_zero"]
            if e[side + "_account_id"] == U128:
                return R[side + "_account_id_must_not_be_int_max"]
        if e["debit_account_id"] == e["credit_account_id"]:
            return R.accounts_must_be_different
        if e["amount"] == 0:
            return R.amount_must_not_be_zero
        if e["ledger"] == 0:
            return R.ledger_must_not_be_zero
        if e["code"] == 0:
            return R.code_must_not_be_zero
        dr = self.accounts_by_id.get(e["debit_account_id"])
        if dr is None:
            return R.debit_account_not_found
        cr = self.accounts_by_id.get(e["credit_account_id"])
        if cr is None:
            return R.credit_account_not_found
        if dr["ledger"] != cr["ledger"]:
            return R.accounts_must_have_the_same_ledger
        if e["ledger"] != dr["ledger"]:
            return R.transfer_must_have_the_same_ledger_as_accounts
        x = self.transfers_by_id.get(e["id"])
        if x is not None:
            if x["flags"] & ~T_LINKED != f & ~T_LINKED:
                return R.exists_with_different_flags
            if x["debit_account_id"] != e["debit_account_id"]:
                return R.exists_with_different_debit_account_id
            if x["credit_account_id"] != e["credit_account_id"]:
                return R.exists_with_different_credit_account_id
            balancing = f & (T_BAL_DEBIT | T_BAL_CREDIT)
            if (e["amount"] < x["amount"]) if balancing else (e["amount"] != x["amount"]):
                return R.exists_with_different_amount
            for name in ("user_data_128", "user_data_64", "user_data_32", "timeout", "ledger", "code"):
                if x[name] != e[name]:
                    return R["exists_with_different_" + name]
            return R.exists
        if dr["flags"] & A_CLOSED:
            return R.debit_account_closed
        if cr["flags"] & A_CLOSED:
            return R.credit_account_closed
        amount = e["amount"]
        if f & T_BAL_DEBIT:
            available = max(0, dr["credits_posted"] - dr["debits_pending"] - dr["debits_posted"])
            if available == 0:
                return R.exceeds_credits
            amount = min(amount, available)
        if f & T_BAL_CREDIT:
            available = max(0, cr["debits_posted"] - cr["credits_pending"] - cr["credits_posted"])
            if available == 0:
                return R.exceeds_debits
            amount = min(amount, available)
        kind = "pending" if f & T_PENDING else "posted"
        if dr["debits_" + kind] + amount > U64:
            return R["overflows_debits_" + kind]
        if cr["credits_" + kind] + amount > U64:
            return R["overflows_credits_" + kind]
        if dr["debits_pending"] + dr["debits_posted"] + amount > U64:
            return R.overflows_debits
        if cr["credits_pending"] + cr["credits_posted"] + amount > U64:
            return R.overflows_credits
        if e["timeout"] and ts + e["timeout"] * NS_PER_S > U64:
            return R.overflows_timeout
        if dr["flags"] & A_DEBITS_LIMIT and dr["debits_pending"] + dr["debits_posted"] + amount > dr["credits_posted"]:
            return R.exceeds_credits
        if cr["flags"] & A_CREDITS_LIMIT and cr["credits_pending"] + cr["credits_posted"] + amount > cr["debits_posted"]:
            return R.exceeds_debits
        if len(self.transfers_by_id) >= self.transfers_max:
            return R.transfers_limit_reached
        r, count = self._tier_check(dr, cr, amount, ts)
        if r != R.ok:
            return r
        count()
        dr["debits_" + kind] += amount
        cr["credits_" + kind] += amount
        self.transfers_by_id[e["id"]] = dict(e, amount=amount, timestamp=ts)
        if f & T_PENDING:
            self.state[e["id"]] = "pending"
            if self.tiers.get(dr["id"]):
                self.counted.add(e["id"])
            self._activity(dr["id"], cr["id"], ts, None)
        else:
            self._activity(dr["id"], cr["id"], ts, e["code"])
        return R.ok

    def _post_or_void(self, e, ts, is_leg=False):
        post = bool(e["flags"] & T_POST)
        if e["pending_id"] == 0:
            return R.pending_id_must_not_be_zero
        if e["pending_id"] == U128:
            return R.pending_id_must_not_be_int_max
        if e["pending_id"] == e["id"]:
            return R.pending_id_must_be_different
        if e["timeout"]:
            return R.timeout_reserved_for_pending_transfer
        p = self.transfers_by_id.get(e["pending_id"])
        if p is None:
            return R.pending_transfer_not_found
        if not p["flags"] & T_PENDING:
            return R.pending_transfer_not_pending
        if e["pending_id"] >> 112 == LEG_ID_TAG and not is_leg:
            return R.id_reserved   # a product's hold: only the product resolves it
        for name in ("debit_account_id", "credit_account_id", "ledger", "code"):
            if e[name] and e[name] != p[name]:
                return R["pending_transfer_has_different_" + name]
        if post and e["amount"] > p["amount"]:
            return R.exceeds_pending_transfer_amount
        if not post and e["amount"] and e["amount"] != p["amount"]:
            return R.pending_transfer_has_different_amount
        x = self.transfers_by_id.get(e["id"])
        if x is not None:
            if x["flags"] & ~T_LINKED != e["flags"] & ~T_LINKED:
                return R.exists_with_different_flags
            if x["pending_id"] != e["pending_id"]:
                return R.exists_with_different_pending_id
            for name in ("debit_account_id", "credit_account_id", "amount"):
                if e[name] and e[name] != x[name]:
                    return R["exists_with_different_" + name]
            for name in ("user_data_128", "user_data_64", "user_data_32", "timeout"):
                if x[name] != e[name]:
                    return R["exists_with_different_" + name]
            for name in ("ledger", "code"):
                if e[name] and x[name] != e[name]:
                    return R["exists_with_different_" + name]
            return R.exists
        state = self.state[p["id"]]
        if state == "posted":
            return R.pending_transfer_already_posted
        if state == "voided":
            return R.pending_transfer_already_voided
        if state == "expired" or (p["timeout"] and p["timestamp"] + p["timeout"] * NS_PER_S <= ts):
            return R.pending_transfer_expired
        dr = self.accounts_by_id[p["debit_account_id"]]
        cr = self.accounts_by_id[p["credit_account_id"]]
        amount = (e["amount"] or p["amount"]) if post else p["amount"]
        if post and dr["debits_posted"] + amount > U64:
            return R.overflows_debits_posted
        if post and cr["credits_posted"] + amount > U64:
            return R.overflows_credits_posted
        if len(self.transfers_by_id) >= self.transfers_max:
            return R.transfers_limit_reached
        dr["debits_pending"] -= p["amount"]
        cr["credits_pending"] -= p["amount"]
        if post:
            dr["debits_posted"] += amount
            cr["credits_posted"] += amount
        self.state[p["id"]] = "posted" if post else "voided"
        self._give_back(p, p["amount"] - amount if post else p["amount"])
        self.transfers_by_id[e["id"]] = dict(e, debit_account_id=p["debit_account_id"],
                                             credit_account_id=p["credit_account_id"], ledger=p["ledger"],
                                             code=p["code"], amount=amount, timestamp=ts)
        self._activity(dr["id"], cr["id"], ts, p["code"] if post else None)
        return R.ok

    # -- wallet tiers (docs/products.md "Wallet limits and real-name tiers (built)")

    def _rule(self, ledger, tier):
        return self.tier_rules.get((ledger, tier)) or self.tier_rules[(0, tier)]

    def _tier_check(self, dr, cr, amount, ts):
        """(result, count): the tiered wallets' limits, last of a transfer's checks; ``count()``
        adds the debit to the debited wallet's windows once the transfer is made."""
        tier = self.tiers.get(dr["id"], 0)
        count = lambda: None  # noqa: E731
        if tier:
            payment, daily, yearly, _ = self._rule(dr["ledger"], tier)
            if amount > payment:
                return R.exceeds_payment_limit, count
            w = self.windows.setdefault(dr["id"], _window())
            day, year = ts // DAY_NS, year_of_day(ts // DAY_NS)
            day_spent = w["day_spent"] if w["year"] and w["day"] == day else 0
            year_spent = w["year_spent"] if w["year"] == year else 0
            if day_spent + amount > daily:
                return R.exceeds_daily_limit, count
            if year_spent + amount > yearly:
                return R.exceeds_yearly_limit, count

            def count():
                w.update(day=day, day_spent=day_spent + amount, year=year, year_spent=year_spent + amount)
        tier = self.tiers.get(cr["id"], 0)
        if tier and max(0, cr["credits_posted"] + cr["credits_pending"] + amount - cr["debits_posted"]) > \
                self._rule(cr["ledger"], tier)[3]:
            return R.exceeds_balance_limit, count
        return R.ok, count

    def _give_back(self, p, amount):
        """A counted hold voided, expired or posted for less: ``amount`` leaves the windows it was
        counted in while they are the wallet's current ones."""
        if p["id"] not in self.counted:
            return
        self.counted.discard(p["id"])
        w = self.windows[p["debit_account_id"]]
        day = p["timestamp"] // DAY_NS
        if w["year"] and w["day"] == day:
            w["day_spent"] -= min(amount, w["day_spent"])
        if w["year"] == year_of_day(day):
            w["year_spent"] -= min(amount, w["year_spent"])

    def set_wallet_tiers(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, WALLET_TIER_FIELDS, self._set_wallet_tier)]

    def set_tier_limits(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, TIER_LIMITS_FIELDS, self._set_tier_limits)]

    @staticmethod
    def _tier_prologue(e):
        """The first checks of set_wallet_tiers and set_tier_limits, in order (None: passed)."""
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved_a"] or e["reserved"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
        return None

    def _set_wallet_tier(self, e, ts):
        r = self._tier_prologue(e)
        if r is not None:
            return r
        if e["account_id"] == 0:
            return R.id_must_not_be_zero
        if e["account_id"] == U128:
            return R.id_must_not_be_int_max
        if e["ledger"] == 0:
            return R.ledger_must_not_be_zero
        if e["tier"] > 3:
            return R.tier_invalid
        a = self.accounts_by_id.get(e["account_id"])
        if a is None:
            return R.account_not_found
        if a["ledger"] != e["ledger"]:
            return R.currency_mismatch
        if self.tiers.get(a["id"], 0) == e["tier"]:
            return R.exists
        self.tiers[a["id"]] = e["tier"]
        self.windows.setdefault(a["id"], _window())["tier_set_at"] = ts
        return R.ok

    def _set_tier_limits(self, e, ts):
        r = self._tier_prologue(e)
        if r is not None:
            return r
        if not 1 <= e["tier"] <= 3:
            return R.tier_invalid
        limits = (e["payment_limit"], e["daily_limit"], e["yearly_limit"], e["balance_limit"])
        if limits[0] > limits[1] or limits[1] > limits[2]:
            return R.tier_limits_invalid
        key = (e["ledger"], e["tier"])
        if self.tier_rules.get(key) == limits:
            return R.exists
        if key not in self.tier_rules and len(self.tier_rules) - 3 >= TIER_RULES_OWN_MAX:
            return R.tier_ledgers_limit_reached
        self.tier_rules[key] = limits
        return R.ok

    def lookup_wallet_limits(self, ids):
        """WALLET_LIMITS records, as of the engine's last timestamp."""
        day = self.last // DAY_NS
        year = year_of_day(day)
        out = []
        for i in ids:
            a = self.accounts_by_id.get(i)
            if a is None:
                continue
            tier = self.tiers.get(i, 0)
            w = self.windows.get(i, _window())
            limits = self._rule(a["ledger"], tier) if tier else (0, 0, 0, 0)
            out.append({"account_id": i, "ledger": a["ledger"], "tier": tier, "reserved_a": 0,
                        "payment_limit": limits[0], "daily_limit": limits[1], "yearly_limit": limits[2],
                        "balance_limit": limits[3], "day": day, "year": year,
                        "day_spent": w["day_spent"] if w["year"] and w["day"] == day else 0,
                        "year_spent": w["year_spent"] if w["year"] == year else 0,
                        "tier_set_at": w["tier_set_at"], "reserved": 0, "timestamp": self.last})
        return out

    def _activity(self, debit_id, credit_id, ts, settled_code):
        for account_id in (debit_id, credit_id):
            f = self.activity[account_id]
            if settled_code is not None:
                f["code_counts"][min(settled_code, CODE_BUCKETS - 1)] += 1
            if f["first"] == 0:
                f["first"] = ts
            f["last"] = ts

    # -- orders (docs/products.md, "Orders: the reference")

    def apply(self, operation, events, now_ns):
        """A batch by operation number (core/operations.py's numbers, written out again here)."""
        run = {OP_CREATE_ACCOUNTS: self.create_accounts, OP_CREATE_TRANSFERS: self.create_transfers,
               OP_SET_LIMITS: self.set_limits, OP_SEND_ENVELOPES: self.send_envelopes,
               OP_CLAIM_ENVELOPES: self.claim_envelopes,
               OP_CREATE_ORDERS: self.create_orders, OP_PAY_ORDERS: self.pay_orders,
               OP_CLOSE_ORDERS: self.close_orders, OP_SET_MERCHANTS: self.set_merchants,
               OP_REFUND_ORDERS: self.refund_orders, OP_ISSUE_CODES: self.issue_codes,
               OP_CHARGE_CODES: self.charge_codes, OP_CONFIRM_CHARGES: self.confirm_charges,
               OP_SET_WALLET_TIERS: self.set_wallet_tiers, OP_SET_TIER_LIMITS: self.set_tier_limits,
               OP_CREATE_STOCKS: self.create_stocks, OP_GRANT_COUPONS: self.grant_coupons,
               OP_PAY_WITH_COUPON: self.pay_with_coupon, OP_SET_RATES: self.set_rates,
               OP_PAY_CROSS_BORDER: self.pay_cross_border,
               OP_REFUND_CROSS_BORDER: self.refund_cross_border}[operation]
        return run(events, now_ns)

    def expire_orders(self, t):
        """Close every open order with ``expires_at <= t`` (by the clock), in (expires_at, timestamp)
        order, at most EXPIRIES_PER_BATCH_MAX (the rest at the next batches); returns their ids.
        Every batch does this at its base timestamp before its events. An unpaid QR order closes
        ``expired``; a held code charge ``timeout`` (its pending leg expires in the same batch
        start, by the ledger's own clock)."""
        due = sorted((o for o in self.orders_by_id.values()
                      if o["state"] in (NOTPAY, USERPAYING) and o["expires_at"] <= t),
                     key=lambda o: (o["expires_at"], o["timestamp"]))[:EXPIRIES_PER_BATCH_MAX]
        for o in due:
            o["close_reason"] = CLOSE_EXPIRED if o["state"] == NOTPAY else CLOSE_TIMEOUT
            o["state"] = CLOSED
            o["closed_at"] = o["expires_at"]
        return [o["id"] for o in due]

    def expire_codes(self, t):
        """Every LIVE code with ``expires_at <= t`` becomes EXPIRED (``ended_at = expires_at``)."""
        due = [c for c in self.codes_by_id.values() if c["state"] == CODE_LIVE and c["expires_at"] <= t]
        for c in due:
            c["state"] = CODE_EXPIRED
            c["ended_at"] = c["expires_at"]
        return [c["id"] for c in due]

    def _run_orders(self, events, now_ns, fields, one):
        events = [_fill_bytes(e, fields) for e in events]
        base = self._begin(now_ns, len(events), LEGS_MAX)
        return [one(e, base + LEGS_MAX * k) for k, e in enumerate(events)]

    def create_orders(self, events, now_ns):
        """One ``{"result", "token"}`` per event (the ORDER_CREATED reply)."""
        return self._run_orders(events, now_ns, ORDER_CREATE_FIELDS, self._create_order)

    def pay_orders(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, ORDER_PAY_FIELDS, self._pay_order)]

    def close_orders(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, ORDER_CLOSE_FIELDS, self._close_order)]

    def _create_order(self, e, ts):
        def reply(r, token=bytes(TOKEN_SIZE)):
            return {"result": int(r), "token": token}
        r = _prologue(e) or _keyed_checks(e, "id", "amount", "out_trade_no")
        if r:
            return reply(r)
        if e["expire_after_s"] != 0 and not EXPIRE_AFTER_MIN_S <= e["expire_after_s"] <= EXPIRE_AFTER_MAX_S:
            return reply(R.expire_after_out_of_range)
        merchant = self.accounts_by_id.get(e["merchant_id"])
        if merchant is None:
            return reply(R.merchant_not_found)
        if e["ledger"] != merchant["ledger"]:
            return reply(R.currency_mismatch)
        if e["id"] != order_id(e["merchant_id"], e["out_trade_no"]):
            return reply(R.id_mismatch)
        span = (e["expire_after_s"] or EXPIRE_AFTER_DEFAULT_S) * NS_PER_S
        o = self.orders_by_id.get(e["id"])
        if o is not None:
            same = (o["merchant_id"] == e["merchant_id"] and o["amount"] == e["amount"]
                    and o["ledger"] == e["ledger"] and o["description_code"] == e["description_code"]
                    and o["expires_at"] - o["timestamp"] == span)
            return reply(R.exists, o["token"]) if same else reply(R.exists_with_different_fields)
        if self._orders_full():
            return reply(R.orders_limit_reached)
        token = token_of(self.secret, e["id"])
        self.orders_by_id[e["id"]] = {
            "id": e["id"], "merchant_id": e["merchant_id"], "payer_id": 0, "amount": e["amount"], "refunded": 0,
            "expires_at": ts + span, "paid_at": 0, "closed_at": 0, "token": token, "state": NOTPAY,
            "close_reason": 0, "refund_count": 0, "kind": ORDER_KIND_QR, "reserved_a": 0, "ledger": e["ledger"],
            "description_code": e["description_code"], "fee": 0, "timestamp": ts}
        return reply(R.ok, token)

    def _pay_order(self, e, ts):
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved_a"] or e["reserved"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
        if e["order_id"] == 0:
            return R.id_must_not_be_zero
        o = self.orders_by_id.get(e["order_id"])
        if o is None:
            return R.order_not_found
        if o["kind"] != ORDER_KIND_QR or e["token"] != o["token"]:
            return R.order_token_invalid   # a code's charge is paid by its charge, never by pay_orders
        if o["state"] in (SUCCESS, REFUND):
            return R.exists if (o["payer_id"], o["amount"]) == (e["payer_id"], e["amount"]) else R.order_paid
        if o["state"] == CLOSED:
            return R.order_expired if o["close_reason"] == CLOSE_EXPIRED else R.order_closed
        if o["expires_at"] <= ts:
            return R.order_expired
        if e["amount"] != o["amount"]:
            return R.amount_mismatch
        if e["ledger"] != o["ledger"]:
            return R.currency_mismatch
        payer = self.accounts_by_id.get(e["payer_id"])
        if payer is None:
            return R.payer_not_found
        if e["payer_id"] == o["merchant_id"]:
            return R.accounts_must_be_different
        if payer["ledger"] != o["ledger"]:
            return R.currency_mismatch
        terms = self.merchants_by_id.get(o["merchant_id"])
        fee = fee_of(o["amount"], terms["fee_bps"]) if terms else 0
        legs = [self._leg(leg_id(o["id"], OP_PAY_ORDERS, 0), e["payer_id"], o["merchant_id"], o["amount"], o["ledger"],
                          TRANSFER_CODE_ORDER_PAYMENT, o["id"])]
        if fee:
            legs.append(self._leg(leg_id(o["id"], OP_PAY_ORDERS, 1), o["merchant_id"], terms["fee_account_id"], fee,
                                  o["ledger"], TRANSFER_CODE_ORDER_FEE, o["id"]))
        r = self._chain(legs, ts)
        if r != R.ok:
            return r
        o["state"] = SUCCESS
        o["payer_id"] = e["payer_id"]
        o["paid_at"] = ts
        o["fee"] = fee
        if fee:
            self.order_fee_account[o["id"]] = terms["fee_account_id"]
        return R.ok

    # -- legs: a product event's chain of transfers (all or none)

    @staticmethod
    def _leg(tid, debit, credit, amount, ledger, code, user_data_128, flags=0, timeout=0):
        return _fill({"id": tid, "debit_account_id": debit, "credit_account_id": credit, "amount": amount,
                      "ledger": ledger, "code": code, "user_data_128": user_data_128, "flags": flags,
                      "timeout": timeout}, TRANSFER_FIELDS)

    @staticmethod
    def _resolve_leg(tid, pending_id, post):
        """Post (its whole amount) or void a pending leg: only the ids and the flag are set."""
        return _fill({"id": tid, "pending_id": pending_id, "flags": T_POST if post else T_VOID}, TRANSFER_FIELDS)

    def _chain(self, legs, ts, offsets=None):
        """Legs ``j`` at ``ts + j`` (or ``ts + offsets[j]``: a leg's number, when an earlier leg
        is left out); the first failure undoes the ones before and is the result."""
        offsets = offsets or range(len(legs))
        if len(legs) == 1:   # a failing transfer changes nothing: no copy to undo
            return self._transfer(legs[0], ts + offsets[0], is_leg=True)
        saved = self._save()
        for j, leg in zip(offsets, legs):
            r = self._transfer(leg, ts + j, is_leg=True)
            if r != R.ok:
                self._restore(saved)
                return r
        return R.ok

    def _orders_full(self):
        """A bare table (no store to evict to) holds orders_max orders; open ones (unpaid, held) at
        most open_max, the rest of the table kept for the orders a batch names (docs/tables.md)."""
        open_max = self.orders_max - min(BATCH_EVENTS_MAX, self.orders_max // 2)
        unpaid = sum(1 for o in self.orders_by_id.values() if o["state"] in (NOTPAY, USERPAYING))
        return unpaid >= open_max or len(self.orders_by_id) >= self.orders_max

    def _close_order(self, e, ts):
        r = _prologue(e)
        if r:
            return r
        if e["order_id"] == 0:
            return R.id_must_not_be_zero
        o = self.orders_by_id.get(e["order_id"])
        if o is None:
            return R.order_not_found
        if e["merchant_id"] != o["merchant_id"]:
            return R.merchant_mismatch
        if o["state"] in (SUCCESS, REFUND):
            return R.order_paid
        if o["state"] == CLOSED:
            return R.exists
        if o["state"] == USERPAYING and o["expires_at"] <= ts:
            return R.order_expired     # its hold ended (the ledger's timeout): closed by the clock next
        if o["state"] == USERPAYING:   # a held code charge: revoked, its hold voided
            r = self._chain([self._resolve_leg(leg_id(o["id"], OP_CLOSE_ORDERS, 0),
                                               leg_id(o["id"], OP_CHARGE_CODES, 0), False)], ts)
            if r != R.ok:
                return r
            o["close_reason"] = CLOSE_REVOKED
        else:
            o["close_reason"] = CLOSE_BY_MERCHANT
        o["state"] = CLOSED
        o["closed_at"] = ts
        return R.ok

    def lookup_orders(self, ids):
        return [dict(self.orders_by_id[i]) for i in ids if i in self.orders_by_id]

    def orders(self):
        return [dict(o) for o in self.orders_by_id.values()]

    def next_order_expiry_ns(self):
        """The earliest ``expires_at`` of an open (NOTPAY or USERPAYING) order; 0 if none."""
        return min((o["expires_at"] for o in self.orders_by_id.values() if o["state"] in (NOTPAY, USERPAYING)),
                   default=0)

    # -- merchants' terms (docs/products.md, "Merchants and fees")

    def set_merchants(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, MERCHANT_FIELDS, self._set_merchant)]

    def _set_merchant(self, e, ts):
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
        if e["merchant_id"] == 0:
            return R.id_must_not_be_zero
        if e["ledger"] == 0:
            return R.ledger_must_not_be_zero
        if e["fee_bps"] > FEE_BPS_MAX:
            return R.fee_rate_out_of_range
        merchant = self.accounts_by_id.get(e["merchant_id"])
        if merchant is None:
            return R.merchant_not_found
        fee = self.accounts_by_id.get(e["fee_account_id"])
        if fee is None:
            return R.fee_account_not_found
        if e["fee_account_id"] == e["merchant_id"]:
            return R.accounts_must_be_different
        settlement = None
        if e["settlement_account_id"]:
            settlement = self.accounts_by_id.get(e["settlement_account_id"])
            if settlement is None:
                return R.settlement_account_not_found
            if e["settlement_account_id"] == e["merchant_id"]:
                return R.accounts_must_be_different
        if merchant["ledger"] != e["ledger"] or fee["ledger"] != e["ledger"] or (
                settlement is not None and settlement["ledger"] != e["ledger"]):
            return R.currency_mismatch
        x = self.merchants_by_id.get(e["merchant_id"])
        if x is not None:
            if dict(e, timestamp=x["timestamp"]) == x:
                return R.exists
        elif len(self.merchants_by_id) >= self.merchants_max:
            return R.merchants_limit_reached
        self.merchants_by_id[e["merchant_id"]] = dict(e, timestamp=ts)
        return R.ok

    def lookup_merchants(self, ids):
        return [dict(self.merchants_by_id[i]) for i in ids if i in self.merchants_by_id]

    # -- refunds (docs/products.md, "Refunds")

    def refund_orders(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, REFUND_FIELDS, self._refund)]

    def _refund(self, e, ts):
        if e["flags"] & EVENT_FLAG_FORBIDDEN:
            return R.forbidden
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"] or e["fee_refunded"] or e["payer_id"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
        if e["id"] == 0:
            return R.id_must_not_be_zero
        if e["id"] == U128:
            return R.id_must_not_be_int_max
        if e["amount"] == 0:
            return R.amount_must_not_be_zero
        if not out_trade_no_valid(e["out_refund_no"]):
            return R.out_refund_no_invalid
        if e["order_id"] == 0:
            return R.id_must_not_be_zero
        o = self.orders_by_id.get(e["order_id"])
        if o is None:
            return R.order_not_found
        if e["merchant_id"] != o["merchant_id"]:
            return R.merchant_mismatch
        if e["id"] != refund_id(e["order_id"], e["out_refund_no"]):
            return R.id_mismatch
        x = self.refunds_by_id.get(e["id"])
        if x is not None:
            return R.exists if (x["amount"], x["ledger"]) == (e["amount"], e["ledger"]) \
                else R.exists_with_different_fields
        if o["state"] not in (SUCCESS, REFUND):
            return R.order_not_paid
        if e["ledger"] != o["ledger"]:
            return R.currency_mismatch
        if ts - o["paid_at"] >= REFUND_WINDOW_S * NS_PER_S:
            return R.refund_window_closed
        if o["refund_count"] >= REFUNDS_PER_ORDER_MAX:
            return R.refunds_per_order_limit_reached
        if e["amount"] > o["amount"] - o["refunded"]:
            return R.exceeds_paid_amount
        if len(self.refunds_by_id) >= self.refunds_max:
            return R.refunds_limit_reached
        fee_back = (o["fee"] * (o["refunded"] + e["amount"]) // o["amount"]
                    - o["fee"] * o["refunded"] // o["amount"]) if o["fee"] else 0
        legs = [self._leg(leg_id(e["id"], OP_REFUND_ORDERS, 0), o["merchant_id"], o["payer_id"], e["amount"],
                          o["ledger"], TRANSFER_CODE_ORDER_REFUND, o["id"])]
        if fee_back:
            legs.append(self._leg(leg_id(e["id"], OP_REFUND_ORDERS, 1), self.order_fee_account[o["id"]],
                                  o["merchant_id"], fee_back, o["ledger"], TRANSFER_CODE_ORDER_FEE_REFUND, o["id"]))
        r = self._chain(legs, ts)
        if r != R.ok:
            return r
        self.refunds_by_id[e["id"]] = dict(e, fee_refunded=fee_back, payer_id=o["payer_id"], timestamp=ts)
        o["refunded"] += e["amount"]
        o["refund_count"] += 1
        if o["refunded"] == o["amount"]:
            o["state"] = REFUND
        return R.ok

    def lookup_refunds(self, ids):
        return [dict(self.refunds_by_id[i]) for i in ids if i in self.refunds_by_id]

    # -- payment codes (docs/products.md, "Payment codes (built)")

    def issue_codes(self, events, now_ns):
        """One ``{"result", "code"}`` per event (the CODE_ISSUED reply)."""
        return self._run_orders(events, now_ns, CODE_ISSUE_FIELDS, self._issue_code)

    def charge_codes(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, CODE_CHARGE_FIELDS, self._charge_code)]

    def confirm_charges(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, CODE_CONFIRM_FIELDS, self._confirm_charge)]

    def _issue_code(self, e, ts):
        def reply(r, code=0):
            return {"result": int(r), "code": code}
        r = _prologue(e)
        if r:
            return reply(r)
        if e["request_id"] == 0:
            return reply(R.id_must_not_be_zero)
        if e["ledger"] == 0:
            return reply(R.ledger_must_not_be_zero)
        wallet = self.accounts_by_id.get(e["wallet_id"])
        if wallet is None:
            return reply(R.payer_not_found)
        if e["ledger"] != wallet["ledger"]:
            return reply(R.currency_mismatch)
        code = code_of(self.secret, e["wallet_id"], e["request_id"])
        limit = e["no_password_limit"] or NO_PASSWORD_LIMIT_DEFAULT
        free = e["free_payments_per_day"] or FREE_PAYMENTS_PER_DAY_DEFAULT
        c = self.codes_by_id.get(code)
        if c is not None:
            if (c["wallet_id"], c["request_id"]) != (e["wallet_id"], e["request_id"]):
                return reply(R.code_collision)
            if (c["no_password_limit"], c["free_payments_per_day"], c["ledger"]) != (limit, free, e["ledger"]):
                return reply(R.exists_with_different_fields)
            return reply(R.exists, code)
        live = [x for x in self.codes_by_id.values() if x["state"] == CODE_LIVE]
        open_max = self.codes_max - min(BATCH_EVENTS_MAX, self.codes_max // 2)
        if len(live) >= open_max or len(self.codes_by_id) >= self.codes_max:
            return reply(R.codes_limit_reached)
        for x in live:
            if x["wallet_id"] == e["wallet_id"]:   # one live code per wallet
                x["state"] = CODE_REPLACED
                x["ended_at"] = ts
        self.codes_by_id[code] = {
            "id": code, "wallet_id": e["wallet_id"], "request_id": e["request_id"], "order_id": 0,
            "no_password_limit": limit, "expires_at": ts + CODE_VALID_S * NS_PER_S, "ended_at": 0,
            "free_payments_per_day": free, "ledger": e["ledger"], "state": CODE_LIVE, "reserved": 0,
            "timestamp": ts}
        return reply(R.ok, code)

    def payments_today(self, wallet_id, ts):
        day, count = self.code_payments.get(wallet_id, (None, 0))
        return count if day == ts // DAY_NS else 0

    def _count_payment(self, wallet_id, ts):
        self.code_payments[wallet_id] = (ts // DAY_NS, self.payments_today(wallet_id, ts) + 1)

    def _charge_code(self, e, ts):
        r = _prologue(e) or _keyed_checks(e, "order_id", "amount", "out_trade_no")
        if r:
            return r
        if not code_valid(e["code"]):
            return R.code_invalid
        merchant = self.accounts_by_id.get(e["merchant_id"])
        if merchant is None:
            return R.merchant_not_found
        if e["ledger"] != merchant["ledger"]:
            return R.currency_mismatch
        if e["order_id"] != order_id(e["merchant_id"], e["out_trade_no"]):
            return R.id_mismatch
        o = self.orders_by_id.get(e["order_id"])
        if o is not None:
            # (The description code too, as create_orders compares it: docs/products.md names
            # merchant, code, amount and ledger only.)
            if (o["kind"], o["merchant_id"], o["token"], o["amount"], o["ledger"], o["description_code"]) != (
                    ORDER_KIND_CODE, e["merchant_id"], code_token(e["code"]), e["amount"], e["ledger"],
                    e["description_code"]):
                return R.exists_with_different_fields
            if o["state"] in (SUCCESS, REFUND):
                return R.exists
            if o["state"] == USERPAYING:   # (its time up, the hold is gone: the next batch start closes it)
                return R.order_expired if o["expires_at"] <= ts else R.user_paying
            return R.order_expired if o["close_reason"] in (CLOSE_EXPIRED, CLOSE_TIMEOUT) else R.order_closed
        c = self.codes_by_id.get(e["code"])
        if c is None:
            return R.code_not_found
        if c["state"] == CODE_CHARGED:
            return R.code_used
        if c["state"] == CODE_EXPIRED or c["expires_at"] <= ts:
            return R.code_expired
        if c["state"] == CODE_REPLACED:
            return R.code_replaced
        wallet = self.accounts_by_id[c["wallet_id"]]
        if wallet["ledger"] != e["ledger"]:
            return R.currency_mismatch
        if c["wallet_id"] == e["merchant_id"]:
            return R.accounts_must_be_different
        step_up = (e["amount"] > c["no_password_limit"]
                   or self.payments_today(c["wallet_id"], ts) >= c["free_payments_per_day"])
        # A held charge is an open order (at most open_max); one paid at once needs only a slot.
        if (step_up and self._orders_full()) or len(self.orders_by_id) >= self.orders_max:
            return R.orders_limit_reached
        payment = leg_id(e["order_id"], OP_CHARGE_CODES, 0)
        fee = 0
        if step_up:
            legs = [self._leg(payment, c["wallet_id"], e["merchant_id"], e["amount"], e["ledger"],
                              TRANSFER_CODE_ORDER_PAYMENT, e["order_id"], T_PENDING, CHARGE_HOLD_S)]
        else:
            legs = [self._leg(payment, c["wallet_id"], e["merchant_id"], e["amount"], e["ledger"],
                              TRANSFER_CODE_ORDER_PAYMENT, e["order_id"])]
            terms = self.merchants_by_id.get(e["merchant_id"])
            fee = fee_of(e["amount"], terms["fee_bps"]) if terms else 0
            if fee:
                legs.append(self._leg(leg_id(e["order_id"], OP_CHARGE_CODES, 1), e["merchant_id"],
                                      terms["fee_account_id"], fee, e["ledger"], TRANSFER_CODE_ORDER_FEE, e["order_id"]))
        r = self._chain(legs, ts)
        if r != R.ok:
            return r   # the code stays live
        self.orders_by_id[e["order_id"]] = {
            "id": e["order_id"], "merchant_id": e["merchant_id"], "payer_id": c["wallet_id"], "amount": e["amount"],
            "refunded": 0, "expires_at": ts + CHARGE_HOLD_S * NS_PER_S if step_up else ts,
            "paid_at": 0 if step_up else ts, "closed_at": 0, "token": code_token(e["code"]),
            "state": USERPAYING if step_up else SUCCESS, "close_reason": 0, "refund_count": 0,
            "kind": ORDER_KIND_CODE, "reserved_a": 0, "ledger": e["ledger"], "description_code": e["description_code"],
            "fee": fee, "timestamp": ts}
        if fee:
            self.order_fee_account[e["order_id"]] = terms["fee_account_id"]
        c["state"] = CODE_CHARGED
        c["order_id"] = e["order_id"]
        c["ended_at"] = ts
        if step_up:
            return R.user_paying
        self._count_payment(c["wallet_id"], ts)
        return R.ok

    def _confirm_charge(self, e, ts):
        decline = bool(e["flags"] & CONFIRM_DECLINE)
        if e["flags"] & EVENT_FLAG_FORBIDDEN:
            return R.forbidden
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"]:
            return R.reserved_field
        if e["flags"] & ~CONFIRM_DECLINE:
            return R.reserved_flag
        if e["order_id"] == 0:
            return R.id_must_not_be_zero
        o = self.orders_by_id.get(e["order_id"])
        if o is None:
            return R.order_not_found
        if o["kind"] != ORDER_KIND_CODE:
            return R.order_not_user_paying
        if e["wallet_id"] != o["payer_id"]:
            return R.payer_mismatch
        if o["state"] in (SUCCESS, REFUND):
            return R.order_paid if decline else R.exists
        if o["state"] == CLOSED:
            if decline and o["close_reason"] == CLOSE_DECLINED:
                return R.exists
            return R.order_expired if o["close_reason"] in (CLOSE_EXPIRED, CLOSE_TIMEOUT) else R.order_closed
        if o["expires_at"] <= ts:   # held past its 45 s, not swept yet (its batch's base was before)
            return R.order_expired
        payment = leg_id(o["id"], OP_CHARGE_CODES, 0)
        if decline:
            r = self._chain([self._resolve_leg(leg_id(o["id"], OP_CONFIRM_CHARGES, 0), payment, False)], ts)
            if r != R.ok:
                return r
            o["state"] = CLOSED
            o["close_reason"] = CLOSE_DECLINED
            o["closed_at"] = ts
            return R.ok
        terms = self.merchants_by_id.get(o["merchant_id"])
        fee = fee_of(o["amount"], terms["fee_bps"]) if terms else 0
        legs = [self._resolve_leg(leg_id(o["id"], OP_CONFIRM_CHARGES, 0), payment, True)]
        if fee:
            legs.append(self._leg(leg_id(o["id"], OP_CONFIRM_CHARGES, 1), o["merchant_id"], terms["fee_account_id"],
                                  fee, o["ledger"], TRANSFER_CODE_ORDER_FEE, o["id"]))
        r = self._chain(legs, ts)
        if r != R.ok:
            return r
        o["state"] = SUCCESS
        o["paid_at"] = ts
        o["fee"] = fee
        if fee:
            self.order_fee_account[o["id"]] = terms["fee_account_id"]
        self._count_payment(o["payer_id"], ts)
        return R.ok

    def lookup_codes(self, ids):
        return [dict(self.codes_by_id[i]) for i in ids if i in self.codes_by_id]

    def codes(self):
        return [dict(c) for c in self.codes_by_id.values()]

    def next_code_expiry_ns(self):
        """The earliest ``expires_at`` of a LIVE code; 0 if none."""
        return min((c["expires_at"] for c in self.codes_by_id.values() if c["state"] == CODE_LIVE), default=0)

    # -- red envelopes (docs/products.md "Red envelopes")

    def set_limits(self, events, now_ns):
        """Only the envelopes' and the stocks' limits are modelled: the other fields must be 0
        (unchanged)."""
        return [int(r) for r in self._run_orders(events, now_ns, LIMITS_FIELDS, self._set_limits)]

    def _set_limits(self, e, ts):
        if any(e[name] for name in ("accounts", "pending", "merchants", "orders_open", "codes_live")):
            raise NotImplementedError("the model's set_limits knows the envelopes' and the stocks' limits only")
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"] or e["reserved_a"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
        if (e["envelopes_open"] > self.envelopes_pinned_max or e["envelope_total"] > ENVELOPE_TOTAL_LIMIT_MAX
                or e["stocks_open"] > self.stocks_pinned_max):
            return R.limit_out_of_range
        if e["envelopes_open"]:
            self.envelopes_open_max = e["envelopes_open"]
        if e["envelope_total"]:
            self.envelope_total_max = e["envelope_total"]
        if e["stocks_open"]:
            self.stocks_open_max = e["stocks_open"]
        return R.ok

    def send_envelopes(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, ENVELOPE_SEND_FIELDS, self._send_envelope)]

    def claim_envelopes(self, events, now_ns):
        """One ``{"result", "position", "amount"}`` per event (the ENVELOPE_CLAIMED reply)."""
        return self._run_orders(events, now_ns, ENVELOPE_CLAIM_FIELDS, self._claim_envelope)

    def _envelopes_open(self):
        return [p for p in self.envelopes_by_id.values() if p["state"] == ENVELOPE_OPEN]

    def _send_envelope(self, e, ts):
        r = _prologue(e) or _keyed_checks(e, "id", "total", "out_envelope_no")
        if r:
            return r
        if e["id"] != envelope_id(e["sender_id"], e["out_envelope_no"]):
            return R.id_mismatch
        span = (e["expire_after_s"] or ENVELOPE_EXPIRE_AFTER_MAX_S) * NS_PER_S
        p = self.envelopes_by_id.get(e["id"])
        if p is not None:   # a retry (the id names the sender and the number)
            same = ((p["sender_id"], p["escrow_id"], p["total"], p["count"], p["ledger"], p["description_code"])
                    == (e["sender_id"], e["escrow_id"], e["total"], e["count"], e["ledger"], e["description_code"])
                    and p["expires_at"] - p["timestamp"] == span)
            return R.exists if same else R.exists_with_different_fields
        if e["total"] > self.envelope_total_max:
            return R.envelope_total_out_of_range
        if not 1 <= e["count"] <= min(ENVELOPE_COUNT_MAX, e["total"]):
            return R.envelope_count_out_of_range
        if e["expire_after_s"] > ENVELOPE_EXPIRE_AFTER_MAX_S:
            return R.expire_after_out_of_range
        sender = self.accounts_by_id.get(e["sender_id"])
        if sender is None:
            return R.payer_not_found
        if sender["ledger"] != e["ledger"]:
            return R.currency_mismatch
        if sender["code"] in PRODUCT_ACCOUNT_CODES:
            return R.product_account
        escrow = self.accounts_by_id.get(e["escrow_id"])
        if (escrow is None or e["escrow_id"] == e["sender_id"] or escrow["ledger"] != e["ledger"]
                or escrow["code"] != ACCOUNT_CODE_ESCROW):
            return R.escrow_invalid
        if len(self._envelopes_open()) >= self.envelopes_open_max or len(self.envelopes_by_id) >= self.envelopes_max:
            return R.envelopes_limit_reached
        r = self._chain([self._leg(leg_id(e["id"], OP_SEND_ENVELOPES, 0), e["sender_id"], e["escrow_id"], e["total"],
                                   e["ledger"], TRANSFER_CODE_ENVELOPE_FUND, e["id"])], ts)
        if r != R.ok:
            return r
        self.envelopes_by_id[e["id"]] = {
            "id": e["id"], "sender_id": e["sender_id"], "escrow_id": e["escrow_id"], "total": e["total"],
            "remaining": e["total"], "expires_at": ts + span, "ended_at": 0, "refunded": 0, "count": e["count"],
            "claimed": 0, "ledger": e["ledger"], "description_code": e["description_code"], "state": ENVELOPE_OPEN,
            "reserved_a": 0, "refund_result": 0, "reserved": 0, "timestamp": ts}
        return R.ok

    def _claim_envelope(self, e, ts):
        def reply(r, position=0, amount=0):
            return {"result": int(r), "position": position, "amount": amount}
        r = _prologue(e)
        if r:
            return reply(r)
        if e["envelope_id"] == 0:
            return reply(R.id_must_not_be_zero)
        p = self.envelopes_by_id.get(e["envelope_id"])
        if p is None:
            return reply(R.envelope_not_found)
        claimer = self.accounts_by_id.get(e["claimer_id"])
        if claimer is None:
            return reply(R.claimer_not_found)
        if claimer["ledger"] != p["ledger"]:
            return reply(R.currency_mismatch)
        if claimer["code"] in PRODUCT_ACCOUNT_CODES:
            return reply(R.product_account)
        cid = claim_id(p["id"], e["claimer_id"])
        c = self.claims_by_id.get(cid)
        if c is not None:   # a retry: the same place and share
            return reply(R.exists, c["position"], c["amount"])
        if p["state"] == ENVELOPE_EMPTY:
            return reply(R.envelope_empty)
        if p["state"] != ENVELOPE_OPEN or p["expires_at"] <= ts:
            return reply(R.envelope_expired)
        if len(self.claims_by_id) >= self.claims_max:
            return reply(R.claims_limit_reached)
        position = p["claimed"]
        amount = envelope_share(self.secret, p["id"], e["claimer_id"], position, p["remaining"],
                                p["count"] - position)
        transfer = claim_transfer_id(p["id"], position)
        r = self._chain([self._leg(transfer, p["escrow_id"], e["claimer_id"], amount, p["ledger"],
                                   TRANSFER_CODE_ENVELOPE_CLAIM, p["id"])], ts)
        if r != R.ok:
            return reply(r)   # no place taken
        self.claims_by_id[cid] = {"id": cid, "envelope_id": p["id"], "claimer_id": e["claimer_id"],
                                  "transfer_id": transfer, "amount": amount, "position": position,
                                  "ledger": p["ledger"], "reserved": 0, "timestamp": ts}
        p["claimed"] += 1
        p["remaining"] -= amount
        if p["claimed"] == p["count"]:
            p["state"] = ENVELOPE_EMPTY
            p["ended_at"] = ts
        return reply(R.ok, position, amount)

    def envelopes_due(self, t):
        """The open packets expired by ``t`` that a batch starting at ``t`` refunds: soonest
        first (ties by send time), at most ENVELOPE_REFUNDS_PER_BATCH_MAX."""
        due = sorted((p for p in self._envelopes_open() if p["expires_at"] <= t),
                     key=lambda p: (p["expires_at"], p["timestamp"]))
        return due[:ENVELOPE_REFUNDS_PER_BATCH_MAX]

    def _refund_due(self, due, first):
        """The remainder of each packet escrow -> sender, the k-th at ``first + k``: REFUNDED; a
        leg the ledger refuses leaves it REFUND_FAILED (its result kept, the money in escrow); a
        full transfer table stops the refunds there (the rest stay due for the next batch)."""
        for k, p in enumerate(due):
            ts = first + k
            r = self._chain([self._leg(leg_id(p["id"], OP_SEND_ENVELOPES, 1), p["escrow_id"], p["sender_id"],
                                       p["remaining"], p["ledger"], TRANSFER_CODE_ENVELOPE_REFUND, p["id"])], ts)
            if r == R.transfers_limit_reached:
                return
            if r == R.ok:
                p["refunded"], p["remaining"], p["state"] = p["remaining"], 0, ENVELOPE_REFUNDED
            else:
                p["refund_result"], p["state"] = int(r), ENVELOPE_REFUND_FAILED
            p["ended_at"] = ts

    def lookup_envelopes(self, ids):
        return [dict(self.envelopes_by_id[i]) for i in ids if i in self.envelopes_by_id]

    def lookup_envelope_claims(self, ids):
        return [dict(self.claims_by_id[i]) for i in ids if i in self.claims_by_id]

    def envelopes(self):
        return [dict(p) for p in self.envelopes_by_id.values()]

    def envelope_claims(self):
        return [dict(c) for c in self.claims_by_id.values()]

    def next_envelope_expiry_ns(self):
        """The earliest ``expires_at`` of an open packet; 0 if none."""
        return min((p["expires_at"] for p in self._envelopes_open()), default=0)

    # -- coupons (docs/products.md "Coupons and the card pack")

    def create_stocks(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, STOCK_CREATE_FIELDS, self._create_stock)]

    def grant_coupons(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, COUPON_GRANT_FIELDS, self._grant_coupon)]

    def pay_with_coupon(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, COUPON_PAY_FIELDS, self._pay_with_coupon)]

    def _stocks_active(self):
        return [s for s in self.stocks_by_id.values() if s["state"] == STOCK_ACTIVE]

    def _create_stock(self, e, ts):
        r = _prologue(e) or _keyed_checks(e, "id", "face_value", "out_stock_no")
        if r:
            return r
        if e["id"] != stock_id(e["merchant_id"], e["out_stock_no"]):
            return R.id_mismatch
        per_user_max = e["per_user_max"] or 1
        s = self.stocks_by_id.get(e["id"])
        if s is not None:   # a retry (the id names the merchant and the number)
            same = ((s["budget_account_id"], s["face_value"], s["min_spend"], s["total_count"], s["per_user_max"],
                     s["coupon_valid_s"], s["ledger"], s["ends_at"] - s["timestamp"])
                    == (e["budget_account_id"], e["face_value"], e["min_spend"], e["total_count"], per_user_max,
                        e["coupon_valid_s"], e["ledger"], e["valid_for_s"] * NS_PER_S))
            return R.exists if same else R.exists_with_different_fields
        if not 1 <= e["total_count"] <= STOCK_COUNT_MAX:
            return R.stock_count_out_of_range
        if e["min_spend"] < e["face_value"]:
            return R.min_spend_below_face
        if e["face_value"] * e["total_count"] > STOCK_BUDGET_MAX:
            return R.face_value_out_of_range
        if not 1 <= e["valid_for_s"] <= STOCK_VALID_MAX_S or e["coupon_valid_s"] > e["valid_for_s"]:
            return R.expire_after_out_of_range
        merchant = self.accounts_by_id.get(e["merchant_id"])
        if merchant is None:
            return R.merchant_not_found
        if merchant["ledger"] != e["ledger"]:
            return R.currency_mismatch
        if merchant["code"] in PRODUCT_ACCOUNT_CODES:
            return R.product_account
        budget = self.accounts_by_id.get(e["budget_account_id"])
        if (budget is None or e["budget_account_id"] == e["merchant_id"] or budget["ledger"] != e["ledger"]
                or budget["code"] != ACCOUNT_CODE_COUPON_BUDGET):
            return R.budget_account_invalid
        if len(self._stocks_active()) >= self.stocks_open_max or len(self.stocks_by_id) >= self.stocks_max:
            return R.stocks_limit_reached
        r = self._chain([self._leg(leg_id(e["id"], OP_CREATE_STOCKS, 0), e["merchant_id"], e["budget_account_id"],
                                   e["face_value"] * e["total_count"], e["ledger"], TRANSFER_CODE_COUPON, e["id"])], ts)
        if r != R.ok:
            return r
        self.stocks_by_id[e["id"]] = {
            "id": e["id"], "merchant_id": e["merchant_id"], "budget_account_id": e["budget_account_id"],
            "face_value": e["face_value"], "min_spend": e["min_spend"], "ends_at": ts + e["valid_for_s"] * NS_PER_S,
            "total_count": e["total_count"], "per_user_max": per_user_max, "coupon_valid_s": e["coupon_valid_s"],
            "ledger": e["ledger"], "issued_scan": 0, "issued_api": 0, "issued_pay_and_get": 0, "redeemed": 0,
            "receivers": 0, "repeat_buyers": 0, "state": STOCK_ACTIVE, "reserved_a": 0, "end_result": 0,
            "reserved": 0, "timestamp": ts}
        return R.ok

    def _grant_coupon(self, e, ts):
        r = _prologue(dict(e, reserved=e["reserved"] or e["reserved_a"]))
        if r:
            return r
        if e["id"] == 0 or e["stock_id"] == 0 or e["request_id"] == 0:
            return R.id_must_not_be_zero
        if e["channel"] not in (CHANNEL_SCAN, CHANNEL_API):
            return R.channel_invalid
        if e["id"] != coupon_id(e["stock_id"], e["user_id"], e["request_id"]):
            return R.id_mismatch
        c = self.coupons_by_id.get(e["id"])
        if c is not None:   # a retry: the id holds the stock, the user and the request
            return R.exists if c["channel"] == e["channel"] else R.exists_with_different_fields
        s = self.stocks_by_id.get(e["stock_id"])
        if s is None:
            return R.stock_not_found
        if e["merchant_id"] != s["merchant_id"]:
            return R.merchant_mismatch
        user = self.accounts_by_id.get(e["user_id"])
        if user is None:
            return R.user_not_found
        if user["ledger"] != s["ledger"]:
            return R.currency_mismatch
        if user["code"] in PRODUCT_ACCOUNT_CODES:
            return R.product_account
        if s["ends_at"] <= ts:   # by the clock (the batch's start may not have ended it yet)
            return R.stock_ended
        if s["issued_scan"] + s["issued_api"] + s["issued_pay_and_get"] >= s["total_count"]:
            return R.stock_exhausted
        hid = holding_id(e["stock_id"], e["user_id"])
        h = self.holdings_by_id.get(hid)
        if h is not None and h["received"] >= s["per_user_max"]:
            return R.per_user_limit_reached
        if len(self.coupons_by_id) >= self.coupons_max or (h is None and len(self.holdings_by_id) >= self.holdings_max):
            return R.coupons_limit_reached
        expires_at = s["ends_at"]
        if s["coupon_valid_s"]:
            expires_at = min(expires_at, ts + s["coupon_valid_s"] * NS_PER_S)
        self.coupons_by_id[e["id"]] = {
            "id": e["id"], "stock_id": e["stock_id"], "user_id": e["user_id"], "request_id": e["request_id"],
            "payment_id": 0, "expires_at": expires_at, "redeemed_at": 0, "price": 0, "channel": e["channel"],
            "state": COUPON_AVAILABLE, "reserved": 0, "timestamp": ts}
        if h is None:
            self.holdings_by_id[hid] = {"id": hid, "stock_id": e["stock_id"], "user_id": e["user_id"], "received": 1,
                                        "redeemed": 0, "reserved": 0, "timestamp": ts}
            s["receivers"] += 1
        else:
            h["received"] += 1
        s["issued_scan" if e["channel"] == CHANNEL_SCAN else "issued_api"] += 1
        return R.ok

    def _pay_with_coupon(self, e, ts):
        r = _prologue(e)
        if r:
            return r
        if e["coupon_id"] == 0 or e["request_id"] == 0:
            return R.id_must_not_be_zero
        if e["price"] == 0:
            return R.amount_must_not_be_zero
        if e["ledger"] == 0:
            return R.ledger_must_not_be_zero
        payment = coupon_payment_id(e["payer_id"], e["request_id"])
        x = self.coupon_payments_by_id.get(payment)
        if x is not None:   # a retry of the request, whatever coupon it names now
            fields = ("coupon_id", "price", "merchant_id", "stock_id", "ledger")
            return R.exists if all(x[f] == e[f] for f in fields) else R.exists_with_different_fields
        c = self.coupons_by_id.get(e["coupon_id"])
        if c is None:
            return R.coupon_not_found
        if c["user_id"] != e["payer_id"] or c["stock_id"] != e["stock_id"]:
            return R.coupon_mismatch
        s = self.stocks_by_id.get(e["stock_id"])
        if s is None:
            return R.stock_not_found
        if e["merchant_id"] != s["merchant_id"]:
            return R.merchant_mismatch
        if c["state"] == COUPON_REDEEMED:   # by another request
            return R.coupon_redeemed
        if c["expires_at"] <= ts or s["state"] != STOCK_ACTIVE:
            return R.coupon_expired
        if e["price"] < s["min_spend"]:
            return R.below_min_spend
        if e["ledger"] != s["ledger"] or self.accounts_by_id[e["payer_id"]]["ledger"] != s["ledger"]:
            return R.currency_mismatch
        legs, offsets = [], []
        if e["price"] > s["face_value"]:   # the user's part (none when the face pays it all)
            legs.append(self._leg(leg_id(payment, OP_PAY_WITH_COUPON, 0), e["payer_id"], s["merchant_id"],
                                  e["price"] - s["face_value"], s["ledger"], TRANSFER_CODE_PAYMENT, c["id"]))
            offsets.append(0)
        legs.append(self._leg(leg_id(payment, OP_PAY_WITH_COUPON, 1), s["budget_account_id"], s["merchant_id"],
                              s["face_value"], s["ledger"], TRANSFER_CODE_COUPON, c["id"]))
        offsets.append(1)
        r = self._chain(legs, ts, offsets)
        if r != R.ok:
            return r
        self.coupon_payments_by_id[payment] = {
            "id": payment, "payer_id": e["payer_id"], "merchant_id": e["merchant_id"], "coupon_id": e["coupon_id"],
            "stock_id": e["stock_id"], "request_id": e["request_id"], "price": e["price"],
            "face_value": s["face_value"], "ledger": e["ledger"], "reserved": 0, "timestamp": ts}
        c.update(state=COUPON_REDEEMED, payment_id=payment, price=e["price"], redeemed_at=ts)
        h = self.holdings_by_id[holding_id(s["id"], e["payer_id"])]
        h["redeemed"] += 1
        s["redeemed"] += 1
        if h["redeemed"] == 2:
            s["repeat_buyers"] += 1
        if s["redeemed"] == s["total_count"]:
            s["state"] = STOCK_ENDED   # the whole budget is used: nothing returns
        return R.ok

    def stocks_due(self, t):
        """The active stocks ended by ``t`` that a batch starting at ``t`` ends: soonest first
        (ties by creation), at most STOCK_ENDS_PER_BATCH_MAX."""
        due = sorted((s for s in self._stocks_active() if s["ends_at"] <= t),
                     key=lambda s: (s["ends_at"], s["timestamp"]))
        return due[:STOCK_ENDS_PER_BATCH_MAX]

    def _end_stocks(self, due, first):
        """What the redemptions left of each budget returns budget -> merchant, the k-th at
        ``first + k``: ENDED; a leg the ledger refuses leaves its result in ``end_result`` (the
        money in the budget account); a full transfer table stops there (the rest stay due)."""
        for k, s in enumerate(due):
            rest = s["face_value"] * (s["total_count"] - s["redeemed"])
            r = self._chain([self._leg(leg_id(s["id"], OP_CREATE_STOCKS, 1), s["budget_account_id"], s["merchant_id"],
                                       rest, s["ledger"], TRANSFER_CODE_COUPON, s["id"])], first + k)
            if r == R.transfers_limit_reached:
                return
            if r != R.ok:
                s["end_result"] = int(r)
            s["state"] = STOCK_ENDED

    def lookup_stocks(self, ids):
        return [dict(self.stocks_by_id[i]) for i in ids if i in self.stocks_by_id]

    def lookup_coupons(self, ids):
        return [dict(self.coupons_by_id[i]) for i in ids if i in self.coupons_by_id]

    def lookup_holdings(self, ids):
        return [dict(self.holdings_by_id[i]) for i in ids if i in self.holdings_by_id]

    def next_stock_end_ns(self):
        """The earliest ``ends_at`` of an active stock; 0 if none."""
        return min((s["ends_at"] for s in self._stocks_active()), default=0)

    # -- cross-border payments (docs/products.md "Cross-border payments")

    def set_rates(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, FX_RATE_FIELDS, self._set_rate)]

    def pay_cross_border(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, FX_PAY_FIELDS, self._pay_cross_border)]

    def refund_cross_border(self, events, now_ns):
        return [int(r) for r in self._run_orders(events, now_ns, FX_REFUND_FIELDS, self._refund_cross_border)]

    def quote(self, from_ledger, to_ledger, merchant_amounts):
        """What payers pay in ``from_ledger`` for ``merchant_amounts`` at the rate in force: one
        ``{"result", "rate_version", "merchant_amount", "payer_amount", "rate_ppb"}`` each (a
        query: nothing changes, no timestamp)."""
        rate = self.rates.get((from_ledger, to_ledger))
        out = []
        for b in merchant_amounts:
            row = {"result": 0, "rate_version": 0, "merchant_amount": b, "payer_amount": 0, "rate_ppb": 0}
            if rate is None:
                row["result"] = int(R.rate_not_found)
            elif b == 0:
                row["result"] = int(R.amount_must_not_be_zero)
            elif fx_payer_amount(b, rate["rate_ppb"]) > U64:
                row["result"] = int(R.rate_invalid)   # the payer's amount overflows
            else:
                row.update(payer_amount=fx_payer_amount(b, rate["rate_ppb"]), rate_ppb=rate["rate_ppb"],
                           rate_version=rate["version"])
            out.append(row)
        return out

    def _set_rate(self, e, ts):
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"] or e["reserved_a"] or e["version"] or e["updated_at"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
        if e["from_ledger"] == 0 or e["to_ledger"] == 0:
            return R.ledger_must_not_be_zero
        if e["from_ledger"] == e["to_ledger"] or not 1 <= e["rate_ppb"] <= RATE_PPB_MAX:
            return R.rate_invalid
        pools = (self.accounts_by_id.get(e["pool_from_id"]), self.accounts_by_id.get(e["pool_to_id"]))
        if any(p is None or p["code"] != ACCOUNT_CODE_FX_POOL for p in pools) or (
                pools[0]["ledger"], pools[1]["ledger"]) != (e["from_ledger"], e["to_ledger"]):
            return R.pool_invalid
        rate = self.rates.get((e["from_ledger"], e["to_ledger"]))
        if rate is not None:
            if (rate["pool_from_id"], rate["pool_to_id"]) != (e["pool_from_id"], e["pool_to_id"]):
                return R.pool_invalid   # a pair's pools are fixed at its first rate
            rate.update(rate_ppb=e["rate_ppb"], version=rate["version"] + 1, updated_at=ts)
            return R.ok
        if len(self.rates) >= RATES_MAX:
            return R.rates_limit_reached
        self.rates[(e["from_ledger"], e["to_ledger"])] = dict(e, version=1, updated_at=ts, timestamp=ts)
        return R.ok

    def _pay_cross_border(self, e, ts):
        r = _prologue(e)
        if r:
            return r
        if e["request_id"] == 0:
            return R.id_must_not_be_zero
        if e["merchant_amount"] == 0 or e["payer_amount"] == 0:
            return R.amount_must_not_be_zero
        if e["payer_ledger"] == 0 or e["merchant_ledger"] == 0:
            return R.ledger_must_not_be_zero
        pid = fx_payment_id(e["payer_id"], e["request_id"])
        p = self.fx_payments_by_id.get(pid)
        if p is not None:   # a retry
            fields = ("merchant_id", "merchant_amount", "payer_amount", "payer_ledger", "merchant_ledger", "rate_version")
            return R.exists if all(p[f] == e[f] for f in fields) else R.exists_with_different_fields
        rate = self.rates.get((e["payer_ledger"], e["merchant_ledger"]))
        if rate is None:
            return R.rate_not_found
        if rate["version"] != e["rate_version"]:
            return R.rate_changed
        if fx_payer_amount(e["merchant_amount"], rate["rate_ppb"]) > U64:
            return R.rate_invalid   # the payer's amount would not fit 64 bits (as the quote says)
        if fx_payer_amount(e["merchant_amount"], rate["rate_ppb"]) != e["payer_amount"]:
            return R.amount_mismatch
        payer = self.accounts_by_id.get(e["payer_id"])
        if payer is None:
            return R.payer_not_found
        merchant = self.accounts_by_id.get(e["merchant_id"])
        if merchant is None:
            return R.merchant_not_found
        if payer["ledger"] != e["payer_ledger"] or merchant["ledger"] != e["merchant_ledger"]:
            return R.currency_mismatch
        if payer["code"] in PRODUCT_ACCOUNT_CODES or merchant["code"] in PRODUCT_ACCOUNT_CODES:
            return R.product_account
        if len(self.fx_payments_by_id) >= self.fx_payments_max:
            return R.fx_payments_limit_reached
        r = self._chain([self._leg(leg_id(pid, OP_PAY_CROSS_BORDER, 0), e["payer_id"], rate["pool_from_id"],
                                   e["payer_amount"], e["payer_ledger"], TRANSFER_CODE_FX, pid),
                         self._leg(leg_id(pid, OP_PAY_CROSS_BORDER, 1), rate["pool_to_id"], e["merchant_id"],
                                   e["merchant_amount"], e["merchant_ledger"], TRANSFER_CODE_FX, pid)], ts)
        if r != R.ok:
            return r
        self.fx_payments_by_id[pid] = {
            "id": pid, "payer_id": e["payer_id"], "merchant_id": e["merchant_id"], "request_id": e["request_id"],
            "payer_amount": e["payer_amount"], "merchant_amount": e["merchant_amount"], "payer_refunded": 0,
            "merchant_refunded": 0, "rate_ppb": rate["rate_ppb"], "payer_ledger": e["payer_ledger"],
            "merchant_ledger": e["merchant_ledger"], "rate_version": rate["version"], "refund_count": 0,
            "reserved": 0, "timestamp": ts}
        return R.ok

    def _refund_cross_border(self, e, ts):
        r = _prologue(dict(e, reserved=e["reserved"] or e["payer_amount"]))   # (the engine fills payer_amount)
        if r:
            return r
        if e["id"] == 0 or e["request_id"] == 0:
            return R.id_must_not_be_zero
        if e["merchant_amount"] == 0:
            return R.amount_must_not_be_zero
        if e["id"] != fx_refund_id(e["payment_id"], e["request_id"]):
            return R.id_mismatch
        p = self.fx_payments_by_id.get(e["payment_id"])
        if p is None:
            return R.fx_payment_not_found
        if e["merchant_id"] != p["merchant_id"]:
            return R.merchant_mismatch
        x = self.fx_refunds_by_id.get(e["id"])
        if x is not None:   # a retry
            return R.exists if x["merchant_amount"] == e["merchant_amount"] else R.exists_with_different_fields
        if e["merchant_amount"] > p["merchant_amount"] - p["merchant_refunded"]:
            return R.exceeds_paid_amount
        if p["refund_count"] >= REFUNDS_PER_ORDER_MAX:
            return R.refunds_per_order_limit_reached
        if len(self.fx_refunds_by_id) >= self.fx_refunds_max:
            return R.refunds_limit_reached
        back = fx_refund_share(p["payer_amount"], p["merchant_amount"], p["payer_refunded"], p["merchant_refunded"],
                               e["merchant_amount"])
        rate = self.rates[(p["payer_ledger"], p["merchant_ledger"])]
        legs = [self._leg(leg_id(e["id"], OP_REFUND_CROSS_BORDER, 0), p["merchant_id"], rate["pool_to_id"],
                          e["merchant_amount"], p["merchant_ledger"], TRANSFER_CODE_FX, p["id"])]
        if back:
            legs.append(self._leg(leg_id(e["id"], OP_REFUND_CROSS_BORDER, 1), rate["pool_from_id"], p["payer_id"], back,
                                  p["payer_ledger"], TRANSFER_CODE_FX, p["id"]))
        r = self._chain(legs, ts)
        if r != R.ok:
            return r
        self.fx_refunds_by_id[e["id"]] = dict(e, payer_amount=back, timestamp=ts)
        p["merchant_refunded"] += e["merchant_amount"]
        p["payer_refunded"] += back
        p["refund_count"] += 1
        return R.ok

    def lookup_rates(self, pairs):
        """The rates of these (from ledger, to ledger) pairs, those set, in order."""
        return [dict(self.rates[p]) for p in pairs if p in self.rates]

    def lookup_fx_payments(self, ids):
        return [dict(self.fx_payments_by_id[i]) for i in ids if i in self.fx_payments_by_id]

    def lookup_fx_refunds(self, ids):
        return [dict(self.fx_refunds_by_id[i]) for i in ids if i in self.fx_refunds_by_id]

    # -- reads

    def lookup_accounts(self, ids):
        return [dict(self.accounts_by_id[i]) for i in ids if i in self.accounts_by_id]

    def lookup_transfers(self, ids):
        return [dict(self.transfers_by_id[i]) for i in ids if i in self.transfers_by_id]

    def get_account_transfers(self, account_id, timestamp_min=0, timestamp_max=0, limit=8190, debits=True,
                              credits=True, reverse=False):
        if not 0 <= limit <= 8190:
            raise ValueError("limit must be <= 8190")
        hi = timestamp_max or U64
        found = [dict(t) for t in self.transfers_by_id.values()
                 if ((debits and t["debit_account_id"] == account_id) or (credits and t["credit_account_id"] == account_id))
                 and timestamp_min <= t["timestamp"] <= hi]
        found.sort(key=lambda t: t["timestamp"], reverse=reverse)
        return found[:limit]

    def accounts(self):
        return [dict(a) for a in self.accounts_by_id.values()]

    def features(self):
        """The activity features, each list indexed by account creation order (as ``core``'s arrays)."""
        return self.features_by_index()

    def features_by_index(self):
        ids = list(self.accounts_by_id)
        return {
            "spend_minor": [self.accounts_by_id[i]["debits_posted"] for i in ids],
            "receive_minor": [self.accounts_by_id[i]["credits_posted"] for i in ids],
            "code_counts": [list(self.activity[i]["code_counts"]) for i in ids],
            "first_activity_ts": [self.activity[i]["first"] for i in ids],
            "last_activity_ts": [self.activity[i]["last"] for i in ids],
        }


def _prologue(e):
    """The checks a product event begins with, in this order (as core/product.pxd's): the
    server's forbidden mark, a timestamp the engine sets, reserved bytes, then any flag; None if
    it passes them."""
    if e["flags"] & EVENT_FLAG_FORBIDDEN:
        return R.forbidden
    if e["timestamp"]:
        return R.timestamp_must_be_zero
    if e["reserved"]:
        return R.reserved_field
    if e["flags"]:
        return R.reserved_flag
    return None


def _keyed_checks(e, id_name, amount_name, number_name):
    """The next checks of an event whose id derives from a caller's number (an order, a charge, a
    packet), in this order: the id neither 0 nor all ones, an amount, a ledger, the number's
    characters; None if it passes them."""
    if e[id_name] == 0:
        return R.id_must_not_be_zero
    if e[id_name] == U128:
        return R.id_must_not_be_int_max
    if e[amount_name] == 0:
        return R.amount_must_not_be_zero
    if e["ledger"] == 0:
        return R.ledger_must_not_be_zero
    if not out_trade_no_valid(e[number_name]):
        return R.out_trade_no_invalid
    return None


def _window():
    return {"day": 0, "day_spent": 0, "year": 0, "year_spent": 0, "tier_set_at": 0}


def year_of_day(day):
    """The calendar year (UTC) of an engine day (days since 1970-01-01)."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).year


def _fill(event, fields):
    unknown = set(event) - set(fields)
    if unknown:
        raise KeyError(f"unknown fields {unknown}")
    return {name: int(event.get(name, 0)) for name in fields}


def _fill_bytes(event, fields):
    """An order event: ints default to 0, byte strings (``BYTES_FIELDS``) are NUL-padded to their size."""
    unknown = set(event) - set(fields)
    if unknown:
        raise KeyError(f"unknown fields {unknown}")
    out = {}
    for name in fields:
        if name in BYTES_FIELDS:
            value = bytes(event.get(name, b""))
            if len(value) > BYTES_FIELDS[name]:
                raise ValueError(f"{name} is longer than {BYTES_FIELDS[name]} bytes")
            out[name] = value.ljust(BYTES_FIELDS[name], b"\0")
        else:
            out[name] = int(event.get(name, 0))
    return out


# -- ids and tokens (docs/products.md, "Ids and tokens"; the leg id as the core's author defines it)

def order_id(merchant_id, out_trade_no):
    """The first 16 bytes of SHA-256(b"ordr" + merchant_id (16 LE) + out_trade_no (32, NUL-padded)), LE."""
    data = b"ordr" + merchant_id.to_bytes(16, "little") + bytes(out_trade_no).ljust(OUT_TRADE_NO_SIZE, b"\0")
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "little")


def token_of(secret, oid):
    """The first 10 bytes of HMAC-SHA256(secret, order id as 16 bytes LE)."""
    return hmac.new(bytes(secret), oid.to_bytes(16, "little"), hashlib.sha256).digest()[:TOKEN_SIZE]


def refund_id(oid, out_refund_no):
    """The first 16 bytes of SHA-256(b"rfnd" + order id (16 LE) + out_refund_no (32, NUL-padded)), LE."""
    data = b"rfnd" + oid.to_bytes(16, "little") + bytes(out_refund_no).ljust(OUT_TRADE_NO_SIZE, b"\0")
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "little")


def fee_of(amount, fee_bps):
    """floor(amount * fee_bps / 10,000)."""
    return amount * fee_bps // FEE_BPS_MAX


def code_of(secret, wallet_id, request_id):
    """A payment code: d = HMAC-SHA256(secret, b"code" + wallet id (16 LE) + request id (16 LE));
    (10 + u64(d[0:8]) mod 6) * 10**16 + u64(d[8:16]) mod 10**16: 18 digits, the prefix 10..15."""
    d = hmac.new(bytes(secret), b"code" + wallet_id.to_bytes(16, "little") + request_id.to_bytes(16, "little"),
                 hashlib.sha256).digest()
    prefix = 10 + int.from_bytes(d[0:8], "little") % 6
    return prefix * 10**16 + int.from_bytes(d[8:16], "little") % 10**16


def code_valid(code):
    """18 decimal digits whose first two are 10..15 (a 128-bit id: its high half is 0)."""
    return CODE_MIN <= code < CODE_END


def code_token(code):
    """A code order's token: the code as a u64 LE, then two zero bytes."""
    return (code & U64).to_bytes(8, "little") + bytes(2)


def out_trade_no_valid(raw):
    """1..32 allowed characters, then only NULs."""
    raw = bytes(raw).ljust(OUT_TRADE_NO_SIZE, b"\0")
    n = len(raw.rstrip(b"\0"))
    return n >= 1 and all(c in OUT_TRADE_NO_CHARS for c in raw[:n])


_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z):
    """The splitmix64 finalizer."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & U64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & U64
    return z ^ (z >> 31)


def leg_id(event_id, operation, leg):
    """The id of leg ``leg`` of the event ``event_id`` of ``operation``."""
    lo, hi = event_id & U64, event_id >> 64
    salt = ((operation << 8) | leg) * _GOLDEN & U64
    new_lo = _mix64(lo ^ salt) ^ hi
    new_hi = (_mix64(hi ^ _mix64(new_lo ^ salt)) & ((1 << 48) - 1)) | (LEG_ID_TAG << 48)
    return (new_hi << 64) | new_lo


# -- red envelopes' ids and shares (docs/products.md "Red envelopes")

def envelope_id(sender_id, out_envelope_no):
    """The first 16 bytes of SHA-256(b"rpkt" + sender id (16 LE) + out_envelope_no (32, NUL-padded)), LE."""
    data = b"rpkt" + sender_id.to_bytes(16, "little") + bytes(out_envelope_no).ljust(OUT_TRADE_NO_SIZE, b"\0")
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "little")


def claim_id(envelope, claimer_id):
    """The first 16 bytes of SHA-256(b"clam" + packet id (16 LE) + claimer id (16 LE) + 16 zero bytes), LE."""
    data = b"clam" + envelope.to_bytes(16, "little") + claimer_id.to_bytes(16, "little") + bytes(16)
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "little")


def claim_transfer_id(envelope, position):
    """The claim leg at ``position``: the leg id of the packet id with its high half xor the position."""
    return leg_id(envelope ^ (position << 64), OP_CLAIM_ENVELOPES, 0)


def share_max(remaining, left):
    """The largest share a claim may draw with ``left`` >= 2 shares to go: min(2R / n, R - (n - 1))."""
    return min(2 * remaining // left, remaining - (left - 1))


def envelope_share(secret, envelope, claimer_id, position, remaining, left):
    """The double-mean share: the last claimer takes the rest; otherwise 1 + floor(h * m / 2^64),
    h = the first 8 bytes (LE) of HMAC-SHA256(secret, b"shar" + packet (16 LE) + claimer (16 LE)
    + position (u32 LE))."""
    if left == 1:
        return remaining
    message = (b"shar" + envelope.to_bytes(16, "little") + claimer_id.to_bytes(16, "little")
               + position.to_bytes(4, "little"))
    h = int.from_bytes(hmac.new(bytes(secret), message, hashlib.sha256).digest()[:8], "little")
    return 1 + (h * share_max(remaining, left) >> 64)


# -- coupons' ids (docs/products.md "Coupons and the card pack")

def _pair_digest(domain, key, first, second=0):
    """The first 16 bytes of SHA-256(domain + key + first + second, 16 bytes LE each), LE."""
    data = domain + key.to_bytes(16, "little") + first.to_bytes(16, "little") + second.to_bytes(16, "little")
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "little")


def stock_id(merchant_id, out_stock_no):
    """The first 16 bytes of SHA-256(b"stck" + merchant id (16 LE) + out_stock_no (32, NUL-padded)), LE."""
    data = b"stck" + merchant_id.to_bytes(16, "little") + bytes(out_stock_no).ljust(OUT_TRADE_NO_SIZE, b"\0")
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "little")


def coupon_id(stock, user_id, request_id):
    """SHA-256(b"cpon" + stock id + user id + request id)[:16]."""
    return _pair_digest(b"cpon", stock, user_id, request_id)


def holding_id(stock, user_id):
    """SHA-256(b"hold" + stock id + user id + 16 zero bytes)[:16]."""
    return _pair_digest(b"hold", stock, user_id)


def coupon_payment_id(payer_id, request_id):
    """SHA-256(b"cpay" + payer id + request id + 16 zero bytes)[:16]."""
    return _pair_digest(b"cpay", payer_id, request_id)


# -- cross-border payments' ids and amounts (docs/products.md "Cross-border payments")

def fx_payment_id(payer_id, request_id):
    """SHA-256(b"fxpy" + payer id + request id + 16 zero bytes)[:16]."""
    return _pair_digest(b"fxpy", payer_id, request_id)


def fx_refund_id(payment_id, request_id):
    """SHA-256(b"fxrf" + payment id + request id + 16 zero bytes)[:16]."""
    return _pair_digest(b"fxrf", payment_id, request_id)


def fx_payer_amount(merchant_amount, rate_ppb):
    """What the payer pays for ``merchant_amount`` at ``rate_ppb``: ceil(b x 10^9 / rate) (the
    payer pays the rounding), exact (it may exceed 64 bits)."""
    return -(-merchant_amount * PPB // rate_ppb)


def fx_refund_share(payer_amount, merchant_amount, payer_refunded, merchant_refunded, refund):
    """What a refund of ``refund`` returns to the payer at the locked rate: floor(b' x a / b),
    the last refund (the merchant's amount all refunded) the rest of ``payer_amount``."""
    if merchant_refunded + refund == merchant_amount:
        return payer_amount - payer_refunded
    return refund * payer_amount // merchant_amount
