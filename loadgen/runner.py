"""Running load against a server: open loop, closed loop, replay; what each request got and when.

* **Open loop** (``mode="open"``, the default): request k is sent at its scheduled time (the
  workload's rate shape, ``Rate.schedule``) whatever the server's speed, and its latency is
  measured **from that scheduled time** to its reply, as wrk2 does: a server that stalls is
  charged for every request the stall delayed (no coordinated omission). On each wake-up the
  requests that have come due are sent together (at most one wake-up per ``TICK_NS``), in one
  frame per wake-up (the way
  ``engine.client`` gathers concurrent calls), rotating over the connections. How late the
  sender itself was is reported apart (``send_lag_us``): the event loop's timers have a
  resolution of about a millisecond. A wake-up's requests go out grouped by operation (one
  frame each: transfers, orders' creates, payments, closes, refunds) and take the due times
  in that order, so that send order and due times agree (a trace keeps the send order).
* **Closed loop** (``mode="closed"``): on every connection ``depth`` frames of ``frame_events``
  requests are kept in flight for the run's seconds, as fast as the server answers: the peak.
  Latency is from send to reply.
* **Replay** (``loadgen.replay``): the requests of a recorded trace at their recorded times.

Everything goes through ``engine.client.Client``: the load generator is a client service like
any other. The setup (the population's accounts, top-ups and merchants' terms) is sent first,
in order, and is not timed. Latencies go into HDR histograms (``loadgen.histogram``): one for
the run, one per second of reply time and one per operation; ``workers > 1`` runs that many
processes, each with its share of the rate and of the connections, and their histograms are
merged exactly. The report counts result codes per request kind and per operation
(``create_orders``', ``issue_codes``' and ``claim_envelopes``' 16-byte answers count by their
result code) and, with payment codes, what became of the held charges (``codes``: held, left to
the engine's 45 s timeout, timed out or still held at the run's end) and, with red envelopes,
what the packets came to (``envelopes``: sent, claimed, late claims, minor units, emptied).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import platform
import secrets
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import numpy as np

import core
from engine import constants as engine_constants
from engine.protocol import Operation
from loadgen.generator import (
    KIND_OPERATIONS, Frame, Kind, Population, RequestGenerator, SETUP_KINDS, frames_of, timed_operations,
)
from loadgen.histogram import LatencyHistogram
from loadgen.workload import HOLD_TIMEOUT_S, Workload

NS_PER_S = 1_000_000_000
NS_PER_US = 1_000
FRAME_EVENTS_MAX = engine_constants.EVENTS_PER_REQUEST_MAX
#: Frames of the setup phase in flight at once.
SETUP_DEPTH = 8
#: An open-loop run holds requests back past this many unanswered (over all workers): they are
#: sent once answers make room, still timed from their scheduled time (so the backlog shows in
#: the latency, as it would for the services waiting), and memory stays bounded (128 bytes a request).
BACKLOG_REQUESTS_MAX = 1 << 22
#: The open-loop sender wakes at most once per tick and sends what has come due: the event
#: loop's timers resolve about a millisecond anyway, and waking for every request of a fast
#: schedule would spin a core.
TICK_NS = 1_000_000
#: Requests generated per generator call in open loop (then sent in the ticks' slices), at
#: most, and no more than come due within GENERATE_AHEAD_NS: a follow-up (a hold's resolution,
#: an order's payment or refund) is drawn when its block is generated, from the answers in by
#: then, so a block must not reach far ahead at a low rate (2,048 requests are 1 s at 2,000/s).
GENERATE_BLOCK = 2_048
GENERATE_AHEAD_NS = 10_000_000
#: Latencies wait in a list and are recorded this many at a time (one NumPy pass, not one per frame).
RECORD_BATCH = 1 << 16
#: After the last request is sent, answers are awaited this long at most.
DRAIN_TIMEOUT_S = 60.0
CODES = 256        # result codes are below this (core.Result)
KINDS = len(Kind)


@dataclass
class Target:
    """The server to load, and the client identity to load it with."""
    host: str
    port: int
    client_id: int
    secret: bytes


@dataclass
class Options:
    mode: str = "open"                 # "open" or "closed"
    connections: int = 4
    depth: int = 2                     # closed loop: frames in flight per connection
    frame_events: int = FRAME_EVENTS_MAX   # closed loop: requests per frame
    workers: int = 1                   # processes, each with its share of rate and connections
    seed: int = 1
    run_id: int | None = None          # id_hi of every id of the run (default: random)
    record: str | None = None          # write a trace here (loadgen.trace)
    progress: bool = False             # a live line on stderr, once a second
    command: str = ""                  # for the report
    drain_timeout_s: float = DRAIN_TIMEOUT_S


class LoadError(Exception):
    """The run could not be made (setup refused, no connection, bad options)."""


@dataclass
class Tally:
    """What one worker saw, kept compact: counts, and histograms per second of reply time."""
    start_ns: int
    total: LatencyHistogram = field(default_factory=LatencyHistogram)
    second: LatencyHistogram = field(default_factory=LatencyHistogram)
    send_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    current_second: int = 0
    intervals: list = field(default_factory=list)     # encoded histogram (or None) per second
    offered: list = field(default_factory=list)       # requests scheduled (open) / sent (closed) per second
    answered: list = field(default_factory=list)
    codes: np.ndarray = field(default_factory=lambda: np.zeros((KINDS, CODES), dtype=np.int64))
    scheduled: int = 0
    sent: int = 0
    answered_count: int = 0
    window_ns: int = 0                  # the measured window: answers before its end count in the rate
    answered_in_window: int = 0
    progress_reported: int = -1         # the last second the progress line showed
    failed_to_send: int = 0             # the connection failed: no answer
    errors: dict = field(default_factory=dict)  # error text -> requests
    in_flight: int = 0
    waiting: dict = field(default_factory=dict)       # operation -> latencies of this second not yet recorded
    waiting_count: int = 0
    operations: dict = field(default_factory=dict)    # operation -> LatencyHistogram of the run
    lags: list = field(default_factory=list)          # send lags not yet recorded
    lags_count: int = 0

    def offer(self, due_ns: np.ndarray) -> None:
        """Count requests offered, in the second each was due (or sent, in closed loop)."""
        first_second, last_second = int(due_ns[0]) // NS_PER_S, int(due_ns[-1]) // NS_PER_S
        if first_second == last_second:   # nearly always: one wake-up's requests
            _bump(self.offered, first_second, len(due_ns))
        else:
            for second, count in zip(*np.unique(due_ns // NS_PER_S, return_counts=True)):
                _bump(self.offered, int(second), int(count))

    def lag(self, lags_us: np.ndarray) -> None:
        self.lags.append(lags_us)
        self.lags_count += len(lags_us)
        if self.lags_count >= RECORD_BATCH:
            self._record_lags()

    def _record_lags(self) -> None:
        if self.lags:
            self.send_lag.record(np.concatenate(self.lags))
            self.lags, self.lags_count = [], 0

    def record_waiting(self) -> None:
        for operation, parts in self.waiting.items():
            latencies_us = np.concatenate(parts)
            self.second.record(latencies_us)
            if operation not in self.operations:
                self.operations[operation] = LatencyHistogram()
            self.operations[operation].record(latencies_us)
        self.waiting, self.waiting_count = {}, 0

    def answer(self, reply_ns: int, operation: int, latencies_us: np.ndarray, kinds: np.ndarray,
               results: np.ndarray) -> None:
        second = reply_ns // NS_PER_S
        if second != self.current_second:
            self.roll(second)
        self.waiting.setdefault(operation, []).append(latencies_us)
        self.waiting_count += len(latencies_us)
        if self.waiting_count >= RECORD_BATCH:
            self.record_waiting()
        _bump(self.answered, second, len(results))
        self.answered_count += len(results)
        if reply_ns < self.window_ns:
            self.answered_in_window += len(results)
        self.codes += count_codes(kinds, results)

    def roll(self, second: int) -> None:
        """Close the per-second histogram of ``current_second`` (and mark empty seconds between)."""
        self.record_waiting()
        self.total.add(self.second)
        while len(self.intervals) < self.current_second:
            self.intervals.append(None)
        if len(self.intervals) == self.current_second:
            self.intervals.append(self.second.encode() if self.second.count else None)
        self.second.reset()
        self.current_second = second

    def fail(self, count: int, error: BaseException) -> None:
        self.failed_to_send += count
        key = f"{type(error).__name__}: {error}"
        self.errors[key] = self.errors.get(key, 0) + count

    def raw(self) -> dict:
        """What the worker hands back (picklable, histograms encoded)."""
        self.roll(self.current_second + 1)
        self._record_lags()
        return {"total": self.total.encode(), "send_lag": self.send_lag.encode(), "intervals": self.intervals,
                "offered": self.offered, "answered": self.answered, "codes": self.codes,
                "scheduled": self.scheduled, "sent": self.sent, "answered_count": self.answered_count,
                "answered_in_window": self.answered_in_window, "failed_to_send": self.failed_to_send,
                "errors": self.errors,
                "operations": {operation: histogram.encode() for operation, histogram in self.operations.items()}}


def count_codes(kinds: np.ndarray, results: np.ndarray) -> np.ndarray:
    """Requests per (kind, result code): a KINDS x CODES matrix, from one bincount."""
    return np.bincount(kinds.astype(np.int64) * CODES + np.minimum(results, CODES - 1),
                       minlength=KINDS * CODES).reshape(KINDS, CODES)


def result_codes(replies: np.ndarray) -> np.ndarray:
    """The ``core.Result`` codes of a create's replies (u32 codes, or records that start with one)."""
    return replies["result"] if replies.dtype.names else replies


