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

Wallet tiers (``set_wallet_tiers``, ``set_tier_limits``, ``lookup_wallet_limits``; every
transfer and leg debiting a tiered wallet checked against its per-payment, daily and yearly
limits, every credit to one against its balance limit, holds counted at creation and given back
on void, expiry or a smaller post) follow docs/products.md "Wallet limits and real-name tiers
(built)": windows are dicts, the calendar year comes from ``datetime``.
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
BYTES_FIELDS = {"out_trade_no": OUT_TRADE_NO_SIZE, "token": TOKEN_SIZE, "out_refund_no": OUT_TRADE_NO_SIZE}
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
                 codes_max: int = 1 << 17, refunds_max: int = 1 << 16, merchants_max: int = 1 << 17):
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
        self.tiers: dict[int, int] = {}                # account id -> tier (absent: 0)
        self.windows: dict[int, dict] = {}             # account id -> day, day_spent, year, year_spent, tier_set_at
        self.counted: set[int] = set()                 # pending transfers counted in their wallet's windows
        self.tier_rules: dict[tuple, tuple] = {(0, t): v for t, v in TIER_LIMITS_DEFAULT.items()}
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
        (1 for the ledger's events, ``LEGS_MAX`` for a product's). Expires what is due by then."""
        base = max(now_ns, self.last + 1)
        if count:
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
               OP_CREATE_ORDERS: self.create_orders, OP_PAY_ORDERS: self.pay_orders,
               OP_CLOSE_ORDERS: self.close_orders, OP_SET_MERCHANTS: self.set_merchants,
               OP_REFUND_ORDERS: self.refund_orders, OP_ISSUE_CODES: self.issue_codes,
               OP_CHARGE_CODES: self.charge_codes, OP_CONFIRM_CHARGES: self.confirm_charges,
               OP_SET_WALLET_TIERS: self.set_wallet_tiers, OP_SET_TIER_LIMITS: self.set_tier_limits}[operation]
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
        if e["flags"] & EVENT_FLAG_FORBIDDEN:
            return reply(R.forbidden)
        if e["timestamp"]:
            return reply(R.timestamp_must_be_zero)
        if e["reserved"]:
            return reply(R.reserved_field)
        if e["flags"]:
            return reply(R.reserved_flag)
        if e["id"] == 0:
            return reply(R.id_must_not_be_zero)
        if e["id"] == U128:
            return reply(R.id_must_not_be_int_max)
        if e["amount"] == 0:
            return reply(R.amount_must_not_be_zero)
        if e["ledger"] == 0:
            return reply(R.ledger_must_not_be_zero)
        if not out_trade_no_valid(e["out_trade_no"]):
            return reply(R.out_trade_no_invalid)
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

    def _chain(self, legs, ts):
        """Legs ``j`` at ``ts + j``; the first failure undoes the ones before and is the result."""
        if len(legs) == 1:   # a failing transfer changes nothing: no copy to undo
            return self._transfer(legs[0], ts, is_leg=True)
        saved = self._save()
        for j, leg in enumerate(legs):
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
        if e["flags"] & EVENT_FLAG_FORBIDDEN:
            return R.forbidden
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
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
        if e["flags"] & EVENT_FLAG_FORBIDDEN:
            return reply(R.forbidden)
        if e["timestamp"]:
            return reply(R.timestamp_must_be_zero)
        if e["reserved"]:
            return reply(R.reserved_field)
        if e["flags"]:
            return reply(R.reserved_flag)
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
        if e["flags"] & EVENT_FLAG_FORBIDDEN:
            return R.forbidden
        if e["timestamp"]:
            return R.timestamp_must_be_zero
        if e["reserved"]:
            return R.reserved_field
        if e["flags"]:
            return R.reserved_flag
        if e["order_id"] == 0:
            return R.id_must_not_be_zero
        if e["order_id"] == U128:
            return R.id_must_not_be_int_max
        if e["amount"] == 0:
            return R.amount_must_not_be_zero
        if e["ledger"] == 0:
            return R.ledger_must_not_be_zero
        if not out_trade_no_valid(e["out_trade_no"]):
            return R.out_trade_no_invalid
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
