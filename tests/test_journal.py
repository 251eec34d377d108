"""The journal (core/journal.py, docs/journal.md): frames in a ring, recovered after a crash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from core import journal
from core.journal import HEADER, Journal, JournalError, frame_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _entry(sequence: int, size: int) -> bytes:
    return bytes((sequence * 7 + i) % 251 for i in range(size))


def _write(ring: Journal, first: int, sizes: list[int]) -> list[tuple[int, int]]:
    return ring.append([(first + i, memoryview(_entry(first + i, size))) for i, size in enumerate(sizes)])


def test_frames_come_back_in_order_across_wraps(tmp_path):
    ring = Journal(str(tmp_path / "journal"), 4096)
    ring.start(generation=1)
    sequence, position = 1, (1, 0)  # what a sink would record: the next frame's sequence and offset
    rng = np.random.default_rng(3)
    for _ in range(200):
        sizes = [int(size) for size in rng.integers(0, 900, rng.integers(1, 4))]
        placed = _write(ring, sequence, sizes)
        # The frames just written are found from the recorded position, and nothing after them.
        found = list(ring.scan(position[1], position[0], 1))
        expected = list(range(sequence, sequence + len(sizes)))
        assert [s for s, _, _ in found] == expected
        assert [e for _, e, _ in found] == [_entry(s, size) for s, size in zip(expected, sizes)]
        assert [end for _, _, end in found] == [end for end, _ in placed]
        ring.release(sum(held for _, held in placed))  # "sunk": the ring may reuse it
        sequence += len(sizes)
        position = (sequence, placed[-1][0])
    assert ring.bytes_written > 10 * ring.capacity_bytes  # it went round many times


def test_a_frame_that_does_not_fit_goes_to_the_start(tmp_path):
    capacity = 16384
    ring = Journal(str(tmp_path / "journal"), capacity)
    ring.start(generation=5)
    ring.release(sum(held for _, held in _write(ring, 1, [3000] * 4)))
    placed = _write(ring, 5, [3000])                 # ends at 5 * 3032 = 15160
    assert placed == [(5 * frame_bytes(3000), frame_bytes(3000))]
    ring.release(placed[0][1])
    placed = _write(ring, 6, [2000])                 # does not fit after 15160: a wrap header, then at 0
    assert placed == [(frame_bytes(2000), frame_bytes(2000) + capacity - 5 * frame_bytes(3000))]
    assert list(ring.scan(5 * frame_bytes(3000), 6, 5)) == [(6, _entry(6, 2000), frame_bytes(2000))]
    # With less than a header's room left at the end, the wrap is implied.
    ring.release(placed[0][1])
    placed = _write(ring, 7, [3552] * 4)             # 4 * 3584 = 14336: 16 bytes left at the end
    assert placed[-1][0] == capacity - 16
    ring.release(sum(held for _, held in placed))
    placed = _write(ring, 11, [100])
    assert placed == [(frame_bytes(100), frame_bytes(100) + 16)]
    assert [s for s, _, _ in ring.scan(frame_bytes(2000), 7, 5)] == [7, 8, 9, 10, 11]


def test_the_scan_stops_at_a_torn_stale_or_foreign_frame(tmp_path):
    path = str(tmp_path / "journal")
    ring = Journal(path, 1 << 16)
    ring.start(generation=2)
    ends = [end for end, _ in _write(ring, 10, [100, 200, 300, 400])]
    assert [s for s, _, _ in ring.scan(0, 10, 2)] == [10, 11, 12, 13]
    assert list(ring.scan(0, 10, 1)) == []            # another generation: an earlier run's frames
    assert list(ring.scan(0, 9, 2)) == []             # not the sequence expected there
    with open(path, "r+b") as file:                   # one byte of frame 12's entry damaged
        file.seek(ends[1] + HEADER.size + 5)
        byte = file.read(1)
        file.seek(ends[1] + HEADER.size + 5)
        file.write(bytes([byte[0] ^ 1]))
    assert [s for s, _, _ in ring.scan(0, 10, 2)] == [10, 11]
    with open(path, "r+b") as file:                   # the file ends inside frame 11 (a short write)
        file.truncate(ends[0] + HEADER.size + 50)
    assert [s for s, _, _ in ring.scan(0, 10, 2)] == [10]
    ring.close()


def test_a_full_ring_waits_for_the_sink(tmp_path):
    ring = Journal(str(tmp_path / "journal"), 8192)
    ring.start(generation=1)
    held = [held for _, held in _write(ring, 1, [1900, 1900, 1900, 1900])]
    done = threading.Event()

    def writer():
        _write(ring, 5, [1900, 1900])  # needs room the ring has not got
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert not done.wait(0.2)
    ring.release(held[0])
    assert not done.wait(0.2)  # one frame's room is not enough for two (and the end skipped)
    ring.release(held[1] + held[2] + held[3])
    assert done.wait(5)
    thread.join()


def test_a_failed_sink_wakes_the_writer_with_an_error(tmp_path):
    ring = Journal(str(tmp_path / "journal"), 8192)
    ring.start(generation=1)
    _write(ring, 1, [1900, 1900, 1900])
    errors = []

    def writer():
        try:
            _write(ring, 4, [1900, 1900])
        except JournalError as error:
            errors.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.1)
    ring.fail(OSError("disk gone"))
    thread.join(5)
    assert errors and "disk gone" in str(errors[0])


def test_entries_larger_than_a_quarter_of_the_ring_are_refused(tmp_path):
    ring = Journal(str(tmp_path / "journal"), 8192)
    ring.start(generation=1)
    with pytest.raises(JournalError, match="quarter"):
        _write(ring, 1, [2048])
    with pytest.raises(ValueError):
        Journal(str(tmp_path / "other"), 100)


def test_prefill_writes_the_ring_full_of_zeros(tmp_path):
    path = str(tmp_path / "journal")
    ring = Journal(path, 3 << 20)
    ring.start(generation=1)
    _write(ring, 1, [500])
    ring.prefill()
    assert os.path.getsize(path) == 3 << 20
    assert [s for s, _, _ in ring.scan(0, 1, 1)] == [1]  # what was there is kept


_CRASH_CHILD = r"""
import os, sys
import core
from core import constants
from core.store import JOURNAL_BYTES_MIN
from tests import workload
constants.JOURNAL_SINK_INTERVAL_S = 3600.0   # the sink runs only when a quarter of the ring waits
store = core.open(sys.argv[1], accounts_max=100, journal_bytes=JOURNAL_BYTES_MIN, **workload.TIERS)
store.create_accounts(workload.account_batch(), workload.now_ns(0))
for seed in range(1, int(sys.argv[2]) + 1):
    store.create_transfers(workload.transfer_batch(seed, size=2000), workload.now_ns(seed))
