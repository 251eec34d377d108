"""Keeping the process's resident memory what the configuration says, whatever the history.

Two things grow a long-running store's RSS that are not its state:

* **Page cache mapped by LMDB's reads.** LMDB reads through a shared read-only map of its file.
  Every page it touches stays mapped in the process (and the kernel maps up to 16 neighbouring
  cached pages on each fault: "fault-around"), so the resident file pages grow with the file
  even though only the last leaf of an append-only tree is ever read. They are clean page cache
  the kernel may reclaim, but they count in RSS. ``release_mapped_file`` unmaps them from this
  process (``madvise(MADV_DONTNEED)``; the pages stay in the page cache and are mapped again on
  the next access, so LMDB's pointers stay valid).
* **Heap fragmentation from large temporaries.** glibc serves allocations above the mmap
  threshold with their own mappings, returned on free; but it raises that threshold after each
  such free (up to 32 MiB), after which the background thread's per-epoch arrays come from its
  arena and are not given back. ``fix_malloc_thresholds`` pins the threshold at 4 MiB.

Both are Linux/glibc measures and do nothing elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_MADV_DONTNEED = 4
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping, returned to the system when freed. Above
#: the server's largest frame (1 MiB), which stays in the arenas (no page faults per request);
#: below the per-epoch arrays (tens of MiB).
MMAP_THRESHOLD_BYTES = 4 << 20

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):
        _libc = None

_malloc_fixed = False


def fix_malloc_thresholds() -> None:
    """Pin glibc's mmap threshold (once per process): large temporaries go back to the system."""
    global _malloc_fixed
    if _malloc_fixed or _libc is None or not hasattr(_libc, "mallopt"):
        return
    _libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    _malloc_fixed = True


def release_mapped_file(path: str) -> int:
    """Unmap this process's resident pages of ``path``'s mappings; returns the bytes advised."""
    if _libc is None:
        return 0
    target = os.path.realpath(path)
    advised = 0
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].strip() != target:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if _libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
            advised += end - start
    return advised
