"""The `tally` command: one entry point, with sub-commands that call the parts.

    tally serve [--config FILE] [--data DIR] [--host H] [--port N] [--tls-cert F --tls-key F]
    tally bench core [--json] [--accounts N] [--transfers N] [--data DIR]
    tally bench e2e [--json] [--seconds N] [--connections N]
    tally bench products [--json] [--seconds N] [--connections N] [--report DIR]
    tally bench loadgen [--json] [--seconds N]
    tally bench latency [--json] [--seconds N] [--rates R,R,R] [--connections N]
    tally load run [WORKLOAD] [--rate N] [--seconds N] [--mode open|closed] [--record F] [--report DIR]
    tally load replay TRACE [--speed X] [--connections N] [--report DIR]
    tally settle [--window W] [--out DIR] [--json]
    tally replay-log --data DIR --into NEWDIR
    tally demo [--seconds N] [--rate N]
    tally info [--data DIR]
    tally metrics [--config FILE] [--host H] [--port N]

Arguments are parsed here and nothing else is done here: each sub-command calls into its part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from core import constants as core_constants
from engine.config import DEFAULT_CONFIG_PATH, DEFAULT_DATA_DIR


def _serve(args) -> int:
    import msgspec

    from engine import config as config_module, serve

    try:
        config = config_module.load_or_create(args.config)  # --data/--port override it below, unsaved
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
    try:
        return serve.run(config)
    except serve.ServeError as error:
        print(f"tally serve: {error}", file=sys.stderr)
        return 2


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


def _bench_products(args) -> int:
    from tally import bench_products

    progress = None if args.json else (lambda message: print(f"· {message}", file=sys.stderr))
    result = bench_products.run(seconds=args.seconds, connections=args.connections, depth=args.depth,
                                accounts=args.accounts, data_dir=args.data, progress=progress, report_dir=args.report)
    print(json.dumps(result) if args.json else bench_products.summary(result))
    return 0 if result["failed_events"] == 0 and result["server_exit_code"] == 0 else 1


def _closed_loop_arguments(parser, seconds_help: str) -> None:
    """The options of the closed-loop end-to-end benchmarks (e2e, products)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=5.0, help=seconds_help)
    parser.add_argument("--connections", type=int, default=4, help="client connections (default 4)")
    parser.add_argument("--depth", type=int, default=2, help="requests in flight per connection at peak (default 2)")
    parser.add_argument("--accounts", type=int, default=1_000_000, help="accounts (default 1,000,000)")


def _target(args):
    """The server and client identity of a load command: --host/--port/--client-id over the config's."""
    from engine import config as config_module
    from loadgen.runner import Target

    if not os.path.exists(args.config):
        raise config_module.ConfigError(f"{args.config}: no such file (tally serve writes it on first start; "
                                        "or give the server's --config)")
    config = config_module.load(args.config)
    clients = {client.id: client.secret_bytes for client in config.clients}
    if not clients:
        raise config_module.ConfigError(f"{args.config}: no [[clients]] to authenticate as")
    client_id = args.client_id if args.client_id is not None else config.clients[0].id
    if client_id not in clients:
        raise config_module.ConfigError(f"{args.config}: no client {client_id}")
    return Target(args.host or config.server.host, args.port if args.port is not None else config.server.port,
                  client_id, clients[client_id])


def _workload(args):
    import msgspec

    from loadgen import workload as workload_module

    workload = workload_module.load(args.workload) if args.workload else workload_module.Workload()
    if args.seconds is not None:
        workload = msgspec.structs.replace(workload, seconds=args.seconds)
    if args.rate is not None:
        workload = msgspec.structs.replace(workload, rate=msgspec.structs.replace(workload.rate, per_s=args.rate))
    population = {name: value for name, value in (("users", args.users), ("merchants", args.merchants))
                  if value is not None}
    if population:
        workload = msgspec.structs.replace(
            workload, population=msgspec.structs.replace(workload.population, **population))
    problem = workload.check()
    if problem:
        raise workload_module.WorkloadError(problem)
    return workload


