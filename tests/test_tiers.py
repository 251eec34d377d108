"""Wallet limits and real-name tiers (docs/products.md "Wallet limits and real-name tiers
(built)"): every documented result code of set_wallet_tiers and set_tier_limits with the ledger
untouched; each limit at its edge (at the limit ok, a minor unit above refused, nothing changed);
the day's window restarting at the engine's UTC midnight and the year's at New Year; a linked
chain whose leg is refused undoing the counts; holds counted at creation and given back when
voided, expired or posted for less; product legs (a QR payment, a payment-code charge) refused
over a limit with nothing changed; checkpoint, recovery and replay-log ending in the same state
hash; the client's calls and the roles over a server; a property of tiered wallets' holds and
payments across days against the reference model."""

import asyncio
import contextlib
import datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import core
from core import Result, replay_log
from core.machine import Machine
from core.operations import Operation
from core.order_keys import code_charges, code_issues, order_creates, order_id, order_pays
from engine.client import Client, ServerError
from engine.roles import Role
from engine.server import Server
from tests.model import ModelLedger

SECRET = bytes(range(32))
S = 10**9
DAY = 86_400 * S
T0 = 1_700_000_000 * S                       # 2023-11-14 22:13:20 UTC
MIDNIGHT = (T0 // DAY + 1) * DAY              # 2023-11-15 00:00 UTC
NEW_YEAR = int(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp()) * S
CNY, USD = 156, 840
FUNDING, WALLET, FRIEND, MERCHANT, FEES, DOLLARS, BANK = 1, 2, 3, 7, 20, 9, 30
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": FRIEND, "ledger": CNY, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": FEES, "ledger": CNY, "code": 5},
    {"id": DOLLARS, "ledger": USD, "code": 1},
    {"id": BANK, "ledger": CNY, "code": 9},
]
# The defaults of tier 1 (unverified), CNY minor units: 500.00 a payment, 1,000.00 a day and a
# year, 1,000.00 held at most; tier 2: 5,000.00, 10,000.00, 100,000.00, 100,000.00.
T1 = core.constants.TIER_LIMITS_DEFAULT[1]
T2 = core.constants.TIER_LIMITS_DEFAULT[2]


def machine():
    m = Machine(accounts_max=32, transfers_hot_max=1 << 12, pending_max=64, orders_max=64, codes_max=64,
                secret=SECRET)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    terms = core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": FEES, "fee_bps": 60,
                                      "ledger": CNY}], core.MERCHANT_DTYPE)
    assert not m.apply(Operation.set_merchants, terms, T0).any()
    return m


def tier(m, now, account=WALLET, level=1, **fields):
    row = dict({"account_id": account, "ledger": CNY, "tier": level}, **fields)
    return Result(int(m.apply(Operation.set_wallet_tiers, core.records_from_dicts([row], core.WALLET_TIER_DTYPE),
                              now)[0]))


def limits(m, now, **fields):
    row = dict({"ledger": CNY, "tier": 1, "payment_limit": 100, "daily_limit": 200, "yearly_limit": 300,
                "balance_limit": 1_000}, **fields)
    return Result(int(m.apply(Operation.set_tier_limits, core.records_from_dicts([row], core.TIER_LIMITS_DTYPE),
                              now)[0]))


_ids = iter(range(10_000, 1 << 40))


def move(m, now, amount, debit=WALLET, credit=FRIEND, **fields):
    """One transfer; its result."""
    row = dict({"id": next(_ids), "debit_account_id": debit, "credit_account_id": credit, "amount": amount,
                "ledger": CNY, "code": 3}, **fields)
    return Result(int(m.apply(Operation.create_transfers, core.transfers_from_dicts([row]), now)[0]))


def window(m, account=WALLET):
    return core.to_dicts(m.tiers.lookup_wallet_limits([account]))[0]


def spent(m, account=WALLET):
    row = window(m, account)
    return row["day_spent"], row["year_spent"]


def state(m):
    """Everything a refused event must leave as it was (the windows and tiers are in the hash)."""
    return (m.ledger.lookup_accounts([a["id"] for a in ACCOUNTS]).tobytes(), m.ledger.transfer_count,
            m.orders.order_count, repr(sorted(m.hash_parts().items(), key=lambda kv: kv[0])))


