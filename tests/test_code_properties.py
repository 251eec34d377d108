"""Properties of payment codes: the compiled core (``core.machine.Machine`` with its codes component,
``core/codes.pyx``) behaves exactly like the reference model (tests/model.py, written from
docs/products.md "Payment codes (built)").

Random mixes of batches — ``issue_codes`` (a few wallets and request ids, retries with the same
and with other fields, unknown wallets, the wrong currency), ``charge_codes`` (the codes issued,
codes never issued, codes that are not 18 digits with a prefix 10-15, unknown merchants, the
wrong currency, an ``out_trade_no`` charged again with other fields, amounts above the user's
no-password limit and wallets past their free payments of the day, so that charges are held),
``confirm_charges`` (confirms and declines, by the payer and by another wallet), ``close_orders``
(the merchant revoking a held charge), ``pay_orders`` on a code's order (refused), QR orders,
``refund_orders`` of paid charges, top-ups and client transfers that try to post or void a held
leg, and an engine clock that steps 0..120 s (across the 45 s hold, the 60 s code life and a UTC
day boundary, and to the nanoseconds around a held charge's or a live code's expiry) — run
through both; after every batch the replies (the code in ``issue_codes``' reply too), every
account, order, code, refund and transfer must be identical. On the core's state, after every
batch: money is conserved per currency, no wallet goes below its limit, a code is charged at
most once and a charged code's order exists, and a held charge never outlives its 45 s.
Separately: a retried batch answers ``exists``/``user_paying`` and changes nothing, and bad input
answers its code and changes nothing. The two CNY wallets with money are tiered (small limits), so
charges, held charges (counted, given back on a decline, a revoke or the timeout), QR payments
and top-ups meet their limits; their windows must match the model's.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import core
import core.machine
from tests.model import (CHARGE_HOLD_S, CLOSE_DECLINED, CLOSE_REVOKED, CLOSE_TIMEOUT, CLOSED, CODE_CHARGED,
                         CODE_EXPIRED, CODE_LIVE, CODE_REPLACED, CODE_VALID_S, DAY_NS, ORDER_KIND_CODE, REFUND,
                         SUCCESS, U64, U128, USERPAYING, ModelLedger, R, code_of, code_token, code_valid, leg_id,
                         order_id, refund_id, token_of)
from tests.test_order_properties import _apply

NS = 1_000_000_000
# Ten minutes before a UTC day boundary: a mix's clock often crosses it (the day's free payments).
START_NS = (1_700_000_000 * NS // DAY_NS + 1) * DAY_NS - 600 * NS
SECRET = b"tally property tests: codes 32b!"
assert len(SECRET) == 32

# Operation numbers (docs/products.md; core/operations.py).
CREATE_ACCOUNTS, CREATE_TRANSFERS = 1, 2
CREATE_ORDERS, PAY_ORDERS, CLOSE_ORDERS, SET_MERCHANTS, REFUND_ORDERS = 100, 101, 102, 104, 106
ISSUE_CODES, CHARGE_CODES, CONFIRM_CHARGES = 112, 113, 114
SET_WALLET_TIERS, SET_TIER_LIMITS = 7, 9
NAMES = {CREATE_ACCOUNTS: "create_accounts", CREATE_TRANSFERS: "create_transfers", CREATE_ORDERS: "create_orders",
         PAY_ORDERS: "pay_orders", CLOSE_ORDERS: "close_orders", SET_MERCHANTS: "set_merchants",
         REFUND_ORDERS: "refund_orders", ISSUE_CODES: "issue_codes", CHARGE_CODES: "charge_codes",
         CONFIRM_CHARGES: "confirm_charges", SET_WALLET_TIERS: "set_wallet_tiers", SET_TIER_LIMITS: "set_tier_limits"}
ORDER_PAYMENT = 0xF001

CNY, USD = 156, 840
FUNDING_CNY, FUNDING_USD, WALLET, POOR_WALLET, EMPTY_WALLET, USD_WALLET = 1, 2, 3, 4, 5, 6
MERCHANT, USD_MERCHANT, STRICT_MERCHANT, FEES, CREDIT_WALLET, CLOSED_WALLET = 7, 8, 9, 10, 11, 12
UNKNOWN = 99
LEDGER_OF = {FUNDING_CNY: CNY, FUNDING_USD: USD, WALLET: CNY, POOR_WALLET: CNY, EMPTY_WALLET: CNY, USD_WALLET: USD,
             MERCHANT: CNY, USD_MERCHANT: USD, STRICT_MERCHANT: CNY, FEES: CNY, CREDIT_WALLET: CNY,
             CLOSED_WALLET: CNY, UNKNOWN: CNY}
ACCOUNT_IDS = list(range(1, 13))
ACCOUNTS_MAX = 12
SETUP_ACCOUNTS = [
    {"id": FUNDING_CNY, "ledger": CNY, "code": 3},                 # funding cards: may go negative
    {"id": FUNDING_USD, "ledger": USD, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},          # wallets: debits_must_not_exceed_credits
    {"id": POOR_WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": EMPTY_WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": USD_WALLET, "ledger": USD, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": USD_MERCHANT, "ledger": USD, "code": 2},
    {"id": STRICT_MERCHANT, "ledger": CNY, "code": 2, "flags": 2},  # refunds only from what it holds
    {"id": FEES, "ledger": CNY, "code": 5},
    {"id": CREDIT_WALLET, "ledger": CNY, "code": 1},               # no limit: pays anything
    {"id": CLOSED_WALLET, "ledger": CNY, "code": 1, "flags": 2 | 8},  # codes issued, never paid
]
SETUP_TRANSFERS = [
    {"id": 1001, "debit_account_id": FUNDING_CNY, "credit_account_id": WALLET, "amount": 20_000, "ledger": CNY,
     "code": 4},
    {"id": 1002, "debit_account_id": FUNDING_CNY, "credit_account_id": POOR_WALLET, "amount": 300, "ledger": CNY,
     "code": 4},
    {"id": 1003, "debit_account_id": FUNDING_USD, "credit_account_id": USD_WALLET, "amount": 5_000, "ledger": USD,
     "code": 4},
]
SETUP_MERCHANTS = [
    {"merchant_id": MERCHANT, "fee_account_id": FEES, "fee_bps": 60, "ledger": CNY},
    {"merchant_id": STRICT_MERCHANT, "fee_account_id": FEES, "fee_bps": 250, "ledger": CNY},
]
# Wallet tiers (docs/products.md "Wallet limits and real-name tiers (built)"): the two CNY wallets
# with money are tiered, with limits the charges and top-ups reach (held charges count and come back).
SETUP_TIER_LIMITS = [
    {"ledger": CNY, "tier": 1, "payment_limit": 800, "daily_limit": 1_000, "yearly_limit": 1_500, "balance_limit": 2_000},
    {"ledger": CNY, "tier": 2, "payment_limit": 6_000, "daily_limit": 8_000, "yearly_limit": 12_000,
     "balance_limit": 30_000},
]
SETUP_TIERS = [{"account_id": WALLET, "ledger": CNY, "tier": 2}, {"account_id": POOR_WALLET, "ledger": CNY, "tier": 1}]
SETUP = [(CREATE_ACCOUNTS, 0, SETUP_ACCOUNTS), (CREATE_TRANSFERS, 0, SETUP_TRANSFERS),
         (SET_MERCHANTS, 0, SETUP_MERCHANTS), (SET_TIER_LIMITS, 0, SETUP_TIER_LIMITS), (SET_WALLET_TIERS, 0, SETUP_TIERS)]
TOP_UP_IDS = list(range(2001, 2009))
TRANSFERS_MAX = 256
ORDERS_MAX = 32           # fewer than the keys: orders_limit_reached happens
CODES_MAX = 64

# Codes: (wallet, request id) pairs, each with its own step-up settings (a retry sends the same).
CODE_WALLETS = [WALLET, WALLET, POOR_WALLET, EMPTY_WALLET, USD_WALLET, CREDIT_WALLET, CLOSED_WALLET]
REQUESTS = [1, 2, 3, 4]
PAIRS = [(w, r) for w in sorted(set(CODE_WALLETS)) for r in REQUESTS]
LIMITS = [0, 1_000, 5_000, 500]
FREES = [0, 1, 2, 3]
LIMIT_OF = {pair: LIMITS[k % len(LIMITS)] for k, pair in enumerate(PAIRS)}
FREE_OF = {pair: FREES[(k // 2) % len(FREES)] for k, pair in enumerate(PAIRS)}
# The usual ones, by hand (0: the defaults, 300,000 minor units and 10 payments a day).
LIMIT_OF.update({(WALLET, 1): 1_000, (WALLET, 2): 0, (WALLET, 3): 5_000, (CREDIT_WALLET, 1): 0,
                 (CREDIT_WALLET, 2): 500, (CREDIT_WALLET, 3): 0, (CREDIT_WALLET, 4): 0})
FREE_OF.update({(WALLET, 1): 0, (WALLET, 2): 2, (WALLET, 3): 1, (CREDIT_WALLET, 1): 1,
                (CREDIT_WALLET, 2): 2, (CREDIT_WALLET, 3): 3, (CREDIT_WALLET, 4): 1})
CODE_OF = {pair: code_of(SECRET, *pair) for pair in PAIRS}
UNISSUED_CODES = [code_of(SECRET, WALLET, 77), 10 * 10**16, 16 * 10**16 - 1]   # valid digits, never issued
BAD_CODES = [0, 99, 10**17 - 1, 16 * 10**16, 10**18, U64, 1 << 64 | CODE_OF[(WALLET, 1)], U128]
assert all(code_valid(c) for c in CODE_OF.values()) and not any(code_valid(c) for c in BAD_CODES)

# Charges: merchant x out_trade_no keys, each with an amount (some above the no-password limits).
CHARGE_MERCHANTS = [MERCHANT, MERCHANT, STRICT_MERCHANT, USD_MERCHANT]
OUT_TRADE_NOS = [b"C-%d" % k for k in range(8)]
KEYS = [(m, n) for m in (MERCHANT, STRICT_MERCHANT, USD_MERCHANT) for n in OUT_TRADE_NOS]
AMOUNTS = [100, 700, 2_500, 900, 40, 6_000, 400_000, 1]
AMOUNT_OF = {key: AMOUNTS[k % len(AMOUNTS)] for k, key in enumerate(KEYS)}
QR_KEYS = [(MERCHANT, b"Q-0"), (MERCHANT, b"Q-1")]            # QR orders: a charge or confirm finds them
ORDER_IDS = [order_id(*key) for key in KEYS + QR_KEYS]
LEG_IDS = [leg_id(oid, op, j) for oid in ORDER_IDS for op, j in
           ((PAY_ORDERS, 0), (PAY_ORDERS, 1), (CLOSE_ORDERS, 0), (CHARGE_CODES, 0), (CHARGE_CODES, 1),
            (CONFIRM_CHARGES, 0), (CONFIRM_CHARGES, 1))]
OUT_REFUND_NOS = [b"R-1", b"R-2"]
REFUND_IDS = [refund_id(oid, n) for oid in ORDER_IDS for n in OUT_REFUND_NOS]
LOOKUP_CODES = list(CODE_OF.values()) + UNISSUED_CODES + [0, 99]
BYTES = ("out_trade_no", "token", "out_refund_no")


# ---------------------------------------------------------------- strategies

def _mostly(usual, unusual, percent_unusual=5):
    return st.integers(0, 99).flatmap(lambda roll: unusual if roll < percent_unusual else usual)


rare = st.integers(0, 99).map(lambda x: x < 4)
hot_pairs = _mostly(st.sampled_from([(WALLET, 1), (WALLET, 2), (CREDIT_WALLET, 1), (POOR_WALLET, 1)]),
                    st.sampled_from(PAIRS), 35)


@st.composite
def issue_events(draw):
    wallet, request = pair = draw(hot_pairs)
    event = {"wallet_id": wallet, "request_id": request, "no_password_limit": LIMIT_OF[pair],
             "free_payments_per_day": FREE_OF[pair], "ledger": LEDGER_OF[wallet]}
    if draw(rare):   # a retry with other settings
        event[draw(st.sampled_from(["no_password_limit", "free_payments_per_day"]))] = draw(
            st.sampled_from([1, 7, 300_000, 10]))
    if draw(rare):
        event["wallet_id"] = draw(st.sampled_from([UNKNOWN, 0, MERCHANT, USD_WALLET]))
    if draw(rare):
        event["request_id"] = 0
    if draw(rare):
        event["ledger"] = draw(st.sampled_from([0, USD if event["ledger"] == CNY else CNY]))
    if draw(rare):
        event[draw(st.sampled_from(["timestamp", "reserved", "flags"]))] = draw(st.sampled_from([1, 1 << 15]))
    return event


@st.composite
def charge_events(draw, live=False):
    merchant, number = key = (draw(st.sampled_from(CHARGE_MERCHANTS)), draw(st.sampled_from(OUT_TRADE_NOS)))
    pair = draw(hot_pairs)
    if merchant == USD_MERCHANT and draw(st.booleans()):
        pair = (USD_WALLET, draw(st.sampled_from(REQUESTS)))
    # Half the time a code live when the batch runs (("live", k): resolved then), else a pair's.
    code = draw(_mostly(st.one_of(st.just(CODE_OF[pair]), st.tuples(st.just("live"), st.integers(0, 7))),
                        st.sampled_from(UNISSUED_CODES + BAD_CODES), 6))
    if live and draw(st.integers(0, 9)) < 7:
        code = ("live", draw(st.integers(0, 7)))
    event = {"order_id": order_id(merchant, number), "merchant_id": merchant, "code": code,
             "amount": AMOUNT_OF[key], "out_trade_no": number, "ledger": LEDGER_OF[merchant],
             "description_code": draw(_mostly(st.just(3), st.just(4), 10))}
    if draw(rare):   # the same out_trade_no again with another amount
        event["amount"] = draw(st.sampled_from([AMOUNT_OF[key] + 1, U64, 0]))
    if draw(rare):   # a QR order's id (and out_trade_no)
        qr = draw(st.sampled_from(QR_KEYS))
        event.update(order_id=order_id(*qr), merchant_id=qr[0], out_trade_no=qr[1], ledger=CNY)
    if draw(rare):
        event["order_id"] = draw(st.sampled_from([0, U128, event["order_id"] ^ 1]))
    if draw(rare):
        event["merchant_id"] = draw(st.sampled_from([UNKNOWN, 0]))
        event["order_id"] = order_id(event["merchant_id"], number)
    if draw(rare):
        event["ledger"] = draw(st.sampled_from([0, USD if event["ledger"] == CNY else CNY]))
    if draw(rare):
        event["out_trade_no"] = draw(st.sampled_from([b"", b"a b", b"\xff"]))
        event["order_id"] = order_id(event["merchant_id"], event["out_trade_no"])
    if draw(rare):
        event[draw(st.sampled_from(["timestamp", "reserved", "flags"]))] = draw(st.sampled_from([1, 1 << 15]))
    return event


# Events that name the state as it is when the batch runs (a held order, a paid one, its payer)
# are drawn as choices, resolved against the model then: ("held", k) is the k-th held order.
targets = st.tuples(st.sampled_from(["held", "held", "held", "code", "paid", "any"]), st.integers(0, 7))


@st.composite
def confirm_events(draw):
    return ("confirm", draw(targets), draw(_mostly(st.just("payer"), st.sampled_from([WALLET, CREDIT_WALLET, 0]), 10)),
            draw(_mostly(st.sampled_from([0, 0, 1]), st.sampled_from([2, 3, 1 << 15]), 4)),
            draw(_mostly(st.just({}), st.sampled_from([{"timestamp": 1}, {"reserved": 1}, {"order_id": 0}]), 4)))


@st.composite
def close_events(draw):
    return ("close", draw(targets), draw(_mostly(st.just("merchant"), st.sampled_from([MERCHANT, USD_MERCHANT]), 10)))


@st.composite
def refund_events(draw):
    return ("refund", (draw(st.sampled_from(["paid", "paid", "code", "any"])), draw(st.integers(0, 7))),
            draw(st.sampled_from(OUT_REFUND_NOS)), draw(st.sampled_from(["all", "half", "one", "more"])),
            draw(_mostly(st.just({}), st.sampled_from([{"ledger": USD}, {"merchant_id": USD_MERCHANT},
                                                       {"reserved": 1}]), 5)))


@st.composite
def pay_events(draw):
    return ("pay", draw(targets), draw(st.sampled_from([WALLET, CREDIT_WALLET])))


@st.composite
def qr_events(draw):
    merchant, number = draw(st.sampled_from(QR_KEYS))
    return {"id": order_id(merchant, number), "merchant_id": merchant, "amount": 150, "out_trade_no": number,
            "ledger": CNY}


@st.composite
def transfer_events(draw):
    """Top-ups; rarely a client transfer that posts or voids a held leg, or takes a leg's id."""
    if draw(rare):
        return ("steal", draw(targets), draw(st.sampled_from([4, 8, 0])))
    return {"id": draw(st.sampled_from(TOP_UP_IDS)), "debit_account_id": FUNDING_CNY,
            "credit_account_id": draw(st.sampled_from([WALLET, POOR_WALLET, EMPTY_WALLET, STRICT_MERCHANT])),
            "amount": draw(st.sampled_from([50, 1_000, 5_000])), "ledger": CNY, "code": 4}