def sender(client, operation: int):
    """The client's call for a create ``operation`` (``create_transfers``, ``pay_orders``, ...)."""
    return getattr(client, Operation(operation).name)


def _bump(per_second: list, second: int, count: int) -> None:
    if second >= len(per_second):
        per_second.extend([0] * (second + 1 - len(per_second)))
    per_second[second] += count


def _now_ns() -> int:
    return time.perf_counter_ns()


# --------------------------------------------------------------------------- sending


async def connect(target: Target, count: int):
    from engine.client import Client, ServerError
    from engine.frame import Status

    address = f"{target.host}:{target.port}"
    try:
        clients = [await Client.connect(target.host, target.port, client_id=target.client_id, secret=target.secret)]
        # A ping first: a wrong secret is then one clear error before the run makes anything (a
        # trace file), not a ServerError in the middle of the setup.
        try:
            await clients[0].ping()
        except ServerError as error:
            clients[0].close()
            if error.status == Status.bad_mac:
                raise LoadError(f"the server at {address} refused our MAC: check the client secret in --config "
                                f"(client {target.client_id})") from None
            if error.status == Status.unknown_client:
                raise LoadError(f"the server at {address} does not know client {target.client_id}: "
                                "check --client-id and the client ids in --config") from None
            raise LoadError(f"the server at {address} refused a ping: {error}") from error
        for _ in range(count - 1):
            clients.append(await Client.connect(target.host, target.port, client_id=target.client_id,
                                                secret=target.secret))
        return clients
    except OSError as error:
        raise LoadError(f"cannot connect to {address}: {error}") from error