def small(m):
    """CNY's tier 1 in small numbers: 500 a payment, 1,000 a day and a year (the wallet holds more
    already: a balance limit only refuses credits)."""
    assert limits(m, T0 + S, payment_limit=500, daily_limit=1_000, yearly_limit=1_000, balance_limit=1_000) == Result.ok


def funded(level=1, amount=None):
    """A machine whose wallet is topped up (before its tier) and then given ``level``."""
    m = machine()
    assert move(m, T0, amount if amount is not None else T1["balance"], debit=FUNDING, credit=WALLET) == Result.ok
    if level:
        assert tier(m, T0 + S, level=level) == Result.ok
    return m


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("fields,expected", [
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"reserved_a": 1}, Result.reserved_field),
    ({"reserved": 1 << 700}, Result.reserved_field),
    ({"flags": 1}, Result.reserved_flag),
    ({"account_id": 0}, Result.id_must_not_be_zero),
    ({"account_id": (1 << 128) - 1}, Result.id_must_not_be_int_max),
    ({"ledger": 0}, Result.ledger_must_not_be_zero),
    ({"tier": 4}, Result.tier_invalid),
    ({"tier": 255}, Result.tier_invalid),
    ({"account_id": 99}, Result.account_not_found),
    ({"ledger": USD}, Result.currency_mismatch),
    ({"tier": 0}, Result.exists),                  # untiered already: nothing changes
])
def test_bad_tiers_answer_their_code_and_change_nothing(fields, expected):
    m = funded(level=0)
    before = state(m)
    assert tier(m, T0 + S, **fields) == expected
    assert state(m) == before and window(m)["tier"] == 0


@pytest.mark.parametrize("fields,expected", [
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"reserved_a": 1}, Result.reserved_field),
    ({"reserved": 1}, Result.reserved_field),
    ({"flags": 4}, Result.reserved_flag),
    ({"tier": 0}, Result.tier_invalid),
    ({"tier": 4}, Result.tier_invalid),
    ({"payment_limit": 201}, Result.tier_limits_invalid),           # per payment above daily
    ({"daily_limit": 301}, Result.tier_limits_invalid),             # daily above yearly
    ({"ledger": 0, "tier": 1, "payment_limit": T1["payment"], "daily_limit": T1["daily"],
      "yearly_limit": T1["yearly"], "balance_limit": T1["balance"]}, Result.exists),  # the defaults as they are
])
def test_bad_tier_limits_answer_their_code_and_change_nothing(fields, expected):
    m = funded()
    before, rules = state(m), m.tiers.rules()
    assert limits(m, T0 + 2 * S, **fields) == expected
    assert state(m) == before and np.array_equal(m.tiers.rules(), rules)


def test_tier_limits_of_their_own_for_at_most_96_ledger_tiers():
    m = machine()
    for ledger in range(1, 33):
        for level in (1, 2, 3):
            assert limits(m, T0 + S, ledger=ledger, tier=level) == Result.ok
    before = m.tiers.rules()
    assert limits(m, T0 + S, ledger=33) == Result.tier_ledgers_limit_reached
    assert limits(m, T0 + S, ledger=5, tier=2, payment_limit=50) == Result.ok      # a change of one held
    assert limits(m, T0 + S, ledger=0, payment_limit=50) == Result.ok               # the defaults: always room
    assert len(m.tiers.rules()) == len(before) == 99
    assert limits(m, T0 + S, ledger=5, tier=2, payment_limit=50) == Result.exists   # a retry


def test_a_retried_tier_is_exists_and_a_change_is_kept_with_its_time():
    m = funded(level=0)
    assert tier(m, T0 + S, level=2) == Result.ok
    first = window(m)
    assert first["tier"] == 2 and first["tier_set_at"] >= T0 + S and first["daily_limit"] == T2["daily"]
    assert tier(m, T0 + 2 * S, level=2) == Result.exists and window(m) == dict(first, timestamp=window(m)["timestamp"])
    assert tier(m, T0 + 3 * S, level=0) == Result.ok
    assert window(m)["tier"] == 0 and window(m)["daily_limit"] == 0
    # An untiered wallet has no limits: the whole balance leaves at once, nothing is counted.
    assert move(m, T0 + 4 * S, T1["balance"]) == Result.ok and spent(m) == (0, 0)


