"""Replay a data directory's committed log into a fresh store and compare the state hashes.

``tally replay-log --data DIR --into NEWDIR``: every committed batch of ``DIR``'s log is applied
again (archived segments first: docs/tiering.md), in order, at its logged engine time, into a new store at ``NEWDIR``; then the state hash
of the result is compared with that of ``DIR`` as a server would recover it (checkpoint plus the
log after it). Since the state machine has no clock and no randomness, the two must be equal:
this checks determinism, and, run with a new build over a production log, it tests an upgrade
on real traffic (docs/storage.md, "Replaying a log").

The state hash is ``core.state_hash``: accounts, unresolved pendings, scalars and the whole
history through a chain of per-epoch digests, independent of capacities and of when the cold
tier was written (its module doc says exactly what it covers).
"""

from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np


from core import constants, memory
from core.state_hash import state_hash  # noqa: F401 - the hash replay-log compares, re-exported
from core.store import RECORD_DTYPES, Store, StoreError


#: ``progress(batches_done, batches_total)`` is called after every this many batches, and at the end.
PROGRESS_INTERVAL_BATCHES = 256

#: Log entries read and unpacked ahead of the one being applied (each at most about 1 MiB).
READ_AHEAD_ENTRIES = 4

_LMDB_DATA_FILE = "data.mdb"


class ReplayLogError(Exception):
    """replay-log refuses (a missing source, a non-empty target) or the replay went wrong."""


class ReplayDivergedError(ReplayLogError):
    """A replayed batch did not end at the timestamp its log entry recorded."""

    def __init__(self, sequence: int, replayed_timestamp: int, logged_timestamp: int):
        super().__init__(f"log entry {sequence}: replay diverged (timestamp {replayed_timestamp}, "
                         f"logged {logged_timestamp})")
        self.sequence = sequence


def run(source_dir: str, into_dir: str, *, progress=None) -> dict:
    """Re-apply ``source_dir``'s committed log into a fresh store at ``into_dir``; compare hashes.

    The source is opened as a server would (it must not be in use: its directory lock raises
    ``StoreError`` otherwise); its log and checkpoint are not written (opening a store rewrites
    its unchanged meta record). The target must be missing or an empty directory, and gets the
    source's capacities (they are not in the log: docs/storage.md). Every log entry is submitted in order at its
    logged ``now_ns``, pipelined (the next batch is applied while the previous one commits), and
    must end at its logged ``last_timestamp`` (else ``ReplayDivergedError`` naming the entry; the
    target is left as it is, for inspection). ``progress(batches_done, batches_total)``, if
    given, is called every ``PROGRESS_INTERVAL_BATCHES`` batches and at the end.

    Returns a dict: source, into, batches, events, accounts, transfers, seconds (the replay,
    from the first batch to the last commit), events_per_s, source_hash, replayed_hash, equal.
    A difference is reported (``equal`` False), not raised: the caller decides what it means.
    """
    source_dir, into_dir = os.fspath(source_dir), os.fspath(into_dir)
    _check_source(source_dir)
    _check_target(source_dir, into_dir)  # before the source's recovery, which may take a while
    try:
        source = Store(source_dir)
    except StoreError as error:
        raise StoreError(f"cannot open the source: {error}") from error
    try:
        source_hash = source.state_hash()
        batches_total = source.sequence
        # The target's log is the source's again, packed the same way: room for it, and then some.
        map_size_bytes = max(constants.LMDB_MAP_SIZE_BYTES_DEFAULT,
                             2 * (os.path.getsize(os.path.join(source_dir, _LMDB_DATA_FILE))
                                  + source.archive.disk_bytes()))
        os.makedirs(into_dir, exist_ok=True)
        target = Store(into_dir, accounts_max=source.ledger.accounts_max,
                       transfers_hot_max=source.ledger.transfers_hot_max, pending_max=source.ledger.pending_max,
                       cold_epoch_transfers=source.stats()["cold_epoch_transfers"],
                       id_filter_bytes=source.filter.size_bytes, limits_initial=source.limits_initial,
                       **source.product_capacities,
                       secret=source.secret, map_size_bytes=map_size_bytes)
        try:
            batches = events = 0
            last = None
            started = time.perf_counter()
            for sequence, operation, now_ns, last_timestamp, body, _, expired in _read_ahead(source.log_entries()):
                if sequence != batches + 1:
                    raise ReplayLogError(f"log entry {sequence} follows entry {batches}: the log has a gap")
                if operation not in RECORD_DTYPES:
                    raise ReplayLogError(f"log entry {sequence}: unknown operation {operation}")
                with target.expiries_as_logged(expired is None):  # an old log: no bound on its expiries
                    last = target.submit(operation, body.view(RECORD_DTYPES[operation]), now_ns)
                # submit applied the batch in memory before returning: its timestamp is final.
                if target.ledger.last_timestamp != last_timestamp:
                    raise ReplayDivergedError(sequence, target.ledger.last_timestamp, last_timestamp)
                if expired is not None and not np.array_equal(last.expired, expired):
                    raise ReplayLogError(f"log entry {sequence}: the replay's start closed other orders than the logged")
                batches += 1
                events += body.shape[0] // constants.RECORD_SIZE_BYTES
                if batches % PROGRESS_INTERVAL_BATCHES == 0:
                    # The source's log is read through LMDB's map: let its pages go as we pass.
                    memory.release_mapped_file(os.path.join(source_dir, _LMDB_DATA_FILE))
                    if progress is not None:
                        progress(batches, batches_total)
            if last is not None:
                last.result()  # commits finish in order: raises if this or any earlier one failed
            seconds = time.perf_counter() - started
            if progress is not None:
                progress(batches, batches_total)
            replayed_hash = target.state_hash()
            accounts, transfers = target.ledger.account_count, target.ledger.transfer_count
        finally:
            target.close()
    finally:
        source.close()
    return {
        "source": source_dir, "into": into_dir, "batches": batches, "events": events,
        "accounts": accounts, "transfers": transfers, "seconds": seconds,
        "events_per_s": events / seconds if seconds > 0 else 0.0,
        "source_hash": source_hash, "replayed_hash": replayed_hash, "equal": source_hash == replayed_hash,
    }


