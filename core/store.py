"""The durable ledger: the in-memory state machine, made durable by an LMDB log of batches.

Design:

* **The log is the source of truth.** Every batch that changes state is appended, as it came in
  (its 128-byte records, failed events included, losslessly packed by ``core.codec`` to about a
  fifth of their size, since the commit cost is the bytes written) with the engine time it was
  applied at, to the ``log`` database under a big-endian sequence number, in a write transaction
  with a synchronous commit (batches waiting together share one: group commit); results are
  returned only after the commit. Keys only ever
  grow, so each put is an append (``MDB_APPEND``) that dirties the last leaf page and a run of
  fresh overflow pages: no random page writes per batch, whatever the ids are.
* **State is a checkpoint plus the log after it.** Every ``checkpoint_interval_events`` events,
  the whole in-memory state is written in one transaction to the ``checkpoint`` database, tagged
  with the last sequence number it covers. Opening a store loads the newest checkpoint and
  replays the log after it through the same state machine; since the core has no clock and no
  randomness of its own, the result is exactly the state before the crash. Each replayed batch
  is checked to end at the timestamp the log recorded for it.
* **Apply, then commit, then reply.** A batch is applied in memory first (bad input raises
  before anything changes), then its log entry is committed by the commit thread, and only then
  are its results released. ``submit`` pipelines this: batch N+1 is applied while batch N is
  being committed (a bounded number in flight), which is how the store approaches the raw LMDB
  commit rate. If a commit fails, memory is ahead of the disk: the store refuses all further work
  (``StoreFailedError``) until reopened, which recovers exactly the committed batches.

Lookups never touch LMDB: they are answered from memory.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import os
import queue
import struct
import sys
import threading
import time
import traceback
import zlib

import lmdb
import msgspec
import numpy as np

from core import codec, constants
from core.ledger import Ledger
from core.records import ACCOUNT_DTYPE, TRANSFER_DTYPE

#: Log entry header: magic, format version, operation, event count, packed body bytes, now_ns,
#: last timestamp after the batch, CRC-32 of the rest of the header and the body, reserved.
#: The body follows: the events as packed by ``core.codec`` (docs/storage.md).
LOG_HEADER = struct.Struct("<4sHHIIQQII")
_CHECKSUMMED_HEADER_BYTES = 32  # the header fields before the checksum
LOG_MAGIC = b"TLOG"
LOG_VERSION = 1

OPERATION_CREATE_ACCOUNTS = 1
OPERATION_CREATE_TRANSFERS = 2

#: The record type of each logged operation: the one table the store, replay and the server use.
RECORD_DTYPES = {OPERATION_CREATE_ACCOUNTS: ACCOUNT_DTYPE, OPERATION_CREATE_TRANSFERS: TRANSFER_DTYPE}

_SEQUENCE = struct.Struct(">Q")
_CHUNK_KEY = struct.Struct(">I")
#: Checkpointed arrays that only ever grow at their end (records are immutable once a batch is
#: done): a checkpoint writes only their chunks from the previous checkpoint's end on. The value
#: says whether the array holds 128-byte records, packed as in the log.
_APPEND_ONLY = {"accounts": True, "transfers": True, "links": False}
_CHUNK_RECORDS = 1 << 16        # records (or 4-u32 links) per chunk of an append-only array
_CHUNK_BYTES = 8 << 20          # bytes per chunk of an array rewritten whole
_STORE_VERSION = 2              # 2: checkpoints in their own environment
CHECKPOINT_SUBDIRECTORY = "checkpoint"
LOCK_FILE_NAME = "tally.lock"


class StoreError(Exception):
    """The store cannot be opened or used as asked."""


class StoreFailedError(StoreError):
    """A commit failed after a batch was applied in memory: reopen the store to recover."""


class _Meta(msgspec.Struct, frozen=True):
    version: int
    accounts_max: int
    transfers_max: int


class _ArrayMeta(msgspec.Struct, frozen=True):
    chunks: int                   # chunk values stored under b"<name>/<chunk u32 BE>"
    items: int                    # elements of the array (records for record arrays)
    checksums: list[int]          # CRC-32 of each stored chunk value


class _CheckpointMeta(msgspec.Struct, frozen=True):
    sequence: int                 # last log sequence number the checkpoint includes
    scalars: dict[str, int]
    arrays: dict[str, _ArrayMeta]


class RecoveryStats(msgspec.Struct, frozen=True):
    """What opening the store did: the checkpoint it loaded and the log it replayed."""
    checkpoint_sequence: int
    checkpoint_load_s: float
    replayed_batches: int
    replayed_events: int
    replay_s: float
    checkpoint_error: str | None = None   # why the checkpoint was not used (the whole log was replayed)


class PendingBatch:
    """A batch applied in memory whose log entry is being committed."""

    __slots__ = ("sequence", "_results", "_done", "_error", "_callbacks", "_lock", "_finished")

    def __init__(self, sequence: int, results: np.ndarray):
        self.sequence = sequence
        self._results = results
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._callbacks: list = []
        self._lock = threading.Lock()
        self._finished = False

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        self._done.wait()

    def result(self) -> np.ndarray:
        """The batch's result codes, once it is committed; StoreFailedError if the commit failed."""
        self._done.wait()
        if self._error is not None:
            raise StoreFailedError(f"commit of batch {self.sequence} failed: {self._error}") from self._error
        return self._results

    def add_done_callback(self, callback) -> None:
        """Call ``callback(self)`` once the commit is over (at once if it is), on the commit thread.

        Callbacks run in commit order, before ``wait()`` returns: a server hands them to its event
        loop (``call_soon_threadsafe``) rather than doing work on the commit thread.
        """
        with self._lock:
            if not self._finished:
                self._callbacks.append(callback)
                return
        callback(self)

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        while True:
            # Callbacks added while these run join the queue (not run at once on their own
            # thread), so that all of them run in the order they were added.
            with self._lock:
                callbacks, self._callbacks = self._callbacks, []
                if not callbacks:
                    self._finished = True
                    break
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:  # a consumer's bug must not stop the commits of everyone else
                    traceback.print_exc()
        self._done.set()


