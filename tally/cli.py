"""The `tally` command: one entry point, with sub-commands that call the parts.

    tally bench core [--json] [--accounts N] [--transfers N] [--data DIR]
    tally info [--data DIR]

Arguments are parsed here and nothing else is done here: each sub-command calls into its part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_DATA_DIR = os.path.join(".tally", "data")


def _bench_core(args) -> int:
    from tally import bench_core

    progress = None if args.json else (lambda message: print(f"· {message}", file=sys.stderr))
    result = bench_core.run(accounts=args.accounts, transfers=args.transfers, batch_size=args.batch_size,
                            data_dir=args.data, progress=progress)
    if args.json:
        print(json.dumps(result))
    else:
        print(bench_core.summary(result))
    return 0


def _info(args) -> int:
    import core

    with core.open(args.data) as store:
        stats = store.recovery
        print(f"data directory   {os.path.abspath(args.data)}")
        print(f"batches logged   {store.sequence:,}")
        print(f"accounts         {store.ledger.account_count:,} of {store.ledger.accounts_max:,}")
        print(f"transfers        {store.ledger.transfer_count:,} of {store.ledger.transfers_max:,}")
        print(f"recovered in     {stats.checkpoint_load_s + stats.replay_s:.3f} s "
              f"(checkpoint at batch {stats.checkpoint_sequence:,}, {stats.replayed_batches:,} batches replayed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description="Tally payment engine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser("bench", help="run a benchmark")
    bench_kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")
    core_bench = bench_kinds.add_parser(
        "core", help="in-process core: durable and in-memory transfers/s, recovery, LMDB ceiling")
    core_bench.add_argument("--json", action="store_true", help="print one JSON object")
    core_bench.add_argument("--accounts", type=int, default=1_000_000, help="accounts (default 1,000,000)")
    core_bench.add_argument("--transfers", type=int, default=4_000_000, help="payments (default 4,000,000)")
    core_bench.add_argument("--batch-size", type=int, default=8190, help="events per batch (default 8,190)")
    core_bench.add_argument("--data", default=None,
                            help="directory for the LMDB stores (default: a temporary directory, removed after)")
    core_bench.set_defaults(run=_bench_core)

    info = commands.add_parser("info", help="open a data directory (recovering it) and describe it")
    info.add_argument("--data", default=DEFAULT_DATA_DIR, help=f"data directory (default {DEFAULT_DATA_DIR})")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    # NumPy's BLAS threads spin while idle and would steal a core from the ledger.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
