"""Where a running process's CPU goes, thread by thread (Linux).

    .venv/bin/python benchmarks/thread_cpu.py PID [SECONDS]

Reads ``/proc/PID/task/*/schedstat`` twice, ``SECONDS`` apart (default 10), and prints per
thread (named as the operating system shows it: the server's event loop is the process's main
thread, which applies and commits the batches; the store names its threads ``tally-commit``
(idle in a server: batches submitted outside it, such as the pulse), ``tally-sink``,
``tally-cold_0``, ``tally-checkpoint_0``) the share of one CPU it ran, the share it spent runnable but
waiting for a CPU (the scheduler's queue: on a small machine shared with a load generator,
where latency tails come from), and its time slices per second. docs/request-path.md has the
figures this gave under ``tally bench latency``'s rates. Run it beside a load, e.g.
``benchmarks/thread_cpu.py $(pgrep -f 'tally serve') 10``.
"""

from __future__ import annotations

import os
import sys
import time


def sample(pid: int) -> dict[str, tuple[int, int, int]]:
    """Per thread ``name/tid``: (ns run, ns waiting to run, time slices) so far."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as file:
                name = file.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as file:
                run_ns, wait_ns, slices = (int(value) for value in file.read().split())
        except OSError:  # the thread ended meanwhile
            continue
        out[f"{name}/{tid}"] = (run_ns, wait_ns, slices)
    return out


def main() -> None:
    pid = int(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    before = sample(pid)
    time.sleep(seconds)
    after = sample(pid)
    rows = []
    for thread, (run_ns, wait_ns, slices) in after.items():
        if thread in before:
            run0, wait0, slices0 = before[thread]
            rows.append((thread, (run_ns - run0) / seconds / 1e7, (wait_ns - wait0) / seconds / 1e7,
                         (slices - slices0) / seconds))
    rows.sort(key=lambda row: -row[1])
    print(f"{'thread':<28} {'CPU %':>6} {'waiting %':>9} {'slices/s':>9}")
    for thread, cpu_pct, wait_pct, slices_per_s in rows:
        if cpu_pct >= 0.05 or wait_pct >= 0.05:
            print(f"{thread:<28} {cpu_pct:>6.1f} {wait_pct:>9.1f} {slices_per_s:>9.0f}")
    print(f"{'total':<28} {sum(row[1] for row in rows):>6.1f} {sum(row[2] for row in rows):>9.1f}")


if __name__ == "__main__":
    main()