batch_kinds = st.one_of(
    st.tuples(st.just(ISSUE_CODES), st.lists(issue_events(), min_size=1, max_size=5)),
    st.tuples(st.just(ISSUE_CODES), st.lists(issue_events(), min_size=1, max_size=5)),
    st.tuples(st.just(CHARGE_CODES), st.lists(charge_events(), min_size=1, max_size=5)),
    st.tuples(st.just(CHARGE_CODES), st.lists(charge_events(), min_size=1, max_size=5)),
    st.tuples(st.just(CHARGE_CODES), st.lists(charge_events(), min_size=1, max_size=5)),
    st.tuples(st.just(CONFIRM_CHARGES), st.lists(confirm_events(), min_size=1, max_size=4)),
    st.tuples(st.just(CONFIRM_CHARGES), st.lists(confirm_events(), min_size=1, max_size=4)),
    st.tuples(st.just(CLOSE_ORDERS), st.lists(close_events(), min_size=1, max_size=3)),
    st.tuples(st.just(REFUND_ORDERS), st.lists(refund_events(), min_size=1, max_size=3)),
    st.tuples(st.just(PAY_ORDERS), st.lists(pay_events(), min_size=1, max_size=2)),
    st.tuples(st.just(CREATE_ORDERS), st.lists(qr_events(), min_size=1, max_size=2)),
    st.tuples(st.just(CREATE_TRANSFERS), st.lists(transfer_events(), min_size=1, max_size=3)),
    st.tuples(st.sampled_from([ISSUE_CODES, CHARGE_CODES, CONFIRM_CHARGES, CREATE_TRANSFERS]), st.just([])),
    st.tuples(st.just("again"), st.none()),   # the previous batch again: a client's retry
)
# Engine time per batch: 0..120 s (across the 45 s hold and the 60 s code life), now and then to
# the nanoseconds around a held charge's or a live code's expiry, or to the next UTC day.
S = NS
coarse_steps = st.one_of(st.sampled_from([0, 0, 1, S, S, 2 * S, 5 * S, 10 * S]),
                         st.sampled_from([0, 1, S, 3 * S, 15 * S, 44 * S, 45 * S, 46 * S, 59 * S, 60 * S, 61 * S,
                                          120 * S]),
                         st.integers(0, 120).map(lambda s: s * S))
