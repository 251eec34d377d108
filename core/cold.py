"""The cold tier: transfers older than the hot window, in LMDB, written one epoch at a time.

See docs/tiering.md for the shape. This module owns the cold databases of the checkpoint
environment: how an epoch is laid out when written, and the reads the store needs (ids to
rows, pending statuses, an account's history). Everything here runs on whole arrays: a Python
call per *looked-up* id or per chunk, never per transfer of an epoch, except for the id index's
puts (one LMDB put per id, sorted).
"""

from __future__ import annotations

import bisect
import itertools
import struct

import lmdb
import numpy as np

from core import codec
from core.records import ID_DTYPE, TRANSFER_DTYPE, TransferFlags
from core.state_hash import CHAIN_EMPTY, chain_next, epoch_digest

#: Transfers per block of the ``blocks`` database (one LMDB value, packed by core.codec): about
#: 30 KiB, so that the last of its overflow pages wastes little (256 wasted a third of 3 pages).
BLOCK_TRANSFERS = 1024
#: Entries per chunk of the ``history`` database.
HISTORY_CHUNK_ENTRIES = 4096

#: One entry of an epoch's account history: a transfer debiting or crediting an account, or the
#: link to the previous epoch holding the account (kind 0; ``value`` = that epoch + 1, 0 = none).
HISTORY_DTYPE = np.dtype([("account", "<u4"), ("kind", "<u4"), ("value", "<u8")])
KIND_LINK, KIND_DEBIT, KIND_CREDIT = 0, 1, 2

STATE_MISSING = 0xFF  # a status the cold tier does not have (the ledger then changes nothing)

_U64 = struct.Struct(">Q")
_BLOCK_HEADER = struct.Struct("<I")
_HISTORY_KEY = struct.Struct(">III")   # epoch, first account of the chunk, chunk number in the epoch


def id_keys(rows_or_ids: np.ndarray) -> np.ndarray:
    """Ids as 16-byte big-endian keys (hi then lo): byte order sorts like the 128-bit ints."""
    if rows_or_ids.dtype == ID_DTYPE:
        lo, hi = rows_or_ids["lo"], rows_or_ids["hi"]
    else:
        lo, hi = rows_or_ids["id_lo"], rows_or_ids["id_hi"]
    keys = np.empty(lo.shape[0], dtype=[("hi", ">u8"), ("lo", ">u8")])
    keys["hi"], keys["lo"] = hi, lo
    return keys


