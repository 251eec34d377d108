"""The `tally` command: one entry point, with sub-commands that call the parts.

    tally serve [--config FILE] [--data DIR] [--host H] [--port N] [--tls-cert F --tls-key F]
    tally bench core [--json] [--accounts N] [--transfers N] [--data DIR]
    tally bench e2e [--json] [--seconds N] [--connections N]
    tally info [--data DIR]

Arguments are parsed here and nothing else is done here: each sub-command calls into its part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from engine.config import DEFAULT_CONFIG_PATH, DEFAULT_DATA_DIR


def _serve(args) -> int:
    import msgspec

    from engine import config as config_module, serve

    try:
        config = config_module.load_or_create(args.config, data=args.data, port=args.port)
    except config_module.ConfigError as error:
        print(f"tally serve: {error}", file=sys.stderr)
        return 2
    overrides = {name: value for name, value in (("data", args.data), ("host", args.host), ("port", args.port),
                                                 ("tls_cert", args.tls_cert), ("tls_key", args.tls_key))
                 if value is not None}
    if args.prefault:
        overrides["prefault"] = True
    config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, **overrides))
    problem = config_module.check(config)
    if problem:
        print(f"tally serve: {problem}", file=sys.stderr)
        return 2
    return serve.run(config)


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


def _bench_e2e(args) -> int:
    from tally import bench_e2e

    progress = None if args.json else (lambda message: print(f"· {message}", file=sys.stderr))
    result = bench_e2e.run(seconds=args.seconds, connections=args.connections, depth=args.depth,
                           accounts=args.accounts, half_load_request_events=args.half_load_request_events,
                           checkpoint_interval_events=args.checkpoint_interval, data_dir=args.data, progress=progress)
    print(json.dumps(result) if args.json else bench_e2e.summary(result))
    return 0 if result["failed_events"] == 0 and result["server_exit_code"] == 0 else 1


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
        if stats.checkpoint_error:
            print(f"checkpoint       not used ({stats.checkpoint_error}): the whole log was replayed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description="Tally payment engine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (stops gracefully on SIGINT/SIGTERM)")
    serve.add_argument("--config", default=DEFAULT_CONFIG_PATH,
                       help=f"configuration file, created with a fresh client secret if missing (default {DEFAULT_CONFIG_PATH})")
    serve.add_argument("--data", help=f"data directory (default: the config's, {DEFAULT_DATA_DIR})")
    serve.add_argument("--host", help="address to listen on (default: the config's, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: the config's, 7420; 0 picks a free one)")
    serve.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    serve.add_argument("--prefault", action="store_true", help="touch all ledger memory at start")
    serve.set_defaults(run=_serve)

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

    e2e = bench_kinds.add_parser(
        "e2e", help="server process + client process on loopback: transfers/s, latency, ratio to the core")
    e2e.add_argument("--json", action="store_true", help="print one JSON object")
    e2e.add_argument("--seconds", type=float, default=5.0, help="length of the peak and half-load runs (default 5)")
    e2e.add_argument("--connections", type=int, default=4, help="client connections (default 4)")
    e2e.add_argument("--depth", type=int, default=2, help="requests in flight per connection at peak (default 2)")
    e2e.add_argument("--accounts", type=int, default=1_000_000, help="accounts (default 1,000,000)")
    e2e.add_argument("--half-load-request-events", type=int, default=256,
                     help="payments per request in the half-load run (default 256)")
    e2e.add_argument("--checkpoint-interval", type=int, default=1024 * 8190,
                     help="the server's checkpoint interval in events (default 8,386,560, as tally serve)")
    e2e.add_argument("--data", default=None, help="directory for the stores (default: a temporary one, removed)")
    e2e.set_defaults(run=_bench_e2e)

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