small_steps = st.sampled_from([0, 0, 1, S, S, 2 * S, 5 * S, 10 * S])
time_steps = st.one_of(small_steps, small_steps, small_steps, coarse_steps, coarse_steps, coarse_steps,
                       st.tuples(st.sampled_from(["held", "live"]), st.integers(0, 3),
                                 st.sampled_from([-2, 0, 1, 2, 3, 4, 8])),
                       _mostly(st.just(0), st.just(("day",)), 10))
# A flow: codes issued, charged a moment later (live codes), then confirmed or declined, or not.
then = st.one_of(st.tuples(st.just(CONFIRM_CHARGES), st.lists(confirm_events(), min_size=1, max_size=3)),
                 st.tuples(st.just(CONFIRM_CHARGES), st.lists(confirm_events(), min_size=1, max_size=3)),
                 st.tuples(st.just(CLOSE_ORDERS), st.lists(close_events(), min_size=1, max_size=2)),
                 st.tuples(st.just(REFUND_ORDERS), st.lists(refund_events(), min_size=1, max_size=2)),
                 st.none())
flows = st.tuples(st.lists(issue_events(), min_size=1, max_size=3), small_steps,
                  st.lists(charge_events(live=True), min_size=1, max_size=4), time_steps, then).map(
    lambda f: [(ISSUE_CODES, 0, f[0]), (CHARGE_CODES, f[1], f[2])] + ([(f[4][0], f[3], f[4][1])] if f[4] else []))
singles = st.tuples(batch_kinds, time_steps).map(lambda t: [(t[0][0], t[1], t[0][1])])
mixes = st.lists(st.one_of(singles, singles, flows), min_size=2, max_size=10).map(lambda segments: sum(segments, []))
coarse_mixes = st.lists(st.tuples(batch_kinds, coarse_steps).map(lambda t: (t[0][0], t[1], t[0][1])),
                        min_size=2, max_size=14)


# ---------------------------------------------------------------- resolving the steps

