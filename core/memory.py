"""Keeping the process's resident memory what the configuration says, whatever the history.

What grows a long-running store's RSS without being its state:

* **Page cache mapped by LMDB's reads.** LMDB reads through a shared read-only map of its file.
  Every page it touches stays mapped in the process (and the kernel maps up to 16 neighbouring
  cached pages on each fault: "fault-around"), so the resident file pages grow with the file
  even though only the last leaf of an append-only tree is ever read. They are clean page cache
  the kernel may reclaim, but they count in RSS. ``release_mapped_file`` unmaps them from this
  process (``madvise(MADV_DONTNEED)``; the pages stay in the page cache and are mapped again on
  the next access, so LMDB's pointers stay valid).

A Linux measure; it does nothing elsewhere. (Pinning glibc's mmap threshold was tried too: it
changed neither the resident size nor the checkpoint stalls, and was dropped.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import numpy as np

_MADV_DONTNEED = 4

#: The C library on Linux (None elsewhere), for the calls Python lacks (also core.writeback's).
libc = None
if sys.platform.startswith("linux"):
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):
        libc = None

def release_mapped_file(*paths: str) -> int:
    """Unmap this process's resident pages of the mappings of ``paths`` (files); returns the
    bytes advised. One read of the process's map list, however many files."""
    if libc is None:
        return 0
    targets = {os.path.realpath(path) for path in paths}
    advised = 0
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].strip() not in targets:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
            advised += end - start
    return advised


def touch_pages(arrays) -> int:
    """Write every 4 KiB page of these NumPy arrays once (the value already there), so that a
    table's first batches do not pay its page faults (``core.open(prefault=True)``). Returns
    the bytes touched."""
    total = 0
    for array in arrays:
        raw = array.view(np.uint8).reshape(-1)
        raw[::4096] += 0  # a read and a write of each page: NumPy does not skip adding zero
        total += raw.shape[0]
    return total
