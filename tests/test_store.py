"""The durable store: every committed batch survives a reopen, bad input changes nothing."""

import os

import numpy as np
import pytest

import core
import core.checkpoint
from tests import workload


def _fill(store, batches):
    results = [store.create_accounts(workload.account_batch(), workload.now_ns(0))]
    for seed in range(1, batches + 1):
        results.append(store.create_transfers(workload.transfer_batch(seed), workload.now_ns(seed)))
    return results


def _state(ledger):
    ids = list(range(1, workload.ACCOUNTS + 1))
    return ledger.accounts(), ledger.lookup_transfers(
        [seed * 1_000_000 + i for seed in range(1, 40) for i in range(1, 201)]), ledger.features(), ids


def _assert_same(a, b):
    accounts_a, transfers_a, features_a, _ = a
    accounts_b, transfers_b, features_b, _ = b
    assert np.array_equal(accounts_a, accounts_b)
    assert np.array_equal(transfers_a, transfers_b)
    for key in features_a:
        assert np.array_equal(features_a[key], features_b[key]), key


@pytest.mark.parametrize("checkpoint_interval_batches", [1, 4, 1000])
def test_reopen_recovers_exactly_the_committed_state(data_dir, checkpoint_interval_batches):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=20_000,
                   checkpoint_interval_batches=checkpoint_interval_batches) as store:
        results = _fill(store, 20)
        before = _state(store.ledger)
        sequence = store.sequence
    assert sequence == 21
    # Some events succeed and some fail: replay must reproduce both.
    codes = np.concatenate(results)
    assert (codes == core.Result.ok).sum() > 100 and (codes == core.Result.exceeds_credits).sum() > 0

    with core.open(data_dir) as store:
        assert store.sequence == sequence
        _assert_same(before, _state(store.ledger))
        replayed = store.recovery.replayed_batches
        assert store.recovery.checkpoint_sequence + replayed == sequence
        # Checkpoints are written in the background; one falling due while the previous is still
        # being written waits for the next batch, so the last one may end a little earlier.
        if checkpoint_interval_batches <= sequence:
            assert store.recovery.checkpoint_sequence >= checkpoint_interval_batches
        else:
            assert store.recovery.checkpoint_sequence == 0
        # The reopened store keeps going from where it was.
        more = store.create_transfers(workload.transfer_batch(21), workload.now_ns(21))
        assert more.shape == (200,)

    # Same batches into an in-memory ledger: the same state (the store adds nothing of its own).
    memory = core.Ledger(accounts_max=100, transfers_hot_max=20_000)
    _fill(memory, 20)
    _assert_same(before, _state(memory))


def test_bad_batches_raise_and_change_nothing(data_dir):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=10_000) as store:
        _fill(store, 2)
        before, sequence = _state(store.ledger), store.sequence
        with pytest.raises(ValueError, match="at most 8190"):
            store.create_transfers(np.zeros(8191, dtype=core.TRANSFER_DTYPE))
        with pytest.raises(TypeError, match="TRANSFER_DTYPE"):
            store.create_transfers(np.zeros(3, dtype=core.ACCOUNT_DTYPE))
        with pytest.raises(ValueError, match="multiple of 128"):
            store.create_transfers(b"\x00" * 200)
        with pytest.raises(ValueError, match="one-dimensional"):
            store.create_transfers(np.zeros((2, 2), dtype=core.TRANSFER_DTYPE))
        _assert_same(before, _state(store.ledger))
        assert store.sequence == sequence


def test_raw_bytes_batches_are_accepted(data_dir):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=10_000) as store:
        assert store.create_accounts(workload.account_batch().tobytes()).tolist() == [0] * workload.ACCOUNTS


def test_failed_commit_poisons_the_store_until_reopened(data_dir):
    # A map too small for the log: some commit fails after its batch was applied in memory.
    big = np.concatenate([workload.transfer_batch(seed) for seed in range(1, 42)])[:8190]
    with core.open(data_dir, accounts_max=100, transfers_hot_max=1_000_000, map_size_bytes=1 << 20,
                   checkpoint_interval_batches=1 << 20) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        for attempt in range(1, 100):
            big["id_hi"] = attempt  # new ids each time, so each batch writes
            try:
                store.create_transfers(big, workload.now_ns(attempt))
            except core.StoreFailedError:
                break
        else:
            pytest.fail("the map never filled up")
        committed = store.sequence
        assert committed == attempt  # the accounts batch and attempt - 1 transfer batches
        with pytest.raises(core.StoreFailedError):
            store.lookup_accounts([1])
        with pytest.raises(core.StoreFailedError):
            store.create_transfers(big[:1])
    with core.open(data_dir) as store:
        assert store.sequence == committed
        expected = core.Ledger(accounts_max=100, transfers_hot_max=1_000_000)
        expected.create_accounts(workload.account_batch(), workload.now_ns(0))
        for committed_attempt in range(1, attempt):
            big["id_hi"] = committed_attempt
            expected.create_transfers(big, workload.now_ns(committed_attempt))
        assert store.ledger.transfer_count == expected.transfer_count
        assert np.array_equal(store.ledger.accounts(), expected.accounts())


