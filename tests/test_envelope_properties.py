"""Properties of red envelopes: the compiled core (``core.machine.Machine`` with its envelopes
component, ``core/envelopes.pyx``) behaves exactly like the reference model (tests/model.py,
written from docs/products.md "Red envelopes").

Random mixes of batches — ``send_envelopes`` (a pool of packets of several senders, totals and
counts, each with its own expiry; retries with the same and with other fields; bad input: a wrong
id, a bad number, totals and counts out of range, an expiry past 24 h, unknown senders, the other
currency, escrows that are not (another code, another ledger, closed, the sender itself); a sender
without the money; a burst of 260 one-share packets), ``claim_envelopes`` (many claimers, hot
packets claimed by dozens in one batch, the same claimer twice in a batch, retries, unknown
packets and claimers, the other currency, a closed claimer, one whose credits may not exceed its
debits, the packet's own escrow), ``set_limits`` (the envelope_total and envelopes_open limits),
top-ups (one of them makes a sender's refund fail), pulses (empty batches) and the previous batch
again — and an engine clock that steps by nanoseconds to minutes, by 24 h, and to the very
nanoseconds around an open packet's ``expires_at`` — run through both; after every batch the
replies (result, position, share), every account, packet, claim and transfer and the activity
features must be identical. Small tables (few packets, claims and transfers: the limits, a full
transfer ring at a refund) are drawn too. On the core's state, after every batch: money is
conserved per currency, no account breaks its flags' limits, each packet's claims are its
positions 0 .. claimed - 1 by distinct claimers, each share ≥ 1 and within the double-mean bounds
of its draw, an emptied packet's shares sum exactly to its total, an escrow's balance is the sum
of its open (and REFUND_FAILED) packets' ``remaining``. Separately: a retried batch changes
nothing; the model's own envelope rules are pinned by plain tests that need no compiled core.
"""

import hashlib
import hmac

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import core
import core.machine
from tests.model import (ENVELOPE_EMPTY, ENVELOPE_OPEN, ENVELOPE_REFUND_FAILED, ENVELOPE_REFUNDED, LEGS_MAX, U64, U128,
                         ModelLedger, R, claim_id, claim_transfer_id, envelope_id, envelope_share, leg_id, share_max)
from tests.product_properties import (applied, assert_retries_change_nothing, assert_same_ledger, balances, exists_again,
                                      keyed_faults, ledger_state, model_run, mostly as _mostly, pulse_both, rare,
                                      run_both, timed)
from tests.test_order_properties import _apply, _dicts

NS = 1_000_000_000
S = NS
DAY = 86_400 * S
START_NS = 1_700_000_000 * NS
SECRET = b"tally property tests: envelopes!"
assert len(SECRET) == 32

# Operation numbers (docs/products.md; core/operations.py).
CREATE_ACCOUNTS, CREATE_TRANSFERS, SET_LIMITS, SEND, CLAIM = 1, 2, 6, 116, 117
EVENT_DTYPES = {SEND: core.records.ENVELOPE_SEND_DTYPE, CLAIM: core.records.ENVELOPE_CLAIM_DTYPE,
                SET_LIMITS: core.records.LIMITS_DTYPE}
CODE_FUND, CODE_CLAIM, CODE_REFUND = 6, 7, 8
FORBIDDEN = 1 << 15

CNY, USD = 156, 840
FUNDING_CNY, FUNDING_USD, ESCROW, ESCROW_2, USD_ESCROW, CLOSED_ESCROW = 1, 2, 3, 4, 5, 6
SENDER, POOR_SENDER, CAPPED_SENDER, USD_SENDER, NOT_ESCROW, CLOSED_CLAIMER, CAPPED_CLAIMER, USD_CLAIMER = range(7, 15)
UNKNOWN = 99
CLAIMERS = list(range(100, 140))
ESCROWS = (ESCROW, ESCROW_2, USD_ESCROW)
SETUP_ACCOUNTS = [
    {"id": FUNDING_CNY, "ledger": CNY, "code": 3},                 # funding cards: may go negative
    {"id": FUNDING_USD, "ledger": USD, "code": 3},
    {"id": ESCROW, "ledger": CNY, "code": 4, "flags": 2},          # escrows (code 4), may not be overdrawn
    {"id": ESCROW_2, "ledger": CNY, "code": 4},
    {"id": USD_ESCROW, "ledger": USD, "code": 4, "flags": 2},
    {"id": CLOSED_ESCROW, "ledger": CNY, "code": 4, "flags": 8},
    {"id": SENDER, "ledger": CNY, "code": 1, "flags": 2},          # wallets: debits_must_not_exceed_credits
    {"id": POOR_SENDER, "ledger": CNY, "code": 1, "flags": 2},
    {"id": CAPPED_SENDER, "ledger": CNY, "code": 1, "flags": 4},   # credits_must_not_exceed_debits: a refund
    {"id": USD_SENDER, "ledger": USD, "code": 1, "flags": 2},      # to it fails once it was topped up
    {"id": NOT_ESCROW, "ledger": CNY, "code": 2},
    {"id": CLOSED_CLAIMER, "ledger": CNY, "code": 1, "flags": 8},
    {"id": CAPPED_CLAIMER, "ledger": CNY, "code": 1, "flags": 4},
    {"id": USD_CLAIMER, "ledger": USD, "code": 1},
] + [{"id": c, "ledger": CNY, "code": 1, "flags": 2} for c in CLAIMERS]
ACCOUNT_IDS = [a["id"] for a in SETUP_ACCOUNTS]
ACCOUNTS_MAX = len(SETUP_ACCOUNTS)
LEDGER_OF = {a["id"]: a["ledger"] for a in SETUP_ACCOUNTS}
LEDGER_OF[UNKNOWN] = CNY
SETUP_TRANSFERS = [
    {"id": 1001, "debit_account_id": FUNDING_CNY, "credit_account_id": SENDER, "amount": 1_000_000, "ledger": CNY,
     "code": 4},
    {"id": 1002, "debit_account_id": FUNDING_CNY, "credit_account_id": POOR_SENDER, "amount": 300, "ledger": CNY,
     "code": 4},
    {"id": 1003, "debit_account_id": CAPPED_SENDER, "credit_account_id": FUNDING_CNY, "amount": 1,
     "ledger": CNY, "code": 5},
    {"id": 1004, "debit_account_id": FUNDING_USD, "credit_account_id": USD_SENDER, "amount": 50_000, "ledger": USD,
     "code": 4},
    {"id": 1005, "debit_account_id": CAPPED_CLAIMER, "credit_account_id": FUNDING_CNY, "amount": 5, "ledger": CNY,
     "code": 5},
]
SETUP = [(CREATE_ACCOUNTS, 0, SETUP_ACCOUNTS), (CREATE_TRANSFERS, 0, SETUP_TRANSFERS)]
TOP_UP_IDS = list(range(2001, 2007))

