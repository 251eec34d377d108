"""`tally bench core`: the core's throughput, in memory and durable, against the raw LMDB ceiling.

Method (all figures from one run, on one machine, so that ratios are meaningful):

1. A population of ``accounts`` accounts: 1% merchants, the rest user wallets (which may not go
   negative), plus funding-card accounts that top every wallet up first.
2. ``transfers`` single-phase payments, pre-generated as NumPy record batches of ``batch_size``:
   payer uniform over all wallets, payee Zipf-skewed over the merchants (a few very hot
   merchants, a long tail), amounts 1..10,000 minor units. Generation is not timed.
3. **memory**: the same batches through an in-memory ``Ledger`` (no LMDB), timed per batch.
4. **durable**: the batches through ``core.Store.submit`` (one synchronous LMDB commit per
   batch; batch N+1 is applied while batch N commits, as the server does). The rate is payments
   over the wall time of the whole run; p50/p99 are per batch, from submit to committed result.
5. **recovery**: the store is reopened; the log written in step 4 (no checkpoint covers it) is
   replayed through the state machine.
6. **lmdb ceiling**: plain py-lmdb writing the same number of bytes as a raw batch (8,190
   records of 128 bytes) per synchronous commit (one value per commit, appended): the fastest
   the disk and LMDB allow for that size. Measured right before and right after step 4 (the
   disk's speed drifts), averaged. The store packs its log entries (``core.codec``), so it
   writes fewer bytes than the ceiling does and its ratio may exceed 1.
"""

from __future__ import annotations

import collections
import os
import platform
import shutil
import sys
import tempfile
import time

import lmdb
import numpy as np

import core
import core.store  # the store module itself (core loads it lazily): its log header and keys
from core import constants

NS_PER_S = 1_000_000_000


def _zipf_indices(rng, size, n, s=1.1):
    # Zipf over a finite population: rank r has weight 1 / r**s.
    weights = 1.0 / np.arange(1, n + 1) ** s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def _population(accounts: int):
    merchants = max(1, accounts // 100)
    cards = max(1, accounts // 1000)
    wallets = accounts - merchants - cards
    return wallets, merchants, cards


def build_setup_batches(accounts: int, batch_size: int):
    """Account batches and top-up batches for the benchmark population."""
    wallets, merchants, cards = _population(accounts)
    ids = np.arange(1, accounts + 1, dtype=np.uint64)
    records = np.zeros(accounts, dtype=core.ACCOUNT_DTYPE)
    records["id_lo"] = ids
    records["ledger"] = core.Currency.CNY
    records["code"][:wallets] = core.AccountCode.user_wallet
    records["flags"][:wallets] = core.AccountFlags.debits_must_not_exceed_credits
    records["code"][wallets:wallets + merchants] = core.AccountCode.merchant
    records["code"][wallets + merchants:] = core.AccountCode.funding_card
    account_batches = [records[i:i + batch_size] for i in range(0, accounts, batch_size)]
    topups = np.zeros(wallets, dtype=core.TRANSFER_DTYPE)
    topups["id_lo"] = np.arange(1, wallets + 1, dtype=np.uint64) | np.uint64(1 << 62)
    topups["debit_account_id_lo"] = wallets + merchants + 1 + (np.arange(wallets) % cards)
    topups["credit_account_id_lo"] = ids[:wallets]
    topups["amount"] = 10_000_000_000
    topups["ledger"] = core.Currency.CNY
    topups["code"] = core.TransferCode.top_up
    topup_batches = [topups[i:i + batch_size] for i in range(0, wallets, batch_size)]
    return account_batches, topup_batches


def build_payment_batches(accounts: int, transfers: int, batch_size: int, seed: int = 1):
    """Pre-generated payment batches: uniform payers, Zipf-skewed merchant payees."""
    rng = np.random.default_rng(seed)
    wallets, merchants, _ = _population(accounts)
    payments = np.zeros(transfers, dtype=core.TRANSFER_DTYPE)
    payments["id_lo"] = np.arange(1, transfers + 1, dtype=np.uint64)
    payments["debit_account_id_lo"] = rng.integers(1, wallets + 1, transfers, dtype=np.uint64)
    payments["credit_account_id_lo"] = wallets + 1 + _zipf_indices(rng, transfers, merchants).astype(np.uint64)
    payments["amount"] = rng.integers(1, 10_001, transfers, dtype=np.uint64)
    payments["ledger"] = core.Currency.CNY
    payments["code"] = core.TransferCode.payment
    return [payments[i:i + batch_size] for i in range(0, transfers, batch_size)]


def _apply_all(target, account_batches, topup_batches, clock):
    for batch in account_batches:
        results = target.create_accounts(batch, clock())
        if results.any():
            raise RuntimeError(f"setup failed: {np.bincount(results)}")
    for batch in topup_batches:
        results = target.create_transfers(batch, clock())
        if results.any():
            raise RuntimeError(f"top-up failed: {np.bincount(results)}")


def _run_payments(target, batches, clock):
    latencies_ns = np.empty(len(batches), dtype=np.int64)
    failed = 0
    for i, batch in enumerate(batches):
        start = time.perf_counter_ns()
        results = target.create_transfers(batch, clock())
        latencies_ns[i] = time.perf_counter_ns() - start
        failed += int(np.count_nonzero(results))
    return latencies_ns, failed


def _run_payments_pipelined(store, batches, clock):
    """Submit batches with the store's commit pipeline full; latency is submit to committed result."""
    latencies_ns = np.empty(len(batches), dtype=np.int64)
    in_flight = collections.deque()
    failed = 0

    def finish():
        nonlocal failed
        index, started, pending = in_flight.popleft()
        failed += int(np.count_nonzero(pending.result()))
        latencies_ns[index] = time.perf_counter_ns() - started

    start = time.perf_counter_ns()
    for i, batch in enumerate(batches):
        while in_flight and in_flight[0][2].done():
            finish()
        in_flight.append((i, time.perf_counter_ns(), store.submit(core.store.OPERATION_CREATE_TRANSFERS, batch, clock())))
    while in_flight:
        finish()
    return latencies_ns, failed, (time.perf_counter_ns() - start) / NS_PER_S


def lmdb_ceiling(path: str, value_bytes: int, commits: int) -> float:
    """Synchronous commits/s of one appended ``value_bytes`` value each, with plain py-lmdb."""
    os.makedirs(path, exist_ok=True)
    env = lmdb.open(path, map_size=max(4 << 30, 4 * value_bytes * commits), sync=True, metasync=True,
                    readahead=False, meminit=False)
    value = np.random.default_rng(0).integers(0, 256, value_bytes, dtype=np.uint8).tobytes()
    try:
        start = time.perf_counter()
        for i in range(commits):
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), value, append=True)
        return commits / (time.perf_counter() - start)
    finally:
        env.close()


