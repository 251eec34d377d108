"""`tally load replay`: re-send a recorded trace at its recorded times, and compare the answers.

The trace (``loadgen.trace``) holds every request of a run in send order, with the time it was
due and the result code it got. Replay sends:

1. the **setup** requests (the population's accounts, top-ups and merchants' terms) first, in
   order, one frame after another on the first connection, untimed, as the run did;
2. the **timed** requests at ``scheduled_ns / speed`` from the replay's start, open loop
   (``loadgen.runner.open_loop``: latency from the scheduled time), in send order, a frame per
   run of one operation (the recording's frames, on one connection).

**Orders' tokens.** A ``pay_orders`` request carries the token its order's ``create_orders``
answered, and a token is the HMAC of the order id under the store's secret, drawn when the
store is created: a fresh server answers other tokens, by design. So a replayed payment waits
until its order's create has been answered in the replay (the run sent it only after that
answer too) and carries the token of that answer. Tokens are not compared: the trace keeps a
request's result code, not the rest of its answer, and it cannot say which store made a token;
a payment whose token was wrong would show as ``order_token_invalid``.

**Payment codes.** Likewise a code is the HMAC of the wallet and the request id under the
store's secret: a fresh server issues other code numbers. The trace keeps the code each
``issue_codes`` was answered (format 1.2, its ``codes`` flag), so a recorded charge names the
issue whose code it charged; the replayed charge waits for that issue's answer in the replay
and carries the code of that answer (a charge of a code not issued ``ok`` would show as
``code_invalid`` or ``code_not_found``). Confirms, declines and revokes name the order (the
merchant and ``out_trade_no``) and the wallet: they are replayed as recorded.

**Red envelopes.** A packet's id is a digest of its sender and ``out_envelope_no``, the same
in any store, so a claim is replayed as recorded, once its packet's send has been answered in
the replay (as in the run). Its share is drawn under the store's secret: a fresh server gives
other shares (the trace keeps the recorded ones, format 1.3), which are not compared; the
result codes are (who is late depends only on the order of the claims). The shares land in the
claimers' wallets, so a wallet's balance differs from the run's by its shares' difference: a
run whose wallets ran near empty (``exceeds_credits``) may replay some of those answers
differently.

It then compares the number of requests per (kind, result code) with the recording. Against
a server initialised as the recorded one was (a fresh data directory, when the trace starts
with its setup), a trace recorded on **one connection** and replayed on one connection gets
exactly the recorded counts: the server applies one connection's requests in order, and
results depend only on that order (no transfer of the generator has a timeout; an order
expires ``expire_after_s``, at least 60 s, after its creation, a code 60 s after its issue and
a held charge 45 s after it was made, and the run confirms, declines or revokes a held charge at
most 30 s after it, a packet ``expire_after_s`` after its send, 24 h by default: engine time
matters only to a replay that falls that far behind). With several connections, requests on different
connections may be applied in another order than they were recorded in, and counts may differ
where they depend on each other (a capture racing its hold); the comparison says so rather
than hiding it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

import core
from core.operations import Operation
from core.order_keys import TOKEN_BYTES
from loadgen import runner, trace
from loadgen.generator import Frame, Kind, SETUP_KINDS, as_records
from loadgen.runner import CODES, KINDS, LoadError, Options, Target, Tally

SPEED_MAX = 1000.0
DIFFERENCES_SHOWN = 12   # lines of a terminal summary; the report has them all


def _runs(operations: np.ndarray) -> list[np.ndarray]:
    """Positions of ``operations`` in runs of one operation (a frame each, as they were sent)."""
    cuts = np.flatnonzero(operations[1:] != operations[:-1]) + 1
    return np.split(np.arange(len(operations)), cuts)


def _charged_issues(data: trace.TraceData, rows: np.ndarray) -> np.ndarray:
    """For each request of ``rows``: if it charges a code an issue in ``rows`` was answered
    (the trace's ``issued_code``), the position of that issue (the first), else -1."""
    operations = data.operation[rows]
    issues = np.flatnonzero((operations == Operation.issue_codes) & (data.issued_code[rows] != 0))
    charges = np.flatnonzero(operations == Operation.charge_codes)
    issued = np.full(len(rows), -1, dtype=np.int64)
    if not len(issues) or not len(charges):
        return issued
    codes = data.issued_code[rows[issues]]
    charged = np.ascontiguousarray(data.events[rows[charges]]).view(core.CODE_CHARGE_DTYPE).reshape(-1)["code_lo"]
    by_code = np.argsort(codes, kind="stable")
    found = np.minimum(np.searchsorted(codes[by_code], charged), len(issues) - 1)
    match = codes[by_code][found] == charged
    issued[charges[match]] = issues[by_code[found[match]]]
    return issued


def _made_by(data: trace.TraceData, rows: np.ndarray, making: int, using: int) -> np.ndarray:
    """For each request of ``rows``: if it is a ``using`` request (a payment, a claim) of a record
    a ``making`` request of ``rows`` made (an order's create, a packet's send), the position of
    that request (the first with the record's id), else -1. The id is the first 16 bytes of both
    records."""
    operations = data.operation[rows]
    makes = np.flatnonzero(operations == making)
    uses = np.flatnonzero(operations == using)
    made = np.full(len(rows), -1, dtype=np.int64)
    if not len(makes) or not len(uses):
        return made

    def ids(positions):
        return np.ascontiguousarray(data.events[rows[positions], :16]).view("V16").ravel()

    make_ids, use_ids = ids(makes), ids(uses)
    by_id = np.argsort(make_ids, kind="stable")
    found = np.minimum(np.searchsorted(make_ids[by_id], use_ids), len(makes) - 1)
    match = make_ids[by_id][found] == use_ids
    made[uses[match]] = makes[by_id[found[match]]]
    return made


class TraceSource:
    """The timed requests of a trace, due at their recorded times divided by ``speed``; an
    order's payment waits for its create's answer in the replay and carries its token, a code's
    charge for its issue's and a packet's claim for its send's (see the module's docstring).
    Frames are numbered by position in ``rows``."""

    index_offset = 0   # a replay records no trace

    def __init__(self, data: trace.TraceData, rows: np.ndarray, speed: float):
        self.data = data
        self.rows = rows   # in send order (request_index)
        self.total = len(rows)
        # Sent in send order: a request is due no earlier than the one sent before it.
        due_ns = (data.scheduled_ns[rows].astype(np.float64) / speed).astype(np.uint64)
        self._due_ns = np.maximum.accumulate(due_ns) if len(due_ns) else due_ns
        self._created = _made_by(data, rows, Operation.create_orders, Operation.pay_orders)
        self._pays = bool((self._created >= 0).any())
        self._issued = _charged_issues(data, rows)
        self._charges = bool((self._issued >= 0).any())
        # The answer each request waits for (a pay its create's, a charge its issue's, a claim its
        # packet's send's), or -1.
        self._needs = np.maximum(np.maximum(self._created, self._issued),
                                 _made_by(data, rows, Operation.send_envelopes, Operation.claim_envelopes))
        self._waits = bool((self._needs >= 0).any())
        self._answered = np.zeros(len(rows), dtype=bool)          # creates, issues and sends answered in the replay
        self._tokens = np.zeros((len(rows) if self._pays else 0, TOKEN_BYTES), dtype=np.uint8)
        self._codes = np.zeros(len(rows) if self._charges else 0, dtype=np.uint64)

    def due_by(self, t_ns: int) -> int:
        return int(np.searchsorted(self._due_ns, t_ns, side="right"))

    def due_ns(self, first: int, end: int) -> np.ndarray:
        return self._due_ns[first:end]

    def ready(self, first: int, end: int) -> int:
        if not self._waits:
            return end
        needs = self._needs[first:end]
        waiting = (needs >= 0) & ~self._answered[np.maximum(needs, 0)]
        return first + int(np.argmax(waiting)) if waiting.any() else end

    def take(self, first: int, end: int, now_ns: int) -> list[Frame]:
        rows = self.rows[first:end]
        frames = []
        for part in _runs(self.data.operation[rows]):
            selected = rows[part]
            operation = int(self.data.operation[selected[0]])
            records = as_records(self.data.events[selected], operation)
            positions = first + part
            if operation == Operation.pay_orders and self._pays:
                created = self._created[positions]
                records["token"][created >= 0] = self._tokens[created[created >= 0]]
            elif operation == Operation.charge_codes and self._charges:
                issued = self._issued[positions]
                records["code_lo"][issued >= 0] = self._codes[issued[issued >= 0]]
            frames.append(Frame(operation, positions.astype(np.uint64), records, self.data.kind[selected]))
        return frames

    def answered(self, frame: Frame, replies, reply_ns: int) -> None:
        if frame.operation == Operation.create_orders:
            positions = frame.indexes.astype(np.int64)
            self._answered[positions] = True   # unanswered (replies None): its payments go with no token
            if self._pays and replies is not None:
                self._tokens[positions] = replies["token"]
        elif frame.operation == Operation.issue_codes:
            positions = frame.indexes.astype(np.int64)
            self._answered[positions] = True   # unanswered: its charges go with code 0 (code_invalid)
            if self._charges and replies is not None:
                self._codes[positions] = replies["code"]
        elif frame.operation == Operation.send_envelopes:
            self._answered[frame.indexes.astype(np.int64)] = True   # unanswered: its claims find no packet


async def _send_setup(client, data: trace.TraceData, rows: np.ndarray, codes: np.ndarray) -> None:
    """The setup requests in order: frames of one operation, as the run sent them."""
    for part in _runs(data.operation[rows]):
        if not len(part):
            continue
        part = rows[part]
        operation = int(data.operation[part[0]])
        frames = [part[i:i + runner.FRAME_EVENTS_MAX] for i in range(0, len(part), runner.FRAME_EVENTS_MAX)]
        batches = (as_records(data.events[selected], operation) for selected in frames)
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