# The packets: (sender, number) keys, each with its own total, count, expiry (s; 0: 24 h),
# escrow and greeting, so that a retry sends the same.
NUMBERS = [b"E-%d" % k for k in range(6)]
SENDERS = [SENDER, SENDER, POOR_SENDER, CAPPED_SENDER, USD_SENDER]
KEYS = [(s, n) for s in (SENDER, POOR_SENDER, CAPPED_SENDER, USD_SENDER) for n in NUMBERS]
TOTALS = [100, 7, 20_000, 50, 1_000, 10, 1, 3, 250]
COUNTS = [10, 7, 3, 40, 5, 2, 1, 3, 9]
EXPIRES = [60, 1, 0, 0, 86_400, 61, 2, 5, 30, 3, 1]
PARAMS = {key: {"total": TOTALS[k % len(TOTALS)], "count": COUNTS[k % len(COUNTS)],
                "expire_after_s": EXPIRES[k % len(EXPIRES)], "description_code": k % 3,
                "escrow_id": USD_ESCROW if key[0] == USD_SENDER else (ESCROW_2 if k % 5 == 4 else ESCROW)}
          for k, key in enumerate(KEYS)}
BURST = 260                    # one-share packets sent at once: more than a batch start refunds
BURST_KEYS = [(SENDER, b"B-%d" % k) for k in range(BURST)]
ENVELOPE_IDS = [envelope_id(*key) for key in KEYS]
LOOKUP_ENVELOPE_IDS = ENVELOPE_IDS + [envelope_id(UNKNOWN, b"E-0"), 0, U128]

# Table sizes (envelopes_max, claims_max, transfers_max): the usual; small (2 open packets, 6
# claims, a transfer ring that fills: refunds stay due); room for the burst.
USUAL, SMALL, TINY_RING, ROOMY = (64, 256, 512), (4, 6, 24), (16, 64, 12), (1024, 512, 2048)


# ---------------------------------------------------------------- strategies

hot_keys = _mostly(st.sampled_from([(SENDER, b"E-0"), (SENDER, b"E-1"), (SENDER, b"E-3"), (SENDER, b"E-5"),
                                    (CAPPED_SENDER, b"E-0"), (CAPPED_SENDER, b"E-5")]), st.sampled_from(KEYS), 40)


@st.composite
def send_events(draw):
    sender, number = key = draw(hot_keys)
    event = dict({"id": envelope_id(sender, number), "sender_id": sender, "out_envelope_no": number,
                  "ledger": LEDGER_OF[sender]}, **PARAMS[key])
    if draw(rare):   # the same number again with other fields
        field = draw(st.sampled_from(["total", "count", "expire_after_s", "description_code", "escrow_id"]))
        event[field] = {"total": event["total"] + 1, "count": max(1, event["count"] - 1),
                        "expire_after_s": event["expire_after_s"] + 1, "description_code": 7,
                        "escrow_id": ESCROW_2 if event["escrow_id"] == ESCROW else ESCROW}[field]
    if draw(rare):   # out of range
        event.update(draw(st.sampled_from([{"total": 20_001}, {"total": 0}, {"count": 0}, {"count": 10_001},
                                           {"count": event["total"] + 1}, {"expire_after_s": 86_401},
                                           {"expire_after_s": 2**32 - 1}, {"total": 60_000, "count": 10_001}])))
    if draw(rare):   # not an escrow, or not this one's
        event["escrow_id"] = draw(st.sampled_from([NOT_ESCROW, USD_ESCROW, ESCROW, CLOSED_ESCROW, UNKNOWN, sender,
                                                   SENDER]))
    if draw(rare):   # an unknown sender, a bad number: the id follows them
        sender = draw(st.sampled_from([UNKNOWN, 0, "escrow", NOT_ESCROW]))   # (an escrow: itself, escrow_invalid)
        event["sender_id"] = event["escrow_id"] if sender == "escrow" else sender
        event["out_envelope_no"] = draw(_mostly(st.just(number), st.sampled_from([b"", b"a b", b"\xff", b"x" * 32]),
                                                40))
        event["id"] = envelope_id(event["sender_id"], event["out_envelope_no"])
    return keyed_faults(draw, event, (CNY, USD))


# A claim names the state as it is when its batch runs: ("open", k) is the k-th open packet,
# ("any", k) the k-th sent, ("key", k) a pool key's id (sent or not), ("bad", id) an id never sent.
targets = _mostly(st.tuples(st.sampled_from(["open", "open", "open", "any"]), st.integers(0, 7)),
                  st.one_of(st.tuples(st.just("key"), st.integers(0, len(KEYS) - 1)),
                            st.tuples(st.just("bad"), st.sampled_from([0, 77, U128]))), 10)
hot_claimers = st.sampled_from(CLAIMERS[:6])
claimers = _mostly(_mostly(hot_claimers, st.sampled_from(CLAIMERS), 50),
                   st.sampled_from([UNKNOWN, 0, USD_CLAIMER, CLOSED_CLAIMER, CAPPED_CLAIMER, CAPPED_CLAIMER, "escrow",
                                    SENDER]), 15)


@st.composite
def claim_events(draw, target=None):
    event = ("claim", target if target is not None else draw(targets), draw(claimers))
    if draw(rare):
        return event + (draw(st.sampled_from([{"timestamp": 1}, {"reserved": 1}, {"reserved": 1 << 600},
                                              {"flags": 1}, {"flags": FORBIDDEN}])),)
    return event + ({},)


@st.composite
def hot_claims(draw):
    """Dozens of claims on one packet in one batch: distinct claimers, and some twice."""
    target = ("open", draw(st.integers(0, 3)))
    people = draw(st.lists(st.sampled_from(CLAIMERS), min_size=5, max_size=40))
    return [("claim", target, c, {}) for c in people]