# ------------------------------------------------------------------------------ each limit at its edge

def test_per_payment_limit_at_its_edge():
    m = funded()
    before = state(m)
    assert move(m, T0 + 2 * S, T1["payment"] + 1) == Result.exceeds_payment_limit
    assert state(m) == before
    assert move(m, T0 + 2 * S, T1["payment"]) == Result.ok
    assert spent(m) == (T1["payment"], T1["payment"])


def test_daily_limit_at_its_edge_and_the_next_utc_day():
    m = funded(level=2, amount=3 * T2["daily"])
    now = MIDNIGHT - 10 * S
    while spent(m)[0] + T2["payment"] <= T2["daily"]:
        assert move(m, now, T2["payment"]) == Result.ok
    assert spent(m)[0] == T2["daily"]
    before = state(m)
    assert move(m, now, 1) == Result.exceeds_daily_limit
    assert state(m) == before
    # One batch straddling midnight: its events' own timestamps decide their day.
    rows = [{"id": next(_ids), "debit_account_id": WALLET, "credit_account_id": FRIEND, "amount": 1, "ledger": CNY,
             "code": 3} for _ in range(4)]
    results = m.apply(Operation.create_transfers, core.transfers_from_dicts(rows), MIDNIGHT - 2)
    assert [Result(r) for r in results] == [Result.exceeds_daily_limit] * 2 + [Result.ok] * 2
    assert spent(m) == (2, T2["daily"] + 2)
    assert window(m)["day"] == MIDNIGHT // DAY


def test_yearly_limit_across_days_and_the_new_year():
    m = funded()   # tier 1: 1,000.00 a day and a year
    assert limits(m, T0 + S, payment_limit=400, daily_limit=500, yearly_limit=700, balance_limit=10**6) == Result.ok
    assert move(m, T0 + 2 * S, 400) == Result.ok
    assert move(m, MIDNIGHT, 400) == Result.exceeds_yearly_limit         # a new day, the same year
    assert move(m, MIDNIGHT, 300) == Result.ok and spent(m) == (300, 700)
    before = state(m)
    assert move(m, NEW_YEAR - 1, 1) == Result.exceeds_yearly_limit and state(m) == before
    assert move(m, NEW_YEAR, 400) == Result.ok
    assert spent(m) == (400, 400) and window(m)["year"] == 2024


def test_balance_limit_covers_top_ups_and_receipts():
    m = funded(amount=T1["balance"] - 100)
    assert move(m, T0 + S, 1_000, debit=FUNDING, credit=FRIEND) == Result.ok   # the friend is untiered
    before = state(m)
    assert move(m, T0 + 2 * S, 101, debit=FUNDING, credit=WALLET, code=4) == Result.exceeds_balance_limit
    assert move(m, T0 + 2 * S, 101, debit=FRIEND, credit=WALLET) == Result.exceeds_balance_limit
    assert state(m) == before
    assert move(m, T0 + 2 * S, 100, debit=FUNDING, credit=WALLET, code=4) == Result.ok      # exactly at the limit
    # A withdrawal to the bank is an outgoing payment like any other; then there is room again.
    assert move(m, T0 + 3 * S, T1["payment"] + 1, credit=BANK, code=5) == Result.exceeds_payment_limit
    assert move(m, T0 + 3 * S, 300, credit=BANK, code=5) == Result.ok
    assert move(m, T0 + 4 * S, 300, debit=FUNDING, credit=WALLET, code=4) == Result.ok
    assert move(m, T0 + 4 * S, 1, debit=FUNDING, credit=WALLET, code=4) == Result.exceeds_balance_limit


