"""`tally bench latency`: what a payment waits under ordinary load, at several rates.

Method (issue 13's bar; every rate in one run of the command, one after another):

1. For each rate a **fresh server** (``tally serve --prefault``, the default configuration, a new
   data directory) is started on loopback; this process is the load generator (one process, one
   event loop, as ``tally load run``).
2. The **default workload** (``loadgen.workload.Workload()``: its population and mix of
   payments, P2P transfers, holds and refunds) runs open loop at the rate for ``seconds`` over
   ``connections`` connections: each request is sent at its scheduled time whether or not
   earlier ones were answered, and its latency is measured from that time, so a stall is charged
   to every request it delays (no coordinated omission).
3. Per rate: ``p50_ms``, ``p99_ms``, ``p999_ms`` over the run; ``worst_second_p99_ms``, the
   highest p99 of any second of the run; ``send_lag_p99_ms``, how late the generator sent
   (if it is high, the figures describe the generator, not the server);
   ``server_cpu_us_per_request``, the server process's CPU time (user + system, from
   ``/proc/PID/stat``, sampled every 0.1 s) between the run's first and last second, over the
   requests answered in it; ``checkpoints``, those the server wrote during the run;
   ``host_steal_pct``, the share of the machine's CPU time the hypervisor gave to others during
   the run (``/proc/stat``): on a shared VM, seconds of high steal are seconds of high latency
   that no change to Tally explains, so read the figures beside it;
   ``server_p50_ms``/``server_p99_ms``/``server_p999_ms`` and ``server_stage_p99_ms``, the
   server's own histograms (``engine.metrics``, read from its metrics endpoint at the end: from a
   frame's arrival to its reply written, per stage queue/apply/commit/reply; they include the
   setup's top-up requests, about a hundred): the part of the latency that is the server's,
   without the load generator's send lag and reply handling.

Both processes share the machine's cores, as they would on a small host.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import socket
import tempfile
import threading
import time
import urllib.request

import msgspec

from engine import metrics, serve
from loadgen import runner
from loadgen.workload import Workload
from tally import local_server

RATES_PER_S = (10_000, 50_000, 200_000)
CPU_SAMPLE_S = 0.1
_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S  # utime, stime (fields 14, 15)


def host_cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the whole machine so far (Linux ``/proc/stat``)."""
    with open("/proc/stat") as file:
        values = [int(value) for value in file.readline().split()[1:]]
    return values[7], sum(values[:8])  # user nice system idle iowait irq softirq steal


class _CpuSampler:
    """(unix time, CPU seconds) of a process every ``CPU_SAMPLE_S``, on a thread of its own."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.time(), process_cpu_s(self.pid)))
            except OSError:
                return
            if self._stop.wait(CPU_SAMPLE_S):
                return

    def cpu_s_between(self, start_unix_s: float, end_unix_s: float) -> float:
        """CPU seconds used between two moments (the samples nearest inside them)."""
        inside = [cpu for at, cpu in self.samples if start_unix_s <= at <= end_unix_s]
        return inside[-1] - inside[0] if len(inside) >= 2 else float("nan")


def run_rate(rate_per_s: int, *, seconds: float, connections: int, base_dir: str, workload: Workload | None = None,
             prefault: bool = True) -> dict:
    """One rate against one fresh server."""
    secret = secrets.token_bytes(32)
    metrics_port = _free_port()
    process, port = local_server.start(base_dir, secret=secret, prefault=prefault, metrics_port=metrics_port)
    server_side = {}
    try:
        workload = msgspec.structs.replace(workload or Workload(), seconds=seconds)
        workload = msgspec.structs.replace(workload, rate=msgspec.structs.replace(workload.rate, per_s=rate_per_s))
        with _CpuSampler(process.pid) as sampler:
            steal_before, total_before = host_cpu_ticks()
            report = runner.run(runner.Target("127.0.0.1", port, 1, secret), workload,
                                runner.Options(mode="open", connections=connections))
            steal_after, total_after = host_cpu_ticks()
        server_side = _server_latency(metrics_port)
    finally:
        exit_code, _ = local_server.stop_and_read(process)
    start = report["started_unix_s"]
    answered = report["requests"]["answered"]
    cpu_s = sampler.cpu_s_between(start, start + report["duration_s"])
    seconds_p99 = [value for value in report["timeline"]["p99_us"] if value is not None]
    latency, lag = report["latency_us"], report["send_lag_us"]
    return {
        "rate_per_s": rate_per_s,
        "achieved_per_s": report["achieved_per_s"],
        "answered": answered,
        "result_codes": report["result_codes"],
        "p50_ms": latency["p50"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "p999_ms": latency["p99.9"] / 1000,
        "max_ms": latency["max"] / 1000,
        "worst_second_p99_ms": max(seconds_p99) / 1000 if seconds_p99 else None,
        "seconds_p99_over_25_ms": sum(value > 25_000 for value in seconds_p99),
        "send_lag_p99_ms": lag["p99"] / 1000,
        **server_side,
        "server_cpu_us_per_request": round(cpu_s / answered * 1e6, 2) if answered else None,
        "server_exit_code": exit_code,
        "host_steal_pct": round(100 * (steal_after - steal_before) / max(1, total_after - total_before), 1),
        "checkpoints": _checkpoints_between(os.path.join(base_dir, "server"), start, start + report["duration_s"]),
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_latency(metrics_port: int) -> dict:
    """The server's own view of ``create_transfers`` (``engine.metrics``: from a frame's arrival
    to its reply written, and each stage's p99), read from its metrics endpoint: what the server
    adds, without the load generator's send lag and reply handling."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    _, quantiles = metrics.parse(text)
    total = quantiles.get(("create_transfers", "total"), {})
    out = {f"server_{name}_ms": round(total[label] * 1e3, 3) for name, label in
           (("p50", "0.5"), ("p99", "0.99"), ("p999", "0.999")) if label in total}
    out["server_stage_p99_ms"] = {stage: round(quantiles[("create_transfers", stage)]["0.99"] * 1e3, 3)
                                  for stage in metrics.STAGES[:-1] if ("create_transfers", stage) in quantiles}
    return out