@st.composite
def limit_events(draw):
    event = {"envelope_total": draw(st.sampled_from([0, 0, 50, 20_000, 60_000, 1 << 53])),
             "envelopes_open": draw(st.sampled_from([0, 0, 1, 2, 3, 10, 500]))}
    if draw(rare):
        event.update(draw(st.sampled_from([{"envelope_total": (1 << 53) + 1}, {"envelopes_open": 100_000},
                                           {"reserved": 1}, {"reserved_a": 1}, {"flags": 1}, {"timestamp": 1}])))
    return event


def _top_up(credit, amount, transfer_id=TOP_UP_IDS[0]):
    return {"id": transfer_id, "debit_account_id": FUNDING_CNY, "credit_account_id": credit, "amount": amount,
            "ledger": CNY, "code": 4}


@st.composite
def transfer_events(draw):
    """Top-ups (one to the capped sender takes its room for refunds; one from it gives room),
    rarely a client transfer that takes a claim leg's id."""
    if draw(rare):
        return ("steal", draw(st.integers(0, 7)))
    credit = draw(st.sampled_from([SENDER, POOR_SENDER, CAPPED_SENDER, CAPPED_SENDER, CAPPED_CLAIMER, CLAIMERS[0]]))
    event = _top_up(credit, draw(st.sampled_from([50, 500, 1_000, 20_000])), draw(st.sampled_from(TOP_UP_IDS)))
    if draw(st.integers(0, 9)) < 2:   # room for the capped ones (their debits)
        event.update(debit_account_id=draw(st.sampled_from([CAPPED_SENDER, CAPPED_CLAIMER])),
                     credit_account_id=FUNDING_CNY, code=5)
    return event


batch_kinds = st.one_of(
    st.tuples(st.just(SEND), st.lists(send_events(), min_size=1, max_size=5)),
    st.tuples(st.just(SEND), st.lists(send_events(), min_size=1, max_size=5)),
    st.tuples(st.just(CLAIM), st.lists(claim_events(), min_size=1, max_size=8)),
    st.tuples(st.just(CLAIM), st.lists(claim_events(), min_size=1, max_size=8)),
    st.tuples(st.just(CLAIM), st.lists(claim_events(), min_size=1, max_size=8)),
    st.tuples(st.just(CLAIM), hot_claims()),
    st.tuples(st.just(SET_LIMITS), st.lists(limit_events(), min_size=1, max_size=2)),
    st.tuples(st.just(CREATE_TRANSFERS), st.lists(transfer_events(), min_size=1, max_size=3)),
    st.tuples(st.sampled_from([CREATE_TRANSFERS, CREATE_TRANSFERS, SEND, CLAIM]), st.just([])),   # pulses
    st.tuples(st.just("again"), st.none()),   # the previous batch again: a client's retry
    _mostly(st.tuples(st.just(SEND), st.just([])), st.tuples(st.just("burst"), st.none()), 3),
)
# Engine time per batch: nanoseconds to minutes, now and then 24 h, or to the nanoseconds around
# an open packet's expires_at (("edge", k, d): the k-th soonest, d ns from it).
small_steps = st.sampled_from([0, 0, 1, 4, S, S, 2 * S, 5 * S, 30 * S])
coarse_steps = st.sampled_from([0, 1, S, 59 * S, 60 * S, 61 * S, 120 * S, DAY, DAY + S, 2 * DAY])
edge_steps = st.tuples(st.just("edge"), st.integers(0, 3), st.sampled_from([-4, -1, -1, 0, 0, 1, 1, 4]))
time_steps = st.one_of(small_steps, small_steps, small_steps, coarse_steps, edge_steps, edge_steps)
# A flow: packets sent, claimed a moment later, then the clock at an edge and more claims or a pulse.
flows = st.tuples(st.lists(send_events(), min_size=1, max_size=3), small_steps,
                  st.lists(claim_events(), min_size=1, max_size=6), edge_steps,
                  st.one_of(st.lists(claim_events(), min_size=1, max_size=3), st.just([]))).map(
    lambda f: [(SEND, 0, f[0]), (CLAIM, f[1], f[2]), (CLAIM if f[4] else CREATE_TRANSFERS, f[3], f[4])])
# A refund refused: the capped sender sends, is topped up (its credits may not exceed its debits,
# so the room the send made is taken), and the clock passes the packet's expiry.
capped_keys = st.sampled_from([(CAPPED_SENDER, b"E-0"), (CAPPED_SENDER, b"E-1"), (CAPPED_SENDER, b"E-5")])
refund_flows = st.tuples(capped_keys, st.sampled_from([50, 250, 500, 1_000]), st.sampled_from(TOP_UP_IDS), small_steps,
                         st.one_of(coarse_steps, edge_steps)).map(
    lambda f: [(SEND, 0, [dict({"id": envelope_id(*f[0]), "sender_id": f[0][0], "out_envelope_no": f[0][1],
                                "ledger": CNY}, **PARAMS[f[0]])]),
               (CREATE_TRANSFERS, f[3], [_top_up(CAPPED_SENDER, f[1], f[2])]),
               (CREATE_TRANSFERS, f[4], [])])
singles = st.tuples(batch_kinds, time_steps).map(lambda t: [(t[0][0], t[1], t[0][1])])
mixes = st.lists(st.one_of(singles, singles, singles, flows, refund_flows), min_size=2, max_size=9).map(
    lambda segments: sum(segments, []))


# ---------------------------------------------------------------- resolving the steps

def _pick(model, target):
    """A packet id by a target choice, against the model's state now."""
    kind, k = target
    if kind == "key":
        return ENVELOPE_IDS[k]
    if kind == "bad":
        return k
    packets = list(model.envelopes_by_id.values())
    if kind == "open":
        packets = [p for p in packets if p["state"] == ENVELOPE_OPEN] or packets
    return packets[k % len(packets)]["id"] if packets else ENVELOPE_IDS[0]


def _resolve(model, event):
    if isinstance(event, dict):
        return event
    if event[0] == "claim":
        _, target, claimer, fault = event
        eid = _pick(model, target)
        if claimer == "escrow":
            p = model.envelopes_by_id.get(eid)
            claimer = p["escrow_id"] if p else ESCROW
        return dict({"envelope_id": eid, "claimer_id": claimer}, **fault)
    if event[0] == "steal":   # a client transfer with a claim leg's id: id_reserved
        eid = _pick(model, ("any", event[1]))
        return {"id": claim_transfer_id(eid, 0), "debit_account_id": FUNDING_CNY, "credit_account_id": SENDER,
                "amount": 1, "ledger": CNY, "code": 4}
    raise ValueError(event)


