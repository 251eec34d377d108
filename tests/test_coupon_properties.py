"""Properties of coupons and the card pack: the compiled core (``core.machine.Machine`` with its
coupons component, ``core/coupons.pyx``) behaves exactly like the reference model (tests/model.py,
written from docs/products.md "Coupons and the card pack").

Random mixes of batches — ``create_stocks`` (a pool of stocks of several merchants, each with its
own face, minimum spend, count, per-user cap, life and coupons' life; retries with the same and
with other fields; bad input: a wrong id, a bad number, counts, spends, faces and lives out of
range, unknown merchants, the other currency, budgets that are not (another code, another ledger,
closed, the merchant itself, a merchant that is a budget); a merchant without the money; a burst
of 260 one-coupon stocks that end together), ``grant_coupons`` (by scan and by API, many users,
the same user many times in one batch and over many, retries, the other channel, unknown stocks,
users and the other currency, another merchant's gateway), ``pay_with_coupon`` (prices around the
minimum spend and the face, retries, a request number used again for another coupon, other
users' coupons, the wrong stock and merchant, users without the money, a closed user, a merchant
whose credits may not exceed its debits), ``set_limits`` (stocks_open), top-ups (one of them makes
a capped merchant's stock end fail), pulses and the previous batch again — and an engine clock
that steps by nanoseconds to days and to the very nanoseconds around a coupon's ``expires_at``
and a stock's ``ends_at`` — run through both; after every batch the results, every account,
stock, coupon, holding and transfer and the activity features must be identical. Small tables
(two active stocks, six coupons, four holdings; a transfer ring that fills at a stock's end) are
drawn too.

On the core's state, after every batch: per currency debits equal credits, no account breaks its
flags' limits, a stock's budget is never exceeded (its budget legs pay at most face x count;
redeemed <= issued <= count), no user holds more than ``per_user_max`` of a stock, a coupon is
redeemed at most once (one budget leg, with the price's legs), and the analytics equal a
recomputation from the coupon records and the ledger's transfers (issued by channel, receivers,
redeemed, repeat buyers, the budget used and returned; each budget account's balance is what its
stocks have not paid out or returned). Separately: a retried batch changes nothing; hand-made
edges; the places where the core departs from the document, each an xfail(strict) test.
"""

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import core
import core.machine
from tests.model import (COUPON_AVAILABLE, COUPON_REDEEMED, LEGS_MAX, STOCK_ACTIVE, STOCK_ENDED, U128, ModelLedger, R,
                         coupon_id, coupon_payment_id, envelope_id, holding_id, leg_id, stock_id)
from tests.product_properties import (applied, assert_retries_change_nothing, assert_same_ledger, balances, exists_again,
                                      expect, keyed_faults, ledger_state, model_run, mostly as _mostly, pulse_both, rare,
                                      run_both, submit, timed)
from tests.test_order_properties import _dicts

NS = S = 1_000_000_000
DAY = 86_400 * S
START_NS = 1_700_000_000 * NS
SECRET = b"tally property tests: coupons!!!"
assert len(SECRET) == 32

# Operation numbers (docs/products.md; core/operations.py).
CREATE_ACCOUNTS, CREATE_TRANSFERS, SET_LIMITS, SEND, CREATE_STOCKS, GRANT, PAY = 1, 2, 6, 116, 120, 121, 122
EVENT_DTYPES = {CREATE_STOCKS: core.records.STOCK_CREATE_DTYPE, GRANT: core.records.COUPON_GRANT_DTYPE,
                PAY: core.records.COUPON_PAY_DTYPE, SET_LIMITS: core.records.LIMITS_DTYPE,
                SEND: core.records.ENVELOPE_SEND_DTYPE}
CODE_PAYMENT, CODE_COUPON = 1, 9
SCAN, API = 1, 2
FORBIDDEN = 1 << 15

CNY, USD = 156, 840
FUNDING_CNY, FUNDING_USD, BUDGET, BUDGET_2, USD_BUDGET, CLOSED_BUDGET, NOT_BUDGET = 1, 2, 3, 4, 5, 6, 7
MERCHANT, MERCHANT_2, POOR_MERCHANT, CAPPED_MERCHANT, USD_MERCHANT = 8, 9, 10, 11, 12
POOR_USER, CLOSED_USER, USD_USER, ESCROW = 13, 14, 15, 16
UNKNOWN = 99
USERS = list(range(100, 124))
BUDGETS = (BUDGET, BUDGET_2, USD_BUDGET)
MERCHANTS = (MERCHANT, MERCHANT_2, POOR_MERCHANT, CAPPED_MERCHANT, USD_MERCHANT)
SETUP_ACCOUNTS = [
    {"id": FUNDING_CNY, "ledger": CNY, "code": 3},                 # funding cards: may go negative
    {"id": FUNDING_USD, "ledger": USD, "code": 3},
    {"id": BUDGET, "ledger": CNY, "code": 7, "flags": 2},          # budgets (code 7), one never overdrawn
    {"id": BUDGET_2, "ledger": CNY, "code": 7},
    {"id": USD_BUDGET, "ledger": USD, "code": 7, "flags": 2},
    {"id": CLOSED_BUDGET, "ledger": CNY, "code": 7, "flags": 8},
    {"id": NOT_BUDGET, "ledger": CNY, "code": 5},
    {"id": MERCHANT, "ledger": CNY, "code": 2, "flags": 2},
    {"id": MERCHANT_2, "ledger": CNY, "code": 2, "flags": 2},
    {"id": POOR_MERCHANT, "ledger": CNY, "code": 2, "flags": 2},
    {"id": CAPPED_MERCHANT, "ledger": CNY, "code": 2, "flags": 4},  # credits may not exceed debits
    {"id": USD_MERCHANT, "ledger": USD, "code": 2, "flags": 2},
    {"id": POOR_USER, "ledger": CNY, "code": 1, "flags": 2},
    {"id": CLOSED_USER, "ledger": CNY, "code": 1, "flags": 8},
    {"id": USD_USER, "ledger": USD, "code": 1, "flags": 2},
    {"id": ESCROW, "ledger": CNY, "code": 4, "flags": 2},          # red envelopes' (their refunds come first)
] + [{"id": u, "ledger": CNY, "code": 1, "flags": 2} for u in USERS]
ACCOUNT_IDS = [a["id"] for a in SETUP_ACCOUNTS]
ACCOUNTS_MAX = len(SETUP_ACCOUNTS)
LEDGER_OF = {a["id"]: a["ledger"] for a in SETUP_ACCOUNTS}
LEDGER_OF[UNKNOWN] = CNY


def _fund(transfer_id, credit, amount, ledger=CNY):
    return {"id": transfer_id, "debit_account_id": FUNDING_CNY if ledger == CNY else FUNDING_USD,
            "credit_account_id": credit, "amount": amount, "ledger": ledger, "code": 4}


SETUP_TRANSFERS = [_fund(1001, MERCHANT, 10_000_000), _fund(1002, MERCHANT_2, 1_000_000), _fund(1003, POOR_MERCHANT, 300),
                   _fund(1004, USD_MERCHANT, 1_000_000, USD), _fund(1005, POOR_USER, 100),
                   _fund(1006, USD_USER, 100_000, USD)] + [_fund(1100 + k, u, 1_000_000) for k, u in enumerate(USERS)]
