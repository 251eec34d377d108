"""Properties: the compiled core behaves exactly like the reference model, and money is conserved.

Random batches of account and transfer creations (valid and invalid, retried ids, two-phase
posts and voids, expiries by time, linked chains, balancing transfers, amounts near 2**64) run
through ``core.Ledger`` and ``tests.model.ModelLedger``; after every batch, the result codes, all
accounts, every transfer in the id pool, the activity features and the per-account transfer
histories must be identical. Separately, per ledger, debits equal credits (posted and pending),
no account breaks its balance limit, and a retried batch changes nothing.

Wallet tiers (docs/products.md "Wallet limits and real-name tiers (built)") ride along: the
setup gives two CNY wallets and the USD merchant tiers, ledger 156 small tier limits (so that
the random amounts meet them), and the random steps set tiers and tier limits (valid and not),
with clocks that jump to the last nanoseconds of a UTC day or a year; the wallets' windows
(``lookup_wallet_limits``) must match the model's. On fixed tiers, no tiered wallet's day or
year ever holds more than its limits, nor a debit more than its per-payment limit.

The default runs fit CI; ``pytest -m slow`` runs many more examples.
"""

import datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import core
from core.tiers import Tiers
from tests.model import DAY_NS, ModelLedger, U64, U128

ACCOUNT_IDS = list(range(1, 9))
TRANSFER_IDS = list(range(1, 25))
LEDGERS = [156, 840]
ACCOUNTS_MAX = 7          # one less than the ids: accounts_limit_reached happens
TRANSFERS_MAX = 23        # fewer than the setup plus the id pool: transfers_limit_reached happens
START_NS = 1_700_000_000 * 10**9
LOOKUP_IDS = TRANSFER_IDS + [0, U128, 99]  # reserved and unknown ids are never found
LOOKUP_ACCOUNTS = ACCOUNT_IDS + [0, U128, 99]

SETUP_ACCOUNTS = [
    {"id": 1, "ledger": 156, "code": 3},                  # funding cards: may go negative
    {"id": 2, "ledger": 156, "code": 3},
    {"id": 3, "ledger": 156, "code": 1, "flags": 2},      # wallets: debits_must_not_exceed_credits
    {"id": 4, "ledger": 156, "code": 1, "flags": 2},
    {"id": 5, "ledger": 840, "code": 8, "flags": 4},      # a credit line: credits_must_not_exceed_debits
    {"id": 6, "ledger": 840, "code": 2},
]
SETUP_TRANSFERS = [  # fund the wallets, draw on the credit line (ids outside the pool)
    {"id": 1001, "debit_account_id": 1, "credit_account_id": 3, "amount": 5_000, "ledger": 156, "code": 4},
    {"id": 1002, "debit_account_id": 2, "credit_account_id": 4, "amount": 5_000, "ledger": 156, "code": 4},
    {"id": 1003, "debit_account_id": 5, "credit_account_id": 6, "amount": 3_000, "ledger": 840, "code": 8},
]
# CNY's tiers 1 and 2 get limits the random amounts (1..1,000) reach; USD keeps the defaults.
SETUP_TIER_LIMITS = [
    {"ledger": 156, "tier": 1, "payment_limit": 600, "daily_limit": 900, "yearly_limit": 1_000, "balance_limit": 6_000},
    {"ledger": 156, "tier": 2, "payment_limit": 900, "daily_limit": 1_000, "yearly_limit": 1_200, "balance_limit": 7_000},
]
SETUP_TIERS = [{"account_id": 3, "ledger": 156, "tier": 1}, {"account_id": 4, "ledger": 156, "tier": 2},
               {"account_id": 6, "ledger": 840, "tier": 1}]
SETUP = [("accounts", 0, SETUP_ACCOUNTS), ("transfers", 0, SETUP_TRANSFERS), ("tier_limits", 0, SETUP_TIER_LIMITS),
         ("tiers", 0, SETUP_TIERS)]
#: Clock steps to the last nanoseconds of the engine's UTC day, or of its year (handled by _timed).
TO_DAY_END, TO_YEAR_END = "day_end", "year_end"

def _mostly(usual, unusual, percent_unusual=5):
    """``usual`` values, and ``unusual`` ones in about ``percent_unusual``% of draws."""
    return st.integers(0, 99).flatmap(lambda roll: unusual if roll < percent_unusual else usual)


account_ids = _mostly(st.sampled_from(ACCOUNT_IDS[:6] * 3 + ACCOUNT_IDS[6:]),
                      st.sampled_from([0, U128, 99, (1 << 64) + 1]))
