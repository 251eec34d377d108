"""Log archival: entries covered by a checkpoint move to segment files and stay replayable.

After ``Store.archive_log`` the LMDB log holds only the entries after the archived ones; the
store reopens from its checkpoint as before, recovers through the segments when it has no
usable checkpoint, ``replay-log`` still starts from entry 1, and a missing or damaged segment
is a clear error rather than a silently shorter history.
"""

import os
import shutil

import pytest

import core
from core import replay_log
from core.archive import LogArchive
from tally import cli
from tests.test_tiering import _payments

ACCOUNTS = core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)])


def _open(path):
    return core.open(path, accounts_max=16, transfers_hot_max=256, cold_epoch_transfers=32, id_filter_bytes=4096,
                     pending_max=64)


def _fill(store, first_batch, batches):
    for batch in range(first_batch, first_batch + batches):
        store.create_transfers(_payments(20, 1_000 + 20 * batch))


def _log_keys(store):
    store.sink_journal()  # the entries only the journal holds yet count too
    with store._env.begin(db=store._log) as txn:
        return sum(1 for _ in txn.cursor().iternext(keys=True, values=False))


def test_archived_entries_leave_the_log_and_the_store_reopens_the_same(tmp_path):
    path = str(tmp_path / "store")
    with _open(path) as store:
        store.create_accounts(ACCOUNTS)
        _fill(store, 0, 30)
        result = store.archive_log()
        assert result["archived_through"] == store.sequence == 31 and result["entries"] == 31
        assert _log_keys(store) == 0  # every entry was covered by the checkpoint just written
        assert [os.path.basename(p) for p in result["segments"]] == [f"log-{1:020d}-{31:020d}.tseg"]
        _fill(store, 30, 5)  # numbering goes on after the archived entries
        assert store.sequence == 36 and _log_keys(store) == 5
        expected = store.state_hash()
    with _open(path) as store:
        assert store.sequence == 36
        assert store.recovery.checkpoint_sequence == 31 and store.recovery.replayed_batches == 5
        assert store.state_hash() == expected
        assert (store.create_transfers(_payments(20, 1_000)) == core.Result.exists).all()
        again = store.archive_log()  # only what came since
        assert again["entries"] == 6 and again["archived_through"] == 37  # the retried batch is logged too
        assert len(store.archive.segments()) == 2
    result = replay_log.run(path, str(tmp_path / "replayed"))
    assert result["batches"] == 37 and result["equal"]


def test_without_a_checkpoint_recovery_replays_the_segments_then_the_log(tmp_path):
    path = str(tmp_path / "store")
    with _open(path) as store:
        store.create_accounts(ACCOUNTS)
        _fill(store, 0, 20)
        store.archive_log()
        _fill(store, 20, 10)
        expected = store.state_hash()
    shutil.rmtree(os.path.join(path, "checkpoint"))  # as if a power loss had damaged it
    with _open(path) as store:
        assert store.recovery.checkpoint_sequence == 0
        assert store.recovery.replayed_batches == 31
        assert store.state_hash() == expected


def test_a_missing_or_damaged_archive_is_a_clear_error_when_it_is_needed(tmp_path):
    path = str(tmp_path / "store")
    with _open(path) as store:
        store.create_accounts(ACCOUNTS)
        _fill(store, 0, 20)
        segment = store.archive_log()["segments"][0]
    good = open(segment, "rb").read()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    open(segment, "wb").write(bytes(damaged))
    with _open(path) as store:  # its checkpoint is fine: the archive is not read
        assert store.recovery.checkpoint_sequence == 21 and store.recovery.replayed_batches == 0
    shutil.rmtree(os.path.join(path, "checkpoint"))
    with pytest.raises(core.StoreError, match="archived.*(damaged|checksum)"):
        _open(path)
    os.unlink(segment)
    with pytest.raises(core.StoreError, match="archived.*no segment"):
        _open(path)
    open(segment, "wb").write(good)  # restored: everything is back
    with _open(path) as store:
        assert store.sequence == 21 and store.recovery.replayed_batches == 21