SETUP = [(CREATE_ACCOUNTS, 0, SETUP_ACCOUNTS), (CREATE_TRANSFERS, 0, SETUP_TRANSFERS)]
SETUP_TRANSFER_COUNT = len(SETUP_TRANSFERS)
TOP_UP_IDS = list(range(2001, 2007))

# The stocks: (merchant, number) keys, each with its own terms, so that a retry creates the same.
KEYS = ([(MERCHANT, b"S-%d" % k) for k in range(7)] + [(MERCHANT_2, b"S-%d" % k) for k in range(3)]
        + [(POOR_MERCHANT, b"S-0"), (CAPPED_MERCHANT, b"S-0"), (CAPPED_MERCHANT, b"S-1"), (USD_MERCHANT, b"S-0")])
FACES = [500, 100, 1, 2_000, 50, 300, 7]
MIN_EXTRA = [1_500, 0, 0, 1_000, 49, 1, 3]
TOTALS = [10, 3, 1, 5, 2, 40, 4]
PER_USER = [2, 0, 1, 3, 1, 5, 2]
VALID_S = [3_600, 2, 600, 1, 60, 366 * 86_400, 5]
COUPON_VALID_S = [60, 0, 1, 0, 5, 0, 2]
PARAMS = {key: {"face_value": FACES[k % 7], "min_spend": FACES[k % 7] + MIN_EXTRA[k % 7], "total_count": TOTALS[k % 7],
                "per_user_max": PER_USER[k % 7], "valid_for_s": VALID_S[k % 7],
                "coupon_valid_s": min(COUPON_VALID_S[k % 7], VALID_S[k % 7]),
                "budget_account_id": USD_BUDGET if key[0] == USD_MERCHANT else (BUDGET_2 if k % 4 == 3 else BUDGET)}
          for k, key in enumerate(KEYS)}
STOCK_IDS = [stock_id(*key) for key in KEYS]
BURST = 260                    # one-coupon stocks ending together: more than a batch start ends
BURST_KEYS = [(MERCHANT, b"B-%d" % k) for k in range(BURST)]
LOOKUP_STOCK_IDS = STOCK_IDS + [stock_id(UNKNOWN, b"S-0"), 0, U128]

# Table sizes (stocks_max, coupons_max, holdings_max, transfers_max): the usual; small (two active
# stocks, six coupons, four holdings); a transfer ring that fills (a stock's end stays due); room
# for the burst.
USUAL = (64, 256, 256, 1024)
SMALL = (4, 6, 4, 1024)
TINY_RING = (16, 64, 64, SETUP_TRANSFER_COUNT + 10)
ROOMY = (1024, 512, 512, 2048)


# ---------------------------------------------------------------- strategies

hot_keys = _mostly(st.sampled_from([KEYS[0], KEYS[1], KEYS[2], KEYS[4], KEYS[6], KEYS[7], KEYS[11]]),
                   st.sampled_from(KEYS), 35)


def _create(key, **fields):
    merchant, number = key
    return dict({"id": stock_id(merchant, number), "merchant_id": merchant, "out_stock_no": number,
                 "ledger": LEDGER_OF[merchant]}, **dict(PARAMS[key], **fields))


@st.composite
def create_events(draw):
    key = draw(hot_keys)
    event = _create(key)
    if draw(rare):   # the same number again with other fields
        field = draw(st.sampled_from(["face_value", "min_spend", "total_count", "per_user_max", "valid_for_s",
                                      "coupon_valid_s", "budget_account_id"]))
        event[field] = {"face_value": event["face_value"] + 1, "min_spend": event["min_spend"] + 1,
                        "total_count": event["total_count"] + 1, "per_user_max": event["per_user_max"] + 2,
                        "valid_for_s": event["valid_for_s"] + 1, "coupon_valid_s": event["coupon_valid_s"] + 1,
                        "budget_account_id": BUDGET_2 if event["budget_account_id"] == BUDGET else BUDGET}[field]
    if draw(rare):   # out of range (a new number: a retry's fields are compared before the ranges)
        number = b"R-%d" % draw(st.integers(0, 3))
        event.update(id=stock_id(key[0], number), out_stock_no=number)
        event.update(draw(st.sampled_from([
            {"total_count": 0}, {"total_count": 10_000_001}, {"min_spend": event["face_value"] - 1},
            {"face_value": 0}, {"face_value": 1 << 61, "min_spend": 1 << 61, "total_count": 3},
            {"face_value": 1 << 60, "min_spend": 1 << 60, "total_count": 4},   # exactly 2^62: in range
            {"valid_for_s": 0}, {"valid_for_s": 366 * 86_400 + 1}, {"coupon_valid_s": event["valid_for_s"] + 1},
            {"per_user_max": 0}])))
    if draw(rare):   # not a budget, or not this merchant's currency's
        event["budget_account_id"] = draw(st.sampled_from([NOT_BUDGET, USD_BUDGET, BUDGET, CLOSED_BUDGET, UNKNOWN,
                                                           event["merchant_id"], BUDGET_2]))
    if draw(rare):   # an unknown merchant, a merchant that is a budget, a bad number: the id follows them
        merchant = draw(st.sampled_from([UNKNOWN, 0, BUDGET_2, USERS[0]]))
        event["merchant_id"] = merchant
        event["out_stock_no"] = draw(_mostly(st.just(event["out_stock_no"]),
                                             st.sampled_from([b"", b"a b", b"\xff", b"x" * 32]), 40))
        event["id"] = stock_id(merchant, event["out_stock_no"])
    return keyed_faults(draw, event, (CNY, USD))


# Grants and payments name the state as it is when their batch runs (resolved against the model):
# ("active", k) the k-th active stock, ("any", k) the k-th created, ("key", k) a pool key's id
# (created or not), ("bad", id) an id never created.
stock_targets = _mostly(st.tuples(st.sampled_from(["active", "active", "active", "any"]), st.integers(0, 7)),
                        st.one_of(st.tuples(st.just("key"), st.integers(0, len(KEYS) - 1)),
                                  st.tuples(st.just("bad"), st.sampled_from([0, 77, U128]))), 8)
hot_users = st.sampled_from(USERS[:4])
users = _mostly(_mostly(hot_users, st.sampled_from(USERS), 50),
                st.sampled_from([UNKNOWN, USD_USER, CLOSED_USER, POOR_USER, "merchant", MERCHANT_2]), 10)
requests = _mostly(st.integers(1, 3), st.integers(4, 9), 20)
channels = _mostly(st.sampled_from([SCAN, SCAN, API]), st.sampled_from([0, 3, 255]), 3)
grant_faults = st.sampled_from([{"id": "flip"}, {"id": 0}, {"stock_id": 0}, {"request_id": 0}, {"timestamp": 1},
                                {"reserved": 1}, {"reserved": 1 << 280}, {"reserved_a": 1}, {"flags": 1},
                                {"flags": FORBIDDEN}, {"merchant_id": "other"}, {"channel": "other"}])