def _pick(model, target):
    """An order (dict) by a target choice, against the model's state now; None: none such."""
    kind, k = target
    orders = list(model.orders_by_id.values())
    if kind == "held":
        orders = [o for o in orders if o["state"] == USERPAYING] or [o for o in orders if o["kind"] == ORDER_KIND_CODE]
    elif kind == "code":
        orders = [o for o in orders if o["kind"] == ORDER_KIND_CODE]
    elif kind == "paid":
        orders = [o for o in orders if o["state"] in (SUCCESS, REFUND)]
    return orders[k % len(orders)] if orders else None


def _resolve(model, event):
    if isinstance(event, dict):
        if isinstance(event.get("code"), tuple):   # a live code, if there is one
            live = [c["id"] for c in model.codes_by_id.values() if c["state"] == CODE_LIVE]
            return dict(event, code=live[event["code"][1] % len(live)] if live else CODE_OF[(WALLET, 1)])
        return event
    if event[0] == "confirm":
        _, target, wallet, flags, fault = event
        o = _pick(model, target)
        e = {"order_id": o["id"] if o else order_id(MERCHANT, b"C-0"),
             "wallet_id": (o["payer_id"] if o else WALLET) if wallet == "payer" else wallet, "flags": flags}
        return dict(e, **fault)
    if event[0] == "close":
        _, target, merchant = event
        o = _pick(model, target)
        return {"order_id": o["id"] if o else order_id(MERCHANT, b"C-1"),
                "merchant_id": (o["merchant_id"] if o else MERCHANT) if merchant == "merchant" else merchant}
    if event[0] == "refund":
        _, target, number, how, fault = event
        o = _pick(model, target) or model.orders_by_id.get(order_id(MERCHANT, b"C-0")) or {
            "id": order_id(MERCHANT, b"C-0"), "merchant_id": MERCHANT, "amount": 100, "refunded": 0, "ledger": CNY}
        left = o["amount"] - o["refunded"]
        amount = {"all": left, "half": left // 2, "one": 1, "more": left + 1}[how] or 1
        e = {"id": refund_id(o["id"], number), "order_id": o["id"], "merchant_id": o["merchant_id"],
             "amount": amount, "out_refund_no": number, "ledger": o["ledger"]}
        return dict(e, **fault)
    if event[0] == "pay":
        _, target, payer = event
        o = _pick(model, target) or {"id": order_id(*QR_KEYS[0]), "amount": 150, "ledger": CNY,
                                     "token": token_of(SECRET, order_id(*QR_KEYS[0]))}
        return {"order_id": o["id"], "payer_id": payer, "amount": o["amount"], "token": o["token"],
                "ledger": o["ledger"]}
    if event[0] == "steal":   # post or void a held charge's leg (id_reserved), or take its id
        _, target, flags = event
        o = _pick(model, target)
        held = leg_id(o["id"] if o else ORDER_IDS[0], CHARGE_CODES, 0)
        if flags:
            return {"id": 3001, "pending_id": held, "flags": flags}
        return {"id": leg_id(o["id"] if o else ORDER_IDS[0], CONFIRM_CHARGES, 0), "debit_account_id": FUNDING_CNY,
                "credit_account_id": MERCHANT, "amount": 1, "ledger": CNY, "code": 4}
    raise ValueError(event)


def _timed(steps, model):
    """The steps as (operation, now_ns, events), resolved against the model as each batch runs."""
    now, previous = START_NS, None
    for operation, step, events in steps:
        if operation == "again":
            if previous is None:
                continue
            operation, events = previous
            yield operation, now, events
            continue
        if isinstance(step, tuple) and step[0] == "day":
            now = (now // DAY_NS + 1) * DAY_NS + S
        elif isinstance(step, tuple):
            kind, k, j = step
            due = sorted(o["expires_at"] for o in model.orders_by_id.values() if o["state"] == USERPAYING) \
                if kind == "held" else sorted(c["expires_at"] for c in model.codes_by_id.values()
                                              if c["state"] == CODE_LIVE)
            if due:
                now = due[k % len(due)] - 4 * j
        else:
            now += step
        events = [_resolve(model, e) for e in events]
        previous = operation, events
        yield operation, now, events


# ---------------------------------------------------------------- the core

def _machine(orders_max=ORDERS_MAX, transfers_max=TRANSFERS_MAX, codes_max=CODES_MAX):
    return core.machine.Machine(accounts_max=ACCOUNTS_MAX, transfers_hot_max=transfers_max, pending_max=64,
                                orders_max=orders_max, refunds_max=64, codes_max=codes_max, secret=SECRET)


def _model(orders_max=ORDERS_MAX, transfers_max=TRANSFERS_MAX, codes_max=CODES_MAX):
    return ModelLedger(ACCOUNTS_MAX, transfers_max, orders_max, SECRET, codes_max=codes_max, refunds_max=64)


def _event_dtype(operation):
    return {CREATE_ORDERS: core.records.ORDER_CREATE_DTYPE, PAY_ORDERS: core.records.ORDER_PAY_DTYPE,
            CLOSE_ORDERS: core.records.ORDER_CLOSE_DTYPE, SET_MERCHANTS: core.records.MERCHANT_DTYPE,
            REFUND_ORDERS: core.records.REFUND_DTYPE, ISSUE_CODES: core.records.CODE_ISSUE_DTYPE,
            CHARGE_CODES: core.records.CODE_CHARGE_DTYPE, CONFIRM_CHARGES: core.records.CODE_CONFIRM_DTYPE,
            SET_WALLET_TIERS: core.WALLET_TIER_DTYPE, SET_TIER_LIMITS: core.TIER_LIMITS_DTYPE}[operation]


def _submit(machine, operation, events, now_ns):
    """One batch on the core: result names (create_orders: with its token; issue_codes: with its code)."""
    reply = _apply(machine, operation, events, now_ns, _event_dtype)
    if operation == CREATE_ORDERS:
        return [(core.Result(row["result"]).name, row["token"]) for row in _dicts(reply)]
    if operation == ISSUE_CODES:
        rows = _dicts(reply)
        assert all(row["reserved"] == 0 for row in rows), rows
        return [(core.Result(row["result"]).name, row["code"]) for row in rows]
    return [core.Result(int(r)).name for r in np.asarray(reply).tolist()]


def _expect(model, operation, events, now_ns):
    reply = model.apply(operation, events, now_ns)
    if operation == CREATE_ORDERS:
        return [(R(row["result"]).name, row["token"]) for row in reply]
    if operation == ISSUE_CODES:
        return [(R(row["result"]).name, row["code"]) for row in reply]
    return [R(r).name for r in reply]


def _dicts(records):
    """Records as dicts: 128-bit ids whole, byte arrays (``BYTES``) as bytes, the rest as ints."""
    records = np.ascontiguousarray(records)
    dtype = records.dtype
    raw = records.view(np.uint8).reshape(len(records), dtype.itemsize)
    rows = []
    for r in raw:
        row = {}
        for name in dtype.names:
            sub, offset = dtype.fields[name][:2]
            data = bytes(r[offset:offset + sub.itemsize])
            wide = name[:-3] if name[-3:] in ("_lo", "_hi") else None
            if wide and wide + "_lo" in dtype.names and wide + "_hi" in dtype.names:
                if name.endswith("_lo"):
                    hi_offset = dtype.fields[wide + "_hi"][1]
                    row[wide] = int.from_bytes(data, "little") | int.from_bytes(
                        bytes(r[hi_offset:hi_offset + 8]), "little") << 64
            elif name in BYTES:
                row[name] = data
            else:
                row[name] = int.from_bytes(data, "little")
        rows.append(row)
    return rows


def _lookup(machine, what, ids):
    return _dicts(getattr(machine, "lookup_" + what)(core.ids_array(ids)))


def _core_transfers(machine):
    found = {}
    for account_id in ACCOUNT_IDS:
        for t in core.to_dicts(machine.ledger.get_account_transfers(account_id)):
            found[t["id"]] = t
    return sorted(found.values(), key=lambda t: t["timestamp"])


def _assert_same_state(machine, model):
    ledger = machine.ledger
    assert core.to_dicts(ledger.accounts()) == model.accounts()
    wallets = [a["id"] for a in SETUP_ACCOUNTS]
    assert core.to_dicts(machine.lookup_wallet_limits(wallets)) == model.lookup_wallet_limits(wallets)
    order_ids = list(dict.fromkeys(list(model.orders_by_id) + ORDER_IDS + [0, 12345]))
    assert machine.orders.order_count == len(model.orders_by_id)
    assert _lookup(machine, "orders", order_ids) == model.lookup_orders(order_ids)
    assert machine.orders.next_expiry_ns == model.next_order_expiry_ns()
    code_ids = list(dict.fromkeys(list(model.codes_by_id) + LOOKUP_CODES))
    assert _lookup(machine, "codes", code_ids) == model.lookup_codes(code_ids)
    refund_ids = list(dict.fromkeys(list(model.refunds_by_id) + REFUND_IDS[:6]))
    assert _lookup(machine, "refunds", refund_ids) == model.lookup_refunds(refund_ids)
    transfer_ids = list(dict.fromkeys(list(model.transfers_by_id) + LEG_IDS + TOP_UP_IDS + [3001, 0, U128]))
    assert ledger.transfer_count == len(model.transfers_by_id)
    assert core.to_dicts(ledger.lookup_transfers(transfer_ids)) == model.lookup_transfers(transfer_ids)
    for account_id in ACCOUNT_IDS:
        assert core.to_dicts(ledger.get_account_transfers(account_id)) == model.get_account_transfers(account_id)
    features, expected = ledger.features(), model.features_by_index()
    for key in expected:
        assert features[key].tolist() == expected[key], key


def _check_invariants(machine, base_ns):
    """What holds of the core's state after any batch based at ``base_ns``."""
    accounts = machine.ledger.accounts()
    for ledger_number in np.unique(accounts["ledger"]):
        same = accounts[accounts["ledger"] == ledger_number]
        assert sum(map(int, same["debits_posted"])) == sum(map(int, same["credits_posted"]))
        assert sum(map(int, same["debits_pending"])) == sum(map(int, same["credits_pending"]))
    for a in core.to_dicts(accounts):
        if a["flags"] & 2:   # debits_must_not_exceed_credits
            assert a["debits_pending"] + a["debits_posted"] <= a["credits_posted"], a
        if a["flags"] & 4:   # credits_must_not_exceed_debits
            assert a["credits_pending"] + a["credits_posted"] <= a["debits_posted"], a
    orders = {o["id"]: o for o in _lookup(machine, "orders", ORDER_IDS)}
    named = [int.from_bytes(o["token"][:8], "little") for o in orders.values() if o["kind"] == ORDER_KIND_CODE]
    codes = _lookup(machine, "codes", list(dict.fromkeys(list(CODE_OF.values()) + named)))
    charged = {}
    for c in codes:
        if c["state"] == CODE_CHARGED:
            o = orders.get(c["order_id"])
            assert o is not None and o["kind"] == ORDER_KIND_CODE, ("a charged code without its order", c)
            assert o["token"] == code_token(c["id"]) and o["payer_id"] == c["wallet_id"], (c, o)
            assert c["order_id"] not in charged.values(), ("two codes, one order", c)
            charged[c["id"]] = c["order_id"]
        else:
            assert c["order_id"] == 0, c
    legs = {t["id"]: t for t in core.to_dicts(machine.ledger.lookup_transfers(LEG_IDS))}
    for o in orders.values():
        if o["kind"] != ORDER_KIND_CODE:
            continue
        code = int.from_bytes(o["token"][:8], "little")
        assert charged.get(code) == o["id"], ("a code charged twice, or an order without its code", o)
        hold = leg_id(o["id"], CHARGE_CODES, 0)
        assert hold in legs, o
        if legs[hold]["flags"] & 2:   # held at its charge
            assert o["expires_at"] == o["timestamp"] + CHARGE_HOLD_S * NS, o
        else:                         # paid at once
            assert o["expires_at"] == o["paid_at"] == o["timestamp"], o
        if o["state"] == USERPAYING:   # a held charge is swept by the clock at its 45 s
            assert o["expires_at"] == o["timestamp"] + CHARGE_HOLD_S * NS > base_ns, (o, base_ns)
            assert legs[hold]["flags"] & 2 and legs[hold]["timeout"] == CHARGE_HOLD_S, legs[hold]
        if o["state"] == CLOSED:
            assert o["close_reason"] in (CLOSE_REVOKED, CLOSE_DECLINED, CLOSE_TIMEOUT), o
            assert o["closed_at"] <= o["timestamp"] + CHARGE_HOLD_S * NS, o
        if o["state"] in (SUCCESS, REFUND) and legs[hold]["flags"] & 2:   # confirmed within the 45 s
            assert legs.get(leg_id(o["id"], CONFIRM_CHARGES, 0)) is not None, o
            assert o["paid_at"] < o["timestamp"] + CHARGE_HOLD_S * NS, o
    return orders


def _run_against_model(steps, limits=(ORDERS_MAX, TRANSFERS_MAX, CODES_MAX)):
    machine, model = _machine(*limits), _model(*limits)
    now = START_NS
    for operation, now, events in _timed(SETUP + steps, model):
        want = _expect(model, operation, events, now)
        got = _submit(machine, operation, events, now)
        assert got == want, (NAMES[operation], now, events)
        assert machine.ledger.last_timestamp == model.last   # 4 timestamps per product event
        _assert_same_state(machine, model)
        _check_invariants(machine, max(now, 0))
    # Every held charge ends by its 45 s: one empty batch past them all sweeps what is left.
    _submit(machine, CREATE_TRANSFERS, [], now + (CHARGE_HOLD_S + CODE_VALID_S) * NS)
    model.apply(CREATE_TRANSFERS, [], now + (CHARGE_HOLD_S + CODE_VALID_S) * NS)
    _assert_same_state(machine, model)
    orders = _check_invariants(machine, now + CHARGE_HOLD_S * NS)
    assert all(o["state"] != USERPAYING for o in orders.values())
    assert all(a["debits_pending"] == 0 for a in core.to_dicts(machine.ledger.accounts()))
    assert all(c["state"] != CODE_LIVE for c in _lookup(machine, "codes", list(CODE_OF.values())))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, st.sampled_from([(ORDERS_MAX, TRANSFERS_MAX, CODES_MAX), (ORDERS_MAX, TRANSFERS_MAX, CODES_MAX),
                               (4, 10, 4)]))
def test_core_codes_match_the_reference_model(steps, limits):
    _run_against_model(steps, limits)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, st.sampled_from([(ORDERS_MAX, TRANSFERS_MAX, CODES_MAX), (4, 10, 4), (6, 24, 8), (64, 512, 4)]))
