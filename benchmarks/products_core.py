"""The state machine alone at a realistic size: transfers against QR payments (create + pay)
and payment codes (issue + charge), no log, no wire.

    .venv/bin/python benchmarks/products_core.py [--accounts 1000000] [--batches 60] [--rounds 2]

Method: one ``core.machine.Machine`` of ``accounts`` accounts (wallets topped up, Zipf-skewed
merchants: ``tally.bench_core``'s population), prefaulted, its order table large enough to hold
every order of the run; then, ``rounds`` times in turn, ``batches`` batches of 8,190 of each
kind, timed per kind (the kinds alternate, so a drift of the machine shows as spread, not as a
difference). QR payments and code payments are counted as payments (two events each), as
``tally bench products`` does end to end, so the ratios to transfers compare the same things.
The prefault's time is printed too (with transparent huge pages it is mostly the kernel's
zeroing). Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from core import constants
from core.machine import Machine
from core.operations import Operation
from tally import bench_core, bench_e2e, bench_products

NOW_NS = 10**18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    batch = constants.BATCH_EVENTS_MAX
    payments = args.batches * args.rounds * batch
    machine = Machine(accounts_max=args.accounts, transfers_hot_max=1 << 22, orders_max=max(1 << 20, 4 * payments),
                      codes_max=max(1 << 17, 2 * batch * 4), secret=bytes(32))
    started = time.perf_counter()
    touched = machine.prefault()
    print(f"prefault {touched / 2**30:.2f} GiB in {time.perf_counter() - started:.2f} s")
    accounts, topups = bench_core.build_setup_batches(args.accounts, batch)
    for records in accounts:
        machine.apply(Operation.create_accounts, records, NOW_NS)
    for records in topups:
        machine.apply(Operation.create_transfers, records, NOW_NS)
    transfers, orders = bench_e2e.PaymentStream(args.accounts, first_id=1 << 61), bench_products.OrderStream(args.accounts)
    codes = bench_products.CodeStream(args.accounts, in_flight=1)

    def transfer():
        machine.apply(Operation.create_transfers, transfers.batch(batch), NOW_NS)

    def qr_payment():
        creates, rows = orders.creates(batch)
        replies = machine.apply(Operation.create_orders, creates, NOW_NS)
        machine.apply(Operation.pay_orders, orders.pays(creates, rows, replies), NOW_NS)

    def code_payment():
        replies = machine.apply(Operation.issue_codes, codes.issues(batch), NOW_NS)
        machine.apply(Operation.charge_codes, orders.charges(replies["code"][replies["result"] == 0]), NOW_NS)

    rates: dict[str, list[float]] = {"transfers": [], "qr": [], "codes": []}
    for _ in range(args.rounds):
        for name, one in (("transfers", transfer), ("qr", qr_payment), ("codes", code_payment)):
            started = time.perf_counter()
            for _ in range(args.batches):
                one()
            rates[name].append(args.batches * batch / (time.perf_counter() - started))
    for name, values in rates.items():
        ratio = "" if name == "transfers" else f"   ratio {np.mean(values) / np.mean(rates['transfers']):.3f}"
        print(f"{name:10} {', '.join(f'{v / 1e6:.2f}' for v in values)} M/s{ratio}")


if __name__ == "__main__":
    main()