@st.composite
def grant_events(draw, target=None, user=None):
    event = ("grant", target if target is not None else draw(stock_targets), user if user is not None else draw(users),
             draw(requests), draw(channels))
    return event + (draw(grant_faults) if draw(rare) else {},)


@st.composite
def hot_grants(draw):
    """Many grants on one stock in one batch: one user many times (its cap), many users (the count)."""
    target = ("active", draw(st.integers(0, 3)))
    one = draw(hot_users)
    people = draw(st.lists(st.one_of(st.just(one), st.sampled_from(USERS)), min_size=4, max_size=30))
    return [("grant", target, u, draw(st.integers(1, 6)), draw(st.sampled_from([SCAN, API])), {}) for u in people]


# A payment names a coupon: ("available", k) the k-th coupon not yet redeemed, ("any", k) any
# (a redeemed one: a retry, or coupon_redeemed), ("other_user", k) another user's, ("wrong_stock",
# k) with another stock named, ("wrong_merchant", k), ("unknown", k) a coupon never granted.
coupon_targets = _mostly(st.tuples(st.sampled_from(["available", "available", "available", "any"]), st.integers(0, 15)),
                         st.tuples(st.sampled_from(["other_user", "wrong_stock", "wrong_merchant", "unknown"]),
                                   st.integers(0, 15)), 12)
prices = st.sampled_from(["min", "min", "min", "min-1", "min+1", "face", "double", "big", "face+1"])
pay_requests = st.one_of(st.just("same"), st.just("same"), st.just("fresh"), st.tuples(st.just("small"),
                                                                                        st.integers(1, 3)))
pay_faults = st.sampled_from([{"ledger": 0}, {"ledger": USD}, {"price": 0}, {"request_id": 0}, {"coupon_id": 0},
                              {"timestamp": 1}, {"reserved": 1}, {"flags": 1}, {"flags": FORBIDDEN}])


@st.composite
def pay_events(draw, target=None):
    event = ("pay", target if target is not None else draw(coupon_targets), draw(prices), draw(pay_requests))
    return event + (draw(pay_faults) if draw(rare) else {},)


@st.composite
def limit_events(draw):
    event = {"stocks_open": draw(st.sampled_from([0, 1, 2, 3, 10, 1_000]))}
    if draw(rare):
        event.update(draw(st.sampled_from([{"stocks_open": 100_000}, {"reserved": 1}, {"flags": 1},
                                           {"timestamp": 1}])))
    return event


def _top_up(credit, amount, transfer_id=TOP_UP_IDS[0]):
    return _fund(transfer_id, credit, amount)


@st.composite
def transfer_events(draw):
    """Top-ups (one to the capped merchant takes the room its stocks' funding made; one from it
    gives room), rarely a client transfer that takes a coupon leg's id."""
    if draw(rare):
        return ("steal", draw(st.integers(0, 7)))
    credit = draw(st.sampled_from([MERCHANT, POOR_MERCHANT, POOR_USER, CAPPED_MERCHANT, CAPPED_MERCHANT, USERS[0]]))
    event = _top_up(credit, draw(st.sampled_from([50, 500, 5_000, 20_000])), draw(st.sampled_from(TOP_UP_IDS)))
    if draw(st.integers(0, 9)) < 2:   # room for the capped merchant (its debits)
        event.update(debit_account_id=CAPPED_MERCHANT, credit_account_id=FUNDING_CNY, code=5)
    return event


batch_kinds = st.one_of(
    st.tuples(st.just(CREATE_STOCKS), st.lists(create_events(), min_size=1, max_size=5)),
    st.tuples(st.just(CREATE_STOCKS), st.lists(create_events(), min_size=1, max_size=5)),
    st.tuples(st.just(GRANT), st.lists(grant_events(), min_size=1, max_size=8)),
    st.tuples(st.just(GRANT), st.lists(grant_events(), min_size=1, max_size=8)),
    st.tuples(st.just(GRANT), hot_grants()),
    st.tuples(st.just(PAY), st.lists(pay_events(), min_size=1, max_size=8)),
    st.tuples(st.just(PAY), st.lists(pay_events(), min_size=1, max_size=8)),
    st.tuples(st.just(SET_LIMITS), st.lists(limit_events(), min_size=1, max_size=2)),
    st.tuples(st.just(CREATE_TRANSFERS), st.lists(transfer_events(), min_size=1, max_size=3)),
    st.tuples(st.sampled_from([CREATE_TRANSFERS, CREATE_TRANSFERS, GRANT, PAY]), st.just([])),   # pulses
    st.tuples(st.just("again"), st.none()),   # the previous batch again: a client's retry
    _mostly(st.tuples(st.just(CREATE_STOCKS), st.just([])), st.tuples(st.just("burst"), st.none()), 3),
)
# Engine time per batch: nanoseconds to days, or to the nanoseconds around an available coupon's
# expires_at or an active stock's ends_at (("edge", kind, k, d): the k-th soonest, d ns from it).
small_steps = st.sampled_from([0, 0, 1, 4, S, S, 2 * S, 5 * S, 30 * S])
coarse_steps = st.sampled_from([0, 1, S, 59 * S, 60 * S, 61 * S, 3_600 * S, DAY, 2 * DAY])
edge_steps = st.tuples(st.just("edge"), st.sampled_from(["coupon", "stock"]), st.integers(0, 3),
                       st.sampled_from([-4, -1, -1, 0, 0, 1, 1, 4]))
time_steps = st.one_of(small_steps, small_steps, small_steps, small_steps, coarse_steps, edge_steps, edge_steps)
# A flow: stocks created, coupons granted a moment later and paid with, the clock at an edge and
# more payments (or grants, or a pulse).
flows = st.tuples(st.lists(create_events(), min_size=1, max_size=3), small_steps,
                  st.lists(grant_events(), min_size=1, max_size=8), small_steps,
                  st.lists(pay_events(), min_size=1, max_size=6), edge_steps,
                  st.sampled_from([PAY, GRANT, CREATE_TRANSFERS])).flatmap(
    lambda f: (st.lists(pay_events(), min_size=1, max_size=4) if f[6] == PAY
               else st.lists(grant_events(), min_size=1, max_size=4) if f[6] == GRANT else st.just([])).map(
        lambda last: [(CREATE_STOCKS, 0, f[0]), (GRANT, f[1], f[2]), (PAY, f[3], f[4]), (f[6], f[5], last)]))
# A stock end refused: the capped merchant creates a stock, is topped up (its credits may not
# exceed its debits, so the room the funding made is taken), and the clock passes the end.
capped_flows = st.tuples(st.sampled_from([KEYS[11], KEYS[12]]), st.sampled_from([50, 500, 5_000]),
                         st.sampled_from(TOP_UP_IDS), small_steps, st.one_of(coarse_steps, edge_steps)).map(
    lambda f: [(CREATE_STOCKS, 0, [_create(f[0])]), (CREATE_TRANSFERS, f[3], [_top_up(CAPPED_MERCHANT, f[1], f[2])]),
               (CREATE_TRANSFERS, f[4], [])])
