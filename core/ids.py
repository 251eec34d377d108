"""Time-ordered 128-bit ids for accounts and transfers (TigerBeetle's ``id()``; ULID, UUIDv7).

An id is ``unix_ms << 80 | r``: the wall-clock millisecond in the high 48 bits, 80 bits below.
The first id of a process in a new millisecond takes ``r`` from ``os.urandom``; every later id in
the same millisecond (or in an earlier one, when the clock stepped back) is the previous id + 1,
with the carry going into the timestamp when ``r`` overflows. So one generator's ids strictly
increase, and ids from different processes interleave by time and differ by their random bits.

Why services should use them (docs/data-model.md, "Ids"): the store's cold id index is keyed by
the id as 16 big-endian bytes, so increasing ids are appends to it, and an id above every stored
one is proven new by a range check instead of a disk read. Random ids still work, at that cost.

>>> import core
>>> a, b = core.new_id(), core.new_id()
>>> a < b and core.ids.id_timestamp_ms(a) <= core.ids.id_timestamp_ms(b)
True
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Callable

import numpy as np

from core.records import ID_DTYPE

__all__ = ["IdGenerator", "new_id", "new_ids", "id_timestamp_ms", "TIMESTAMP_BITS", "RANDOM_BITS"]

TIMESTAMP_BITS = 48
RANDOM_BITS = 80
_TIMESTAMP_MAX = (1 << TIMESTAMP_BITS) - 1   # the year 10889
_RANDOM_MAX = (1 << RANDOM_BITS) - 1
_U64_MAX = (1 << 64) - 1
_U128_MAX = (1 << 128) - 1                   # reserved, as is 0


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _urandom_bits() -> int:
    return int.from_bytes(os.urandom(RANDOM_BITS // 8), "little")


# Generators alive in this process: a forked child must not continue its parent's sequence
# (both would hand out previous + 1 in the same millisecond, the same ids) and must not inherit
# a lock another thread of the parent held at the fork.
_generators: weakref.WeakSet[IdGenerator] = weakref.WeakSet()


class IdGenerator:
    """A source of strictly increasing time-ordered ids; thread-safe (one lock per generator).

    ``clock_ms`` (unix time in milliseconds) and ``random_bits`` (an int in [0, 2**80)) can be
    injected to make the sequence deterministic in tests. The module-level ``new_id``/``new_ids``
    share one process-wide generator, which is what services want: two generators in one process
    are each increasing, but not increasing together.
    """

    def __init__(self, clock_ms: Callable[[], int] = _wall_clock_ms,
                 random_bits: Callable[[], int] = _urandom_bits):
        self._clock_ms = clock_ms
        self._random_bits = random_bits
        self._lock = threading.Lock()
        self._last = 0             # the last id handed out; 0 = none yet
        _generators.add(self)

    def _after_fork_in_child(self) -> None:
        # The first id after the fork draws new random bits, so parent and child diverge.
        self._lock = threading.Lock()
        self._last = 0

    def _reserve(self, count: int) -> int:
        """The first of ``count`` consecutive new ids; the caller holds the lock."""
        ms = self._clock_ms()
        if not 0 <= ms <= _TIMESTAMP_MAX:
            raise ValueError(f"clock_ms() = {ms} does not fit {TIMESTAMP_BITS} bits")
        if ms > self._last >> RANDOM_BITS:
            r = self._random_bits()
            if not 0 <= r <= _RANDOM_MAX:
                raise ValueError(f"random_bits() = {r} does not fit {RANDOM_BITS} bits")
            first = ms << RANDOM_BITS | r                  # not 0: here ms > 0
        else:
            first = self._last + 1                         # same or earlier ms: keep increasing
        last = first + count - 1
        if last >= _U128_MAX:
            raise OverflowError("the 128-bit id space is exhausted (2**128-1 is reserved)")
        self._last = last
        return first

    def new_id(self) -> int:
        """A new id, greater than every id this generator returned before."""
        with self._lock:
            return self._reserve(1)

    def new_ids(self, count: int) -> np.ndarray:
        """``count`` new ids as a ``core.ID_DTYPE`` array, strictly increasing: one lock, one clock read.

        The same ids as ``count`` calls of ``new_id`` made within one millisecond: consecutive
        integers after the first (for load generators, where per-id calls would dominate).
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        out = np.empty(count, dtype=ID_DTYPE)
        if count == 0:
            return out
        with self._lock:
            first = self._reserve(count)
        lo0 = np.uint64(first & _U64_MAX)
        lo = lo0 + np.arange(count, dtype=np.uint64)       # wraps modulo 2**64 ...
        out["lo"] = lo
        out["hi"] = np.uint64(first >> 64) + (lo < lo0)    # ... and the wrap carries into hi
        return out


def id_timestamp_ms(id: int) -> int:  # noqa: A002 - "id" is the record field's name
    """The unix time in milliseconds in an id's high 48 bits (when it was made, if time-ordered)."""
    if not 0 <= id <= _U128_MAX:
        raise OverflowError(f"id {id} does not fit 128 bits")
    return id >> RANDOM_BITS


def _after_fork_in_child() -> None:
    for generator in list(_generators):
        generator._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_default = IdGenerator()


def new_id() -> int:
    """A new time-ordered u128 id, greater than every id returned before in this process."""
    return _default.new_id()


def new_ids(count: int) -> np.ndarray:
    """``count`` new time-ordered ids as a ``core.ID_DTYPE`` array; see ``IdGenerator.new_ids``."""
    return _default.new_ids(count)
