"""Checkpoint arrays: how each part of the in-memory state is written to a checkpoint and read back.

A store's state is made of components (the ledger, the transfer table's cold progress, the id
filter; later each product table and the pay score's arrays: docs/tables.md). Each component
*declares* the arrays it checkpoints and their kind, in a ``CHECKPOINT_ARRAYS`` mapping next
to its code; the store merges the declarations with ``registry`` (a name declared twice, or a
kind this module does not know, is an error at import, not a checkpoint silently missing an
array) and writes and reads every array through this module by its kind. The store names only what it
builds itself (the transfer table's tail and cold progress) and the owner of each ``REGIONS`` array.

Kinds (what changes between two checkpoints decides how an array is written):

* ``APPEND_RECORDS``: 128-byte records that only grow at their end (account rows). Written from
  the chunk the previous checkpoint ended in, packed by ``core.codec``; read in place, never
  copied (rows below the count never change).
* ``RECORDS``: 128-byte records written whole, packed (the ring's transfers not yet cold).
* ``RAW``: bytes written whole, copied between two batches.
* ``COPY_ON_WRITE``: a large array changed in place (balances): written as ``RAW``, captured by
  the owner's copy-on-write snapshot (``core/cow.pxd``) instead of a copy between two batches.
* ``REGIONS``: an array that tracks its changed regions (``core.filter.IdFilter``): only those
  are written; a region never written is all zeros. The owner provides ``words()``,
  ``region_bytes``, ``size_bytes``, ``take_dirty()`` and ``load_region(i, data)``.

Storage: chunk ``i`` of array ``name`` is the value of key ``name/<i as u32 BE>`` in the
checkpoint environment; its ``ArrayMeta`` (chunks, items, CRC-32 per chunk) is in the
checkpoint's meta record, so a damaged or missing chunk is detected when it is loaded.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Mapping

import msgspec
import numpy as np

from core import codec

APPEND_RECORDS, RECORDS, RAW, COPY_ON_WRITE, REGIONS = "append_records", "records", "raw", "copy_on_write", "regions"
KINDS = frozenset((APPEND_RECORDS, RECORDS, RAW, COPY_ON_WRITE, REGIONS))
_PACKED_KINDS = (APPEND_RECORDS, RECORDS)

CHUNK_RECORDS = 1 << 16   # records per chunk of a record array
CHUNK_BYTES = 8 << 20     # bytes per chunk of a raw array
NEVER_WRITTEN = -1        # checksum of a region never written (all zeros)
_CHUNK_KEY = struct.Struct(">I")


class CheckpointError(Exception):
    """A checkpoint's array is missing, damaged or does not fit (the store then replays the log)."""


class ArrayMeta(msgspec.Struct, frozen=True):
    chunks: int                   # chunk values stored under b"<name>/<chunk u32 BE>"
    items: int                    # records for the packed kinds, bytes for the others
    checksums: list[int]          # CRC-32 of each stored chunk value
    kind: str = ""                # its kind when written ("": written before kinds were recorded)


def check_declared(stored: Mapping[str, ArrayMeta], declared: Mapping[str, str]) -> None:
    """A checkpoint is loaded only if it holds exactly the declared arrays, each of its declared
    kind: bytes are never read the way another version wrote them otherwise."""
    if stored.keys() != declared.keys():
        raise CheckpointError(f"checkpoint holds arrays {sorted(stored)}, this version declares {sorted(declared)}")
    for name, meta in stored.items():
        if meta.kind and meta.kind != declared[name]:
            raise CheckpointError(f"checkpoint array {name} was written as {meta.kind}, is declared {declared[name]}")


def registry(*declarations: Mapping[str, str]) -> dict[str, str]:
    """Merge components' ``CHECKPOINT_ARRAYS`` into one name -> kind mapping."""
    merged: dict[str, str] = {}
    for declaration in declarations:
        for name, kind in declaration.items():
            if kind not in KINDS:
                raise ValueError(f"checkpoint array {name!r}: unknown kind {kind!r}")
            if name in merged:
                raise ValueError(f"checkpoint array {name!r} is declared twice")
            if "/" in name:
                raise ValueError(f"checkpoint array {name!r}: '/' separates a name from its chunk number")
            merged[name] = kind
    return merged


def chunk_key(name: str, i: int) -> bytes:
    return name.encode() + b"/" + _CHUNK_KEY.pack(i)