# Repeat buyers: one user receives several coupons of a stock with a cap above 1 (in one batch),
# then pays with each (in one batch), now and then at the same moment as another user.
repeat_flows = st.tuples(st.sampled_from([0, 5, 5, 3]), hot_users, st.integers(2, 6), small_steps,
                         st.sampled_from(USERS[4:8])).map(
    lambda f: [(CREATE_STOCKS, 0, [_create(KEYS[f[0]])]),
               (GRANT, S, [("grant", ("key", f[0]), who, r, SCAN if r % 2 else API, {})
                           for r in range(1, f[2] + 1) for who in (f[1], f[4])]),
               (PAY, f[3], [("pay", ("of", who, j), "min+1", "fresh", {}) for j in range(f[2]) for who in (f[1], f[4])])])
singles = st.tuples(batch_kinds, time_steps).map(lambda t: [(t[0][0], t[1], t[0][1])])
mixes = st.lists(st.one_of(singles, singles, singles, flows, flows, capped_flows, repeat_flows), min_size=2,
                 max_size=9).map(
    lambda segments: sum(segments, []))


# ---------------------------------------------------------------- resolving the steps

class Requests:
    """The request numbers of the payments made so far (a payment's id hides them): a retry
    names its payment's again."""

    def __init__(self):
        self.of_payment, self.fresh = {}, 1_000

    def number(self, payer, choice, coupon):
        if choice == "same" and coupon is not None and coupon["payment_id"] in self.of_payment:
            return self.of_payment[coupon["payment_id"]]
        if isinstance(choice, tuple):
            number = choice[1]
        else:
            self.fresh += 1
            number = self.fresh
        self.of_payment[coupon_payment_id(payer, number)] = number
        return number


def _pick_stock(model, target, now):
    kind, k = target
    if kind == "key":
        return STOCK_IDS[k]
    if kind == "bad":
        return k
    stocks = list(model.stocks_by_id.values())
    if kind == "active":   # one not ended by the clock yet, or at least not ended
        active = [s for s in stocks if s["state"] == STOCK_ACTIVE]
        stocks = [s for s in active if s["ends_at"] > max(now, model.last)] or active or stocks
    return stocks[k % len(stocks)]["id"] if stocks else STOCK_IDS[0]


def _pick_coupon(model, kind, k, now):
    coupons = list(model.coupons_by_id.values())
    if isinstance(kind, tuple):   # ("of", user): that user's coupons not yet redeemed
        coupons = [c for c in coupons if c["user_id"] == kind[1] and c["state"] == COUPON_AVAILABLE] or coupons
    if kind == "available":   # one not expired by the clock yet, or at least not redeemed
        available = [c for c in coupons if c["state"] == COUPON_AVAILABLE]
        coupons = [c for c in available if c["expires_at"] > max(now, model.last)] or available or coupons
    return coupons[k % len(coupons)] if coupons else None


def _price(stock, choice):
    face, low = stock["face_value"], stock["min_spend"]
    return {"min": low, "min-1": low - 1, "min+1": low + 1, "face": face, "face+1": face + 1, "double": 2 * low,
            "big": 10**9}[choice]


def _resolve_grant(model, event, now):
    _, target, user, request, channel, fault = event
    sid = _pick_stock(model, target, now)
    s = model.stocks_by_id.get(sid)
    merchant = s["merchant_id"] if s else MERCHANT
    if user == "merchant":   # the stock's own merchant as a user (allowed: its part is a transfer to itself)
        user = merchant
    out = {"stock_id": sid, "user_id": user, "request_id": request, "merchant_id": merchant, "channel": channel}
    for name, value in fault.items():
        if value == "other":
            value = {"merchant_id": MERCHANT_2 if merchant == MERCHANT else MERCHANT,
                     "channel": API if channel == SCAN else SCAN}[name]
        out[name] = value
    fault_id = fault.get("id")
    out["id"] = coupon_id(out["stock_id"], out["user_id"], out["request_id"])
    if fault_id is not None:
        out["id"] = out["id"] ^ 1 if fault_id == "flip" else fault_id
    return out


def _resolve_pay(model, requests, event, now):
    _, target, price, request, fault = event
    kind, k = (target[:2], target[2]) if target[0] == "of" else target
    c = _pick_coupon(model, kind, k, now)
    if c is None:   # nothing granted yet: a coupon that does not exist
        c = {"id": coupon_id(STOCK_IDS[0], USERS[0], 1), "stock_id": STOCK_IDS[0], "user_id": USERS[0],
             "payment_id": 0}
    s = model.stocks_by_id.get(c["stock_id"])
    payer, sid, merchant = c["user_id"], c["stock_id"], s["merchant_id"] if s else MERCHANT
    cid = c["id"]
    if kind == "other_user":
        payer = USERS[(USERS.index(payer) + 1) % len(USERS)] if payer in USERS else USERS[0]
    elif kind == "wrong_stock":
        sid = STOCK_IDS[(STOCK_IDS.index(sid) + 1) % len(STOCK_IDS)] if sid in STOCK_IDS else STOCK_IDS[0]
    elif kind == "wrong_merchant":
        merchant = MERCHANT_2 if merchant == MERCHANT else MERCHANT
    elif kind == "unknown":
        cid = coupon_id(sid, payer, 77)
    out = {"payer_id": payer, "merchant_id": merchant, "coupon_id": cid, "stock_id": sid,
           "request_id": requests.number(payer, request, c), "price": _price(s, price) if s else 2_000,
           "ledger": s["ledger"] if s else CNY}
    out.update(fault)
    return out


def _resolve(model, requests, event, now):
    if isinstance(event, dict):
        return event
    if event[0] == "grant":
        return _resolve_grant(model, event, now)
    if event[0] == "pay":
        return _resolve_pay(model, requests, event, now)
    if event[0] == "steal":   # a client transfer with a coupon payment's leg id: id_reserved
        c = _pick_coupon(model, "any", event[1], now)
        payment = c["payment_id"] if c and c["payment_id"] else coupon_payment_id(USERS[0], 1)
        return _fund(TOP_UP_IDS[-1], USERS[0], 1) | {"id": leg_id(payment, PAY, 1)}
    raise ValueError(event)


def _burst():
    return [_create(KEYS[0], id=stock_id(*key), out_stock_no=key[1], total_count=1, face_value=10, min_spend=10,
                    valid_for_s=1 + k % 3, coupon_valid_s=0) for k, key in enumerate(BURST_KEYS)]


def _edge_time(model, kind, k, d):
    if kind == "coupon":
        due = sorted(c["expires_at"] for c in model.coupons_by_id.values() if c["state"] == COUPON_AVAILABLE)
    else:
        due = sorted(s["ends_at"] for s in model.stocks_by_id.values() if s["state"] == STOCK_ACTIVE)
    return due[k % len(due)] + d if due else None


def _timed(steps, model, requests=None):
    """The steps as (operation, now_ns, events), resolved against the model as each batch runs."""
    requests = requests or Requests()
    return timed(steps, START_NS, lambda event, now: _resolve(model, requests, event, now),
                 lambda *edge: _edge_time(model, *edge), lambda burst: (CREATE_STOCKS, _burst()))


# ---------------------------------------------------------------- the core and the model