def test_limits_of_a_ledger_of_its_own_and_the_check_order():
    m = machine()
    assert move(m, T0, 2_000, debit=FUNDING, credit=WALLET) == Result.ok
    assert tier(m, T0 + S) == Result.ok and tier(m, T0 + S, account=FRIEND, level=1) == Result.ok
    assert limits(m, T0 + S, payment_limit=100, daily_limit=150, yearly_limit=150, balance_limit=2_050) == Result.ok
    assert window(m)["payment_limit"] == 100 and window(m)["balance_limit"] == 2_050
    # The debited wallet's limits come before the credited one's balance.
    assert move(m, T0 + 2 * S, 101) == Result.exceeds_payment_limit
    assert move(m, T0 + 2 * S, 100) == Result.ok
    assert move(m, T0 + 2 * S, 51) == Result.exceeds_daily_limit
    # Other checks come first: a debit the wallet cannot pay is exceeds_credits, not a limit.
    assert move(m, T0 + 2 * S, 10**6) == Result.exceeds_credits
    # USD keeps the defaults.
    assert core.to_dicts(m.tiers.lookup_wallet_limits([DOLLARS]))[0]["tier"] == 0
    assert tier(m, T0 + 3 * S, account=DOLLARS, ledger=USD, level=1) == Result.ok
    assert core.to_dicts(m.tiers.lookup_wallet_limits([DOLLARS]))[0]["payment_limit"] == T1["payment"]


# ------------------------------------------------------------------------------ chains and holds

def test_a_linked_chain_with_a_refused_transfer_undoes_the_counts():
    m = funded()
    small(m)
    assert move(m, T0 + 2 * S, 100) == Result.ok
    before = state(m), spent(m)
    rows = [{"id": next(_ids), "debit_account_id": WALLET, "credit_account_id": FRIEND, "amount": 400, "ledger": CNY,
             "code": 3, "flags": 1},
            {"id": next(_ids), "debit_account_id": WALLET, "credit_account_id": MERCHANT, "amount": 400, "ledger": CNY,
             "code": 1, "flags": 1},      # 900 of the day: fine; the next passes 1,000
            {"id": next(_ids), "debit_account_id": WALLET, "credit_account_id": BANK, "amount": 101, "ledger": CNY,
             "code": 5}]
    results = [Result(r) for r in m.apply(Operation.create_transfers, core.transfers_from_dicts(rows), T0 + 3 * S)]
    assert results == [Result.linked_event_failed, Result.linked_event_failed, Result.exceeds_daily_limit]
    assert (state(m), spent(m)) == before
    rows[2]["amount"] = 100
    results = m.apply(Operation.create_transfers, core.transfers_from_dicts(rows), T0 + 4 * S)
    assert not results.any() and spent(m) == (1_000, 1_000)


def test_a_hold_counts_when_made_and_gives_back_when_voided_expired_or_posted_for_less():
    m = funded()
    small(m)
    hold = lambda amount, **f: move(m, T0 + 2 * S, amount, flags=2, **f)   # noqa: E731
    assert hold(400, id=1) == Result.ok and spent(m) == (400, 400)
    assert hold(400, id=2, timeout=5) == Result.ok and spent(m) == (800, 800)
    assert hold(300, id=3) == Result.exceeds_daily_limit                    # holds count: 1,100 > 1,000
    assert move(m, T0 + 3 * S, 0, id=4, pending_id=1, flags=8, debit=0, credit=0, ledger=0, code=0) == Result.ok
    assert spent(m) == (400, 400)                                           # voided: given back
    assert move(m, T0 + 3 * S, 150, id=5, pending_id=2, flags=4, debit=0, credit=0, ledger=0, code=0) == Result.ok
    assert spent(m) == (150, 150)                                           # posted 150 of 400: 250 back
    assert hold(500, id=6, timeout=1) == Result.ok and spent(m) == (650, 650)
    m.apply(Operation.create_transfers, core.transfers_from_dicts([]), T0 + 10 * S)   # its time is up
    assert spent(m) == (150, 150)
    # A hold from yesterday voided today gives back to the year only; today's count stays.
    assert hold(300, id=7) == Result.ok and spent(m) == (450, 450)
    assert move(m, MIDNIGHT + S, 200) == Result.ok and spent(m) == (200, 650)
    assert move(m, MIDNIGHT + 2 * S, 0, id=8, pending_id=7, flags=8, debit=0, credit=0, ledger=0, code=0) == Result.ok
    assert spent(m) == (200, 350)


