"""`tally bench e2e`: transfers per second through the wire, against the in-process core, and latency.

Method (every figure from one run on one machine, so that the ratios mean something):

1. **core**: the in-process durable store (``core.Store.submit``, pipelined, synchronous LMDB
   commits) runs ``core_transfers`` payments over the same population as below:
   ``core_transfers_per_s``. Nothing else runs meanwhile.
2. A **server process** (``tally serve``, uvloop, ``prefault``) is started on loopback over a fresh
   data directory, and this process becomes the **client process**: ``connections`` connections
   of the client library, accounts and wallet top-ups created over the wire.
3. **peak** (closed loop): on every connection ``depth`` requests of ``BATCH_EVENTS_MAX``
   payments are kept in flight (uniform payers, Zipf-skewed merchants, fresh ids) for
   ``seconds`` after one second of warm-up: ``transfers_per_s`` counts payments answered in the
   window; ``p50_ms``/``p99_ms``/``p999_ms`` are request latencies, send to reply.
   ``ratio_to_core = transfers_per_s / core_transfers_per_s``.
4. **half load** (open loop), ``SETTLE_S`` after the peak (whose checkpoint then runs in the
   background): requests of ``half_load_request_events`` payments are scheduled at
   a fixed interval adding up to half the measured peak, round-robin over the connections, each
   sent at its scheduled time whether or not earlier ones were answered; latency is measured
   from the scheduled time, so a stall is charged to every request it delays (no coordinated
   omission): ``half_load_p99_ms``.

Both processes share the machine's cores; the server's and the client's CPU seconds during the
peak are reported, so the split is visible.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

import core
from core import constants
from tally import bench_core, local_server

NS_PER_S = 1_000_000_000
WARMUP_S = 1.0
PAYMENT_POOL = 1 << 20          # pre-drawn payers, payees and amounts, sliced per request
SETTLE_S = 5.0                  # pause between the peak and the half-load run


class PaymentStream:
    """Fresh payment batches: unique ids, uniform payers, Zipf(1.1) merchant payees.

    Payers, payees and amounts come from a pre-drawn pool; only the ids are written per batch,
    so that generating load costs the client process little of the CPU it shares with the server.
    """

    def __init__(self, accounts: int, first_id: int, seed: int = 7):
        wallets, merchants, _ = bench_core._population(accounts)
        rng = np.random.default_rng(seed)
        self._pool = np.zeros(PAYMENT_POOL, dtype=core.TRANSFER_DTYPE)
        self._pool["debit_account_id_lo"] = rng.integers(1, wallets + 1, PAYMENT_POOL, dtype=np.uint64)
        self._pool["credit_account_id_lo"] = wallets + 1 + bench_core._zipf_indices(rng, PAYMENT_POOL, merchants)
        self._pool["amount"] = rng.integers(1, 10_001, PAYMENT_POOL, dtype=np.uint64)
        self._pool["ledger"] = core.Currency.CNY
        self._pool["code"] = core.TransferCode.payment
        self._offset = 0
        self._next_id = first_id

    def batch(self, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """``count`` payments with fresh ids, in ``out`` if given (reused: no page faults), else new."""
        if self._offset + count > PAYMENT_POOL:
            self._offset = 0
        batch = np.empty(count, dtype=core.TRANSFER_DTYPE) if out is None else out[:count]
        # As raw bytes: a structured-array copy goes field by field, several times slower.
        batch.view(np.uint8)[:] = self._pool[self._offset:self._offset + count].view(np.uint8)
        self._offset += count
        batch["id_lo"] = np.arange(self._next_id, self._next_id + count, dtype=np.uint64)
        self._next_id += count
        return batch


def _core_rate(base_dir: str, accounts: int, transfers: int) -> float:
    """Durable in-process payments/s (bench_core's pipelined path) over the benchmark population."""
    account_batches, topup_batches = bench_core.build_setup_batches(accounts, constants.BATCH_EVENTS_MAX)
    payment_batches = bench_core.build_payment_batches(accounts, transfers, constants.BATCH_EVENTS_MAX)
    wallets, _, _ = bench_core._population(accounts)
    store_dir = os.path.join(base_dir, "core")
    store = core.open(store_dir, accounts_max=accounts,
                      checkpoint_interval_events=1 << 40, prefault=True)
    try:
        clock = bench_core._Clock()
        bench_core._apply_all(store, account_batches, topup_batches, clock)
        _, failed, seconds = bench_core._run_payments_pipelined(store, payment_batches, clock)
    finally:
        store.close()
        shutil.rmtree(store_dir, ignore_errors=True)
    if failed:
        raise RuntimeError(f"{failed} payments failed in the core phase")
    return transfers / seconds


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _setup(clients, accounts: int) -> None:
    account_batches, topup_batches = bench_core.build_setup_batches(accounts, constants.BATCH_EVENTS_MAX)
    for operation, batches in ((clients[0].create_accounts, account_batches),
                               (clients[0].create_transfers, topup_batches)):
        for start in range(0, len(batches), 8):
            replies = await asyncio.gather(*(operation(batch) for batch in batches[start:start + 8]))
            if any(r.any() for r in replies):
                raise RuntimeError("setup over the wire failed")


async def _closed_loop(clients, stream: PaymentStream, depth: int, seconds: float, server_pid: int) -> dict:
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start, stop = start + WARMUP_S, start + WARMUP_S + seconds
    latencies_ns: list[int] = []
    counted = failed = 0
    cpu = {}

    async def worker(client):
        nonlocal counted, failed
        buffer = np.zeros(constants.BATCH_EVENTS_MAX, dtype=core.TRANSFER_DTYPE)  # reused: one request at a time
        while loop.time() < stop:
            batch = stream.batch(constants.BATCH_EVENTS_MAX, out=buffer)
            sent = time.perf_counter_ns()
            results = await client.create_transfers(batch)
            now = loop.time()
            if window_start <= now <= stop:
                latencies_ns.append(time.perf_counter_ns() - sent)
                counted += len(results)
                failed += int(np.count_nonzero(results))

    async def cpu_sampler():
        await asyncio.sleep(WARMUP_S)
        cpu["server"], cpu["client"] = _cpu_seconds(server_pid), time.process_time()
        await asyncio.sleep(seconds)
        cpu["server"] = _cpu_seconds(server_pid) - cpu["server"]
        cpu["client"] = time.process_time() - cpu["client"]

    await asyncio.gather(cpu_sampler(), *(worker(client) for client in clients for _ in range(depth)))
    return {"transfers": counted, "failed": failed, "latencies_ns": np.array(latencies_ns),
            "server_cpu_s": cpu["server"], "client_cpu_s": cpu["client"]}


async def _open_loop(clients, stream: PaymentStream, rate_per_s: float, request_events: int,
                     seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    interval_s = request_events / rate_per_s
    total = int(seconds / interval_s)
    latencies_ns = np.zeros(total, dtype=np.int64)
    failed = 0
    tasks = []

    async def one(index: int, scheduled_ns: int, batch):
        nonlocal failed
        results = await clients[index % len(clients)].create_transfers(batch)
        latencies_ns[index] = time.perf_counter_ns() - scheduled_ns
        failed += int(np.count_nonzero(results))

    start_ns = time.perf_counter_ns() + 10_000_000
    for index in range(total):
        scheduled_ns = start_ns + int(index * interval_s * NS_PER_S)
        delay_ns = scheduled_ns - time.perf_counter_ns()
        if delay_ns > 0:
            await asyncio.sleep(delay_ns / NS_PER_S)
        tasks.append(loop.create_task(one(index, scheduled_ns, stream.batch(request_events))))
    await asyncio.gather(*tasks)
    elapsed_s = (time.perf_counter_ns() - start_ns) / NS_PER_S
    return {"latencies_ns": latencies_ns, "failed": failed, "requests": total,
            "achieved_per_s": total * request_events / elapsed_s}


async def _drive(port: int, secret: bytes, *, accounts: int, connections: int, depth: int, seconds: float,
                 half_load_request_events: int, server_pid: int, settle_s: float, say) -> dict:
    from engine.client import Client

    clients = [await Client.connect("127.0.0.1", port, client_id=1, secret=secret) for _ in range(connections)]
    try:
        say(f"creating {accounts:,} accounts and their top-ups over the wire")
        await _setup(clients, accounts)
        stream = PaymentStream(accounts, first_id=1 << 61)
        say(f"peak: {connections} connections x {depth} requests of {constants.BATCH_EVENTS_MAX:,} in flight, "
            f"{seconds:g} s")
        peak = await _closed_loop(clients, stream, depth, seconds, server_pid)
        peak_rate = peak["transfers"] / seconds
        # The peak leaves background work behind (a checkpoint of what it wrote): half load is
        # measured once that has settled, as a steady state, including its own checkpoints.
        await asyncio.sleep(settle_s)
        say(f"half load: {peak_rate / 2:,.0f} payments/s open loop, requests of {half_load_request_events}")
        half = await _open_loop(clients, stream, peak_rate / 2, half_load_request_events, seconds)
    finally:
        for client in clients:
            client.close()
    return {"peak": peak, "peak_rate": peak_rate, "half": half}


def _ms(latencies_ns: np.ndarray, q: float) -> float:
    return round(float(np.percentile(latencies_ns, q)) / 1e6, 3)


def run(seconds: float = 5.0, connections: int = 4, depth: int = 2, accounts: int = 1_000_000,
        core_transfers: int = 2_000_000, half_load_request_events: int = 256, data_dir: str | None = None,
        prefault: bool = True, checkpoint_interval_events: int = constants.CHECKPOINT_INTERVAL_EVENTS_DEFAULT,
        progress=None) -> dict:
    """The whole benchmark (see the module's docstring); ``prefault=False`` only for smoke tests."""
    say = progress or (lambda message: None)
    base_dir = data_dir or tempfile.mkdtemp(prefix="tally-e2e-")
    os.makedirs(base_dir, exist_ok=True)
    shutil.rmtree(os.path.join(base_dir, "server"), ignore_errors=True)
    try:
        say(f"in-process core: {core_transfers:,} payments over {accounts:,} accounts")
        core_rate = _core_rate(base_dir, accounts, core_transfers)
        wallets, _, _ = bench_core._population(accounts)
        say(f"starting the server ({'prefaulting ' if prefault else ''}default hot window)")
        driven, server_exit = local_server.drive(
            base_dir, lambda port, secret, pid: _drive(
                port, secret, accounts=accounts, connections=connections, depth=depth, seconds=seconds,
                half_load_request_events=half_load_request_events, server_pid=pid,
                settle_s=SETTLE_S if prefault else 0.0, say=say),
            accounts_max=accounts, prefault=prefault, checkpoint_interval_events=checkpoint_interval_events)
    finally:
        if data_dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)
    peak, half = driven["peak"], driven["half"]
    rate = driven["peak_rate"]
    return {
        "transfers_per_s": round(rate),
        "core_transfers_per_s": round(core_rate),
        "ratio_to_core": round(rate / core_rate, 3),
        "p50_ms": _ms(peak["latencies_ns"], 50),
        "p99_ms": _ms(peak["latencies_ns"], 99),
        "p999_ms": _ms(peak["latencies_ns"], 99.9),
        "half_load_p99_ms": _ms(half["latencies_ns"], 99),
        "half_load_p50_ms": _ms(half["latencies_ns"], 50),
        "half_load_target_per_s": round(rate / 2),
        "half_load_achieved_per_s": round(half["achieved_per_s"]),
        "peak_requests": len(peak["latencies_ns"]),
        "half_load_requests": half["requests"],
        "server_cpu_s": round(peak["server_cpu_s"], 2),
        "client_cpu_s": round(peak["client_cpu_s"], 2),
        "failed_events": peak["failed"] + half["failed"],
        "server_exit_code": server_exit,
        "config": {"seconds": seconds, "connections": connections, "depth": depth, "accounts": accounts,
                   "checkpoint_interval_events": checkpoint_interval_events,
                   "request_events": constants.BATCH_EVENTS_MAX, "half_load_request_events": half_load_request_events,
                   "core_transfers": core_transfers},
        "machine": machine(),
    }


def machine() -> dict:
    """What a benchmark report says of the machine it ran on."""
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}


def summary(result: dict) -> str:
    c = result["config"]
    return "\n".join([
        f"tally bench e2e: {c['connections']} connections x {c['depth']} requests of {c['request_events']:,} payments, "
        f"{c['seconds']:g} s, {c['accounts']:,} accounts",
        f"  end to end (loopback, durable) {result['transfers_per_s']:>12,} transfers/s   "
        f"p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  p99.9 {result['p999_ms']} ms",
        f"  in-process core (same run)     {result['core_transfers_per_s']:>12,} transfers/s   "
        f"ratio {result['ratio_to_core']}",
        f"  half load, open loop           {result['half_load_achieved_per_s']:>12,} transfers/s   "
        f"p50 {result['half_load_p50_ms']} ms  p99 {result['half_load_p99_ms']} ms "
        f"(requests of {c['half_load_request_events']})",
        f"  CPU during the peak: server {result['server_cpu_s']} s, client {result['client_cpu_s']} s "
        f"over {c['seconds']:g} s",
    ])