def _finish_report(report: dict, args, extra_summary: str = "") -> None:
    from loadgen import report as report_module

    if args.report:
        json_path, html_path = report_module.write(report, args.report)
        report["paths"] = {"json": json_path, "html": html_path}
    if args.json:
        print(json.dumps(report))
    else:
        print(report_module.summary(report))
        if extra_summary:
            print(extra_summary)


def _mark_server_events(report: dict, args) -> None:
    """Checkpoints of the server (its DATA/events.jsonl: --server-events, or the config's data
    directory when it is on this host) as marks on the report's time axis."""
    from engine import config as config_module
    from engine.serve import EVENTS_FILE
    from loadgen import report as report_module

    path = args.server_events
    if path is None:
        path = os.path.join(config_module.load(args.config).server.data, EVENTS_FILE)
        if not os.path.exists(path):
            return
    marked = report_module.add_server_events(report, path)
    report["notes"].append(f"{marked} server event(s) (checkpoints, slow flushes) marked, from {path}")


def _load_run(args) -> int:
    from engine.config import ConfigError
    from loadgen import runner
    from loadgen.workload import WorkloadError

    try:
        workload, target = _workload(args), _target(args)
        options = runner.Options(mode=args.mode, connections=args.connections, depth=args.depth,
                                 frame_events=args.frame_events, workers=args.workers, seed=args.seed,
                                 record=args.record, progress=not (args.json or args.quiet),
                                 command=" ".join(["tally"] + sys.argv[1:]))
        report = runner.run(target, workload, options)
    except (WorkloadError, ConfigError, runner.LoadError) as error:
        print(f"tally load run: {error}", file=sys.stderr)
        return 2
    if args.record:
        report["notes"].append(f"trace recorded in {args.record}")
    _mark_server_events(report, args)
    _finish_report(report, args)
    return 0 if report["requests"]["failed_to_send"] == 0 else 1


def _load_replay(args) -> int:
    from engine.config import ConfigError
    from loadgen import replay, runner

    try:
        report = replay.run(_target(args), args.trace, speed=args.speed, connections=args.connections,
                            progress=not (args.json or args.quiet), allow_truncated=args.allow_truncated,
                            command=" ".join(["tally"] + sys.argv[1:]))
    except (ConfigError, runner.LoadError) as error:
        print(f"tally load replay: {error}", file=sys.stderr)
        return 2
    _finish_report(report, args, replay.comparison_summary(report))
    return 0 if report["comparison"]["equal"] else 1


def _replay_log(args) -> int:
    import core
    from core import replay_log

    progress = None if args.json else (lambda done, total: print(f"\r· replayed {done:,} of {total:,} batches",
                                                                  end="", file=sys.stderr))
    try:
        result = replay_log.run(args.data, args.into, progress=progress)
    except (replay_log.ReplayLogError, core.StoreError) as error:
        print(f"\ntally replay-log: {error}", file=sys.stderr)
        return 2
    if progress is not None:
        print(file=sys.stderr)
    print(json.dumps(result) if args.json else replay_log.summary(result))
    return 0 if result["equal"] else 1


def _settle(args) -> int:
    from engine.client import BlockingClient
    from tally import settle

    target = _target(args)
    window = args.window if args.window is not None else settle.yesterday()
    with BlockingClient(target.host, target.port, client_id=target.client_id, secret=target.secret) as client:
        report = settle.settle(client, window)
    csv_path, json_path = settle.write(report, args.out)
    print(json.dumps({key: report[key] for key in ("window", "merchants", "totals", "reconciled", "seconds",
                                                   "merchants_per_s")}) if args.json else settle.summary(report))
    print(f"tally: wrote {csv_path} and {json_path}", file=sys.stderr)
    return 0 if report["reconciled"] else 1


def _demo(args) -> int:
    from tally import demo

    return demo.run(directory=args.dir, seconds=args.seconds, rate_per_s=args.rate, users=args.users)


def _bench_latency(args) -> int:
    from tally import bench_latency

    try:
        rates = tuple(int(rate) for rate in args.rates.split(","))
    except ValueError:
        rates = ()
    if not rates or min(rates) < 1:
        print(f"tally bench latency: --rates must be positive integers separated by commas, not {args.rates!r}",
              file=sys.stderr)
        return 2
    progress = lambda message: print(f"· {message}", file=sys.stderr)  # noqa: E731 - minutes: always say
    result = bench_latency.run(rates, seconds=args.seconds, connections=args.connections, data_dir=args.data,
                               progress=progress)
    print(json.dumps(result) if args.json else bench_latency.summary(result))
    return 0 if all(r["server_exit_code"] == 0 for r in result["rates"]) else 1


