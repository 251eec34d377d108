"""Properties of cross-border payments: the compiled core (``core.machine.Machine`` with its fx
component, ``core/fx.pyx``) behaves exactly like the reference model (tests/model.py, written from
docs/products.md "Cross-border payments").

Random mixes of batches — ``set_rates`` (five pairs over four currencies, two of them sharing
their pools both ways, rates from 1 ppb to the largest; bad input: a zero or too large rate, the
same currency, pools that are not (another code, another currency, unknown, not the pair's
first), reserved fields), ``pay_cross_border`` (at a fresh quote, at a stale one after the rate
changed: rate_changed; a payer amount off by one; retries with the same and with other fields;
unknown payers and merchants, the other currency, a payer without the money, a merchant whose
credits may not exceed its debits, a closed merchant, an FX pool short of the merchant's currency,
the pool itself as the payer), ``refund_cross_border`` (partial and full refunds in random pieces,
the rest plus one, retries, another merchant, unknown payments) and pulses — run through both; after
every batch the results, the quotes of every pair, every account, rate, payment, refund and transfer
and the activity features must be identical. Small tables (three payments, four refunds; a transfer
ring that fills) are drawn too.

On the core's state, after every batch: per currency debits equal credits; every payer and
merchant is where it started less (or plus) its open FX positions, in its own currency, so a
payment plus its full refund leaves both exactly where they started, whatever the rate did in
between; each FX pool's balance is the sum of the open positions through it; no refund is above
what was paid; a payment's refunds' payer amounts are each floor(b' x a / b) but the last, which
takes the rest, so they sum to its payer amount once it is fully refunded; the locked rate gives
the payer amount (the payer pays the rounding, less than one minor unit). Separately: a retried
batch changes nothing; hand-made edges; the places where the core departs from the document, each
an xfail(strict) test.
"""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import core
import core.machine
from tests.model import (PPB, U64, U128, ModelLedger, R, fx_payer_amount, fx_payment_id, fx_refund_id, fx_refund_share,
                         leg_id)
from tests.product_properties import (applied, assert_retries_change_nothing, assert_same_ledger, balances, exists_again,
                                      expect, ledger_state, model_run, mostly as _mostly, run_both, submit, timed)
from tests.test_order_properties import _dicts

S = 1_000_000_000
START_NS = 1_700_000_000 * S
SECRET = b"tally property tests: fx paymnts"
assert len(SECRET) == 32

# Operation numbers (docs/products.md; core/operations.py).
CREATE_ACCOUNTS, CREATE_TRANSFERS, SET_RATES, PAY, REFUND = 1, 2, 125, 126, 127
EVENT_DTYPES = {SET_RATES: core.records.FX_RATE_DTYPE, PAY: core.records.FX_PAY_DTYPE,
                REFUND: core.records.FX_REFUND_DTYPE}
CODE_FX = 10
FORBIDDEN = 1 << 15

CNY, USD, EUR, JPY = 156, 840, 978, 392
FUNDING = {CNY: 1, USD: 2, EUR: 3, JPY: 4}
POOL_CNY, POOL_USD, POOL_EUR, POOL_JPY, POOL_CNY_2, NOT_POOL = 5, 6, 7, 8, 9, 10
PAYER_CNY, PAYER_CNY_2, PAYER_USD, PAYER_EUR, POOR_PAYER, OPEN_PAYER = 11, 12, 13, 14, 15, 16
MERCHANT_USD, MERCHANT_CNY, MERCHANT_EUR, CAPPED_MERCHANT, CLOSED_MERCHANT, MERCHANT_JPY = 17, 18, 19, 20, 21, 22
UNKNOWN = 99
POOLS = (POOL_CNY, POOL_USD, POOL_EUR, POOL_JPY, POOL_CNY_2)
SETUP_ACCOUNTS = [{"id": FUNDING[c], "ledger": c, "code": 3} for c in (CNY, USD, EUR, JPY)] + [
    {"id": POOL_CNY, "ledger": CNY, "code": 6},                    # FX pools (code 6): may go negative,
    {"id": POOL_USD, "ledger": USD, "code": 6},
    {"id": POOL_EUR, "ledger": EUR, "code": 6, "flags": 2},        # but the EUR one, funded
    {"id": POOL_JPY, "ledger": JPY, "code": 6},
    {"id": POOL_CNY_2, "ledger": CNY, "code": 6},                  # a second CNY pool (the JPY pair's)
    {"id": NOT_POOL, "ledger": USD, "code": 2},
    {"id": PAYER_CNY, "ledger": CNY, "code": 1, "flags": 2},
    {"id": PAYER_CNY_2, "ledger": CNY, "code": 1, "flags": 2},
    {"id": PAYER_USD, "ledger": USD, "code": 1, "flags": 2},
    {"id": PAYER_EUR, "ledger": EUR, "code": 1, "flags": 2},
    {"id": POOR_PAYER, "ledger": CNY, "code": 1, "flags": 2},
    {"id": OPEN_PAYER, "ledger": CNY, "code": 1},                  # no limit: its balance may go negative
    {"id": MERCHANT_USD, "ledger": USD, "code": 2},
    {"id": MERCHANT_CNY, "ledger": CNY, "code": 2},
    {"id": MERCHANT_EUR, "ledger": EUR, "code": 2},
    {"id": CAPPED_MERCHANT, "ledger": USD, "code": 2, "flags": 4},  # credits may not exceed debits
    {"id": CLOSED_MERCHANT, "ledger": USD, "code": 2, "flags": 8},
    {"id": MERCHANT_JPY, "ledger": JPY, "code": 2},
]
ACCOUNT_IDS = [a["id"] for a in SETUP_ACCOUNTS]
ACCOUNTS_MAX = len(SETUP_ACCOUNTS)
LEDGER_OF = {a["id"]: a["ledger"] for a in SETUP_ACCOUNTS}
FUNDS = {PAYER_CNY: 10**12, PAYER_CNY_2: 10**9, PAYER_USD: 10**9, PAYER_EUR: 10**9, POOR_PAYER: 500,
         POOL_EUR: 50_000, CAPPED_MERCHANT: 0}
