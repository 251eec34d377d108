"""`tally bench soak`: hundreds of millions of payments through one store, in bounded memory.

Method (docs/tiering.md has the design it checks):

1. A **writer process** opens a store with the default configuration (``prefault``), creates
   ``accounts`` accounts (1 % merchants, wallets that may not go negative, funding cards) and
   tops every wallet up, then submits ``transfers`` single-phase payments in batches of 8,190,
   pipelined as the server does. Payment ``k`` is a pure function of ``k`` (payer uniform over
   the wallets, payee Zipf(1.1) over the merchants, amount 1..10,000, id ``k + 1``, or a
   scrambled id with ``--random-ids``), so that it is generated batch by batch (nothing
   pre-generated: 200 M payments would be 25 GB) and can be checked later; the ids grow with
   ``k`` above every setup id, as time-ordered ids (``core.new_id``) do. Every
   ``progress_batches`` batches it reports the payments committed, the time and its RSS.
2. When the last payment is committed the writer reports its peak RSS, the checkpoint figures
   and the store's sizes, and the parent **kills it with SIGKILL** (no close, no final
   checkpoint): what a crash leaves.
3. The parent **reopens** the directory (``recovery_s``: the checkpoint plus the log after it),
   looks up a uniform random **sample** of payment ids from the whole history
   (``cold_lookup_per_s``; every row must equal its generator's), **re-sends** them as batches
   (every one must answer ``exists``; no balance and no transfer count may change:
   ``retry_exists_ok``), and
   measures the disk (log and cold tier: ``disk_bytes_per_transfer``).

Rates: ``durable_first_10pct_per_s`` and ``durable_last_10pct_per_s`` are payments per second
over the first and the last tenth of the payments, from the writer's progress reports.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import core
import core.store  # the store module itself (core loads it lazily)
from core import constants
from tally import bench_core

NS_PER_S = 1_000_000_000
SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based hash (SplitMix64's finalizer): payment k's randomness is a function of k."""
    with np.errstate(over="ignore"):
        z = x * SPLITMIX_GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class Payments:
    """Payment ``k`` for any ``k``: the writer makes batches of them, the checker samples."""

    def __init__(self, accounts: int, random_ids: bool = False):
        self.wallets, self.merchants, _ = bench_core._population(accounts)
        weights = 1.0 / np.arange(1, self.merchants + 1) ** 1.1
        self.cdf = np.cumsum(weights) / weights.sum()
        self.random_ids = random_ids

    def rows(self, k: np.ndarray) -> np.ndarray:
        k = k.astype(np.uint64)
        x = _splitmix64(k + np.uint64(1))
        y = _splitmix64(x)
        out = np.zeros(k.shape[0], dtype=core.TRANSFER_DTYPE)
        # Increasing ids above the setup's (as core.new_id's would be), or scrambled ones.
        out["id_lo"] = _splitmix64(k ^ np.uint64(0x5EED)) if self.random_ids else k + np.uint64(1)
        out["id_hi"] = 2 if self.random_ids else 1
        out["debit_account_id_lo"] = np.uint64(1) + x % np.uint64(self.wallets)
        merchant = np.minimum(np.searchsorted(self.cdf, (y >> np.uint64(11)).astype(np.float64) / 2.0**53),
                              self.merchants - 1)
        out["credit_account_id_lo"] = np.uint64(self.wallets + 1) + merchant.astype(np.uint64)
        out["amount"] = np.uint64(1) + (x >> np.uint64(32)) % np.uint64(10_000)
        out["ledger"] = core.Currency.CNY
        out["code"] = core.TransferCode.payment
        return out


