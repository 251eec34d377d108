"""`tally bench loadgen`: how many requests per second the load generator itself can offer.

Method: a sink server (``loadgen.sink``: answers every request "ok" without applying it) runs
in its own process; the load generator runs ``tally load run --mode closed`` against it with
the default workload mix (payments, P2P, holds, refunds generated as for a real server:
setup, ids, Zipf merchants, follow-ups), one process, one event loop thread, on
``connections`` connections × ``depth`` frames of 8,190 requests in flight.

Reported: ``requests_per_s`` (requests answered within the run's seconds, over those seconds) and
``requests_per_cpu_s`` (the same requests over the load generator's own CPU seconds: what one
core fully given to it sustains — the two cores of a small machine are shared with the sink).
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import secrets
import sys
import time

from loadgen import runner
from loadgen.runner import FRAME_EVENTS_MAX
from loadgen.sink import run_process
from loadgen.workload import Mix, Population, Workload


def run(seconds: float = 5.0, connections: int = 2, depth: int = 2, workers: int = 1) -> dict:
    secret = secrets.token_bytes(32)
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    sink = context.Process(target=run_process, args=(secret, ports), daemon=True)
    sink.start()
    try:
        port = ports.get(timeout=60)
        workload = Workload(seconds=seconds, population=Population(users=100_000, merchants=1_000),
                            mix=Mix(payment=80, p2p=10, hold=5, refund=5))
        cpu_before_s = time.process_time()
        wall_before_s = time.perf_counter()
        report = runner.run(runner.Target("127.0.0.1", port, 1, secret), workload,
                            runner.Options(mode="closed", connections=connections, depth=depth, workers=workers))
        wall_s = time.perf_counter() - wall_before_s
        cpu_s = time.process_time() - cpu_before_s
    finally:
        sink.terminate()
        sink.join()
    answered = report["requests"]["answered"]
    result = {
        "requests_per_s": round(report["achieved_per_s"]),   # answered within the run's seconds
        "kinds": {kind: sum(codes.values()) for kind, codes in report["kinds"].items()},
        "latency_us": report["latency_us"],
        "config": {"seconds": seconds, "connections": connections, "depth": depth, "frame_events": FRAME_EVENTS_MAX,
                   "workers": workers},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
    }
    if workers == 1:
        # The whole run's CPU (setup included) against the run's requests: a lower bound per core.
        result["loadgen_cpu_s"] = round(cpu_s, 2)
        result["wall_s"] = round(wall_s, 2)
        result["requests_per_cpu_s"] = round(answered / cpu_s)
    return result


def summary(result: dict) -> str:
    c = result["config"]
    lines = [f"tally bench loadgen: closed loop against a sink, {c['connections']} connections x {c['depth']} "
             f"frames of {c['frame_events']:,}, {c['seconds']:g} s, {c['workers']} worker(s)",
             f"  offered and answered  {result['requests_per_s']:>12,} requests/s"]
    if "requests_per_cpu_s" in result:
        lines.append(f"  per load-generator CPU second {result['requests_per_cpu_s']:>12,} requests "
                     f"({result['loadgen_cpu_s']} CPU s over {result['wall_s']} s of wall time, setup included)")
    return "\n".join(lines)