SETUP_TRANSFERS = [{"id": 1000 + k, "debit_account_id": FUNDING[LEDGER_OF[a]], "credit_account_id": a, "amount": amount,
                    "ledger": LEDGER_OF[a], "code": 4} for k, (a, amount) in enumerate(FUNDS.items()) if amount]
SETUP_TRANSFERS.append({"id": 1100, "debit_account_id": CAPPED_MERCHANT, "credit_account_id": FUNDING[USD],
                        "amount": 3_000, "ledger": USD, "code": 5})   # room for 30.00 USD of credits
SETUP = [(CREATE_ACCOUNTS, 0, SETUP_ACCOUNTS), (CREATE_TRANSFERS, 0, SETUP_TRANSFERS)]
SETUP_TRANSFER_COUNT = len(SETUP_TRANSFERS)

# The pairs, with their pools (fixed at a pair's first rate), payers and merchants. CNY -> USD
# and USD -> CNY share their pools; JPY -> CNY has no rate ever (rate_not_found).
PAIRS = [(CNY, USD), (USD, CNY), (CNY, EUR), (EUR, USD), (CNY, JPY)]
POOLS_OF = {(CNY, USD): (POOL_CNY, POOL_USD), (USD, CNY): (POOL_USD, POOL_CNY), (CNY, EUR): (POOL_CNY, POOL_EUR),
            (EUR, USD): (POOL_EUR, POOL_USD), (CNY, JPY): (POOL_CNY_2, POOL_JPY), (JPY, CNY): (POOL_JPY, POOL_CNY)}
PAYERS_OF = {CNY: [PAYER_CNY, PAYER_CNY, PAYER_CNY_2], USD: [PAYER_USD], EUR: [PAYER_EUR], JPY: [PAYER_CNY]}
MERCHANTS_OF = {USD: [MERCHANT_USD, MERCHANT_USD, CAPPED_MERCHANT], CNY: [MERCHANT_CNY], EUR: [MERCHANT_EUR],
                JPY: [MERCHANT_JPY]}
PAYERS = (PAYER_CNY, PAYER_CNY_2, PAYER_USD, PAYER_EUR, POOR_PAYER, OPEN_PAYER)
MERCHANTS = (MERCHANT_USD, MERCHANT_CNY, MERCHANT_EUR, CAPPED_MERCHANT, CLOSED_MERCHANT, MERCHANT_JPY)
RATES = [138_000_000, 150_000_000, 7_246_376_812, 1, PPB, 10**18, 999_999_999, 13_800_000, 20_000_000_000]
AMOUNTS = [1, 2, 7, 100, 333, 10_000, 1_000_000, 10**10]

# Table sizes (fx_payments_max, fx_refunds_max, transfers_max): the usual; small (three payments,
# four refunds); a transfer ring that fills (a leg refused after the first: undone).
USUAL, SMALL, TINY_RING = (256, 256, 2048), (3, 4, 2048), (64, 64, SETUP_TRANSFER_COUNT + 7)


# ---------------------------------------------------------------- strategies

pairs = _mostly(st.sampled_from(PAIRS[:2] + PAIRS), st.just((JPY, CNY)), 3)


def _rate(pair, rate_ppb, **fields):
    return dict({"from_ledger": pair[0], "to_ledger": pair[1], "rate_ppb": rate_ppb, "pool_from_id": POOLS_OF[pair][0],
                 "pool_to_id": POOLS_OF[pair][1]}, **fields)


@st.composite
def rate_events(draw):
    pair = draw(st.sampled_from(PAIRS))
    event = _rate(pair, draw(_mostly(st.sampled_from(RATES), st.sampled_from([0, 10**18 + 1, 2**64 - 1]))))
    if draw(_mostly(st.just(False), st.just(True), 8)):   # pools that are not, or not the pair's first
        side = draw(st.sampled_from(["pool_from_id", "pool_to_id"]))
        event[side] = draw(st.sampled_from([NOT_POOL, UNKNOWN, POOL_CNY_2, POOL_USD, PAYER_CNY, POOL_JPY]))
    if draw(_mostly(st.just(False), st.just(True), 8)):
        event.update(draw(st.sampled_from([{"to_ledger": pair[0]}, {"from_ledger": 0}, {"to_ledger": 0},
                                           {"version": 1}, {"updated_at": 1}, {"reserved": 1}, {"reserved_a": 1},
                                           {"flags": 1}, {"timestamp": 1}])))
    return event


