"""Capacities and limits (core/limits.pyx, docs/storage.md "Capacities and limits"): a store
reopened with larger capacities recovers every answer its log holds (a limit reached before
stays reached in the replay), then logs the raised limits; set_limits is checked and logged;
checkpoints keep the limits; replay-log reproduces a store whose capacities grew."""

import numpy as np

import core
from core import Result, replay_log
from core.machine import Machine
from core.operations import Operation
from core.order_keys import order_creates
from core.state_hash import state_hash

S = 10**9
T0 = 1_700_000_000 * S
CNY = 156


def _orders(prefix, count):
    return order_creates([{"merchant_id": 7, "out_trade_no": b"%s%d" % (prefix, n), "amount": 1, "ledger": CNY}
                          for n in range(count)])


def _limits(**values):
    event = np.zeros(1, dtype=core.records.LIMITS_DTYPE)
    for name, value in values.items():
        event[name] = value
    return event


def test_a_store_reopened_with_larger_capacities_replays_its_answers_then_raises_its_limits(tmp_path):
    path = str(tmp_path / "s")
    with core.open(path, accounts_max=4, transfers_hot_max=1 << 14, orders_max=8) as store:  # 4 open orders
        accounts = core.accounts_from_dicts([{"id": n, "ledger": CNY, "code": 2} for n in (5, 6, 7, 8)])
        assert not store.create_accounts(accounts, T0).any()
        assert list(store.create_accounts(core.accounts_from_dicts([{"id": 9, "ledger": CNY, "code": 2}]), T0)) == [
            Result.accounts_limit_reached]
        assert list(store.create_orders(_orders(b"A", 4), T0 + S)["result"]) == [0] * 4
        assert list(store.create_orders(_orders(b"B", 2), T0 + 2 * S)["result"]) == [Result.orders_limit_reached] * 2
        before = store.state_hash()
    # Reopened larger, with no checkpoint: the log replays with the limits then in force.
    with core.open(path, accounts_max=64, orders_max=64) as store:
        assert store.recovery.replayed_batches == 4
        assert store.machine.limits.current()["orders_open"] == 64 - 32 and store.machine.limits.current()["accounts"] == 64
        entries = list(store.log_entries())
        assert entries[-1].operation == Operation.set_limits  # logged after the recovery
        assert list(store.create_orders(_orders(b"B", 2), T0 + 3 * S)["result"]) == [0, 0]
        assert not store.create_accounts(core.accounts_from_dicts([{"id": 9, "ledger": CNY, "code": 2}]), T0 + 3 * S).any()
        after = store.state_hash()
        assert after != before
    with core.open(path) as store:  # and again: the raise is in the log, nothing more is logged
        assert store.state_hash() == after and len(list(store.log_entries())) == 7
    result = replay_log.run(path, str(tmp_path / "replayed"))
    assert result["equal"] and result["batches"] == 7


def test_limits_survive_a_checkpoint_and_set_limits_is_checked_and_logged(tmp_path):
    path = str(tmp_path / "s")
    with core.open(path, accounts_max=8, transfers_hot_max=1 << 14, orders_max=16) as store:
        assert list(store.submit(Operation.set_limits, _limits(accounts=2, orders_open=3)).result()) == [0]
        assert list(store.submit(Operation.set_limits, _limits(accounts=9)).result()) == [Result.limit_out_of_range]
        assert list(store.submit(Operation.set_limits, _limits(orders_open=16)).result()) == [Result.limit_out_of_range]
        bad = _limits(pending=1)
        bad["flags"] = 1
        assert list(store.submit(Operation.set_limits, bad).result()) == [Result.reserved_flag]
        accounts = core.accounts_from_dicts([{"id": n, "ledger": CNY, "code": 2} for n in (7, 8, 9)])
        assert list(store.create_accounts(accounts, T0)) == [0, 0, Result.accounts_limit_reached]
        store.checkpoint()
        assert store.machine.limits.current()["accounts"] == 2
    with core.open(path) as store:
        assert store.recovery.replayed_batches == 0  # from the checkpoint: its limits
        assert store.machine.limits.current()["accounts"] == 2 and store.machine.limits.current()["orders_open"] == 3
        assert list(store.create_orders(_orders(b"C", 4), T0 + S)["result"]) == [0, 0, 0, Result.orders_limit_reached]
    assert replay_log.run(path, str(tmp_path / "replayed"))["equal"]


def test_a_machine_starts_at_its_capacities():
    machine = Machine(accounts_max=8, transfers_hot_max=64, orders_max=8, codes_max=8, secret=bytes(32))
    current, capacities = machine.limits.current(), machine.limits.capacities()
    # A policy limit (a packet's total at most) starts at its default, not at its ceiling.
    assert current.pop("envelope_total") == core.constants.ENVELOPE_TOTAL_MAX_DEFAULT
    assert capacities.pop("envelope_total") == core.constants.ENVELOPE_TOTAL_LIMIT_MAX
    assert current == capacities == {
        "accounts": 8, "pending": machine.ledger.pending_max, "merchants": machine.merchants.merchants_max,
        "orders_open": 4, "codes_live": 4, "envelopes_open": machine.envelopes.open_max,
        "stocks_open": machine.coupons.open_max}
    assert list(machine.apply(Operation.set_limits, _limits(codes_live=1), T0)) == [0]
    other = Machine(accounts_max=8, transfers_hot_max=64, orders_max=8, codes_max=8, secret=bytes(32))
    assert list(other.apply(Operation.set_limits, _limits(codes_live=4), T0)) == [0]
    # Limits are configuration, outside the state hash (as capacities are).
    assert machine.codes.live_max == 1 and other.codes.live_max == 4
    assert state_hash(machine.ledger, parts=machine.hash_parts()) == state_hash(other.ledger, parts=other.hash_parts())
