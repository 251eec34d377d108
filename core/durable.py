"""Making file-system changes durable (what a crash must not undo)."""

from __future__ import annotations

import os


def fsync_directory(directory: str) -> None:
    """Sync a directory, so that the names created or renamed in it survive a crash."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
