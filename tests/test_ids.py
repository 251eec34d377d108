"""core.ids: time-ordered u128 ids strictly increase per process and carry the wall-clock ms."""

import os
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import core
import engine.client
from core.ids import IdGenerator, id_timestamp_ms

U128_MAX = (1 << 128) - 1
R_MAX = (1 << 80) - 1
T_MAX = (1 << 48) - 1


def _ints(array):
    """An ID_DTYPE array as Python ints."""
    return [int(hi) << 64 | int(lo) for lo, hi in array.tolist()]


def _be(value):
    """The id index key: (id_hi, id_lo) as 16 big-endian bytes."""
    return (value >> 64).to_bytes(8, "big") + (value & (1 << 64) - 1).to_bytes(8, "big")


class _Clock:
    def __init__(self, ms):
        self.ms = ms

    def __call__(self):
        return self.ms


def test_exported():
    assert core.new_id is core.ids.new_id and core.new_ids is core.ids.new_ids
    assert engine.client.new_id is core.ids.new_id
    assert {"new_id", "new_ids"} <= set(core.__all__)


def test_many_calls_strictly_increase():
    ids = [core.new_id() for _ in range(50_000)]
    assert all(a < b for a, b in zip(ids, ids[1:]))
    assert all(0 < i < U128_MAX for i in ids)


