"""A pure-Python reference model of the ledger, written from docs/data-model.md alone.

Slow and plain on purpose: dicts and ints, one check after another in the documented order,
a deep copy of the whole state to undo a failed linked chain. The property tests run random
batches through this model and the compiled core and require identical results and state.
It shares no code with the core (not even the result-code numbers).

Orders (merchant-presented QR: ``create_orders``, ``pay_orders``, ``close_orders``,
``lookup_orders``, expiry by the engine clock) follow docs/products.md, "Orders: the reference":
an order is a dict, its pay leg goes through ``_transfer`` like any client transfer, ids and
tokens are computed here with hashlib/hmac.
"""

from __future__ import annotations

import copy
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
ORDER_CREATE_FIELDS = ("id", "merchant_id", "amount", "out_trade_no", "expire_after_s", "ledger",
                       "description_code", "flags", "reserved", "timestamp")
ORDER_PAY_FIELDS = ("order_id", "payer_id", "amount", "token", "reserved_a", "ledger", "flags", "reserved",
                    "timestamp")
ORDER_CLOSE_FIELDS = ("order_id", "merchant_id", "flags", "reserved", "timestamp")
ORDER_FIELDS = ("id", "merchant_id", "payer_id", "amount", "refunded", "expires_at", "paid_at", "closed_at", "token",
                "state", "close_reason", "refund_count", "kind", "reserved_a", "ledger", "description_code", "fee",
                "timestamp")