def _burst():
    return [dict({"id": envelope_id(*key), "sender_id": key[0], "out_envelope_no": key[1], "ledger": CNY,
                  "escrow_id": ESCROW, "total": 1, "count": 1, "expire_after_s": 1 + k % 3})
            for k, key in enumerate(BURST_KEYS)]


def _timed(steps, model):
    """The steps as (operation, now_ns, events), resolved against the model as each batch runs;
    ("edge", k, d): d ns from the k-th soonest expires_at of an open packet."""
    def edge_time(k, d):
        due = sorted(p["expires_at"] for p in model.envelopes_by_id.values() if p["state"] == ENVELOPE_OPEN)
        return due[k % len(due)] + d if due else None
    return timed(steps, START_NS, lambda event, now: _resolve(model, event), edge_time, lambda burst: (SEND, _burst()))


# ---------------------------------------------------------------- the core and the model

def _machine(sizes=USUAL):
    envelopes_max, claims_max, transfers_max = sizes
    return core.machine.Machine(accounts_max=ACCOUNTS_MAX, transfers_hot_max=transfers_max, pending_max=64,
                                envelopes_max=envelopes_max, claims_max=claims_max, secret=SECRET)


def _model(sizes=USUAL):
    envelopes_max, claims_max, transfers_max = sizes
    return ModelLedger(ACCOUNTS_MAX, transfers_max, 0, SECRET, envelopes_max=envelopes_max, claims_max=claims_max)


def _submit(machine, operation, events, now_ns):
    """One batch on the core: result names (claim_envelopes: with the position and share)."""
    reply = _apply(machine, operation, events, now_ns, EVENT_DTYPES.get)
    if operation == CLAIM:
        return [(core.Result(row["result"]).name, row["position"], row["amount"]) for row in _dicts(reply)]
    return [core.Result(int(r)).name for r in np.asarray(reply).tolist()]


def _expect(model, operation, events, now_ns):
    reply = model.apply(operation, events, now_ns)
    if operation == CLAIM:
        return [(R(row["result"]).name, row["position"], row["amount"]) for row in reply]
    return [R(r).name for r in reply]


def _lookup(machine, what, ids):
    return _dicts(getattr(machine, "lookup_" + what)(core.ids_array(ids)))


def _packet_ids(model):
    return list(dict.fromkeys(list(model.envelopes_by_id) + LOOKUP_ENVELOPE_IDS))


def _claim_ids(model):
    return list(dict.fromkeys(list(model.claims_by_id) + [claim_id(eid, c) for eid in ENVELOPE_IDS[:3]
                                                          for c in CLAIMERS[:3]] + [0]))


def _assert_same_state(machine, model):
    assert_same_ledger(machine, model, ACCOUNT_IDS[:14] + CLAIMERS[:6], TOP_UP_IDS)
    packet_ids = _packet_ids(model)
    assert machine.envelopes.envelope_count == len(model.envelopes_by_id)
    assert _lookup(machine, "envelopes", packet_ids) == model.lookup_envelopes(packet_ids)
    assert machine.envelopes.open_count == sum(p["state"] == ENVELOPE_OPEN for p in model.envelopes_by_id.values())
    assert machine.envelopes.next_expiry_ns == model.next_envelope_expiry_ns()
    assert machine.envelopes.claim_count == len(model.claims_by_id)
    claim_ids = _claim_ids(model)
    assert _lookup(machine, "envelope_claims", claim_ids) == model.lookup_envelope_claims(claim_ids)


def _check_invariants(machine, packet_ids):
    """What holds of the core's state after any batch (``packet_ids``: every packet sent)."""
    ledger = machine.ledger
    balance = balances(ledger)
    packets = _lookup(machine, "envelopes", packet_ids)
    assert len(packets) == len(packet_ids)
    held = {escrow: 0 for escrow in ESCROWS}
    for p in packets:
        ids = [claim_transfer_id(p["id"], k) for k in range(min(p["count"], p["claimed"] + 1))]
        transfers = [t for k in range(0, len(ids), 8_190)
                     for t in core.to_dicts(ledger.lookup_transfers(core.ids_array(ids[k:k + 8_190])))]
        assert len(transfers) == p["claimed"], p   # positions 0 .. claimed - 1, no more
        remaining, claimers = p["total"], set()
        for k, t in enumerate(transfers):
            assert t["id"] == claim_transfer_id(p["id"], k) and t["code"] == CODE_CLAIM, (p, t)
            assert (t["debit_account_id"], t["user_data_128"]) == (p["escrow_id"], p["id"]), (p, t)
            left = p["count"] - k
            high = remaining if left == 1 else share_max(remaining, left)
            assert (1 if left > 1 else remaining) <= t["amount"] <= high, (p, k, t)
            assert t["credit_account_id"] not in claimers, ("a claimer twice", p, t)
            claimers.add(t["credit_account_id"])
            remaining -= t["amount"]
        assert remaining == p["remaining"] + p["refunded"], p
        records = _lookup(machine, "envelope_claims", [claim_id(p["id"], c) for c in claimers])
        assert sorted(c["position"] for c in records) == list(range(p["claimed"])), p
        if p["state"] == ENVELOPE_EMPTY:
            assert p["claimed"] == p["count"] and p["remaining"] == 0 and p["refunded"] == 0, p
            assert sum(t["amount"] for t in transfers) == p["total"], p
        elif p["state"] == ENVELOPE_REFUNDED:
            assert p["remaining"] == 0 and p["refunded"] > 0 and p["ended_at"] >= p["expires_at"], p
        elif p["state"] == ENVELOPE_REFUND_FAILED:
            assert p["refund_result"] != 0 and p["refunded"] == 0 and p["ended_at"] >= p["expires_at"], p
        else:
            assert p["state"] == ENVELOPE_OPEN and p["claimed"] < p["count"] and p["ended_at"] == 0, p
        if p["state"] in (ENVELOPE_OPEN, ENVELOPE_REFUND_FAILED):
            held[p["escrow_id"]] += p["remaining"]
    # Only the packets' legs touch the escrows: each holds its open packets' remainders.
    assert {escrow: balance[escrow] for escrow in ESCROWS} == held