def _machine(sizes=USUAL):
    stocks_max, coupons_max, holdings_max, transfers_max = sizes
    return core.machine.Machine(accounts_max=ACCOUNTS_MAX, transfers_hot_max=transfers_max, pending_max=64,
                                orders_max=8, merchants_max=8, refunds_max=8, codes_max=8, envelopes_max=8,
                                claims_max=8, stocks_max=stocks_max, coupons_max=coupons_max,
                                holdings_max=holdings_max, fx_payments_max=8, fx_refunds_max=8, secret=SECRET)


def _model(sizes=USUAL):
    stocks_max, coupons_max, holdings_max, transfers_max = sizes
    return ModelLedger(ACCOUNTS_MAX, transfers_max, 8, SECRET, codes_max=8, refunds_max=8, merchants_max=8,
                       envelopes_max=8, claims_max=8, stocks_max=stocks_max, coupons_max=coupons_max,
                       holdings_max=holdings_max, fx_payments_max=8, fx_refunds_max=8)


def _submit(machine, operation, events, now_ns):
    return submit(machine, operation, events, now_ns, EVENT_DTYPES)


_expect = expect


def _lookup(machine, what, ids):
    table = machine.coupons if what == "holdings" else machine
    return _dicts(getattr(table, "lookup_" + what)(core.ids_array(ids)))


def _stock_ids(model):
    return list(dict.fromkeys(list(model.stocks_by_id) + LOOKUP_STOCK_IDS))


def _coupon_ids(model):
    return list(dict.fromkeys(list(model.coupons_by_id) + [coupon_id(sid, u, r) for sid in STOCK_IDS[:2]
                                                           for u in USERS[:2] for r in (1, 2)] + [0]))


def _holding_ids(model):
    return list(dict.fromkeys(list(model.holdings_by_id) + [holding_id(STOCK_IDS[0], USERS[0]), 0]))


def _assert_same_state(machine, model):
    assert_same_ledger(machine, model, ACCOUNT_IDS[:16] + USERS[:4], TOP_UP_IDS)   # (the starts' timestamps too)
    coupons = machine.coupons
    assert coupons.stock_count == len(model.stocks_by_id)
    assert coupons.coupon_count == len(model.coupons_by_id)
    assert coupons.holdings.records_total == len(model.holdings_by_id)
    assert coupons.open_count == sum(s["state"] == STOCK_ACTIVE for s in model.stocks_by_id.values())
    assert coupons.next_expiry_ns == model.next_stock_end_ns()
    stock_ids, coupon_ids, holding_ids = _stock_ids(model), _coupon_ids(model), _holding_ids(model)
    assert _lookup(machine, "stocks", stock_ids) == model.lookup_stocks(stock_ids)
    assert _lookup(machine, "coupons", coupon_ids) == model.lookup_coupons(coupon_ids)
    assert _lookup(machine, "holdings", holding_ids) == model.lookup_holdings(holding_ids)
    assert _lookup(machine, "envelopes", list(model.envelopes_by_id)) == model.lookup_envelopes(model.envelopes_by_id)


def _check_invariants(machine, stock_ids, coupon_ids):
    """What holds of the core's state after any batch (``stock_ids``, ``coupon_ids``: every
    stock created and coupon granted): the money, the caps and the analytics recomputed."""
    ledger = machine.ledger
    balance = balances(ledger)
    stocks = {s["id"]: s for s in _lookup(machine, "stocks", stock_ids)}
    coupons = _lookup(machine, "coupons", coupon_ids)
    assert len(stocks) == len(stock_ids) and len(coupons) == len(coupon_ids)
    by_stock = {sid: [] for sid in stocks}
    for c in coupons:
        by_stock[c["stock_id"]].append(c)
    # Every leg that touches a budget account, by the stock it is for (the coupon legs name the coupon).
    coupon_stock = {c["id"]: c["stock_id"] for c in coupons}
    legs = {sid: [] for sid in stocks}
    for budget in BUDGETS + (CLOSED_BUDGET,):
        for t in core.to_dicts(ledger.get_account_transfers(budget)):
            sid = t["user_data_128"] if t["user_data_128"] in stocks else coupon_stock.get(t["user_data_128"])
            assert sid is not None and t["code"] == CODE_COUPON, t   # only the stocks' legs touch a budget
            legs[sid].append(t)
    held = {budget: 0 for budget in BUDGETS + (CLOSED_BUDGET,)}
    for sid, s in stocks.items():
        mine = by_stock[sid]
        face, total = s["face_value"], s["total_count"]
        issued = s["issued_scan"] + s["issued_api"] + s["issued_pay_and_get"]
        assert s["redeemed"] <= issued <= total, s
        # The analytics, recomputed from the coupon records.
        assert s["issued_scan"] == sum(c["channel"] == SCAN for c in mine), s
        assert s["issued_api"] == sum(c["channel"] == API for c in mine), s
        assert s["issued_pay_and_get"] == 0
        redeemed = [c for c in mine if c["state"] == COUPON_REDEEMED]
        assert s["redeemed"] == len(redeemed), s
        per_user = {}
        for c in mine:
            got, used = per_user.get(c["user_id"], (0, 0))
            per_user[c["user_id"]] = (got + 1, used + (c["state"] == COUPON_REDEEMED))
        assert s["receivers"] == len(per_user), s
        assert s["repeat_buyers"] == sum(used >= 2 for _, used in per_user.values()), s
        holdings = {h["user_id"]: h for h in _lookup(machine, "holdings", [holding_id(sid, u) for u in per_user])}
        assert len(holdings) == len(per_user)
        for user, (got, used) in per_user.items():   # the cap: never more than per_user_max each
            assert (holdings[user]["received"], holdings[user]["redeemed"]) == (got, used), (s, user)
            assert got <= s["per_user_max"], (s, user)
        for c in mine:
            assert c["expires_at"] <= s["ends_at"] and c["timestamp"] < c["expires_at"], (s, c)
            if c["state"] == COUPON_REDEEMED:
                assert c["timestamp"] < c["redeemed_at"] < c["expires_at"] and c["price"] >= s["min_spend"], c
            else:
                assert c["state"] == COUPON_AVAILABLE and (c["payment_id"], c["price"], c["redeemed_at"]) == (0, 0, 0)
        # The budget legs: the funding in, one face per redeemed coupon out, the rest at the end.
        funding = [t for t in legs[sid] if t["id"] == leg_id(sid, CREATE_STOCKS, 0)]
        end = [t for t in legs[sid] if t["id"] == leg_id(sid, CREATE_STOCKS, 1)]
        paid = [t for t in legs[sid] if t["user_data_128"] != sid]
        assert len(funding) == 1 and funding[0]["amount"] == face * total and funding[0]["credit_account_id"] == \
            s["budget_account_id"], s
        assert sorted(t["user_data_128"] for t in paid) == sorted(c["id"] for c in redeemed), s   # once each
        for t in paid + end:
            assert (t["debit_account_id"], t["credit_account_id"]) == (s["budget_account_id"], s["merchant_id"]), t
        assert all(t["amount"] == face for t in paid), s
        budget_paid = sum(t["amount"] for t in paid + end)
        assert budget_paid <= face * total, s                                      # never exceeded
        assert sum(t["amount"] for t in paid) == face * s["redeemed"], s           # budget used
        for c in redeemed:   # the user's part and the face: the price, to the merchant
            user_leg = ledger.lookup_transfers(core.ids_array([leg_id(c["payment_id"], PAY, 0)]))
            user_part = sum(int(t["amount"]) for t in user_leg)
            assert user_part == c["price"] - face, c
        if s["state"] == STOCK_ACTIVE:
            assert s["redeemed"] < total and not end and s["end_result"] == 0, s
            held[s["budget_account_id"]] += face * (total - s["redeemed"])
        elif s["redeemed"] == total:   # every coupon used: nothing returns
            assert not end and s["end_result"] == 0, s
        elif s["end_result"] == 0:     # returned at the end: what the redemptions left
            assert len(end) == 1 and end[0]["amount"] == face * (total - s["redeemed"]), s
            assert end[0]["timestamp"] >= s["ends_at"], (s, end)
        else:                          # refused: the rest stays in the budget account
            assert not end, s
            held[s["budget_account_id"]] += face * (total - s["redeemed"])
    # Only the stocks' legs touch the budgets: each holds what its stocks have not paid or returned.
    assert {budget: balance[budget] for budget in held} == held