# A payment is resolved against the model's rates when its batch runs: ("fresh") the quote now,
# ("stale", k) the k-th last quote shown for the pair (rate_changed once the rate moved), ("off", d)
# the quote's payer amount + d, ("version", d) the quote's version + d.
quote_kinds = _mostly(st.sampled_from([("fresh",), ("fresh",), ("fresh",), ("stale", 0), ("stale", 1)]),
                      st.sampled_from([("off", -1), ("off", 1), ("version", 1), ("version", -1)]), 10)
pay_faults = st.sampled_from([{"request_id": 0}, {"merchant_amount": 0}, {"payer_amount": 0}, {"payer_ledger": 0},
                              {"merchant_ledger": 0}, {"timestamp": 1}, {"reserved": 1}, {"flags": 1},
                              {"flags": FORBIDDEN}, {"payer_id": UNKNOWN}, {"merchant_id": UNKNOWN},
                              {"payer_id": "other_currency"}, {"merchant_id": "other_currency"},
                              {"payer_id": "pool"}, {"merchant_id": "pool"}, {"merchant_id": CLOSED_MERCHANT},
                              {"payer_id": POOR_PAYER}, {"payer_id": OPEN_PAYER}])


@st.composite
def pay_events(draw):
    pair = draw(pairs)
    return ("pay", pair, draw(st.sampled_from(PAYERS_OF[pair[0]])), draw(st.sampled_from(MERCHANTS_OF[pair[1]])),
            draw(st.sampled_from(AMOUNTS)), draw(quote_kinds), draw(_mostly(st.integers(1, 4), st.integers(5, 50), 60)),
            draw(_mostly(st.just({}), pay_faults, 12)))


# A refund names a payment: ("open", k) the k-th not fully refunded, ("any", k), ("unknown", k);
# and a piece of what is left: all of it, half, a third, one unit, a random share, or one more.
refund_targets = _mostly(st.tuples(st.sampled_from(["open", "open", "any"]), st.integers(0, 15)),
                         st.tuples(st.just("unknown"), st.integers(0, 3)), 5)
pieces = st.one_of(st.sampled_from(["rest", "half", "third", "one", "rest+1"]), st.floats(0.01, 0.99))
refund_faults = st.sampled_from([{"id": "flip"}, {"id": 0}, {"request_id": 0}, {"merchant_amount": 0},
                                 {"payer_amount": 1}, {"timestamp": 1}, {"reserved": 1}, {"flags": 1},
                                 {"flags": FORBIDDEN}, {"merchant_id": "other"}])


@st.composite
def refund_events(draw, target=None, piece=None):
    return ("refund", target if target is not None else draw(refund_targets), piece if piece is not None else draw(pieces),
            draw(_mostly(st.integers(1, 3), st.integers(4, 40), 50)), draw(_mostly(st.just({}), refund_faults, 8)))


batch_kinds = st.one_of(
    st.tuples(st.just(SET_RATES), st.lists(rate_events(), min_size=1, max_size=3)),
    st.tuples(st.just(PAY), st.lists(pay_events(), min_size=1, max_size=8)),
    st.tuples(st.just(PAY), st.lists(pay_events(), min_size=1, max_size=8)),
    st.tuples(st.just(REFUND), st.lists(refund_events(), min_size=1, max_size=8)),
    st.tuples(st.just(REFUND), st.lists(refund_events(), min_size=1, max_size=8)),
    st.tuples(st.sampled_from([CREATE_TRANSFERS, PAY, REFUND, SET_RATES]), st.just([])),   # pulses
    st.tuples(st.just("again"), st.none()),   # the previous batch again: a client's retry
)
steps = st.sampled_from([0, 0, 1, 4, S, 60 * S, 86_400 * S])
# A flow: rates set, payments at the quotes, the rate changed (a stale quote after it), refunds of
# the first payments in pieces, at the locked rate, until they are whole.
flows = st.tuples(st.lists(st.tuples(st.sampled_from(PAIRS), st.sampled_from(RATES)), min_size=1, max_size=3),
                  st.lists(pay_events(), min_size=1, max_size=5), st.tuples(st.sampled_from(PAIRS),
                                                                            st.sampled_from(RATES)),
                  st.lists(pay_events(), min_size=1, max_size=3),
                  st.lists(st.lists(refund_events(target=None), min_size=1, max_size=4), min_size=1, max_size=4)).map(
    lambda f: [(SET_RATES, 0, [_rate(p, r) for p, r in f[0]]), (PAY, 1, f[1]), (SET_RATES, S, [_rate(*f[2])]),
               (PAY, 1, f[3])] + [(REFUND, S, pieces_) for pieces_ in f[4]])
# One payment refunded in pieces, each batch a piece, the last all the rest, the rate moved between.
piecewise = st.tuples(pay_events(), st.lists(st.one_of(st.floats(0.01, 0.9), st.just("one"), st.just("third")),
                                             min_size=1, max_size=5),
                      st.tuples(st.sampled_from(PAIRS), st.sampled_from(RATES))).map(
    lambda f: [(PAY, 0, [f[0][:5] + (("fresh",), 1000, {})]), (SET_RATES, 1, [_rate(*f[2])])]
    + [(REFUND, 1, [("refund", ("last", 0), piece, 100 + k, {})]) for k, piece in enumerate(f[1])]
    + [(REFUND, 1, [("refund", ("last", 0), "rest", 200, {})])])