amounts = _mostly(st.integers(1, 1000), st.one_of(st.just(0), st.sampled_from([U64, U64 - 1, 1 << 63]),
                                                  st.integers(0, U64)), 8)
ledgers = _mostly(st.sampled_from([156, 156, 156, 840]), st.just(0))
codes = _mostly(st.integers(1, 12), st.sampled_from([0, 13, 15, 16, 17, 0xFFFF]))
transfer_ids = _mostly(st.sampled_from(TRANSFER_IDS), st.sampled_from([0, U128]), 3)
rare = st.integers(0, 99).map(lambda x: x < 3)   # a fault injected in about 3% of events


@st.composite
def account_events(draw):
    event = {"id": draw(account_ids), "ledger": draw(ledgers), "code": draw(codes),
             "flags": draw(st.sampled_from([0, 0, 2, 4, 8, 1, 1, 6]))}
    for name in ("user_data_128", "user_data_64", "user_data_32"):
        if draw(rare):
            event[name] = draw(st.integers(1, 2))
    if draw(rare):
        event[draw(st.sampled_from(["debits_pending", "debits_posted", "credits_pending", "credits_posted",
                                    "timestamp"]))] = 5
    if draw(rare):
        event["reserved"] = draw(st.sampled_from([1, 1 << 200]))
    if draw(rare):
        event["flags"] = draw(st.integers(0, 0xFFFF))
    return event


TRANSFER_FLAG_SHAPES = [0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 4, 4, 4, 5, 8, 8, 9, 16, 32, 48, 17, 18]
LEDGER_GROUPS = {156: [1, 2, 3, 3, 4, 4, 7], 840: [5, 6, 8]}  # the tiered wallets 3 and 4 twice


@st.composite
def transfer_events(draw):
    flags = draw(st.sampled_from(TRANSFER_FLAG_SHAPES))
    # Mostly two accounts of one ledger, so that most transfers get past the ledger checks.
    ledger = draw(st.sampled_from([156, 156, 840]))
    group = st.sampled_from(LEDGER_GROUPS[ledger])
    debit, credit = draw(_mostly(group, account_ids, 15)), draw(_mostly(group, account_ids, 15))
    # Pending transfers take ids 1..6 and resolutions refer to those, so that posts and voids
    # usually find a pending transfer (already posted, voided, expired, or not).
    pending_ids = _mostly(st.sampled_from(TRANSFER_IDS[:6]), transfer_ids, 10)
    own_id = pending_ids if flags & 0b0010 else _mostly(st.sampled_from(TRANSFER_IDS[6:]), transfer_ids, 10)
    event = {"id": draw(own_id), "debit_account_id": debit, "credit_account_id": credit,
             "amount": draw(amounts), "ledger": draw(_mostly(st.just(ledger), ledgers)),
             "code": draw(codes), "flags": flags}
    if flags & 0b0010:
        event["timeout"] = draw(st.sampled_from([0, 0, 1, 2, 3]))
    if flags & 0b1100:
        event["pending_id"] = draw(pending_ids)
        if draw(st.booleans()):
            # Usually a resolution names only the pending transfer (and maybe a partial amount).
            event.update(debit_account_id=0, credit_account_id=0, ledger=0, code=0)
            event["amount"] = draw(st.sampled_from([0, 0, 1, 5, 100]))
    for name in ("user_data_128", "user_data_64", "user_data_32", "timeout", "pending_id"):
        if draw(rare):
            event[name] = draw(st.integers(1, 3))
    if draw(rare):
        event["timestamp"] = 7
    if draw(rare):
        event["reserved"] = 1 << 40
    if draw(rare):
        event["flags"] = draw(st.integers(0, 0xFFFF))
    return event


@st.composite
def tier_events(draw):
    event = {"account_id": draw(account_ids), "ledger": draw(_mostly(st.sampled_from([156, 840]), ledgers)),
             "tier": draw(_mostly(st.integers(0, 3), st.sampled_from([4, 255])))}
    if draw(rare):
        event[draw(st.sampled_from(["reserved_a", "reserved", "flags", "timestamp"]))] = 1
    return event


@st.composite
def tier_limit_events(draw):
    payment = draw(st.integers(0, 1_200))
    daily = draw(_mostly(st.integers(payment, 3_000), st.integers(0, 3_000), 10))
    yearly = draw(_mostly(st.integers(daily, 6_000), st.integers(0, 6_000), 10))
    event = {"ledger": draw(st.sampled_from([156, 156, 840, 0, 978])), "tier": draw(_mostly(st.integers(1, 3), st.sampled_from([0, 4]))),
             "payment_limit": payment, "daily_limit": daily, "yearly_limit": yearly,
             "balance_limit": draw(st.sampled_from([0, 5_500, 8_000, 20_000, U64]))}
    if draw(rare):
        event[draw(st.sampled_from(["reserved_a", "reserved", "flags", "timestamp"]))] = 1
    return event


