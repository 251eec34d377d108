"""kill -9 at random moments loses no acknowledged batch and leaves no partial one."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import core
from core.state_hash import state_hash
from tests import workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _expected_state(batches: int):
    """The state after exactly `batches` committed batches, computed in memory."""
    ledger = core.Ledger(accounts_max=100, transfers_hot_max=2_000_000)
    ledger.create_accounts(workload.account_batch(), workload.now_ns(0))
    for seed in range(1, batches):
        ledger.create_transfers(workload.transfer_batch(seed, size=1000), workload.now_ns(seed))
    return ledger


def _crash_rounds(data_dir, rounds, seed):
    rng = random.Random(seed)
    acked = 0
    for _ in range(rounds):
        interval = rng.choice([1, 2, 5, 1000])
        child = subprocess.Popen([sys.executable, "-m", "tests.crash_writer", data_dir, str(interval)],
                                 cwd=ROOT, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + rng.uniform(0.3, 1.5)
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked = max(acked, int(line.split()[1]))
        child.send_signal(signal.SIGKILL)
        # Acknowledgements already written to the pipe before the kill count too.
        for line in child.stdout:
            acked = max(acked, int(line.split()[1]))
        child.wait()
        assert child.returncode == -signal.SIGKILL

        with core.open(data_dir) as store:
            recovered = store.sequence
            assert recovered >= acked, f"acknowledged batch {acked} lost (recovered {recovered})"
            # At most one batch may have committed without its ack reaching us.
            assert recovered <= acked + 1
            expected = _expected_state(recovered)
            assert np.array_equal(store.ledger.accounts(), expected.accounts())
            assert store.ledger.transfer_count == expected.transfer_count
            assert store.ledger.last_timestamp == expected.last_timestamp
            # The whole history, cold tier included (written by the killed process, maybe
            # partly past its last checkpoint), is what the batches lead to.
            assert store.state_hash() == state_hash(expected, epoch_transfers=workload.TIERS["cold_epoch_transfers"])
            sample = [seed * 1_000_000 + 1 + offset for seed in range(1, recovered, 3) for offset in (0, 500)]
            assert np.array_equal(store.lookup_transfers(sample), expected.lookup_transfers(sample))
            cold_epochs = store.stats()["cold_epochs"]
    assert cold_epochs > 0, "the kills never reached the cold tier"
    return acked


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    acked = _crash_rounds(str(tmp_path / "store"), rounds=4, seed=1)
    assert acked > 4


@pytest.mark.slow
def test_kill_9_soak(tmp_path):
    acked = _crash_rounds(str(tmp_path / "store"), rounds=40, seed=2)
    assert acked > 40