singles = st.tuples(batch_kinds, steps).map(lambda t: [(t[0][0], t[1], t[0][1])])
FIRST_RATES = (SET_RATES, 0, [_rate(p, RATES[k]) for k, p in enumerate(PAIRS)])
mixes = st.lists(st.one_of(singles, singles, singles, flows, piecewise), min_size=2, max_size=8).map(
    lambda segments: [FIRST_RATES] + sum(segments, []))


# ---------------------------------------------------------------- resolving the steps

class Quotes:
    """The quotes shown so far, by pair (the last few): a stale one is paid after the rate moved."""

    def __init__(self):
        self.shown = {}

    def show(self, model, pair, amount):
        quote = model.quote(pair[0], pair[1], [amount])[0]
        if quote["result"] == 0:
            self.shown.setdefault(pair, []).insert(0, quote)
            del self.shown[pair][4:]
        return quote

    def stale(self, pair, k, amount):
        old = self.shown.get(pair, [])
        return old[k % len(old)] if old else None


def _resolve_pay(model, quotes, event):
    _, pair, payer, merchant, amount, kind, request, fault = event
    quote = quotes.show(model, pair, amount)
    if kind[0] == "stale":
        quote = quotes.stale(pair, kind[1], amount) or quote
        amount = quote["merchant_amount"]
    # (No quote for a pair without a rate, or an amount too large: the payer's amount as the merchant's.)
    payer_amount = quote["payer_amount"] or amount
    version = quote["rate_version"] or model.rates.get(pair, {}).get("version", 0)
    if kind[0] == "off":
        payer_amount = max(0, payer_amount + kind[1])
    elif kind[0] == "version":
        version = max(0, version + kind[1])
    out = {"payer_id": payer, "merchant_id": merchant, "request_id": request, "merchant_amount": amount,
           "payer_amount": payer_amount, "rate_version": version, "payer_ledger": pair[0], "merchant_ledger": pair[1]}
    for name, value in fault.items():
        if value == "other_currency":   # an account of another currency than the pair's side
            value = {"payer_id": MERCHANT_USD if pair[0] != USD else PAYER_CNY,
                     "merchant_id": MERCHANT_CNY if pair[1] != CNY else MERCHANT_USD}[name]
        elif value == "pool":           # the pair's own pool on that side
            value = POOLS_OF[pair][0 if name == "payer_id" else 1]
        out[name] = value
    if out["payer_amount"] >= 1 << 64 or out["merchant_amount"] >= 1 << 64:
        out["payer_amount"] = 0   # (an amount the rate makes too large for 64 bits: never quoted)
    return out


def _pick_payment(model, kind, k):
    payments = list(model.fx_payments_by_id.values())
    if kind == "open":
        payments = [p for p in payments if p["merchant_refunded"] < p["merchant_amount"]] or payments
    elif kind == "last":
        payments = payments[-1:]
    return payments[k % len(payments)] if payments else None