def test_core_codes_match_the_reference_model_long(steps, limits):
    _run_against_model(steps, limits)


# ---------------------------------------------------------------- hand-made edges

def _issue(pair, **fields):
    wallet, request = pair
    return dict({"wallet_id": wallet, "request_id": request, "no_password_limit": LIMIT_OF.get(pair, 0),
                 "free_payments_per_day": FREE_OF.get(pair, 0), "ledger": LEDGER_OF[wallet]}, **fields)


def _charge(pair, number=b"C-0", merchant=MERCHANT, amount=100, **fields):
    return dict({"order_id": order_id(merchant, number), "merchant_id": merchant, "code": CODE_OF[pair],
                 "amount": amount, "out_trade_no": number, "ledger": LEDGER_OF[merchant]}, **fields)


def _confirm(number, wallet=WALLET, merchant=MERCHANT, flags=0):
    return {"order_id": order_id(merchant, number), "wallet_id": wallet, "flags": flags}


HELD = ((WALLET, 1), b"C-5", 6_000)            # above (WALLET, 1)'s limit of 1,000: held


def _scenarios():
    pair, number, big = HELD
    held = _charge(pair, number, amount=big)
    revoke = {"order_id": held["order_id"], "merchant_id": MERCHANT}
    return {
        # Held, confirmed at 44 s; the same again answers exists; the fee is taken at the confirm.
        "confirm": [(ISSUE_CODES, S, [_issue(pair)]), (CHARGE_CODES, S, [held, held]),
                    (CONFIRM_CHARGES, 44 * S, [_confirm(number), _confirm(number), _confirm(number, flags=1)]),
                    (CHARGE_CODES, S, [held])],
        # Held, then the clock passes its 45 s: timeout, the hold back to the wallet by the ledger.
        "timeout": [(ISSUE_CODES, S, [_issue(pair)]), (CHARGE_CODES, S, [held]),
                    (CONFIRM_CHARGES, ("held", 0, 1), [_confirm(number, wallet=CREDIT_WALLET)]),
                    (CONFIRM_CHARGES, ("held", 0, 0), [_confirm(number), _confirm(number, flags=1)]),
                    (CHARGE_CODES, 0, [held])],
        # A confirm inside the batch that reaches the hold's end (after the batch's base).
        "confirm_inside_the_hold": [(ISSUE_CODES, S, [_issue(pair)]), (CHARGE_CODES, S, [held]),
                                    (CONFIRM_CHARGES, ("held", 0, 1), [_confirm(number, wallet=CREDIT_WALLET),
                                                                       _confirm(number)])],
        "close_inside_the_hold": [(ISSUE_CODES, S, [_issue(pair)]), (CHARGE_CODES, S, [held]),
                                  (CLOSE_ORDERS, ("held", 0, 1), [{"order_id": order_id(MERCHANT, b"C-9"),
                                                                   "merchant_id": MERCHANT}, revoke])],
        # Declined and revoked: voided, the amount back in the wallet.
        "decline_and_revoke": [(ISSUE_CODES, S, [_issue(pair), _issue((CREDIT_WALLET, 1))]),
                               (CHARGE_CODES, S, [held, _charge((CREDIT_WALLET, 1), b"C-6", amount=1_000_000)]),
                               (CONFIRM_CHARGES, S, [_confirm(number, flags=1), _confirm(number, flags=1),
                                                     _confirm(number)]),
                               (CLOSE_ORDERS, S, [{"order_id": order_id(MERCHANT, b"C-6"), "merchant_id": MERCHANT}] * 2),
                               (CONFIRM_CHARGES, S, [_confirm(b"C-6", wallet=CREDIT_WALLET)])],
        # One live code per wallet; a code lives 60 s; single use.
        "replaced_expired_used": [(ISSUE_CODES, S, [_issue((WALLET, 1)), _issue((WALLET, 2))]),
                                  (CHARGE_CODES, S, [_charge((WALLET, 1)), _charge((WALLET, 2), b"C-1"),
                                                     _charge((WALLET, 2), b"C-2")]),
                                  (ISSUE_CODES, S, [_issue((WALLET, 3)), _issue((CREDIT_WALLET, 3)),
                                                    _issue((WALLET, 1))]),
                                  (CHARGE_CODES, ("live", 0, 1), [_charge((CREDIT_WALLET, 3), b"C-4"),
                                                                  _charge((WALLET, 3), b"C-3")]),
                                  (CHARGE_CODES, 0, [_charge((WALLET, 3), b"C-5")])],
        # The free payments of a day (each code's own setting): past them a charge is held, and
        # a confirmed one counts; a new engine day starts the count again.
        "free_payments_per_day": [(ISSUE_CODES, S, [_issue((CREDIT_WALLET, 3))]),
                                  (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 3), b"C-0")]),
                                  (ISSUE_CODES, S, [_issue((CREDIT_WALLET, 2))]),
                                  (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 2), b"C-1")]),
                                  (ISSUE_CODES, S, [_issue((CREDIT_WALLET, 1))]),
                                  (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 1), b"C-2")]),
                                  (CONFIRM_CHARGES, S, [_confirm(b"C-2", wallet=CREDIT_WALLET)]),
                                  (ISSUE_CODES, ("day",), [_issue((CREDIT_WALLET, 4))]),
                                  (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 4), b"C-3")])],
        # A wallet without the money, a closed wallet: the code stays live; a refund of a charge.
        "legs_fail_and_refund": [(ISSUE_CODES, S, [_issue((POOR_WALLET, 1)), _issue((CLOSED_WALLET, 1))]),
                                 (CHARGE_CODES, S, [_charge((POOR_WALLET, 1), amount=900),
                                                    _charge((CLOSED_WALLET, 1), b"C-1", amount=5)]),
                                 (CHARGE_CODES, S, [_charge((POOR_WALLET, 1), b"C-2", amount=250)]),
                                 (REFUND_ORDERS, S, [{"id": refund_id(order_id(MERCHANT, b"C-2"), b"R-1"),
                                                      "order_id": order_id(MERCHANT, b"C-2"), "merchant_id": MERCHANT,
                                                      "amount": 100, "out_refund_no": b"R-1", "ledger": CNY}])],
        # Small tables (orders_max 4: two open; codes_max 8: four live): held charges are open
        # orders, charges paid at once need only a slot; live codes are bounded.
        "limits": [(ISSUE_CODES, S, [_issue((WALLET, 1)), _issue((CREDIT_WALLET, 1)), _issue((POOR_WALLET, 1)),
                                     _issue((EMPTY_WALLET, 1)), _issue((USD_WALLET, 1))]),
                   (CHARGE_CODES, S, [_charge((WALLET, 1), b"C-0", amount=6_000),
                                      _charge((CREDIT_WALLET, 1), b"C-1", amount=400_000),
                                      _charge((POOR_WALLET, 1), b"C-2", amount=400_000)]),
                   (ISSUE_CODES, S, [_issue((CREDIT_WALLET, 2))]), (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 2), b"C-3")]),
                   (ISSUE_CODES, S, [_issue((CREDIT_WALLET, 3))]), (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 3), b"C-4")]),
                   (ISSUE_CODES, S, [_issue((CREDIT_WALLET, 4))]), (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 4), b"C-5")]),
                   (CONFIRM_CHARGES, S, [_confirm(b"C-0")]), (CHARGE_CODES, S, [_charge((POOR_WALLET, 1), b"C-2",
                                                                                      amount=400_000)])],
        # A client transfer may not post or void a held leg.
        "steal_the_hold": [(ISSUE_CODES, S, [_issue(pair)]), (CHARGE_CODES, S, [held]),
                           (CREATE_TRANSFERS, S, [{"id": 3001, "pending_id": leg_id(held["order_id"], CHARGE_CODES, 0),
                                                   "flags": 4}, {"id": 3001, "flags": 8, "pending_id": leg_id(
                                                       held["order_id"], CHARGE_CODES, 0)}]),
                           (CONFIRM_CHARGES, S, [_confirm(number)])],
    }