def _run_against_model(steps, sizes=USUAL):
    machine, model = _machine(sizes), _model(sizes)

    def check(_):
        _assert_same_state(machine, model)
        _check_invariants(machine, list(model.envelopes_by_id))

    now = run_both(machine, model, _timed(SETUP + steps, model), _submit, _expect, check)
    # A day after the last send every packet has ended: pulses refund what is left (256 a batch start).
    pulse_both(machine, model, _submit, max(now, model.last) + DAY)
    _assert_same_state(machine, model)
    _check_invariants(machine, list(model.envelopes_by_id))
    ring_full = model.transfers_max - len(model.transfers_by_id) < 1
    assert ring_full or all(p["state"] != ENVELOPE_OPEN for p in model.envelopes_by_id.values())
    return machine, model


SIZES = st.sampled_from([USUAL, USUAL, SMALL, SMALL, TINY_RING, ROOMY])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, SIZES)
def test_core_envelopes_match_the_reference_model(steps, sizes):
    _run_against_model(steps, sizes)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes, SIZES)
def test_core_envelopes_match_the_reference_model_long(steps, sizes):
    _run_against_model(steps, sizes)


# ---------------------------------------------------------------- hand-made edges

def _send(key, **fields):
    sender, number = key
    return {"id": envelope_id(sender, number), "sender_id": sender, "out_envelope_no": number,
            "ledger": LEDGER_OF[sender], **PARAMS[key], **fields}


def _claims(target, people):
    return [("claim", target, c, {}) for c in people]


E0, E1, E3 = (SENDER, b"E-0"), (SENDER, b"E-1"), (SENDER, b"E-3")   # 100 in 10 (60 s), 7 in 7 (1 s), 50 in 40 (24 h)
assert (PARAMS[E0]["total"], PARAMS[E0]["count"], PARAMS[E0]["expire_after_s"]) == (100, 10, 60)
assert (PARAMS[E1]["total"], PARAMS[E1]["count"], PARAMS[E1]["expire_after_s"]) == (7, 7, 1)
assert (PARAMS[E3]["total"], PARAMS[E3]["count"], PARAMS[E3]["expire_after_s"]) == (50, 40, 0)
CAPPED_KEY = (CAPPED_SENDER, b"E-5")                                # 250 in 9 (2 s)
assert (PARAMS[CAPPED_KEY]["total"], PARAMS[CAPPED_KEY]["expire_after_s"]) == (250, 2)


def _scenarios():
    return {
        # Claimed up to the last nanosecond before expires_at; the batch at it refunds first.
        "expiry_edges": (USUAL, [(SEND, S, [_send(E0)]), (CLAIM, S, _claims(("open", 0), CLAIMERS[:2])),
                                 (CLAIM, ("edge", 0, -1), _claims(("open", 0), CLAIMERS[2:4])),
                                 (CLAIM, ("edge", 0, 0), _claims(("any", 0), CLAIMERS[4:5] + CLAIMERS[:1])),
                                 (CREATE_TRANSFERS, S, [])]),
        # A claim in the batch whose start refunds its packet: expired (the refund came first).
        "claim_in_the_refund_batch": (USUAL, [(SEND, 0, [_send(E1), _send(E0)]),
                                              (CLAIM, 2 * S, _claims(("any", 0), CLAIMERS[:3]) + _claims(
                                                  ("any", 1), CLAIMERS[:1]))]),
        # Dozens claim one packet in one batch, some twice: 40 shares, the rest empty or exists.
        "hot_packet": (USUAL, [(SEND, S, [_send(E3)]),
                               (CLAIM, S, _claims(("any", 0), CLAIMERS[:30] + CLAIMERS[:5] + CLAIMERS[30:40] + [
                                   CLAIMERS[0], SENDER, CLOSED_CLAIMER])),
                               (CLAIM, S, _claims(("any", 0), CLAIMERS[:3]))]),
        # 260 packets expire together: 256 refunds at one batch start, 4 at the next.
        "refund_bound": (ROOMY, [("burst", S, None), (CLAIM, 4 * S, _claims(("open", 0), CLAIMERS[:2])),
                                 (CLAIM, 1, _claims(("open", 0), CLAIMERS[2:3])), (CREATE_TRANSFERS, 0, [])]),
        # A full transfer ring: the refund stays due, claims are expired, nothing moves.
        "ring_full": (TINY_RING, [(SEND, S, [_send(E1)]), (CLAIM, 0, _claims(("any", 0), CLAIMERS[:6])),
                                  (CREATE_TRANSFERS, 2 * S, []), (CLAIM, 0, _claims(("any", 0), CLAIMERS[6:7])),
                                  (CREATE_TRANSFERS, DAY, [])]),
        # The capped sender topped up past the room its send made: the refund is refused.
        "refund_failed": (USUAL, [(SEND, S, [_send(CAPPED_KEY)]),
                                  (CLAIM, 0, _claims(("any", 0), CLAIMERS[:1])),
                                  (CREATE_TRANSFERS, 0, [_top_up(CAPPED_SENDER, 250)]),
                                  (CREATE_TRANSFERS, 3 * S, []),
                                  (CLAIM, 0, _claims(("any", 0), CLAIMERS[:2]))]),
        # envelope_total and envelopes_open by set_limits.
        "limits": (USUAL, [(SET_LIMITS, 0, [{"envelope_total": 50}]), (SEND, 0, [_send(E0), _send(E1), _send(E3)]),
                           (SET_LIMITS, 0, [{"envelopes_open": 2, "envelope_total": 60_000}]),
                           (SEND, 0, [_send(E0), _send((SENDER, b"E-2")), _send((SENDER, b"E-4"))]),
                           (CLAIM, 0, _claims(("any", 0), CLAIMERS[:7])), (SEND, 0, [_send((SENDER, b"E-4"))]),
                           (SET_LIMITS, 0, [{"envelopes_open": 10_000}]), (SET_LIMITS, 0, [{"envelopes_open": 3}]),
                           (SEND, 0, [_send((SENDER, b"E-2"), total=20_001)])]),
        # A claim retried after its packet ended (emptied, or refunded): its place and share again.
        "retry_after_the_end": (USUAL, [(SEND, S, [_send(E1), _send(E0)]),
                                        (CLAIM, S // 2, _claims(("any", 0), CLAIMERS[:7]) + _claims(("any", 1),
                                                                                                     CLAIMERS[:2])),
                                        (CLAIM, DAY, _claims(("any", 0), CLAIMERS[:2]) + _claims(("any", 1),
                                                                                                  CLAIMERS[:3]))]),
        # The largest total the limit allows, 10,000 shares; a batch of 1,200 claims (the core's
        # batch loop without the GIL), each claimer many times.
        "big_total_long_batch": ((64, 2048, 4096), [
            (SET_LIMITS, 0, [{"envelope_total": 1 << 53}]),
            (SEND, 0, [{"id": envelope_id(NOT_ESCROW, number), "sender_id": NOT_ESCROW, "escrow_id": ESCROW,
                        "total": total, "count": count, "out_envelope_no": number, "ledger": CNY}
                       for number, total, count in ((b"BIG", 1 << 53, 10_000), (b"BIG-2", (1 << 53) - 1, 2))]),
            (CLAIM, 1, [("claim", ("any", k % 2), c, {}) for k in range(3) for c in CLAIMERS] * 10)]),
        # Small tables: two open packets, six claims.
        "small_tables": (SMALL, [(SEND, 0, [_send(E0), _send(E3), _send((SENDER, b"E-5"))]),
                                 (CLAIM, 0, _claims(("any", 0), CLAIMERS[:4]) + _claims(("any", 1), CLAIMERS[:4])),
                                 (SEND, 0, [_send(E1), _send(E1)])]),
    }