steps_kinds = st.one_of(
    st.tuples(st.just("accounts"), st.lists(account_events(), max_size=6)),
    st.tuples(st.just("tiers"), st.lists(tier_events(), max_size=3)),
    st.tuples(st.just("tier_limits"), st.lists(tier_limit_events(), max_size=2)),
    st.tuples(st.just("transfers"), st.lists(transfer_events(), max_size=10)),
    st.tuples(st.just("transfers"), st.lists(transfer_events(), max_size=10)),
    st.tuples(st.just("transfers"), st.lists(transfer_events(), max_size=10)),
)
time_steps_ns = st.one_of(st.just(0), st.just(1), st.integers(0, 3).map(lambda s: s * 10**9),
                          st.sampled_from([-10**9, 10**9 + 3, 5 * 10**9]), st.sampled_from([TO_DAY_END, TO_YEAR_END]))
batches = st.lists(st.tuples(time_steps_ns, steps_kinds).map(lambda t: (t[1][0], t[0], t[1][1])),
                   min_size=1, max_size=12).map(lambda steps: SETUP + steps)
#: The same without tier changes: the tiers and their limits stay the setup's.
fixed_tier_batches = batches.map(lambda steps: SETUP + [s for s in steps[len(SETUP):] if s[0] in ("accounts", "transfers")])


