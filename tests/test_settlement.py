"""Merchant settlement (docs/products.md "Settlement"): every rule and code, the net exact to the
minor unit (payments - refunds - fees + fees returned of the closed windows), a re-run that
changes nothing, a negative net carried, a failing transfer that changes nothing; the books
through recovery and replay; `tally settle` end to end, its report reconciled with the ledger.
"""

import csv
import json

import pytest
from hypothesis import given, settings, strategies as st

import core
from core import Result
from core.machine import Machine
from core.operations import Operation
from core.order_keys import order_creates, order_id, order_pays, refunds, token_of
from core.orders import leg_id
from core.settlement import settlement_id

SECRET = bytes(range(32))
S = 10**9
DAY = 86_400 * S
DAY0 = 19_675                       # an engine day (window)
T0 = DAY0 * DAY + 3_600 * S         # 01:00 on it
CNY, USD = 156, 840
FUNDING, WALLET, FEES, BANK = 1, 2, 20, 30
MERCHANTS = (7, 8, 9)
ACCOUNTS = [{"id": FUNDING, "ledger": CNY, "code": 3}, {"id": WALLET, "ledger": CNY, "code": 1},
            {"id": FEES, "ledger": CNY, "code": 6}, {"id": BANK, "ledger": CNY, "code": 7},
            {"id": 40, "ledger": USD, "code": 2}, {"id": 41, "ledger": CNY, "code": 2},
            *({"id": m, "ledger": CNY, "code": 2} for m in MERCHANTS)]


def terms(merchant, settlement_account=BANK, fee_bps=60):
    return core.records_from_dicts([{"merchant_id": merchant, "fee_account_id": FEES, "fee_bps": fee_bps,
                                     "settlement_account_id": settlement_account, "ledger": CNY}],
                                   core.MERCHANT_DTYPE)


def machine():
    m = Machine(accounts_max=32, transfers_hot_max=1 << 16, orders_max=1 << 12, refunds_max=1 << 12, secret=SECRET)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                       "amount": 10**12, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    for merchant in MERCHANTS:
        assert not m.apply(Operation.set_merchants, terms(merchant), T0).any()
    return m


def sell(m, merchant, number, amount, now):
    """An order of ``merchant`` created and paid at ``now``; its id."""
    created = m.apply(Operation.create_orders, order_creates(
        [{"merchant_id": merchant, "out_trade_no": number, "amount": amount, "ledger": CNY}]), now)
    assert created["result"][0] == Result.ok
    oid = order_id(merchant, number)
    assert not m.apply(Operation.pay_orders, order_pays([{"order_id": oid, "payer_id": WALLET, "amount": amount,
                                                          "ledger": CNY, "token": token_of(SECRET, oid)}]), now).any()
    return oid


def refund(m, merchant, oid, amount, number, now):
    return Result(m.apply(Operation.refund_orders, refunds([{"order_id": oid, "merchant_id": merchant, "amount": amount,
                                                              "out_refund_no": number, "ledger": CNY}]), now)[0])


def settle(m, merchant, window, now, **fields):
    event = core.records_from_dicts([dict({"merchant_id": merchant, "window": window, "ledger": CNY}, **fields)],
                                    core.SETTLEMENT_DTYPE)
    return Result(m.apply(Operation.settle_merchants, event, now)[0])


def balance(m, account):
    row = m.ledger.lookup_accounts([account])[0]
    return int(row["credits_posted"]) - int(row["debits_posted"])


def state(m):
    return (m.ledger.accounts().tobytes(), m.ledger.transfer_count, m.merchants.book_rows().tobytes(),
            m.lookup_settlements(list(MERCHANTS)).tobytes())