def _piece(left, piece):
    if isinstance(piece, tuple):   # ("exactly", n)
        return piece[1]
    if piece == "rest":
        return left
    if piece == "rest+1":
        return left + 1
    if piece == "half":
        return max(1, left // 2)
    if piece == "third":
        return max(1, left // 3)
    if piece == "one":
        return 1
    return max(1, int(left * piece))


def _resolve_refund(model, event):
    _, (kind, k), piece, request, fault = event
    p = None if kind == "unknown" else _pick_payment(model, kind, k)
    if p is None:
        p = {"id": fx_payment_id(PAYER_CNY, 9_000 + k), "merchant_id": MERCHANT_USD, "merchant_amount": 100,
             "merchant_refunded": 0}
    out = {"payment_id": p["id"], "merchant_id": p["merchant_id"], "request_id": request,
           "merchant_amount": _piece(p["merchant_amount"] - p["merchant_refunded"], piece)}
    for name, value in fault.items():
        if value == "other":
            value = MERCHANT_CNY if p["merchant_id"] != MERCHANT_CNY else MERCHANT_USD
        if name != "id":
            out[name] = value
    out["id"] = fx_refund_id(out["payment_id"], out["request_id"])
    if "id" in fault:
        out["id"] = out["id"] ^ 1 if fault["id"] == "flip" else fault["id"]
    return out


def _resolve(model, quotes, event):
    if isinstance(event, dict):
        return event
    if event[0] == "pay":
        return _resolve_pay(model, quotes, event)
    if event[0] == "refund":
        return _resolve_refund(model, event)
    raise ValueError(event)


def _timed(steps, model):
    """The steps as (operation, now_ns, events), resolved against the model as each batch runs."""
    quotes = Quotes()
    return timed(steps, START_NS, lambda event, now: _resolve(model, quotes, event))


# ---------------------------------------------------------------- the core and the model

def _machine(sizes=USUAL):
    payments_max, refunds_max, transfers_max = sizes
    return core.machine.Machine(accounts_max=ACCOUNTS_MAX, transfers_hot_max=transfers_max, pending_max=8,
                                orders_max=8, merchants_max=8, refunds_max=8, codes_max=8, envelopes_max=8,
                                claims_max=8, stocks_max=8, coupons_max=8, holdings_max=8,
                                fx_payments_max=payments_max, fx_refunds_max=refunds_max, secret=SECRET)


def _model(sizes=USUAL):
    payments_max, refunds_max, transfers_max = sizes
    return ModelLedger(ACCOUNTS_MAX, transfers_max, 8, SECRET, codes_max=8, refunds_max=8, merchants_max=8,
                       envelopes_max=8, claims_max=8, stocks_max=8, coupons_max=8, holdings_max=8,
                       fx_payments_max=payments_max, fx_refunds_max=refunds_max)


def _submit(machine, operation, events, now_ns):
    return submit(machine, operation, events, now_ns, EVENT_DTYPES)


_expect = expect


def _lookup(machine, what, ids):
    return _dicts(getattr(machine, "lookup_" + what)(core.ids_array(ids)))


QUOTE_AMOUNTS = [0, 1, 3, 100, 333, 10**6, 10**10, 2**40, 2**63, U64 - 1, U64]


def _assert_same_quotes(machine, model):
    for pair in PAIRS + [(JPY, CNY), (CNY, CNY)]:
        got = _dicts(machine.fx.quote(pair[0], pair[1], QUOTE_AMOUNTS))
        assert got == model.quote(pair[0], pair[1], QUOTE_AMOUNTS), pair


def _assert_same_state(machine, model):
    assert_same_ledger(machine, model, POOLS + PAYERS + MERCHANTS)
    pair_ids = [a | b << 32 for a, b in PAIRS + [(JPY, CNY)]]
    assert _dicts(machine.lookup_rates(pair_ids)) == model.lookup_rates(PAIRS + [(JPY, CNY)])
    assert machine.fx.rate_count == len(model.rates)
    assert machine.fx.payment_count == len(model.fx_payments_by_id)
    assert machine.fx.refunds.records_total == len(model.fx_refunds_by_id)
    payment_ids = list(model.fx_payments_by_id) + [fx_payment_id(PAYER_CNY, 9_000), 0]
    assert _lookup(machine, "fx_payments", payment_ids) == model.lookup_fx_payments(payment_ids)
    refund_ids = list(model.fx_refunds_by_id) + [0, U128]
    assert _lookup(machine, "fx_refunds", refund_ids) == model.lookup_fx_refunds(refund_ids)
    _assert_same_quotes(machine, model)


def _check_invariants(machine, payment_ids, refund_ids):
    """What holds of the core's state after any batch (``payment_ids``, ``refund_ids``: every
    payment and refund made)."""
    ledger = machine.ledger
    balance = balances(ledger)
    # Where each account started: the setup's transfers.
    expected = {a: 0 for a in ACCOUNT_IDS}
    for t in SETUP_TRANSFERS:
        expected[t["debit_account_id"]] -= t["amount"]
        expected[t["credit_account_id"]] += t["amount"]
    payments = _lookup(machine, "fx_payments", payment_ids)
    refunds = _lookup(machine, "fx_refunds", refund_ids)
    assert len(payments) == len(payment_ids) and len(refunds) == len(refund_ids)
    rates = {(r["from_ledger"], r["to_ledger"]): r for r in _dicts(machine.lookup_rates(
        [a | b << 32 for a, b in PAIRS]))}
    of_payment = {p["id"]: [] for p in payments}
    for x in refunds:
        of_payment[x["payment_id"]].append(x)
    for p in payments:
        a, b = p["payer_amount"], p["merchant_amount"]
        mine = sorted(of_payment[p["id"]], key=lambda x: x["timestamp"])
        # The locked rate gives the payer's amount: the payer pays the rounding, less than a unit.
        assert a * p["rate_ppb"] >= b * PPB > (a - 1) * p["rate_ppb"], p
        # No refund above what was paid; each refund's share, the last the rest.
        assert p["merchant_refunded"] <= b and p["payer_refunded"] <= a, p
        assert (len(mine), sum(x["merchant_amount"] for x in mine), sum(x["payer_amount"] for x in mine)) == (
            p["refund_count"], p["merchant_refunded"], p["payer_refunded"]), p
        done_b = 0
        for x in mine:
            done_b += x["merchant_amount"]
            if done_b < b:
                assert x["payer_amount"] == x["merchant_amount"] * a // b, (p, x)
        if p["merchant_refunded"] == b:
            assert p["payer_refunded"] == a, p
        # Its legs and its refunds' move exactly these amounts, each in its own currency.
        pool_from, pool_to = rates[(p["payer_ledger"], p["merchant_ledger"])]["pool_from_id"], \
            rates[(p["payer_ledger"], p["merchant_ledger"])]["pool_to_id"]
        ids = [leg_id(p["id"], PAY, 0), leg_id(p["id"], PAY, 1)] + [leg_id(x["id"], REFUND, n) for x in mine
                                                                     for n in (0, 1)]
        legs = core.to_dicts(ledger.lookup_transfers(core.ids_array(ids)))
        assert len(legs) == 2 + len(mine) + sum(x["payer_amount"] > 0 for x in mine), p
        net = {}
        for t in legs:
            assert t["code"] == CODE_FX and t["user_data_128"] == p["id"], t
            assert t["ledger"] == LEDGER_OF[t["debit_account_id"]] == LEDGER_OF[t["credit_account_id"]], t
            net[t["debit_account_id"]] = net.get(t["debit_account_id"], 0) - t["amount"]
            net[t["credit_account_id"]] = net.get(t["credit_account_id"], 0) + t["amount"]
        open_a, open_b = a - p["payer_refunded"], b - p["merchant_refunded"]
        assert net == {p["payer_id"]: -open_a, pool_from: open_a, pool_to: -open_b, p["merchant_id"]: open_b}, p
        for account, amount in net.items():
            expected[account] += amount
    # Every payer, merchant and pool is where it started plus its open positions: a payment fully
    # refunded left its payer and merchant exactly where they were, in their own currencies.
    assert {a: balance[a] for a in expected} == expected


def _run_against_model(steps, sizes=USUAL):
    machine, model = _machine(sizes), _model(sizes)

    def check(index):
        _assert_same_state(machine, model)
        if index >= len(SETUP):   # (the invariants count from the setup's balances)
            _check_invariants(machine, list(model.fx_payments_by_id), list(model.fx_refunds_by_id))

    run_both(machine, model, _timed(SETUP + steps, model), _submit, _expect, check)
    return machine, model


SIZES = st.sampled_from([USUAL, USUAL, USUAL, SMALL, TINY_RING])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, SIZES)
def test_core_cross_border_payments_match_the_reference_model(steps, sizes):
    _run_against_model(steps, sizes)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, SIZES)
