"""The durable ledger: the in-memory state machine, made durable by an LMDB log of batches, with
its history tiered into a cold LMDB tier so that memory stays bounded (docs/tiering.md).

Design:

* **The log is the source of truth.** Every batch that changes state is appended, as it came in
  (its 128-byte records, failed events included, losslessly packed by ``core.codec`` to about a
  fifth of their size, since the commit cost is the bytes written) with the engine time it was
  applied at, to the ``log`` database under a big-endian sequence number. It is made durable
  first in the **journal** (``core.journal``, docs/journal.md): one write and one ``fdatasync``
  of a preallocated ring per group of batches waiting together (group commit); results are
  returned only after that sync. The sink thread then puts the entries into the LMDB log, many
  groups per synced LMDB commit, and the ring's space is reused. Opening a store first moves
  the journal's synced entries into the LMDB log, so everything else reads the LMDB log. Keys
  only ever grow, so each put is an append (``MDB_APPEND``).
* **Hot and cold.** The ledger holds accounts, a window of recent transfers, and every pending
  transfer until it is resolved. Each complete *epoch* of transfers is written to the cold tier
  (``core.cold``) by a background thread, committed only after the log commit of its last
  batch; then the ledger may reuse those slots. Before a transfer batch runs, whatever it needs
  from the cold tier is read (prefetch), so the batch loop never does I/O.
* **State is a checkpoint plus the log after it.** Every ``checkpoint_interval_events`` events
  the in-memory state (nothing that grows with the history) is written to the checkpoint
  environment by a second background thread. Opening a store loads the newest checkpoint and
  replays the log (archived segments first, if it needs them) after it through
  the same state machine; since the core has no clock and no randomness of its own, the result
  is exactly the state before the crash.
* **Apply, then commit, then reply.** A batch is applied in memory first (bad input raises
  before anything changes), then its log entry is committed by the commit thread, and only then
  are its results released. If a commit (or a cold-tier write) fails, the store refuses all
  further work (``StoreFailedError``) until reopened, which recovers exactly the committed
  batches.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import concurrent.futures
import itertools
import os
import queue
import shutil
import struct
import sys
import threading
import time
import traceback
import zlib
from typing import NamedTuple

import lmdb
import msgspec
import numpy as np

from core import checkpoint, codec, constants, journal, memory, writeback
from core.threads import name_this_thread
from core import codes as codes_module
from core import envelopes as envelopes_module
from core import coupons as coupons_module
from core import fx as fx_module
from core import limits as limits_module
from core import cold as cold_module
from core import filter as filter_module
from core import ledger as ledger_module
from core import merchants as merchants_module
from core import orders as orders_module
from core import refunds as refunds_module
from core import settlement as settlement_module
from core import table as table_module
from core import tiers as tiers_module
from core.archive import ArchiveError, LogArchive
from core.cold import ColdTier, ColdVersions
from core.filter import IdFilter
from core.ledger import EVENT_TIMESTAMPS
from core.machine import Machine
from core.operations import CREATE_EVENT_DTYPES, DERIVED, OPERATIONS, Operation
from core.records import ID_DTYPE, LIMITS_DTYPE, TRANSFER_DTYPE, CloseReason, Result as core_result, TransferFlags, ids_array
from core.state_hash import CHAIN_EMPTY, state_hash

#: Log entry header: magic, format version, operation, event count, packed body bytes, now_ns,
#: last timestamp after the batch, CRC-32 of the rest of the header, the body and the failures,
#: the failures' bytes (version 2; 0 in version 1). The body follows: the events as packed by
#: ``core.codec`` (docs/storage.md); then (version 2) the events that did not succeed, so that
#: replay checks every result and a reader of the log (notifications) knows which did.
#: Version 3 adds, after the failures (its header's last field then counts both sections'
#: bytes), the ids of the orders the batch's start closed by the clock (a u32 count, then 16
#: bytes each, at most EXPIRIES_PER_BATCH_MAX): replay checks them, notifications read them.
LOG_HEADER = struct.Struct("<4sHHIIQQII")
_CHECKSUMMED_HEADER_BYTES = 32  # the header fields before the checksum
LOG_MAGIC = b"TLOG"
LOG_VERSION = 3
_LOG_VERSIONS_READ = (1, 2, 3)
#: A batch's events that did not answer ``ok``: their index in the batch and their result code
#: (codes fit a byte: core.Result has fewer than 256), after a u32 count.
FAILURE_DTYPE = np.dtype([("index", "<u2"), ("result", "u1")])
_FAILURES_BYTES_MAX = 4 + constants.BATCH_EVENTS_MAX * FAILURE_DTYPE.itemsize
_EXPIRED_BYTES_MAX = 4 + constants.EXPIRIES_PER_BATCH_MAX * ID_DTYPE.itemsize
_NO_EXPIRIES = np.zeros(0, dtype=ID_DTYPE)


class LogEntry(NamedTuple):
    """One committed batch as the log holds it (``Store.log_entries``)."""
    sequence: int
    operation: int
    now_ns: int
    last_timestamp: int
    body: np.ndarray                # the 128-byte events, a uint8 array
    failures: np.ndarray | None     # FAILURE_DTYPE, in event order; None in a version 1 entry
    expired: np.ndarray | None = None  # ID_DTYPE: the orders its start closed; None before version 3


def _failures(results: np.ndarray) -> np.ndarray:
    """The events of a batch that did not answer ``ok`` (any reply type: its result first)."""
    codes = results if results.dtype.names is None else results["result"]
    failed = np.flatnonzero(codes)
    out = np.empty(failed.shape[0], dtype=FAILURE_DTYPE)
    out["index"], out["result"] = failed, codes[failed]
    return out

OPERATION_CREATE_ACCOUNTS = Operation.create_accounts
OPERATION_CREATE_TRANSFERS = Operation.create_transfers

#: The record type of each logged operation (core/operations.py's table).
RECORD_DTYPES = CREATE_EVENT_DTYPES

_SEQUENCE = struct.Struct(">Q")
#: The journal's position, stored with each sink: generation, next sequence, offset, ring bytes.
_JOURNAL_POSITION = struct.Struct("<QQQQ")
JOURNAL_FILE = "journal"
#: Every checkpointed array, declared by the component that owns it (core/checkpoint.py).
CHECKPOINT_ARRAYS = checkpoint.registry(ledger_module.CHECKPOINT_ARRAYS, cold_module.CHECKPOINT_ARRAYS,
                                        filter_module.CHECKPOINT_ARRAYS, orders_module.CHECKPOINT_ARRAYS,
                                        merchants_module.CHECKPOINT_ARRAYS, refunds_module.CHECKPOINT_ARRAYS,
                                        settlement_module.CHECKPOINT_ARRAYS, codes_module.CHECKPOINT_ARRAYS,
                                        envelopes_module.CHECKPOINT_ARRAYS, coupons_module.CHECKPOINT_ARRAYS,
                                        fx_module.CHECKPOINT_ARRAYS, tiers_module.CHECKPOINT_ARRAYS,
                                        {"product_filter": checkpoint.REGIONS})
#: The product tables' filter of the ids in their cold side (one for all: their ids are digests
#: with a domain each, docs/products.md): 50 M ids at 10 bits each, lazily mapped.
PRODUCT_FILTER_BYTES = 64 << 20
#: Outbox entries a flush of a product table waits for (a quarter of its outbox), unless a batch
#: needs the room sooner.
_OUTBOX_FLUSH_ENTRIES = table_module.OUTBOX_MAX_DEFAULT // 4
_SNAPSHOT_PIECE_BYTES = 4 << 20  # a checkpoint's copies are made in pieces of this size
_BACKGROUND_EVENTS_MAX = 1024   # background jobs remembered (Store.background_events)
_SIDE_DATABASES_MAX = 64        # LMDB databases of the cold and checkpoint environments (4 per cold table, 5 for transfers)
_STORE_VERSION = 5              # 5: the journal; 4: the cold tier in its own environment; 3: hot window and cold tier
#: Formats this build opens and upgrades: a format-4 directory has no journal yet (a clean
#: one); once opened here it is format 5, which older builds refuse (they would not read the
#: journal's acknowledged batches).
_STORE_VERSIONS_UPGRADED = (4,)
CHECKPOINT_SUBDIRECTORY = "checkpoint"
ARCHIVE_SUBDIRECTORY = "archive"
_ARCHIVE_DELETE_SLICE_ENTRIES = 1024  # log entries forgotten per write transaction when archiving
COLD_SUBDIRECTORY = "cold"
LOCK_FILE_NAME = "tally.lock"
_U64_MAX = (1 << 64) - 1


class StoreError(Exception):
    """The store cannot be opened or used as asked."""


class StoreFailedError(StoreError):
    """A commit failed after a batch was applied in memory: reopen the store to recover."""


class _Meta(msgspec.Struct, frozen=True):
    version: int
    accounts_max: int
    transfers_hot_max: int
    pending_max: int
    cold_epoch_transfers: int
    id_filter_bytes: int
    orders_max: int = 0           # 0: a store made before orders (the default then)
    merchants_max: int = 0        # 0: a store made before merchants (the default then)
    refunds_max: int = 0          # 0: a store made before refunds (the default then)
    codes_max: int = 0            # 0: a store made before payment codes (the default then)
    envelopes_max: int = 0        # 0: a store made before red envelopes (the default then)
    claims_max: int = 0           # 0: likewise
    stocks_max: int = 0           # 0: a store made before coupons (the default then)
    coupons_max: int = 0
    holdings_max: int = 0
    members_max: int = 0
    coupon_payments_max: int = 0
    fx_payments_max: int = 0      # 0: a store made before cross-border payments (the default then)
    fx_refunds_max: int = 0
    secret: bytes = b""           # keys the order tokens (core/orders.pyx); drawn once, never sent
    # The limits in force at the log's start (core/limits.pyx), and those the log has since been
    # raised to by the store itself when its capacities grew (empty: a store made before limits).
    limits_initial: dict[str, int] = {}
    limits_raised: dict[str, int] = {}


#: The product tables' capacities and their defaults: the meta's fields (0 in an older store's
#: meta: the default of its time), ``Store``'s and ``Machine``'s keywords.
PRODUCT_CAPACITIES = {
    "orders_max": constants.ORDERS_MAX_DEFAULT, "merchants_max": constants.MERCHANTS_MAX_DEFAULT,
    "refunds_max": constants.REFUNDS_MAX_DEFAULT, "codes_max": constants.CODES_MAX_DEFAULT,
    "envelopes_max": constants.ENVELOPES_MAX_DEFAULT, "claims_max": constants.CLAIMS_MAX_DEFAULT,
    "stocks_max": constants.STOCKS_MAX_DEFAULT, "coupons_max": constants.COUPONS_MAX_DEFAULT,
    "holdings_max": constants.HOLDINGS_MAX_DEFAULT, "members_max": constants.MEMBERS_MAX_DEFAULT,
    "coupon_payments_max": constants.COUPON_PAYMENTS_MAX_DEFAULT,
    "fx_payments_max": constants.FX_PAYMENTS_MAX_DEFAULT,
    "fx_refunds_max": constants.FX_REFUNDS_MAX_DEFAULT,
}


#: The product tables with a cold side (``Machine.tables``' names).
PRODUCT_TABLES = ("orders", "refunds", "codes", "envelopes", "claims", "stocks", "coupons", "holdings", "members",
                  "coupon_payments", "fx_payments", "fx_refunds")


def _product_capacities(meta: _Meta) -> dict[str, int]:
    return {name: getattr(meta, name) or default for name, default in PRODUCT_CAPACITIES.items()}


def _limits_of(meta: _Meta) -> dict[str, int]:
    """The limits a store's capacities allow (core/limits.pyx)."""
    capacities = _product_capacities(meta)
    return limits_module.of_capacities(accounts_max=meta.accounts_max, pending_max=meta.pending_max,
                                       **{name: capacities[name] for name in limits_module.CAPACITIES})


class _ArchiveMeta(msgspec.Struct, frozen=True):
    """Where the log's archived entries are (meta key b"archive"; absent: nothing archived)."""
    archived_through: int = 0     # entries 1..archived_through are in segments, not in the log
    directory: str = ARCHIVE_SUBDIRECTORY  # relative to the data directory, or absolute
    writing_through: int = 0      # a run archiving up to here started (its leftovers are ours)


class _CheckpointMeta(msgspec.Struct, frozen=True):
    sequence: int                 # last log sequence number the checkpoint includes
    scalars: dict[str, int]
    arrays: dict[str, checkpoint.ArrayMeta]
    cold_epochs: int              # epochs in the cold tier when it was taken
    cold_chain: bytes             # their state-hash chain
    filter_added: int


class _ColdTierDamaged(StoreError):
    """The cold tier lacks epochs a checkpoint relies on (a power loss): it is rebuilt by replay."""


