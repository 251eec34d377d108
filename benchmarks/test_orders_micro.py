"""Micro benchmarks of the orders in the core (no durability, no wire), beside plain transfers.

Run by hand (deselected in the default test run):

    .venv/bin/python -m pytest benchmarks/test_orders_micro.py -m bench --benchmark-columns=min,median,max,ops

Each round applies one full batch (8,190 events): ``ops`` × 8,190 is events/s. A QR payment
is two events (create, then pay); ``test_orders_against_transfers`` prints the ratio of QR
payments/s to transfers/s measured in the same run (the machines are noisy: ratios only).
"""

import time

import numpy as np
import pytest

import core
from core.machine import Machine
from core.operations import Operation
from core.order_keys import order_id, token_of

pytestmark = pytest.mark.bench

SECRET = bytes(32)
WALLETS = 100_000
MERCHANTS = 1_000
BATCH = core.BATCH_EVENTS_MAX
ROUNDS = 20
T0 = 1_700_000_000 * 10**9


def _machine():
    machine = Machine(accounts_max=WALLETS + MERCHANTS + 1, transfers_hot_max=4 * BATCH * (3 * ROUNDS + 4),
                      orders_max=BATCH * (ROUNDS + 2), secret=SECRET)
    accounts = np.zeros(WALLETS + MERCHANTS + 1, dtype=core.ACCOUNT_DTYPE)
    accounts["id_lo"] = np.arange(1, accounts.shape[0] + 1)
    accounts["ledger"] = core.Currency.CNY
    accounts["code"] = 1
    for first in range(0, accounts.shape[0], BATCH):
        assert not machine.apply(Operation.create_accounts, accounts[first:first + BATCH], T0).any()
    return machine


def _orders(first, count, rng):
    merchants = WALLETS + 2 + rng.integers(0, MERCHANTS, count)
    creates = np.zeros(count, dtype=core.ORDER_CREATE_DTYPE)
    pays = np.zeros(count, dtype=core.ORDER_PAY_DTYPE)
    for k in range(count):
        number = b"%d" % (first + k)
        oid = order_id(int(merchants[k]), number)
        creates[k]["id_lo"], creates[k]["id_hi"] = oid & (2**64 - 1), oid >> 64
        creates[k]["out_trade_no"][:len(number)] = np.frombuffer(number, dtype=np.uint8)
        pays[k]["order_id_lo"], pays[k]["order_id_hi"] = oid & (2**64 - 1), oid >> 64
        pays[k]["token"] = np.frombuffer(token_of(SECRET, oid), dtype=np.uint8)
    creates["merchant_id_lo"] = merchants
    creates["amount"] = pays["amount"] = rng.integers(1, 10_000, count)
    creates["ledger"] = pays["ledger"] = core.Currency.CNY
    pays["payer_id_lo"] = 2 + rng.integers(0, WALLETS, count)  # funding account 1 is no payer
    return creates, pays


def _transfers(first, count, rng):
    batch = np.zeros(count, dtype=core.TRANSFER_DTYPE)
    batch["id_lo"] = np.arange(first, first + count) + (1 << 40)
    batch["debit_account_id_lo"] = 2 + rng.integers(0, WALLETS, count)
    batch["credit_account_id_lo"] = WALLETS + 2 + rng.integers(0, MERCHANTS, count)
    batch["amount"] = rng.integers(1, 10_000, count)
    batch["ledger"] = core.Currency.CNY
    batch["code"] = core.TransferCode.payment
    return batch


def test_orders_against_transfers(capsys):
    rng = np.random.default_rng(7)
    machine = _machine()
    machine.ledger.prefault()  # steady state: the ring and the tables' pages are in use already
    machine.orders.prefault()
    orders = [_orders(k * BATCH, BATCH, rng) for k in range(ROUNDS)]
    transfers = [_transfers(k * BATCH, BATCH, rng) for k in range(ROUNDS)]
    timings = {"create_orders": 0.0, "pay_orders": 0.0, "create_transfers": 0.0}
    for k in range(ROUNDS):  # interleaved: the machine's noise falls on all three alike
        started = time.perf_counter()
        replies = machine.apply(Operation.create_orders, orders[k][0], T0 + k)
        timings["create_orders"] += time.perf_counter() - started
        started = time.perf_counter()
        results = machine.apply(Operation.pay_orders, orders[k][1], T0 + k)
        timings["pay_orders"] += time.perf_counter() - started
        started = time.perf_counter()
        moved = machine.apply(Operation.create_transfers, transfers[k], T0 + k)
        timings["create_transfers"] += time.perf_counter() - started
        assert not replies["result"].any() and not results.any() and not moved.any()
    rates = {name: ROUNDS * BATCH / seconds for name, seconds in timings.items()}
    qr_payments_per_s = ROUNDS * BATCH / (timings["create_orders"] + timings["pay_orders"])
    with capsys.disabled():
        print(f"\ncore, {ROUNDS} batches of {BATCH}: " + ", ".join(f"{name} {rate:,.0f}/s" for name, rate in rates.items())
              + f"; QR payments (create + pay) {qr_payments_per_s:,.0f}/s, "
              f"ratio to transfers {qr_payments_per_s / rates['create_transfers']:.2f}")