class ArrayWriter:
    """Writes checkpoint arrays into one write transaction, paced to ``bytes_per_s`` (a
    checkpoint's copying and checksumming would otherwise take a core in one burst). Its scratch
    buffers are kept from one checkpoint to the next: packing then allocates nothing."""

    def __init__(self, bytes_per_s: float):
        self.bytes_per_s = bytes_per_s
        self._pack_scratch = memoryview(bytearray(codec.packed_size_max(CHUNK_RECORDS)))
        self._region_scratch: np.ndarray | None = None
        self._txn = None
        self._paced_bytes = 0
        self._paced_since = 0.0

    def begin(self, txn) -> None:
        """Write the next arrays into ``txn``; pacing starts now."""
        self._txn = txn
        self._paced_bytes, self._paced_since = 0, time.perf_counter()

    def end(self) -> None:
        """Done with the transaction (it is not kept past its commit)."""
        self._txn = None

    def write(self, name: str, kind: str, array, old: ArrayMeta | None) -> tuple[ArrayMeta, int]:
        """Write what changed of one array (``array``: the array, or for ``REGIONS`` its owner)
        since ``old`` (its meta in the previous checkpoint); returns its new meta and the bytes
        written."""
        txn = self._txn
        written = 0

        def put(i: int, value) -> int:
            """Store chunk ``i`` (paced); returns its checksum."""
            nonlocal written
            txn.put(chunk_key(name, i), value)
            written += len(value)
            self._pace(len(value))
            return zlib.crc32(value)

        if kind == REGIONS:
            owner = array
            raw = owner.words().reshape(-1).view(np.uint8)
            items = raw.shape[0]
            region = owner.region_bytes
            chunks = -(-raw.shape[0] // region)
            checksums = list(old.checksums) if old and old.chunks == chunks else [NEVER_WRITTEN] * chunks
            if self._region_scratch is None or self._region_scratch.shape[0] < region:
                self._region_scratch = np.empty(region, dtype=np.uint8)
            for i in owner.take_dirty():
                # Copied first: another thread may be changing it (the owner's take_dirty says
                # why no change is lost), and the checksum must be of exactly the bytes stored.
                part = raw[i * region:(i + 1) * region]
                value = self._region_scratch[:part.shape[0]]
                np.copyto(value, part)
                checksums[i] = put(i, value)
        elif kind in (RAW, COPY_ON_WRITE):
            raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            items = raw.shape[0]
            chunks = -(-raw.shape[0] // CHUNK_BYTES)
            checksums = [put(i, raw[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]) for i in range(chunks)]
        else:
            flat = np.ascontiguousarray(array).reshape(-1)
            items = flat.shape[0]
            chunks = -(-items // CHUNK_RECORDS)
            # Append-only rows: rewrite from the chunk the previous checkpoint ended in (it may be partial).
            first = old.items // CHUNK_RECORDS if kind == APPEND_RECORDS and old and old.items <= items else 0
            checksums = list(old.checksums[:first]) if first else []
            for i in range(first, chunks):
                part = flat[i * CHUNK_RECORDS:(i + 1) * CHUNK_RECORDS]
                # Into the kept scratch buffer: packing then holds no GIL and allocates nothing.
                checksums.append(put(i, self._pack_scratch[:codec.pack_into(part, self._pack_scratch)]))
        for i in range(chunks, old.chunks if old else 0):
            txn.delete(chunk_key(name, i))
        return ArrayMeta(chunks=chunks, items=items, checksums=checksums, kind=kind), written

    def _pace(self, nbytes: int) -> None:
        self._paced_bytes += nbytes
        ahead_s = self._paced_bytes / self.bytes_per_s - (time.perf_counter() - self._paced_since)
        if ahead_s > 0.001:
            time.sleep(ahead_s)


def load(txn, name: str, kind: str, meta: ArrayMeta) -> bytes:
    """The bytes of a checkpointed array (not ``REGIONS``: see ``load_regions``), every chunk
    checked against its checksum."""
    if len(meta.checksums) != meta.chunks:
        raise CheckpointError(f"checkpoint array {name}: {len(meta.checksums)} checksums for {meta.chunks} chunks")
    parts = []
    for i in range(meta.chunks):
        part = txn.get(chunk_key(name, i))
        if part is None:
            raise CheckpointError(f"checkpoint chunk {i} of {name} is missing")
        if zlib.crc32(part) != meta.checksums[i]:
            raise CheckpointError(f"checkpoint chunk {i} of {name} is damaged (checksum mismatch)")
        if kind in _PACKED_KINDS:
            records = min(CHUNK_RECORDS, meta.items - i * CHUNK_RECORDS)
            try:
                part = codec.unpack(part, records)
            except ValueError as error:
                raise CheckpointError(f"checkpoint chunk {i} of {name}: {error}") from None
        parts.append(part)
    return b"".join(parts)


def load_regions(txn, name: str, meta: ArrayMeta, owner) -> None:
    """Load a ``REGIONS`` array's stored regions straight into its owner (the rest stay zero)."""
    if meta.chunks * owner.region_bytes < owner.size_bytes or len(meta.checksums) != meta.chunks:
        raise CheckpointError(f"checkpoint array {name} has {meta.chunks} regions, this one {owner.size_bytes} bytes")
    for i, checksum in enumerate(meta.checksums):
        if checksum == NEVER_WRITTEN:
            continue
        part = txn.get(chunk_key(name, i))
        if part is None or zlib.crc32(part) != checksum:
            raise CheckpointError(f"checkpoint chunk {i} of {name} is missing or damaged")
        owner.load_region(i, part)