def run(accounts: int = 1_000_000, transfers: int = 4_000_000, batch_size: int = constants.BATCH_EVENTS_MAX,
        data_dir: str | None = None, progress=None) -> dict:
    say = progress or (lambda message: None)
    if not 1 <= batch_size <= constants.BATCH_EVENTS_MAX:
        raise ValueError(f"batch_size must be in 1..{constants.BATCH_EVENTS_MAX}")
    base_dir = data_dir or tempfile.mkdtemp(prefix="tally-bench-")
    store_dir = os.path.join(base_dir, "store")
    ceiling_dir = os.path.join(base_dir, "lmdb-ceiling")
    for directory in (store_dir, ceiling_dir):
        shutil.rmtree(directory, ignore_errors=True)
    wallets, _, _ = _population(accounts)
    capacity = dict(accounts_max=accounts)  # the hot window keeps its default: history goes cold

    say(f"generating {accounts:,} accounts and {transfers:,} payments")
    account_batches, topup_batches = build_setup_batches(accounts, batch_size)
    payment_batches = build_payment_batches(accounts, transfers, batch_size)
    clock = _Clock()

    say("in-memory ledger")
    # A bare ledger has no cold tier: room in memory for every transfer of the run.
    memory = core.Ledger(transfers_hot_max=max(transfers + wallets, constants.TRANSFERS_HOT_MAX_DEFAULT), **capacity)
    memory.prefault()
    _apply_all(memory, account_batches, topup_batches, clock)
    memory_latencies, memory_failed = _run_payments(memory, payment_batches, clock)
    memory_s = memory_latencies.sum() / NS_PER_S
    del memory

    # The disk's speed drifts over minutes on a shared machine (seen here: 150 to 570 commits/s
    # of 1 MiB), so the ceiling is measured right before and right after the durable run.
    value_bytes = core.store.LOG_HEADER.size + batch_size * constants.RECORD_SIZE_BYTES
    ceiling_commits = max(32, len(payment_batches) // 2)
    say("raw LMDB ceiling (before)")
    ceiling_before = lmdb_ceiling(ceiling_dir, value_bytes, ceiling_commits)
    shutil.rmtree(ceiling_dir, ignore_errors=True)

    say(f"durable store in {store_dir}")
    clock = _Clock()
    store = core.open(store_dir, checkpoint_interval_events=1 << 40, prefault=True, **capacity)
    _apply_all(store, account_batches, topup_batches, clock)
    store.checkpoint()  # recovery below then replays exactly the payments
    first_payment_sequence = store.sequence + 1
    durable_latencies, durable_failed, durable_s = _run_payments_pipelined(store, payment_batches, clock)
    final_accounts = store.ledger.accounts()
    log_bytes = _log_bytes(store, first_payment_sequence)
    store.close()

    say("raw LMDB ceiling (after)")
    ceiling_after = lmdb_ceiling(ceiling_dir, value_bytes, ceiling_commits)

    say("recovery (checkpoint + replay of the payment log)")
    start = time.perf_counter()
    store = core.open(store_dir, prefault=True)
    recovery_s = time.perf_counter() - start
    stats = store.recovery
    recovered_equal = bool(np.array_equal(store.ledger.accounts(), final_accounts))
    store.close()

    commits_per_s = (ceiling_before + ceiling_after) / 2
    if data_dir is None:
        shutil.rmtree(base_dir, ignore_errors=True)
    else:
        shutil.rmtree(ceiling_dir, ignore_errors=True)

    durable_rate = transfers / durable_s
    ceiling_rate = commits_per_s * batch_size
    return {
        "durable_transfers_per_s": round(durable_rate),
        "memory_transfers_per_s": round(transfers / memory_s),
        "recovery_transfers_per_s": round(stats.replayed_events / stats.replay_s) if stats.replay_s else None,
        "batch_p50_ms": round(float(np.percentile(durable_latencies, 50)) / 1e6, 3),
        "batch_p99_ms": round(float(np.percentile(durable_latencies, 99)) / 1e6, 3),
        "lmdb_ceiling_per_s": round(ceiling_rate),
        "ratio_to_lmdb_ceiling": round(durable_rate / ceiling_rate, 3),
        "memory_batch_p50_ms": round(float(np.percentile(memory_latencies, 50)) / 1e6, 3),
        "recovery_s": round(recovery_s, 3),
        "recovery_checkpoint_load_s": round(stats.checkpoint_load_s, 3),
        "recovery_replayed_events": stats.replayed_events,
        "recovered_state_equal": recovered_equal,
        "lmdb_ceiling_before_per_s": round(ceiling_before * batch_size),
        "lmdb_ceiling_after_per_s": round(ceiling_after * batch_size),
        "log_bytes_per_transfer": round(log_bytes / transfers, 1),
        "failed_events": memory_failed + durable_failed,
        "config": {"accounts": accounts, "transfers": transfers, "batch_size": batch_size,
                   "payee_distribution": "zipf(s=1.1) over merchants", "payer_distribution": "uniform"},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "numpy": np.__version__,
                    "lmdb": ".".join(map(str, lmdb.version())), "py_lmdb": lmdb.__version__},
    }