def summary(result: dict) -> str:
    """A few lines for a terminal."""
    verdict = ("equal: the replay reproduces the source's state exactly" if result["equal"]
               else "DIFFERENT: the replay does not reproduce the source's state")
    return "\n".join([
        f"replayed {result['source']} into {result['into']}",
        (f"  {result['batches']:,} batches, {result['events']:,} events in {result['seconds']:.2f} s "
         f"({result['events_per_s'] / 1e6:.2f} M events/s)"),
        f"  {result['accounts']:,} accounts, {result['transfers']:,} transfers",
        f"  source state hash   {result['source_hash']}",
        f"  replayed state hash {result['replayed_hash']}",
        f"  {verdict}",
    ])


# ---------------------------------------------------------------------- internals

def _check_source(source_dir: str) -> None:
    # core.open would create a store where none is: check first, so that a typo fails cleanly.
    if not os.path.isdir(source_dir):
        raise ReplayLogError(f"source {source_dir}: no such directory")
    if not os.path.isfile(os.path.join(source_dir, _LMDB_DATA_FILE)):
        raise ReplayLogError(f"source {source_dir}: not a Tally data directory (no {_LMDB_DATA_FILE})")


def _check_target(source_dir: str, into_dir: str) -> None:
    source_path, into_path = os.path.realpath(source_dir), os.path.realpath(into_dir)
    if into_path == source_path or into_path.startswith(source_path + os.sep):
        raise ReplayLogError(f"target {into_dir} is the source directory or inside it")
    if not os.path.exists(into_dir):
        return
    if not os.path.isdir(into_dir):
        raise ReplayLogError(f"target {into_dir} exists and is not a directory")
    names = os.listdir(into_dir)
    if _LMDB_DATA_FILE in names:
        raise ReplayLogError(f"target {into_dir} already holds a store: replay-log writes only into a fresh one")
    if names:
        raise ReplayLogError(f"target {into_dir} is not empty ({len(names)} entries): give a new or empty directory")


def _read_ahead(entries):
    """Iterate ``entries`` on a reader thread, a few ahead: unpacking (no GIL) overlaps applying.

    The generator runs, and is closed, on the reader thread alone (it holds an LMDB read
    transaction). Leaving the loop early stops the reader.
    """
    ready: queue.Queue = queue.Queue(maxsize=READ_AHEAD_ENTRIES)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for entry in entries:
                if not put(entry):
                    return
            put(end)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            put(error)
        finally:
            entries.close()

    reader = threading.Thread(target=read, name="tally-replay-log-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()