def _bench_soak(args) -> int:
    from tally import bench_soak

    progress = lambda message: print(f"· {message}", file=sys.stderr)  # noqa: E731 - long run: always say
    result = bench_soak.run(transfers=args.transfers, accounts=args.accounts, sample=args.sample,
                            data_dir=args.data, random_ids=args.random_ids, progress=progress, keep=args.keep)
    if args.json:
        print(json.dumps(result))
    else:
        print(bench_soak.summary(result))
    return 0 if result["lookups_ok"] and result["retry_exists_ok"] and not result["failed_events"] else 1


def _bench_loadgen(args) -> int:
    from tally import bench_loadgen

    result = bench_loadgen.run(seconds=args.seconds, connections=args.connections, depth=args.depth,
                               workers=args.workers)
    print(json.dumps(result) if args.json else bench_loadgen.summary(result))
    return 0


def _data_directory_problem(path: str) -> str | None:
    """Why ``path`` is not an existing Tally data directory, or None. Commands that only read or
    tidy a store check first: core.open would make an empty store at a mistyped path."""
    if not os.path.isdir(path):
        return f"{path}: no such data directory"
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        return f"{path}: not a Tally data directory (no data.mdb)"
    return None


def _log_archive(args) -> int:
    import core

    problem = _data_directory_problem(args.data)
    if problem:
        print(f"tally log archive: {problem}", file=sys.stderr)
        return 2
    try:
        with core.open(args.data) as store:
            result = store.archive_log(into=args.into)
    except core.StoreError as error:
        print(f"tally log archive: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"archived entries up to {result['archived_through']:,} ({result['entries']:,} now, "
              f"{len(result['segments'])} segment(s), {result['segment_bytes'] / (1 << 20):,.1f} MiB) "
              f"in {result['directory']}; the log holds {result['log_first']:,}..{result['log_last']:,}")
    return 0


def _metrics(args) -> int:
    import urllib.request

    from engine import config as config_module, metrics

    host, port = args.host, args.port
    if host is None or port is None:
        try:
            settings = config_module.load(args.config).server
        except (OSError, config_module.ConfigError) as error:
            print(f"tally metrics: {error} (or give --host and --port)", file=sys.stderr)
            return 2
        host = settings.metrics_host if host is None else host
        port = settings.metrics_port if port is None else port
    if not port:
        print("tally metrics: the server's metrics_port is 0 (off): set it in the config's [server] table",
              file=sys.stderr)
        return 2
    try:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    except OSError as error:
        print(f"tally metrics: cannot read http://{host}:{port}/metrics: {error}", file=sys.stderr)
        return 2
    print(metrics.table(text))
    return 0


def _info(args) -> int:
    import msgspec

    import core

    problem = _data_directory_problem(args.data)
    if problem:
        print(f"tally info: {problem}", file=sys.stderr)
        return 2
    try:
        store = core.open(args.data)
    except core.StoreError as error:
        print(f"tally info: {error}", file=sys.stderr)
        return 2
    with store:
        stats = store.recovery
        tiers = store.stats()
        if args.json:
            print(json.dumps({"sequence": store.sequence, "recovery": msgspec.structs.asdict(stats)} | tiers))
            return 0
        mib = 1 << 20
        print(f"data directory   {os.path.abspath(args.data)}")
        print(f"batches logged   {store.sequence:,}")
        print(f"accounts         {tiers['accounts']:,} of {tiers['accounts_max']:,}")
        print(f"transfers        {tiers['transfers']:,}: {tiers['transfers_hot']:,} in memory (hot window of "
              f"{tiers['transfers_hot_max']:,}), {tiers['transfers_cold']:,} in the cold tier "
              f"({tiers['cold_epochs']:,} epochs of {tiers['cold_epoch_transfers']:,})")
        print(f"pending table    {tiers['pending_entries']:,} of {tiers['pending_max']:,}")
        print(f"id filter        {tiers['filter_bytes'] / mib:,.0f} MiB over {tiers['filter_ids']:,} cold ids; "
              f"since start: {tiers['filter_positives']:,} positives, {tiers['filter_false_positives']:,} false")
        print(f"cold lookups     {tiers['cold_lookups']:,} ({tiers['cold_lookups_missed']:,} found nothing)")
        print("memory (MiB)     " + ", ".join(f"{name} {size / mib:,.0f}" for name, size in tiers["memory_bytes"].items()))
        print("disk (MiB)       " + ", ".join(f"{name} {size / mib:,.1f}" for name, size in tiers["disk_bytes"].items()))
        print(f"log              entries {tiers['log_first']:,}..{store.sequence:,}; "
              + (f"1..{tiers['archived_through']:,} archived in {tiers['archive_directory']}"
                 if tiers["archived_through"] else "nothing archived (tally log archive)"))
        print(f"recovered in     {stats.checkpoint_load_s + stats.replay_s:.3f} s "
              f"(checkpoint at batch {stats.checkpoint_sequence:,}, {stats.replayed_batches:,} batches replayed)")
        if stats.checkpoint_error:
            print(f"checkpoint       not used ({stats.checkpoint_error}): the whole log was replayed")
    return 0


def _command(subparsers, name: str, *, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's name
    """A sub-command whose --help opens with what it does (its line in the parent's list)."""
    return subparsers.add_parser(name, help=help, description=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description="Tally payment engine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(commands, "serve", help="run the server (stops gracefully on SIGINT/SIGTERM)")
    serve.add_argument("--config", default=DEFAULT_CONFIG_PATH,
                       help=f"configuration file, created with a fresh client secret if missing (default {DEFAULT_CONFIG_PATH})")
    serve.add_argument("--data", help=f"data directory (default: the config's, {DEFAULT_DATA_DIR})")
    serve.add_argument("--host", help="address to listen on (default: the config's, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: the config's, 7420; 0 picks a free one)")
    serve.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    serve.add_argument("--prefault", action="store_true", help="touch all ledger memory at start")
    serve.set_defaults(run=_serve)

    bench = _command(commands, "bench", help="run a benchmark")
    bench_kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")
    core_bench = _command(
        bench_kinds, "core",
        help="in-process core: durable and in-memory transfers/s, recovery, LMDB ceiling")
    core_bench.add_argument("--json", action="store_true", help="print one JSON object")
    core_bench.add_argument("--accounts", type=int, default=1_000_000, help="accounts (default 1,000,000)")
    core_bench.add_argument("--transfers", type=int, default=4_000_000, help="payments (default 4,000,000)")
    core_bench.add_argument("--batch-size", type=int, default=8190, help="events per batch (default 8,190)")
    core_bench.add_argument("--data", default=None,
                            help="directory for the LMDB stores (default: a temporary directory, removed after)")
    core_bench.set_defaults(run=_bench_core)

    e2e = _command(
        bench_kinds, "e2e",
        help="server process + client process on loopback: transfers/s, latency, ratio to the core")
    _closed_loop_arguments(e2e, "length of the peak and half-load runs (default 5)")
    e2e.add_argument("--half-load-request-events", type=int, default=256,
                     help="payments per request in the half-load run (default 256)")
    e2e.add_argument("--checkpoint-interval", type=int, default=1024 * 8190,
                     help="the server's checkpoint interval in events (default 8,386,560, as tally serve)")
    e2e.add_argument("--data", default=None, help="directory for the stores (default: a temporary one, removed)")
    e2e.set_defaults(run=_bench_e2e)

    products = _command(
        bench_kinds, "products",
        help="the payment products end to end, beside plain transfers in the same run (qr_pay_per_s, ratio)")
    _closed_loop_arguments(products, "length of each phase (default 5)")
    products.add_argument("--data", default=None, help="directory for the server's data (default: a temporary one)")
    products.add_argument("--report", metavar="DIR", default=None,
                          help="also claim 100,000 packets of 10 (untimed) and write the red envelope shares' "
                               "distribution by claim position there (envelope_shares.svg, .json, .csv) with "
                               "the result (products.json)")
    products.set_defaults(run=_bench_products)

    loadgen_bench = _command(
        bench_kinds, "loadgen",
        help="the load generator's own ceiling: closed loop against a sink that answers at once")
    loadgen_bench.add_argument("--json", action="store_true", help="print one JSON object")
    loadgen_bench.add_argument("--seconds", type=float, default=5.0, help="length of the run (default 5)")
    loadgen_bench.add_argument("--connections", type=int, default=2, help="connections (default 2)")
    loadgen_bench.add_argument("--depth", type=int, default=2, help="frames in flight per connection (default 2)")
    loadgen_bench.add_argument("--workers", type=int, default=1, help="load generator processes (default 1)")
    loadgen_bench.set_defaults(run=_bench_loadgen)

    latency = _command(
        bench_kinds, "latency",
        help="a fresh default server per rate, the default mix open loop: p50/p99, worst second, server CPU")
    latency.add_argument("--json", action="store_true", help="print one JSON object")
    latency.add_argument("--seconds", type=float, default=60.0, help="length of each rate's run (default 60)")
    latency.add_argument("--rates", default="10000,50000,200000",
                         help="requests per second, comma-separated (default 10000,50000,200000)")
    latency.add_argument("--connections", type=int, default=64, help="client connections (default 64)")
    latency.add_argument("--data", default=None, help="directory for the servers' data (default: a temporary one)")
    latency.set_defaults(run=_bench_latency)

    soak = _command(
        bench_kinds, "soak",
        help="hundreds of millions of payments through one store: bounded memory, rates, recovery, cold lookups")
    soak.add_argument("--json", action="store_true", help="print one JSON object")
    soak.add_argument("--transfers", type=int, default=200_000_000, help="payments (default 200,000,000)")
    soak.add_argument("--accounts", type=int, default=1_000_000, help="accounts (default 1,000,000)")
    soak.add_argument("--sample", type=int, default=100_000, help="payments looked up and re-sent (default 100,000)")
    soak.add_argument("--random-ids", action="store_true", help="scrambled payment ids (default: increasing)")
    soak.add_argument("--data", default=None, help="directory for the store (default: a temporary one)")
    soak.add_argument("--keep", action="store_true", help="keep the store afterwards (for tally replay-log)")
    soak.set_defaults(run=_bench_soak)

    load = _command(commands, "load", help="run load against a server, or replay a recorded trace")
    load_kinds = load.add_subparsers(dest="kind", required=True, metavar="KIND")
    run = _command(load_kinds, "run", help="open-loop (scheduled) or closed-loop load from a workload file")
    run.add_argument("workload", nargs="?", help="workload file, TOML or JSON (loadgen/workload.py; default: "
                                                 "100,000 users, 1,000 merchants, payments at 10,000/s for 10 s)")
    run.add_argument("--rate", type=float, help="requests/s (the workload's rate.per_s)")
    run.add_argument("--seconds", type=float, help="length of the run (the workload's seconds)")
    run.add_argument("--users", type=int, help="wallets of the population")
    run.add_argument("--merchants", type=int, help="merchants of the population")
    run.add_argument("--mode", choices=("open", "closed"), default="open",
                     help="open: requests at their scheduled times, latency from then (default); "
                          "closed: --depth frames in flight per connection, as fast as answered")
    run.add_argument("--connections", type=int, default=4, help="connections (default 4)")
    run.add_argument("--server-events", metavar="FILE",
                     help="the server's events (DATA/events.jsonl, default: from the config's data directory "
                          "if it is on this host): its checkpoints are marked on the report's time axis")
    run.add_argument("--depth", type=int, default=2, help="closed loop: frames in flight per connection (default 2)")
    run.add_argument("--frame-events", type=int, default=core_constants.BATCH_EVENTS_MAX,
                     help="closed loop: requests per frame (default 8,190)")
    run.add_argument("--workers", type=int, default=1, help="load generator processes (default 1)")
    run.add_argument("--seed", type=int, default=1, help="random seed of the requests (default 1)")
    run.add_argument("--record", metavar="FILE", help="write the trace of every request (docs/trace-format.md)")
    run.set_defaults(run=_load_run)
    replay = _command(load_kinds, "replay", help="re-send a recorded trace at its times and compare result codes")
    replay.add_argument("trace", help="a trace written by tally load run --record")
    replay.add_argument("--speed", type=float, default=1.0, help="time scale: 2.0 replays twice as fast (default 1)")
    replay.add_argument("--connections", type=int, default=1,
                        help="connections (default 1: the order of one connection reproduces results exactly)")
    replay.add_argument("--allow-truncated", action="store_true",
                        help="replay what a killed run's .partial trace holds")
    replay.set_defaults(run=_load_replay)
    settle = _command(commands, "settle", help="settle every merchant's closed windows (T+1) and write the report")
    settle.add_argument("--window", type=int,
                        help="settle through this window (engine days since 1970, UTC; default: yesterday's)")
    settle.add_argument("--out", default=".", help="directory of settlement-WINDOW.csv and .json (default .)")
    settle.set_defaults(run=_settle)
    for sub in (run, replay, settle):
        sub.add_argument("--config", default=DEFAULT_CONFIG_PATH,
                         help=f"the server's config file, for its address and a client secret (default {DEFAULT_CONFIG_PATH})")
        sub.add_argument("--host", help="server address (default: the config's)")
        sub.add_argument("--port", type=int, help="server port (default: the config's)")
        sub.add_argument("--client-id", type=int, help="client id to authenticate as (default: the config's first)")
        sub.add_argument("--json", action="store_true", help="print the report as one JSON object")
    for sub in (run, replay):
        sub.add_argument("--report", metavar="DIR", help="write report.json and report.html here")
        sub.add_argument("--quiet", action="store_true", help="no progress line")

    replay_log = _command(
        commands, "replay-log",
        help="re-apply a data directory's log into a fresh store and compare the state hashes")
    replay_log.add_argument("--data", required=True, help="the data directory whose log is replayed (not in use)")
    replay_log.add_argument("--into", required=True, help="a new (empty or missing) directory for the replayed store")
    replay_log.add_argument("--json", action="store_true", help="print one JSON object")
    replay_log.set_defaults(run=_replay_log)

    demo = _command(commands, "demo", help="start a local server, run a short realistic load, report, stop")
    demo.add_argument("--dir", default=os.path.join(".tally", "demo"),
                      help="the demo's directory: server data, config, trace and report (default .tally/demo; "
                           "its server data is started afresh each time)")
    demo.add_argument("--seconds", type=float, default=10.0, help="length of the load (default 10)")
    demo.add_argument("--rate", type=float, default=20_000.0, help="requests/s, open loop (default 20,000)")
    demo.add_argument("--users", type=int, default=50_000, help="wallets (default 50,000)")
    demo.set_defaults(run=_demo)

    log = _command(commands, "log", help="manage the log of processed batches")
    log_kinds = log.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    archive = _command(
        log_kinds, "archive",
        help="move log entries covered by a checkpoint into segment files (docs/tiering.md)")
    archive.add_argument("--data", default=DEFAULT_DATA_DIR, help=f"data directory, not in use (default {DEFAULT_DATA_DIR})")
    archive.add_argument("--into", help="archive directory (default DATA/archive, or the one set before); "
                                        "segments archived elsewhere before are moved here")
    archive.add_argument("--json", action="store_true", help="print one JSON object")
    archive.set_defaults(run=_log_archive)

    info = _command(commands, "info", help="open a data directory (recovering it) and describe it")
    info.add_argument("--data", default=DEFAULT_DATA_DIR, help=f"data directory (default {DEFAULT_DATA_DIR})")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_info)

    metrics = _command(commands, "metrics",
                       help="a running server's latency per operation and stage (its metrics_port must be set)")
    metrics.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"the server's config (default {DEFAULT_CONFIG_PATH})")
    metrics.add_argument("--host", default=None, help="metrics host (default: the config's metrics_host)")
    metrics.add_argument("--port", type=int, default=None, help="metrics port (default: the config's metrics_port)")
    metrics.set_defaults(run=_metrics)
    return parser


def main(argv: list[str] | None = None) -> int:
    # NumPy's BLAS threads spin while idle and would steal a core from the ledger.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        # A run stopped by hand: what it recorded stays in FILE.partial; servers it started were stopped.
        print("\ntally: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