def test_a_hold_made_before_the_tier_gives_back_nothing():
    m = funded(level=0)
    assert move(m, T0 + 2 * S, 400, id=21, flags=2) == Result.ok
    assert tier(m, T0 + 3 * S) == Result.ok
    assert move(m, T0 + 4 * S, 300) == Result.ok and spent(m) == (300, 300)
    assert move(m, T0 + 5 * S, 0, id=22, pending_id=21, flags=8, debit=0, credit=0, ledger=0, code=0) == Result.ok
    assert spent(m) == (300, 300)


# ------------------------------------------------------------------------------ product legs

def test_a_qr_payment_over_the_limit_is_refused_and_changes_nothing():
    m = funded()
    for number, amount in ((b"Q-1", T1["payment"] + 1), (b"Q-2", T1["payment"])):
        reply = m.apply(Operation.create_orders, order_creates([{"merchant_id": MERCHANT, "out_trade_no": number,
                                                                 "amount": amount, "ledger": CNY}]), T0 + 2 * S)
        assert reply["result"][0] == Result.ok
    pay = lambda number, amount: order_pays([{"order_id": order_id(MERCHANT, number), "payer_id": WALLET,  # noqa: E731
                                              "amount": amount, "ledger": CNY,
                                              "token": core.to_dicts(m.lookup_orders([order_id(MERCHANT, number)]))[0]["token"]}])
    before = state(m)
    assert m.apply(Operation.pay_orders, pay(b"Q-1", T1["payment"] + 1), T0 + 3 * S)[0] == Result.exceeds_payment_limit
    assert state(m) == before
    assert core.to_dicts(m.lookup_orders([order_id(MERCHANT, b"Q-1")]))[0]["state"] == core.OrderState.NOTPAY
    assert m.apply(Operation.pay_orders, pay(b"Q-2", T1["payment"]), T0 + 3 * S)[0] == Result.ok
    assert spent(m) == (T1["payment"], T1["payment"])   # the payment leg; the fee leg debits the merchant


def test_a_code_charge_over_the_day_is_refused_and_a_declined_hold_gives_back():
    m = funded()
    small(m)
    assert move(m, T0 + 2 * S, 500) == Result.ok and move(m, T0 + 2 * S, 100) == Result.ok

    def charge(request, amount, number, limit=0):
        issued = m.apply(Operation.issue_codes, code_issues([{"wallet_id": WALLET, "request_id": request,
                                                              "ledger": CNY, "no_password_limit": limit}]), T0 + 3 * S)
        code = int(issued["code"][0])
        return Result(int(m.apply(Operation.charge_codes, code_charges([{
            "merchant_id": MERCHANT, "code": code, "amount": amount, "out_trade_no": number, "ledger": CNY}]),
            T0 + 4 * S)[0]))

    before = state(m)
    assert charge(1, 401, b"C-1") == Result.exceeds_daily_limit
    assert m.codes.code_count == 1 and m.orders.order_count == 0 and state(m)[:2] == before[:2]
    # A held charge (above the code's no-password limit) takes the allowance; its decline gives it back.
    assert charge(2, 400, b"C-2", limit=100) == Result.user_paying and spent(m) == (1_000, 1_000)
    from core.order_keys import charge_confirms
    confirm = charge_confirms([{"order_id": order_id(MERCHANT, b"C-2"), "wallet_id": WALLET,
                                "flags": int(core.ConfirmFlags.decline)}])
    assert m.apply(Operation.confirm_charges, confirm, T0 + 5 * S)[0] == Result.ok
    assert spent(m) == (600, 600)


# ------------------------------------------------------------------------------ durability