def test_capacity_is_kept_and_may_grow(data_dir):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=1_000) as store:
        store.create_accounts(workload.account_batch())
    with core.open(data_dir) as store:
        assert (store.ledger.accounts_max, store.ledger.transfers_hot_max) == (100, 1_000)
    with core.open(data_dir, transfers_hot_max=5_000) as store:
        assert store.ledger.transfers_hot_max == 5_000
        assert store.ledger.account_count == workload.ACCOUNTS


def test_incremental_checkpoints_across_chunk_boundaries(data_dir, monkeypatch):
    # Tiny chunks, so that append-only arrays span many chunks and each checkpoint rewrites a
    # partial last chunk and adds new ones, while the other arrays are rewritten whole.
    monkeypatch.setattr(core.checkpoint, "CHUNK_RECORDS", 7)
    monkeypatch.setattr(core.checkpoint, "CHUNK_BYTES", 1000)
    with core.open(data_dir, accounts_max=100, transfers_hot_max=20_000, checkpoint_interval_batches=3) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        for seed in range(1, 14):
            store.create_transfers(workload.transfer_batch(seed), workload.now_ns(seed))
            # Each background checkpoint written before the next batch: one every 3 batches
            # (a checkpoint due while another is being written waits for a later batch).
            store._reap(wait_all=True)
        assert store.checkpoints_written == 4
        before = _state(store.ledger)
    with core.open(data_dir) as store:
        assert (store.recovery.checkpoint_sequence, store.recovery.replayed_batches) == (12, 2)
        _assert_same(before, _state(store.ledger))
        store.create_transfers(workload.transfer_batch(14), workload.now_ns(14))
        store.checkpoint()
        after = _state(store.ledger)
    with core.open(data_dir) as store:
        assert store.recovery.replayed_batches == 0
        _assert_same(after, _state(store.ledger))


def _damage(data_dir, database, key, offset, mask):
    """Flip bits of one stored value behind the store's back (the store must be closed)."""
    import lmdb

    if database == b"checkpoint":  # checkpoints have an environment of their own
        env = lmdb.open(os.path.join(data_dir, core.store.CHECKPOINT_SUBDIRECTORY))
        db = None
    else:
        env = lmdb.open(data_dir, max_dbs=4)
        db = env.open_db(database)
    with env.begin(write=True, db=db) as txn:
        value = bytearray(txn.get(key))
        value[offset] ^= mask
        txn.put(key, bytes(value))
    env.close()


def test_a_damaged_log_entry_is_reported_not_misread(data_dir):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=10_000, checkpoint_interval_batches=1000) as store:
        _fill(store, 3)
    # Inside the packed body, a flip that still unpacks: only the checksum can tell.
    _damage(data_dir, b"log", (4).to_bytes(8, "big"), 48, 0x01)  # lowest byte of the first transfer id
    with pytest.raises(core.StoreError, match="log entry 4: checksum mismatch"):
        core.open(data_dir)


def test_the_log_holds_each_batchs_failures_and_replay_checks_them(data_dir):
    import struct
    import zlib

    import lmdb
    from core.store import FAILURE_DTYPE, LOG_HEADER
    with core.open(data_dir, accounts_max=100, transfers_hot_max=10_000, checkpoint_interval_batches=1000) as store:
        accounts = core.accounts_from_dicts([{"id": 1, "ledger": 156, "code": 1}, {"id": 2, "ledger": 156, "code": 1}])
        assert not store.create_accounts(accounts).any()
        transfers = core.transfers_from_dicts([
            {"id": 10, "debit_account_id": 1, "credit_account_id": 2, "amount": 5, "ledger": 156, "code": 1},
            {"id": 11, "debit_account_id": 1, "credit_account_id": 9, "amount": 5, "ledger": 156, "code": 1},
            {"id": 12, "debit_account_id": 1, "credit_account_id": 2, "amount": 0, "ledger": 156, "code": 1}])
        results = store.create_transfers(transfers)
        entry = list(store.log_entries(2))[0]
        assert entry.failures.tolist() == [(1, int(results[1])), (2, int(results[2]))] and results[1] and results[2]
        assert list(store.log_entries(1))[0].failures.shape == (0,)  # a batch that all succeeded
    # A logged result that the replay does not reproduce (checksum made to match): recovery says so.
    env = lmdb.open(data_dir, max_dbs=4)
    with env.begin(write=True, db=env.open_db(b"log")) as txn:
        key = (2).to_bytes(8, "big")
        value = bytearray(txn.get(key))
        fields = LOG_HEADER.unpack_from(value)
        at = LOG_HEADER.size + fields[4] + 4 + FAILURE_DTYPE.fields["result"][1]  # the first failure's code
        value[at] ^= 0x01
        struct.pack_into("<I", value, 32, zlib.crc32(value[LOG_HEADER.size:], zlib.crc32(value[:32])))
        txn.put(key, bytes(value))
    env.close()
    with pytest.raises(core.StoreError, match="log entry 2: replay diverged"):
        core.open(data_dir)