def _run_against_model(steps, sizes=USUAL):
    machine, model = _machine(sizes), _model(sizes)

    def check(_):
        _assert_same_state(machine, model)
        _check_invariants(machine, list(model.stocks_by_id), list(model.coupons_by_id))

    now = run_both(machine, model, _timed(SETUP + steps, model), _submit, _expect, check)
    # 367 days after the last creation every stock has ended: pulses end what is left (256 a batch start).
    pulse_both(machine, model, _submit, max(now, model.last) + 367 * DAY)
    _assert_same_state(machine, model)
    _check_invariants(machine, list(model.stocks_by_id), list(model.coupons_by_id))
    ring_full = model.transfers_max - len(model.transfers_by_id) < 1
    assert ring_full or all(s["state"] == STOCK_ENDED for s in model.stocks_by_id.values())
    return machine, model


SIZES = st.sampled_from([USUAL, USUAL, SMALL, SMALL, TINY_RING, ROOMY])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, SIZES)
def test_core_coupons_match_the_reference_model(steps, sizes):
    _run_against_model(steps, sizes)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, SIZES)
def test_core_coupons_match_the_reference_model_long(steps, sizes):
    _run_against_model(steps, sizes)


# ---------------------------------------------------------------- hand-made edges

def _grants(target, people, requests=(1,), channel=SCAN):
    return [("grant", target, u, r, channel, {}) for u in people for r in requests]


def _pays(targets, price="min", request="fresh"):
    return [("pay", target, price, request, {}) for target in targets]


K_LONG, K_SHORT, K_CAPPED = KEYS[0], KEYS[1], KEYS[11]   # 500 off 2,000 (10, 2 each, 1 h; coupons 60 s); ...
assert (PARAMS[K_LONG]["face_value"], PARAMS[K_LONG]["total_count"], PARAMS[K_LONG]["per_user_max"],
        PARAMS[K_LONG]["valid_for_s"], PARAMS[K_LONG]["coupon_valid_s"]) == (500, 10, 2, 3_600, 60)
assert (PARAMS[K_SHORT]["face_value"], PARAMS[K_SHORT]["min_spend"], PARAMS[K_SHORT]["total_count"],
        PARAMS[K_SHORT]["valid_for_s"]) == (100, 100, 3, 2)       # a face that pays it all, 2 s
K_MANY = KEYS[5]                                                  # 300 off 301, 40 of them, 5 each, 366 days
assert (PARAMS[K_MANY]["total_count"], PARAMS[K_MANY]["per_user_max"]) == (40, 5)


def _packet(number, expire_after_s):
    return {"id": envelope_id(MERCHANT, number), "sender_id": MERCHANT, "escrow_id": ESCROW, "total": 100, "count": 3,
            "out_envelope_no": number, "ledger": CNY, "expire_after_s": expire_after_s}


def _scenarios():
    return {
        # A coupon paid up to the nanosecond before its expires_at, refused at it; the stock's
        # grants up to the nanosecond before ends_at; the batch at ends_at ends it first.
        "expiry_edges": (USUAL, [(CREATE_STOCKS, S, [_create(K_LONG)]),
                                 (GRANT, S, _grants(("any", 0), USERS[:3])),
                                 (PAY, ("edge", "coupon", 0, -1), _pays([("of", USERS[0], 0)])),
                                 (PAY, ("edge", "coupon", 0, 0), _pays([("of", USERS[1], 0)])),
                                 (GRANT, ("edge", "stock", 0, -1), _grants(("any", 0), USERS[3:5])),
                                 (PAY, 0, _pays([("of", USERS[3], 0)])),
                                 (GRANT, ("edge", "stock", 0, 0), _grants(("any", 0), USERS[5:6])),
                                 (PAY, 0, _pays([("of", USERS[4], 0)]))]),
        # The cap and the count under many grants in one batch: one user ten times (cap 2), forty
        # users on ten coupons; then everything again (exists, or the same refusal).
        "caps_in_one_batch": (USUAL, [(CREATE_STOCKS, 0, [_create(K_LONG)]),
                                      (GRANT, 1, _grants(("any", 0), USERS[:1], range(1, 11))
                                       + _grants(("any", 0), USERS, channel=API)),
                                      ("again", 1, None)]),
        # Every coupon redeemed: the stock ends with nothing to return; a grant is then refused
        # as exhausted (issued = total_count), not as ended (that is by the clock).
        "fully_redeemed": (USUAL, [(CREATE_STOCKS, 0, [_create(K_SHORT)]),
                                   (GRANT, 1, _grants(("any", 0), USERS[:3])),
                                   (PAY, 1, _pays([("of", u, 0) for u in USERS[:3]], "face")),
                                   (GRANT, 1, _grants(("any", 0), USERS[3:4])),
                                   (PAY, 1, _pays([("of", u, 0) for u in USERS[:1]], "face", "same"))]),
        # Repeat buyers: five coupons each for two users, all paid in one batch.
        "repeat_buyers": (USUAL, [(CREATE_STOCKS, 0, [_create(K_MANY)]),
                                  (GRANT, 1, _grants(("any", 0), USERS[:2], range(1, 7))),
                                  (PAY, 1, _pays([("of", u, j) for j in range(6) for u in USERS[:2]], "min+1"))]),
        # A request number used again for another coupon: its legs' ids are taken.
        "request_reused": (USUAL, [(CREATE_STOCKS, 0, [_create(K_LONG), _create(KEYS[7])]),
                                   (GRANT, 1, _grants(("any", 0), USERS[:1], (1, 2)) + _grants(("any", 1), USERS[:1])),
                                   (PAY, 1, _pays([("of", USERS[0], 0)], "min", ("small", 1))),
                                   (PAY, 1, _pays([("of", USERS[0], 0), ("of", USERS[0], 1)], "min", ("small", 1)))]),
        # 260 one-coupon stocks end together: 256 at one batch start, 4 at the next.
        "end_bound": (ROOMY, [("burst", S, None), (GRANT, 5 * S, _grants(("any", 0), USERS[:1])),
                              (GRANT, 1, _grants(("any", 1), USERS[:1])), (CREATE_TRANSFERS, 0, [])]),
        # A full transfer ring: the stock's end stays due; its coupons are expired by the clock.
        "ring_full": (TINY_RING, [(CREATE_STOCKS, 0, [_create(K_SHORT), _create(K_LONG)]),
                                  (GRANT, 1, _grants(("any", 0), USERS[:3])),
                                  (PAY, 1, _pays([("of", u, 0) for u in USERS[:3]], "min+1")),
                                  (GRANT, 1, _grants(("any", 1), USERS[3:6])),
                                  (PAY, 1, _pays([("of", u, 0) for u in USERS[3:5]])),
                                  (CREATE_TRANSFERS, 3 * S, []),
                                  (PAY, 1, _pays([("of", USERS[5], 0)])),
                                  (CREATE_TRANSFERS, DAY, [])]),
        # The capped merchant (credits <= debits) takes 99 of the 100 its stock's funding made room
        # for, is topped up by 1: another payment, and then the end's 50 back, are refused.
        "end_refused": (USUAL, [(CREATE_STOCKS, 0, [_create(K_CAPPED)]),
                                (GRANT, 1, _grants(("any", 0), USERS[:2])),
                                (PAY, 1, _pays([("of", USERS[0], 0)])),
                                (CREATE_TRANSFERS, 1, [_top_up(CAPPED_MERCHANT, 5_000), _top_up(CAPPED_MERCHANT, 1,
                                                                                                TOP_UP_IDS[1])]),
                                (PAY, 1, _pays([("of", USERS[1], 0)])),
                                (CREATE_TRANSFERS, DAY, [])]),
        # Two packets' refunds and two stocks' ends due at one batch start: the refunds take its
        # first timestamps, the ends the next ones (soonest first), the events the rest.
        "ends_after_refunds": (USUAL, [(SEND, 0, [_packet(b"P-1", 1), _packet(b"P-2", 2)]),
                                       (CREATE_STOCKS, 0, [_create(K_SHORT), _create(KEYS[3])]),
                                       (GRANT, 3 * S, _grants(("any", 0), USERS[:1]))]),
        # The stocks_open limit, and small tables: two active stocks, six coupons, four holdings.
        "limits": (SMALL, [(SET_LIMITS, 0, [{"stocks_open": 1}]),
                           (CREATE_STOCKS, 0, [_create(K_LONG), _create(KEYS[7])]),
                           (SET_LIMITS, 0, [{"stocks_open": 3}, {"stocks_open": 2}]),
                           (CREATE_STOCKS, 0, [_create(KEYS[7]), _create(K_MANY)]),
                           (GRANT, 1, _grants(("any", 0), USERS[:3], (1, 2)) + _grants(("any", 1), USERS[3:6])),
                           (CREATE_STOCKS, DAY, [_create(K_MANY)])]),
    }