def _log_bytes(store, first_sequence: int) -> int:
    """Bytes of the log entries from ``first_sequence`` on."""
    total = 0
    store.sink_journal()
    with store._env.begin(db=store._log, buffers=True) as txn:
        cursor = txn.cursor()
        if cursor.set_range(core.store._SEQUENCE.pack(first_sequence)):
            for _, value in cursor:
                total += len(value)
    return total


class _Clock:
    """Engine time for the benchmark: the wall clock, as the store would use."""

    def __call__(self) -> int:
        return time.time_ns()


def summary(result: dict) -> str:
    """A one-screen text summary of a `run` result."""
    config = result["config"]
    lines = [
        f"tally bench core: {config['accounts']:,} accounts, {config['transfers']:,} payments "
        f"in batches of {config['batch_size']:,} ({config['payee_distribution']})",
        f"  durable (LMDB, sync commit)  {result['durable_transfers_per_s']:>14,} transfers/s"
        f"   batch p50 {result['batch_p50_ms']} ms, p99 {result['batch_p99_ms']} ms",
        f"  in-memory authorization      {result['memory_transfers_per_s']:>14,} transfers/s",
        f"  recovery replay              {result['recovery_transfers_per_s']:>14,} transfers/s"
        f"   (reopen took {result['recovery_s']} s)",
        f"  raw LMDB ceiling (same bytes){result['lmdb_ceiling_per_s']:>14,} records/s"
        f"   ratio durable/ceiling {result['ratio_to_lmdb_ceiling']}",
    ]
    return "\n".join(lines)
