"""Archived log segments: the log's old entries as plain files (docs/tiering.md, "Log retention").

A segment ``log-<first>-<last>.tseg`` holds consecutive log entries exactly as the LMDB log
stored them (each with its own header and checksum, checked again when replayed)::

    header   24 bytes  magic b"TALLYSEG", version u32, reserved u32, first sequence u64
    entries            per entry: length u32, then the entry's bytes
    trailer  16 bytes  entry count u64, CRC-32 of everything before the trailer (u32), b"SEG!"

(little-endian). The count sits in the trailer so that a segment is written in one pass.

Segments are written whole to a temporary name, fsynced, renamed and their directory fsynced:
a segment that exists is complete. ``LogArchive`` only writes and reads them; which entries may
be archived, and when they leave the log, is the store's business (``Store.archive_log``).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from dataclasses import dataclass

from core.durable import fsync_directory

#: A segment file is closed once it holds this many bytes (entries are at most about 1 MiB).
ARCHIVE_SEGMENT_BYTES_MAX = 1 << 30

_MAGIC = b"TALLYSEG"
_VERSION = 1
_HEADER = struct.Struct("<8sIIQ")
_LENGTH = struct.Struct("<I")
_TRAILER = struct.Struct("<QI4s")
_TRAILER_MAGIC = b"SEG!"
_CHECK_PIECE_BYTES = 8 << 20
_NAME = re.compile(r"^log-(\d{20})-(\d{20})\.tseg$")
_TEMPORARY_NAME = re.compile(r"^log-(\d{20})\.tmp$")


class ArchiveError(Exception):
    """A segment is missing, damaged, or does not continue the ones before it."""


@dataclass(frozen=True)
class Segment:
    path: str
    first: int      # first sequence it holds
    last: int       # last sequence it holds


class LogArchive:
    """The segment files of one directory.

    >>> archive = LogArchive("/data/tally/archive")
    >>> archive.write(entries)            # [(sequence, entry bytes), ...] in order, consecutive
    >>> for sequence, entry in archive.entries(1, 1000): ...
    """

    def __init__(self, directory: str):
        self.directory = directory

    def segments(self) -> list[Segment]:
        """The segments present, by first sequence."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            if match:
                found.append(Segment(os.path.join(self.directory, name), int(match[1]), int(match[2])))
        return sorted(found, key=lambda segment: segment.first)

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(segment.path) for segment in self.segments())

    def remove_range(self, first: int, last: int) -> None:
        """Delete the segments and temporary files of entries ``first..last`` (the leftovers of
        an archive run that stopped before the log forgot them; the store says which)."""
        for segment in self.segments():
            if first <= segment.first and segment.last <= last:
                os.unlink(segment.path)
        if os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                match = _TEMPORARY_NAME.match(name)
                if match and first <= int(match[1]) <= last:
                    os.unlink(os.path.join(self.directory, name))
            fsync_directory(self.directory)

    def make_directory(self) -> None:
        """Create the directory (and missing parents), each new entry synced into its parent."""
        missing = []
        path = os.path.abspath(self.directory)
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            os.mkdir(path)
            fsync_directory(os.path.dirname(path))

    def take_over(self, segments: list[Segment]) -> list[Segment]:
        """Put durable copies of ``segments`` (of another directory) here, hard links on the same
        filesystem; the originals stay until the caller has recorded the move and removes them."""
        self.make_directory()
        copies = []
        for segment in segments:
            target = os.path.join(self.directory, os.path.basename(segment.path))
            temporary = os.path.join(self.directory, f"log-{segment.first:020d}.tmp")
            try:
                os.link(segment.path, temporary)
            except OSError:  # another filesystem (or no hard links): copy, then sync the copy
                shutil.copyfile(segment.path, temporary)
                with open(temporary, "rb+") as file:
                    os.fsync(file.fileno())
            os.replace(temporary, target)
            copies.append(Segment(target, segment.first, segment.last))
        fsync_directory(self.directory)
        return copies

    def remove(self, segments: list[Segment]) -> None:
        for segment in segments:
            os.unlink(segment.path)
        if segments:
            fsync_directory(self.directory)

    def write(self, entries) -> list[Segment]:
        """Write ``(sequence, entry bytes)`` items (consecutive) to new segments, streamed (memory
        does not grow with the count), each durable before this returns; returns them."""
        self.make_directory()
        written: list[Segment] = []
        segment = None
        expected = None
        for sequence, entry in entries:
            if expected is not None and sequence != expected:
                raise ArchiveError(f"entry {sequence} follows {expected - 1}: entries to archive must be consecutive")
            expected = sequence + 1
            if segment is None:
                segment = _SegmentWriter(self.directory, sequence)
            segment.append(entry)
            if segment.size_bytes >= ARCHIVE_SEGMENT_BYTES_MAX:
                written.append(segment.finish())
                segment = None
        if segment is not None:
            written.append(segment.finish())
        return written

    def entries(self, first: int, through: int):
        """Yield ``(sequence, entry bytes)`` for sequences ``first..through`` from the segments;
        a gap, a damaged segment or a missing one raises ``ArchiveError``."""
        if first > through:
            return
        next_sequence = first
        for segment in self.segments():
            if segment.last < next_sequence:
                continue
            if segment.first > next_sequence:
                break
            for sequence, entry in self._read_segment(segment):
                if sequence < next_sequence:
                    continue
                if sequence > through:
                    return
                yield sequence, entry
                next_sequence = sequence + 1
            if next_sequence > through:
                return
        if next_sequence <= through:
            raise ArchiveError(f"log entries {next_sequence}..{through} are archived but no segment in "
                               f"{self.directory} holds them (restore the archive directory)")

    # ------------------------------------------------------------------ internals

    def _read_segment(self, segment: Segment):
        """Stream a segment's entries, after a first pass has checked the file's checksum (a
        damaged segment is named before any of its entries is applied; each entry also checks
        itself when decoded)."""
        try:
            file = open(segment.path, "rb")
        except OSError as error:
            raise ArchiveError(f"segment {segment.path}: {error}") from error
        with file:
            header = file.read(_HEADER.size)
            size = os.fstat(file.fileno()).st_size
            if len(header) != _HEADER.size or size < _HEADER.size + _TRAILER.size:
                raise ArchiveError(f"segment {segment.path} is truncated")
            magic, version, _, first = _HEADER.unpack(header)
            file.seek(size - _TRAILER.size)
            count, crc_stored, trailer_magic = _TRAILER.unpack(file.read(_TRAILER.size))
            file.seek(0)
            crc = 0
            for _ in range(0, size - _TRAILER.size, _CHECK_PIECE_BYTES):
                crc = zlib.crc32(file.read(min(_CHECK_PIECE_BYTES, size - _TRAILER.size - file.tell())), crc)
            if crc != crc_stored:
                raise ArchiveError(f"segment {segment.path}: checksum mismatch (the file is damaged)")
            file.seek(_HEADER.size)
            if magic != _MAGIC or version != _VERSION or trailer_magic != _TRAILER_MAGIC:
                raise ArchiveError(f"segment {segment.path}: not a Tally log segment (version {version})")
            if first != segment.first or first + count - 1 != segment.last:
                raise ArchiveError(f"segment {segment.path}: holds {first}..{first + count - 1}, "
                                   "its name says otherwise")
            for sequence in range(first, first + count):
                length = file.read(_LENGTH.size)
                wanted = _LENGTH.unpack(length)[0] if len(length) == _LENGTH.size else 0
                entry = file.read(min(wanted, size - _TRAILER.size - file.tell()))
                if wanted == 0 or len(entry) != wanted:
                    raise ArchiveError(f"segment {segment.path}: entry {sequence} is cut short")
                yield sequence, entry
            if file.tell() != size - _TRAILER.size:
                raise ArchiveError(f"segment {segment.path}: bytes after its last entry")


class _SegmentWriter:
    """One segment being written: a temporary file until ``finish`` names it."""

    def __init__(self, directory: str, first: int):
        self.directory, self.first, self.next_sequence = directory, first, first
        self.temporary = os.path.join(directory, f"log-{first:020d}.tmp")
        self.file = open(self.temporary, "wb")
        header = _HEADER.pack(_MAGIC, _VERSION, 0, first)
        self.file.write(header)
        self.size_bytes = _HEADER.size
        self.crc = zlib.crc32(header)

    def append(self, entry) -> None:
        length = _LENGTH.pack(len(entry))
        self.file.write(length)
        self.file.write(entry)
        self.crc = zlib.crc32(entry, zlib.crc32(length, self.crc))
        self.size_bytes += _LENGTH.size + len(entry)
        self.next_sequence += 1

    def finish(self) -> Segment:
        self.file.write(_TRAILER.pack(self.next_sequence - self.first, self.crc, _TRAILER_MAGIC))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        last = self.next_sequence - 1
        path = os.path.join(self.directory, f"log-{self.first:020d}-{last:020d}.tseg")
        os.rename(self.temporary, path)
        fsync_directory(self.directory)
        return Segment(path, self.first, last)