def _store_day(store):
    store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0)
    store.create_transfers(core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                                       "amount": 90_000, "ledger": CNY, "code": 4}]), T0)
    assert not store.set_tier_limits(core.records_from_dicts(
        [{"ledger": CNY, "tier": 2, "payment_limit": 1_000, "daily_limit": 3_000, "yearly_limit": 20_000,
          "balance_limit": 100_000}], core.TIER_LIMITS_DTYPE), T0 + S).any()
    assert not store.set_wallet_tiers(core.records_from_dicts([{"account_id": WALLET, "ledger": CNY, "tier": 2}],
                                                              core.WALLET_TIER_DTYPE), T0 + S).any()
    answers = []
    for k in range(60):   # over four days: refusals by the day, holds voided and expiring
        now = T0 + k * 2 * 3_600 * S
        row = {"id": 1_000 + k, "debit_account_id": WALLET, "credit_account_id": MERCHANT, "amount": 400 + 10 * k,
               "ledger": CNY, "code": 1, "flags": 2 if k % 5 == 0 else 0, "timeout": 3_600 if k % 10 == 0 else 0}
        if k % 5 != 0:
            row.pop("timeout")
        answers += store.create_transfers(core.transfers_from_dicts([row]), now).tolist()
        if k % 10 == 5:
            answers += store.create_transfers(core.transfers_from_dicts(
                [{"id": 5_000 + k, "pending_id": 1_000 + k, "flags": 8}]), now + S).tolist()
        if k == 30:
            store.checkpoint()
    return answers


def test_checkpoint_recovery_and_replay_log_give_the_same_hash(tmp_path):
    source = str(tmp_path / "source")
    with core.open(source, accounts_max=32, transfers_hot_max=1 << 12, pending_max=64, secret=SECRET) as store:
        answers = _store_day(store)
        assert Result.exceeds_daily_limit in answers and Result.ok in answers
        live_hash, kept = store.state_hash(), store.lookup_wallet_limits([WALLET, FRIEND])
        assert kept["tier"].tolist() == [2, 0] and kept["day_spent"][0] > 0
    with core.open(source) as store:
        assert store.recovery.replayed_batches >= 1
        assert store.state_hash() == live_hash
        assert np.array_equal(store.lookup_wallet_limits([WALLET, FRIEND]), kept)
    assert replay_log.run(source, str(tmp_path / "replayed"))["equal"]


# ------------------------------------------------------------------------------ over a server

SECRETS = {1: b"admin-service-secret", 2: b"wallet-service-secret"}
ROLES = {1: Role.of("admin"), 2: Role.of("wallet")}


def test_the_client_sets_tiers_and_reads_limits_and_a_wallet_service_may_only_read(tmp_path):
    async def main():
        store = core.open(str(tmp_path / "s"), accounts_max=64, transfers_hot_max=1 << 12)
        server = Server(store, SECRETS, ROLES)
        port = await server.start("127.0.0.1", 0)
        admin, wallet = [await Client.connect("127.0.0.1", port, client_id=i, secret=SECRETS[i]) for i in (1, 2)]
        try:
            assert not (await admin.create_accounts(core.accounts_from_dicts(ACCOUNTS))).any()
            tiers = core.records_from_dicts([{"account_id": WALLET, "ledger": CNY, "tier": 1}], core.WALLET_TIER_DTYPE)
            assert (await admin.set_wallet_tiers(tiers)).tolist() == [Result.ok]
            assert (await admin.set_wallet_tiers(tiers)).tolist() == [Result.exists]
            own = core.records_from_dicts([{"ledger": USD, "tier": 1, "payment_limit": 10, "daily_limit": 20,
                                            "yearly_limit": 30, "balance_limit": 40}], core.TIER_LIMITS_DTYPE)
            assert (await admin.set_tier_limits(own)).tolist() == [Result.ok]
            top_up = await wallet.create_transfer(id=core.new_id(), debit_account_id=FUNDING, credit_account_id=WALLET,
                                                  amount=T1["balance"] + 1, ledger=CNY, code=4)
            assert top_up == Result.exceeds_balance_limit
            rows = await wallet.lookup_wallet_limits([WALLET, 99])
            assert rows.shape == (1,) and rows["tier"][0] == 1 and rows["balance_limit"][0] == T1["balance"]
            for call in (wallet.set_wallet_tiers(tiers), wallet.set_tier_limits(own)):
                with pytest.raises(ServerError):
                    await call
            assert store.lookup_wallet_limits([WALLET])["tier"][0] == 1
        finally:
            admin.close()
            wallet.close()
            await server.close()
            store.close()

    asyncio.run(asyncio.wait_for(main(), 30))