def test_a_day_settled_the_next_day_exactly_and_once():
    m = machine()
    a = sell(m, 7, b"A", 10_000, T0)
    sell(m, 7, b"B", 3_333, T0 + S)
    assert refund(m, 7, a, 2_500, b"R", T0 + 2 * S) == Result.ok
    assert settle(m, 7, DAY0, T0 + 3 * S) == Result.settlement_window_open  # the day has not ended
    late = sell(m, 7, b"C", 777, T0 + DAY)       # the next day's sale stays for the next settlement
    assert settle(m, 7, DAY0, T0 + DAY + S) == Result.ok
    fees, returned = 10_000 * 60 // 10_000 + 3_333 * 60 // 10_000, 60 * 2_500 // 10_000
    net = 10_000 + 3_333 - 2_500 - fees + returned
    kept = core.to_dicts(m.lookup_settlements([7]))[0]
    transfer_id = leg_id(settlement_id(7, DAY0), Operation.settle_merchants, 0)
    assert (kept["window"], kept["paid"], kept["refunded"], kept["fees"], kept["fees_returned"], kept["net"],
            kept["transfer_id"], kept["settlement_account_id"]) == (DAY0, 13_333, 2_500, fees, returned, net,
                                                                   transfer_id, BANK)
    moved = core.to_dicts(m.ledger.lookup_transfers([transfer_id]))[0]
    assert (moved["debit_account_id"], moved["credit_account_id"], moved["amount"], moved["code"]) == (
        7, BANK, net, core.TransferCode.order_settlement)
    assert balance(m, 7) == 777 - 777 * 60 // 10_000 and balance(m, BANK) == net
    before = state(m)
    assert settle(m, 7, DAY0, T0 + DAY + 2 * S) == Result.exists  # a re-run changes nothing
    assert settle(m, 7, DAY0 - 3, T0 + DAY + 2 * S) == Result.exists  # an earlier window is settled too
    assert state(m) == before
    # The next day is settled the day after, with the late sale only.
    assert settle(m, 7, DAY0 + 1, T0 + 2 * DAY) == Result.ok
    assert core.to_dicts(m.lookup_settlements([7]))[0]["paid"] == 777
    assert balance(m, 7) == 0 and m.ledger.lookup_transfers([leg_id(late, Operation.pay_orders, 0)]).shape[0] == 1


@pytest.mark.parametrize("fields,code", [
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"reserved": 1}, Result.reserved_field),
    ({"paid": 1}, Result.reserved_field),
    ({"net": -1}, Result.reserved_field),
    ({"reserved_b": 1}, Result.reserved_field),
    ({"flags": 1}, Result.reserved_flag),
    ({"merchant_id": 0}, Result.id_must_not_be_zero),
    ({"ledger": 0}, Result.ledger_must_not_be_zero),
    ({"merchant_id": 99}, Result.merchant_not_found),
    ({"merchant_id": 41}, Result.merchant_not_registered),
    ({"ledger": USD}, Result.currency_mismatch),
    ({"window": DAY0 + 1}, Result.settlement_window_open),
])
def test_refusals_change_nothing(fields, code):
    m = machine()
    sell(m, 7, b"A", 10_000, T0)
    before = state(m)
    assert settle(m, fields.pop("merchant_id", 7), fields.pop("window", DAY0), T0 + DAY, **fields) == code
    assert state(m) == before


def test_no_settlement_account_a_late_window_and_a_failing_transfer():
    m = machine()
    assert not m.apply(Operation.set_merchants, terms(8, settlement_account=0), T0).any()
    sell(m, 8, b"A", 1_000, T0)
    assert settle(m, 8, DAY0, T0 + DAY) == Result.settlement_account_not_found
    # Sales on two days, the first never settled: settling it now would mix in the second.
    sell(m, 9, b"A", 1_000, T0)
    sell(m, 9, b"B", 2_000, T0 + DAY)
    before = state(m)
    assert settle(m, 9, DAY0, T0 + 2 * DAY) == Result.settlement_window_behind
    assert state(m) == before
    assert settle(m, 9, DAY0 + 1, T0 + 2 * DAY) == Result.ok  # through the latest closed day: both
    assert core.to_dicts(m.lookup_settlements([9]))[0]["paid"] == 3_000


