"""Merchants' terms and the fee a payment takes (docs/products.md "Merchants and fees"):
``set_merchants``' rules and codes, the fee leg in the payment's chain (exact to the minor unit,
all or nothing), and the terms through the store's checkpoint, recovery and replay."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import core
from core import Result
from core import replay_log
from core.machine import Machine
from core.operations import Operation
from core.order_keys import order_creates, order_id, order_pays, token_of

SECRET = bytes(range(32))
T0 = 1_700_000_000 * 10**9
S = 10**9
CNY, USD = 156, 840
FUNDING, WALLET, MERCHANT, FEES, BANK, USD_FEES, CLOSED_FEES, OTHER = 1, 2, 7, 20, 30, 21, 22, 8
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": OTHER, "ledger": CNY, "code": 2},
    {"id": FEES, "ledger": CNY, "code": 6},
    {"id": BANK, "ledger": CNY, "code": 7},
    {"id": USD_FEES, "ledger": USD, "code": 6},
    {"id": CLOSED_FEES, "ledger": CNY, "code": 6, "flags": 8},
]


def machine(merchants_max=8):
    m = Machine(accounts_max=32, transfers_hot_max=4096, pending_max=64, orders_max=64, merchants_max=merchants_max,
                secret=SECRET)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                       "amount": 2**62, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    return m


def terms(**fields):
    return dict({"merchant_id": MERCHANT, "fee_account_id": FEES, "settlement_account_id": BANK, "fee_bps": 60,
                 "ledger": CNY}, **fields)


def set_terms(m, *rows, now=T0 + S):
    return [Result(code) for code in m.apply(Operation.set_merchants,
                                             core.records_from_dicts(rows, core.MERCHANT_DTYPE), now)]


def sell_and_pay(m, amount, number=b"A-1", now=T0 + 2 * S):
    created = m.apply(Operation.create_orders, order_creates([{"merchant_id": MERCHANT, "out_trade_no": number,
                                                               "amount": amount, "ledger": CNY}]), now)
    assert created["result"][0] == Result.ok
    oid = order_id(MERCHANT, number)
    paid = m.apply(Operation.pay_orders, order_pays([{"order_id": oid, "payer_id": WALLET, "amount": amount,
                                                      "ledger": CNY, "token": token_of(SECRET, oid)}]), now)
    return Result(paid[0]), oid


def balance(m, account):
    row = m.ledger.lookup_accounts([account])[0]
    return int(row["credits_posted"]) - int(row["debits_posted"])


@pytest.mark.parametrize("fields,code", [
    ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ({"reserved": 1}, Result.reserved_field),
    ({"flags": 2}, Result.reserved_flag),  # (1 is MERCHANT_MEMBERSHIP)
    ({"merchant_id": 0}, Result.id_must_not_be_zero),
    ({"ledger": 0}, Result.ledger_must_not_be_zero),
    ({"fee_bps": 10_001}, Result.fee_rate_out_of_range),
    ({"merchant_id": 999}, Result.merchant_not_found),
    ({"fee_account_id": 999}, Result.fee_account_not_found),
    ({"fee_account_id": MERCHANT}, Result.accounts_must_be_different),
    ({"settlement_account_id": 999}, Result.settlement_account_not_found),
    ({"settlement_account_id": MERCHANT}, Result.accounts_must_be_different),
    ({"fee_account_id": USD_FEES}, Result.currency_mismatch),
    ({"ledger": USD}, Result.currency_mismatch),
])
def test_set_refusals_change_nothing(fields, code):
    m = machine()
    assert set_terms(m, terms(**fields)) == [code]
    assert m.merchants.merchant_count == 0 and len(m.lookup_merchants([MERCHANT])) == 0


def test_set_retry_update_and_limit():
    m = machine(merchants_max=1)
    assert set_terms(m, terms()) == [Result.ok]
    first = core.to_dicts(m.lookup_merchants([MERCHANT]))[0]
    assert (first["fee_bps"], first["fee_account_id"], first["settlement_account_id"], first["timestamp"]) == (
        60, FEES, BANK, T0 + S)
    assert set_terms(m, terms(), now=T0 + 2 * S) == [Result.exists]  # a retry: nothing changes
    assert np.array_equal(m.lookup_merchants([MERCHANT]), core.records_from_dicts([first], core.MERCHANT_DTYPE))
    assert set_terms(m, terms(fee_bps=30), now=T0 + 3 * S) == [Result.ok]  # new terms, from now
    changed = core.to_dicts(m.lookup_merchants([MERCHANT]))[0]
    assert changed["fee_bps"] == 30 and changed["timestamp"] > first["timestamp"]
    assert set_terms(m, terms(merchant_id=OTHER)) == [Result.merchants_limit_reached]
    assert set_terms(m, terms(settlement_account_id=0), now=T0 + 4 * S) == [Result.ok]  # no bank account yet


def test_a_payment_takes_the_fee_in_the_same_chain():
    m = machine()
    assert set_terms(m, terms(fee_bps=60)) == [Result.ok]
    result, oid = sell_and_pay(m, 12_345)
    fee = 12_345 * 60 // 10_000  # 74
    assert result == Result.ok and fee == 74
    assert (balance(m, MERCHANT), balance(m, FEES), balance(m, WALLET)) == (12_345 - fee, fee, 2**62 - 12_345)
    assert core.to_dicts(m.lookup_orders([oid]))[0]["fee"] == fee
    legs = core.to_dicts(m.ledger.lookup_transfers([core.orders.leg_id(oid, Operation.pay_orders, k) for k in (0, 1)]))
    assert [(leg["debit_account_id"], leg["credit_account_id"], leg["amount"], leg["code"]) for leg in legs] == [
        (WALLET, MERCHANT, 12_345, core.TransferCode.order_payment), (MERCHANT, FEES, fee, core.TransferCode.order_fee)]
    assert legs[1]["timestamp"] == legs[0]["timestamp"] + 1 and legs[1]["user_data_128"] == oid


def test_no_terms_or_a_fee_below_one_minor_unit_is_one_leg():
    m = machine()
    result, oid = sell_and_pay(m, 100)
    assert result == Result.ok and balance(m, MERCHANT) == 100
    assert set_terms(m, terms(fee_bps=60)) == [Result.ok]
    result, oid = sell_and_pay(m, 166, b"A-2")  # 166 * 0.6 % = 0.996: no fee
    assert result == Result.ok and balance(m, FEES) == 0
    assert len(m.ledger.lookup_transfers([core.orders.leg_id(oid, Operation.pay_orders, 1)])) == 0


def test_a_failing_fee_leg_undoes_the_payment():
    m = machine()
    assert set_terms(m, terms(fee_account_id=CLOSED_FEES)) == [Result.ok]
    before = m.ledger.accounts()
    result, oid = sell_and_pay(m, 10_000)
    assert result == Result.credit_account_closed
    assert np.array_equal(m.ledger.accounts(), before)
    assert core.to_dicts(m.lookup_orders([oid]))[0]["state"] == core.OrderState.NOTPAY
    assert len(m.ledger.lookup_transfers([core.orders.leg_id(oid, Operation.pay_orders, 0)])) == 0


@settings(max_examples=200, deadline=None)
@given(amounts=st.lists(st.integers(1, 2**58), min_size=1, max_size=6), fee_bps=st.integers(0, 10_000))
def test_fees_are_exact_and_money_is_conserved(amounts, fee_bps):
    m = machine()
    assert set_terms(m, terms(fee_bps=fee_bps)) == [Result.ok]
    taken = 0
    for k, amount in enumerate(amounts):
        result, oid = sell_and_pay(m, amount, b"O-%d" % k, now=T0 + (2 + k) * S)
        assert result == Result.ok
        fee = amount * fee_bps // 10_000  # Python's exact integers against the core's u64 arithmetic
        assert core.to_dicts(m.lookup_orders([oid]))[0]["fee"] == fee
        taken += fee
    assert balance(m, FEES) == taken
    accounts = m.ledger.accounts()
    assert int(accounts["debits_posted"].sum()) == int(accounts["credits_posted"].sum())


def test_terms_survive_checkpoint_recovery_and_replay(tmp_path):
    source = str(tmp_path / "source")
    with core.open(source, accounts_max=32, transfers_hot_max=4096, pending_max=64, orders_max=64) as store:
        store.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0)
        assert list(store.set_merchants(core.records_from_dicts([terms()], core.MERCHANT_DTYPE), T0 + S)) == [0]
        store.checkpoint()
        assert list(store.set_merchants(core.records_from_dicts([terms(fee_bps=10)], core.MERCHANT_DTYPE),
                                        T0 + 2 * S)) == [0]
        live_hash, rows = store.state_hash(), store.lookup_merchants([MERCHANT])
    with core.open(source) as store:
        assert store.recovery.checkpoint_sequence == 2 and store.recovery.replayed_batches == 1
        assert store.state_hash() == live_hash and np.array_equal(store.lookup_merchants([MERCHANT]), rows)
        assert store.stats()["merchants"] == 1
    assert replay_log.run(source, str(tmp_path / "replayed"))["equal"]