# ------------------------------------------------------------------------------ a property

wallets = st.sampled_from([WALLET, WALLET, FRIEND])
clock = st.one_of(st.integers(0, 3).map(lambda s: s * S), st.sampled_from(["day_end", "day_end", "year_end"]))
transfer = st.fixed_dictionaries({
    "debit_account_id": wallets, "credit_account_id": st.sampled_from([MERCHANT, BANK, FRIEND, WALLET]),
    "amount": st.integers(1, 700), "flags": st.sampled_from([0, 0, 0, 2, 1]),
    "timeout": st.sampled_from([0, 0, 2]), "id": st.integers(1, 40)})
resolution = st.fixed_dictionaries({"id": st.integers(41, 80), "pending_id": st.integers(1, 40),
                                    "flags": st.sampled_from([4, 8]), "amount": st.sampled_from([0, 0, 50, 300])})
top_up = st.fixed_dictionaries({"id": st.integers(81, 120), "debit_account_id": st.just(FUNDING),
                                "credit_account_id": wallets, "amount": st.integers(1, 900)})
steps = st.lists(st.tuples(clock, st.lists(st.one_of(transfer, transfer, resolution, top_up), max_size=6)),
                 min_size=1, max_size=20)


def _fill_transfer(row):
    row = dict(row)
    if not row.get("pending_id"):
        row.update(ledger=CNY, code=3)
    if not row.get("flags", 0) & 2:
        row["timeout"] = 0
    return row


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_tiered_wallets_payments_and_holds_across_days_match_the_model(steps):
    m = Machine(accounts_max=32, transfers_hot_max=1 << 12, pending_max=64, orders_max=8, secret=SECRET)
    model = ModelLedger(32, 1 << 12)
    setup = [(Operation.create_accounts, ACCOUNTS, model.create_accounts, core.accounts_from_dicts),
             (Operation.create_transfers, [{"id": 200, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                            "amount": 2_000, "ledger": CNY, "code": 4}],
              model.create_transfers, core.transfers_from_dicts),
             (Operation.set_tier_limits, [{"ledger": CNY, "tier": 1, "payment_limit": 600, "daily_limit": 1_000,
                                           "yearly_limit": 1_300, "balance_limit": 3_000}],
              model.set_tier_limits, lambda rows: core.records_from_dicts(rows, core.TIER_LIMITS_DTYPE)),
             (Operation.set_wallet_tiers, [{"account_id": WALLET, "ledger": CNY, "tier": 1},
                                           {"account_id": FRIEND, "ledger": CNY, "tier": 1}],
              model.set_wallet_tiers, lambda rows: core.records_from_dicts(rows, core.WALLET_TIER_DTYPE))]
    for operation, rows, apply_model, records in setup:
        assert m.apply(operation, records(rows), T0).tolist() == apply_model(rows, T0)
    now = T0
    for step, rows in steps:
        if step == "day_end":
            now = (now // DAY + 1) * DAY - 2
        elif step == "year_end":
            year = datetime.datetime.fromtimestamp(now // S, datetime.timezone.utc).year
            now = int(datetime.datetime(year + 1, 1, 1, tzinfo=datetime.timezone.utc).timestamp()) * S - 2
        else:
            now += step
        rows = [_fill_transfer(row) for row in rows]
        got = m.apply(Operation.create_transfers, core.transfers_from_dicts(rows), now).tolist()
        assert got == model.create_transfers(rows, now), rows
        assert core.to_dicts(m.tiers.lookup_wallet_limits([WALLET, FRIEND])) == model.lookup_wallet_limits([WALLET, FRIEND])
        assert core.to_dicts(m.ledger.accounts()) == model.accounts()
        for row in core.to_dicts(m.tiers.lookup_wallet_limits([WALLET, FRIEND])):
            assert row["day_spent"] <= row["daily_limit"] and row["year_spent"] <= row["yearly_limit"]