def test_timestamp_is_wall_clock_ms():
    before = time.time_ns() // 1_000_000
    ids = [core.new_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    # Within one call's ms, unless 2**80 ids were made in one ms (they were not).
    for i in ids:
        assert before <= id_timestamp_ms(i) <= after
    assert id_timestamp_ms(core.new_id()) >= id_timestamp_ms(ids[-1])


def test_first_id_of_a_millisecond_is_random_and_later_ones_increment():
    clock = _Clock(1_000)
    draws = iter([12345, 777, 999])
    gen = IdGenerator(clock_ms=clock, random_bits=lambda: next(draws))
    assert gen.new_id() == 1_000 << 80 | 12345
    assert gen.new_id() == 1_000 << 80 | 12346            # same ms: previous + 1, no draw
    clock.ms = 1_001
    assert gen.new_id() == 1_001 << 80 | 777              # new ms: a fresh draw
    assert gen.new_id() == 1_001 << 80 | 778


def test_random_part_uses_all_80_bits():
    # Each fresh draw comes from os.urandom: many draws cover the high bits of the random part.
    seen_high = set()
    for ms in range(1, 201):
        gen = IdGenerator(clock_ms=lambda ms=ms: ms)
        seen_high.add((gen.new_id() & R_MAX) >> 72)
    assert len(seen_high) > 100


def test_overflow_of_random_part_carries_into_timestamp():
    clock = _Clock(5)
    gen = IdGenerator(clock_ms=clock, random_bits=lambda: R_MAX)
    first = gen.new_id()
    assert first == 5 << 80 | R_MAX
    carried = gen.new_id()
    assert carried == 6 << 80 and carried > first
    assert id_timestamp_ms(carried) == 6
    # The clock reaching the carried ms does not draw again (that could go below `carried`).
    clock.ms = 6
    assert gen.new_id() == carried + 1
    clock.ms = 7
    assert gen.new_id() == 7 << 80 | R_MAX


def test_clock_going_backwards_still_increases():
    clock = _Clock(10_000)
    gen = IdGenerator(clock_ms=clock, random_bits=lambda: 0)
    a = gen.new_id()
    clock.ms = 9_000                                      # NTP stepped the clock back
    b = gen.new_id()
    c = gen.new_id()
    assert a < b < c and b == a + 1 and c == a + 2
    assert id_timestamp_ms(b) == 10_000                   # stays at the highest ms seen
    clock.ms = 10_001
    assert gen.new_id() == 10_001 << 80


def test_never_zero():
    gen = IdGenerator(clock_ms=lambda: 0, random_bits=lambda: 0)
    assert gen.new_id() == 1
    assert gen.new_id() == 2


def test_never_max():
    gen = IdGenerator(clock_ms=lambda: T_MAX, random_bits=lambda: R_MAX - 1)
    assert gen.new_id() == U128_MAX - 1
    with pytest.raises(OverflowError):
        gen.new_id()                                      # would be 2**128-1, the reserved id
    gen = IdGenerator(clock_ms=lambda: T_MAX, random_bits=lambda: R_MAX)
    with pytest.raises(OverflowError):
        gen.new_id()
    gen = IdGenerator(clock_ms=lambda: T_MAX, random_bits=lambda: R_MAX - 10)
    with pytest.raises(OverflowError):
        gen.new_ids(11)                                   # its last id would be 2**128-1
    assert gen.new_ids(10)[-1].tolist() == ((1 << 64) - 2, (1 << 64) - 1)   # a refusal reserves nothing


def test_bad_clock_or_random_is_refused():
    with pytest.raises(ValueError):
        IdGenerator(clock_ms=lambda: 1 << 48).new_id()
    with pytest.raises(ValueError):
        IdGenerator(clock_ms=lambda: -1).new_id()
    with pytest.raises(ValueError):
        IdGenerator(clock_ms=lambda: 1, random_bits=lambda: 1 << 80).new_id()
    with pytest.raises(ValueError):
        core.new_ids(-1)


def test_threads_get_distinct_increasing_ids():
    threads_n, per_thread = 4, 10_000
    results = [None] * threads_n
    barrier = threading.Barrier(threads_n)

    def work(k):
        barrier.wait()
        results[k] = [core.new_id() for _ in range(per_thread)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ids in results:
        assert len(ids) == per_thread
        assert all(a < b for a, b in zip(ids, ids[1:]))
    assert len({i for ids in results for i in ids}) == threads_n * per_thread


def test_threads_share_one_sequence_without_gaps_under_a_fixed_clock():
    # With the clock frozen every id is previous + 1: the union is one consecutive run, which
    # fails if two threads ever read the same previous id (a lost update without the lock).
    def slow_random_bits():
        time.sleep(0.01)                 # all threads would be inside the first draw at once
        return 1000

    gen = IdGenerator(clock_ms=lambda: 42, random_bits=slow_random_bits)
    results = [None] * 4
    barrier = threading.Barrier(4)

    def work(k):
        barrier.wait()
        results[k] = [gen.new_id() for _ in range(5_000)] + _ints(gen.new_ids(100))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)          # switch threads often, so a missing lock shows
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    everything = sorted(i for ids in results for i in ids)
    assert everything == list(range(42 << 80 | 1000, (42 << 80 | 1000) + 4 * 5_100))


@given(st.lists(st.integers(0, U128_MAX), min_size=2, max_size=50))
def test_big_endian_index_key_sorts_like_the_int(values):
    assert sorted(values, key=_be) == sorted(values)
    assert [int.from_bytes(_be(v), "big") for v in values] == values


def test_new_ids_index_keys_are_in_order():
    ids = core.new_ids(1000)
    keys = [hi.to_bytes(8, "big") + lo.to_bytes(8, "big") for lo, hi in ids.tolist()]
    assert keys == sorted(keys) and len(set(keys)) == 1000
    # The record fields (id_lo, id_hi) hold the same halves.
    batch = core.transfers_from_dicts([{"id": i} for i in _ints(ids[:3])])
    assert batch["id_lo"].tolist() == ids["lo"][:3].tolist()
    assert batch["id_hi"].tolist() == ids["hi"][:3].tolist()


def test_new_ids_array():
    before_ms = time.time_ns() // 1_000_000
    previous = core.new_id()
    ids = core.new_ids(10_000)
    after = core.new_id()
    after_ms = time.time_ns() // 1_000_000
    assert ids.dtype == core.ID_DTYPE and ids.shape == (10_000,)
    values = _ints(ids)
    assert previous < values[0] and values[-1] < after
    assert values == list(range(values[0], values[0] + 10_000))   # one reservation: consecutive
    assert all(before_ms <= id_timestamp_ms(v) <= after_ms for v in (values[0], values[-1]))
    assert core.ids_array(values).tobytes() == ids.tobytes()
    assert len(core.new_ids(0)) == 0


@settings(max_examples=200)
@given(ms=st.integers(0, T_MAX - 1), r=st.integers(0, R_MAX), count=st.integers(1, 3000),
       calls_first=st.integers(0, 3))
def test_new_ids_equals_repeated_new_id(ms, r, count, calls_first):
    # Vectorized (lo/hi with the carry from lo into hi) == count scalar calls in the same ms,
    # including across the 2**64 boundary of the low half and the 2**80 carry into the timestamp.
    def make():
        return IdGenerator(clock_ms=lambda: ms, random_bits=lambda: r)

    scalar, vector = make(), make()
    for _ in range(calls_first):
        assert scalar.new_id() == vector.new_id()
    expected = [scalar.new_id() for _ in range(count)]
    got = _ints(vector.new_ids(count))
    assert got == expected
    assert scalar.new_id() == vector.new_id()                      # same state afterwards


@pytest.mark.parametrize("start", [(1 << 64) - 3, R_MAX - 2])
def test_new_ids_carries_across_halves(start):
    gen = IdGenerator(clock_ms=lambda: 3, random_bits=lambda: start)
    values = _ints(gen.new_ids(6))
    first = 3 << 80 | start
    assert values == [first + k for k in range(6)]


@given(st.integers(0, T_MAX), st.integers(0, R_MAX))
def test_id_timestamp_ms(ms, r):
    assert id_timestamp_ms(ms << 80 | r) == ms


def test_id_timestamp_ms_refuses_non_u128():
    with pytest.raises(OverflowError):
        id_timestamp_ms(1 << 128)
    with pytest.raises(OverflowError):
        id_timestamp_ms(-1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_repeat_parents_ids():
    gen = IdGenerator(clock_ms=lambda: 7, random_bits=lambda: int.from_bytes(os.urandom(10), "little"))
    gen.new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, gen.new_id().to_bytes(16, "big"))
        finally:
            os._exit(0)
    os.close(write)
    child = int.from_bytes(os.read(read, 16), "big")
    os.close(read)
    os.waitpid(pid, 0)
    parent = gen.new_id()
    # Without the reset both would be previous + 1 (the same id); with it the child drew anew.
    assert child != parent
