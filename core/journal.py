"""The journal: log entries made durable by one write and one sync, ahead of the LMDB log.

A ring of ``capacity_bytes`` in the file ``DIR/journal``, written in place (docs/journal.md).
The commit thread appends a group of log entries as *frames* (``append``: one ``pwritev``, one
``fdatasync``); a batch is acknowledged after that. The store's sink thread later puts the
entries into the LMDB log with one synced commit for many groups and gives their space back
(``release``). After a crash, ``scan`` reads the frames from the position the LMDB log recorded
with its last sink, stopping at the first frame that is missing, torn, damaged or left from an
earlier lap.

A frame: a 32-byte header (magic, version, kind, the journal's *generation*, sequence, entry
length, CRC-32 of the header's first 28 bytes and the entry), the entry, zero padding to 8 bytes.
The generation grows at every open: a frame left whole by an earlier run (written, never
synced, and not recovered because a torn frame came before it) can never pass for a frame of
this run, even where offsets and sequences happen to line up. A frame that does not fit before the
end of the ring goes to offset 0, after a *wrap* header (kind ``KIND_WRAP``, the frame's
sequence) where the ring had room for one; with less than a header's room left the wrap is
implied. Frames are at most a quarter of the ring.

Nothing here is per event: a group of batches is a handful of Python calls.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

from core.durable import fsync_directory

MAGIC = 0x4C4E524A  # "JRNL"
VERSION = 1
KIND_ENTRY = 1
KIND_WRAP = 2
#: magic, version, kind, generation, sequence, entry bytes, checksum (of the first 28 bytes and the entry).
HEADER = struct.Struct("<IHHQQII")
_CHECKED = 28  # header bytes under the checksum (all before it)
ALIGN_BYTES = 8
#: The ring holds at least this many of the largest frames (a frame is at most a quarter of it).
FRAMES_PER_RING_MIN = 4
_ZEROS = bytes(ALIGN_BYTES)
#: Buffers per pwritev call (Linux's IOV_MAX is 1,024).
_IOV_MAX = 1020
_PREFILL_CHUNK_BYTES = 1 << 20


class JournalError(Exception):
    """The journal cannot take the entries (closed, failed, or an entry too large)."""


def frame_bytes(entry_bytes: int) -> int:
    """Bytes a frame of an entry of ``entry_bytes`` takes in the ring."""
    return HEADER.size + (entry_bytes + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


def _header(kind: int, generation: int, sequence: int, entry=b"") -> bytes:
    head = HEADER.pack(MAGIC, VERSION, kind, generation, sequence, len(entry), 0)
    checksum = zlib.crc32(entry, zlib.crc32(head[:_CHECKED]))
    return HEADER.pack(MAGIC, VERSION, kind, generation, sequence, len(entry), checksum)


class Journal:
    """One journal file. ``append`` is called by one thread (the commit thread), ``release`` by
    another (the sink); ``scan`` and ``start`` before either runs."""

    def __init__(self, path: str, capacity_bytes: int, *, sync: bool = True):
        if capacity_bytes % ALIGN_BYTES or capacity_bytes < FRAMES_PER_RING_MIN * HEADER.size:
            raise ValueError(f"journal capacity {capacity_bytes} must be a multiple of {ALIGN_BYTES} "
                             f"and at least {FRAMES_PER_RING_MIN * HEADER.size}")
        self.path = path
        self.capacity_bytes = capacity_bytes
        self.frame_bytes_max = capacity_bytes // FRAMES_PER_RING_MIN
        self._sync = sync  # False only in tests/test_durability.py's negative control
        created = not os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        if created:  # the file's name must survive a crash before its first sync
            fsync_directory(os.path.dirname(os.path.abspath(path)))
        self.generation = 0       # of the frames written (set by start)
        self._offset = 0          # where the next frame goes
        self._used_bytes = 0      # written and not yet released (frames and the ends skipped at wraps)
        self._room = threading.Condition()
        self._error: BaseException | None = None
        self.appends = 0          # groups written (for stats and tests)
        self.waits = 0            # appends that waited for the sink to make room
        self.bytes_written = 0

    # ------------------------------------------------------------------ recovery

    def scan(self, offset: int, sequence: int, generation: int, capacity_bytes: int | None = None):
        """Frames ``(sequence, entry bytes, end offset)`` of ``generation`` from ``offset`` on,
        starting with ``sequence`` and consecutive, as long as they are whole and valid
        (``capacity_bytes``: the ring's size when they were written, if it was another)."""
        capacity = capacity_bytes or self.capacity_bytes
        scanned = 0
        while scanned <= capacity:
            if capacity - offset < HEADER.size:
                scanned += capacity - offset
                offset = 0
            head = os.pread(self._fd, HEADER.size, offset)
            if len(head) < HEADER.size:
                return
            magic, version, kind, frame_generation, frame_sequence, length, checksum = HEADER.unpack(head)
            if (magic != MAGIC or version != VERSION or frame_generation != generation
                    or frame_sequence != sequence):
                return  # never written, from an earlier lap, or damaged
            if kind == KIND_WRAP:
                if offset == 0 or length or checksum != zlib.crc32(head[:_CHECKED]):
                    return
                scanned += capacity - offset
                offset = 0
                continue
            if kind != KIND_ENTRY or frame_bytes(length) > capacity - offset:
                return
            entry = os.pread(self._fd, length, offset + HEADER.size)
            if len(entry) < length or checksum != zlib.crc32(entry, zlib.crc32(head[:_CHECKED])):
                return  # torn or damaged: the end of what was synced
            offset += frame_bytes(length)
            scanned += frame_bytes(length)
            yield sequence, entry, offset
            sequence += 1

    def start(self, generation: int, offset: int = 0) -> None:
        """Write frames of ``generation`` from ``offset`` on, the ring empty (after recovery)."""
        if offset % ALIGN_BYTES or not 0 <= offset < self.capacity_bytes:
            raise ValueError(f"journal offset {offset} out of the ring")
        self.generation = generation
        self._offset = offset
        self._used_bytes = 0

    def truncate(self) -> None:
        """Empty the file, synced (a new store: no earlier store's frames may be read as its own)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def prefill(self) -> None:
        """Write the file full of zeros up to the ring's size (if it is shorter), synced: no
        later commit then changes the file's size or allocates blocks (metadata to sync)."""
        size = os.fstat(self._fd).st_size
        if size >= self.capacity_bytes:
            return
        zeros = bytes(_PREFILL_CHUNK_BYTES)
        for offset in range(size, self.capacity_bytes, len(zeros)):
            os.pwrite(self._fd, zeros[:min(len(zeros), self.capacity_bytes - offset)], offset)
        os.fsync(self._fd)

    # ------------------------------------------------------------------ the commit thread

    def append(self, entries: list[tuple[int, memoryview]]) -> list[tuple[int, int]]:
        """Write ``(sequence, entry)`` pairs as frames and sync them; returns, per entry, the
        offset after its frame and the ring bytes it holds until released. Waits while the ring
        has no room for them (the sink makes room)."""
        if not entries:
            return []
        runs: list[tuple[int, list]] = []  # (offset, buffers) of each contiguous write
        placed: list[tuple[int, int]] = []
        generation = self.generation
        run_start = offset = self._offset
        buffers, need = [], 0
        for sequence, entry in entries:
            size = frame_bytes(len(entry))
            if size > self.frame_bytes_max:
                raise JournalError(f"a log entry of {len(entry)} bytes exceeds a quarter of the journal "
                                   f"({self.capacity_bytes} bytes): make journal_bytes larger")
            held = size
            if offset + size > self.capacity_bytes:  # to the start, past a wrap header if it fits
                if self.capacity_bytes - offset >= HEADER.size:
                    buffers.append(_header(KIND_WRAP, generation, sequence))
                if buffers:
                    runs.append((run_start, buffers))
                held += self.capacity_bytes - offset
                run_start = offset = 0
                buffers = []
            buffers.append(_header(KIND_ENTRY, generation, sequence, entry))
            buffers.append(entry)
            padding = size - HEADER.size - len(entry)
            if padding:
                buffers.append(_ZEROS[:padding])
            offset += size
            need += held
            placed.append((offset, held))
        runs.append((run_start, buffers))
        if need > self.capacity_bytes:
            raise JournalError(f"a group of {need} bytes does not fit the journal ({self.capacity_bytes} bytes)")
        with self._room:
            if self._used_bytes + need > self.capacity_bytes:
                self.waits += 1
            while self._used_bytes + need > self.capacity_bytes and self._error is None:
                self._room.wait()
            if self._error is not None:
                raise JournalError(f"the journal cannot be written: {self._error}") from self._error
            self._used_bytes += need
        for run_offset, run_buffers in runs:
            _pwritev_all(self._fd, run_buffers, run_offset)
        if self._sync:
            os.fdatasync(self._fd)
        self._offset = offset
        self.appends += 1
        self.bytes_written += need
        return placed

    # ------------------------------------------------------------------ the sink

    def release(self, nbytes: int) -> None:
        """Give back the ring bytes of frames now in the LMDB log (synced)."""
        with self._room:
            if nbytes > self._used_bytes:
                raise AssertionError(f"journal: releasing {nbytes} bytes of {self._used_bytes} held")
            self._used_bytes -= nbytes
            self._room.notify_all()

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    def fail(self, error: BaseException) -> None:
        """No room will come (the sink failed): a waiting ``append`` raises."""
        with self._room:
            self._error = error
            self._room.notify_all()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pwritev_all(fd: int, buffers: list, offset: int) -> None:
    """Write every buffer at ``offset`` on, in as few calls as the system allows."""
    for start in range(0, len(buffers), _IOV_MAX):
        part = buffers[start:start + _IOV_MAX]
        total = sum(len(buffer) for buffer in part)
        written = os.pwritev(fd, part, offset)
        if written < total:  # short write (rare on a regular file): the rest in one piece
            rest = b"".join(bytes(buffer) for buffer in part)[written:]
            while rest:
                done = os.pwrite(fd, rest, offset + written)
                written += done
                rest = rest[done:]
        offset += total