def test_core_cross_border_payments_match_the_reference_model_long(steps, sizes):
    _run_against_model(steps, sizes)


# ---------------------------------------------------------------- hand-made edges

def _pay(pair, amount, payer=None, merchant=None, request=1, kind=("fresh",)):
    return ("pay", pair, payer or PAYERS_OF[pair[0]][0], merchant or MERCHANTS_OF[pair[1]][0], amount, kind, request,
            {})


def _refund(target, piece, request):
    return ("refund", target, piece, request, {})


CU, UC, CE = (CNY, USD), (USD, CNY), (CNY, EUR)


def _scenarios():
    return {name: (sizes, [FIRST_RATES] + steps) for name, (sizes, steps) in _edges().items()}


def _edges():
    return {
        # A payment at 0.138, the rate moved to 0.150: a stale quote is refused, the refund is at
        # the locked rate and leaves payer and merchant where they started; the other way round too.
        "locked_rate": (USUAL, [(SET_RATES, 0, [_rate(CU, 138_000_000), _rate(UC, 7_246_376_812)]),
                                (PAY, 1, [_pay(CU, 100_00), _pay(UC, 724_64)]),
                                (SET_RATES, 1, [_rate(CU, 150_000_000), _rate(UC, 6_666_666_667)]),
                                (PAY, 1, [_pay(CU, 50_00, request=2, kind=("stale", 1)),
                                          _pay(CU, 50_00, request=3)]),
                                (REFUND, 1, [_refund(("any", 0), "rest", 1), _refund(("any", 1), "rest", 1)]),
                                (REFUND, 1, [_refund(("any", 0), "one", 2), _refund(("any", 0), ("exactly", 100_00), 1)])]),
        # 333 refunded 100, 100, then 134 (one more than is left), 133, retries; shares floor(b' a / b).
        "pieces": (USUAL, [(PAY, 0, [_pay(CU, 333)]),
                           (REFUND, 1, [_refund(("any", 0), "third", 1), _refund(("any", 0), "third", 2)]),
                           (REFUND, 1, [_refund(("any", 0), "rest+1", 3), _refund(("any", 0), "rest", 3),
                                        _refund(("any", 0), "one", 1), _refund(("any", 0), "one", 4)])]),
        # A payer amount smaller than the merchant's (20 CNY-units per USD-unit... at 20 ppb-units:
        # a = ceil(b / 20)): refunds of one unit return nothing but the last, which returns the rest.
        "refunds_returning_nothing": (USUAL, [(SET_RATES, 0, [_rate(CU, 20_000_000_000)]),
                                              (PAY, 0, [_pay(CU, 41)]),
                                              (REFUND, 1, [_refund(("any", 0), "one", k) for k in range(1, 20)]),
                                              (REFUND, 1, [_refund(("any", 0), "rest", 20)])]),
        # The EUR pool (never overdrawn) pays out its 50,000 and then refuses: the payer's leg undone.
        "pool_short": (USUAL, [(SET_RATES, 0, [_rate(CE, PPB)]),
                               (PAY, 0, [_pay(CE, 30_000), _pay(CE, 30_000, request=2), _pay(CE, 20_000, request=3)]),
                               (REFUND, 1, [_refund(("any", 0), "rest", 1)]),
                               (PAY, 1, [_pay(CE, 30_000, request=2)])]),
        # The merchant capped by its debits (30.00 USD of room), and a closed one: the payer's leg undone.
        "merchant_refuses": (USUAL, [(PAY, 0, [_pay(CU, 20_00, merchant=CAPPED_MERCHANT),
                                               _pay(CU, 20_00, merchant=CAPPED_MERCHANT, request=2),
                                               _pay(CU, 10_00, merchant=CLOSED_MERCHANT, request=3)]),
                                     (REFUND, 1, [_refund(("any", 0), "rest", 1)]),
                                     (PAY, 1, [_pay(CU, 20_00, merchant=CAPPED_MERCHANT, request=2)])]),
        # The largest rate and the smallest, the largest amounts the payer's 64 bits hold.
        "rate_extremes": (USUAL, [(SET_RATES, 0, [_rate(CU, 1), _rate(UC, 10**18)]),
                                  (PAY, 0, [_pay(CU, 18_446_744_073, payer=OPEN_PAYER),
                                            _pay(CU, 18_446_744_074, payer=OPEN_PAYER, request=2),
                                            _pay(UC, 10**10), _pay(UC, 1, request=2)]),
                                  (REFUND, 1, [_refund(("any", k), "half", 1) for k in range(3)]),
                                  (REFUND, 1, [_refund(("any", k), "rest", 2) for k in range(3)])]),
        # A full transfer ring: a payment's second leg refused, its first undone.
        "ring_full": (TINY_RING, [(PAY, 0, [_pay(CU, 100 + k, request=k) for k in range(1, 5)]),
                                  (REFUND, 1, [_refund(("any", 0), "rest", 1)])]),
        # Three payments, four refunds: the tables' limits.
        "small_tables": (SMALL, [(PAY, 0, [_pay(CU, 100 + k, request=k) for k in range(1, 5)]),
                                 (REFUND, 1, [_refund(("any", k % 3), "one", k) for k in range(1, 6)])]),
    }