def _rss_bytes() -> tuple[int, int, int]:
    """(VmRSS, VmHWM, RssAnon) of this process, bytes."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon"):
                fields[name] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0), fields.get("RssAnon", 0)


def _say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def writer(data_dir: str, accounts: int, transfers: int, random_ids: bool, progress_batches: int) -> None:
    """The writer process (``python -m tally.bench_soak DIR ACCOUNTS TRANSFERS RANDOM``)."""
    batch_size = constants.BATCH_EVENTS_MAX
    payments = Payments(accounts, random_ids)
    store = core.open(data_dir, accounts_max=max(accounts, constants.ACCOUNTS_MAX_DEFAULT), prefault=True)
    clock = bench_core._Clock()
    account_batches, topup_batches = bench_core.build_setup_batches(accounts, batch_size)
    bench_core._apply_all(store, account_batches, topup_batches, clock)
    _say({"event": "setup", "rss": _rss_bytes()})
    in_flight: list = []
    failed = done = 0
    started = time.perf_counter()
    for number, first in enumerate(range(0, transfers, batch_size), start=1):
        batch = payments.rows(np.arange(first, min(first + batch_size, transfers)))
        in_flight.append((store.submit(core.store.OPERATION_CREATE_TRANSFERS, batch, clock()), batch.shape[0]))
        if len(in_flight) > constants.COMMIT_PIPELINE_DEPTH_DEFAULT:
            pending, count = in_flight.pop(0)
            failed += int(np.count_nonzero(pending.result()))
            done += count
        if number % progress_batches == 0:
            _say({"event": "progress", "done": done, "s": time.perf_counter() - started, "rss": _rss_bytes(),
                  "hot": store.ledger.transfer_count - store.ledger.hot_first})
    for pending, count in in_flight:
        failed += int(np.count_nonzero(pending.result()))
        done += count
    elapsed = time.perf_counter() - started
    stats = store.stats()
    _say({"event": "done", "done": done, "s": elapsed, "failed": failed, "rss": _rss_bytes(), "stats": stats})
    # Wait to be killed: no close, no final checkpoint.
    time.sleep(3600)


def run(transfers: int = 200_000_000, accounts: int = 1_000_000, sample: int = 100_000, data_dir: str | None = None,
        random_ids: bool = False, progress=None, keep: bool = False) -> dict:
    """The whole benchmark (see the module's docstring)."""
    say = progress or (lambda message: None)
    base_dir = data_dir or tempfile.mkdtemp(prefix="tally-soak-")
    store_dir = os.path.join(base_dir, "store")
    shutil.rmtree(store_dir, ignore_errors=True)
    batches = -(-transfers // constants.BATCH_EVENTS_MAX)
    progress_batches = max(1, batches // 200)
    say(f"writer: {accounts:,} accounts, {transfers:,} payments into {store_dir}")
    child = subprocess.Popen([sys.executable, "-m", "tally.bench_soak", store_dir, str(accounts), str(transfers),
                              "1" if random_ids else "0", str(progress_batches)], stdout=subprocess.PIPE, text=True)
    timeline, final = [], None
    try:
        for line in child.stdout:
            message = json.loads(line)
            if message["event"] == "progress":
                timeline.append(message)
                if len(timeline) % 20 == 0:
                    say(f"  {message['done']:,} payments in {message['s']:.0f} s, "
                        f"RSS {message['rss'][0] / 2**30:.2f} GiB, hot {message['hot']:,}")
            elif message["event"] == "done":
                final = message
                break
        if final is None:
            raise RuntimeError(f"the writer stopped early (exit {child.wait()})")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    say(f"writer killed after {final['done']:,} payments in {final['s']:.0f} s; reopening")

    started = time.perf_counter()
    store = core.open(store_dir, prefault=True)
    recovery_s = time.perf_counter() - started
    recovery = store.recovery
    try:
        payments = Payments(accounts, random_ids)
        rng = np.random.default_rng(7)
        ks = rng.choice(transfers, size=min(sample, transfers), replace=False)
        expected = payments.rows(ks)
        ids = np.empty(ks.shape[0], dtype=core.ID_DTYPE)
        ids["lo"], ids["hi"] = expected["id_lo"], expected["id_hi"]
        say(f"looking up {ks.shape[0]:,} random payments of the whole history")
        found = []
        started = time.perf_counter()
        for at in range(0, ids.shape[0], constants.BATCH_EVENTS_MAX):
            found.append(store.lookup_transfers(ids[at:at + constants.BATCH_EVENTS_MAX]))
        lookup_s = time.perf_counter() - started
        found = np.concatenate(found)
        compare = ("id_lo", "id_hi", "debit_account_id_lo", "credit_account_id_lo", "amount", "ledger", "code")
        lookups_ok = found.shape[0] == expected.shape[0] and all(
            np.array_equal(found[name], expected[name]) for name in compare)
        say("re-sending them")
        # A retry changes nothing but the engine clock (every event, failed or not, gets a timestamp).
        accounts_before, count_before = store.ledger.accounts(), store.ledger.transfer_count
        results = [store.create_transfers(expected[at:at + constants.BATCH_EVENTS_MAX])
                   for at in range(0, expected.shape[0], constants.BATCH_EVENTS_MAX)]
        retry_ok = (bool(all((r == core.Result.exists).all() for r in results))
                    and np.array_equal(store.ledger.accounts(), accounts_before)
                    and store.ledger.transfer_count == count_before)
        stats = store.stats()
    finally:
        store.close()
    disk = sum(_directory_bytes(store_dir))
    tenth = max(1, len(timeline) // 10)
    first, last = timeline[:tenth], timeline[-tenth:]

    def rate(window):
        if len(window) < 2:
            return 0.0
        return (window[-1]["done"] - window[0]["done"]) / (window[-1]["s"] - window[0]["s"])

    result = {
        "transfers": final["done"],
        "failed_events": final["failed"],
        "seconds": round(final["s"], 1),
        "durable_per_s": round(final["done"] / final["s"]),
        "rss_max_bytes": final["rss"][1],
        "rss_anon_end_bytes": final["rss"][2],
        "durable_first_10pct_per_s": round(rate([{"done": 0, "s": 0.0}] + first)),
        "durable_last_10pct_per_s": round(rate(last)),
        "checkpoint_max_s": round(final["stats"]["checkpoint_write_max_s"], 3),
        "checkpoint_stall_max_s": round(final["stats"]["checkpoint_stall_max_s"], 3),
        "checkpoints": final["stats"]["checkpoints_written"],
        "recovery_s": round(recovery_s, 2),
        # Its parts: the memory touched at open (prefault) is the rest of recovery_s.
        "recovery_checkpoint_load_s": round(recovery.checkpoint_load_s, 2),
        "recovery_replay_s": round(recovery.replay_s, 2),
        "recovery_replayed_events": recovery.replayed_events,
        "cold_lookup_per_s": round(ks.shape[0] / lookup_s),
        "lookups_ok": lookups_ok,
        "retry_exists_ok": retry_ok,
        "disk_bytes_per_transfer": round(disk / max(1, final["done"]), 1),
        "writer_stats": final["stats"],
        "reopened_stats": stats,
        "rss_timeline": [(m["done"], m["rss"][0], m["rss"][2]) for m in timeline],
        "config": {"accounts": accounts, "transfers": transfers, "sample": int(ks.shape[0]),
                   "random_ids": random_ids, "batch_size": constants.BATCH_EVENTS_MAX},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    if not keep:
        shutil.rmtree(base_dir if data_dir is None else store_dir, ignore_errors=True)
    return result


def _directory_bytes(path: str):
    for root, _, files in os.walk(path):
        for name in files:
            yield os.stat(os.path.join(root, name)).st_blocks * 512


def summary(result: dict) -> str:
    gib = 2**30
    return "\n".join([
        f"payments          {result['transfers']:,} in {result['seconds']:,} s ({result['durable_per_s']:,}/s), "
        f"{result['failed_events']:,} refused",
        f"rate              first 10 %: {result['durable_first_10pct_per_s']:,}/s, "
        f"last 10 %: {result['durable_last_10pct_per_s']:,}/s",
        f"memory            peak RSS {result['rss_max_bytes'] / gib:.2f} GiB "
        f"(anonymous at the end {result['rss_anon_end_bytes'] / gib:.2f} GiB)",
        f"checkpoints       {result['checkpoints']}, longest write {result['checkpoint_max_s']} s, "
        f"longest pause {result['checkpoint_stall_max_s']} s",
        f"recovery          {result['recovery_s']} s after SIGKILL (checkpoint {result['recovery_checkpoint_load_s']} s, "
        f"replay of {result['recovery_replayed_events']:,} events {result['recovery_replay_s']} s, the rest touching memory)",
        f"cold lookups      {result['cold_lookup_per_s']:,}/s, rows correct: {result['lookups_ok']}, "
        f"re-sent all answer exists and change nothing: {result['retry_exists_ok']}",
        f"disk              {result['disk_bytes_per_transfer']} bytes per payment (log and cold tier)",
    ])


if __name__ == "__main__":
    writer(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5]))