def test_a_failing_settlement_transfer_changes_nothing():
    # The merchant spent its takings from a wallet that may not go below zero: the
    # settlement's transfer fails (the ledger's code), and nothing changes, the book included.
    m = machine()
    wallets = core.accounts_from_dicts([{"id": 50, "ledger": CNY, "code": 2, "flags": 2}])  # debits <= credits
    assert not m.apply(Operation.create_accounts, wallets, T0).any()
    assert not m.apply(Operation.set_merchants, terms(50), T0).any()
    sell(m, 50, b"A", 5_000, T0)
    spend = core.transfers_from_dicts([{"id": 901, "debit_account_id": 50, "credit_account_id": FUNDING,
                                        "amount": 4_000, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, spend, T0 + S).any()
    before = state(m)
    assert settle(m, 50, DAY0, T0 + DAY) == Result.exceeds_credits
    assert state(m) == before


def test_a_negative_net_is_carried_to_the_next_settlement():
    m = machine()
    a = sell(m, 7, b"A", 10_000, T0)
    assert settle(m, 7, DAY0, T0 + DAY) == Result.ok
    assert refund(m, 7, a, 10_000, b"R", T0 + DAY + S) == Result.ok   # refunded the next day, in full
    sell(m, 7, b"B", 1_000, T0 + DAY + 2 * S)
    assert settle(m, 7, DAY0 + 1, T0 + 2 * DAY) == Result.ok
    kept = core.to_dicts(m.lookup_settlements([7]))[0]
    assert kept["net"] == 1_000 - 10_000 - 6 + 60 and kept["transfer_id"] == 0  # nothing moved
    sell(m, 7, b"C", 20_000, T0 + 2 * DAY + S)
    assert settle(m, 7, DAY0 + 2, T0 + 3 * DAY) == Result.ok
    kept = core.to_dicts(m.lookup_settlements([7]))[0]
    assert kept["net"] == 1_000 - 10_000 - 6 + 60 + 20_000 - 120 and kept["paid"] == 21_000


SALES = st.lists(st.tuples(st.sampled_from(MERCHANTS), st.integers(1, 10**7), st.integers(0, 3),
                           st.integers(0, 100)), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(sales=SALES, settle_days=st.lists(st.booleans(), min_size=4, max_size=4))
def test_settled_plus_unsettled_is_every_sale_exactly(sales, settle_days):
    """Per merchant, what the settlements moved plus its wallet's balance is what it sold less
    refunds and net fees, to the minor unit; per currency debits equal credits; settlement
    accounts hold exactly the settled nets."""
    m = machine()
    expected = dict.fromkeys(MERCHANTS, 0)
    moved = 0
    for day in range(len(settle_days) + 1):
        # The day begins with the settlement of the day before (if wanted; always on the last).
        if day and (settle_days[day - 1] or day == len(settle_days)):
            for merchant in MERCHANTS:
                assert settle(m, merchant, DAY0 + day - 1, T0 + day * DAY) == Result.ok  # the latest closed day
                net = core.to_dicts(m.lookup_settlements([merchant]))[0]["net"]
                moved += max(net, 0)
        for number, (merchant, amount, sale_day, refund_percent) in enumerate(sales):
            if sale_day != day:
                continue
            now = T0 + day * DAY + (number + 1) * S
            oid = sell(m, merchant, b"S%d" % number, amount, now)
            fee = amount * 60 // 10_000
            back = amount * refund_percent // 100
            expected[merchant] += amount - fee
            if back and refund(m, merchant, oid, back, b"R", now + 1) == Result.ok:
                expected[merchant] -= back - fee * back // amount
    assert sum(balance(m, merchant) for merchant in MERCHANTS) + balance(m, BANK) == sum(expected.values())
    assert balance(m, BANK) == moved
    accounts = m.ledger.accounts()
    for ledger in (CNY, USD):
        rows = accounts[accounts["ledger"] == ledger]
        assert int(rows["debits_posted"].sum()) == int(rows["credits_posted"].sum())


def test_books_and_settlements_survive_recovery_and_replay(tmp_path):
    from core import replay_log
    clock = [T0]
    path = str(tmp_path / "store")
    with core.open(path, accounts_max=32, transfers_hot_max=1 << 14, secret=SECRET, clock_ns=lambda: clock[0]) as store:
        assert not store.create_accounts(core.accounts_from_dicts(ACCOUNTS)).any()
        fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                           "amount": 10**12, "ledger": CNY, "code": 4}])
        assert not store.create_transfers(fund).any()
        assert not store.set_merchants(terms(7)).any()
        assert not store.set_merchants(terms(8)).any()
        for number, merchant in enumerate((7, 8, 7)):
            sell(_StoreAsMachine(store), merchant, b"S%d" % number, 1_000 * (number + 1), T0 + number * S)
        store.checkpoint()
        clock[0] = T0 + DAY
        events = core.records_from_dicts([{"merchant_id": m, "window": DAY0, "ledger": CNY} for m in (7, 8)],
                                         core.SETTLEMENT_DTYPE)
        assert not store.settle_merchants(events).any()
        sell(_StoreAsMachine(store), 8, b"late", 500, T0 + DAY + S)
        expected = store.state_hash(), store.lookup_settlements([7, 8]).tobytes(), store.merchants.book_rows().tobytes()
    with core.open(path, secret=SECRET) as again:
        assert (again.state_hash(), again.lookup_settlements([7, 8]).tobytes(),
                again.merchants.book_rows().tobytes()) == expected
    assert replay_log.run(path, str(tmp_path / "copy"))["equal"]


