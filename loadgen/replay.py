"""`tally load replay`: re-send a recorded trace at its recorded times, and compare the answers.

The trace (``loadgen.trace``) holds every request of a run in send order, with the time it was
due and the result code it got. Replay sends:

1. the **setup** requests (the population's accounts and top-ups) first, in order, one frame
   after another on the first connection, untimed, as the run did;
2. the **timed** requests at ``scheduled_ns / speed`` from the replay's start, open loop
   (``loadgen.runner.open_loop``: latency from the scheduled time), in send order.

It then compares the number of requests per (kind, result code) with the recording. Against
a server initialised as the recorded one was (a fresh data directory, when the trace starts
with its setup), a trace recorded on **one connection** and replayed on one connection gets
exactly the recorded counts: the server applies one connection's requests in order, and
results depend only on that order (no request of the generator has a timeout, so engine time
does not matter). With several connections, requests on different connections may be applied
in another order than they were recorded in, and counts may differ where they depend on each
other (a capture racing its hold); the comparison says so rather than hiding it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

import core
from loadgen import runner, trace
from loadgen.generator import Kind, SETUP_KINDS
from loadgen.runner import CODES, KINDS, LoadError, Options, Target, Tally

SPEED_MAX = 1000.0
DIFFERENCES_SHOWN = 12   # lines of a terminal summary; the report has them all


class TraceSource:
    """The timed requests of a trace, due at their recorded times divided by ``speed``."""

    def __init__(self, data: trace.TraceData, rows: np.ndarray, speed: float):
        self.data = data
        self.rows = rows   # in send order (request_index)
        self.total = len(rows)
        # Sent in send order: a request is due no earlier than the one sent before it.
        due_ns = (data.scheduled_ns[rows].astype(np.float64) / speed).astype(np.uint64)
        self._due_ns = np.maximum.accumulate(due_ns) if len(due_ns) else due_ns

    def due_by(self, t_ns: int) -> int:
        return int(np.searchsorted(self._due_ns, t_ns, side="right"))

    def due_ns(self, first: int, end: int) -> np.ndarray:
        return self._due_ns[first:end]

    def take(self, first: int, end: int, now_ns: int):
        rows = self.rows[first:end]
        operations = self.data.operation[rows]
        # Consecutive requests of one operation go in one frame; a change of operation starts another.
        cuts = np.flatnonzero(operations[1:] != operations[:-1]) + 1
        frames = []
        for part in np.split(np.arange(len(rows)), cuts):
            selected = rows[part]
            operation = int(operations[part[0]])
            records = np.ascontiguousarray(self.data.events[selected]).view(trace.OPERATION_DTYPES[operation])
            frames.append((operation, self.data.request_index[selected], records.reshape(-1),
                           self.data.kind[selected]))
        return frames


async def _send_setup(client, data: trace.TraceData, rows: np.ndarray, codes: np.ndarray) -> None:
    """The setup requests in order: frames of one operation, as the run sent them."""
    operations = data.operation[rows]
    cuts = np.flatnonzero(operations[1:] != operations[:-1]) + 1
    for part in np.split(rows, cuts):
        if not len(part):
            continue
        operation = int(data.operation[part[0]])
        frames = [part[i:i + runner.FRAME_EVENTS_MAX] for i in range(0, len(part), runner.FRAME_EVENTS_MAX)]
        batches = (np.ascontiguousarray(data.events[selected]).view(trace.OPERATION_DTYPES[operation]).reshape(-1)
                   for selected in frames)
        selected_rows = iter(frames)
        async for _, results in runner.send_in_order(client, operation, batches):
            selected = next(selected_rows)
            codes += runner.count_codes(data.kind[selected], results)


def counts_by_kind(codes: np.ndarray) -> dict[str, dict[str, int]]:
    """A (kind, code) count matrix as {kind name: {result name: count}}."""
    names = {int(result): result.name for result in core.Result}
    return {Kind(kind).name:
            {names.get(int(code), str(int(code))): int(codes[kind, code]) for code in np.flatnonzero(codes[kind])}
            for kind in range(codes.shape[0]) if codes[kind].any()}


def compare(recorded: dict, replayed: dict) -> dict:
    """Per (kind, result) differences between two ``counts_by_kind`` dicts; empty when equal."""
    differences = {}
    for kind in sorted(set(recorded) | set(replayed)):
        a, b = recorded.get(kind, {}), replayed.get(kind, {})
        for code in sorted(set(a) | set(b)):
            if a.get(code, 0) != b.get(code, 0):
                differences[f"{kind}/{code}"] = {"recorded": a.get(code, 0), "replayed": b.get(code, 0)}
    return differences


async def _replay(target: Target, data: trace.TraceData, speed: float, connections: int, progress) -> tuple:
    setup_kinds = set(data.header.get("setup_kinds", [int(k) for k in SETUP_KINDS]))
    is_setup = np.isin(data.kind, list(setup_kinds)) & (data.scheduled_ns == 0)
    setup_rows = np.flatnonzero(is_setup)
    timed_rows = np.flatnonzero(~is_setup)   # read() sorted the trace by request_index: send order
    clients = await runner.connect(target, connections)
    setup_codes = np.zeros((KINDS, CODES), dtype=np.int64)
    try:
        await _send_setup(clients[0], data, setup_rows, setup_codes)
        window_ns = int(data.scheduled_ns[timed_rows].max(initial=0) / speed)
        tally = Tally(start_ns=time.perf_counter_ns(), window_ns=window_ns)
        ticker = asyncio.ensure_future(runner.progress_ticker(tally, progress)) if progress else None
        try:
            await runner.open_loop(clients, TraceSource(data, timed_rows, speed), tally)
        finally:
            if ticker is not None:
                ticker.cancel()
        raw = tally.raw()
        raw["elapsed_s"] = (time.perf_counter_ns() - tally.start_ns) / runner.NS_PER_S
        return raw, setup_codes, len(setup_rows)
    finally:
        for client in clients:
            client.close()


def run(target: Target, path: str, *, speed: float = 1.0, connections: int = 1, progress: bool = False,
        allow_truncated: bool = False, command: str = "") -> dict:
    """Replay the trace at ``path``; the report (mode ``replay``) with a ``comparison`` section."""
    if not 0 < speed <= SPEED_MAX:
        raise LoadError(f"speed must be in (0, {SPEED_MAX:g}]")
    try:
        data = trace.read(path, allow_truncated=allow_truncated)
    except trace.TraceError as error:
        raise LoadError(str(error)) from error
    unknown = np.setdiff1d(data.kind, np.arange(KINDS))
    if len(unknown):
        raise LoadError(f"{path}: request kinds {unknown.tolist()} are unknown to this version (0..{KINDS - 1})")
    recorded_codes = runner.count_codes(data.kind, data.result)
    duration_s = float(data.scheduled_ns.max(initial=0)) / runner.NS_PER_S / speed
    line = runner.ProgressLine(max(duration_s, 1.0)) if progress else None
    started_at = runner.utc_now()
    try:
        raw, setup_codes, setup_requests = runner.loop_runner()(_replay(target, data, speed, connections, line))
    finally:
        if line is not None:
            line.end()
    replayed_codes = raw["codes"] + setup_codes
    recorded, replayed = counts_by_kind(recorded_codes), counts_by_kind(replayed_codes)
    differences = compare(recorded, replayed)
    recorded_connections = data.header.get("connections")
    report = runner.build_report(
        [raw], None, Options(connections=connections, command=command), run_id=data.header.get("run_id", 0),
        setup_requests=setup_requests, started_at=started_at, connections=connections, mode="replay",
        target_per_s=(raw["scheduled"] / duration_s) if duration_s > 0 else None,
        duration_s=max(duration_s, 1e-9) if raw["scheduled"] else raw["elapsed_s"],
        config_extra={"trace": str(path), "speed": speed, "recorded": data.header,
                      "trace_complete": data.complete})
    report["comparison"] = {
        "equal": not differences, "recorded": recorded, "replayed": replayed, "differences": differences,
        "exact_expected": recorded_connections == 1 and connections == 1,
    }
    if differences and not report["comparison"]["exact_expected"]:
        report["notes"].append(f"recorded on {recorded_connections} connection(s), replayed on {connections}: "
                               "requests on different connections may be applied in another order")
    return report


def comparison_summary(report: dict) -> str:
    comparison = report["comparison"]
    total = sum(sum(codes.values()) for codes in comparison["recorded"].values())
    if comparison["equal"]:
        return f"result codes: identical to the recording ({total:,} requests, every kind and code)"
    lines = [f"result codes: DIFFERENT from the recording in {len(comparison['differences'])} (kind, code) pairs:"]
    shown = list(comparison["differences"].items())[:DIFFERENCES_SHOWN]
    for key, counts in shown:
        lines.append(f"  {key:<40} recorded {counts['recorded']:>12,}  replayed {counts['replayed']:>12,}")
    if len(comparison["differences"]) > len(shown):
        lines.append(f"  ... and {len(comparison['differences']) - len(shown)} more (all of them: --json or the report)")
    if not comparison["exact_expected"]:
        lines.append("  (exact counts are expected only for a trace recorded and replayed on one connection)")
    return "\n".join(lines)