class ColdTier:
    """The cold databases in ``env`` (the store's checkpoint environment)."""

    def __init__(self, env: lmdb.Environment, epoch_transfers: int):
        self.env = env
        self.epoch_transfers = epoch_transfers
        self.blocks = env.open_db(b"blocks")
        self.ids = env.open_db(b"ids")
        self.history = env.open_db(b"history")
        self.status = env.open_db(b"status")
        self.chains = env.open_db(b"chains")   # epoch u32 BE -> the hash chain after it
        self._scratch = bytearray(_BLOCK_HEADER.size + codec.packed_size_max(BLOCK_TRANSFERS))
        # Statistics (read by tally info): lookups that went to LMDB, and how many found nothing.
        self.lookups = 0
        self.lookups_missed = 0

    def chain_at(self, epochs: int) -> bytes | None:
        """The hash chain stored after the first ``epochs`` epochs (None: not stored)."""
        if epochs == 0:
            return CHAIN_EMPTY
        with self.env.begin(db=self.chains) as txn:
            return txn.get(struct.pack(">I", epochs - 1))

    # ------------------------------------------------------------------ writing an epoch

    def write_epoch(self, txn, epoch: int, rows: np.ndarray, links: np.ndarray, statuses: np.ndarray,
                    chain: bytes, last_epoch: np.ndarray) -> tuple[bytes, np.ndarray, int]:
        """Write epoch ``epoch`` (its rows and links in order, the statuses resolved in it).

        ``last_epoch`` (per account: newest epoch holding it + 1) is read, not changed: returns
        the new chain, the accounts to set to ``epoch + 1`` in it once the transaction commits,
        and the bytes written (keys and values).
        Keys that are already there (a replay after a crash rewrites the epochs written after
        the checkpoint) are overwritten with identical values.
        """
        timestamps = rows["timestamp"]
        # Blocks: appended (their keys are the epoch's first timestamps, above every earlier one).
        block_keys, block_values = [], []
        packed = []
        for start in range(0, rows.shape[0], BLOCK_TRANSFERS):
            part = rows[start:start + BLOCK_TRANSFERS]
            _BLOCK_HEADER.pack_into(self._scratch, 0, part.shape[0])
            size = codec.pack_into(part, self._scratch, _BLOCK_HEADER.size)
            block_keys.append(_U64.pack(int(timestamps[start])))
            block_values.append(bytes(self._scratch[:_BLOCK_HEADER.size + size]))
            packed.append(memoryview(block_values[-1])[_BLOCK_HEADER.size:])
        _put_sorted(txn, self.blocks, block_keys, block_values)
        # The id index, sorted: appends when ids grow with time (core.new_id), sorted puts if not.
        # Key: the id then its timestamp (no value): the items are built by C loops, not per id.
        keys = np.empty(rows.shape[0], dtype=[("hi", ">u8"), ("lo", ">u8"), ("timestamp", ">u8")])
        keys["hi"], keys["lo"], keys["timestamp"] = rows["id_hi"], rows["id_lo"], timestamps
        if not _ids_sorted(keys):
            keys = keys[np.lexsort((keys["lo"], keys["hi"]))]
        _put_sorted(txn, self.ids, keys.view("V24").tolist(), b"")
        # Account history: every account touched, its link to its previous epoch, its transfers.
        debit, credit = links["debit_index"], links["credit_index"]
        mark = np.zeros(last_epoch.shape[0], dtype=bool)
        mark[debit] = True
        mark[credit] = True
        touched = np.flatnonzero(mark).astype(np.uint32)
        n = rows.shape[0]
        entries = np.empty(touched.shape[0] + 2 * n, dtype=HISTORY_DTYPE)
        for at, accounts, kind, values in ((0, touched, KIND_LINK, last_epoch[touched]),
                                           (touched.shape[0], debit, KIND_DEBIT, timestamps),
                                           (touched.shape[0] + n, credit, KIND_CREDIT, timestamps)):
            part = entries[at:at + accounts.shape[0]]
            part["account"], part["kind"], part["value"] = accounts, kind, values
        # A stable sort by account: per account its link, then its debits, then its credits, each
        # in timestamp order (the order they were laid out in).
        entries = entries[np.argsort(entries["account"], kind="stable")]
        history_keys, history_values = [], []
        for number, start in enumerate(range(0, entries.shape[0], HISTORY_CHUNK_ENTRIES)):
            chunk = entries[start:start + HISTORY_CHUNK_ENTRIES]
            history_keys.append(_HISTORY_KEY.pack(epoch, int(chunk["account"][0]), number))
            history_values.append(chunk.tobytes())
        _put_sorted(txn, self.history, history_keys, history_values)
        # Statuses of the pendings resolved in this epoch, by the pending's timestamp.
        # Keys: the timestamps as big-endian u64 (sorted: statuses come in timestamp order).
        status_keys = statuses["timestamp"].astype(">u8").view("V8").tolist()
        _put_sorted(txn, self.status, status_keys, [bytes((state,)) for state in statuses["state"].tolist()])
        chain = chain_next(chain, epoch_digest(packed, statuses))
        txn.put(struct.pack(">I", epoch), chain, db=self.chains)
        written = (sum(map(len, block_keys)) + sum(map(len, block_values)) + keys.nbytes
                   + sum(map(len, history_keys)) + sum(map(len, history_values)) + 9 * statuses.shape[0])
        return chain, touched, written

    # ------------------------------------------------------------------ reads

    def lookup(self, ids: np.ndarray, boundary_ts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, states, found) for ids (ID_DTYPE): the cold transfers with these ids, their
        state (settled, or a pending's final status; STATE_MISSING if it has none) and a mask.

        Anything at or after ``boundary_ts`` (the oldest transfer in memory) is ignored: memory
        answers for it, and after a crash LMDB may hold epochs the store has not reached again.
        """
        n = ids.shape[0]
        rows = np.zeros(n, dtype=TRANSFER_DTYPE)
        states = np.zeros(n, dtype=np.uint8)
        found = np.zeros(n, dtype=bool)
        if n == 0:
            return rows, states, found
        key_bytes = id_keys(ids).tobytes()
        with self.env.begin(buffers=True) as txn:
            stamps = np.zeros(n, dtype=np.uint64)
            cursor = txn.cursor(db=self.ids)
            for i in range(n):
                key = key_bytes[i * 16:i * 16 + 16]
                if cursor.set_range(key) and bytes(cursor.key())[:16] == key:
                    ts = _U64.unpack_from(bytes(cursor.key()), 16)[0]
                    if ts < boundary_ts:
                        stamps[i] = ts
                        found[i] = True
            self.lookups += n
            self.lookups_missed += n - int(found.sum())
            if found.any():
                rows[found] = self._rows_by_timestamps(txn, stamps[found])
                states[found] = self._states(txn, rows[found])
        return rows, states, found

    def rows_by_timestamps(self, timestamps: np.ndarray) -> np.ndarray:
        """The cold transfers with these timestamps (each must be cold), in the given order."""
        with self.env.begin(buffers=True) as txn:
            return self._rows_by_timestamps(txn, timestamps)

    def _rows_by_timestamps(self, txn, timestamps: np.ndarray) -> np.ndarray:
        out = np.zeros(timestamps.shape[0], dtype=TRANSFER_DTYPE)
        cursor = txn.cursor(db=self.blocks)
        decoded: dict[bytes, np.ndarray] = {}
        for i, ts in enumerate(timestamps.tolist()):
            key = _U64.pack(ts)
            if not cursor.set_range(key) or bytes(cursor.key()) != key:
                if not (cursor.prev() if cursor.key() else cursor.last()):
                    raise LookupError(f"cold tier: no block holds timestamp {ts}")
            block_key = bytes(cursor.key())
            block = decoded.get(block_key)
            if block is None:
                value = cursor.value()
                count = _BLOCK_HEADER.unpack_from(value, 0)[0]
                block = codec.unpack(memoryview(value)[_BLOCK_HEADER.size:], count).view(TRANSFER_DTYPE)
                decoded[block_key] = block
            at = int(np.searchsorted(block["timestamp"], np.uint64(ts)))  # a Python int would be compared as a float
            if at >= block.shape[0] or int(block["timestamp"][at]) != ts:
                raise LookupError(f"cold tier: timestamp {ts} is not in its block")
            out[i] = block[at]
        return out

    def states_of(self, rows: np.ndarray) -> np.ndarray:
        """The state of each transfer row: settled, or a pending's final status from the cold
        tier (STATE_MISSING if it has none)."""
        with self.env.begin(buffers=True) as txn:
            return self._states(txn, rows)

    def _states(self, txn, rows: np.ndarray) -> np.ndarray:
        states = np.zeros(rows.shape[0], dtype=np.uint8)  # settled
        pending = (rows["flags"] & int(TransferFlags.pending)) != 0
        for i in np.flatnonzero(pending).tolist():
            value = txn.get(_U64.pack(int(rows["timestamp"][i])), db=self.status)
            states[i] = value[0] if value is not None else STATE_MISSING
        return states

    def account_history(self, account: int, newest_epoch_plus1: int, *, timestamp_min: int, timestamp_max: int,
                        boundary_ts: int, limit: int, debits: bool, credits: bool, reverse: bool) -> np.ndarray:
        """Timestamps of an account's cold transfers in ``[timestamp_min, timestamp_max]`` and
        below ``boundary_ts``: the newest ``limit`` newest first (``reverse``), else the oldest
        ``limit`` oldest first. Walks the account's epochs from the newest (its chunks in each):
        a newest-first page stops once it has ``limit``; an oldest-first page walks back to
        ``timestamp_min`` (memory bounded by ``limit``): page forward with ``timestamp_min``."""
        upper = min(timestamp_max, boundary_ts - 1)
        kinds = [kind for kind, wanted in ((KIND_DEBIT, debits), (KIND_CREDIT, credits)) if wanted]
        picked: list[np.ndarray] = []
        total = 0
        epoch_plus1 = newest_epoch_plus1
        with self.env.begin(buffers=True) as txn:
            cursor = txn.cursor(db=self.history)
            while epoch_plus1:
                entries = self._account_entries(cursor, epoch_plus1 - 1, account)
                links = entries[entries["kind"] == KIND_LINK]
                epoch_plus1 = int(links["value"][0]) if links.shape[0] else 0
                stamps = entries["value"][np.isin(entries["kind"], kinds)]
                stamps = stamps[(stamps >= np.uint64(timestamp_min)) & (stamps <= np.uint64(upper))]
                if stamps.shape[0]:
                    picked.append(np.sort(stamps)[::-1])
                    total += stamps.shape[0]
                if reverse and total >= limit:
                    break
                if not reverse and total > 2 * limit:
                    # Oldest first: only the oldest ``limit`` matter, and older epochs come next.
                    kept = np.concatenate(picked)[-limit:]
                    picked, total = [kept], kept.shape[0]
                transfers = entries["value"][entries["kind"] != KIND_LINK]
                if transfers.shape[0] and int(transfers.max()) < timestamp_min:
                    break  # every older epoch is older still
        newest_first = np.concatenate(picked) if picked else np.empty(0, dtype=np.uint64)
        return newest_first[:limit] if reverse else newest_first[::-1][:limit]

    def _account_entries(self, cursor, epoch: int, account: int) -> np.ndarray:
        """The history entries of one account in one epoch (its chunks may be several)."""
        # The account's entries may begin in the chunk before the first one keyed at or after
        # it (that chunk starts at a lower account): start there.
        if cursor.set_range(_HISTORY_KEY.pack(epoch, account, 0)):
            if not cursor.prev():
                cursor.first()
        elif not cursor.last():
            return np.empty(0, dtype=HISTORY_DTYPE)
        parts = []
        while cursor.key():
            key_epoch, first_account, _ = _HISTORY_KEY.unpack(bytes(cursor.key()))
            if key_epoch > epoch or (key_epoch == epoch and first_account > account):
                break
            if key_epoch == epoch:
                chunk = np.frombuffer(bytes(cursor.value()), dtype=HISTORY_DTYPE)
                mine = chunk[chunk["account"] == account]
                if mine.shape[0]:
                    parts.append(mine)
            if not cursor.next():
                break
        return np.concatenate(parts) if parts else np.empty(0, dtype=HISTORY_DTYPE)

    def disk_bytes(self) -> dict[str, int]:
        """Bytes of LMDB pages per cold database."""
        out = {}
        with self.env.begin() as txn:
            for name, db in (("blocks", self.blocks), ("ids", self.ids), ("history", self.history),
                             ("status", self.status)):
                stat = txn.stat(db)
                out[name] = (stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]) * stat["psize"]
        return out


def _ids_sorted(keys: np.ndarray) -> bool:
    """Whether (hi, lo) keys are already in increasing order (core.new_id's ids are)."""
    hi, lo = keys["hi"], keys["lo"]
    return bool(np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))))


def _put_sorted(txn, db, keys: list, values) -> None:
    """Put sorted keys with their values (a list, or one value for all): those after the
    database's last key as appends (MDB_APPEND), the rest as ordinary puts (overwriting equal
    keys). The (key, value) pairs are made one at a time as LMDB takes them: a list of tens of
    thousands of tuples per epoch would survive young collections and set off full ones (10 –
    30 ms each, every few seconds, on the server's request path)."""
    if not keys:
        return
    cursor = txn.cursor(db=db)
    last = bytes(cursor.key()) if cursor.last() else b""
    split = bisect.bisect_right(keys, last) if last and keys[0] <= last else 0

    def pairs(start, end):
        taken = values[start:end] if isinstance(values, list) else itertools.repeat(values, end - start)
        return zip(keys[start:end], taken)

    if split:
        cursor.putmulti(pairs(0, split), overwrite=True)
    if split < len(keys):
        consumed, _ = cursor.putmulti(pairs(split, len(keys)), append=True)
        if consumed != len(keys) - split:
            raise lmdb.Error(f"cold tier: {len(keys) - split - consumed} appends refused")
