"""The durable ledger: the in-memory state machine, made durable by an LMDB log of batches.

Design:

* **The log is the source of truth.** Every batch that changes state is appended, as it came in
  (the raw 128-byte records, failed events included) with the engine time it was applied at, to
  the ``log`` database under a big-endian sequence number. One write transaction and one
  synchronous commit per batch; results are returned only after the commit. Keys only ever
  grow, so each put is an append (``MDB_APPEND``) that dirties the last leaf page and a run of
  fresh overflow pages: no random page writes per batch, whatever the ids are.
* **State is a checkpoint plus the log after it.** Every ``checkpoint_interval_batches`` batches,
  the whole in-memory state is written in one transaction to the ``checkpoint`` database, tagged
  with the last sequence number it covers. Opening a store loads the newest checkpoint and
  replays the log after it through the same state machine; since the core has no clock and no
  randomness of its own, the result is exactly the state before the crash. Each replayed batch
  is checked to end at the timestamp the log recorded for it.
* **Apply, then commit, then reply.** A batch is applied in memory first (bad input raises
  before anything changes), then logged. If the commit fails, memory is ahead of the disk: the
  store refuses all further work (``StoreFailedError``) until reopened, which recovers exactly
  the committed batches.

Lookups never touch LMDB: they are answered from memory.
"""

from __future__ import annotations

import os
import struct
import time

import lmdb
import msgspec
import numpy as np

from core import constants
from core.ledger import Ledger
from core.records import ACCOUNT_DTYPE, TRANSFER_DTYPE

#: Log entry header: magic, format version, operation, event count, now_ns, last timestamp after.
LOG_HEADER = struct.Struct("<4sHHIIQQ")
LOG_MAGIC = b"TLOG"
LOG_VERSION = 1

OPERATION_CREATE_ACCOUNTS = 1
OPERATION_CREATE_TRANSFERS = 2

_SEQUENCE = struct.Struct(">Q")
_CHUNK_KEY = struct.Struct(">I")
_CHUNK_BYTES = 8 << 20
_STORE_VERSION = 1


class StoreError(Exception):
    """The store cannot be opened or used as asked."""


class StoreFailedError(StoreError):
    """A commit failed after a batch was applied in memory: reopen the store to recover."""


class _Meta(msgspec.Struct, frozen=True):
    version: int
    accounts_max: int
    transfers_max: int


class _CheckpointMeta(msgspec.Struct, frozen=True):
    sequence: int                 # last log sequence number the checkpoint includes
    scalars: dict[str, int]
    chunks: dict[str, int]        # array name -> number of chunks