def test_a_damaged_checkpoint_is_reported_and_the_whole_log_replayed(data_dir):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=10_000, checkpoint_interval_batches=2) as store:
        _fill(store, 3)
        before = _state(store.ledger)
        sequence = store.sequence
    _damage(data_dir, b"checkpoint", b"hot/" + (0).to_bytes(4, "big"), 100, 0x01)  # one balance bit
    with core.open(data_dir) as store:
        assert "chunk 0 of hot is damaged" in store.recovery.checkpoint_error
        assert store.recovery.checkpoint_sequence == 0 and store.recovery.replayed_batches == sequence
        _assert_same(before, _state(store.ledger))
        store.checkpoint()  # a new, whole checkpoint replaces the damaged one
    with core.open(data_dir) as store:
        assert store.recovery.checkpoint_error is None and store.recovery.replayed_batches == 0
        _assert_same(before, _state(store.ledger))


def test_an_unreadable_checkpoint_environment_is_set_aside(data_dir):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=10_000, checkpoint_interval_batches=2) as store:
        _fill(store, 3)
        before = _state(store.ledger)
    checkpoint_file = os.path.join(data_dir, core.store.CHECKPOINT_SUBDIRECTORY, "data.mdb")
    with open(checkpoint_file, "r+b") as file:
        file.write(b"\xff" * 8192)  # both LMDB meta pages
    with core.open(data_dir) as store:
        assert store.recovery.checkpoint_sequence == 0
        _assert_same(before, _state(store.ledger))
    assert any(name.startswith(core.store.CHECKPOINT_SUBDIRECTORY + ".damaged-") for name in os.listdir(data_dir))


def test_checkpoints_are_counted_in_events_not_batches(data_dir):
    # 200-event batches and a 1,000-event interval: a checkpoint every 5 batches or so, and none
    # from batch counts alone (the default counts events only).
    with core.open(data_dir, accounts_max=100, transfers_hot_max=20_000, checkpoint_interval_events=1000) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        for seed in range(1, 13):
            store.create_transfers(workload.transfer_batch(seed), workload.now_ns(seed))
            # One checkpoint at a time: a slow one makes the next one due wait. Let each finish,
            # so that what is counted here is events, not the machine's speed.
            if store._checkpoint_job is not None:
                store._checkpoint_job.future.result()
        before = _state(store.ledger)
        sequence = store.sequence
    with core.open(data_dir) as store:
        checkpointed = store.recovery.checkpoint_sequence
        assert checkpointed + store.recovery.replayed_batches == sequence
        assert 5 <= checkpointed <= sequence and store.recovery.replayed_events < sequence * 200 // 2
        _assert_same(before, _state(store.ledger))
    # Tiny batches never reach a large event interval: no checkpoint at all.
    with core.open(data_dir + "-small", accounts_max=100, transfers_hot_max=20_000) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        for seed in range(1, 30):
            store.create_transfers(workload.transfer_batch(seed)[:1], workload.now_ns(seed))
    with core.open(data_dir + "-small") as store:
        assert store.recovery.checkpoint_sequence == 0 and store.recovery.replayed_batches == 30


def test_a_data_directory_in_use_cannot_be_opened_twice(data_dir):
    with core.open(data_dir, accounts_max=100, transfers_hot_max=1000) as store:
        with pytest.raises(core.StoreError, match="in use by another process"):
            core.open(data_dir)
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
    with core.open(data_dir) as store:  # released on close
        assert store.sequence == 1


