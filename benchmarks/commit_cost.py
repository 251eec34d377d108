"""What one durable commit costs on this disk: a synchronous LMDB commit against the journal's.

    .venv/bin/python benchmarks/commit_cost.py [--commits 2000] [--bytes 12288] [--rounds 3] [--dir DIR]

Method: ``commits`` commits of ``bytes`` each, one after another, by one thread, for each way of
committing; the ways alternate, ``rounds`` times, so that a drift of the machine (a shared VM's
disk and CPU change speed over minutes) shows as spread rather than as a difference. Per way
and round: the latency of each commit (p50, p99, p99.9) and the process's CPU time per commit
(user + system: on a VM most of a sync's cost is the kernel's). The ways:

* ``lmdb``: an LMDB environment with ``sync=True, metasync=True`` (the log's, before the
  journal), one ``MDB_APPEND`` put per write transaction;
* ``journal``: ``pwrite`` into a file written full of zeros beforehand, then ``fdatasync``
  (what ``core.journal`` does per group);
* ``dsync``: the same file opened with ``O_DSYNC`` (each write synchronous, no sync call);
* ``direct``: ``O_DIRECT | O_DSYNC`` with an aligned buffer.

docs/journal.md has the figures that chose the journal's way. Run it with nothing else on the
machine.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import tempfile
import time

import lmdb

MODES = ("lmdb", "journal", "dsync", "direct")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(mode: str, directory: str, commits: int, value_bytes: int) -> dict:
    """One way of committing, ``commits`` times, in a fresh ``directory``."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    payload = os.urandom(value_bytes)
    closing = []
    if mode == "lmdb":
        env = lmdb.open(directory, map_size=1 << 34, sync=True, metasync=True)
        closing.append(env.close)

        def commit(i: int) -> None:
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), payload, append=True)
    else:
        path = os.path.join(directory, "journal")
        slot = (value_bytes + 4095) // 4096 * 4096  # O_DIRECT needs aligned offsets and lengths
        with open(path, "wb") as file:  # preallocated: no commit grows the file
            zeros = bytes(1 << 20)
            for _ in range(0, slot * commits, len(zeros)):
                file.write(zeros)
            file.flush()
            os.fsync(file.fileno())
        flags = os.O_RDWR | (os.O_DSYNC if mode in ("dsync", "direct") else 0) | (os.O_DIRECT if mode == "direct" else 0)
        fd = os.open(path, flags)
        closing.append(lambda: os.close(fd))
        buffer = mmap.mmap(-1, slot)  # page-aligned, as O_DIRECT wants
        buffer.write(payload)

        def commit(i: int) -> None:
            os.pwrite(fd, buffer, i * slot)
            if mode == "journal":
                os.fdatasync(fd)
    latencies = []
    cpu_before, started = _cpu_s(), time.perf_counter()
    for i in range(commits):
        begin = time.perf_counter()
        commit(i)
        latencies.append(time.perf_counter() - begin)
    wall_s, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_before
    for close in closing:
        close()
    shutil.rmtree(directory, ignore_errors=True)
    latencies.sort()
    return {"mode": mode, "p50_ms": latencies[commits // 2] * 1e3, "p99_ms": latencies[int(commits * 0.99)] * 1e3,
            "p999_ms": latencies[int(commits * 0.999)] * 1e3, "cpu_us_per_commit": cpu_s / commits * 1e6,
            "wall_us_per_commit": wall_s / commits * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--bytes", type=int, default=12288, help="bytes per commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory here)")
    args = parser.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="commit-cost-", dir=".")
    try:
        print(f"{'round':>5} {'mode':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'CPU us':>7} {'wall us':>8}")
        for round_number in range(1, args.rounds + 1):
            for mode in MODES:
                r = measure(mode, os.path.join(base, mode), args.commits, args.bytes)
                print(f"{round_number:>5} {mode:>8} {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f} {r['p999_ms']:>8.3f} "
                      f"{r['cpu_us_per_commit']:>7.0f} {r['wall_us_per_commit']:>8.0f}", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