SCENARIO_LIMITS = {"limits": (4, TRANSFERS_MAX, 8)}


@pytest.mark.parametrize("name", sorted(_scenarios()))
def test_core_codes_match_the_reference_model_on_the_edges(name):
    _run_against_model(_scenarios()[name], SCENARIO_LIMITS.get(name, (ORDERS_MAX, TRANSFERS_MAX, CODES_MAX)))


# ---------------------------------------------------------------- retries and bad input, on the core

def _state(machine):
    ledger = machine.ledger
    return (core.to_dicts(ledger.accounts()), _lookup(machine, "orders", ORDER_IDS),
            _lookup(machine, "codes", LOOKUP_CODES), _core_transfers(machine),
            _lookup(machine, "refunds", REFUND_IDS), {k: v.tolist() for k, v in ledger.features().items()})


AGAIN = {ISSUE_CODES: {"ok": {"exists"}}, CHARGE_CODES: {"ok": {"exists"}, "user_paying": {"user_paying"}}}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coarse_mixes)
def test_a_retried_batch_answers_exists_and_changes_nothing(steps):
    machine, model = _machine(), _model()
    for operation, now, events in _timed(SETUP + steps, model):
        model.apply(operation, events, now)
        first = _submit(machine, operation, events, now)
        # Let the engine's clock expire what is due first, so that only the retry is measured.
        _submit(machine, CREATE_TRANSFERS, [], now)
        model.apply(CREATE_TRANSFERS, [], now)
        before = _state(machine)
        retry = _submit(machine, operation, events, now)
        assert _state(machine) == before, (NAMES[operation], events, first, retry)
        if operation in (ISSUE_CODES, CREATE_ORDERS):   # the code (token) is answered again on exists
            assert [c for r, c in retry if r == "exists"] == [c for r, c in first if r in ("ok", "exists")]
            first, retry = [r for r, _ in first], [r for r, _ in retry]
        for event, was, now_is in zip(events, first, retry):
            if was in ("ok", "exists", "user_paying"):
                allowed = AGAIN.get(operation, {}).get(was, {"exists"})
                assert now_is in allowed, (NAMES[operation], event, was, now_is)
            elif operation == CHARGE_CODES:   # a later event of the batch may have used its code or its order id
                assert now_is in (was, "code_used", "code_expired", "code_replaced", "exists_with_different_fields"), (
                    event, was, now_is)
            elif operation == CREATE_TRANSFERS and sum(e["id"] == event["id"] for e in events) > 1:
                # A refused transfer (a tiered wallet's limit) whose id a later event of the batch took.
                assert now_is == was or now_is.startswith("exists"), (event, was, now_is)
            elif operation not in (PAY_ORDERS, CONFIRM_CHARGES, REFUND_ORDERS, CLOSE_ORDERS):
                assert now_is == was, (NAMES[operation], event, was, now_is)