OUT_TRADE_NO_SIZE, TOKEN_SIZE = 32, 10
BYTES_FIELDS = {"out_trade_no": OUT_TRADE_NO_SIZE, "token": TOKEN_SIZE}
OUT_TRADE_NO_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-|*@.")
NOTPAY, SUCCESS, CLOSED, REFUND = 1, 2, 3, 4
CLOSE_BY_MERCHANT, CLOSE_EXPIRED = 1, 2
EXPIRE_AFTER_DEFAULT_S, EXPIRE_AFTER_MIN_S, EXPIRE_AFTER_MAX_S = 7_200, 60, 7_776_000
LEGS_MAX = 4
BATCH_EVENTS_MAX = 8_190
TRANSFER_CODE_ORDER_PAYMENT = 0xF001

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
user_paying order_not_user_paying payer_mismatch
""".split())])
#: The server's mark on an event its client's role may not make (engine/roles.py).
EVENT_FLAG_FORBIDDEN = 1 << 15

#: Orders a batch's start expires at most (core/constants.py): the log holds their ids.
EXPIRIES_PER_BATCH_MAX = 8190

#: Transfer ids with these top 16 bits are the products' legs': a client's may not use them.
LEG_ID_TAG = 0xFFFE


class ModelLedger:
    def __init__(self, accounts_max: int, transfers_max: int, orders_max: int = 0, secret: bytes = bytes(32)):
        self.accounts_max = accounts_max
        self.transfers_max = transfers_max
        self.orders_max = orders_max
        self.secret = bytes(secret)
        self.orders_by_id: dict[int, dict] = {}        # insertion order = creation order
        self.accounts_by_id: dict[int, dict] = {}      # insertion order = creation order
        self.transfers_by_id: dict[int, dict] = {}     # insertion order = timestamp order
        self.state: dict[int, str] = {}                # pending transfer id -> pending/posted/voided/expired
        self.activity: dict[int, dict] = {}            # account id -> features
        self.last = 0

    # -- batches

    def _begin(self, now_ns, count, per_event=1):
        """The batch's base timestamp; ``per_event`` timestamps are reserved for each event
        (1 for the ledger's events, ``LEGS_MAX`` for a product's). Expires what is due by then."""
        base = max(now_ns, self.last + 1)
        if count:
            self.last = base + per_event * count - 1
        self.expire_orders(base)
        for tid, state in self.state.items():
            t = self.transfers_by_id[tid]
            if state == "pending" and t["timeout"] and t["timestamp"] + t["timeout"] * NS_PER_S <= base:
                self.state[tid] = "expired"
                self.accounts_by_id[t["debit_account_id"]]["debits_pending"] -= t["amount"]
                self.accounts_by_id[t["credit_account_id"]]["credits_pending"] -= t["amount"]
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
                saved = copy.deepcopy((self.accounts_by_id, self.transfers_by_id, self.state, self.activity))
                for k in range(i, last + 1):
                    if k == len(events) - 1 and events[k]["flags"] & linked_flag:
                        r = R.linked_event_chain_open
                    else:
                        r = one(events[k], base + k)
                    results[k] = r
                    if r != R.ok:
                        self.accounts_by_id, self.transfers_by_id, self.state, self.activity = saved
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
            return R.id_reserved
        if bin(f & (T_PENDING | T_POST | T_VOID)).count("1") > 1 or (
                f & (T_BAL_DEBIT | T_BAL_CREDIT) and f & (T_POST | T_VOID)):
            return R.flags_are_mutually_exclusive
        if f & (T_POST | T_VOID):
            return self._post_or_void(e, ts)
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
        dr["debits_" + kind] += amount
        cr["credits_" + kind] += amount
        self.transfers_by_id[e["id"]] = dict(e, amount=amount, timestamp=ts)
        if f & T_PENDING:
            self.state[e["id"]] = "pending"
            self._activity(dr["id"], cr["id"], ts, None)
        else:
            self._activity(dr["id"], cr["id"], ts, e["code"])
        return R.ok

    def _post_or_void(self, e, ts):
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
        self.transfers_by_id[e["id"]] = dict(e, debit_account_id=p["debit_account_id"],
                                             credit_account_id=p["credit_account_id"], ledger=p["ledger"],
                                             code=p["code"], amount=amount, timestamp=ts)
        self._activity(dr["id"], cr["id"], ts, p["code"] if post else None)
        return R.ok

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
               OP_CLOSE_ORDERS: self.close_orders}[operation]
        return run(events, now_ns)

    def expire_orders(self, t):
        """Close every NOTPAY order with ``expires_at <= t`` (by the clock), in (expires_at, timestamp)
        order, at most EXPIRIES_PER_BATCH_MAX (the rest at the next batches); returns their ids.
        Every batch does this at its base timestamp before its events."""
        due = sorted((o for o in self.orders_by_id.values() if o["state"] == NOTPAY and o["expires_at"] <= t),
                     key=lambda o: (o["expires_at"], o["timestamp"]))[:EXPIRIES_PER_BATCH_MAX]
        for o in due:
            o["state"] = CLOSED
            o["close_reason"] = CLOSE_EXPIRED
            o["closed_at"] = o["expires_at"]
        return [o["id"] for o in due]

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
        # A bare table (no store to evict to) holds orders_max orders; unpaid ones at most
        # open_max, the rest of the table kept for the orders a batch names (docs/tables.md).
        open_max = self.orders_max - min(BATCH_EVENTS_MAX, self.orders_max // 2)
        unpaid = sum(1 for o in self.orders_by_id.values() if o["state"] == NOTPAY)
        if unpaid >= open_max or len(self.orders_by_id) >= self.orders_max:
            return reply(R.orders_limit_reached)
        token = token_of(self.secret, e["id"])
        self.orders_by_id[e["id"]] = {
            "id": e["id"], "merchant_id": e["merchant_id"], "payer_id": 0, "amount": e["amount"], "refunded": 0,
            "expires_at": ts + span, "paid_at": 0, "closed_at": 0, "token": token, "state": NOTPAY,
            "close_reason": 0, "refund_count": 0, "kind": 0, "reserved_a": 0, "ledger": e["ledger"],
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
        if e["token"] != o["token"]:
            return R.order_token_invalid
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
        leg = _fill({"id": leg_id(o["id"], OP_PAY_ORDERS, 0), "debit_account_id": e["payer_id"],
                     "credit_account_id": o["merchant_id"], "amount": o["amount"], "ledger": o["ledger"],
                     "code": TRANSFER_CODE_ORDER_PAYMENT, "user_data_128": o["id"], "flags": 0}, TRANSFER_FIELDS)
        r = self._transfer(leg, ts + 0, is_leg=True)  # leg 0
        if r != R.ok:
            return r
        o["state"] = SUCCESS
        o["payer_id"] = e["payer_id"]
        o["paid_at"] = ts
        return R.ok

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
        o["state"] = CLOSED
        o["close_reason"] = CLOSE_BY_MERCHANT
        o["closed_at"] = ts
        return R.ok

    def lookup_orders(self, ids):
        return [dict(self.orders_by_id[i]) for i in ids if i in self.orders_by_id]

    def orders(self):
        return [dict(o) for o in self.orders_by_id.values()]

    def next_order_expiry_ns(self):
        """The earliest ``expires_at`` of a NOTPAY order; 0 if none."""
        return min((o["expires_at"] for o in self.orders_by_id.values() if o["state"] == NOTPAY), default=0)

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
