"""The state machine alone: what a wallet's tier costs its payments (docs/products.md "Wallet
limits and real-name tiers (built)").

    .venv/bin/python benchmarks/tiers_core.py [--accounts 1000000] [--batches 40] [--rounds 3]

Method: two ``core.machine.Machine`` of ``accounts`` accounts each (``tally.bench_core``'s
population: wallets topped up, Zipf-skewed merchants), prefaulted; in one, every wallet is given
tier 2 with limits far above the run's (so every payment is checked and counted, none refused),
in the other none is. The same payment stream (``tally.bench_e2e.PaymentStream``: uniform
payers) then goes into each, ``batches`` batches of 8,190 at a time, the machines taking turns
``rounds`` times (a drift of the machine shows as spread, not as a difference). Run it with
nothing else on the machine; two machines of a million accounts take about 4 GiB.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import core
from core import constants
from core.machine import Machine
from core.operations import Operation
from tally import bench_core, bench_e2e

NOW_NS = 10**18


def _machine(accounts: int, tiered: bool) -> Machine:
    batch = constants.BATCH_EVENTS_MAX
    machine = Machine(accounts_max=accounts, transfers_hot_max=1 << 22, orders_max=1 << 14, codes_max=1 << 14,
                      secret=bytes(32))
    machine.prefault()
    setup, topups = bench_core.build_setup_batches(accounts, batch)
    for records in setup:
        machine.apply(Operation.create_accounts, records, NOW_NS)
    for records in topups:
        machine.apply(Operation.create_transfers, records, NOW_NS)
    if tiered:
        wallets, _, _ = bench_core._population(accounts)
        limits = np.zeros(1, dtype=core.TIER_LIMITS_DTYPE)
        limits["ledger"], limits["tier"] = core.Currency.CNY, 2
        for name in ("payment_limit", "daily_limit", "yearly_limit", "balance_limit"):
            limits[name] = 1 << 62
        if machine.apply(Operation.set_tier_limits, limits, NOW_NS).any():
            raise RuntimeError("set_tier_limits refused")
        tiers = np.zeros(wallets, dtype=core.WALLET_TIER_DTYPE)
        tiers["account_id_lo"] = np.arange(1, wallets + 1, dtype=np.uint64)
        tiers["ledger"], tiers["tier"] = core.Currency.CNY, 2
        for first in range(0, wallets, batch):
            if machine.apply(Operation.set_wallet_tiers, tiers[first:first + batch], NOW_NS).any():
                raise RuntimeError("set_wallet_tiers refused")
    return machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batch = constants.BATCH_EVENTS_MAX
    machines = {"untiered": _machine(args.accounts, False), "tiered": _machine(args.accounts, True)}
    streams = {name: bench_e2e.PaymentStream(args.accounts, first_id=1 << 61) for name in machines}
    rates: dict[str, list[float]] = {name: [] for name in machines}
    for _ in range(args.rounds):
        for name, machine in machines.items():
            batches = [streams[name].batch(batch) for _ in range(args.batches)]
            started = time.perf_counter()
            for records in batches:
                results = machine.apply(Operation.create_transfers, records, NOW_NS)
            rates[name].append(args.batches * batch / (time.perf_counter() - started))
            if (results == 0).mean() < 0.9:
                raise RuntimeError(f"{name}: most payments refused: {np.unique(results, return_counts=True)}")
    for name, values in rates.items():
        ratio = "" if name == "untiered" else f"   ratio {np.mean(values) / np.mean(rates['untiered']):.3f}"
        print(f"{name:9} {', '.join(f'{v / 1e6:.2f}' for v in values)} M/s{ratio}")


if __name__ == "__main__":
    main()