@pytest.mark.parametrize("name", sorted(_scenarios()))
def test_core_envelopes_match_the_reference_model_on_the_edges(name):
    sizes, steps = _scenarios()[name]
    _run_against_model(steps, sizes)


# ---------------------------------------------------------------- retries, on the core

def _state(machine, model):
    return (ledger_state(machine, list(model.transfers_by_id) + TOP_UP_IDS),
            _lookup(machine, "envelopes", _packet_ids(model)), _lookup(machine, "envelope_claims", _claim_ids(model)))


def _again(operation, was):
    """A send or a claim that took answers ``exists`` again (a claim with its place and share)."""
    if operation == CLAIM:
        return ("exists",) + was[1:] if was[0] in ("ok", "exists") else None
    return exists_again(SEND)(operation, was)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes)
def test_a_retried_batch_changes_nothing(steps):
    """Each batch again, once the clock's own changes by then are made (a pulse past the
    retry's timestamps): sends and claims that took answer ``exists`` (a claim with its place
    and share), and nothing changes."""
    model = _model()
    assert_retries_change_nothing(_machine(), model, _timed(SETUP + steps, model), _submit, _state, _again)



# ---------------------------------------------------------------- the model's own envelope rules (no core needed)

def _model_run(name):
    sizes, steps = _scenarios()[name]
    model = _model(sizes)
    return model, model_run(model, _timed(SETUP + steps, model), _expect)