async def _send_frame(client, frame: Frame, scheduled_ns, tally: Tally, recorder, connection: int,
                      trace_first: int, on_answer=None) -> None:
    """Send one frame of requests and account for its answer (latency from the scheduled times).

    ``on_answer(frame, replies, reply_ns)`` hears of the answer (``replies`` None: there was
    none); the recorder gets the requests as numbers ``trace_first``, ``trace_first + 1``, ...
    (their place in the send order).
    """
    count = len(frame.kinds)
    tally.in_flight += count
    try:
        replies = await sender(client, frame.operation)(frame.records)
    except Exception as error:  # a connection lost for good, or a ServerError: no codes for these
        tally.fail(count, error)
        if on_answer is not None:
            on_answer(frame, None, _now_ns() - tally.start_ns)
        return
    finally:
        tally.in_flight -= count
    reply_ns = _now_ns() - tally.start_ns
    results = result_codes(replies)
    latencies_us = (reply_ns - scheduled_ns.astype(np.int64)) // NS_PER_US
    tally.answer(reply_ns, frame.operation, latencies_us, frame.kinds, results)
    if on_answer is not None:
        on_answer(frame, replies, reply_ns)
    if recorder is not None and not recorder.closed:   # closed: an interrupted run's trace was aborted
        recorder.append(frame.operation, np.arange(trace_first, trace_first + count, dtype=np.uint64), scheduled_ns,
                        connection, frame.kinds, results, frame.records,
                        issued_code=replies["code"] if frame.operation == Operation.issue_codes else None,
                        claimed=replies if frame.operation == Operation.claim_envelopes else None)


class RequestSource(Protocol):
    """What an open-loop sender sends: requests with due times (generated, or from a trace)."""
    total: int
    index_offset: int   # a trace numbers request k (in send order) index_offset + k

    def due_by(self, t_ns: int) -> int:
        """How many requests are due ``t_ns`` after the start."""

    def due_ns(self, first: int, end: int) -> np.ndarray:
        """The due times (ns from the start) of requests ``first`` .. ``end - 1``."""

    def ready(self, first: int, end: int) -> int:
        """The end of the requests from ``first`` that may be sent now (those after wait for an answer)."""

    def take(self, first: int, end: int, now_ns: int) -> list[Frame]:
        """Requests ``first`` .. ``end - 1`` as frames, in the order they are to be sent."""

    def answered(self, frame: Frame, replies: np.ndarray | None, reply_ns: int) -> None:
        """A frame's replies (None: it got no answer), ``reply_ns`` after the start."""