class RecoveryStats(msgspec.Struct, frozen=True):
    """What opening the store did: the checkpoint it loaded and the log it replayed."""
    checkpoint_sequence: int
    checkpoint_load_s: float
    replayed_batches: int
    replayed_events: int
    replay_s: float
    checkpoint_error: str | None = None   # why the checkpoint was not used (the whole log was replayed)


class BackgroundEvent(msgspec.Struct, frozen=True):
    """One finished background job: a cold-tier flush or a checkpoint write."""
    kind: str                     # "flush" | "orders outbox" | "refunds outbox" | "checkpoint"
    started_unix_s: float         # wall clock, to line it up with a load report's time axis
    duration_s: float             # the whole job on the background thread
    bytes_written: int            # values put into LMDB
    stall_s: float = 0.0          # checkpoint: the submitting thread's pause for the copies
    commit_s: float = 0.0         # the LMDB commit (with its sync, for a flush)


class _Job(msgspec.Struct):
    """A checkpoint being written on its background thread."""
    future: concurrent.futures.Future
    pin: int                      # it reads the ring from here on: no eviction past it


class PendingBatch:
    """A batch applied in memory whose log entry is being committed."""

    __slots__ = ("sequence", "expired", "_results", "_done", "_error", "_callbacks", "_lock", "_finished")

    def __init__(self, sequence: int, results: np.ndarray, expired: np.ndarray | None = None):
        self.sequence = sequence
        self.expired = expired  # ID_DTYPE: the orders the batch's start closed by the clock
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

    Memory is set by ``accounts_max``, ``transfers_hot_max`` (the hot window), ``pending_max``
    and ``id_filter_bytes``; the history has no limit but the disk (docs/tiering.md). Capacities
    may grow when a directory is reopened; ``cold_epoch_transfers`` and ``id_filter_bytes`` are
    fixed when it is created.
    """

    def __init__(self, path, *, accounts_max: int | None = None, transfers_hot_max: int | None = None,
                 pending_max: int | None = None, cold_epoch_transfers: int | None = None,
                 id_filter_bytes: int | None = None, secret: bytes | None = None,
                 limits_initial: dict | None = None, map_size_bytes: int = constants.LMDB_MAP_SIZE_BYTES_DEFAULT,
                 checkpoint_interval_events: int = constants.CHECKPOINT_INTERVAL_EVENTS_DEFAULT,
                 checkpoint_interval_batches: int | None = None,
                 commit_pipeline_depth: int = constants.COMMIT_PIPELINE_DEPTH_DEFAULT,
                 journal_bytes: int = constants.JOURNAL_BYTES_DEFAULT,
                 prefault: bool = False, clock_ns=time.time_ns, **product_capacities: int | None):
        unknown = set(product_capacities) - set(PRODUCT_CAPACITIES)
        if unknown:
            raise TypeError(f"Store() got unexpected keyword arguments {sorted(unknown)}")
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
        self._meta = self._load_or_create_meta(accounts_max, transfers_hot_max, pending_max,
                                               cold_epoch_transfers, id_filter_bytes, product_capacities, secret,
                                               limits_initial)
        self._archive_meta = self._load_archive_meta()
        self._journal = self._open_journal(journal_bytes, prefault)
        self._epoch_transfers = self._meta.cold_epoch_transfers
        self._map_size_bytes = map_size_bytes
        self._checkpoint_env = self._open_checkpoint_env(map_size_bytes)
        self._cold_env = self._open_cold_env(map_size_bytes)
        self._open_cold_tables()
        # Two background threads: epochs are flushed while a checkpoint is written (a checkpoint
        # takes seconds; the next batches need the epochs written within PRUNE_LAG_EPOCHS).
        # The flushes run at normal priority: the next batches wait for them (a niced flush
        # thread fell behind whenever a checkpoint was being written beside it).
        self._flusher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tally-cold",
                                                              initializer=name_this_thread)
        self._checkpointer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tally-checkpoint",
                                                                   initializer=_lower_thread_priority)
        self._flush_jobs: collections.deque[concurrent.futures.Future] = collections.deque()
        self._checkpoint_job: _Job | None = None
        self._writeback: concurrent.futures.Future | None = None  # the last checkpoint's pages going to disk
        self._writeback_stop = threading.Event()
        # Guards the cold tier's published progress (epochs, chain, id max, per-account newest
        # epoch, the filter's bits): a flush publishes under it, a checkpoint reads it under it.
        # A checkpoint taken at transfer count N may only see epochs up to N // epoch size:
        # flushes past ``_capture_limit`` wait until the checkpoint has read (``_cold_published``).
        self._cold_published = threading.Condition()
        self._capture_limit: int | None = None
        self._snapshot_buffers: dict[str, np.ndarray] = {}
        self._array_writer = checkpoint.ArrayWriter(CHECKPOINT_WRITE_BYTES_PER_S)
        self._prefault = prefault
        self._checkpoint_meta: _CheckpointMeta | None = None
        self._prefetched_ids = self._prefetch_misses = 0
        # Checkpoints since open: how many, the longest write (background) and the longest pause
        # of the submitting thread while the in-place arrays were copied.
        self.checkpoints_written = 0
        self.checkpoint_write_max_s = self.checkpoint_stall_max_s = 0.0
        # The latest background jobs (bounded), for operators and load reports: when each ran,
        # how long its parts took, how much it wrote.
        self.background_events: collections.deque[BackgroundEvent] = collections.deque(maxlen=_BACKGROUND_EVENTS_MAX)
        self._fresh_state()
        self._last_pending: PendingBatch | None = None
        self._queued_last: PendingBatch | None = None  # the last batch handed to the commit thread
        self._staged: list = []  # (PendingBatch, entry) applied by ``stage``, not yet committed
        self.recovery = self._recover()
        self._committed_sequence = self._applied_sequence = self._last_sequence()
        self._batches_since_checkpoint = self.recovery.replayed_batches
        self._events_since_checkpoint = self.recovery.replayed_events
        self._in_flight = threading.BoundedSemaphore(commit_pipeline_depth)
        self._entries = [bytearray(LOG_HEADER.size + codec.packed_size_max(constants.BATCH_EVENTS_MAX)
                                   + _FAILURES_BYTES_MAX + _EXPIRED_BYTES_MAX)
                         for _ in range(commit_pipeline_depth + 1)]
        self._commits: queue.SimpleQueue = queue.SimpleQueue()
        # What the journal holds and the LMDB log does not yet: (sequence, entry, end offset in
        # the ring, ring bytes held), handed from the commit thread to the sink thread.
        self._sink_items: collections.deque = collections.deque()
        self._sink_bytes = 0
        self._sink_wanted = False        # someone waits for the LMDB log to catch up
        self._sink_stopping = False
        self._sink_error: BaseException | None = None
        self._sunk_sequence = self._committed_sequence
        self._sink_ready = threading.Condition()
        self._sinker = threading.Thread(target=self._sink_loop, name="tally-sink", daemon=True)
        self._sinker.start()
        self._committer = threading.Thread(target=self._commit_loop, name="tally-commit", daemon=True)
        self._committer.start()
        # A commit thread beside a busy main thread waits a whole switch interval (5 ms by
        # default) for the GIL after each commit; at 0.2 ms it hands back promptly
        # (shared/ARCHITECTURE.md has the measurement).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0002))
        self._raise_limits_to_capacities()

    @contextlib.contextmanager
    def expiries_as_logged(self, before_the_bound: bool):
        """Apply a log entry's batch as it was: one written before the expiries' bound (format
        < 3, no expiries section) closed every due order at its start, not at most
        EXPIRIES_PER_BATCH_MAX (recovery and replay-log of an old log; a batch submitted meanwhile
        is logged in format 2 too, so that its own replay does the same)."""
        if not before_the_bound:
            yield
            return
        self.orders.expiries_max = 1 << 63
        try:
            yield
        finally:
            self.orders.expiries_max = constants.EXPIRIES_PER_BATCH_MAX

    @property
    def limits_initial(self) -> dict[str, int]:
        """The limits in force at the log's start (a replay's target starts with them)."""
        return dict(self._meta.limits_initial)

    def _raise_limits_to_capacities(self) -> None:
        """Capacities that grew since the log last raised its limits to them: log a set_limits
        batch raising those limits now (after the recovery replayed every earlier answer with
        the limits then in force), then remember it in the meta. A crash in between raises them
        again at the next open, which changes nothing more."""
        capacities, raised = _limits_of(self._meta), self._meta.limits_raised
        grown = {name: value for name, value in capacities.items() if value > raised.get(name, 0)}
        if not grown:
            return
        event = np.zeros(1, dtype=LIMITS_DTYPE)
        for name, value in grown.items():
            event[name] = value
        # At the engine time the log left off (its batch follows the last one): reopening moves no clock.
        result = self.submit(Operation.set_limits, event, self.ledger.last_timestamp).result()
        if result[0] != 0:
            raise StoreError(f"{self.path}: raising the limits to the capacities answered {core_result(int(result[0]))}")
        self._meta = msgspec.structs.replace(self._meta, limits_raised=capacities)
        with self._env.begin(write=True, db=self._meta_db) as txn:
            txn.put(b"meta", msgspec.msgpack.encode(self._meta))

    def _fresh_state(self) -> None:
        """An empty ledger, filter and cold progress (before a checkpoint is loaded into them)."""
        meta = self._meta
        self.machine = Machine(accounts_max=meta.accounts_max, transfers_hot_max=meta.transfers_hot_max,
                               pending_max=meta.pending_max, secret=meta.secret, **_product_capacities(meta))
        self.ledger = self.machine.ledger
        self.orders = self.machine.orders
        self.merchants = self.machine.merchants
        self.refunds = self.machine.refunds
        self.codes = self.machine.codes
        self.envelopes = self.machine.envelopes
        self.coupons = self.machine.coupons
        if tuple(self.machine.tables) != PRODUCT_TABLES:
            raise AssertionError(f"the machine's tables {tuple(self.machine.tables)} are not the store's {PRODUCT_TABLES}")
        self.machine.limits.force(meta.limits_initial)  # then a checkpoint's, then the log's set_limits
        self.filter = IdFilter(meta.id_filter_bytes)
        self.ledger.attach_filter(self.filter)
        self.product_filter = IdFilter(PRODUCT_FILTER_BYTES)
        self._outbox_queued = {name: 0 for name in self.machine.tables}  # entries handed to the flush thread
        # Per account: the newest cold epoch holding one of its transfers, plus 1 (0: none).
        self._last_epoch = np.zeros(meta.accounts_max, dtype=np.uint32)
        self._cold_epochs = 0             # epochs in the cold tier (advanced by the background thread)
        self._cold_chain = CHAIN_EMPTY
        self._cold_id_max = 0             # the largest id in the cold tier
        self._flush_queued_epochs = 0     # epochs handed to the background thread
        self.ledger.enable_pruning(self._epoch_transfers)
        if self._prefault:
            self.machine.prefault()
            self.filter.prefault()
            self.product_filter.prefault()
            # The checkpoint's copy of the balances, touched now rather than in the first one.
            hot = self.ledger.snapshot()[0]["hot"]
            self._snapshot_buffers["hot"] = np.zeros(self.ledger.accounts_max, dtype=hot.dtype)
            self._snapshot_buffers["hot"].view(np.uint8)[::4096] = 0

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
        self.commit_staged()  # staged batches come first in the log
        self._in_flight.acquire()
        pending, entry = self._apply_and_pack(operation, batch, now_ns)
        self._queued_last = pending
        self._commits.put((pending, entry))
        self._start_background_work()
        return pending

    def stage(self, operation: int, batch, now_ns: int | None = None) -> "PendingBatch":
        """Apply a batch in memory now; its log entry waits for ``commit_staged`` (same thread).

        The inline form of ``submit`` for a caller that has other batches to apply before it
        waits for the disk, as the server has (one pass of its event loop): no thread hand-off,
        and one journal write and sync for all of them. At most ``commit_pipeline_depth``
        batches wait: past that, ``stage`` commits those first. Bad input raises here, before
        anything changes. Anything that reads or waits for committed state (``submit``,
        lookups that wait for commits, a checkpoint, ``close``) commits the staged batches first.
        """
        if not self._in_flight.acquire(blocking=False):
            self.commit_staged()
            self._in_flight.acquire()
        pending, entry = self._apply_and_pack(operation, batch, now_ns)
        self._staged.append((pending, entry))
        self._start_background_work()
        return pending

    def commit_staged(self) -> None:
        """Make every applied batch durable before this returns: first the batches submitted
        earlier (the commit thread's), then the staged ones, on this thread: their journal
        frames in one write, one ``fdatasync`` (the GIL is released meanwhile); then their
        ``PendingBatch``es are done. So whatever a caller read of the state before is durable
        once this returns. StoreFailedError if a commit failed (nothing staged is acknowledged
        then)."""
        queued, self._queued_last = self._queued_last, None
        if queued is not None:
            queued.result()  # the commit thread's batches precede these in the log (raises if failed)
        if not self._staged:
            return
        group, self._staged = self._staged, []
        self._commit_group(group)
        self._check_usable()

    def _apply_and_pack(self, operation: int, batch, now_ns: int | None) -> tuple["PendingBatch", memoryview]:
        """Apply a batch in memory and pack its log entry (submit and stage; the caller holds a
        ``_in_flight`` slot, released here if the batch is refused)."""
        try:
            self._check_usable()
            if operation not in RECORD_DTYPES:
                raise ValueError(f"unknown operation {operation}")
            if now_ns is None:
                now_ns = self._clock_ns()
            results = self._apply(operation, batch, now_ns)
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
        failures = _failures(results)
        end = LOG_HEADER.size + body_bytes
        if self.orders.expiries_max == constants.EXPIRIES_PER_BATCH_MAX:
            version, expired = LOG_VERSION, self.orders.expired_last()
        else:  # replaying an entry written before the bound (expiries_as_logged): logged as it was
            version, expired = 2, None
        tail_bytes = _pack_tail(entry, end, failures, expired)
        LOG_HEADER.pack_into(entry, 0, LOG_MAGIC, version, operation, count, body_bytes, now_ns,
                             self.ledger.last_timestamp, 0, tail_bytes)
        view = memoryview(entry)
        checksum = _entry_checksum(view[:_CHECKSUMMED_HEADER_BYTES], view[LOG_HEADER.size:end + tail_bytes])
        struct.pack_into("<I", entry, _CHECKSUMMED_HEADER_BYTES, checksum)
        pending = PendingBatch(self._applied_sequence, results, expired if expired is not None else _NO_EXPIRIES)
        self._last_pending = pending
        self._batches_since_checkpoint += 1
        self._events_since_checkpoint += count
        return pending, view[:end + tail_bytes]

    def _start_background_work(self) -> None:
        """Hand complete epochs to the flush thread, start a checkpoint if one is due. Called
        once the batch's entry is on its way to the journal: a failure here must never leave
        an applied batch unlogged (its slot held, its sequence number skipped)."""
        self._queue_flush()
        self._queue_outbox_flush()
        if self._checkpoint_due():
            self._start_checkpoint()

    def pulse(self, now_ns: int | None = None) -> "PendingBatch | None":
        """Advance the engine clock on an idle store: if a pending transfer's timeout is due by
        ``now_ns`` (the store's clock by default), apply an empty batch, which expires it, and
        commit it (with anything staged) before returning, on this thread.

        The batch is logged like any other, so replay expires the same transfers at the same
        engine time. Returns its ``PendingBatch`` (done), or None when nothing is due (nothing
        is logged). A server calls this when no request has come for a while
        (``engine.server``); any batch expires what is due before its events, so a busy one
        never needs to.
        """
        next_expiry_ns = self.machine.next_expiry_ns
        if next_expiry_ns == 0:
            return None
        if now_ns is None:
            now_ns = self.now_ns()
        if now_ns < next_expiry_ns:
            return None
        pending = self.stage(OPERATION_CREATE_TRANSFERS, np.empty(0, dtype=TRANSFER_DTYPE), now_ns)
        self.commit_staged()
        return pending

    def now_ns(self) -> int:
        """The engine clock's reading now (the time a batch submitted now would be applied at)."""
        return self._clock_ns()

    @property
    def next_expiry_ns(self) -> int:
        """Engine time (ns) at which the soonest pending timeout or unpaid order expires; 0: none."""
        return self.machine.next_expiry_ns

    def _apply(self, operation: int, batch, now_ns: int) -> np.ndarray:
        """Apply one batch in memory (submit and recovery): room in the ring, prefetch, apply."""
        # Room in the ring for every transfer the batch may make (``legs`` per event in the
        # operation table: one per transfer, two per payment or refund, none per account),
        # refused whole if the hot window cannot have it: which events found room must not
        # depend on how far the flush thread had got (replay would differ). (Larger batches:
        # the component's own error.)
        count = _raw(batch).shape[0] // constants.RECORD_SIZE_BYTES
        # (and for the transfers its start makes: refunds of expired packets, at most 256)
        needed = count * OPERATIONS[operation].legs + self.ledger.start_legs(now_ns)
        room = self.ledger.transfers_hot_max - self._epoch_transfers
        if room < needed and count <= constants.BATCH_EVENTS_MAX:
            raise ValueError(f"a batch of {count} {Operation(operation).name} events needs room for {needed} "
                             f"transfers; the hot window has {room} (transfers_hot_max - cold_epoch_transfers)")
        self._reap()
        self._make_room(min(needed, room))  # (an accounts batch: none, but it still prunes)
        if operation != OPERATION_CREATE_TRANSFERS:
            # The products' legs are new transfers with ids in their own range, derived from new
            # events: nothing to prefetch from the transfers' cold tier; the product records the
            # events name are loaded into their tables.
            if OPERATIONS[operation].reads and count <= constants.BATCH_EVENTS_MAX:
                self._load_product_records(operation, batch, count)
            return self.machine.apply(operation, batch, now_ns)
        ids = self.ledger.prefetch_scan(batch, now_ns)  # evicts what the batch needs room for first
        if ids.shape[0]:
            ids = np.unique(ids)
            rows, states, found = self.cold.lookup(ids, self.ledger.hot_first_timestamp())
            self._prefetched_ids += ids.shape[0]
            self._prefetch_misses += ids.shape[0] - int(found.sum())
            # A pending resolved and pruned while its row is still hot: its row is in memory, its
            # final state only in the cold tier.
            missing = np.flatnonzero(~found)
            if missing.shape[0]:
                hot_rows, hot = _in_chunks(self.ledger.lookup_transfers_hot, ids[missing])
                hot &= (hot_rows["flags"] & int(TransferFlags.pending)) != 0
                if hot.any():
                    rows[missing[hot]] = hot_rows[hot]
                    states[missing[hot]] = self.cold.states_of(hot_rows[hot])
                    found[missing[hot]] = True
            self.ledger.load_prefetched(rows[found], states[found])
        return self.machine.apply(operation, batch, now_ns)

    def _load_product_records(self, operation: int, batch, count: int) -> None:
        """Make the product records a batch names resident (docs/tables.md): room for one per
        event in each table it reads (eviction: dirty records to the outbox, which may first
        have to be written), then those not in memory from the outbox, else from the cold
        side's newest version older than the batch (the filter ruling out most new ids)."""
        spec = OPERATIONS[operation]
        records = np.frombuffer(_raw(batch), dtype=spec.event_dtype)
        before_ts = self.ledger.last_timestamp + 1  # every change so far is older; this batch's are not
        for name, field in spec.reads:
            table = self.machine.tables[name]
            if count > table.capacity - table.pinned_max:
                raise ValueError(f"a batch of {count} {Operation(operation).name} events needs room for {count} "
                                 f"{name}; the table keeps {table.capacity - table.pinned_max} for a batch")
            while table.outbox_free < count:  # each slot made free may send a record to the outbox
                self._queue_outbox_flush(force=True)
                self._reap(wait_one=True)
            head = table.outbox_head
            if not table.make_room(count):
                raise AssertionError(f"no room for {count} {name} with {table.pinned_max} pinned at most")
            if table.outbox_head > head:  # the filter holds every id that ever left memory
                self.product_filter.add_ids(table.outbox_ids(head, table.outbox_head))
            if table.outbox_head == 0:
                continue  # no record of this table has ever left memory
            if field == DERIVED:  # ids the component computes (an issued code's number)
                ids = self.machine.derived_ids(operation, name, records)
            else:
                ids = np.empty(count, dtype=ID_DTYPE)
                ids["lo"], ids["hi"] = records[f"{field}_lo"], records[f"{field}_hi"]
            wanted = ids[self.product_filter.maybe_mask(ids)]  # new and resident ids mostly leave here
            wanted = wanted[~table.resident_mask(wanted) & ((wanted["lo"] != 0) | (wanted["hi"] != 0))]
            if not wanted.shape[0]:
                continue
            missing = np.unique(wanted)  # each loaded once
            entries, in_outbox = table.outbox_take(missing)
            table.load(entries)
            missing = missing[~in_outbox]
            if missing.shape[0]:
                entries, in_cold = self._versions[name].lookup(missing, before_ts)
                table.load(entries[in_cold])

    def lookup_accounts(self, ids):
        """Accounts by id, from memory, after every submitted batch is committed."""
        self._drain()
        return self.ledger.lookup_accounts(ids)

    def lookup_orders(self, ids, *, wait_for_commits: bool = True):
        """Orders by id (ints or an ID_DTYPE array), in order, missing ones left out; after every
        submitted batch is committed (``wait_for_commits``: see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("orders", ids)

    def set_merchants(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Set merchants' terms durably (docs/products.md "Merchants and fees"); one Result per event."""
        return self.submit(Operation.set_merchants, batch, now_ns).result()

    def lookup_merchants(self, ids, *, wait_for_commits: bool = True):
        """Merchants' terms by merchant account id, in order, those with none left out; after
        every submitted batch is committed (``wait_for_commits``: see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        return self.merchants.lookup_merchants(ids)

    def refund_orders(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Refund paid orders durably (docs/products.md "Refunds"); one Result per event."""
        return self.submit(Operation.refund_orders, batch, now_ns).result()

    def issue_codes(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Issue payment codes durably (docs/products.md "Payment codes (built)"); one
        CODE_ISSUED_DTYPE (result, code) per event."""
        return self.submit(Operation.issue_codes, batch, now_ns).result()

    def charge_codes(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Charge payment codes durably; one Result per event (``user_paying``: held)."""
        return self.submit(Operation.charge_codes, batch, now_ns).result()

    def confirm_charges(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Confirm (or decline) held charges durably; one Result per event."""
        return self.submit(Operation.confirm_charges, batch, now_ns).result()

    def lookup_codes(self, ids, *, wait_for_commits: bool = True):
        """Payment codes by id (the code numbers), in order, missing ones left out; after
        every submitted batch is committed (``wait_for_commits``: see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("codes", ids)

    def send_envelopes(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Send red envelopes durably (docs/products.md "Red envelopes"); one Result per event."""
        return self.submit(Operation.send_envelopes, batch, now_ns).result()

    def claim_envelopes(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Claim red envelopes durably; one ENVELOPE_CLAIMED_DTYPE record per event (the
        result, the claim's place and share)."""
        return self.submit(Operation.claim_envelopes, batch, now_ns).result()

    def lookup_envelopes(self, ids, *, wait_for_commits: bool = True):
        """Red envelopes (packets) by id, in order, missing ones left out; after every
        submitted batch is committed (``wait_for_commits``: see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("envelopes", ids)

    def lookup_envelope_claims(self, ids, *, wait_for_commits: bool = True):
        """Claims by claim id (``core.order_keys.claim_id``), as ``lookup_envelopes``."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("claims", ids)

    def create_stocks(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Create coupon stocks durably (docs/products.md "Coupons and the card pack"); one
        Result per event."""
        return self.submit(Operation.create_stocks, batch, now_ns).result()

    def grant_coupons(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Grant coupons into users' card packs durably; one Result per event."""
        return self.submit(Operation.grant_coupons, batch, now_ns).result()

    def pay_with_coupon(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Pay with coupons durably; one Result per event."""
        return self.submit(Operation.pay_with_coupon, batch, now_ns).result()

    def lookup_stocks(self, ids, *, wait_for_commits: bool = True):
        """Coupon stocks (with their analytics) by id, as ``lookup_envelopes``."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("stocks", ids)

    def lookup_coupons(self, ids, *, wait_for_commits: bool = True):
        """Coupons by id, as ``lookup_envelopes``."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("coupons", ids)

    def lookup_coupon_payments(self, ids, *, wait_for_commits: bool = True):
        """Coupon payments by ``core.order_keys.coupon_payment_id`` (what each request paid)."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("coupon_payments", ids)

    def lookup_members(self, ids, *, wait_for_commits: bool = True):
        """Membership cards' members by ``core.order_keys.member_id`` (visits, spend, points)."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("members", ids)

    def lookup_holdings(self, ids, *, wait_for_commits: bool = True):
        """Holdings (a user's count of a stock's coupons) by ``core.order_keys.holding_id``."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("holdings", ids)

    def pay_cross_border(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Cross-border payments durably (docs/products.md "Cross-border payments"); one Result
        per event."""
        return self.submit(Operation.pay_cross_border, batch, now_ns).result()

    def refund_cross_border(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Refunds of cross-border payments at their locked rate, durably; one Result per event."""
        return self.submit(Operation.refund_cross_border, batch, now_ns).result()

    def set_rates(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Set currency pairs' rates durably (logged: replay uses the same); one Result per event."""
        return self.submit(Operation.set_rates, batch, now_ns).result()

    def quote_cross_border(self, from_ledger: int, to_ledger: int, merchant_amounts, *,
                           wait_for_commits: bool = True) -> np.ndarray:
        """What payers pay in ``from_ledger`` for ``merchant_amounts`` at the rate in force
        (FX_QUOTE_DTYPE records), after every submitted batch is committed."""
        if wait_for_commits:
            self._drain()
        return self.machine.fx.quote(from_ledger, to_ledger, merchant_amounts)

    def lookup_rates(self, ids, *, wait_for_commits: bool = True):
        """Currency pairs' rates by pair id (from_ledger | to_ledger << 32), those set, in order."""
        if wait_for_commits:
            self._drain()
        return self.machine.fx.lookup_rates(ids)

    def lookup_fx_payments(self, ids, *, wait_for_commits: bool = True):
        """Cross-border payments by id (``core.order_keys.fx_payment_id``), as ``lookup_envelopes``."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("fx_payments", ids)

    def lookup_fx_refunds(self, ids, *, wait_for_commits: bool = True):
        """Their refunds by id (``core.order_keys.fx_refund_id``), as ``lookup_envelopes``."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("fx_refunds", ids)

    @property
    def product_capacities(self) -> dict[str, int]:
        """The product tables' capacities (a replay's target takes its source's)."""
        return _product_capacities(self._meta)

    def set_wallet_tiers(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Set wallets' tiers durably (docs/products.md "Wallet limits and real-name tiers
        (built)"); one Result per event."""
        return self.submit(Operation.set_wallet_tiers, batch, now_ns).result()

    def set_tier_limits(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Set tiers' limits (per ledger, or the defaults) durably; one Result per event."""
        return self.submit(Operation.set_tier_limits, batch, now_ns).result()

    def lookup_wallet_limits(self, ids, *, wait_for_commits: bool = True):
        """Accounts' tiers, limits in force and what their current day and year hold
        (WALLET_LIMITS_DTYPE), in order, unknown ids left out; after every submitted batch is
        committed (``wait_for_commits``: see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        return self.machine.lookup_wallet_limits(ids)

    def lookup_refunds(self, ids, *, wait_for_commits: bool = True):
        """Refunds by id, in order, missing ones left out; after every submitted batch is
        committed (``wait_for_commits``: see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        return self._lookup_table("refunds", ids)

    def _lookup_table(self, name: str, ids) -> np.ndarray:
        """A product table's records by id, in order, missing ones left out: from memory (its
        slots and outbox), else its cold side."""
        table = self.machine.tables[name]
        ids = ids_array(ids)
        rows, found = table.lookup(ids)
        missing = np.flatnonzero(~found)
        if missing.shape[0]:
            missing = missing[self.product_filter.maybe_mask(ids[missing])]
            entries, cold_found = self._versions[name].lookup(ids[missing])
            rows[missing[cold_found]] = entries["record"][cold_found].view(rows.dtype).reshape(-1)
            found[missing[cold_found]] = True
        return rows[found]

    def settle_merchants(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Settle merchants' closed windows durably (docs/products.md "Settlement"); one Result
        per event."""
        return self.submit(Operation.settle_merchants, batch, now_ns).result()

    def lookup_settlements(self, ids, *, wait_for_commits: bool = True):
        """Each merchant's last settlement (SETTLEMENT_DTYPE), in order, those with none left
        out; after every submitted batch is committed (``wait_for_commits``: see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        return self.merchants.lookup_settlements(ids)

    def list_merchants(self, offset: int = 0, limit: int = constants.BATCH_EVENTS_MAX, *,
                       wait_for_commits: bool = True):
        """Merchants' terms in the order they were first set, ``limit`` (at most
        ``ACCOUNT_TRANSFERS_LIMIT_MAX``) from ``offset``."""
        if not 0 <= limit <= constants.ACCOUNT_TRANSFERS_LIMIT_MAX:
            raise ValueError(f"limit must be in 0..{constants.ACCOUNT_TRANSFERS_LIMIT_MAX}")
        if wait_for_commits:
            self._drain()
        return self.merchants.list_merchants(offset, limit)

    def create_orders(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Create orders durably (docs/products.md); an ORDER_CREATED_DTYPE reply per event."""
        return self.submit(Operation.create_orders, batch, now_ns).result()

    def pay_orders(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Pay orders durably (docs/products.md); one Result per event."""
        return self.submit(Operation.pay_orders, batch, now_ns).result()

    def close_orders(self, batch, now_ns: int | None = None) -> np.ndarray:
        """Close orders durably (docs/products.md); one Result per event."""
        return self.submit(Operation.close_orders, batch, now_ns).result()

    def lookup_transfers(self, ids, *, wait_for_commits: bool = True):
        """Transfers by id (ints or an ID_DTYPE array), in order, missing ones left out: from the
        hot window and the pending table, else from the cold tier; after every submitted batch
        is committed (``wait_for_commits=False``: as applied, for a caller that holds its reply
        until then itself, as the server does)."""
        if wait_for_commits:
            self._drain()
        ids = ids_array(ids)
        rows, found = self.ledger.lookup_transfers_hot(ids)
        missing = np.flatnonzero(~found)
        if missing.shape[0] and self.ledger.hot_first:  # nothing is cold before the first eviction
            cold_rows, _, cold_found = self.cold.lookup(ids[missing], self.ledger.hot_first_timestamp())
            rows[missing[cold_found]] = cold_rows[cold_found]
            found[missing[cold_found]] = True
        return rows[found]

    def get_account_transfers(self, account_id, *, timestamp_min: int = 0, timestamp_max: int = 0,
                              limit: int = constants.ACCOUNT_TRANSFERS_LIMIT_MAX, debits: bool = True,
                              credits: bool = True, reverse: bool = False, wait_for_commits: bool = True):
        """See ``Ledger.get_account_transfers``, over the whole history: the hot window, then the
        account's cold epochs; after every submitted batch is committed (``wait_for_commits``:
        see ``lookup_transfers``)."""
        if wait_for_commits:
            self._drain()
        query = dict(timestamp_min=timestamp_min, timestamp_max=timestamp_max, limit=limit, debits=debits,
                     credits=credits, reverse=reverse)
        hot = self.ledger.get_account_transfers(account_id, **query)
        account = self.ledger.account_index(account_id)
        if not self.ledger.hot_first or account is None or limit == 0 or (reverse and hot.shape[0] >= limit):
            return hot
        wanted = limit - hot.shape[0] if reverse else limit
        stamps = self.cold.account_history(
            account, int(self._last_epoch[account]), timestamp_min=timestamp_min,
            timestamp_max=timestamp_max or _U64_MAX, boundary_ts=self.ledger.hot_first_timestamp(),
            limit=wanted, debits=debits, credits=credits, reverse=reverse)
        cold = self.cold.rows_by_timestamps(stamps)
        if reverse:
            return np.concatenate((hot, cold))
        return np.concatenate((cold, hot[:limit - cold.shape[0]]))

    @property
    def secret(self) -> bytes:
        """The key of the order tokens (fixed at creation; ``replay-log`` gives it to the copy)."""
        return self._meta.secret

    @property
    def sequence(self) -> int:
        """Sequence number of the last committed batch (0 when the log is empty)."""
        return self._committed_sequence

    def state_hash(self) -> str:
        """Hex digest of the committed state over the whole history (``core.state_hash``);
        waits for the commits and the background threads."""
        self._drain()
        self._reap(wait_all=True)
        return state_hash(self.ledger, epoch_transfers=self._epoch_transfers, chain=self._cold_chain,
                          chained_epochs=self._cold_epochs, parts=self.machine.hash_parts())

    def stats(self) -> dict:
        """Sizes and counters of the hot and cold tiers (``tally info``)."""
        led = self.ledger
        disk = {"log": _file_bytes(os.path.join(self.path, "data.mdb")),
                "journal": _file_bytes(os.path.join(self.path, JOURNAL_FILE)),
                "checkpoint_environment": _file_bytes(os.path.join(self.path, CHECKPOINT_SUBDIRECTORY, "data.mdb")),
                "cold_environment": _file_bytes(os.path.join(self.path, COLD_SUBDIRECTORY, "data.mdb"))}
        disk.update({f"cold_{name}": size for name, size in self.cold.disk_bytes().items()})
        disk.update({f"cold_{name}_versions": versions.disk_bytes()["versions"] for name, versions in self._versions.items()})
        disk["archive"] = self.archive.disk_bytes()
        return {
            "log_first": self._archive_meta.archived_through + 1,
            "archived_through": self._archive_meta.archived_through,
            "archive_directory": self.archive.directory,
            "transfers": led.transfer_count,
            "transfers_hot": led.transfer_count - led.hot_first,
            "transfers_hot_max": led.transfers_hot_max,
            "transfers_cold": self._cold_epochs * self._epoch_transfers,
            "cold_epochs": self._cold_epochs,
            "cold_epoch_transfers": self._epoch_transfers,
            "pending_entries": led.pending_count,
            "pending_max": led.pending_max,
            "accounts": led.account_count,
            "accounts_max": led.accounts_max,
            "orders": self.orders.order_count,
            "orders_max": self.orders.orders_max,
            "orders_open": self.orders.open_count,
            "orders_open_max": self.orders.open_max,
            "merchants": self.merchants.merchant_count,
            "merchants_max": self.merchants.merchants_max,
            "refunds": self.refunds.refund_count,
            "refunds_max": self.refunds.refunds_max,
            "codes": self.codes.code_count,
            "codes_max": self.codes.codes_max,
            "codes_live": self.codes.live_count,
            "envelopes": self.envelopes.envelope_count,
            "envelopes_max": self.envelopes.envelopes_max,
            "envelopes_open": self.envelopes.open_count,
            "claims": self.envelopes.claim_count,
            "claims_max": self.envelopes.claims_max,
            "stocks": self.coupons.stock_count,
            "stocks_active": self.coupons.open_count,
            "coupons": self.coupons.coupon_count,
            **{f"{name}_resident": table.used for name, table in self.machine.tables.items()},
            **{f"{name}_outbox": table.outbox_head - table.outbox_tail for name, table in self.machine.tables.items()},
            **{f"{name}_cold_lookups": versions.lookups for name, versions in self._versions.items()},
            "filter_bytes": self.filter.size_bytes,
            "filter_ids": self.filter.added,
            "filter_positives": self._prefetched_ids,
            "filter_false_positives": self._prefetch_misses,
            "cold_lookups": self.cold.lookups,
            "checkpoints_written": self.checkpoints_written,
            "checkpoint_write_max_s": self.checkpoint_write_max_s,
            "checkpoint_stall_max_s": self.checkpoint_stall_max_s,
            "cold_lookups_missed": self.cold.lookups_missed,
            "memory_bytes": led.memory_bytes() | {"filter": self.filter.size_bytes,
                                                   "last_epoch": self._last_epoch.nbytes},
            "disk_bytes": disk,
        }

    def log_entries(self, first_sequence: int = 1):
        """The committed log entries from ``first_sequence`` on, in order, checked and unpacked.

        Yields ``LogEntry`` tuples as recovery replays them (``body``: the batch's 128-byte
        records, a uint8 array; ``failures``: its events that did not succeed). Read-only: one LMDB read
        transaction, held until the iteration ends; finish or close the iterator before closing
        the store.
        """
        self.sink_journal()  # what only the journal holds yet goes into the LMDB log first
        for sequence, value in self._log_raw(first_sequence):
            yield _decode_entry(sequence, value)

    def notifications(self, after: tuple[int, int] = (0, 0), *, merchants=None,
                      limit: int = constants.BATCH_EVENTS_MAX) -> np.ndarray:
        """Merchants' notifications (``core.notifications.NOTIFICATION_DTYPE``: paid, refunded
        and closed orders) of the committed log strictly after the cursor ``after`` =
        ``(sequence, index)``, in log order, at most ``limit``; those of ``merchants`` (ints)
        only, if given. The last one's ``(sequence, index)`` is the cursor to resume after."""
        from core import notifications

        self.sink_journal()  # what only the journal holds yet goes into the LMDB log first
        found, total = [], 0
        for sequence, value in self._log_raw(max(after[0], 1)):
            _, version, operation, _, body_bytes, _, _, _, tail_bytes = LOG_HEADER.unpack_from(value, 0)
            if (operation not in notifications.NOTIFYING_OPERATIONS
                    and (version < 3 or _tail_counts(value, LOG_HEADER.size + body_bytes, tail_bytes, version)[1] <= 0)):
                continue  # (the header and tail say: the body of a transfers' batch is not unpacked)
            entry = _decode_entry(sequence, value)
            notes = notifications.after(self._notes_of(entry, entry.body.view(RECORD_DTYPES[entry.operation])), *after)
            notes = notifications.of_merchants(notes, merchants)
            found.append(notes[:limit - total])
            total += found[-1].shape[0]
            if total >= limit:
                break
        return np.concatenate(found) if found else np.zeros(0, dtype=notifications.NOTIFICATION_DTYPE)

    def notifications_of_batch(self, sequence: int, operation: int, events: np.ndarray, results: np.ndarray,
                               last_timestamp: int, expired: np.ndarray | None = None,
                               legs: np.ndarray | None = None) -> np.ndarray:
        """The notifications of a batch just committed, from what its submitter holds (its
        events, results, sequence, the ledger's last timestamp after it and the orders its start
        closed, ``PendingBatch.expired``): the same records ``notifications`` reads from its log
        entry, with no read of the log. ``legs``: a ``pay_orders`` batch's
        ``core.notifications.payment_legs``, taken when it was applied, give its payments'
        merchants (else each paid order is looked up)."""
        from core import notifications

        if operation not in notifications.NOTIFYING_OPERATIONS and (expired is None or not expired.shape[0]):
            return np.zeros(0, dtype=notifications.NOTIFICATION_DTYPE)
        return self._notes_of(LogEntry(sequence, operation, 0, last_timestamp, None, _failures(results), expired),
                              events, legs)

    def _notes_of(self, entry: LogEntry, events: np.ndarray, legs: np.ndarray | None = None) -> np.ndarray:
        """A batch's notifications: its events' and its start's expiries, what they do not say
        resolved through the payments' legs (``legs``) or the orders."""
        from core import notifications

        kinds = notifications.NotificationKind
        notes = notifications.of_expired(entry)
        if entry.operation in notifications.NOTIFYING_OPERATIONS:
            of_events = notifications.of_entry(entry, events, EVENT_TIMESTAMPS)
            if legs is not None and entry.operation == Operation.pay_orders:
                notifications.merchants_from_legs(of_events, legs)  # (no change unless they fit exactly)
            notes = np.concatenate([of_events, notes]) if notes.shape[0] else of_events
        # A payment or a confirm names its order only; a close may have revoked a held charge, an
        # expiry names the order alone.
        unresolved = ((notes["merchant_id_lo"] == 0) & (notes["merchant_id_hi"] == 0)) | (notes["kind"] == kinds.closed)
        at = np.flatnonzero(unresolved)
        if at.shape[0]:
            ids = np.zeros(at.shape[0], dtype=ID_DTYPE)
            ids["lo"], ids["hi"] = notes["order_id_lo"][at], notes["order_id_hi"][at]
            orders = self._lookup_table("orders", ids)
            if orders.shape[0] != at.shape[0]:
                raise StoreError(f"batch {entry.sequence}: a notified order is missing from the orders")
            notes["merchant_id_lo"][at], notes["merchant_id_hi"][at] = orders["merchant_id_lo"], orders["merchant_id_hi"]
            # (A closed order's close_reason is final: what the lookup says now, it said then.)
            revoked = (notes["kind"][at] == kinds.closed) & (orders["close_reason"] == int(CloseReason.revoked))
            notes["kind"][at[revoked]] = kinds.revoked
            expired = notes["kind"][at] == kinds.expired
            notes["timestamp"][at[expired]] = orders["closed_at"][expired]
            notes["kind"][at[expired & (orders["close_reason"] == int(CloseReason.timeout))]] = kinds.revoked
            # The amount paid, or held and released (a revoked or expired order's): a close says none.
            priced = notes["kind"][at] != kinds.closed
            notes["amount"][at[priced]] = orders["amount"][priced]
        return notes

    def checkpoint(self) -> None:
        """Write the in-memory state as the new checkpoint now, and wait until it is written.

        The store also checkpoints by itself every ``checkpoint_interval_events`` events (and
        every ``checkpoint_interval_batches`` batches, if that is set), in the background.
        """
        self._reap(wait_all=True)
        self._check_usable()
        self._start_checkpoint()
        self._reap(wait_all=True)

    def archive_log(self, into: str | None = None) -> dict:
        """Move the log's entries covered by a checkpoint into segment files (docs/tiering.md,
        "Log retention"); the log keeps the entries after them. Returns what was done.

        Writes a checkpoint now and syncs the checkpoint and cold environments first, so that
        recovery normally needs nothing archived. ``into`` sets the archive directory (kept in
        the store's meta; segments already archived elsewhere are moved there). Segments are
        durable before their entries leave the log; a crash in between leaves a segment that
        the next run replaces. Idempotent: a second run archives only what came since.
        """
        self.checkpoint()
        self.sink_journal()  # the entries it covers are in the LMDB log, not only in the journal
        self._checkpoint_env.sync(True)
        self._cold_env.sync(True)
        through = self._checkpoint_meta.sequence
        self._move_archive(into)
        archive, start = self.archive, self._archive_meta.archived_through
        if self._archive_meta.writing_through > start:  # an earlier run stopped half-way: its files
            archive.remove_range(start + 1, self._archive_meta.writing_through)
        strangers = [segment.path for segment in archive.segments() if segment.last > start]
        if strangers:
            raise StoreError(f"{archive.directory} holds segments past this store's archived entries (1..{start}), "
                             f"e.g. {strangers[0]}: another store's? Give each store an archive directory of its own")
        first = start + 1
        segments = []
        if first <= through:
            self._put_archive_meta(msgspec.structs.replace(self._archive_meta, writing_through=through))
            raw = self._release_as_read(self._log_raw(first))
            try:
                segments = archive.write(itertools.takewhile(lambda item: item[0] <= through, raw))
            finally:
                raw.close()  # ends its read transaction before the deletes below
            self._forget_archived(first, through)
        return {"archived_through": self._archive_meta.archived_through, "entries": max(0, through - start),
                "segments": [segment.path for segment in segments],
                "segment_bytes": sum(os.path.getsize(segment.path) for segment in segments),
                "directory": self.archive.directory, "log_first": self._archive_meta.archived_through + 1,
                "log_last": self.sequence}

    def _forget_archived(self, first: int, through: int) -> None:
        """Delete log entries ``first..through`` (already in durable segments), a slice per
        transaction, each raising ``archived_through`` with its deletes."""
        for slice_first in range(first, through + 1, _ARCHIVE_DELETE_SLICE_ENTRIES):
            slice_last = min(slice_first + _ARCHIVE_DELETE_SLICE_ENTRIES - 1, through)
            meta = msgspec.structs.replace(self._archive_meta, archived_through=slice_last)
            with self._env.begin(write=True, db=self._log) as txn:
                for sequence in range(slice_first, slice_last + 1):
                    txn.delete(_SEQUENCE.pack(sequence))
                txn.put(b"archive", msgspec.msgpack.encode(meta), db=self._meta_db)
            self._archive_meta = meta

    def _release_as_read(self, items, every_bytes: int = 256 << 20):
        """Pass ``(sequence, entry)`` items through, letting the log's mapped pages go every
        ``every_bytes`` read (archiving reads the whole log once: see core/memory.py)."""
        read = 0
        for item in items:
            yield item
            read += len(item[1])
            if read >= every_bytes:
                memory.release_mapped_file(os.path.join(self.path, "data.mdb"))
                read = 0

    def _put_archive_meta(self, meta: _ArchiveMeta) -> None:
        with self._env.begin(write=True, db=self._meta_db) as txn:
            txn.put(b"archive", msgspec.msgpack.encode(meta))
        self._archive_meta = meta

    def _move_archive(self, into: str | None) -> None:
        """Record ``into`` as the archive directory, the segments already archived moved there:
        durable copies first, then the meta, then the old files (a crash leaves at worst
        duplicates, never a segment only half moved)."""
        if into is None:
            return
        old = self.archive
        new = LogArchive(os.path.abspath(into))
        if os.path.realpath(old.directory) == os.path.realpath(new.directory):
            return
        moved = [segment for segment in old.segments() if segment.last <= self._archive_meta.archived_through]
        new.take_over(moved)
        self._put_archive_meta(msgspec.structs.replace(self._archive_meta, directory=new.directory))
        old.remove(moved)

    # ------------------------------------------------------------------ the background thread

    def _reap(self, *, wait_one: bool = False, wait_all: bool = False) -> None:
        """Take in finished background jobs: the cold tier's progress lets the ledger evict and
        prune. ``wait_one`` waits for the oldest flush (or, with none, the checkpoint). A failed
        job fails the store (the log still holds everything)."""
        if (wait_one or wait_all) and self._staged:
            self.commit_staged()  # the jobs wait for the batches they hold to be committed
        if wait_one and not self._flush_jobs and self._checkpoint_job is not None:
            wait_one, wait_checkpoint = False, True
        else:
            wait_checkpoint = wait_all
        while self._flush_jobs and (wait_all or wait_one or self._flush_jobs[0].done()):
            wait_one = False
            released = self._job_result(self._flush_jobs.popleft())
            if released is not None:  # a product table's outbox entries, now in its cold side
                name, end = released
                self.machine.tables[name].release_outbox(end)
        job = self._checkpoint_job
        if job is not None and (wait_checkpoint or job.future.done()):
            concurrent.futures.wait([job.future])
            self._checkpoint_job = None
            self.ledger.end_hot_snapshot()  # its copy of the balances is finished
            self._job_result(job.future)
            # Its pages go to disk now, paced, on the same thread: the ring is not pinned for it.
            self._writeback_stop.clear()
            self._writeback = self._checkpointer.submit(self._write_back_checkpoint)
        if wait_all and self._writeback is not None:
            # Whoever waits for everything (close, an explicit checkpoint, archiving) does not
            # wait for the pacing: the rest is left to the kernel.
            self._writeback_stop.set()
            self._writeback.result()
            self._writeback = None
        cold_count = self._cold_epochs * self._epoch_transfers
        evictable = cold_count if self._checkpoint_job is None else min(cold_count, self._checkpoint_job.pin)
        if evictable > self.ledger.cold_count:
            self.ledger.set_cold_id_max(self._cold_id_max)  # before eviction: those ids leave the hot map
            self.ledger.set_cold_count(evictable)

    def _job_result(self, future: concurrent.futures.Future):
        try:
            return future.result()
        except BaseException as error:
            error = _with_disk_hint(error, self.path)
            self._failed = self._failed or error
            raise StoreFailedError(f"the cold tier or a checkpoint could not be written: {error}") from error

    def _make_room(self, count: int) -> None:
        """Wait until the ring can take ``count`` more transfers and the epochs the next batch
        prunes the statuses of are written (backpressure on the cold tier)."""
        ledger = self.ledger
        while (ledger.transfer_count + count > ledger.cold_count + ledger.transfers_hot_max
               or self._cold_epochs * self._epoch_transfers < ledger.prune_boundary(ledger.transfer_count)):
            if not self._flush_jobs and self._checkpoint_job is None:
                self._queue_flush()
                if not self._flush_jobs:
                    raise StoreError("no room in the hot window and no epoch to write: "
                                     f"transfers_hot_max {ledger.transfers_hot_max} is too small")
            self._reap(wait_one=True)

    def _queue_flush(self) -> None:
        """Hand every complete epoch not yet handed over to the background thread."""
        complete = self.ledger.transfer_count // self._epoch_transfers
        first = self._flush_queued_epochs
        if complete <= first:
            return
        size = self._epoch_transfers
        statuses = [self.ledger.resolved_between(e * size, (e + 1) * size) for e in range(first, complete)]
        self._flush_jobs.append(self._flusher.submit(self._flush, first, complete, statuses, self._last_pending))
        self._flush_queued_epochs = complete

    def _queue_outbox_flush(self, *, force: bool = False) -> None:
        """Hand each product table's outbox entries not yet handed over to the flush thread:
        once a quarter of the outbox waits, or (``force``) any."""
        for name, table in self.machine.tables.items():
            start, end = self._outbox_queued[name], table.outbox_head
            if end > start and (force or end - start >= _OUTBOX_FLUSH_ENTRIES):
                self._flush_jobs.append(self._flusher.submit(self._flush_outbox, name, table.outbox_entries(start, end),
                                                             end, self._last_pending))
                self._outbox_queued[name] = end

    def _flush_outbox(self, name: str, entries: np.ndarray, end: int, last_pending: "PendingBatch | None"):
        """Write a product table's outbox entries to its cold side (background thread), after
        the log commit of the batches before their eviction; the submitting thread then frees
        them (``_reap``)."""
        started_unix_s, started = time.time(), time.perf_counter()
        with self._cold_env.begin(write=True) as txn:
            written = self._versions[name].write(txn, entries, end)
            if last_pending is not None:
                last_pending.result()  # never hold a state the log does not (raises, aborting)
            commit_started = time.perf_counter()
        commit_s = time.perf_counter() - commit_started
        self.background_events.append(BackgroundEvent(f"{name} outbox", started_unix_s, time.perf_counter() - started,
                                                       written, commit_s=commit_s))
        return name, end

    def _flush(self, first: int, last: int, statuses: list, last_pending: "PendingBatch | None") -> None:
        """Write epochs ``[first, last)`` to the cold tier (background thread) in one transaction:
        one sync however many epochs a lagging flush (or a recovery's replay) has to catch up."""
        size = self._epoch_transfers
        # Readers follow self._last_epoch into the cold tier: it may only point at committed
        # epochs, so the transaction works on a copy, published after the commit.
        started_unix_s, started = time.time(), time.perf_counter()
        last_epoch = self._last_epoch.copy()
        chain, id_max = self._cold_chain, self._cold_id_max
        written = 0
        with self._cold_env.begin(write=True) as txn:
            for epoch in range(first, last):
                rows = self.ledger.transfers_range(epoch * size, (epoch + 1) * size)
                links = self.ledger.links_range(epoch * size, (epoch + 1) * size)
                chain, touched, epoch_bytes = self.cold.write_transfer_epoch(txn, epoch, rows, links, statuses[epoch - first],
                                                                    chain, last_epoch)
                last_epoch[touched] = epoch + 1
                written += epoch_bytes
                id_max = max(id_max, _id_max(rows))
            if last_pending is not None:
                last_pending.result()  # never hold a transfer the log does not (raises, aborting)
            commit_started = time.perf_counter()
        commit_s = time.perf_counter() - commit_started
        with self._cold_published:
            while self._capture_limit is not None and last > self._capture_limit:
                self._cold_published.wait()  # a checkpoint of an earlier state is reading it
            np.copyto(self._last_epoch, last_epoch)
            self.filter.add_rows(self.ledger.transfers_range(first * size, last * size))
            self._cold_id_max = id_max
            self._cold_chain = chain
            self._cold_epochs = last  # last: the submitting thread may now evict these epochs
        # Pages LMDB glimpsed while appending stay mapped (core/memory.py): let them go.
        memory.release_mapped_file(os.path.join(self.path, "data.mdb"),
                                   os.path.join(self.path, COLD_SUBDIRECTORY, "data.mdb"))
        self.background_events.append(BackgroundEvent("flush", started_unix_s, time.perf_counter() - started,
                                                       written, commit_s=commit_s))

    def _start_checkpoint(self) -> None:
        """Snapshot the state after the last applied batch; write it on the checkpoint thread.

        The pending table and the expiry heap are copied here, between two batches; the balances
        and features (the largest part: 129 MB for a million accounts) are copied on write
        (core/cow.pxd), finished by the checkpoint thread. Account rows only grow at their end
        and are read in place; the ring's transfers not yet in the cold tier are read by the
        checkpoint thread, and the ring is pinned (no eviction past them) until it has. The
        checkpoint is committed only after the batch it ends with is: it never covers an entry
        the log does not have.
        """
        started = time.perf_counter()
        arrays, scalars = self.machine.snapshot()
        # By kind (core/checkpoint.py): appended rows are read in place, the rest copied now,
        # except the copy-on-write array (the balances), whose copy begins last, so that nothing
        # can fail between it and the hand-off below but the hand-off.
        kinds = {name: CHECKPOINT_ARRAYS[name] for name in arrays}
        if list(kinds.values()).count(checkpoint.COPY_ON_WRITE) != 1:
            raise AssertionError(f"the ledger has one copy-on-write array (its balances), not {kinds}")
        copy_on_write = next(name for name, kind in kinds.items() if kind == checkpoint.COPY_ON_WRITE)
        arrays = {name: self._snapshot_copy(name, array) if kinds[name] not in (checkpoint.APPEND_RECORDS, checkpoint.COPY_ON_WRITE)
                  else array for name, array in arrays.items()}
        arrays[copy_on_write] = self.ledger.begin_hot_snapshot(self._snapshot_buffer(copy_on_write, arrays[copy_on_write]))
        stall_s = time.perf_counter() - started
        self.checkpoint_stall_max_s = max(self.checkpoint_stall_max_s, stall_s)
        self._batches_since_checkpoint = self._events_since_checkpoint = 0
        pin = self.ledger.cold_count
        try:
            with self._cold_published:
                self._capture_limit = scalars["transfer_count"] // self._epoch_transfers
            future = self._checkpointer.submit(self._write_checkpoint, self._applied_sequence, self._last_pending,
                                               arrays, scalars, pin, stall_s)
        except BaseException:
            self.ledger.end_hot_snapshot()
            with self._cold_published:  # no checkpoint will read: the flushes must not wait for one
                self._capture_limit = None
                self._cold_published.notify_all()
            raise
        self._checkpoint_job = _Job(future, pin)

    def _snapshot_buffer(self, name: str, array: np.ndarray) -> np.ndarray:
        # Kept from one checkpoint to the next: fresh memory would cost a page fault per 4 KiB
        # on every checkpoint (on this VM about 0.45 s per 128 MiB).
        buffer = self._snapshot_buffers.get(name)
        if buffer is None or buffer.shape[0] < array.shape[0]:
            buffer = np.empty(max(array.shape[0], 2 * buffer.shape[0] if buffer is not None else 0), array.dtype)
            self._snapshot_buffers[name] = buffer
        return buffer

    def _snapshot_copy(self, name: str, array: np.ndarray) -> np.ndarray:
        # In pieces, letting the other threads run between them (only this thread changes it).
        buffer = self._snapshot_buffer(name, array)
        step = max(1, _SNAPSHOT_PIECE_BYTES // array.dtype.itemsize)
        for start in range(0, array.shape[0], step):
            end = min(start + step, array.shape[0])
            np.copyto(buffer[start:end], array[start:end])
            time.sleep(0)  # a GIL hand-off: the event loop and the commit thread go on
        return buffer[:array.shape[0]]

    def _checkpoint_due(self) -> bool:
        if (self._events_since_checkpoint < self._checkpoint_interval_events
                and (self._checkpoint_interval_batches is None
                     or self._batches_since_checkpoint < self._checkpoint_interval_batches)):
            return False
        # One checkpoint at a time: if the last is still being written, try after the next batch.
        if self._checkpoint_job is not None:
            return False
        # A writeback still going (only with checkpoints closer together than it takes) is cut
        # short: the kernel writes the rest, and the checkpoint runs after its current piece.
        if self._writeback is not None and not self._writeback.done():
            self._writeback_stop.set()
        return True

    def _write_checkpoint(self, sequence: int, last_pending: "PendingBatch | None", arrays, scalars, pin: int,
                          stall_s: float) -> None:
        try:
            self._write_checkpoint_now(sequence, last_pending, arrays, scalars, pin, stall_s)
        finally:  # on failure too: flushes must not wait for a capture that will not come
            with self._cold_published:
                self._capture_limit = None
                self._cold_published.notify_all()

    def _write_checkpoint_now(self, sequence: int, last_pending: "PendingBatch | None", arrays, scalars, pin: int,
                              stall_s: float) -> None:
        started_unix_s, started = time.time(), time.perf_counter()
        previous = self._checkpoint_meta.arrays if self._checkpoint_meta else {}
        written, bytes_written = {}, 0
        count = scalars["transfer_count"]
        with self._checkpoint_env.begin(write=True) as txn:
            with self._cold_published:
                # The cold tier's progress now (at most the epochs complete at the snapshot: later
                # flushes wait): the checkpoint holds the ring from there on (pinned until written).
                cold_epochs, cold_chain, cold_id_max = self._cold_epochs, self._cold_chain, self._cold_id_max
                filter_added = self.filter.added
                last_epoch = self._last_epoch[:scalars["account_count"]].copy()
                self._capture_limit = None
                self._cold_published.notify_all()
            self._copy_hot_snapshot()
            cold_count = cold_epochs * self._epoch_transfers
            if not pin <= cold_count <= count:  # the ring holds [pin, count): nothing else to read
                raise AssertionError(f"checkpoint reads transfers [{cold_count}, {count}) of a ring pinned at {pin}")
            # The filter first, read after the capture while flushes add to it: it holds every id
            # of the captured epochs (added before they were published) and maybe later ones,
            # which only cost a lookup. Then the ledger's arrays and the transfer table's.
            arrays = dict(self._regions_owners(), **arrays, tail_rows=self.ledger.transfers_range(cold_count, count),
                          tail_links=self.ledger.links_range(cold_count, count), last_epoch=last_epoch)
            if arrays.keys() != CHECKPOINT_ARRAYS.keys():
                raise AssertionError(f"a checkpoint writes the declared arrays, not {sorted(arrays)}")
            scalars = dict(scalars, cold_count=cold_count, cold_id_max_lo=cold_id_max & _U64_MAX,
                           cold_id_max_hi=cold_id_max >> 64)
            self._array_writer.begin(txn)
            try:
                for name, array in arrays.items():
                    written[name], array_bytes = self._write_array(name, array, previous.get(name))
                    bytes_written += array_bytes
            finally:
                self._array_writer.end()
            meta = _CheckpointMeta(sequence=sequence, scalars=scalars, arrays=written, cold_epochs=cold_epochs,
                                   cold_chain=cold_chain, filter_added=filter_added)
            txn.put(b"meta", msgspec.msgpack.encode(meta))
            if last_pending is not None:
                last_pending.result()  # raises (and aborts this transaction) if its commit failed
            commit_started = time.perf_counter()
        commit_s = time.perf_counter() - commit_started
        self._checkpoint_meta = meta
        memory.release_mapped_file(os.path.join(self.path, CHECKPOINT_SUBDIRECTORY, "data.mdb"))
        self.checkpoints_written += 1
        duration_s = time.perf_counter() - started
        self.checkpoint_write_max_s = max(self.checkpoint_write_max_s, duration_s)
        self.background_events.append(BackgroundEvent("checkpoint", started_unix_s, duration_s,
                                                       bytes_written, stall_s=stall_s, commit_s=commit_s))

    def _copy_hot_snapshot(self) -> None:
        """Finish the balances' copy-on-write copy (core/cow.pxd), at once and with no GIL: until
        it is done, each batch copies the records it is first to change."""
        self.ledger.copy_hot_snapshot()

    def _write_back_checkpoint(self) -> None:
        """Start the checkpoint's pages to disk ourselves, paced (core/writeback.py says why)."""
        try:
            writeback.write_back(os.path.join(self.path, CHECKPOINT_SUBDIRECTORY, "data.mdb"),
                                 bytes_per_s=CHECKPOINT_WRITEBACK_BYTES_PER_S, stop=self._writeback_stop)
        except Exception as error:  # noqa: BLE001 - the kernel writes it back anyway: a line, not a failure
            print(f"tally: {self.path}: checkpoint writeback: {error}", file=sys.stderr)

    def _regions_owners(self) -> dict:
        """The ``REGIONS`` arrays (core/checkpoint.py) by name: their owners write and load them."""
        return {"filter": self.filter, "product_filter": self.product_filter}

    def _write_array(self, name: str, array, old: checkpoint.ArrayMeta | None) -> tuple[checkpoint.ArrayMeta, int]:
        """Write what changed of one declared array (``core.checkpoint``); meta and bytes written."""
        return self._array_writer.write(name, CHECKPOINT_ARRAYS[name], array, old)

    def close(self) -> None:
        """Wait for submitted batches and the background threads, stop the threads, close LMDB."""
        if self._env is None:
            return
        try:
            if self._failed is None:
                self._drain()
        finally:
            if self._staged:  # a failed store: they are answered with its failure
                group, self._staged = self._staged, []
                self._commit_group(group)
            self._commits.put(None)
            self._committer.join()
            with self._sink_ready:  # what the journal holds goes into the LMDB log, then the sink ends
                self._sink_stopping = True
                self._sink_ready.notify_all()
            self._sinker.join()
            try:
                self._reap(wait_all=True)
            except Exception:  # the log holds everything the cold tier and the checkpoint would have
                traceback.print_exc()
            self._flusher.shutdown(wait=True)
            self._checkpointer.shutdown(wait=True)
            self._cold_env.close()
            self._checkpoint_env.close()
            self._journal.close()
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
            raise StoreFailedError(f"a commit failed earlier; reopen the store to recover ({self._failed})") \
                from self._failed
        if self._env is None:
            raise StoreError("the store is closed")

    def _drain(self):
        """Wait until every submitted batch is committed; raise if a commit failed."""
        self._check_usable()
        self.commit_staged()
        if self._last_pending is not None:
            self._last_pending.wait()
        self._check_usable()

    def _commit_loop(self):
        name_this_thread()
        # Writes the journal in submission order (``commit_staged`` writes it too, never at the
        # same time: staged batches wait for the submitted ones, and submit commits the staged
        # first). Group commit: every batch already waiting goes into the same journal write
        # and sync, so that the sync is paid once for all of them instead of once each
        # (results are still released only after the sync that holds their batch).
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
            if group:
                self._commit_group(group)

    def _commit_group(self, group: list) -> None:
        """Make a group of (PendingBatch, entry) durable in the journal and finish them (the
        commit thread, or ``commit_staged``'s caller)."""
        # Each part of a group made durable is acknowledged, even if the sink fails meanwhile
        # (the journal holds it, and a reopen recovers it); a failure stops what comes after.
        done = 0
        if self._failed is None:
            try:
                for part in self._journal_group(group):
                    self._committed_sequence = part[-1][0].sequence
                    for pending, _ in part:
                        pending._finish(None)
                        self._in_flight.release()
                    done += len(part)
            except BaseException as failure:  # the disk: nothing more is acked
                self._failed = self._failed or _with_disk_hint(failure, self.path)
        for pending, _ in group[done:]:
            pending._finish(self._failed)
            self._in_flight.release()

    def _journal_group(self, group: list):
        """Make a group of log entries durable in the journal (commit thread), in parts that
        fit half the ring, and hand copies of them to the sink (the entry buffers are reused
        once their batches are acked); yields each part once it is durable."""
        part, part_bytes = [], 0
        half = self._journal.capacity_bytes // 2
        for index, (pending, entry) in enumerate(group):
            part.append((pending.sequence, entry))
            part_bytes += journal.frame_bytes(len(entry))
            last = index == len(group) - 1
            if last or part_bytes + journal.frame_bytes(len(group[index + 1][1])) > half:
                placed = self._journal.append(part)
                with self._sink_ready:
                    for (sequence, entry_view), (end_offset, held) in zip(part, placed):
                        self._sink_items.append((sequence, bytes(entry_view), end_offset, held))
                        self._sink_bytes += held
                    if self._sink_bytes >= self._journal.capacity_bytes // 4:
                        self._sink_ready.notify_all()
                yield group[index + 1 - len(part):index + 1]
                part, part_bytes = [], 0

    def _sink_loop(self) -> None:
        """The sink thread: every ``JOURNAL_SINK_INTERVAL_S`` (or when a quarter of the ring is
        waiting, or someone waits for it), the journal's entries go into the LMDB log with the
        journal position after them, in one synced commit; then their ring space is reused."""
        name_this_thread()
        while True:
            with self._sink_ready:
                self._sink_ready.wait_for(
                    lambda: self._sink_stopping or self._sink_wanted
                    or self._sink_bytes >= self._journal.capacity_bytes // 4,
                    timeout=constants.JOURNAL_SINK_INTERVAL_S)
                items = list(self._sink_items)
                self._sink_items.clear()
                self._sink_bytes = 0
                stopping = self._sink_stopping
            # Sunk whatever else failed (a flush, a checkpoint): acknowledged entries belong in the
            # LMDB log, and the commit thread may be waiting for their room. Only the sink's own
            # failure stops it.
            if items and self._sink_error is None:
                try:
                    with self._env.begin(write=True, db=self._log) as txn:
                        for sequence, entry, _, _ in items:
                            # An append refused (a key not after the last) must never happen.
                            if not txn.put(_SEQUENCE.pack(sequence), entry, append=True):
                                raise StoreError(f"log entry {sequence} was not appended: "
                                                 "the log does not end where this store thinks it does")
                        sequence, _, end_offset, _ = items[-1]
                        self._put_journal_position(txn, self._journal.generation, sequence + 1, end_offset,
                                                   self._journal.capacity_bytes)
                    self._journal.release(sum(item[3] for item in items))
                except BaseException as error:  # the disk, the map size: the journal still holds them
                    self._sink_error = _with_disk_hint(error, self.path)
                    self._failed = self._failed or self._sink_error
                    self._journal.fail(self._sink_error)
            with self._sink_ready:
                if items and self._sink_error is None:
                    self._sunk_sequence = items[-1][0]
                self._sink_wanted = bool(self._sink_items) and self._sink_wanted
                self._sink_ready.notify_all()
            if stopping and not items:
                return

    def sink_journal(self) -> None:
        """Wait until every batch made durable is in the LMDB log, not only in the journal (for
        readers of the LMDB log on an open store: ``log_entries``, ``archive_log``). Also on a
        failed store, unless the sink itself failed (StoreFailedError)."""
        if self._env is None:
            raise StoreError("the store is closed")
        if self._failed is None:
            self.commit_staged()
            if self._last_pending is not None:
                self._last_pending.wait()
        target = self._committed_sequence
        with self._sink_ready:
            while self._sunk_sequence < target and self._sink_error is None:
                self._sink_wanted = True
                self._sink_ready.notify_all()
                self._sink_ready.wait(constants.JOURNAL_SINK_INTERVAL_S)
        if self._sink_error is not None:
            raise StoreFailedError(f"the journal's entries could not be put into the log ({self._sink_error}); "
                                   "reopen the store to recover them") from self._sink_error

    def _put_journal_position(self, txn, generation: int, next_sequence: int, offset: int, capacity: int) -> None:
        """Where recovery reads the journal from: the frame after the LMDB log's last entry."""
        txn.put(b"journal", _JOURNAL_POSITION.pack(generation, next_sequence, offset, capacity), db=self._meta_db)

    def _open_journal(self, journal_bytes: int, prefault: bool) -> journal.Journal:
        """Open the journal; move the entries it holds beyond the LMDB log (synced before a
        crash, not yet sunk) into the LMDB log, then start it afresh with a new generation."""
        if journal_bytes < JOURNAL_BYTES_MIN or journal_bytes % journal.ALIGN_BYTES:
            raise ValueError(f"journal_bytes must be a multiple of {journal.ALIGN_BYTES} and at least "
                             f"{JOURNAL_BYTES_MIN} (four of the largest log entries)")
        ring = journal.Journal(os.path.join(self.path, JOURNAL_FILE), journal_bytes)
        try:
            last = self._last_sequence()
            with self._env.begin(db=self._meta_db) as txn:
                stored = txn.get(b"journal")
            frames, generation = [], 0
            if stored is None:  # a new store (or one from before the journal): nothing of it to read
                ring.truncate()
            else:
                generation, next_sequence, offset, capacity = _JOURNAL_POSITION.unpack(stored)
                if next_sequence != last + 1:
                    raise StoreError(f"{self.path}: the journal's position (entry {next_sequence}) does not follow "
                                     f"the log's last entry ({last})")
                frames = list(ring.scan(offset, next_sequence, generation, capacity))
            try:
                with self._env.begin(write=True) as txn:
                    for sequence, entry, _ in frames:
                        if not txn.put(_SEQUENCE.pack(sequence), entry, append=True, db=self._log):
                            raise StoreError(f"{self.path}: journal entry {sequence} does not follow the log")
                    self._put_journal_position(txn, generation + 1, last + len(frames) + 1, 0, journal_bytes)
            except lmdb.MapFullError:
                raise StoreError(f"{self.path}: the journal holds {len(frames)} acknowledged batches the log has no "
                                 "room for: reopen with a larger map_size_bytes") from None
            ring.start(generation + 1)
            if prefault:
                ring.prefill()
        except BaseException:
            ring.close()
            raise
        self.journal_recovered_batches = len(frames)
        return ring

    def _open_checkpoint_env(self, map_size_bytes: int):
        """The checkpoints' LMDB environment: its own write lock, no fsync.

        Its own environment, so that writing a checkpoint never holds up a log commit; no fsync,
        because a checkpoint only saves replay time and a sync of hundreds of megabytes would
        stall the log's synchronous commits: the checkpoint thread writes the pages back itself,
        paced (``_write_back_checkpoint``). After a
        power loss it may be damaged (chunk checksums tell); recovery then replays the whole log
        (``_recover``). If it cannot even be opened, it is set aside and a new one started.
        """
        return self._open_side_env(CHECKPOINT_SUBDIRECTORY, map_size_bytes, sync=False)

    def _open_cold_env(self, map_size_bytes: int):
        """The cold tier's LMDB environment: each epoch's commit syncs its data, not its meta page.

        LMDB's "ACI without D": a power loss may undo the last epochs (replay writes them again)
        but never leaves the environment inconsistent, which matters because idempotency now
        depends on it (an id lost from the cold tier would be answered as new). An epoch is a few
        MB, so its sync is short; the checkpoints' large writes stay in their own unsynced
        environment.
        """
        return self._open_side_env(COLD_SUBDIRECTORY, map_size_bytes, sync=True)

    def _open_cold_tables(self) -> None:
        """The transfers' cold tier and each product table's cold side, in the cold environment."""
        self.cold = ColdTier(self._cold_env, self._epoch_transfers)
        self._versions = {name: ColdVersions(self._cold_env, name.encode() + b"_", table_module.OUTBOX_ENTRY_DTYPE)
                          for name in PRODUCT_TABLES}

    def _open_side_env(self, subdirectory: str, map_size_bytes: int, *, sync: bool):
        directory = os.path.join(self.path, subdirectory)
        options = dict(map_size=map_size_bytes, max_dbs=_SIDE_DATABASES_MAX, sync=sync, metasync=False, readahead=False,
                       meminit=False)
        try:
            return lmdb.open(directory, **options)
        except lmdb.Error as error:
            aside = f"{directory}.damaged-{time.time_ns()}"
            print(f"tally: {self.path}: {subdirectory} environment unreadable ({error}); moved to {aside}", file=sys.stderr)
            os.rename(directory, aside)
            return lmdb.open(directory, **options)

    def _load_or_create_meta(self, accounts_max, transfers_hot_max, pending_max, cold_epoch_transfers,
                             id_filter_bytes, product_capacities, secret, limits_initial=None) -> _Meta:
        with self._env.begin(write=True, db=self._meta_db) as txn:
            stored = txn.get(b"meta")
            if stored is not None:
                version = msgspec.msgpack.decode(stored, type=dict).get("version")
                if version != _STORE_VERSION and version not in _STORE_VERSIONS_UPGRADED:
                    raise StoreError(f"{self.path}: store format {version}, this build reads {_STORE_VERSION}")
                meta = msgspec.structs.replace(msgspec.msgpack.decode(stored, type=_Meta), version=_STORE_VERSION)
                for name, value in (("cold_epoch_transfers", cold_epoch_transfers), ("id_filter_bytes", id_filter_bytes)):
                    if value is not None and value != getattr(meta, name):
                        raise StoreError(f"{self.path}: {name} is {getattr(meta, name)}, fixed when the directory "
                                         f"was created; {value} asked")
                if secret is not None and meta.secret and secret != meta.secret:
                    raise StoreError(f"{self.path}: the store's secret is fixed when the directory was created")
                if not meta.limits_initial:  # a store made before limits: those of its capacities until now
                    before = _limits_of(meta)
                    meta = msgspec.structs.replace(meta, limits_initial=before, limits_raised=before)
                # Capacities may grow on reopen, never shrink below what was configured.
                meta = msgspec.structs.replace(meta, accounts_max=max(meta.accounts_max, accounts_max or 0),
                                               transfers_hot_max=max(meta.transfers_hot_max, transfers_hot_max or 0),
                                               pending_max=max(meta.pending_max, pending_max or 0),
                                               secret=meta.secret or secret or os.urandom(orders_module.SECRET_BYTES),
                                               **{name: max(value, product_capacities.get(name) or 0)
                                                  for name, value in _product_capacities(meta).items()})
            else:
                meta = _Meta(_STORE_VERSION, accounts_max or constants.ACCOUNTS_MAX_DEFAULT,
                             transfers_hot_max or constants.TRANSFERS_HOT_MAX_DEFAULT,
                             pending_max or constants.PENDING_MAX_DEFAULT,
                             cold_epoch_transfers or min(constants.COLD_EPOCH_TRANSFERS_DEFAULT,
                                                         max(1, (transfers_hot_max or constants.TRANSFERS_HOT_MAX_DEFAULT) // 4)),
                             id_filter_bytes or constants.ID_FILTER_BYTES_DEFAULT,
                             secret=secret or os.urandom(orders_module.SECRET_BYTES),
                             **{name: product_capacities.get(name) or default
                                for name, default in PRODUCT_CAPACITIES.items()})
            if stored is None:
                # A new store's limits are its capacities' (a replay's target: its source's at
                # the log's start, which the replayed set_limits batches raise as they did).
                meta = msgspec.structs.replace(meta, limits_initial=dict(limits_initial or _limits_of(meta)),
                                               limits_raised=_limits_of(meta))
            if len(meta.secret) != orders_module.SECRET_BYTES:
                raise StoreError(f"{self.path}: the secret must be {orders_module.SECRET_BYTES} bytes")
            if meta.transfers_hot_max <= meta.cold_epoch_transfers:
                raise StoreError(f"transfers_hot_max ({meta.transfers_hot_max}) must exceed cold_epoch_transfers "
                                 f"({meta.cold_epoch_transfers})")
            if meta.id_filter_bytes % 64:
                raise StoreError(f"id_filter_bytes ({meta.id_filter_bytes}) must be a multiple of 64")
            txn.put(b"meta", msgspec.msgpack.encode(meta))
        return meta

    def _last_sequence(self) -> int:
        with self._env.begin(db=self._log) as txn:
            cursor = txn.cursor()
            last = _SEQUENCE.unpack(cursor.key())[0] if cursor.last() else 0
        return max(last, self._archive_meta.archived_through)

    def _load_archive_meta(self) -> _ArchiveMeta:
        with self._env.begin(db=self._meta_db) as txn:
            stored = txn.get(b"archive")
        return _ArchiveMeta() if stored is None else msgspec.msgpack.decode(stored, type=_ArchiveMeta)

    @property
    def archive(self) -> LogArchive:
        """The archived segments of this store's log (``archive_log``)."""
        return LogArchive(os.path.join(self.path, self._archive_meta.directory))

    def _log_raw(self, first_sequence: int):
        """``(sequence, entry bytes)`` from ``first_sequence`` on: the archived segments, then the
        log. Holds an LMDB read transaction while it reads the log."""
        through = self._archive_meta.archived_through
        first_sequence = max(first_sequence, 1)
        if first_sequence <= through:
            try:
                yield from self.archive.entries(first_sequence, through)
            except ArchiveError as error:
                raise StoreError(f"{self.path}: the log's entries up to {through} are archived, and: {error}") from error
        with self._env.begin(db=self._log, buffers=True) as txn:
            cursor = txn.cursor()
            if cursor.set_range(_SEQUENCE.pack(max(first_sequence, through + 1))):
                for key, value in cursor:
                    yield _SEQUENCE.unpack(key)[0], value

    def _recover(self) -> RecoveryStats:
        started = time.perf_counter()
        checkpoint_sequence = 0
        checkpoint_error = None
        try:
            with self._checkpoint_env.begin(buffers=True) as txn:
                raw_meta = txn.get(b"meta")
                if raw_meta is not None:
                    meta = msgspec.msgpack.decode(bytes(raw_meta), type=_CheckpointMeta)
                    checkpoint.check_declared(meta.arrays, CHECKPOINT_ARRAYS)
                    owners = self._regions_owners()
                    arrays = {}
                    for name, array_meta in meta.arrays.items():
                        if CHECKPOINT_ARRAYS[name] == checkpoint.REGIONS:
                            checkpoint.load_regions(txn, name, array_meta, owners[name])
                        else:
                            arrays[name] = self._load_array(txn, name, array_meta)
                    if meta.sequence > self._last_sequence():
                        raise StoreError(f"checkpoint at batch {meta.sequence} is past the log's end")
                    if meta.scalars["cold_count"] != meta.cold_epochs * self._epoch_transfers:
                        raise StoreError("checkpoint's cold count and epochs disagree")
                    if self.cold.chain_at(meta.cold_epochs) != meta.cold_chain:
                        raise _ColdTierDamaged(f"the cold tier does not hold the {meta.cold_epochs} epochs "
                                               "the checkpoint builds on")
                    for name, versions in self._versions.items():
                        if versions.written() < meta.scalars[f"{name}_outbox_tail"]:
                            raise _ColdTierDamaged(f"the cold tier does not hold the {name} the checkpoint "
                                                   "builds on")
                    self.ledger.restore(arrays, meta.scalars, arrays["tail_rows"], arrays["tail_links"])
                    self.machine.restore(arrays, meta.scalars)
                    self._outbox_queued = {name: table.outbox_tail for name, table in self.machine.tables.items()}
                    self.filter.set_added(meta.filter_added)
                    last_epoch = np.frombuffer(arrays["last_epoch"], dtype=np.uint32)
                    self._last_epoch[:last_epoch.shape[0]] = last_epoch
                    self._cold_epochs = self._flush_queued_epochs = meta.cold_epochs
                    self._cold_chain = meta.cold_chain
                    self._cold_id_max = (meta.scalars["cold_id_max_hi"] << 64) | meta.scalars["cold_id_max_lo"]
                    self.ledger.set_cold_id_max(self._cold_id_max)
                    checkpoint_sequence = meta.sequence
                    self._checkpoint_meta = meta
        except Exception as error:  # noqa: BLE001 - whatever is wrong with it, the log is enough
            # A checkpoint only saves replay time: the log holds every batch since the first.
            # So a damaged one (its writes are not synced: see _open_checkpoint_env) is reported
            # and the whole log is replayed instead; the cold tier is written again on the way.
            checkpoint_error = str(error)
            print(f"tally: {self.path}: checkpoint not used, replaying the whole log: {error}", file=sys.stderr)
            if isinstance(error, _ColdTierDamaged):  # start the cold tier afresh: replay refills it
                # The checkpoint goes first: the rebuilt cold tier will not hold what it relied on
                # (a product table's clean records are where this run's evictions put them), and
                # a later open must not take it once the counts have caught up.
                with self._checkpoint_env.begin(write=True) as txn:
                    txn.delete(b"meta")
                self._checkpoint_env.sync(True)
                self._cold_env.close()
                directory = os.path.join(self.path, COLD_SUBDIRECTORY)
                os.rename(directory, f"{directory}.damaged-{time.time_ns()}")
                self._cold_env = self._open_cold_env(self._map_size_bytes)
                self._open_cold_tables()
            self._fresh_state()
            checkpoint_sequence, self._checkpoint_meta = 0, None
        loaded = time.perf_counter()
        batches = events = 0
        # Entry N+1 is read and unpacked on a second thread (unpacking holds no GIL) while
        # entry N is applied: the replay then costs about what the state machine does.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tally-replay") as reader:
            decoding = None
            for sequence, value in self._log_raw(checkpoint_sequence + 1):
                upcoming = reader.submit(_decode_entry, sequence, value)
                if decoding is not None:
                    events += self._replay_entry(*decoding.result())
                    batches += 1
                decoding = upcoming
                # ``value`` may point into the log's map, valid while the generator's read
                # transaction is: done with it before the generator moves on (and maybe ends it).
                concurrent.futures.wait([upcoming])
            if decoding is not None:
                events += self._replay_entry(*decoding.result())
                batches += 1
        return RecoveryStats(checkpoint_sequence, loaded - started, batches, events, time.perf_counter() - loaded,
                             checkpoint_error)

    def _load_array(self, txn, name, meta: checkpoint.ArrayMeta) -> bytes:
        return checkpoint.load(txn, name, CHECKPOINT_ARRAYS[name], meta)

    def _replay_entry(self, sequence, operation, now_ns, last_timestamp, body, failures, expired=None) -> int:
        count = body.shape[0] // constants.RECORD_SIZE_BYTES
        if operation not in RECORD_DTYPES:
            raise StoreError(f"log entry {sequence}: unknown operation {operation}")
        with self.expiries_as_logged(expired is None):
            results = self._apply(operation, body.view(RECORD_DTYPES[operation]), now_ns)
        if self.ledger.last_timestamp != last_timestamp:
            raise StoreError(f"log entry {sequence}: replay diverged (timestamp {self.ledger.last_timestamp}, "
                             f"logged {last_timestamp})")
        if failures is not None and not np.array_equal(_failures(results), failures):
            raise StoreError(f"log entry {sequence}: replay diverged (its events' results differ from the logged)")
        if expired is not None and not np.array_equal(self.orders.expired_last(), expired):
            raise StoreError(f"log entry {sequence}: replay diverged (the orders its start closed differ from the logged)")
        self._queue_flush()
        return count


#: The smallest journal: four of the largest log entries (a batch of BATCH_EVENTS_MAX events).
JOURNAL_BYTES_MIN = journal.FRAMES_PER_RING_MIN * journal.frame_bytes(
    LOG_HEADER.size + codec.packed_size_max(constants.BATCH_EVENTS_MAX) + _FAILURES_BYTES_MAX + _EXPIRED_BYTES_MAX)


def _in_chunks(lookup, ids: np.ndarray):
    """``lookup(ids)`` -> (rows, found) for more ids than one lookup takes (a prefetch lists up to
    two per event)."""
    step = constants.BATCH_EVENTS_MAX
    parts = [lookup(ids[at:at + step]) for at in range(0, ids.shape[0], step)]
    return np.concatenate([rows for rows, _ in parts]), np.concatenate([found for _, found in parts])


def _id_max(rows: np.ndarray) -> int:
    """The largest 128-bit id among transfer rows."""
    hi = int(rows["id_hi"].max())
    return (hi << 64) | int(rows["id_lo"][rows["id_hi"] == hi].max())


def _file_bytes(path: str) -> int:
    """Bytes a file takes on disk (LMDB files are sparse up to their map size)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


#: Niceness of the checkpoint thread: it only saves replay time, so it yields the CPU to the
#: threads that apply, commit and answer batches (its heavy parts hold no GIL).
CHECKPOINT_THREAD_NICENESS = 10
#: A checkpoint's writes are spread out at this rate (hundreds of MB: about 2 s at the default).
CHECKPOINT_WRITE_BYTES_PER_S = 256 << 20
#: Then its pages are written back to disk at this pace (over the whole checkpoint file).
CHECKPOINT_WRITEBACK_BYTES_PER_S = 256 << 20


def _lower_thread_priority() -> None:
    name_this_thread()
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
    """Check and unpack one log entry (a ``LogEntry``)."""
    if len(value) < LOG_HEADER.size:
        raise StoreError(f"log entry {sequence} is truncated")
    (magic, version, operation, count, body_bytes, now_ns, last_timestamp, checksum,
     failures_bytes) = LOG_HEADER.unpack_from(value, 0)
    if magic != LOG_MAGIC or version not in _LOG_VERSIONS_READ:
        raise StoreError(f"log entry {sequence}: bad magic or version {version}")
    if version == 1:
        failures_bytes = 0  # (reserved, zero)
    if len(value) != LOG_HEADER.size + body_bytes + failures_bytes or count > constants.BATCH_EVENTS_MAX:
        raise StoreError(f"log entry {sequence}: {len(value)} bytes, header says {body_bytes} + {failures_bytes} "
                         f"for {count} events")
    view = memoryview(value)
    if _entry_checksum(view[:_CHECKSUMMED_HEADER_BYTES], view[LOG_HEADER.size:]) != checksum:
        raise StoreError(f"log entry {sequence}: checksum mismatch (the entry is damaged)")
    end = LOG_HEADER.size + body_bytes
    try:
        body = codec.unpack(view[LOG_HEADER.size:end], count)
    except ValueError as error:
        raise StoreError(f"log entry {sequence}: {error}") from None
    failures = expired = None
    if version >= 2:
        failed, expired_count = _tail_counts(value, end, failures_bytes, version)
        expected = 4 + failed * FAILURE_DTYPE.itemsize + (4 + expired_count * ID_DTYPE.itemsize if version >= 3 else 0)
        if failed < 0 or failures_bytes != expected or failed > count or expired_count > constants.EXPIRIES_PER_BATCH_MAX:
            raise StoreError(f"log entry {sequence}: its failures' (or expiries') section is malformed")
        after_failures = end + 4 + failed * FAILURE_DTYPE.itemsize
        failures = np.frombuffer(view[end + 4:after_failures], dtype=FAILURE_DTYPE)
        if version >= 3:
            expired = np.frombuffer(view[after_failures + 4:end + failures_bytes], dtype=ID_DTYPE)
    return LogEntry(sequence, operation, now_ns, last_timestamp, body, failures, expired)


def _pack_tail(entry: bytearray, end: int, failures: np.ndarray, expired: np.ndarray | None) -> int:
    """Write an entry's failures and (version 3; None: version 2) expiries after its body at
    ``end``; their bytes."""
    struct.pack_into("<I", entry, end, failures.shape[0])
    entry[end + 4:end + 4 + failures.nbytes] = failures.tobytes()
    at = end + 4 + failures.nbytes
    if expired is None:
        return at - end
    struct.pack_into("<I", entry, at, expired.shape[0])
    entry[at + 4:at + 4 + expired.nbytes] = expired.tobytes()
    return at + 4 + expired.nbytes - end


def _tail_counts(value, end: int, tail_bytes: int, version: int) -> tuple[int, int]:
    """(failed events, expired orders) of a version 2 or 3 entry whose body ends at ``end``,
    read without unpacking the body (-1: the section is too short to say)."""
    if tail_bytes < 4:
        return -1, 0
    failed = struct.unpack_from("<I", value, end)[0]
    if version < 3:
        return failed, 0
    at = end + 4 + failed * FAILURE_DTYPE.itemsize
    if at + 4 > end + tail_bytes:
        return -1, 0
    return failed, struct.unpack_from("<I", value, at)[0]


#: Below this much free space, a failed write is reported as the likely effect of a full disk.
_DISK_NEARLY_FULL_BYTES = 256 << 20


def _with_disk_hint(error: BaseException, path: str) -> BaseException:
    """A full disk reaches LMDB as an I/O error on commit: say so, with the free space."""
    if not isinstance(error, (lmdb.Error, OSError)):
        return error
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return error
    if free >= _DISK_NEARLY_FULL_BYTES:
        return error
    return StoreError(f"{error} (the disk holding {path} has {free:,} bytes free: full? Free space and reopen; "
                      "nothing unacknowledged was lost)")


def _raw(batch) -> memoryview:
    """The batch's bytes (already validated by the ledger)."""
    if isinstance(batch, np.ndarray):
        return memoryview(np.ascontiguousarray(batch).view(np.uint8).reshape(-1))
    return memoryview(batch).cast("B")


def open(path, **options) -> Store:  # noqa: A001 - mirrors lmdb.open / builtins on purpose
    """Open (or create) the durable ledger in directory ``path``; see ``Store``."""
    return Store(path, **options)