def test_model_ids_and_shares_follow_the_document():
    eid = envelope_id(SENDER, b"E-0")
    digest = hashlib.sha256(b"rpkt" + SENDER.to_bytes(16, "little") + b"E-0".ljust(32, b"\0")).digest()
    assert eid == int.from_bytes(digest[:16], "little")
    digest = hashlib.sha256(b"clam" + eid.to_bytes(16, "little") + (100).to_bytes(16, "little") + bytes(16)).digest()
    assert claim_id(eid, 100) == int.from_bytes(digest[:16], "little")
    assert claim_transfer_id(eid, 0) == leg_id(eid, CLAIM, 0)
    assert len({claim_transfer_id(eid, p) for p in range(10_000)}) == 10_000
    # 1 + floor(h * m / 2^64), m = min(2R / n, R - (n - 1)); h from HMAC(secret, "shar" || packet || claimer || p).
    h = int.from_bytes(hmac.new(SECRET, b"shar" + eid.to_bytes(16, "little") + (100).to_bytes(16, "little")
                                + (3).to_bytes(4, "little"), hashlib.sha256).digest()[:8], "little")
    assert envelope_share(SECRET, eid, 100, 3, 1_000, 7) == 1 + (h * min(2_000 // 7, 1_000 - 6) >> 64)
    assert share_max(1_000, 7) == 285 and share_max(11, 10) == 2 and share_max(7, 7) == 1
    assert envelope_share(SECRET, eid, 100, 6, 123, 1) == 123   # the last takes the rest
    remaining, shares = 5, []
    for k in range(5):   # a count equal to the total: one unit each
        shares.append(envelope_share(SECRET, eid, 100 + k, k, remaining, 5 - k))
        remaining -= shares[-1]
    assert shares == [1] * 5


def test_model_claims_up_to_the_last_nanosecond_and_refunds_at_the_batch_start():
    model, out = _model_run("expiry_edges")
    (p,) = model.envelopes()
    (first, claimed), (later_first, later) = out[-3], out[-2]
    assert first == p["expires_at"] - 1 and claimed == [("ok", 2, claimed[0][2]), ("envelope_expired", 0, 0)]
    assert later[0] == ("envelope_expired", 0, 0) and later[1][0] == "exists"
    assert (p["state"], p["ended_at"], p["remaining"]) == (ENVELOPE_REFUNDED, later_first, 0)
    refund = model.transfers_by_id[leg_id(p["id"], SEND, 1)]
    assert (refund["debit_account_id"], refund["credit_account_id"], refund["amount"], refund["code"],
            refund["timestamp"]) == (ESCROW, SENDER, p["refunded"], CODE_REFUND, later_first)
    assert p["refunded"] + sum(c["amount"] for c in model.envelope_claims()) == p["total"]


def test_model_refunds_at_most_256_a_batch_start_soonest_first_before_the_events():
    model, out = _model_run("refund_bound")
    (first, claimed), (second_first, _) = out[-3], out[-2]
    refunds = sorted((t for t in model.transfers_by_id.values() if t["code"] == CODE_REFUND),
                     key=lambda t: t["timestamp"])
    assert len(refunds) == BURST
    assert [t["timestamp"] for t in refunds] == list(range(first, first + 256)) + list(
        range(second_first, second_first + BURST - 256))
    packets = {p["id"]: p for p in model.envelopes()}
    order = [(packets[t["user_data_128"]]["expires_at"], packets[t["user_data_128"]]["timestamp"]) for t in refunds]
    assert order == sorted(order)
    assert claimed == [("envelope_expired", 0, 0)] * 2
    # The events after the refunds: the next batch starts after the claims at first + 256 and + 260.
    assert second_first == first + 256 + 2 * LEGS_MAX
    assert all(p["state"] == ENVELOPE_REFUNDED for p in packets.values())


def test_model_refund_refused_or_stuck_behind_a_full_ring():
    model, out = _model_run("refund_failed")
    (p,) = model.envelopes()
    assert (p["state"], p["refund_result"], p["refunded"]) == (ENVELOPE_REFUND_FAILED, int(R.exceeds_debits), 0)
    assert p["remaining"] == p["total"] - out[3][1][0][2] and out[-1][1][1] == ("envelope_expired", 0, 0)
    escrow = model.lookup_accounts([ESCROW])[0]
    assert escrow["credits_posted"] - escrow["debits_posted"] == p["remaining"]
    model, out = _model_run("ring_full")
    (p,) = model.envelopes()
    assert len(model.transfers_by_id) == TINY_RING[2]
    assert (p["state"], p["claimed"], p["remaining"], p["ended_at"]) == (ENVELOPE_OPEN, 6, 1, 0)
    assert out[-2][1] == [("envelope_expired", 0, 0)]
    assert model.envelopes_due(model.last + 1) == [p]   # still due: each batch start tries again


def test_model_hot_packet_in_one_batch():
    model, out = _model_run("hot_packet")
    replies = out[-2][1]
    ok = [r for r in replies if r[0] == "ok"]
    assert [r[1] for r in ok] == list(range(40)) and sum(r[2] for r in ok) == 50 and min(r[2] for r in ok) >= 1
    assert replies[-2:] == [("envelope_empty", 0, 0)] * 2
    assert [r[0] for r in replies].count("exists") == 6
    assert out[-1][1] == [("exists",) + ok[k][1:] for k in range(3)]


def test_the_model_and_the_core_derive_the_same_ids_and_bounds():
    from core.envelopes import claim_transfer_id as core_claim_transfer_id, share_bounds
    from core.order_keys import claim_id as core_claim_id, envelope_id as core_envelope_id
    for sender, number in KEYS[:6] + [(U128 - 1, b"x" * 32)]:
        eid = envelope_id(sender, number)
        assert core_envelope_id(sender, number) == eid
        assert core_claim_id(eid, CLAIMERS[7]) == claim_id(eid, CLAIMERS[7])
        assert [core_claim_transfer_id(eid, p) for p in (0, 1, 9_999)] == [claim_transfer_id(eid, p)
                                                                          for p in (0, 1, 9_999)]
    for remaining, left in ((100, 10), (11, 10), (20_000, 2), (5, 5), (1 << 53, 10_000)):
        assert share_bounds(remaining, left) == (1, share_max(remaining, left))


# ---------------------------------------------------------------- the double-mean property, statistically

def _expected_shares(total, count):
    """The exact mean and variance of the share at each position (0 first) of a packet of
    ``total`` in ``count``, by the documented draw taken as exactly uniform on [1, m]: the
    distribution of what remains, carried from one position to the next (numpy, O(total) each).

    With integers the mean is not total/count everywhere: a draw's mean is (1 + m)/2 with
    m = floor(2R/n), up to half a unit above R/n; the early positions take that much more, the
    last ones less (total 20,000 in 10: +0.50 at position 0 .. -0.62 at 9; 1,000 in 5: +0.50 ..
    -0.42; a count of 1,000 reaches -1.78 at the last positions)."""
    prob = np.zeros(total + 1)
    prob[total] = 1.0
    remaining = np.arange(total + 1)
    means, variances = [], []
    for position in range(count):
        left = count - position
        if left == 1:
            means.append(float((prob * remaining).sum()))
            variances.append(float((prob * remaining**2.0).sum()) - means[-1] ** 2)
            break
        reachable = prob > 0
        m = np.where(reachable, np.minimum(2 * remaining // left, remaining - (left - 1)), 1)
        assert (m[reachable] >= 1).all()
        means.append(float((prob * (1 + m) / 2).sum()))
        variances.append(float((prob * (m + 1) * (2 * m + 1) / 6).sum()) - means[-1] ** 2)
        # What remains after the draw: uniform over remaining - m .. remaining - 1.
        steps = np.zeros(total + 2)
        np.add.at(steps, (remaining - m)[reachable], (prob / m)[reachable])
        np.add.at(steps, remaining[reachable], -(prob / m)[reachable])
        prob = np.cumsum(steps)[:total + 1]
    return np.array(means), np.array(variances)


def _claimed_shares(total, count, packets, chunk=25_000):
    """Send ``packets`` packets of ``total`` in ``count`` through ``core.machine.Machine`` (fresh
    machines of ``chunk`` packets each: bounded memory) and claim each by ``count`` claimers in
    full batches, position by position; the shares as a (packets, count) array."""
    out = np.empty((packets, count), dtype=np.int64)
    batch = 8_190
    for start in range(0, packets, chunk):
        n = min(chunk, packets - start)
        machine = core.machine.Machine(
            accounts_max=count + 2, transfers_hot_max=1 << (n * (count + 1) + 2).bit_length(), pending_max=8,
            orders_max=8, merchants_max=8, refunds_max=8, codes_max=8, envelopes_max=2 * n,
            claims_max=1 << (n * count).bit_length(), secret=SECRET)
        accounts = [{"id": FUNDING_CNY, "ledger": CNY, "code": 3}, {"id": ESCROW, "ledger": CNY, "code": 4}] + [
            {"id": c, "ledger": CNY, "code": 1} for c in CLAIMERS[:count]]
        assert not machine.apply(CREATE_ACCOUNTS, core.accounts_from_dicts(accounts), START_NS).any()
        sends = np.zeros(n, dtype=core.records.ENVELOPE_SEND_DTYPE)
        numbers = [b"P-%d" % (start + k) for k in range(n)]
        ids = np.array([envelope_id(FUNDING_CNY, number) for number in numbers], dtype=object)
        sends["id_lo"] = (ids & U64).astype(np.uint64)
        sends["id_hi"] = (ids >> 64).astype(np.uint64)
        sends["out_envelope_no"] = np.frombuffer(b"".join(x.ljust(32, b"\0") for x in numbers), np.uint8).reshape(n, 32)
        sends["sender_id_lo"], sends["escrow_id_lo"] = FUNDING_CNY, ESCROW
        sends["total"], sends["count"], sends["ledger"] = total, count, CNY
        for b in range(0, n, batch):
            assert not machine.apply(SEND, sends[b:b + batch], START_NS + S).any()
        claims = np.zeros(n * count, dtype=core.records.ENVELOPE_CLAIM_DTYPE)
        claims["envelope_id_lo"] = np.tile(sends["id_lo"], count)
        claims["envelope_id_hi"] = np.tile(sends["id_hi"], count)
        claims["claimer_id_lo"] = np.repeat(np.array(CLAIMERS[:count], dtype=np.uint64), n)
        reply = np.concatenate([machine.apply(CLAIM, claims[b:b + batch], START_NS + 2 * S)
                                for b in range(0, n * count, batch)])
        assert not reply["result"].any()
        assert (reply["position"].reshape(count, n) == np.arange(count)[:, None]).all()
        out[start:start + n] = reply["amount"].reshape(count, n).T
    return out


def _check_double_mean(total, count, packets):
    shares = _claimed_shares(total, count, packets)
    # Every packet: shares >= 1 within the bounds of their draw, the last the rest, exactly the total.
    assert (shares.sum(axis=1) == total).all()
    before = total - np.cumsum(shares, axis=1) + shares   # what remained at each position's draw
    for position in range(count - 1):
        left = count - position
        high = np.minimum(2 * before[:, position] // left, before[:, position] - (left - 1))
        assert (shares[:, position] >= 1).all() and (shares[:, position] <= high).all()
    # Position 0 draws uniformly from [1, m]: 50 equal bins, a chi-square far below its 5-sigma line.
    m0 = min(2 * total // count, total - (count - 1))
    bins = np.bincount((shares[:, 0] - 1) * 50 // m0, minlength=50)
    expected_bin = packets / 50
    assert m0 % 50 == 0 and ((bins - expected_bin) ** 2 / expected_bin).sum() < 49 + 5 * (2 * 49) ** 0.5
    # The mean at every position: within 5 standard errors (the observed variance) of the exact
    # expectation, and of total/count give or take the rounding bias (below one unit: documented).
    means, variances = _expected_shares(total, count)
    assert abs(means.sum() - total) < 1e-6 and (abs(means - total / count) < 1).all()
    observed = shares.mean(axis=0)
    error = shares.std(axis=0, ddof=1) / packets ** 0.5
    assert (abs(observed - means) < 5 * error).all(), (observed - means, error)
    assert (abs(observed - total / count) < 5 * error + 1).all(), (observed - total / count, error)
    # The variance too is the draw's (within 5 %: the fourth moment is tame, uniform-like).
    assert (abs(shares.var(axis=0, ddof=1) / variances - 1) < 0.05).all()
    return observed, error, means


@pytest.mark.parametrize("total, count", [(20_000, 10), (1_000, 5)])
def test_the_mean_share_is_the_same_at_every_position(total, count):
    """docs/products.md "The share": over 100,000 packets the mean share at every claim position
    is total/count within sampling error (3.4 s and 0.9 s on this machine: in CI).

    Observed with this secret, mean - total/count by position (standard error):
    20,000 in 10: +2.3 +0.6 +1.3 -2.0 +1.9 -5.5 -2.0 +1.1 +3.8 -1.5 (SE 3.7 .. 4.9), all within
    1.4 SE of the exact expectations; the rounding bias (+0.50 .. -0.62) is below a fifth of an SE.
    1,000 in 5: +0.68 +0.32 +0.10 -0.69 -0.40 (SE 0.37 .. 0.46) against the exact +0.50 +0.25 +0.08
    -0.42 -0.42: here the bias shows, about one SE, which is why the exact expectation is the
    reference and total/count is allowed the documented unit on top of 5 SE."""
    _check_double_mean(total, count, 100_000)


# ---------------------------------------------------------------- where the core departed from the document (fixed)

def _setup_machine(sizes=USUAL):
    return applied(_machine(sizes), _timed(SETUP, _model(sizes)), _submit)


def test_an_escrow_cannot_send_the_money_its_open_packets_hold():
    """docs/products.md: "the money of open packets is never spendable by anyone but their
    claimers", and an escrow's balance "is always the sum of open packets' remaining". The core
    refuses an escrow that is the sender itself (escrow_invalid) but not an escrow sending into
    another: the first packet's claims then answer exceeds_credits and its refund fails."""
    machine = _setup_machine()
    now = START_NS + S
    assert _submit(machine, SEND, [_send(E0)], now) == ["ok"]
    theft = {"id": envelope_id(ESCROW, b"X"), "sender_id": ESCROW, "escrow_id": ESCROW_2, "total": 100, "count": 1,
             "out_envelope_no": b"X", "ledger": CNY}
    result = _submit(machine, SEND, [theft], now + S)
    claimed = _submit(machine, CLAIM, [{"envelope_id": envelope_id(*E0), "claimer_id": CLAIMERS[0]}], now + 2 * S)
    escrow = core.to_dicts(machine.ledger.lookup_accounts([ESCROW]))[0]
    open_remaining = sum(p["remaining"] for p in _lookup(machine, "envelopes", [envelope_id(*E0)]))
    # Refused (product_account), and the escrow still holds the packet.
    assert result == ["product_account"] and claimed[0][0] == "ok", (result, claimed)
    assert escrow["credits_posted"] - escrow["debits_posted"] == open_remaining


def test_a_refund_does_not_count_a_pending_transfer_expired_before_it():
    """A pending credit to the capped sender (credits may not exceed debits) with a 1 s timeout
    expires a second before the packet does. A batch between the two refunds it; a batch after
    both refunds with the first timestamps while the pending credit (expired 2 s earlier by its
    own clock) still counts: REFUND_FAILED exceeds_debits, the money left in escrow. Whether a
    refund goes through depends on whether a batch ran in between (the server's idle pulse at the
    pending expiry usually makes one; a store used alone, or a restart, does not)."""
    outcomes = []
    for between in (True, False):
        machine = _setup_machine()
        now = START_NS + S
        assert _submit(machine, SEND, [_send(CAPPED_KEY)], now) == ["ok"]   # 250 in 9, 2 s
        hold = dict(_top_up(CAPPED_SENDER, 250), flags=2, timeout=1)
        assert _submit(machine, CREATE_TRANSFERS, [hold], now) == ["ok"]
        if between:
            _submit(machine, CREATE_TRANSFERS, [], now + 1_500_000_000)
        _submit(machine, CREATE_TRANSFERS, [], now + 3 * S)
        (p,) = _lookup(machine, "envelopes", [envelope_id(*CAPPED_KEY)])
        outcomes.append((p["state"], p["refund_result"]))
    assert outcomes[0] == (ENVELOPE_REFUNDED, 0)
    assert outcomes[1] == (ENVELOPE_REFUNDED, 0), outcomes[1]