class GeneratedSource:
    """A workload's schedule and generator."""

    def __init__(self, workload: Workload, generator: RequestGenerator, index_offset: int):
        self.schedule = workload.rate.schedule(workload.seconds)
        self.total = self.schedule.total
        self.generator = generator
        self.index_offset = index_offset   # trace request numbers come after the setup's
        self._block = None
        self._operations = np.zeros(0, dtype=np.uint16)
        self._position = 0
        self._generated = 0

    def due_by(self, t_ns: int) -> int:
        return self.schedule.due_by(t_ns / NS_PER_S)

    def due_ns(self, first: int, end: int) -> np.ndarray:
        return (self.schedule.times_s(first, end) * NS_PER_S).astype(np.uint64)

    def ready(self, first: int, end: int) -> int:
        return end   # an order's follow-up is only generated once the answer it needs is in

    def answered(self, frame: Frame, replies, reply_ns: int) -> None:
        if replies is not None:
            self.generator.answered(frame.indexes, frame.kinds, replies, reply_ns)

    def take(self, first: int, end: int, now_ns: int) -> list[Frame]:
        # Requests are generated in blocks (GENERATE_BLOCK, GENERATE_AHEAD_NS) and handed out in
        # the ticks' slices: a generator call costs tens of NumPy calls, whatever its size.
        count = end - first
        parts = []
        while count:
            if self._position == len(self._operations):
                ahead = self.due_by(now_ns + GENERATE_AHEAD_NS) - self._generated
                self._block = self.generator.next(max(count, min(GENERATE_BLOCK, ahead)), now_ns)
                self._generated += len(self._block.kinds)
                self._operations = KIND_OPERATIONS[self._block.kinds]
                self._position = 0
            take = min(count, len(self._operations) - self._position)
            rows = slice(self._position, self._position + take)
            parts.append((*(column[rows] for column in self._block), self._operations[rows]))
            self._position += take
            count -= take
        columns = parts[0] if len(parts) == 1 else [np.concatenate(column) for column in zip(*parts)]
        return frames_of(*columns)