print(store.sequence, store._sunk_sequence, store._journal.bytes_written, flush=True)
os._exit(0)   # no close: what only the journal holds must come back at the next open
"""


def test_acknowledged_batches_only_in_the_journal_survive_a_crash(tmp_path):
    import core
    from tests import workload

    crashed, reference = str(tmp_path / "crashed"), str(tmp_path / "reference")
    batches = 300
    child = subprocess.run([sys.executable, "-c", _CRASH_CHILD, crashed, str(batches)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    acked, sunk, journal_bytes = map(int, child.stdout.split())
    assert acked == batches + 1
    assert sunk < acked  # the crash left batches that only the journal held
    from core.store import JOURNAL_BYTES_MIN
    assert journal_bytes > 2 * JOURNAL_BYTES_MIN  # and the ring had gone round
    with core.open(reference, accounts_max=100, **workload.TIERS) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        for seed in range(1, batches + 1):
            store.create_transfers(workload.transfer_batch(seed, size=2000), workload.now_ns(seed))
        expected = store.state_hash()
    with core.open(crashed, accounts_max=100, **workload.TIERS) as store:
        assert store.journal_recovered_batches == acked - sunk > 0
        assert store.sequence == acked
        assert store.state_hash() == expected
        assert [entry[0] for entry in store.log_entries()] == list(range(1, acked + 1))
    with core.open(crashed, accounts_max=100, **workload.TIERS) as store:  # a clean reopen: nothing to recover
        assert store.journal_recovered_batches == 0 and store.sequence == acked


def test_the_sink_goes_on_when_something_else_failed_the_store(tmp_path):
    # A failed flush or checkpoint fails the store; the acknowledged entries still go into the
    # LMDB log (and a commit thread waiting for the ring's room is not left hanging).
    import core
    from core.store import JOURNAL_BYTES_MIN
    from tests import workload

    path = str(tmp_path / "store")
    with core.open(path, accounts_max=100, journal_bytes=JOURNAL_BYTES_MIN, **workload.TIERS) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        for seed in range(1, 6):
            store.create_transfers(workload.transfer_batch(seed), workload.now_ns(seed))
        acked = store.sequence
        store._failed = core.StoreError("a flush failed")  # as Store._job_result records it
        store.sink_journal()
        assert store._sunk_sequence == acked
    with core.open(path, accounts_max=100, **workload.TIERS) as store:
        assert store.journal_recovered_batches == 0 and store.sequence == acked


def test_a_new_store_does_not_read_a_journal_left_in_its_directory(tmp_path):
    import core
    from tests import workload

    path = str(tmp_path / "store")
    with core.open(path, accounts_max=100, **workload.TIERS) as store:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
    for name in os.listdir(path):  # the directory reset, all but the journal
        if name != "journal":
            target = os.path.join(path, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    assert os.path.getsize(os.path.join(path, "journal")) > 0
    store = core.open(path, accounts_max=100, **workload.TIERS)
    try:  # emptied before the new store's first frame: its first generation cannot meet old frames
        assert os.path.getsize(os.path.join(path, "journal")) == 0 and store.sequence == 0
    finally:
        store.close()


def test_a_format_4_directory_is_upgraded_and_older_builds_refuse_it(tmp_path):
    import lmdb
    import msgspec

    import core

    path = str(tmp_path / "store")
    with core.open(path, accounts_max=16, transfers_hot_max=4096):
        pass

    def stored_version(new=None):
        env = lmdb.open(path, max_dbs=4)
        with env.begin(write=new is not None) as txn:
            meta_db = env.open_db(b"meta", txn=txn)
            meta = msgspec.msgpack.decode(txn.get(b"meta", db=meta_db), type=dict)
            if new is not None:
                meta["version"] = new
                txn.put(b"meta", msgspec.msgpack.encode(meta), db=meta_db)
        env.close()
        return meta["version"]

    assert stored_version() == 5
    stored_version(new=4)  # as the build before the journal left it
    with core.open(path):
        pass
    assert stored_version() == 5  # a format-4 build ("this build reads 4") refuses it now
    stored_version(new=3)
    with pytest.raises(core.StoreError, match="store format 3"):
        core.open(path)


def test_the_ring_overwrites_only_frames_the_lmdb_log_holds(tmp_path, monkeypatch):
    # The rule that keeps acknowledged batches through a power loss while the ring goes round:
    # a frame's bytes are written over only after a synced LMDB commit holds its entry (the log
    # environment commits with sync and metasync: test_durability.py). Checked at every write
    # of the smallest ring, over many laps.
    import core
    from core.store import JOURNAL_BYTES_MIN, _SEQUENCE
    from tests import workload

    store = core.open(str(tmp_path / "store"), accounts_max=100, journal_bytes=JOURNAL_BYTES_MIN, **workload.TIERS)
    frames: dict[int, tuple[int, int]] = {}   # start offset -> (end offset, sequence) of each frame written
    problems, writes = [], []
    real_write = journal._pwritev_all

    def lmdb_last() -> int:
        with store._env.begin(db=store._log) as txn:
            cursor = txn.cursor()
            return _SEQUENCE.unpack(cursor.key())[0] if cursor.last() else 0

    def checked_write(fd, buffers, offset):
        end = offset + sum(len(buffer) for buffer in buffers)
        in_log = lmdb_last()
        for start, (frame_end, sequence) in list(frames.items()):
            if start < end and offset < frame_end:  # this write covers part of an earlier frame
                if sequence > in_log:
                    problems.append(f"frame {sequence} at {start} overwritten with the LMDB log at {in_log}")
                del frames[start]
        writes.append((offset, end))
        real_write(fd, buffers, offset)

    real_append = store._journal.append

    def recording_append(entries):
        placed = real_append(entries)
        for (sequence, entry), (frame_end, _) in zip(entries, placed):
            frames[frame_end - frame_bytes(len(entry))] = (frame_end, sequence)
        return placed

    real_release = store._journal.release

    def slow_release(nbytes):  # a slow sink: the writer fills the ring and waits for its room
        time.sleep(0.6)  # (0.3 s was not always slow enough on a busy machine: no wait, nothing tested)
        real_release(nbytes)

    monkeypatch.setattr(journal, "_pwritev_all", checked_write)
    store._journal.append = recording_append
    store._journal.release = slow_release
    try:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        for seed in range(1, 400):
            store.submit(2, workload.transfer_batch(seed, size=2000), workload.now_ns(seed))
        store.sink_journal()
    finally:
        store.close()
    assert store._journal.bytes_written > 3 * JOURNAL_BYTES_MIN  # it went round
    assert not problems, problems[:3]
    assert sum(1 for offset, _ in writes if offset == 0) >= 3  # the writes did start over at 0
    assert store._journal.waits > 0  # and waited for the sink's room: the rule was put to the test