def _checkpoints_between(data_dir: str, start_unix_s: float, end_unix_s: float) -> int:
    """Checkpoints the server began in the run (its ``events.jsonl``)."""
    try:
        with open(os.path.join(data_dir, serve.EVENTS_FILE), "rb") as file:
            events = [msgspec.json.decode(line) for line in file if line.strip()]
    except OSError:
        return 0
    return sum(event.get("kind") == "checkpoint" and start_unix_s <= event.get("started_unix_s", 0) <= end_unix_s
               for event in events)


def run(rates: tuple[int, ...] = RATES_PER_S, *, seconds: float = 60.0, connections: int = 64,
        data_dir: str | None = None, progress=None, workload: Workload | None = None, prefault: bool = True) -> dict:
    """Every rate in turn (``workload`` and ``prefault``: smaller set-ups, for tests)."""
    base = data_dir or tempfile.mkdtemp(prefix="tally-bench-latency-")
    results = []
    try:
        for rate in rates:
            if progress:
                progress(f"{rate:,} requests/s for {seconds:g} s over {connections} connections (fresh server)")
            directory = os.path.join(base, f"rate-{rate}")
            results.append(run_rate(rate, seconds=seconds, connections=connections, base_dir=directory,
                                    workload=workload, prefault=prefault))
            shutil.rmtree(directory, ignore_errors=True)  # a 200,000/s minute is gigabytes
    finally:
        if data_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return {"seconds": seconds, "connections": connections, "machine": platform.machine(),
            "cpus": os.cpu_count(), "rates": results}


def summary(result: dict) -> str:
    lines = [f"tally bench latency: {result['seconds']:g} s per rate, {result['connections']} connections, "
             "fresh default server (prefault), default mix, open loop",
             f"{'rate/s':>9} {'achieved':>10} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'worst s p99':>11} "
             f"{'send lag p99':>12} {'server p50/p99 ms':>17} {'server CPU us/req':>17} {'steal %':>7}"]
    for r in result["rates"]:
        lines.append(f"{r['rate_per_s']:>9,} {r['achieved_per_s']:>10,.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
                     f"{r['p999_ms']:>7.2f} {r['worst_second_p99_ms'] or 0:>11.2f} {r['send_lag_p99_ms']:>12.2f} "
                     f"{r.get('server_p50_ms', 0):>8.2f}/{r.get('server_p99_ms', 0):<8.2f} "
                     f"{r['server_cpu_us_per_request'] or 0:>17.2f} {r['host_steal_pct']:>7.1f}")
    return "\n".join(lines)
