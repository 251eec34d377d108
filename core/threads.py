"""Thread names the operating system shows (``top -H``, ``perf``, ``/proc/PID/task/*/comm``).

Python names its threads for itself only; a server whose five busy threads all show as
``tally`` cannot be profiled per thread. Linux only (``prctl(PR_SET_NAME)``, 15 bytes); a no-op
elsewhere.
"""

from __future__ import annotations

import threading

from core.memory import libc

_PR_SET_NAME = 15
_NAME_BYTES_MAX = 15


def name_this_thread(name: str | None = None) -> None:
    """Give the calling thread ``name`` (default: its Python name) in the operating system."""
    if libc is None:
        return
    encoded = (name or threading.current_thread().name).encode()[:_NAME_BYTES_MAX]
    try:
        libc.prctl(_PR_SET_NAME, encoded, 0, 0, 0)
    except (AttributeError, OSError):
        pass