def _base_state():
    """Codes issued to three wallets, one charged at once, one held; the core and the model."""
    machine, model = _machine(), _model()
    steps = SETUP + [(ISSUE_CODES, S, [_issue((WALLET, 1)), _issue((CREDIT_WALLET, 1)), _issue((USD_WALLET, 1))]),
                     (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 1), b"C-0", amount=100),
                                        _charge((WALLET, 1), b"C-1", amount=6_000)]),
                     (ISSUE_CODES, S, [_issue((CREDIT_WALLET, 2))])]
    for operation, now, events in _timed(steps, model):
        assert _expect(model, operation, events, now) == _submit(machine, operation, events, now)
    return machine, model, now


LIVE, HELD_NUMBER, PAID_NUMBER = (CREDIT_WALLET, 2), b"C-1", b"C-0"
BAD_INPUT = [
    (CHARGE_CODES, _charge(LIVE, b"C-7", code=UNISSUED_CODES[0]), "code_not_found"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", code=UNISSUED_CODES[1]), "code_not_found"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", code=99), "code_invalid"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", code=16 * 10**16), "code_invalid"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", code=1 << 64 | CODE_OF[LIVE]), "code_invalid"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", merchant=UNKNOWN), "merchant_not_found"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", ledger=USD), "currency_mismatch"),
    (CHARGE_CODES, _charge((USD_WALLET, 1), b"C-7"), "currency_mismatch"),           # a USD wallet's code
    (CHARGE_CODES, _charge(LIVE, b"C-7", merchant=USD_MERCHANT), "currency_mismatch"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", order_id=order_id(MERCHANT, b"C-8")), "id_mismatch"),
    (CHARGE_CODES, _charge(LIVE, PAID_NUMBER, amount=101), "exists_with_different_fields"),
    (CHARGE_CODES, _charge(LIVE, PAID_NUMBER, amount=100), "exists_with_different_fields"),   # another code
    (CHARGE_CODES, _charge((CREDIT_WALLET, 1), PAID_NUMBER, amount=100), "exists"),
    (CHARGE_CODES, _charge((WALLET, 1), HELD_NUMBER, amount=6_000), "user_paying"),
    (CHARGE_CODES, _charge((CREDIT_WALLET, 1), b"C-7"), "code_used"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", reserved=1), "reserved_field"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", flags=1 << 15), "forbidden"),
    (CHARGE_CODES, _charge(LIVE, b"C-7", amount=0), "amount_must_not_be_zero"),
    (CHARGE_CODES, _charge(LIVE, b"a b"), "out_trade_no_invalid"),
    (ISSUE_CODES, _issue((UNKNOWN, 1)), "payer_not_found"),
    (ISSUE_CODES, _issue((WALLET, 3), ledger=USD), "currency_mismatch"),
    (ISSUE_CODES, _issue((WALLET, 1), no_password_limit=7), "exists_with_different_fields"),
    (ISSUE_CODES, _issue((WALLET, 0)), "id_must_not_be_zero"),
    (CONFIRM_CHARGES, _confirm(HELD_NUMBER, wallet=CREDIT_WALLET), "payer_mismatch"),
    (CONFIRM_CHARGES, _confirm(b"C-7"), "order_not_found"),
    (CONFIRM_CHARGES, {"order_id": order_id(*QR_KEYS[0]), "wallet_id": WALLET}, "order_not_found"),
    (CONFIRM_CHARGES, _confirm(HELD_NUMBER, flags=2), "reserved_flag"),
    (CONFIRM_CHARGES, _confirm(PAID_NUMBER, wallet=CREDIT_WALLET), "exists"),
    (CONFIRM_CHARGES, _confirm(PAID_NUMBER, wallet=CREDIT_WALLET, flags=1), "order_paid"),
    (CLOSE_ORDERS, {"order_id": order_id(MERCHANT, HELD_NUMBER), "merchant_id": STRICT_MERCHANT}, "merchant_mismatch"),
    (CLOSE_ORDERS, {"order_id": order_id(MERCHANT, PAID_NUMBER), "merchant_id": MERCHANT}, "order_paid"),
    (PAY_ORDERS, {"order_id": order_id(MERCHANT, HELD_NUMBER), "payer_id": WALLET, "amount": 6_000,
                  "token": code_token(CODE_OF[(WALLET, 1)]), "ledger": CNY}, "order_token_invalid"),
    (PAY_ORDERS, {"order_id": order_id(MERCHANT, PAID_NUMBER), "payer_id": CREDIT_WALLET, "amount": 100,
                  "token": code_token(CODE_OF[(CREDIT_WALLET, 1)]), "ledger": CNY}, "order_token_invalid"),
    (CREATE_TRANSFERS, {"id": 3001, "pending_id": leg_id(order_id(MERCHANT, HELD_NUMBER), CHARGE_CODES, 0),
                        "flags": 4}, "id_reserved"),
    (CREATE_TRANSFERS, {"id": 3001, "pending_id": leg_id(order_id(MERCHANT, HELD_NUMBER), CHARGE_CODES, 0),
                        "flags": 8}, "id_reserved"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(range(len(BAD_INPUT))), min_size=1, max_size=8), st.integers(0, 30))