class Store:
    """A durable ledger in an LMDB directory.

    >>> import core, tempfile
    >>> with core.open(tempfile.mkdtemp()) as store:
    ...     store.create_accounts(core.accounts_from_dicts([{"id": 1, "ledger": 156, "code": 1}])).tolist()
    [0]

    Results come back only after the batch is committed to disk (synchronous commit).
    ``prefault=True`` touches all preallocated memory at open (see ``Ledger.prefault``): a
    server should, so that page faults never land on the hot path.
    """

    def __init__(self, path, *, accounts_max: int | None = None, transfers_max: int | None = None,
                 map_size_bytes: int = constants.LMDB_MAP_SIZE_BYTES_DEFAULT,
                 checkpoint_interval_events: int = constants.CHECKPOINT_INTERVAL_EVENTS_DEFAULT,
                 checkpoint_interval_batches: int | None = None,
                 commit_pipeline_depth: int = constants.COMMIT_PIPELINE_DEPTH_DEFAULT,
                 prefault: bool = False, clock_ns=time.time_ns):
        if checkpoint_interval_events < 1 or (checkpoint_interval_batches is not None and checkpoint_interval_batches < 1):
            raise ValueError("checkpoint intervals must be >= 1")
        if not 1 <= commit_pipeline_depth <= constants.COMMIT_PIPELINE_DEPTH_MAX:
            raise ValueError(f"commit_pipeline_depth must be in 1..{constants.COMMIT_PIPELINE_DEPTH_MAX}")
        os.makedirs(path, exist_ok=True)
        self.path = path
        self._lock_file = _lock_directory(path)
        self._clock_ns = clock_ns
        self._checkpoint_interval_events = checkpoint_interval_events
        self._checkpoint_interval_batches = checkpoint_interval_batches  # None: by events only
        self._failed: BaseException | None = None
        self._env = lmdb.open(path, map_size=map_size_bytes, max_dbs=4, sync=True, metasync=True,
                              readahead=False, meminit=False)
        self._log = self._env.open_db(b"log")
        self._meta_db = self._env.open_db(b"meta")
        self._checkpoint_env = self._open_checkpoint_env(map_size_bytes)
        self._checkpointer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tally-checkpoint",
                                                                   initializer=_lower_thread_priority)
        self._checkpointing: concurrent.futures.Future | None = None
        self._snapshot_buffers: dict[str, np.ndarray] = {}
        self._pack_scratch = memoryview(bytearray(codec.packed_size_max(_CHUNK_RECORDS)))
        meta = self._load_or_create_meta(accounts_max, transfers_max)
        self.ledger = Ledger(accounts_max=meta.accounts_max, transfers_max=meta.transfers_max)
        self._checkpoint_meta: _CheckpointMeta | None = None
        self._prefault = prefault
        if prefault:
            self.ledger.prefault()
        self.recovery = self._recover()
        self._committed_sequence = self._applied_sequence = self._last_sequence()
        self._batches_since_checkpoint = self.recovery.replayed_batches
        self._events_since_checkpoint = self.recovery.replayed_events
        self._last_pending: PendingBatch | None = None
        self._in_flight = threading.BoundedSemaphore(commit_pipeline_depth)
        self._entries = [bytearray(LOG_HEADER.size + codec.packed_size_max(constants.BATCH_EVENTS_MAX))
                         for _ in range(commit_pipeline_depth + 1)]
        self._commits: queue.SimpleQueue = queue.SimpleQueue()
        self._committer = threading.Thread(target=self._commit_loop, name="tally-commit", daemon=True)
        self._committer.start()
        # A commit thread beside a busy main thread waits a whole switch interval (5 ms by
        # default) for the GIL after each commit; at 0.2 ms it hands back promptly
        # (shared/ARCHITECTURE.md has the measurement).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0002))

    # ------------------------------------------------------------------ operations

    def create_accounts(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Create accounts durably; see ``Ledger.create_accounts``. Returns uint32 Result codes."""
        return self.submit(OPERATION_CREATE_ACCOUNTS, batch, now_ns).result()

    def create_transfers(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Create transfers durably; see ``Ledger.create_transfers``. Returns uint32 Result codes."""
        return self.submit(OPERATION_CREATE_TRANSFERS, batch, now_ns).result()

    def submit(self, operation: int, batch, now_ns: int | None = None) -> "PendingBatch":
        """Apply a batch in memory now and queue its log entry for commit; returns at once.

        This is the pipelined form of ``create_accounts``/``create_transfers``: while batch N is
        being committed (the commit thread holds no GIL), batch N+1 can already be applied. The
        results are only released by ``PendingBatch.result()`` once the batch is committed. At most
        ``commit_pipeline_depth`` batches are applied but not yet committed: beyond that, submit
        waits. Bad input raises here, before anything changes.
        """
        self._check_usable()
        if operation not in RECORD_DTYPES:
            raise ValueError(f"unknown operation {operation}")
        apply = self._applier(operation)
        if now_ns is None:
            now_ns = self._clock_ns()
        self._in_flight.acquire()
        try:
            results = apply(batch, now_ns)
        except BaseException:
            self._in_flight.release()
            raise
        records = _raw(batch)
        count = records.shape[0] // constants.RECORD_SIZE_BYTES
        self._applied_sequence += 1
        # A ring of entry buffers: the one reused now belongs to a batch already committed,
        # since at most commit_pipeline_depth batches are in flight.
        entry = self._entries[self._applied_sequence % len(self._entries)]
        body_bytes = codec.pack_into(records, entry, LOG_HEADER.size)
        LOG_HEADER.pack_into(entry, 0, LOG_MAGIC, LOG_VERSION, operation, count, body_bytes, now_ns,
                             self.ledger.last_timestamp, 0, 0)
        view = memoryview(entry)
        checksum = _entry_checksum(view[:_CHECKSUMMED_HEADER_BYTES], view[LOG_HEADER.size:LOG_HEADER.size + body_bytes])
        struct.pack_into("<I", entry, _CHECKSUMMED_HEADER_BYTES, checksum)
        pending = PendingBatch(self._applied_sequence, results)
        self._last_pending = pending
        self._commits.put((pending, memoryview(entry)[:LOG_HEADER.size + body_bytes]))
        self._batches_since_checkpoint += 1
        self._events_since_checkpoint += count
        if self._checkpoint_due():
            self._start_checkpoint()
        return pending

    def lookup_accounts(self, ids):
        """Accounts by id, from memory, after every submitted batch is committed."""
        self._drain()
        return self.ledger.lookup_accounts(ids)

    def lookup_transfers(self, ids):
        """Transfers by id, from memory, after every submitted batch is committed."""
        self._drain()
        return self.ledger.lookup_transfers(ids)

    def get_account_transfers(self, account_id, **query):
        """See ``Ledger.get_account_transfers``; after every submitted batch is committed."""
        self._drain()
        return self.ledger.get_account_transfers(account_id, **query)

    @property
    def sequence(self) -> int:
        """Sequence number of the last committed batch (0 when the log is empty)."""
        return self._committed_sequence

    def state_hash(self) -> str:
        """Hex digest of the committed state (``core.replay_log.state_hash``); waits for the commits."""
        self._drain()
        from core import replay_log  # here, not at the top: replay_log imports this module
        return replay_log.state_hash(self.ledger)

    def log_entries(self, first_sequence: int = 1):
        """The committed log entries from ``first_sequence`` on, in order, checked and unpacked.

        Yields ``(sequence, operation, now_ns, last_timestamp, body)`` as recovery replays them
        (``body``: the batch's 128-byte records, a uint8 array). Read-only: one LMDB read
        transaction, held until the iteration ends; finish or close the iterator before closing
        the store.
        """
        if self._env is None:
            raise StoreError("the store is closed")
        with self._env.begin(db=self._log, buffers=True) as txn:
            cursor = txn.cursor()
            if cursor.set_range(_SEQUENCE.pack(first_sequence)):
                for key, value in cursor:
                    yield _decode_entry(_SEQUENCE.unpack(key)[0], value)

    def checkpoint(self) -> None:
        """Write the in-memory state as the new checkpoint now, and wait until it is durable.

        The store also checkpoints by itself every ``checkpoint_interval_events`` events (and
        every ``checkpoint_interval_batches`` batches, if that is set), in
        the background (see ``_start_checkpoint``); this waits for such a checkpoint first.
        """
        self._wait_checkpoint()
        self._check_usable()
        self._start_checkpoint()
        self._wait_checkpoint()

    def _start_checkpoint(self) -> None:
        """Snapshot the state after the last applied batch; write it on the checkpoint thread.

        Only the arrays that change in place (balances and features, pending states, the expiry
        heap) are copied here, on the submitting thread, between two batches: a few tens of
        milliseconds per million accounts. Append-only arrays (account and transfer records,
        chain links) are read by the checkpoint thread straight from the ledger: their rows up to
        the snapshot's counts never change again, and new rows go after them. The checkpoint
        lives in its own LMDB environment, so that writing it never holds up a log commit, and
        it is committed only after the batch it ends with is: it never covers an entry the log
        does not have.
        """
        arrays, scalars = self.ledger.snapshot()
        arrays = {name: array if name in _APPEND_ONLY else self._snapshot_copy(name, array)
                  for name, array in arrays.items()}
        self._batches_since_checkpoint = self._events_since_checkpoint = 0
        self._checkpointing = self._checkpointer.submit(
            self._write_checkpoint, self._applied_sequence, self._last_pending, arrays, scalars)

    def _snapshot_copy(self, name: str, array: np.ndarray) -> np.ndarray:
        # Into a buffer kept from one checkpoint to the next: fresh memory would cost a page
        # fault per 4 KiB on every checkpoint (on this VM about 0.45 s per 128 MiB).
        buffer = self._snapshot_buffers.get(name)
        if buffer is None or buffer.shape[0] < array.shape[0]:
            buffer = np.empty(max(array.shape[0], 2 * buffer.shape[0] if buffer is not None else 0), array.dtype)
            self._snapshot_buffers[name] = buffer
        np.copyto(buffer[:array.shape[0]], array)
        return buffer[:array.shape[0]]

    def _wait_checkpoint(self) -> None:
        """Wait for the checkpoint being written, if any; raise what writing it raised."""
        if self._checkpointing is not None:
            checkpointing, self._checkpointing = self._checkpointing, None
            checkpointing.result()

    def _checkpoint_due(self) -> bool:
        if (self._events_since_checkpoint < self._checkpoint_interval_events
                and (self._checkpoint_interval_batches is None
                     or self._batches_since_checkpoint < self._checkpoint_interval_batches)):
            return False
        if self._checkpointing is None:
            return True
        if not self._checkpointing.done():
            return False  # the previous one is still being written: try again after the next batch
        try:
            self._wait_checkpoint()
        except Exception:  # the log still holds everything; report it, and try again
            traceback.print_exc()
        return True

    def _write_checkpoint(self, sequence: int, last_pending: "PendingBatch | None", arrays, scalars) -> None:
        previous = self._checkpoint_meta.arrays if self._checkpoint_meta else {}
        written = {}
        with self._checkpoint_env.begin(write=True) as txn:
            for name, array in arrays.items():
                flat = np.ascontiguousarray(array).reshape(-1)
                prefix = name.encode() + b"/"
                old = previous.get(name)
                if name in _APPEND_ONLY:
                    per_chunk = _CHUNK_RECORDS * (4 if name == "links" else 1)
                    chunks = -(-flat.shape[0] // per_chunk)
                    # Rewrite from the chunk the previous checkpoint ended in (it may be partial).
                    first = old.items // per_chunk if old and old.items <= flat.shape[0] else 0
                    checksums = list(old.checksums[:first]) if old else []
                    for i in range(first, chunks):
                        part = flat[i * per_chunk:(i + 1) * per_chunk]
                        if _APPEND_ONLY[name]:
                            # Into a kept scratch buffer: packing then holds no GIL and allocates
                            # nothing (a fresh buffer per chunk cost page faults with the GIL held).
                            value = self._pack_scratch[:codec.pack_into(part, self._pack_scratch)]
                        else:
                            value = part.view(np.uint8)
                        txn.put(prefix + _CHUNK_KEY.pack(i), value)
                        checksums.append(zlib.crc32(value))
                else:
                    raw = flat.view(np.uint8)
                    chunks = -(-raw.shape[0] // _CHUNK_BYTES)
                    checksums = []
                    for i in range(chunks):
                        value = raw[i * _CHUNK_BYTES:(i + 1) * _CHUNK_BYTES]
                        txn.put(prefix + _CHUNK_KEY.pack(i), value)
                        checksums.append(zlib.crc32(value))
                for i in range(chunks, old.chunks if old else 0):
                    txn.delete(prefix + _CHUNK_KEY.pack(i))
                written[name] = _ArrayMeta(chunks=chunks, items=flat.shape[0], checksums=checksums)
            meta = _CheckpointMeta(sequence=sequence, scalars=scalars, arrays=written)
            txn.put(b"meta", msgspec.msgpack.encode(meta))
            if last_pending is not None:
                last_pending.result()  # raises (and aborts this transaction) if its commit failed
        self._checkpoint_meta = meta

    def close(self) -> None:
        """Wait for submitted batches and a checkpoint being written, stop the threads, close LMDB."""
        if self._env is None:
            return
        try:
            if self._failed is None:
                self._drain()
        finally:
            self._commits.put(None)
            self._committer.join()
            try:
                self._wait_checkpoint()
            except Exception:  # the log holds everything the checkpoint would have
                traceback.print_exc()
            self._checkpointer.shutdown(wait=True)
            self._checkpoint_env.close()
            self._env.close()
            self._env = None
            self._lock_file.close()  # releases the directory's lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_usable(self):
        if self._failed is not None:
            raise StoreFailedError("a commit failed earlier; reopen the store to recover") from self._failed
        if self._env is None:
            raise StoreError("the store is closed")

    @property
    def last_submitted(self) -> "PendingBatch | None":
        """The last batch submitted (committed or not), None before the first."""
        return self._last_pending

    def _drain(self):
        """Wait until every submitted batch is committed; raise if a commit failed."""
        self._check_usable()
        if self._last_pending is not None:
            self._last_pending.wait()
        self._check_usable()

    def _commit_loop(self):
        # The only thread that writes the log, in submission order; py-lmdb drops the GIL in put
        # and commit. Group commit: every batch already waiting goes into the same write
        # transaction, so that a slow fsync is paid once for all of them instead of once each
        # (results are still released only after the commit that holds their batch).
        stopping = False
        while not stopping:
            group = [self._commits.get()]
            while True:
                try:
                    group.append(self._commits.get_nowait())
                except queue.Empty:
                    break
            if group[-1] is None:
                stopping = True
                group.pop()
            if self._failed is None and group:
                try:
                    with self._env.begin(write=True, db=self._log) as txn:
                        for pending, entry in group:
                            # An append refused (a key not after the last) must never be acked.
                            if not txn.put(_SEQUENCE.pack(pending.sequence), entry, append=True):
                                raise StoreError(f"log entry {pending.sequence} was not appended: "
                                                 "the log does not end where this store thinks it does")
                    self._committed_sequence = group[-1][0].sequence
                except BaseException as error:  # the disk, the map size: nothing more is acked
                    self._failed = error
            for pending, _ in group:
                pending._finish(self._failed)
                self._in_flight.release()

    def _open_checkpoint_env(self, map_size_bytes: int):
        """The checkpoints' LMDB environment: its own write lock, and no fsync.

        Its own environment, so that writing a checkpoint never holds up a log commit; no
        fsync, because a checkpoint only saves replay time: the OS writes it back smoothly
        instead of in one burst that would stall the log's synchronous commits. After a power
        loss it may be damaged; recovery then replays the whole log (``_recover``). If it cannot
        even be opened, it is set aside and a new one started.
        """
        directory = os.path.join(self.path, CHECKPOINT_SUBDIRECTORY)
        options = dict(map_size=map_size_bytes, sync=False, metasync=False, readahead=False, meminit=False)
        try:
            return lmdb.open(directory, **options)
        except lmdb.Error as error:
            aside = f"{directory}.damaged-{time.time_ns()}"
            print(f"tally: {self.path}: checkpoint environment unreadable ({error}); moved to {aside}", file=sys.stderr)
            os.rename(directory, aside)
            return lmdb.open(directory, **options)

    def _load_or_create_meta(self, accounts_max, transfers_max) -> _Meta:
        with self._env.begin(write=True, db=self._meta_db) as txn:
            stored = txn.get(b"meta")
            if stored is not None:
                meta = msgspec.msgpack.decode(stored, type=_Meta)
                if meta.version != _STORE_VERSION:
                    raise StoreError(f"{self.path}: store format {meta.version}, this build reads {_STORE_VERSION}")
                # Capacities may grow on reopen, never shrink below what was configured.
                meta = _Meta(_STORE_VERSION, max(meta.accounts_max, accounts_max or 0),
                             max(meta.transfers_max, transfers_max or 0))
            else:
                meta = _Meta(_STORE_VERSION, accounts_max or constants.ACCOUNTS_MAX_DEFAULT,
                             transfers_max or constants.TRANSFERS_MAX_DEFAULT)
            txn.put(b"meta", msgspec.msgpack.encode(meta))
        return meta

    def _last_sequence(self) -> int:
        with self._env.begin(db=self._log) as txn:
            cursor = txn.cursor()
            return _SEQUENCE.unpack(cursor.key())[0] if cursor.last() else 0

    def _recover(self) -> RecoveryStats:
        started = time.perf_counter()
        checkpoint_sequence = 0
        checkpoint_error = None
        try:
            with self._checkpoint_env.begin(buffers=True) as txn:
                raw_meta = txn.get(b"meta")
                if raw_meta is not None:
                    meta = msgspec.msgpack.decode(bytes(raw_meta), type=_CheckpointMeta)
                    arrays = {name: self._load_array(txn, name, array_meta)
                              for name, array_meta in meta.arrays.items()}
                    if meta.sequence > self._last_sequence():
                        raise StoreError(f"checkpoint at batch {meta.sequence} is past the log's end")
                    self.ledger.restore(arrays, meta.scalars)
                    checkpoint_sequence = meta.sequence
                    self._checkpoint_meta = meta
        except Exception as error:  # noqa: BLE001 - whatever is wrong with it, the log is enough
            # A checkpoint only saves replay time: the log holds every batch since the first.
            # So a damaged one (its writes are not synced: see _open_checkpoint_env) is reported
            # and the whole log is replayed instead. The next checkpoint rewrites everything.
            checkpoint_error = str(error)
            print(f"tally: {self.path}: checkpoint not used, replaying the whole log: {error}", file=sys.stderr)
            self.ledger = Ledger(accounts_max=self.ledger.accounts_max, transfers_max=self.ledger.transfers_max)
            if self._prefault:
                self.ledger.prefault()
            checkpoint_sequence, self._checkpoint_meta = 0, None
        loaded = time.perf_counter()
        batches = events = 0
        # Entry N+1 is read and unpacked on a second thread (unpacking holds no GIL) while
        # entry N is applied: the replay then costs about what the state machine does.
        with self._env.begin(db=self._log, buffers=True) as txn, \
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tally-replay") as reader:
            cursor = txn.cursor()
            decoding = None
            if cursor.set_range(_SEQUENCE.pack(checkpoint_sequence + 1)):
                for key, value in cursor:
                    upcoming = reader.submit(_decode_entry, _SEQUENCE.unpack(key)[0], value)
                    if decoding is not None:
                        events += self._replay_entry(*decoding.result())
                        batches += 1
                    decoding = upcoming
            if decoding is not None:
                events += self._replay_entry(*decoding.result())
                batches += 1
        return RecoveryStats(checkpoint_sequence, loaded - started, batches, events, time.perf_counter() - loaded,
                             checkpoint_error)

    def _applier(self, operation: int):
        """The ledger method that applies a batch of ``operation`` (a key of RECORD_DTYPES)."""
        if operation == OPERATION_CREATE_ACCOUNTS:
            return self.ledger.create_accounts
        return self.ledger.create_transfers

    def _load_array(self, txn, name, meta: _ArrayMeta) -> bytes:
        parts = []
        for i in range(meta.chunks):
            part = txn.get(name.encode() + b"/" + _CHUNK_KEY.pack(i))
            if part is None:
                raise StoreError(f"{self.path}: checkpoint chunk {i} of {name} is missing")
            if len(meta.checksums) != meta.chunks or zlib.crc32(part) != meta.checksums[i]:
                raise StoreError(f"{self.path}: checkpoint chunk {i} of {name} is damaged (checksum mismatch)")
            if _APPEND_ONLY.get(name):
                records = min(_CHUNK_RECORDS, meta.items - i * _CHUNK_RECORDS)
                try:
                    part = codec.unpack(part, records)
                except ValueError as error:
                    raise StoreError(f"{self.path}: checkpoint chunk {i} of {name}: {error}") from None
            parts.append(part)
        return b"".join(parts)

    def _replay_entry(self, sequence, operation, now_ns, last_timestamp, body) -> int:
        count = body.shape[0] // constants.RECORD_SIZE_BYTES
        if operation not in RECORD_DTYPES:
            raise StoreError(f"log entry {sequence}: unknown operation {operation}")
        self._applier(operation)(body.view(RECORD_DTYPES[operation]), now_ns)
        if self.ledger.last_timestamp != last_timestamp:
            raise StoreError(f"log entry {sequence}: replay diverged (timestamp {self.ledger.last_timestamp}, "
                             f"logged {last_timestamp})")
        return count


#: Niceness of the checkpoint thread: it only saves replay time, so it yields the CPU to the
#: threads that apply, commit and answer batches (its heavy parts hold no GIL).
CHECKPOINT_THREAD_NICENESS = 10


def _lower_thread_priority() -> None:
    try:  # Linux: setpriority on a thread id applies to that thread alone
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECKPOINT_THREAD_NICENESS)
    except (AttributeError, OSError):  # elsewhere, or not permitted: run at normal priority
        pass


def _lock_directory(path: str):
    """Hold an exclusive lock on the data directory while a store has it open.

    Two processes appending to one log would number their batches from the same end; a second
    ``core.open`` of a directory in use fails at once instead.
    """
    import fcntl

    lock_file = builtins.open(os.path.join(path, LOCK_FILE_NAME), "a+b")  # held until close()
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreError(f"{path}: in use by another process (its lock file {LOCK_FILE_NAME} is held)") from None
    return lock_file


def _entry_checksum(header, body) -> int:
    # zlib's CRC-32 runs without the GIL on large buffers; about 0.1 ms for a packed batch.
    return zlib.crc32(body, zlib.crc32(header))


def _decode_entry(sequence: int, value):
    """Check and unpack one log entry: (sequence, operation, now_ns, last_timestamp, body)."""
    if len(value) < LOG_HEADER.size:
        raise StoreError(f"log entry {sequence} is truncated")
    magic, version, operation, count, body_bytes, now_ns, last_timestamp, checksum, _ = LOG_HEADER.unpack_from(value, 0)
    if magic != LOG_MAGIC or version != LOG_VERSION:
        raise StoreError(f"log entry {sequence}: bad magic or version {version}")
    if len(value) != LOG_HEADER.size + body_bytes or count > constants.BATCH_EVENTS_MAX:
        raise StoreError(f"log entry {sequence}: {len(value)} bytes, header says {body_bytes} for {count} events")
    view = memoryview(value)
    if _entry_checksum(view[:_CHECKSUMMED_HEADER_BYTES], view[LOG_HEADER.size:]) != checksum:
        raise StoreError(f"log entry {sequence}: checksum mismatch (the entry is damaged)")
    try:
        body = codec.unpack(memoryview(value)[LOG_HEADER.size:], count)
    except ValueError as error:
        raise StoreError(f"log entry {sequence}: {error}") from None
    return sequence, operation, now_ns, last_timestamp, body


def _raw(batch) -> memoryview:
    """The batch's bytes (already validated by the ledger)."""
    if isinstance(batch, np.ndarray):
        return memoryview(np.ascontiguousarray(batch).view(np.uint8).reshape(-1))
    return memoryview(batch).cast("B")


def open(path, **options) -> Store:  # noqa: A001 - mirrors lmdb.open / builtins on purpose
    """Open (or create) the durable ledger in directory ``path``; see ``Store``."""
    return Store(path, **options)