class RecoveryStats(msgspec.Struct, frozen=True):
    """What opening the store did: the checkpoint it loaded and the log it replayed."""
    checkpoint_sequence: int
    checkpoint_load_s: float
    replayed_batches: int
    replayed_events: int
    replay_s: float


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
                 checkpoint_interval_batches: int = constants.CHECKPOINT_INTERVAL_BATCHES_DEFAULT,
                 prefault: bool = False, clock_ns=time.time_ns):
        if checkpoint_interval_batches < 1:
            raise ValueError("checkpoint_interval_batches must be >= 1")
        os.makedirs(path, exist_ok=True)
        self.path = path
        self._clock_ns = clock_ns
        self._checkpoint_interval = checkpoint_interval_batches
        self._failed: BaseException | None = None
        self._env = lmdb.open(path, map_size=map_size_bytes, max_dbs=4, sync=True, metasync=True,
                              readahead=False, meminit=False)
        self._log = self._env.open_db(b"log")
        self._meta_db = self._env.open_db(b"meta")
        self._checkpoint_db = self._env.open_db(b"checkpoint")
        meta = self._load_or_create_meta(accounts_max, transfers_max)
        self.ledger = Ledger(accounts_max=meta.accounts_max, transfers_max=meta.transfers_max)
        if prefault:
            self.ledger.prefault()
        self._header = bytearray(LOG_HEADER.size)
        self.recovery = self._recover()
        self._sequence = self._last_sequence()
        self._batches_since_checkpoint = self.recovery.replayed_batches

    # ------------------------------------------------------------------ operations

    def create_accounts(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Create accounts durably; see ``Ledger.create_accounts``. Returns uint32 Result codes."""
        return self._apply(OPERATION_CREATE_ACCOUNTS, batch, now_ns)

    def create_transfers(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Create transfers durably; see ``Ledger.create_transfers``. Returns uint32 Result codes."""
        return self._apply(OPERATION_CREATE_TRANSFERS, batch, now_ns)

    def lookup_accounts(self, ids):
        self._check_usable()
        return self.ledger.lookup_accounts(ids)

    def lookup_transfers(self, ids):
        self._check_usable()
        return self.ledger.lookup_transfers(ids)

    def get_account_transfers(self, account_id, **query):
        self._check_usable()
        return self.ledger.get_account_transfers(account_id, **query)

    @property
    def sequence(self) -> int:
        """Sequence number of the last committed batch (0 when the log is empty)."""
        return self._sequence

    def checkpoint(self) -> None:
        """Write the whole in-memory state as the new checkpoint, in one synchronous commit."""
        self._check_usable()
        arrays, scalars = self.ledger.snapshot()
        chunks = {}
        with self._env.begin(write=True, db=self._checkpoint_db) as txn:
            txn.drop(self._checkpoint_db, delete=False)
            for name, array in arrays.items():
                raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
                count = 0
                for start in range(0, raw.shape[0], _CHUNK_BYTES):
                    txn.put(name.encode() + b"/" + _CHUNK_KEY.pack(count), raw[start:start + _CHUNK_BYTES])
                    count += 1
                chunks[name] = count
            meta = _CheckpointMeta(sequence=self._sequence, scalars=scalars, chunks=chunks)
            txn.put(b"meta", msgspec.msgpack.encode(meta))
        self._batches_since_checkpoint = 0

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

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

    def _apply(self, operation, batch, now_ns):
        self._check_usable()
        if now_ns is None:
            now_ns = self._clock_ns()
        apply = self.ledger.create_accounts if operation == OPERATION_CREATE_ACCOUNTS else self.ledger.create_transfers
        # Bad input raises here, before anything is changed or written.
        results = apply(batch, now_ns)
        body = _raw(batch, ACCOUNT_DTYPE if operation == OPERATION_CREATE_ACCOUNTS else TRANSFER_DTYPE)
        count = body.shape[0] // constants.RECORD_SIZE_BYTES
        LOG_HEADER.pack_into(self._header, 0, LOG_MAGIC, LOG_VERSION, operation, count, 0, now_ns,
                             self.ledger.last_timestamp)
        sequence = self._sequence + 1
        try:
            with self._env.begin(write=True, db=self._log) as txn:
                txn.put(_SEQUENCE.pack(sequence), b"".join((self._header, body)), append=True)
        except BaseException as error:
            self._failed = error
            raise StoreFailedError(f"commit of batch {sequence} failed: {error}") from error
        self._sequence = sequence
        self._batches_since_checkpoint += 1
        if self._batches_since_checkpoint >= self._checkpoint_interval:
            self.checkpoint()
        return results

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
        with self._env.begin(db=self._checkpoint_db, buffers=True) as txn:
            raw_meta = txn.get(b"meta")
            if raw_meta is not None:
                meta = msgspec.msgpack.decode(bytes(raw_meta), type=_CheckpointMeta)
                arrays = {}
                for name, count in meta.chunks.items():
                    parts = [txn.get(name.encode() + b"/" + _CHUNK_KEY.pack(i)) for i in range(count)]
                    if any(part is None for part in parts):
                        raise StoreError(f"{self.path}: checkpoint chunk of {name} missing")
                    arrays[name] = b"".join(parts)
                self.ledger.restore(arrays, meta.scalars)
                checkpoint_sequence = meta.sequence
        loaded = time.perf_counter()
        batches = events = 0
        with self._env.begin(db=self._log, buffers=True) as txn:
            cursor = txn.cursor()
            if cursor.set_range(_SEQUENCE.pack(checkpoint_sequence + 1)):
                for key, value in cursor:
                    count = self._replay_entry(_SEQUENCE.unpack(key)[0], value)
                    batches += 1
                    events += count
        return RecoveryStats(checkpoint_sequence, loaded - started, batches, events, time.perf_counter() - loaded)

    def _replay_entry(self, sequence, value) -> int:
        if len(value) < LOG_HEADER.size:
            raise StoreError(f"log entry {sequence} is truncated")
        magic, version, operation, count, _, now_ns, last_timestamp = LOG_HEADER.unpack_from(value, 0)
        if magic != LOG_MAGIC or version != LOG_VERSION:
            raise StoreError(f"log entry {sequence}: bad magic or version {version}")
        body = memoryview(value)[LOG_HEADER.size:]
        if len(body) != count * constants.RECORD_SIZE_BYTES:
            raise StoreError(f"log entry {sequence}: {len(body)} bytes for {count} events")
        if operation == OPERATION_CREATE_ACCOUNTS:
            self.ledger.create_accounts(body, now_ns)
        elif operation == OPERATION_CREATE_TRANSFERS:
            self.ledger.create_transfers(body, now_ns)
        else:
            raise StoreError(f"log entry {sequence}: unknown operation {operation}")
        if self.ledger.last_timestamp != last_timestamp:
            raise StoreError(f"log entry {sequence}: replay diverged (timestamp {self.ledger.last_timestamp}, "
                             f"logged {last_timestamp})")
        return count


def _raw(batch, dtype) -> memoryview:
    if isinstance(batch, np.ndarray):
        return memoryview(np.ascontiguousarray(batch).view(np.uint8).reshape(-1))
    return memoryview(batch).cast("B")


def open(path, **options) -> Store:  # noqa: A001 - mirrors lmdb.open / builtins on purpose
    """Open (or create) the durable ledger in directory ``path``; see ``Store``."""
    return Store(path, **options)