@pytest.mark.parametrize("name", sorted(_scenarios()))
def test_core_coupons_match_the_reference_model_on_the_edges(name):
    sizes, steps = _scenarios()[name]
    _run_against_model(steps, sizes)


# ---------------------------------------------------------------- retries, on the core

def _state(machine, model):
    return (ledger_state(machine, list(model.transfers_by_id) + TOP_UP_IDS), _lookup(machine, "stocks", _stock_ids(model)),
            _lookup(machine, "coupons", _coupon_ids(model)), _lookup(machine, "holdings", _holding_ids(model)))


# The mixes without what a retry may not repeat: a burst past the stocks_open limit and the limits
# themselves (a limit raised, or stocks ended by the pulses, lets a refused creation through).
retry_mixes = mixes.map(lambda steps: [s for s in steps if s[0] not in ("burst", SET_LIMITS)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(retry_mixes)
# A transfer refused for funds that a later event of its batch brings takes when retried: only
# the events that took are retried (found by a fresh clone's run).
@example([(121, 0, [("grant", ("key", 0), 99, 4, 0, {"id": "flip"})]),
          (2, 0, [{"id": 2002, "debit_account_id": 1, "credit_account_id": 11, "amount": 50, "ledger": 156, "code": 4},
                  {"id": 2001, "debit_account_id": 11, "credit_account_id": 1, "amount": 50, "ledger": 156, "code": 5}])])
def test_a_retried_batch_changes_nothing(steps):
    """Each batch again, once the clock's own changes by then are made (a pulse past the retry's
    timestamps): stocks, grants and payments that took answer ``exists``, and nothing changes."""
    model = _model()
    assert_retries_change_nothing(_machine(), model, _timed(SETUP + steps, model), _submit, _state,
                                  exists_again(CREATE_STOCKS, GRANT, PAY))


# ---------------------------------------------------------------- the model's own coupon rules (no core needed)

def _model_run(name):
    sizes, steps = _scenarios()[name]
    model = _model(sizes)
    return model, model_run(model, _timed(SETUP + steps, model), _expect)


def test_model_ids_follow_the_document():
    import hashlib
    sid = stock_id(MERCHANT, b"S-0")
    digest = hashlib.sha256(b"stck" + MERCHANT.to_bytes(16, "little") + b"S-0".ljust(32, b"\0")).digest()
    assert sid == int.from_bytes(digest[:16], "little")
    for domain, make, key, first, second in ((b"cpon", coupon_id, sid, USERS[0], 7), (b"hold", holding_id, sid, USERS[0], 0),
                                             (b"cpay", coupon_payment_id, USERS[0], 7, 0)):
        digest = hashlib.sha256(domain + key.to_bytes(16, "little") + first.to_bytes(16, "little")
                                + second.to_bytes(16, "little")).digest()
        assert (make(key, first, second) if second else make(key, first)) == int.from_bytes(digest[:16], "little")
    from core.order_keys import coupon_id as core_coupon_id, coupon_payment_id as core_payment_id, \
        holding_id as core_holding_id, stock_id as core_stock_id
    assert core_stock_id(MERCHANT, b"S-0") == sid and core_coupon_id(sid, USERS[0], 7) == coupon_id(sid, USERS[0], 7)
    assert core_holding_id(sid, USERS[0]) == holding_id(sid, USERS[0])
    assert core_payment_id(USERS[0], 7) == coupon_payment_id(USERS[0], 7)


def test_model_caps_and_counts_in_one_batch():
    model, out = _model_run("caps_in_one_batch")
    (_, grants), (_, again) = out[-2], out[-1]
    mine, others = grants[:10], grants[10:]
    assert mine == ["ok", "ok"] + ["per_user_limit_reached"] * 8
    # USERS[0]'s first request again by API: another channel; then eight more take the rest of the ten.
    assert others[:9] == ["exists_with_different_fields"] + ["ok"] * 8 and set(others[9:]) == {"stock_exhausted"}
    # Again: the stock is exhausted now (checked before the cap).
    assert again == ["exists", "exists"] + ["stock_exhausted"] * 8 + others[:1] + ["exists"] * 8 + others[9:]
    (s,) = model.lookup_stocks([stock_id(*K_LONG)])
    assert (s["issued_scan"], s["issued_api"], s["receivers"]) == (2, 8, 9)


def test_model_ends_stocks_at_most_256_a_batch_start_soonest_first_before_the_events():
    model, out = _model_run("end_bound")
    ends = sorted((t for t in model.transfers_by_id.values() if t["id"] in {
        leg_id(s["id"], CREATE_STOCKS, 1) for s in model.stocks_by_id.values()}), key=lambda t: t["timestamp"])
    (first, granted), (second_first, _) = out[-3], out[-2]
    assert len(ends) == BURST
    assert [t["timestamp"] for t in ends] == list(range(first, first + 256)) + list(
        range(second_first, second_first + BURST - 256))
    order = [(model.stocks_by_id[t["user_data_128"]]["ends_at"], model.stocks_by_id[t["user_data_128"]]["timestamp"])
             for t in ends]
    assert order == sorted(order) and granted == ["stock_ended"]
    assert second_first == first + 256 + LEGS_MAX


def test_model_fully_redeemed_and_face_only_payments():
    model, out = _model_run("fully_redeemed")
    (s,) = model.stocks_by_id.values()
    assert (s["state"], s["redeemed"], s["end_result"]) == (STOCK_ENDED, 3, 0)
    assert out[-2][1] == ["stock_exhausted"] and out[-1][1] == ["exists"]
    for c in model.coupons_by_id.values():   # the face paid it all: only the budget's leg, at ts + 1
        assert leg_id(c["payment_id"], PAY, 0) not in model.transfers_by_id
        assert model.transfers_by_id[leg_id(c["payment_id"], PAY, 1)]["timestamp"] == c["redeemed_at"] + 1
    assert leg_id(s["id"], CREATE_STOCKS, 1) not in model.transfers_by_id


def test_model_ends_stocks_after_the_packets_refunds_at_a_batch_start():
    model, out = _model_run("ends_after_refunds")
    first, granted = out[-1]
    refunds = [model.transfers_by_id[leg_id(p["id"], SEND, 1)] for p in model.envelopes_by_id.values()]
    ends = [model.transfers_by_id[leg_id(s["id"], CREATE_STOCKS, 1)] for s in model.stocks_by_id.values()]
    assert [t["timestamp"] for t in refunds] == [first, first + 1]
    assert sorted(t["timestamp"] for t in ends) == [first + 2, first + 3]   # KEYS[3] (1 s) ends first
    assert ends[1]["timestamp"] == first + 2 and granted == ["stock_ended"] and model.last == first + 4 + LEGS_MAX - 1


def test_model_end_refused_keeps_the_rest_in_the_budget():
    model, _ = _model_run("end_refused")
    (s,) = model.stocks_by_id.values()
    assert (s["state"], s["end_result"]) == (STOCK_ENDED, int(R.exceeds_debits))
    (budget,) = model.lookup_accounts([s["budget_account_id"]])
    assert budget["credits_posted"] - budget["debits_posted"] == s["face_value"] * (s["total_count"] - s["redeemed"])


# ---------------------------------------------------------------- where the core departs from the document

def _setup_machine(sizes=USUAL):
    return applied(_machine(sizes), _timed(SETUP, _model(sizes)), _submit)


def _grant_now(machine, now, stock, user, request=1):
    """One grant by scan (the stock is MERCHANT's), its result."""
    return _submit(machine, GRANT, [{"id": coupon_id(stock, user, request), "stock_id": stock, "user_id": user,
                                     "request_id": request, "merchant_id": MERCHANT, "channel": SCAN}], now)[0]


def _pay_now(machine, now, stock, user, price, request=1):
    return _submit(machine, PAY, [{"payer_id": user, "merchant_id": MERCHANT, "coupon_id": coupon_id(stock, user, 1),
                                   "stock_id": stock, "request_id": request, "price": price, "ledger": CNY}], now)[0]


def test_a_budget_account_cannot_spend_its_stocks_money_with_a_coupon():
    """docs/products.md "Money": coupons are issued at most total_count and redeemed once each,
    "so the budget pays at most what was funded: the budget is never exceeded by construction,
    and a user's coupon is never refused at the till for lack of budget". The core refuses a
    merchant that is a budget account (budget_account_invalid) but not a coupon's user: the
    budget account BUDGET receives a coupon of its own stock (10 x 500 funded, 5,000) and pays
    2,000 with it — 1,500 from the budget as the "user's" part, 500 as the face — so after six
    other users' coupons (3,000) the budget is empty and the eighth coupon of ten is refused at
    the till, exceeds_credits. The same holds for a coupon of another merchant's stock (any
    budget account pays the user's part) and for an escrow (code 4) or an FX pool (code 6) as a
    coupon's user: the money of open packets or of the FX desk, spent at a till."""
    machine = _setup_machine()
    now = START_NS + S
    stock = stock_id(*K_LONG)                              # 500 off 2,000: 10 coupons, 2 each
    assert _submit(machine, CREATE_STOCKS, [_create(K_LONG)], now) == ["ok"]
    granted = _grant_now(machine, now + S, stock, BUDGET)
    paid = _pay_now(machine, now + 2 * S, stock, BUDGET, 2_000) if granted == "ok" else "not granted"
    others = []
    for k, user in enumerate(USERS[:7]):
        assert _grant_now(machine, now + 3 * S, stock, user) == "ok"
        others.append(_pay_now(machine, now + 4 * S + k, stock, user, 2_000))
    budget_paid = sum(t["amount"] for t in core.to_dicts(machine.ledger.get_account_transfers(BUDGET))
                      if t["debit_account_id"] == BUDGET)
    # The document's promise: every other user's coupon is honoured, the budget pays at most the
    # faces (a product's own account receives no coupon: product_account).
    assert granted == "product_account" and others == ["ok"] * 7, (granted, paid, others)
    assert budget_paid <= 500 * 8, budget_paid



def test_an_escrow_cannot_spend_its_open_packets_money_with_a_coupon():
    """The escrow holds a packet of 100 in 3 shares; it receives a coupon (300 off 301) and pays
    400 with it: 100 from the escrow, the packet's whole remainder, to the merchant; then the
    packet's claims answer exceeds_credits (its refund would fail too)."""
    machine = _setup_machine()
    now = START_NS + S
    stock = stock_id(*K_MANY)
    assert _submit(machine, SEND, [_packet(b"P-1", 600)], now) == ["ok"]
    assert _submit(machine, CREATE_STOCKS, [_create(K_MANY)], now) == ["ok"]
    granted = _grant_now(machine, now + S, stock, ESCROW)
    paid = _pay_now(machine, now + 2 * S, stock, ESCROW, 400) if granted == "ok" else "not granted"
    from core.order_keys import envelope_claims
    claims = machine.apply(117, envelope_claims([{"envelope_id": envelope_id(MERCHANT, b"P-1"), "claimer_id": u}
                                                 for u in USERS[:3]]), now + 3 * S)
    (escrow,) = core.to_dicts(machine.ledger.lookup_accounts([ESCROW]))
    # The document's promise: the packet's three claims take its 100, all of the escrow's money.
    assert not claims["result"].any() and escrow["debits_posted"] == escrow["credits_posted"] == 100, (
        granted, paid, claims["result"].tolist(), escrow)
