"""pytest-benchmark micro benchmarks of the core operations.

Run by hand (they are deselected in the default test run):

    .venv/bin/python -m pytest benchmarks -m bench --benchmark-columns=min,median,max,ops

Each benchmark applies one full batch (8,190 events) per round, so ``ops`` × 8,190 is events/s.
The population is small enough (100,000 accounts) to build quickly; ``tally bench core`` is
the end-to-end figure at a million accounts with durability.
"""

import time

import numpy as np
import pytest

import core
from core import codec
from tally import bench_core

pytestmark = pytest.mark.bench

ACCOUNTS = 100_000
BATCH = core.BATCH_EVENTS_MAX
ROUNDS = 40


@pytest.fixture(scope="module")
def population():
    accounts, topups = bench_core.build_setup_batches(ACCOUNTS, BATCH)
    payments = bench_core.build_payment_batches(ACCOUNTS, BATCH * (ROUNDS + 10), BATCH)
    return accounts, topups, payments


def _ledger(population):
    accounts, topups, payments = population
    ledger = core.Ledger(accounts_max=ACCOUNTS, transfers_hot_max=ACCOUNTS + BATCH * (ROUNDS + 10))
    ledger.prefault()
    for batch in accounts:
        ledger.create_accounts(batch, time.time_ns())
    for batch in topups:
        ledger.create_transfers(batch, time.time_ns())
    return ledger


def test_create_transfers_new(benchmark, population):
    ledger, payments = _ledger(population), iter(population[2])
    results = benchmark.pedantic(lambda: ledger.create_transfers(next(payments), time.time_ns()),
                                 rounds=ROUNDS, iterations=1)
    assert not results.any()


def test_create_transfers_retried(benchmark, population):
    # A retried batch: every event is looked up and found to exist; nothing changes.
    ledger = _ledger(population)
    batch = population[2][0]
    ledger.create_transfers(batch, time.time_ns())
    results = benchmark(lambda: ledger.create_transfers(batch, time.time_ns()))
    assert (results == core.Result.exists).all()


def test_lookup_accounts(benchmark, population):
    ledger = _ledger(population)
    ids = core.ids_array(np.random.default_rng(0).integers(1, ACCOUNTS, BATCH).tolist())
    found = benchmark(lambda: ledger.lookup_accounts(ids))
    assert found.shape == (BATCH,)


def test_codec_pack(benchmark, population):
    batch = population[2][0]
    out = bytearray(codec.packed_size_max(BATCH))
    used = benchmark(lambda: codec.pack_into(batch, out))
    assert used < BATCH * 30


def test_durable_create_transfers(benchmark, population, tmp_path):
    accounts, topups, payments = population
    store = core.open(str(tmp_path / "store"), accounts_max=ACCOUNTS,
                      transfers_hot_max=ACCOUNTS + BATCH * (ROUNDS + 10), checkpoint_interval_events=1 << 40)
    for batch in accounts:
        store.create_accounts(batch)
    for batch in topups:
        store.create_transfers(batch)
    batches = iter(payments)
    results = benchmark.pedantic(lambda: store.create_transfers(next(batches)), rounds=ROUNDS, iterations=1)
    assert not results.any()
    store.close()