@pytest.mark.parametrize("name", sorted(_scenarios()))
def test_core_cross_border_payments_match_the_reference_model_on_the_edges(name):
    sizes, steps = _scenarios()[name]
    _run_against_model(steps, sizes)


def test_the_rate_table_holds_rates_max_pairs():
    """1,024 pairs over 33 currencies: the 1,025th answers rates_limit_reached; a pair set
    before still takes a new rate (its version goes on), on the core as in the model."""
    ledgers = list(range(1, 34))
    accounts = [{"id": 100 + k, "ledger": k, "code": 6} for k in ledgers]
    machine = core.machine.Machine(accounts_max=40, transfers_hot_max=64, secret=SECRET)
    model = ModelLedger(40, 64, 8, SECRET)
    pairs_ = [(a, b) for a in ledgers for b in ledgers if a != b]
    events = [{"from_ledger": a, "to_ledger": b, "rate_ppb": 1 + a * 1000 + b, "pool_from_id": 100 + a,
               "pool_to_id": 100 + b} for a, b in pairs_[:1_025]]
    batches = [(CREATE_ACCOUNTS, accounts), (SET_RATES, events[:1_000]), (SET_RATES, events[1_000:]),
               (SET_RATES, [dict(events[0], rate_ppb=77), dict(events[-1], rate_ppb=77)])]
    outs = []
    for k, (operation, batch) in enumerate(batches):
        got = _submit(machine, operation, batch, START_NS + k)
        assert got == _expect(model, operation, batch, START_NS + k)
        outs.append(got)
    assert outs[2] == ["ok"] * 24 + ["rates_limit_reached"] and outs[3] == ["ok", "rates_limit_reached"]
    assert machine.fx.rate_count == 1_024
    assert _dicts(machine.lookup_rates([1 | 2 << 32])) == model.lookup_rates([(1, 2)])
    assert model.lookup_rates([(1, 2)])[0]["version"] == 2


# ---------------------------------------------------------------- retries, on the core

def _state(machine, model):
    return (ledger_state(machine, list(model.transfers_by_id)), _lookup(machine, "fx_payments", list(model.fx_payments_by_id)),
            _lookup(machine, "fx_refunds", list(model.fx_refunds_by_id)))


# Set_rates but the first: a rate set again is a new version (set_rates has no request id to find a
# retry by; the first batch's again moves every pair to version 2, before any quote).
retry_mixes = mixes.map(lambda steps: steps[:1] + [s for s in steps[1:] if s[0] != SET_RATES])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(retry_mixes)
def test_a_retried_batch_changes_nothing(steps):
    """Each batch of payments and refunds again: what took answers ``exists``, nothing changes."""
    model = _model()
    assert_retries_change_nothing(_machine(), model, _timed(SETUP + steps, model), _submit, _state,
                                  exists_again(PAY, REFUND))


# ---------------------------------------------------------------- the model's own rules (no core needed)

def _model_run(name):
    sizes, steps = _scenarios()[name]
    model = _model(sizes)
    return model, [results for _, results in model_run(model, _timed(SETUP + steps, model), _expect)]