def test_an_append_the_log_refuses_fails_the_store(data_dir):
    # Another writer got to the LMDB log first (here: behind the store's back): the sink's append
    # of the store's next sequence number is refused. The batch was already acknowledged (it is
    # durable in the journal), so the store fails: nothing later is acknowledged, and a reopen
    # refuses the directory (its journal no longer follows the log) rather than mix two writers.
    with core.open(data_dir, accounts_max=100, transfers_hot_max=1000) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        store.sink_journal()
        with store._env.begin(write=True, db=store._log) as txn:
            txn.put((2).to_bytes(8, "big"), b"someone else's entry", append=True)
        store.create_transfers(workload.transfer_batch(1), workload.now_ns(1))  # in the journal
        with pytest.raises(core.StoreFailedError, match="was not appended"):
            store.sink_journal()
        assert isinstance(store._failed, core.StoreError)
        with pytest.raises(core.StoreFailedError):
            store.create_transfers(workload.transfer_batch(2), workload.now_ns(2))
    with pytest.raises(core.StoreError, match="does not follow"):
        core.open(data_dir)


def test_a_pulse_logs_an_empty_batch_only_when_a_timeout_is_due(data_dir):
    from core import replay_log

    with core.open(data_dir, accounts_max=16, transfers_hot_max=4096) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": 1, "ledger": 156, "code": 1},
                                                        {"id": 2, "ledger": 156, "code": 1}]), 1_000)
        assert store.pulse(10**12) is None and store.next_expiry_ns == 0  # nothing pending
        hold = core.transfers_from_dicts([{"id": 10, "debit_account_id": 1, "credit_account_id": 2, "amount": 5,
                                           "ledger": 156, "code": 1, "flags": int(core.TransferFlags.pending),
                                           "timeout": 3}])
        assert store.create_transfers(hold, 2_000).tolist() == [core.Result.ok]
        due_ns = store.next_expiry_ns
        assert due_ns == 2_000 + 3 * 10**9
        assert store.pulse(due_ns - 1) is None and store.sequence == 2  # not yet: nothing logged
        pulse = store.pulse(due_ns)
        assert pulse.done() and store.sequence == 3 and store.next_expiry_ns == 0  # committed on return
        assert store.lookup_accounts([1])["debits_pending"].tolist() == [0]
        assert store.pulse(due_ns + 10**9) is None and store.sequence == 3
        entries = list(store.log_entries(3))
        assert [(operation, now_ns, body.shape[0]) for _, operation, now_ns, _, body, _, _ in entries] == [
            (core.store.OPERATION_CREATE_TRANSFERS, due_ns, 0)]
        expected = store.state_hash()
    with core.open(data_dir) as reopened:  # recovery replays the pulse at its logged engine time
        assert reopened.state_hash() == expected
        assert reopened.lookup_accounts([1])["debits_pending"].tolist() == [0]
    assert replay_log.run(data_dir, data_dir + "-replayed")["equal"]


def _two_wallets(store):
    store.create_accounts(core.accounts_from_dicts([{"id": 1, "ledger": 156, "code": 1},
                                                    {"id": 2, "ledger": 156, "code": 1}]), 1_000)


def _payment(id_):
    return core.transfers_from_dicts([{"id": id_, "debit_account_id": 1, "credit_account_id": 2, "amount": 1,
                                       "ledger": 156, "code": 1}])


def test_commit_staged_returns_only_after_the_batches_submitted_before_it(data_dir):
    # A server reads state as applied and replies after commit_staged: that must cover a batch
    # the commit thread still holds (submitted, e.g. by an older pulse), not only staged ones.
    import threading

    with core.open(data_dir, accounts_max=16, transfers_hot_max=4096) as store:
        _two_wallets(store)
        gate = threading.Event()
        append = store._journal.append
        store._journal.append = lambda part: (gate.wait(10), append(part))[1]  # the commit thread waits
        submitted = store.submit(core.store.OPERATION_CREATE_TRANSFERS, _payment(10), 2_000)
        threading.Timer(0.2, gate.set).start()
        store.commit_staged()  # nothing staged: still waits for the submitted batch
        assert submitted.done() and store.sequence == 2


def test_a_failure_after_a_batch_is_applied_still_logs_it(data_dir):
    # Background work a batch starts (here a checkpoint) may fail; the batch is already applied,
    # so its entry must still reach the journal: no sequence gap, no slot held, close returns.
    with core.open(data_dir, accounts_max=16, transfers_hot_max=4096) as store:
        _two_wallets(store)

        def failing_checkpoint():
            raise MemoryError("no memory for the checkpoint's copy")

        store._start_checkpoint = failing_checkpoint
        store._checkpoint_due = lambda: True
        for number, form in enumerate((store.stage, store.submit)):
            with pytest.raises(MemoryError):
                form(core.store.OPERATION_CREATE_TRANSFERS, _payment(20 + number), 3_000 + number)
            store.commit_staged()
            assert store.sequence == 2 + number  # the accounts' batch is 1
        del store._start_checkpoint, store._checkpoint_due
        expected = store.state_hash()
    with core.open(data_dir) as reopened:
        assert reopened.sequence == 3 and reopened.state_hash() == expected