def test_bad_input_answers_its_code_and_changes_nothing(picks, seconds):
    """Each bad event (in any order, at any time before the hold's 45 s and the codes' 60 s)
    answers its code, as the model does, and leaves the state as it was."""
    machine, model, now = _base_state()
    now += seconds * S
    _submit(machine, CREATE_TRANSFERS, [], now)   # the clock's own changes first
    model.apply(CREATE_TRANSFERS, [], now)
    before = _state(machine)
    for k in picks:
        operation, event, expected = BAD_INPUT[k]
        got = _submit(machine, operation, [event], now)
        assert got == _expect(model, operation, [event], now), (NAMES[operation], event)
        result = got[0][0] if isinstance(got[0], tuple) else got[0]
        assert result == expected, (NAMES[operation], event, result)
        assert _state(machine) == before, (NAMES[operation], event)
    _assert_same_state(machine, model)


# ---------------------------------------------------------------- the model's own code rules (no core needed)

def test_model_code_derivation_follows_the_document():
    import hashlib
    import hmac
    d = hmac.new(SECRET, b"code" + (3).to_bytes(16, "little") + (1).to_bytes(16, "little"), hashlib.sha256).digest()
    prefix = 10 + int.from_bytes(d[:8], "little") % 6
    assert code_of(SECRET, 3, 1) == prefix * 10**16 + int.from_bytes(d[8:16], "little") % 10**16
    assert len(str(code_of(SECRET, 3, 1))) == 18
    assert code_token(CODE_OF[(WALLET, 1)])[:8] == CODE_OF[(WALLET, 1)].to_bytes(8, "little")


def _model_run(steps):
    model = _model()
    out = []
    for operation, now, events in _timed(SETUP + steps, model):
        out.append(_expect(model, operation, events, now))
    return model, out


def test_model_held_charge_confirmed_then_paid_once():
    pair, number, big = HELD
    model, out = _model_run(_scenarios()["confirm"])
    assert out[-4:] == [[("ok", CODE_OF[pair])], ["user_paying", "user_paying"], ["ok", "exists", "order_paid"],
                        ["exists"]]
    (o,) = model.lookup_orders([order_id(MERCHANT, number)])
    assert (o["state"], o["payer_id"], o["fee"], o["kind"]) == (SUCCESS, WALLET, big * 60 // 10_000, ORDER_KIND_CODE)
    assert model.lookup_accounts([WALLET])[0]["debits_posted"] == big
    assert model.lookup_accounts([FEES])[0]["credits_posted"] == big * 60 // 10_000
    (c,) = model.lookup_codes([CODE_OF[pair]])
    assert (c["state"], c["order_id"]) == (CODE_CHARGED, o["id"])


def test_model_held_charge_times_out():
    pair, number, big = HELD
    model, out = _model_run(_scenarios()["timeout"])
    assert out[-3:] == [["payer_mismatch"], ["order_expired", "order_expired"], ["order_expired"]]
    (o,) = model.lookup_orders([order_id(MERCHANT, number)])
    assert (o["state"], o["close_reason"], o["closed_at"]) == (CLOSED, CLOSE_TIMEOUT, o["timestamp"] + 45 * S)
    w = model.lookup_accounts([WALLET])[0]
    assert (w["debits_pending"], w["debits_posted"]) == (0, 0)


def test_model_codes_replaced_expired_used():
    model, out = _model_run(_scenarios()["replaced_expired_used"])
    assert [r for r, _ in out[-5]] == ["ok", "ok"]
    assert out[-4] == ["code_replaced", "ok", "code_used"]
    assert out[-3] == [("ok", CODE_OF[(WALLET, 3)]), ("ok", CODE_OF[(CREDIT_WALLET, 3)]), ("exists", CODE_OF[(WALLET, 1)])]
    assert out[-2:] == [["ok", "code_expired"], ["code_expired"]]
    states = {c["request_id"]: (c["state"], c["ended_at"] - c["timestamp"]) for c in model.codes()
              if c["wallet_id"] == WALLET}
    assert states[1][0] == CODE_REPLACED and states[2][0] == CODE_CHARGED
    assert states[3] == (CODE_EXPIRED, CODE_VALID_S * S)


def test_model_free_payments_reset_at_the_day():
    model, out = _model_run(_scenarios()["free_payments_per_day"])
    # Free payments a day: 3, 2, 1 and 1 for these codes; the third payment of the day is held.
    assert out[-9:] == [[("ok", CODE_OF[(CREDIT_WALLET, 3)])], ["ok"], [("ok", CODE_OF[(CREDIT_WALLET, 2)])], ["ok"],
                        [("ok", CODE_OF[(CREDIT_WALLET, 1)])], ["user_paying"], ["ok"],
                        [("ok", CODE_OF[(CREDIT_WALLET, 4)])], ["ok"]]
    day = model.lookup_orders([order_id(MERCHANT, b"C-3")])[0]["paid_at"] // DAY_NS
    assert model.code_payments[CREDIT_WALLET] == (day, 1)


def test_model_bad_input():
    model = _model()
    steps = SETUP + [(ISSUE_CODES, S, [_issue((WALLET, 1)), _issue((CREDIT_WALLET, 1)), _issue((USD_WALLET, 1))]),
                     (CHARGE_CODES, S, [_charge((CREDIT_WALLET, 1), b"C-0", amount=100),
                                        _charge((WALLET, 1), b"C-1", amount=6_000)]),
                     (ISSUE_CODES, S, [_issue((CREDIT_WALLET, 2))])]
    for operation, now, events in _timed(steps, model):
        _expect(model, operation, events, now)
    for operation, event, expected in BAD_INPUT:
        (got,) = _expect(model, operation, [event], now)
        got = got[0] if isinstance(got, tuple) else got
        assert got == expected, (NAMES[operation], event, got, expected)