class _StoreAsMachine:
    """A store's ``submit`` under the Machine's ``apply`` name (the helpers above take either)."""

    def __init__(self, store):
        self.store = store

    def apply(self, operation, batch, now):
        return self.store.submit(operation, batch, now).result()


# ----------------------------------------------------------------------------- tally settle


def test_tally_settle_settles_every_merchant_and_its_report_reconciles(tmp_path, monkeypatch):
    from engine.client import BlockingClient
    from tally import local_server, settle as settle_module
    monkeypatch.setattr(settle_module, "PAGE", 1_000)  # three pages of merchants
    secrets = {1: bytes(32)}
    clock = [T0]
    merchants = list(range(1_000, 1_000 + 2_500))
    with core.open(str(tmp_path / "store"), accounts_max=4_096, transfers_hot_max=1 << 16, merchants_max=4_096,
                   secret=SECRET, clock_ns=lambda: clock[0]) as store:
        accounts = ACCOUNTS + [{"id": m, "ledger": CNY, "code": 2} for m in merchants]
        for first in range(0, len(accounts), 2_000):
            assert not store.create_accounts(core.accounts_from_dicts(accounts[first:first + 2_000])).any()
        fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                           "amount": 10**12, "ledger": CNY, "code": 4}])
        assert not store.create_transfers(fund).any()
        rows = [{"merchant_id": m, "fee_account_id": FEES, "fee_bps": m % 100, "settlement_account_id": BANK,
                 "ledger": CNY} for m in merchants]
        assert not store.set_merchants(core.records_from_dicts(rows, core.MERCHANT_DTYPE)).any()
        sold = {}
        for k, merchant in enumerate(merchants[:1_200]):
            sell(_StoreAsMachine(store), merchant, b"S", 1_000 + k, T0 + k)
            sold[merchant] = 1_000 + k - (1_000 + k) * (merchant % 100) // 10_000
        clock[0] = T0 + DAY
        with local_server.serving_in_thread(store, secrets) as port, \
                BlockingClient("127.0.0.1", port, client_id=1, secret=secrets[1]) as client:
            report = settle_module.settle(client, DAY0)
            again = settle_module.settle(client, DAY0)
        assert report["reconciled"] and report["merchants"] == len(merchants)
        by_merchant = {row["merchant_id"]: row for row in settle_module.report_rows(report)}
        assert {m: by_merchant[m]["net"] for m in sold} == sold
        assert all(by_merchant[m]["net"] == 0 and by_merchant[m]["transfer_id"] == 0 for m in merchants[1_200:])
        total = report["totals"][str(CNY)]
        assert total["net"] == total["moved"] == sum(sold.values()) == balance(store, BANK)
        assert {row["result"] for row in settle_module.report_rows(again)} == {"exists"}
        assert again["totals"] == report["totals"] and again["reconciled"]
        csv_path, json_path = settle_module.write(report, str(tmp_path / "report"))
        with open(csv_path) as file:
            lines = list(csv.DictReader(file))
        assert len(lines) == len(merchants) + 1 and lines[-1]["merchant_id"] == "total"
        assert int(lines[-1]["net"]) == sum(sold.values())
        with open(json_path) as file:
            assert json.load(file)["totals"] == report["totals"]