def test_model_ids_and_amounts_follow_the_document():
    import hashlib
    from core.fx import payer_amount_of, refund_payer_amount
    from core.order_keys import fx_payment_id as core_payment_id, fx_refund_id as core_refund_id
    pid = fx_payment_id(PAYER_CNY, 7)
    digest = hashlib.sha256(b"fxpy" + PAYER_CNY.to_bytes(16, "little") + (7).to_bytes(16, "little") + bytes(16))
    assert pid == int.from_bytes(digest.digest()[:16], "little") == core_payment_id(PAYER_CNY, 7)
    assert fx_refund_id(pid, 3) == core_refund_id(pid, 3)
    assert fx_payer_amount(100_00, 138_000_000) == 72464 == payer_amount_of(100_00, 138_000_000)   # ceil
    assert fx_payer_amount(10**12, 1) == 10**21   # exact, past 64 bits (refused: never equal to a u64)
    for rate in (1, 7, 138_000_000, PPB, 7_246_376_812, 10**18):
        for b in (1, 2, 333, 10**6):
            a = fx_payer_amount(b, rate)
            assert a * rate >= b * PPB > (a - 1) * rate
            assert fx_refund_share(a, b, 0, 0, b) == a == refund_payer_amount(a, b, 0, 0, b)   # all: the rest
            if b > 1:   # a part: floor(b' x a / b), as the core's
                assert fx_refund_share(a, b, 0, 0, b // 2) == b // 2 * a // b == refund_payer_amount(a, b, 0, 0, b // 2)


def test_model_refunds_at_the_locked_rate():
    model, out = _model_run("locked_rate")
    assert out[-3] == ["rate_changed", "ok"] and out[-2] == ["ok", "ok"] and out[-1][1] == "exists"
    first, back = list(model.fx_payments_by_id.values())[:2]
    assert first["rate_ppb"] == 138_000_000 and first["payer_refunded"] == first["payer_amount"] == 72464
    assert back["payer_refunded"] == back["payer_amount"] and out[-1][0] == "exceeds_paid_amount"
    for account in (PAYER_CNY, PAYER_USD, MERCHANT_USD, MERCHANT_CNY):
        a = model.lookup_accounts([account])[0]
        started = FUNDS.get(account, 0)
        opened = sum(p["payer_amount"] - p["payer_refunded"] for p in model.fx_payments_by_id.values()
                     if p["payer_id"] == account)
        received = sum(p["merchant_amount"] - p["merchant_refunded"] for p in model.fx_payments_by_id.values()
                       if p["merchant_id"] == account)
        assert a["credits_posted"] - a["debits_posted"] == started - opened + received, account


def test_model_refunds_returning_nothing_until_the_last():
    model, out = _model_run("refunds_returning_nothing")
    (p,) = model.fx_payments_by_id.values()
    assert (p["payer_amount"], p["merchant_amount"]) == (3, 41)      # ceil(41 / 20)
    assert out[-2] == ["ok"] * 19 and out[-1] == ["ok"]
    backs = [x["payer_amount"] for x in model.fx_refunds_by_id.values()]
    assert backs == [0] * 19 + [3]                                   # floor(1 x 3 / 41), then the rest
    assert (p["payer_refunded"], p["merchant_refunded"], p["refund_count"]) == (3, 41, 20)


# ---------------------------------------------------------------- where the core departs from the document

def _one_pair_machine(rate_ppb):
    return applied(_machine(), _timed(SETUP + [(SET_RATES, 0, [_rate(CU, rate_ppb)])], _model()), _submit)


def test_a_payer_amount_that_overflows_is_never_accepted():
    """docs/products.md: the payer pays ``a = ceil(b x 10^9 / rate_ppb)``. At 1 ppb (a currency
    worth 10^9 of the other) 100,000,000,000 merchant units cost 10^20 payer units, more than 64
    bits hold: the quote answers rate_invalid. A payment naming payer_amount = 2^64 - 1 (the
    core's mark for an overflow) is compared with that mark and accepted: a payer without a debit
    limit pays 1.8 x 10^19 for what costs 10^20, the pools carry the difference."""
    machine = _one_pair_machine(1)
    b = 10**11
    assert _dicts(machine.fx.quote(CNY, USD, [b]))[0]["result"] == R.rate_invalid
    row = {"payer_id": OPEN_PAYER, "merchant_id": MERCHANT_USD, "request_id": 1, "merchant_amount": b,
           "payer_amount": U64, "rate_version": 1, "payer_ledger": CNY, "merchant_ledger": USD}
    assert _submit(machine, PAY, [row], START_NS + S) == ["rate_invalid"]


def test_a_quote_of_exactly_the_largest_amount_is_answered():
    """At 1:1 (10^9 ppb) 2^64 - 1 merchant units cost exactly 2^64 - 1 payer units, which a
    record holds; the quote answers rate_invalid, as for an amount that overflows."""
    machine = _one_pair_machine(PPB)
    quote = _dicts(machine.fx.quote(CNY, USD, [U64]))[0]
    assert (quote["result"], quote["payer_amount"]) == (0, U64)


def test_a_payments_refunds_are_bounded_as_an_orders():
    """A payment's record counts its refunds (``refund_count``, a u16): at most 50 per payment,
    as an order's (docs/products.md "Refunds"); the 51st answers refunds_per_order_limit_reached."""
    machine = core.machine.Machine(accounts_max=ACCOUNTS_MAX, transfers_hot_max=1 << 14, secret=SECRET)
    applied(machine, _timed(SETUP + [(SET_RATES, 0, [_rate(CU, PPB)])], _model()), _submit)
    n = 51
    row = {"payer_id": PAYER_CNY, "merchant_id": MERCHANT_USD, "request_id": 1, "merchant_amount": n,
           "payer_amount": n, "rate_version": 1, "payer_ledger": CNY, "merchant_ledger": USD}
    assert _submit(machine, PAY, [row], START_NS + S) == ["ok"]
    pid = fx_payment_id(PAYER_CNY, 1)
    from core.order_keys import fx_refunds
    batch = fx_refunds([{"payment_id": pid, "merchant_id": MERCHANT_USD, "request_id": k + 1, "merchant_amount": 1}
                        for k in range(n)])
    results = machine.apply(REFUND, batch, START_NS + 2 * S)
    assert not results[:50].any() and results[50] == R.refunds_per_order_limit_reached
    (p,) = _lookup(machine, "fx_payments", [pid])
    assert (p["merchant_refunded"], p["payer_refunded"], p["refund_count"]) == (50, 50, 50)