def _timed(steps):
    """The steps with their engine time: (kind, now_ns, events)."""
    now = START_NS
    for kind, step_ns, events in steps:
        if step_ns == TO_DAY_END:      # a batch's events straddle midnight
            now = (now // DAY_NS + 1) * DAY_NS - 2
        elif step_ns == TO_YEAR_END:   # ...and New Year's Eve's
            year = datetime.datetime.fromtimestamp(now // 10**9, datetime.timezone.utc).year
            now = int(datetime.datetime(year + 1, 1, 1, tzinfo=datetime.timezone.utc).timestamp()) * 10**9 - 2
        else:
            now += step_ns
        yield kind, now, events


class Core:
    """A bare ledger and the tiers over it (set_wallet_tiers and set_tier_limits are theirs)."""

    def __init__(self):
        self.ledger = core.Ledger(accounts_max=ACCOUNTS_MAX, transfers_hot_max=TRANSFERS_MAX)
        self.tiers = Tiers(self.ledger)


def _submit(machine, kind, events, now_ns):
    """Apply one batch of event dicts to the core; returns the result codes as a list."""
    if kind == "accounts":
        return machine.ledger.create_accounts(core.accounts_from_dicts(events), now_ns).tolist()
    if kind == "tiers":
        return machine.tiers.apply(7, core.records_from_dicts(events, core.WALLET_TIER_DTYPE), now_ns).tolist()
    if kind == "tier_limits":
        return machine.tiers.apply(9, core.records_from_dicts(events, core.TIER_LIMITS_DTYPE), now_ns).tolist()
    return machine.ledger.create_transfers(core.transfers_from_dicts(events), now_ns).tolist()


def _apply(machine, model, kind, now_ns, events):
    want = {"accounts": model.create_accounts, "transfers": model.create_transfers,
            "tiers": model.set_wallet_tiers, "tier_limits": model.set_tier_limits}[kind](events, now_ns)
    return _submit(machine, kind, events, now_ns), want


def _assert_same_state(machine, model):
    core_ledger = machine.ledger
    assert core.to_dicts(machine.tiers.lookup_wallet_limits(LOOKUP_ACCOUNTS)) == model.lookup_wallet_limits(LOOKUP_ACCOUNTS)
    assert core.to_dicts(core_ledger.accounts()) == model.accounts()
    assert core.to_dicts(core_ledger.lookup_transfers(LOOKUP_IDS)) == model.lookup_transfers(LOOKUP_IDS)
    assert core.to_dicts(core_ledger.lookup_accounts(LOOKUP_IDS)) == model.lookup_accounts(LOOKUP_IDS)
    features = core_ledger.features()
    expected = model.features_by_index()
    for key in expected:
        assert features[key].tolist() == expected[key], key
    for account_id in ACCOUNT_IDS + [0, U128]:
        for reverse in (False, True):
            got = core.to_dicts(core_ledger.get_account_transfers(account_id, reverse=reverse))
            assert got == model.get_account_transfers(account_id, reverse=reverse)
        got = core.to_dicts(core_ledger.get_account_transfers(account_id, limit=2, debits=False))
        assert got == model.get_account_transfers(account_id, limit=2, debits=False)


def _run_against_model(steps):
    machine = Core()
    model = ModelLedger(ACCOUNTS_MAX, TRANSFERS_MAX)
    for kind, now, events in _timed(steps):
        got, want = _apply(machine, model, kind, now, events)
        assert got == want, (kind, events)
        assert machine.ledger.last_timestamp == model.last
        _assert_same_state(machine, model)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_core_matches_the_reference_model(steps):
    _run_against_model(steps)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_core_matches_the_reference_model_long(steps):
    _run_against_model(steps)


def _check_invariants(ledger):
    accounts = ledger.accounts()
    for ledger_number in np.unique(accounts["ledger"]):
        same = accounts[accounts["ledger"] == ledger_number]
        # Python ints: the sums of many u64 balances may exceed 64 bits.
        assert sum(map(int, same["debits_posted"])) == sum(map(int, same["credits_posted"]))
        assert sum(map(int, same["debits_pending"])) == sum(map(int, same["credits_pending"]))
    for a in core.to_dicts(accounts):
        if a["flags"] & core.AccountFlags.debits_must_not_exceed_credits:
            assert a["debits_pending"] + a["debits_posted"] <= a["credits_posted"]
        if a["flags"] & core.AccountFlags.credits_must_not_exceed_debits:
            assert a["credits_pending"] + a["credits_posted"] <= a["debits_posted"]


def _check_tier_invariants(machine):
    """No tiered wallet's windows hold more than its limits, no debit of one is above its
    per-payment limit, none holds more than its balance limit (the tiers never change here, and
    were set before any money moved but the setup's)."""
    for row in core.to_dicts(machine.tiers.lookup_wallet_limits(ACCOUNT_IDS)):
        if not row["tier"]:
            continue
        assert row["day_spent"] <= row["daily_limit"] and row["year_spent"] <= row["yearly_limit"], row
        account = core.to_dicts(machine.ledger.lookup_accounts([row["account_id"]]))[0]
        assert account["credits_posted"] + account["credits_pending"] - account["debits_posted"] <= row["balance_limit"]
        debits = core.to_dicts(machine.ledger.get_account_transfers(row["account_id"], credits=False))
        assert all(t["amount"] <= row["payment_limit"] for t in debits if t["timestamp"] > row["tier_set_at"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_money_is_conserved_and_limits_hold(steps):
    machine = Core()
    for kind, now, events in _timed(steps):
        _submit(machine, kind, events, now)
        _check_invariants(machine.ledger)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fixed_tier_batches)
def test_tiered_wallets_never_pass_their_limits(steps):
    machine = Core()
    for kind, now, events in _timed(steps):
        _submit(machine, kind, events, now)
        _check_invariants(machine.ledger)
        _check_tier_invariants(machine)


SET_KEYS = {"tiers": lambda e: e["account_id"], "tier_limits": lambda e: (e["ledger"], e["tier"])}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_a_retried_request_changes_nothing(steps):
    machine = Core()
    ledger = machine.ledger
    for kind, now, events in _timed(steps):
        first = _submit(machine, kind, events, now)
        acknowledged = [e for e, r in zip(events, first) if r == core.Result.ok]
        if kind in SET_KEYS:  # a set's last event per key is in force: that one is the retry
            acknowledged = list({SET_KEYS[kind](e): e for e in acknowledged}.values())
        if not acknowledged:
            continue
        # Let the engine's clock expire what is due first, so that only the retry is measured.
        ledger.create_transfers(core.transfers_from_dicts([]), now)
        accounts = ledger.accounts()
        transfers = ledger.lookup_transfers(TRANSFER_IDS)
        features = ledger.features()
        # The windows as kept (a lookup answers as of the engine's clock, which the retry moves on).
        windows = {name: array.copy() for name, array in machine.tiers.snapshot()[0].items()}
        retry = _submit(machine, kind, acknowledged, now)
        assert core.Result.ok not in retry
        for name, array in machine.tiers.snapshot()[0].items():
            assert np.array_equal(array, windows[name]), name
        assert np.array_equal(ledger.accounts(), accounts)
        assert np.array_equal(ledger.lookup_transfers(TRANSFER_IDS), transfers)
        for key, value in ledger.features().items():
            assert np.array_equal(value, features[key]), key