async def open_loop(clients, source: RequestSource, tally: Tally, recorder=None,
                    drain_timeout_s: float = DRAIN_TIMEOUT_S, backlog_max: int = BACKLOG_REQUESTS_MAX) -> None:
    """Send every request of ``source`` at its due time (see the module's docstring)."""
    sent = frames = 0
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()
    while sent < source.total:
        now_ns = _now_ns() - tally.start_ns
        due = source.due_by(now_ns)
        if due > tally.scheduled:
            tally.offer(source.due_ns(tally.scheduled, due))
            tally.scheduled = due
        # Past the backlog limit, requests wait here (their latency still runs from their due time);
        # so do those that need an answer not in yet (a replayed order's payment, its token).
        end = source.ready(sent, min(due, sent + max(0, backlog_max - tally.in_flight)))
        if end > sent:
            scheduled_ns = source.due_ns(sent, end)
            for first in range(sent, end, FRAME_EVENTS_MAX):
                last = min(end, first + FRAME_EVENTS_MAX)
                for frame in source.take(first, last, now_ns):
                    connection = frames % len(clients)
                    frames += 1
                    count = len(frame.kinds)
                    rows = scheduled_ns[first - sent:first - sent + count]
                    task = loop.create_task(_send_frame(clients[connection], frame, rows, tally, recorder, connection,
                                                        source.index_offset + first, source.answered))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    first += count
            sent_ns = _now_ns() - tally.start_ns
            tally.lag((sent_ns - scheduled_ns.astype(np.int64)) // NS_PER_US)
            tally.sent += end - sent
            sent = end
        if sent < source.total:
            wait_ns = int(source.due_ns(sent, sent + 1)[0]) - (_now_ns() - tally.start_ns)
            await asyncio.sleep(max(wait_ns, TICK_NS) / NS_PER_S)
    if tasks:
        await _drain(tasks, tally, drain_timeout_s)


async def _drain(tasks: set, tally: Tally, timeout_s: float) -> None:
    """Wait for the answers still out; past ``timeout_s`` they are counted as failed."""
    _, late = await asyncio.wait(set(tasks), timeout=timeout_s)
    if late:
        unanswered = tally.in_flight
        for task in late:
            task.cancel()
        await asyncio.wait(late)
        tally.fail(unanswered, TimeoutError(f"no answer within {timeout_s:g} s of the last send"))


async def closed_loop(clients, generator: RequestGenerator, tally: Tally, seconds: float, depth: int,
                      frame_events: int, index_offset: int, recorder=None) -> None:
    """Keep ``depth`` frames of ``frame_events`` in flight on every connection for ``seconds``."""
    stop_ns = int(seconds * NS_PER_S)

    def on_answer(frame, replies, reply_ns):
        if replies is not None:
            generator.answered(frame.indexes, frame.kinds, replies, reply_ns)

    async def lane(connection: int) -> None:
        client = clients[connection]
        while True:
            now_ns = _now_ns() - tally.start_ns
            if now_ns >= stop_ns:
                return
            block = generator.next(frame_events, now_ns)
            sent_ns = np.full(len(block.kinds), now_ns, dtype=np.uint64)
            tally.offer(sent_ns)
            tally.scheduled += len(sent_ns)
            trace_first = index_offset + tally.sent
            tally.sent += len(sent_ns)
            # A block of several operations goes as a frame of each, together.
            sends, offset = [], 0
            for frame in block.frames():
                count = len(frame.kinds)
                sends.append(_send_frame(client, frame, sent_ns[:count], tally, recorder, connection,
                                         trace_first + offset, on_answer))
                offset += count
            await asyncio.gather(*sends)

    await asyncio.gather(*(lane(c) for c in range(len(clients)) for _ in range(depth)))


async def send_in_order(client, operation: int, batches):
    """Send ``batches`` of one operation in order, ``SETUP_DEPTH`` frames in flight (the untimed
    setup of a run or a replay); yields (batch, result codes) in order."""
    batches = list(batches)
    send = sender(client, operation) if batches else None
    for start in range(0, len(batches), SETUP_DEPTH):
        group = batches[start:start + SETUP_DEPTH]
        for batch, replies in zip(group, await asyncio.gather(*(send(batch) for batch in group))):
            yield batch, result_codes(replies)


async def setup(client, population: Population, recorder=None, first_index: int = 0) -> int:
    """Create the population's accounts and top-ups, and (with orders) the merchants' terms (in
    order, ``SETUP_DEPTH`` frames in flight).

    Returns the number of setup requests; raises LoadError naming the result codes if any
    request failed (e.g. ``accounts_limit_reached`` on a server that is too small).
    """
    index = first_index
    for operation, kind, batches in ((Operation.create_accounts, Kind.account, population.account_batches()),
                                     (Operation.create_transfers, Kind.top_up, population.top_up_batches()),
                                     (Operation.set_merchants, Kind.merchant_terms,
                                      population.merchant_terms_batches())):
        async for batch, results in send_in_order(client, operation, batches):
            indexes = np.arange(index, index + len(batch), dtype=np.uint64)
            index += len(batch)
            if recorder is not None:
                recorder.append(operation, indexes, np.zeros(len(batch), dtype=np.uint64), 0,
                                np.full(len(batch), kind, dtype=np.uint8), results, batch)
            if results.any():
                codes = {core.Result(int(c)).name: int(n) for c, n in zip(*np.unique(results, return_counts=True))
                         if c}
                raise LoadError(f"setting up the population failed: {codes}")
    return index - first_index


# --------------------------------------------------------------------------- a run


@dataclass
class _Plan:
    """One worker's share of a run (picklable: it crosses into worker processes)."""
    target: Target
    workload_json: bytes
    options: Options
    run_id: int
    worker: int
    workers: int
    index_offset: int      # trace request numbers of the load come after the setup's
    connections: int
    start_at_s: float      # time.time() at which every worker starts its clock together


async def _load(plan: _Plan, clients, recorder, report_progress) -> dict:
    """The timed part of a run on one worker: returns the worker's raw tally."""
    workload = msgspec.json.decode(plan.workload_json, type=Workload)
    options = plan.options
    generator = RequestGenerator(workload, Population(workload, plan.run_id),
                                 seed=options.seed * 1_000_003 + plan.worker, first_index=plan.worker,
                                 stride=plan.workers)
    delay_s = plan.start_at_s - time.time()
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    tally = Tally(start_ns=_now_ns(), window_ns=int(workload.seconds * NS_PER_S))
    start_unix_s = time.time()  # second 0 of the timeline, to line server events up with it
    late_start_s = max(0.0, -delay_s)   # a worker ready after the common start (the merge assumes aligned seconds)
    progress = asyncio.ensure_future(progress_ticker(tally, report_progress)) if report_progress else None
    try:
        if options.mode == "closed":
            await closed_loop(clients, generator, tally, workload.seconds, options.depth, options.frame_events,
                              plan.index_offset, recorder)
        else:
            share = msgspec.structs.replace(workload, rate=workload.rate.scaled(1.0 / plan.workers))
            await open_loop(clients, GeneratedSource(share, generator, plan.index_offset), tally, recorder,
                            options.drain_timeout_s, BACKLOG_REQUESTS_MAX // plan.workers)
    finally:
        if progress is not None:
            progress.cancel()
            # The last second(s) of the run, not those an interrupted run never reached.
            elapsed_seconds = (_now_ns() - tally.start_ns) // NS_PER_S + 1
            report_seconds(tally, min(int(math.ceil(workload.seconds)), elapsed_seconds), report_progress)
    raw = tally.raw()
    elapsed_ns = _now_ns() - tally.start_ns
    raw["elapsed_s"] = elapsed_ns / NS_PER_S
    raw["code_charges"] = generator.codes_summary(elapsed_ns)
    raw["envelopes"] = generator.envelopes_summary()
    raw["late_start_s"] = late_start_s
    raw["start_unix_s"] = start_unix_s
    return raw


async def progress_ticker(tally: Tally, report_progress) -> None:
    """Once a second: the last whole second's offered and answered requests and its p99."""
    while True:
        await asyncio.sleep(1.0 - ((_now_ns() - tally.start_ns) / NS_PER_S) % 1.0 + 0.01)
        report_seconds(tally, (_now_ns() - tally.start_ns) // NS_PER_S, report_progress)


def report_seconds(tally: Tally, end_second: int, report_progress) -> None:
    """Report the seconds not reported yet, up to ``end_second`` (excluded)."""
    for second in range(tally.progress_reported + 1, end_second):
        if second == tally.current_second:
            tally.record_waiting()
            p99_us = tally.second.value_at(99.0) if tally.second.count else None
        elif second < len(tally.intervals) and tally.intervals[second] is not None:
            p99_us = LatencyHistogram.decode(tally.intervals[second]).value_at(99.0)
        else:
            p99_us = None
        report_progress(second, _at(tally.offered, second), _at(tally.answered, second), p99_us)
        tally.progress_reported = second


def _at(per_second: list, second: int) -> int:
    return per_second[second] if 0 <= second < len(per_second) else 0


async def _single_process(plan: _Plan, report_progress) -> dict:
    """workers == 1: setup, load and recording in this process's event loop."""
    workload = msgspec.json.decode(plan.workload_json, type=Workload)
    clients = await connect(plan.target, plan.connections)
    recorder = None
    try:
        if plan.options.record:
            from loadgen.trace import TraceWriter

            recorder = TraceWriter(plan.options.record, trace_header(workload, plan),
                                   operations=timed_operations(workload))
        plan.index_offset = await setup(clients[0], Population(workload, plan.run_id), recorder)
        plan.start_at_s = time.time()
        raw = await _load(plan, clients, recorder, report_progress)
        raw["setup_requests"] = plan.index_offset
        if recorder is not None:
            raw["trace"] = recorder.close()
            recorder = None
        return raw
    finally:
        if recorder is not None:
            # A failed or interrupted run: what was recorded stays in FILE.partial (readable with
            # allow_truncated), never under the name of a finished trace.
            recorder.abort()
        for client in clients:
            client.close()


async def _setup_only(plan: _Plan) -> int:
    workload = msgspec.json.decode(plan.workload_json, type=Workload)
    clients = await connect(plan.target, 1)
    try:
        return await setup(clients[0], Population(workload, plan.run_id))
    finally:
        clients[0].close()


async def _worker_main(plan: _Plan, report_progress) -> dict:
    clients = await connect(plan.target, plan.connections)
    try:
        return await _load(plan, clients, None, report_progress)
    finally:
        for client in clients:
            client.close()


def _worker_process(plan: _Plan, queue) -> dict:
    """A worker process: its share of the load; progress goes to the parent through ``queue``."""
    def report(second, offered, answered, p99_us):
        queue.put((plan.worker, second, offered, answered, p99_us))

    return loop_runner()(_worker_main(plan, report if queue is not None else None))


def loop_runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run


def trace_header(workload: Workload, plan: _Plan) -> dict:
    return {"format": "tally-load-trace", "workload": msgspec.to_builtins(workload), "mode": plan.options.mode,
            "seed": plan.options.seed, "run_id": plan.run_id, "connections": plan.connections,
            "kinds": {int(kind): kind.name for kind in Kind}, "setup_kinds": [int(k) for k in SETUP_KINDS],
            "command": plan.options.command, "created_at": utc_now()}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ProgressLine:
    """The live line on stderr: the last second's offered and answered rates and p99."""

    def __init__(self, seconds: float, workers: int = 1, stream=None):
        self.seconds = seconds
        self.workers = workers
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._seconds: dict[int, list] = {}

    def __call__(self, second, offered, answered, p99_us) -> None:
        entry = self._seconds.setdefault(second, [0, 0, None, 0])
        entry[0] += offered
        entry[1] += answered
        if p99_us is not None:
            entry[2] = p99_us if entry[2] is None else max(entry[2], p99_us)  # a bound over the workers
        entry[3] += 1
        if entry[3] < self.workers:
            return
        del self._seconds[second]
        p99 = f"{entry[2] / 1000:,.2f} ms" if entry[2] is not None else "-"
        width = 24
        done = min(width, int(width * (second + 1) / max(self.seconds, 1e-9)))
        line = (f"[{'#' * done}{'.' * (width - done)}] {second + 1:>4}/{self.seconds:.3g} s  "
                f"offered {entry[0]:>10,}/s  answered {entry[1]:>10,}/s  p99 {p99:>10}")
        # On a terminal the line is redrawn in place; in a log, one line a second.
        self.stream.write(f"\r{line}   " if self._tty else f"{line}\n")
        self.stream.flush()

    def end(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def run(target: Target, workload: Workload, options: Options) -> dict:
    """Set up the population, run the load, and return the report (``loadgen.report``'s schema)."""
    if options.mode not in ("open", "closed"):
        raise LoadError(f"mode must be 'open' or 'closed', not {options.mode!r}")
    if not 1 <= options.workers <= 64 or not 1 <= options.connections <= engine_constants.CONNECTIONS_MAX:
        raise LoadError("workers must be in 1..64 and connections in 1..1024")
    if not 1 <= options.frame_events <= FRAME_EVENTS_MAX or not 1 <= options.depth <= 64:
        raise LoadError(f"frame_events must be in 1..{FRAME_EVENTS_MAX} and depth in 1..64")
    if options.record and options.workers > 1:
        raise LoadError("--record needs a single worker (a trace is one client's order of requests)")
    if options.connections < options.workers:
        raise LoadError("each worker needs at least one connection")
    run_id = options.run_id or (secrets.randbits(62) | 1)
    workload_json = msgspec.json.encode(workload)
    progress = ProgressLine(workload.seconds, options.workers) if options.progress else None
    started_at = utc_now()
    plans = [_Plan(target, workload_json, options, run_id, worker, options.workers, 0,
                   options.connections // options.workers + (worker < options.connections % options.workers), 0.0)
             for worker in range(options.workers)]
    try:
        if options.workers == 1:
            raws = [loop_runner()(_single_process(plans[0], progress))]
            setup_requests = raws[0]["setup_requests"]
        else:
            raws, setup_requests = _run_workers(plans, progress)
    finally:
        if progress is not None:
            progress.end()
    return build_report(raws, workload, options, run_id=run_id, setup_requests=setup_requests,
                        started_at=started_at, connections=options.connections)


def _run_workers(plans: list[_Plan], progress) -> tuple[list[dict], int]:
    setup_requests = loop_runner()(_setup_only(plans[0]))
    start_at_s = time.time() + 1.0 + 0.25 * len(plans)   # every worker connected and ready by then
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        queue = manager.Queue() if progress else None
        with ProcessPoolExecutor(len(plans), mp_context=context) as pool:
            for plan in plans:
                plan.index_offset, plan.start_at_s = setup_requests, start_at_s
            futures = [pool.submit(_worker_process, plan, queue) for plan in plans]
            while not all(f.done() for f in futures):
                time.sleep(0.05)
                while queue is not None and not queue.empty():
                    _, second, offered, answered, p99_us = queue.get()
                    progress(second, offered, answered, p99_us)
            return [f.result() for f in futures], setup_requests


# --------------------------------------------------------------------------- the report


def merge(raws: list[dict]) -> dict:
    """Merge workers' raw tallies: histograms added (exact), counts summed, per second aligned."""
    total = LatencyHistogram()
    send_lag = LatencyHistogram()
    seconds = max(len(r["intervals"]) for r in raws)
    seconds = max(seconds, *(len(r["offered"]) for r in raws), *(len(r["answered"]) for r in raws))
    intervals = [LatencyHistogram() for _ in range(seconds)]
    offered = np.zeros(seconds, dtype=np.int64)
    answered = np.zeros(seconds, dtype=np.int64)
    codes = np.zeros((KINDS, CODES), dtype=np.int64)
    operations: dict[int, LatencyHistogram] = {}
    merged = {"scheduled": 0, "sent": 0, "answered_count": 0, "answered_in_window": 0, "failed_to_send": 0,
              "errors": {}}
    for raw in raws:
        for operation, encoded in raw.get("operations", {}).items():
            operations.setdefault(operation, LatencyHistogram()).add(LatencyHistogram.decode(encoded))
        total.add(LatencyHistogram.decode(raw["total"]))
        send_lag.add(LatencyHistogram.decode(raw["send_lag"]))
        for second, encoded in enumerate(raw["intervals"]):
            if encoded is not None:
                intervals[second].add(LatencyHistogram.decode(encoded))
        offered[:len(raw["offered"])] += raw["offered"]
        answered[:len(raw["answered"])] += raw["answered"]
        codes += raw["codes"]
        for key in ("scheduled", "sent", "answered_count", "answered_in_window", "failed_to_send"):
            merged[key] += raw[key]
        for error, count in raw["errors"].items():
            merged["errors"][error] = merged["errors"].get(error, 0) + count
    for name in ("code_charges", "envelopes"):   # the workers' summaries, added up
        summaries = [raw[name] for raw in raws if raw.get(name)]
        merged[name] = {key: sum(summary[key] for summary in summaries) for key in summaries[0]} if summaries else None
    merged.update(total=total, send_lag=send_lag, intervals=intervals, offered=offered, answered=answered,
                  codes=codes, operations=operations, elapsed_s=max(r["elapsed_s"] for r in raws),
                  late_start_s=max(r.get("late_start_s", 0.0) for r in raws))
    return merged


def _padded(per_second: np.ndarray, seconds: int) -> list[int]:
    return [int(per_second[s]) if s < len(per_second) else 0 for s in range(seconds)]


def build_report(raws: list[dict], workload: Workload | None, options: Options, *, run_id: int,
                 setup_requests: int, started_at: str, connections: int, mode: str | None = None,
                 target_per_s: float | None = None, duration_s: float | None = None,
                 config_extra: dict | None = None) -> dict:
    """The report (``loadgen.report``'s schema) from the workers' raw tallies."""
    merged = merge(raws)
    mode = mode or options.mode
    if duration_s is None:
        duration_s = workload.seconds if workload is not None else merged["elapsed_s"]
    if target_per_s is None and mode == "open" and workload is not None:
        target_per_s = workload.rate.schedule(workload.seconds).total / workload.seconds
    # Per second: only the run's seconds and those in which late answers still arrived.
    timeline_seconds = max(int(math.ceil(duration_s)), int(np.flatnonzero(merged["answered"]).max(initial=-1)) + 1)
    intervals = merged["intervals"] + [LatencyHistogram()] * max(0, timeline_seconds - len(merged["intervals"]))

    def per_second_value(percentile):
        return [(h.value_at(percentile) if h.count else None) for h in intervals[:timeline_seconds]]

    codes = merged["codes"]
    names = {int(result): result.name for result in core.Result}
    by_code = {names.get(code, str(code)): int(codes[:, code].sum()) for code in np.flatnonzero(codes.sum(0))}
    kinds = {Kind(kind).name: {names.get(code, str(code)): int(codes[kind, code]) for code in np.flatnonzero(codes[kind])}
             for kind in range(KINDS) if codes[kind].any()}
    operations = {}
    for operation in sorted(set(KIND_OPERATIONS[np.flatnonzero(codes.any(1))].tolist()) | set(merged["operations"])):
        per_code = codes[KIND_OPERATIONS == operation].sum(0)
        histogram = merged["operations"].get(operation, LatencyHistogram())
        operations[Operation(operation).name] = {
            "requests": int(per_code.sum()),
            "result_codes": {names.get(code, str(code)): int(per_code[code]) for code in np.flatnonzero(per_code)},
            "latency_us": histogram.summary()}
    config = {"workload": msgspec.to_builtins(workload) if workload is not None else None,
              "connections": connections, "workers": options.workers, "seed": options.seed, "run_id": run_id,
              "setup_requests": setup_requests}
    if mode == "closed":
        config.update(depth=options.depth, frame_events=options.frame_events)
    config.update(config_extra or {})
    notes = ["a request is one event (a transfer, or an order's create, payment, close or refund); requests "
             "travel many to a frame, one operation a frame"]
    if mode != "closed":
        notes.append("latency is measured from each request's scheduled send time to its reply "
                     "(no coordinated omission)")
    else:
        notes.append("closed loop: latency is from send to reply; the rate is what the server sustained")
    if merged["sent"] and mode != "closed":
        notes.append(f"at most {BACKLOG_REQUESTS_MAX:,} requests are unanswered at once; later ones wait to be "
                     "sent, their latency still counted from their scheduled time")
    if merged["late_start_s"] > 0.1:
        notes.append(f"a worker started {merged['late_start_s']:.2f} s after the others: per-second figures "
                     "of the workers are not aligned")
    envelopes = merged["envelopes"]
    if envelopes and envelopes["claims_waiting_at_end"]:
        notes.append(f"{envelopes['claims_waiting_at_end']:,} red envelope claims were still waiting at the run's end "
                     "(their packets answered, their turn not come): those packets are left open")
    codes_summary = merged["code_charges"]
    if codes_summary and codes_summary["still_held_at_end"]:
        notes.append(f"{codes_summary['still_held_at_end']:,} held code charges were still held at the run's end "
                     f"({codes_summary['follow_ups_not_sent']:,} of them before their confirm, decline or revoke "
                     f"was due, the others left to the engine): it voids a hold {HOLD_TIMEOUT_S} s after its "
                     "charge; a run that long sees them end")
    report = {
        "format": "tally-load-report", "version": 1,
        "command": options.command, "started_at": started_at, "mode": mode,
        "started_unix_s": min((r["start_unix_s"] for r in raws if "start_unix_s" in r), default=None),
        "config": config,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "duration_s": duration_s,
        "target_per_s": target_per_s,
        "requests": {"scheduled": merged["scheduled"], "sent": merged["sent"], "answered": merged["answered_count"],
                     "failed_to_send": merged["failed_to_send"]},
        # Answers that arrived within the run's window, over the window (late answers are in the timeline).
        "achieved_per_s": round(merged["answered_in_window"] / duration_s, 1),
        "result_codes": by_code,
        "kinds": kinds,
        "operations": operations,
        **({"codes": codes_summary} if codes_summary else {}),
        **({"envelopes": merged["envelopes"]} if merged["envelopes"] else {}),
        "latency_us": merged["total"].summary(),
        "distribution": merged["total"].spectrum(),
        "timeline": {
            "t_s": list(range(timeline_seconds)),
            "offered_per_s": _padded(merged["offered"], timeline_seconds),
            "answered_per_s": _padded(merged["answered"], timeline_seconds),
            "p50_us": per_second_value(50.0), "p99_us": per_second_value(99.0),
            "p999_us": per_second_value(99.9), "max_us": per_second_value(100.0),
        },
        "send_lag_us": merged["send_lag"].summary(),
        "errors": merged["errors"],
        "notes": notes,
    }
    return report
