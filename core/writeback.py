"""Writing a file's dirty pages back at a chosen pace (Linux ``sync_file_range``).

A checkpoint is committed without fsync (it only saves replay time): its hundreds of megabytes
stay dirty in the page cache until the kernel's flusher writes them back, about 30 s later
(``vm.dirty_expire_centisecs``), all at once. Measured at 200,000 requests/s: that burst held
the log's synchronous commit of the batch behind it for 200 ms, a spike 30 s after every
checkpoint. ``write_back`` starts the writeback itself, a piece at a time, waiting for each
piece and pausing between them, so that the disk queue never holds more than one piece in front
of a log commit. Elsewhere it does nothing (the kernel's own writeback applies).
"""

from __future__ import annotations

import ctypes
import os
import time

from core.memory import libc

_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4

_sync_file_range = getattr(libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    _sync_file_range.restype = ctypes.c_int


def write_back(path: str, *, bytes_per_s: float, piece_bytes: int = 8 << 20, stop=None) -> int:
    """Write ``path``'s dirty pages back to the disk, ``piece_bytes`` at a time, at most
    ``bytes_per_s`` (counting the whole file: clean pieces cost almost nothing but their share of
    the time), until done or ``stop`` (a ``threading.Event``) is set. Returns the bytes covered;
    0 where ``sync_file_range`` is missing. Not a durability barrier: no disk cache flush, no
    metadata."""
    if _sync_file_range is None:
        return 0
    flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        started = time.perf_counter()
        for offset in range(0, size, piece_bytes):
            if stop is not None and stop.is_set():
                return offset
            piece = min(piece_bytes, size - offset)
            if _sync_file_range(descriptor, offset, piece, flags) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"sync_file_range {path}: {os.strerror(errno)}")
            ahead_s = (offset + piece) / bytes_per_s - (time.perf_counter() - started)
            if ahead_s > 0.001:
                if stop is not None:
                    stop.wait(ahead_s)
                else:
                    time.sleep(ahead_s)
        return size
    finally:
        os.close(descriptor)