def test_a_crash_between_writing_a_segment_and_forgetting_its_entries_is_repaired(tmp_path, monkeypatch):
    path = str(tmp_path / "store")
    with _open(path) as store:
        store.create_accounts(ACCOUNTS)
        _fill(store, 0, 10)
        store.archive_log()
        _fill(store, 10, 10)
        expected = store.state_hash()
        def crash(first, through):
            raise OSError("crash before the log forgot the archived entries")

        monkeypatch.setattr(store, "_forget_archived", crash)
        with pytest.raises(OSError, match="crash"):
            store.archive_log()  # the segment is written; its entries are still in the log
        monkeypatch.undo()
        assert store._archive_meta.archived_through == 11 and len(store.archive.segments()) == 2
    with _open(path) as store:
        assert store.state_hash() == expected
        result = store.archive_log()
        assert result["archived_through"] == 21 and result["entries"] == 10
        assert [(s.first, s.last) for s in store.archive.segments()] == [(1, 11), (12, 21)]
    assert replay_log.run(path, str(tmp_path / "replayed"))["equal"]


def test_tally_log_archive_moves_segments_into_a_new_directory(tmp_path, capsys):
    path, elsewhere = str(tmp_path / "store"), str(tmp_path / "cold-storage")
    with _open(path) as store:
        store.create_accounts(ACCOUNTS)
        _fill(store, 0, 5)
        store.archive_log()
        _fill(store, 5, 5)
        expected = store.state_hash()
    assert cli.main(["log", "archive", "--data", path, "--into", elsewhere]) == 0
    assert "archived entries up to 11" in capsys.readouterr().out
    assert [(s.first, s.last) for s in LogArchive(elsewhere).segments()] == [(1, 6), (7, 11)]
    assert not LogArchive(os.path.join(path, "archive")).segments()
    shutil.rmtree(os.path.join(path, "checkpoint"))
    with _open(path) as store:  # found where the meta says
        assert store.recovery.replayed_batches == 11 and store.state_hash() == expected
    assert cli.main(["info", "--data", path]) == 0
    assert f"1..11 archived in {elsewhere}" in capsys.readouterr().out


def test_segments_this_store_did_not_write_are_refused_and_left_alone(tmp_path):
    # A copy of a data directory pointed at the same archive directory as the original: the
    # copy must not take the original's newer segments for leftovers of its own.
    original, copy, shared = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "shared")
    with _open(original) as store:
        store.create_accounts(ACCOUNTS)
        _fill(store, 0, 5)
        store.archive_log(into=shared)
    shutil.copytree(original, copy)
    with _open(original) as store:
        _fill(store, 5, 5)
        store.archive_log()
        expected = store.state_hash()
    open(os.path.join(shared, "operator-notes.tmp"), "w").write("not ours")
    with _open(copy) as store:
        _fill(store, 5, 3)  # diverges from the original
        with pytest.raises(core.StoreError, match="another store's"):
            store.archive_log()
    assert [(s.first, s.last) for s in LogArchive(shared).segments()] == [(1, 6), (7, 11)]
    assert os.path.exists(os.path.join(shared, "operator-notes.tmp"))
    assert replay_log.run(original, str(tmp_path / "replayed"))["equal"]
    with _open(original) as store:
        assert store.state_hash() == expected


def test_log_entries_start_at_the_first_entry_whatever_is_asked(tmp_path):
    with _open(str(tmp_path / "store")) as store:
        store.create_accounts(ACCOUNTS)
        _fill(store, 0, 3)
        assert [entry[0] for entry in store.log_entries(0)] == [1, 2, 3, 4]
        store.archive_log()
        _fill(store, 3, 1)
        assert [entry[0] for entry in store.log_entries(0)] == [1, 2, 3, 4, 5]
        assert [entry[0] for entry in store.log_entries(4)] == [4, 5]
