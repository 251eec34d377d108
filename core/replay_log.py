"""Replay a data directory's committed log into a fresh store and compare the state hashes.

``tally replay-log --data DIR --into NEWDIR``: every committed batch of ``DIR``'s log is applied
again, in order, at its logged engine time, into a new store at ``NEWDIR``; then the state hash
of the result is compared with that of ``DIR`` as a server would recover it (checkpoint plus the
log after it). Since the state machine has no clock and no randomness, the two must be equal:
this checks determinism, and, run with a new build over a production log, it tests an upgrade
on real traffic (docs/storage.md, "Replaying a log").

The state hash (``state_hash``) covers exactly what ``Ledger.snapshot`` returns, which is what a
checkpoint stores: the used rows of every state array and the scalar counters. It leaves out

* the capacities (``accounts_max``/``transfers_max``): configuration, not content; a store may
  be reopened with larger ones (``core.open``) and its state is the same. The snapshot holds
  only the used part of each array, so the capacity cannot leak in through it either;
* the id maps: derived from the account and transfer rows (which are hashed) and laid out by
  capacity; a checkpoint does not store them either, they are rebuilt from the rows;
* per-batch scratch (undo logs, the batch's expiring list): empty between batches.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
import time

import numpy as np

from core import constants
from core.store import RECORD_DTYPES, Store, StoreError

#: Versions the hash's encoding: a change to it (not to the state) changes every hash.
STATE_HASH_DOMAIN = b"tally state hash 1\n"
STATE_HASH_DIGEST_BYTES = 32

#: ``progress(batches_done, batches_total)`` is called after every this many batches, and at the end.
PROGRESS_INTERVAL_BATCHES = 256

#: Log entries read and unpacked ahead of the one being applied (each at most about 1 MiB).
READ_AHEAD_ENTRIES = 4

_LENGTH = struct.Struct("<Q")
_LMDB_DATA_FILE = "data.mdb"


class ReplayLogError(Exception):
    """replay-log refuses (a missing source, a non-empty target) or the replay went wrong."""


class ReplayDivergedError(ReplayLogError):
    """A replayed batch did not end at the timestamp its log entry recorded."""

    def __init__(self, sequence: int, replayed_timestamp: int, logged_timestamp: int):
        super().__init__(f"log entry {sequence}: replay diverged (timestamp {replayed_timestamp}, "
                         f"logged {logged_timestamp})")
        self.sequence = sequence


def state_hash(ledger) -> str:
    """Hex BLAKE2b-256 digest of the ledger's state: what ``ledger.snapshot()`` holds.

    Arrays in name order, each as its name, dtype, element count and byte length, then its used
    bytes; then the scalars (counts, last timestamp) in name order, each as name and u64 value.
    Every variable-length part is length-prefixed, so no two states share an encoding. Two
    ledgers with the same content hash equal whatever their capacities (see the module doc).
    """
    arrays, scalars = ledger.snapshot()
    digest = hashlib.blake2b(STATE_HASH_DOMAIN, digest_size=STATE_HASH_DIGEST_BYTES)
    digest.update(_LENGTH.pack(len(arrays)))
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name]).reshape(-1)
        raw = array.view(np.uint8)
        _update_text(digest, name)
        _update_text(digest, str(array.dtype.descr))
        digest.update(_LENGTH.pack(array.shape[0]))
        digest.update(_LENGTH.pack(raw.shape[0]))
        digest.update(raw)  # hashlib drops the GIL for large buffers
    digest.update(_LENGTH.pack(len(scalars)))
    for name in sorted(scalars):
        _update_text(digest, name)
        digest.update(_LENGTH.pack(int(scalars[name])))
    return digest.hexdigest()


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
                             2 * os.path.getsize(os.path.join(source_dir, _LMDB_DATA_FILE)))
        os.makedirs(into_dir, exist_ok=True)
        target = Store(into_dir, accounts_max=source.ledger.accounts_max,
                       transfers_max=source.ledger.transfers_max, map_size_bytes=map_size_bytes)
        try:
            batches = events = 0
            last = None
            started = time.perf_counter()
            for sequence, operation, now_ns, last_timestamp, body in _read_ahead(source.log_entries()):
                if sequence != batches + 1:
                    raise ReplayLogError(f"log entry {sequence} follows entry {batches}: the log has a gap")
                if operation not in RECORD_DTYPES:
                    raise ReplayLogError(f"log entry {sequence}: unknown operation {operation}")
                last = target.submit(operation, body.view(RECORD_DTYPES[operation]), now_ns)
                # submit applied the batch in memory before returning: its timestamp is final.
                if target.ledger.last_timestamp != last_timestamp:
                    raise ReplayDivergedError(sequence, target.ledger.last_timestamp, last_timestamp)
                batches += 1
                events += body.shape[0] // constants.RECORD_SIZE_BYTES
                if progress is not None and batches % PROGRESS_INTERVAL_BATCHES == 0:
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

def _update_text(digest, text: str) -> None:
    data = text.encode()
    digest.update(_LENGTH.pack(len(data)))
    digest.update(data)


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
