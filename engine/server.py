"""The Tally server: frames in, batches through the durable core, replies out.

The way of a request (shared/ARCHITECTURE.md):

* **Connection** (``asyncio.BufferedProtocol``): the socket reads straight into the
  connection's receive buffer; complete frames are checked there, in C (length, magic,
  checksum, MAC: ``engine.wire``), and handed to the server. Nothing is allocated per record.
* **Stages**: the server appends each request to the newest *stage* in arrival order. A create
  request's records are copied into the open create stage of the same operation, so that events
  from every connection form one contiguous batch of at most ``BATCH_EVENTS_MAX`` records (a
  request is never split). Lookups, pings and error replies form *ordered* stages of their own.
* **Batcher** (on the event loop's thread, docs/request-path.md): the first request of a pass
  of the event loop schedules a run (``call_soon``), which happens once every socket that was
  ready has been read: the run applies every stage in order (``Store.stage``; ordered stages
  read the state as applied so far), makes all of their log entries durable in one journal
  write and one sync (``Store.commit_staged``), then sends every reply, in one pass. No timer
  and no thread hand-off: a lone request is applied and synced as soon as it is read, and the
  requests that arrive during a sync form the next run's batch. No reply shows state that is
  not yet durable, and each connection's replies keep request order.
* **Limits** (``engine.constants``): requests and bytes in flight per connection and over all
  connections, and the reply bytes a client leaves unread: past any of them the server stops
  reading from that connection (``pause_reading``) until replies go out. An overloaded server
  slows its clients down; its memory does not grow.
* **Shutdown** (``Server.close``): stop accepting, stop reading, finish, commit and answer every
  request already received, then close the connections.
* **The engine clock** runs while no request comes: a timer on the event loop fires when the
  soonest pending timeout is due and pulses (``Store.pulse``: a logged empty batch that expires
  it), so that holds are released on time with no client traffic, and replay releases them at
  the same engine time.
"""

from __future__ import annotations

import asyncio
import collections
import time
import traceback

import numpy as np

import core
from engine import constants, frame, wire
from engine.metrics import RequestMetrics
from engine.roles import ADMIN, MERCHANT_FIELDS
from core import constants as core_constants
from core import notifications
from core.notifications import NOTIFYING_OPERATIONS
from core import operations
from engine.protocol import (
    CREATE_RECORD_DTYPES, FILTER_DECODER, NOTIFICATIONS_DECODER, PAGE_DECODER, ID_BYTES, LOOKUP_RECORD_DTYPES,
    OPERATIONS, Operation,
)

_NO_BODY = memoryview(b"")
SPARE_BUFFERS_MAX = 4  # full-size batch buffers kept for reuse
#: While a pending timeout is ahead, the server looks at the engine clock at least this often (it
#: waits until the soonest one is due, and never longer than this, whatever the clock).
PULSE_WAIT_MAX_S = 1.0
#: Notifications per frame of a subscription (the reply of a query holds at most this many records).
NOTIFICATIONS_PAGE = core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX
#: Offset of the low byte of ``flags`` in each create operation's record, and the linked bit.
#: (Only the ledger's records link: a product event is atomic by itself.)
_FLAGS_OFFSET = {operation: dtype.fields["flags"][1] for operation, dtype in CREATE_RECORD_DTYPES.items()
                 if operations.CREATE_COMPONENTS[operation] == "ledger"}
_LINKED = int(core.TransferFlags.linked)
if _LINKED != int(core.AccountFlags.linked) or _LINKED > 0xFF:
    raise ImportError("the linked flag must be the same low bit in accounts and transfers")


class Connection(asyncio.BufferedProtocol):
    """One client connection: frames are read into its buffer, checked and handed to the server."""

    def __init__(self, server: "Server"):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray(constants.RECEIVE_BUFFER_BYTES_MIN)
        self._view = memoryview(self._buffer)
        self._start = 0                  # first unread byte in the buffer
        self._end = 0                    # end of the bytes received
        self.in_flight_requests = 0      # received and not yet answered
        self.in_flight_bytes = 0
        self.finished = False            # a closing error was seen, or the server is shutting down
        self._writing_paused = False
        self._reading_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._draining = False           # EOF sent after the last reply: input is dropped
        self._peer_eof = False
        self._handling = False           # inside _handle_frames (it is not re-entered)

    # -- asyncio callbacks

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=constants.WRITE_BUFFER_BYTES_HIGH)
        self.server.connection_opened(self)

    def connection_lost(self, exc):
        self.transport = None
        for timer in (self._stall_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self.server.connection_closed(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._end == len(self._buffer):  # only a partial frame is left, at the end: move it
            self._make_room(len(self._buffer) + (constants.RECEIVE_BUFFER_BYTES_MIN if self._start == 0 else 0))
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._draining:  # closing: what the client still sends is dropped unread
            return
        self._end += nbytes
        self._handle_frames()
        self.update_reading()  # also when no frame was taken: a limit may hold them back

    def eof_received(self):
        self._peer_eof = True
        if self._draining or self.in_flight_requests == 0:
            return False  # nothing more to send: close (after what is queued)
        self.finished = True  # no more requests; the replies still go out, then close_gently
        return True

    def _handle_frames(self) -> None:
        """Check and hand over the complete frames received, while the limits allow."""
        if self._handling:  # re-entered from update_reading: the loop below goes on
            return
        self._handling = True
        try:
            self._handle_frames_now()
        finally:
            self._handling = False

    def _handle_frames_now(self) -> None:
        check_at = self.server.checker.check_at  # compiled (engine.wire): one call per frame
        while not self.finished and not self._over_limits():
            status, total, operation, event_count, request_id, client_id, header_status = check_at(
                self._buffer, self._start, self._end)
            if status == wire.INCOMPLETE:
                if self._start + total > len(self._buffer):
                    self._make_room(total)
                break
            if total == 0:  # too_large / too_small: the stream cannot be framed any further
                self._accept(frame.FrameError(frame.Status(status), 0), 0)
                break
            if status == frame.Status.ok:
                item = frame.Frame(operation, request_id, client_id, event_count, header_status,
                                   self._view[self._start + frame.HEADER.size:self._start + total])
            else:
                item = frame.FrameError(frame.Status(status), request_id)
            self._start += total
            self._accept(item, total)
        # Frames past a limit stay in the buffer (reading is paused meanwhile): they are
        # handled when replies bring the counts down (update_reading).
        if self._start == self._end:
            self._start = self._end = 0
        if self.finished:
            self._start = self._end = 0  # what follows a closing error is never read

    def pause_writing(self):
        # The client does not read its replies: stop taking its requests, and give up on it if
        # it stays that way.
        self._writing_paused = True
        self.update_reading()
        self._stall_timer = asyncio.get_running_loop().call_later(constants.WRITE_STALL_TIMEOUT_S, self._stalled)

    def resume_writing(self):
        self._writing_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self.update_reading()
        self.server.connection_writable(self)

    # -- the server's side

    def _accept(self, item, frame_bytes: int) -> None:
        if isinstance(item, frame.FrameError) and item.status.closes_connection:
            self.finished = True
        # A request's budget is the larger of its frame and its largest possible reply, so that
        # the replies a slow reader leaves queued stay within the limits too.
        nbytes = max(frame_bytes, _reply_bytes_max(item))
        self.in_flight_requests += 1
        self.in_flight_bytes += nbytes
        self.server.accept(self, item, nbytes)
        self.update_reading()

    def _over_limits(self) -> bool:
        return (self.in_flight_requests >= constants.IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX
                or self.in_flight_bytes >= constants.IN_FLIGHT_BYTES_PER_CONNECTION_MAX
                or self.server.in_flight_bytes >= constants.IN_FLIGHT_BYTES_MAX)

    def answered(self, nbytes: int, requests: int = 1) -> None:
        self.in_flight_requests -= requests
        self.in_flight_bytes -= nbytes
        if self.finished and self.in_flight_requests == 0:
            self.close_gently()

    def finish(self) -> None:
        """Take no more requests; close once those taken in are answered (at once if none)."""
        self.finished = True
        self.update_reading()
        if self.in_flight_requests == 0:
            self.close_gently()

    def close_gently(self) -> None:
        """Close after the last reply without losing it.

        A plain close() with the client's later requests still unread in the socket makes
        the kernel send a reset, and the client may lose replies already on their way. So:
        send EOF after the replies, read and drop whatever the client still sends, and close
        when it does (or after ``CLOSE_LINGER_S``).
        """
        transport = self.transport
        if transport is None or self._draining:
            return
        if self._peer_eof or not transport.can_write_eof():  # nothing unread / TLS: no half-close
            transport.close()
            return
        self._draining = True
        transport.write_eof()
        self._start = self._end = 0
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
            self.server.paused.discard(self)
        self._linger_timer = asyncio.get_running_loop().call_later(constants.CLOSE_LINGER_S, transport.close)

    def reply(self, operation: int, request_id: int, client_id: int, body=_NO_BODY, event_count: int = 0,
              status: int = frame.Status.ok) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the client left; what it sent was still applied and is durable
        secret = self.server.secrets.get(client_id, b"")
        header = frame.encode_header(operation, request_id, body, client_id=client_id, secret=secret,
                                     event_count=event_count, status=status)
        # One writev for header and body (two writes would cost two system calls per reply).
        self.transport.writelines((header, body)) if len(body) else self.transport.write(header)

    def reply_frames(self, frames: bytearray) -> None:
        """Sealed reply frames built together (``engine.wire.ReplySealer``): one write."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frames)

    def update_reading(self) -> None:
        """Pause or resume reading according to the limits."""
        if self.transport is None or self._draining:
            return
        server = self.server
        pause = self.finished or self._writing_paused or self._over_limits()
        if not pause and self._end - self._start >= frame.LENGTH_PREFIX_BYTES:
            self._handle_frames()  # frames held back at a limit: their turn now
            if self.transport is None:
                return
            pause = self.finished or self._over_limits()
        if pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
            server.paused.add(self)
        elif not pause and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
            server.paused.discard(self)

    def _make_room(self, frame_bytes: int) -> None:
        # Move the partial frame to the front, into a bigger buffer if the frame needs one.
        pending = bytes(self._view[self._start:self._end])
        size = max(len(self._buffer), frame_bytes)
        if size > len(self._buffer):
            self._buffer = bytearray(size)
            self._view = memoryview(self._buffer)
        self._view[:len(pending)] = pending
        self._start, self._end = 0, len(pending)

    def _stalled(self) -> None:
        if self._writing_paused and self.transport is not None:
            self.transport.abort()


def _reply_bytes_max(item) -> int:
    """The largest reply a checked request can get (error frames and create results are small)."""
    if isinstance(item, frame.FrameError):
        return frame.HEADER.size
    spec = operations.OPERATIONS[item.operation]
    if spec.kind is operations.Kind.create:
        return frame.HEADER.size + item.event_count * spec.reply_dtype.itemsize
    if spec.kind is operations.Kind.lookup:
        return frame.HEADER.size + len(item.body) // ID_BYTES * spec.reply_dtype.itemsize
    if spec.kind is operations.Kind.query:
        return frame.HEADER.size + core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX * spec.reply_dtype.itemsize
    return frame.HEADER.size  # control (ping): its event_count means nothing and books nothing


def _pages(parts: list[np.ndarray]):
    """Frame bodies of at most ``NOTIFICATIONS_PAGE`` records from these arrays, in order: a
    larger one is cut (views), neighbours that fit in one frame are joined (the only copy)."""
    pending, size = [], 0
    for part in parts:
        for first in range(0, part.shape[0], NOTIFICATIONS_PAGE):
            piece = part[first:first + NOTIFICATIONS_PAGE]
            if pending and size + piece.shape[0] > NOTIFICATIONS_PAGE:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, size = [], 0
            pending.append(piece)
            size += piece.shape[0]
    if pending:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


class _Stage:
    """Requests run together: a create batch (records of one operation), or ordered requests."""

    __slots__ = ("operation", "buffer", "view", "events", "nbytes", "requests", "sealed", "arrivals_ns",
                 "taken_ns", "applied_ns", "committed_ns")

    def __init__(self, operation: int | None, buffer: bytearray | None = None):
        self.operation = operation  # None for an ordered stage
        self.buffer = buffer if buffer is not None else bytearray()
        self.view = memoryview(self.buffer)
        self.events = 0
        self.nbytes = 0
        self.sealed = False  # no other request may follow (the last one left a linked chain open)
        # (connection, operation, request_id, client_id, first_event, event_count, frame_bytes, payload)
        self.requests: list = []
        # For engine.metrics (time.perf_counter_ns): each request's arrival; when the batcher
        # took the stage, finished applying it and saw the commit its replies wait for.
        self.arrivals_ns: list[int] = []
        self.taken_ns = self.applied_ns = self.committed_ns = 0

    def room_for(self, operation: int, events: int) -> bool:
        return (not self.sealed and operation == self.operation
                and self.events + events <= constants.EVENTS_PER_REQUEST_MAX)

    def add_records(self, body: memoryview) -> None:
        end = self.nbytes + len(body)
        if end > len(self.buffer):
            # Grow by doubling: a stage's memory stays within twice the bytes it holds.
            grown = bytearray(min(max(2 * len(self.buffer), end), constants.FRAME_BODY_BYTES_MAX))
            grown[:self.nbytes] = self.view[:self.nbytes]
            self.buffer, self.view = grown, memoryview(grown)
        self.view[self.nbytes:end] = body
        self.nbytes = end

    def records(self) -> np.ndarray:
        return np.frombuffer(self.buffer, dtype=CREATE_RECORD_DTYPES[self.operation], count=self.events)


class _Subscription:
    """A ``subscribe_notifications`` request that stays open: its connection gets a frame of its
    next notifications (those after ``cursor``) whenever a run has committed some."""

    __slots__ = ("connection", "request_id", "client_id", "cursor", "merchants", "live")

    def __init__(self, connection, request_id: int, client_id: int, cursor: tuple[int, int], merchants):
        self.connection = connection
        self.request_id, self.client_id = request_id, client_id
        self.cursor = cursor
        self.merchants = merchants
        # Caught up with the log: its next notifications come from the batches the server
        # commits (no read of the log); until then, and after a pause, a page of the log per pass.
        self.live = False


class Server:
    """Serves a ``core.Store`` to authenticated clients (``secrets``: client id -> secret bytes),
    each in its role (``roles``: client id -> ``engine.roles.Role``; admin when not given).

    >>> server = Server(core.open("data"), {1: b"secret of service 1"})
    >>> port = await server.start("127.0.0.1", 7420)
    >>> ...
    >>> await server.close()      # answers everything received, then closes
    """

    def __init__(self, store: core.Store, secrets: dict[int, bytes], roles: dict | None = None):
        self.store = store
        self.secrets = secrets
        self.roles = roles or {}
        self._subscriptions: list[_Subscription] = []
        self.checker = frame.Checker(secrets, set(OPERATIONS), set(CREATE_RECORD_DTYPES))
        self._sealer = wire.ReplySealer(secrets)
        self.connections: set[Connection] = set()
        self.paused: set[Connection] = set()
        self.in_flight_bytes = 0
        # Everything below is the event loop's: stages are appended (and the newest filled) as
        # frames are read, and taken by ``_run_stages``.
        self._stages: collections.deque[_Stage] = collections.deque()
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run_scheduled = False
        self._pulse_timer: asyncio.TimerHandle | None = None
        self._pulse_for_ns = 0   # the expiry the pulse timer is armed for
        self._closing = False
        self._failed = False
        self._spare_buffers: list[bytearray] = []
        self.batches = 0  # core batches submitted (for tests and stats)
        self.events = 0   # events in them
        self.metrics = RequestMetrics({int(operation): operation.name for operation in Operation} | {0: "error"})

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, ssl=None) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        loop = self._loop = asyncio.get_running_loop()
        self._arm_pulse()  # a hold recovered from the log may be due
        self._server = await loop.create_server(lambda: Connection(self), host, port, ssl=ssl)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Graceful shutdown: stop accepting and reading, answer all that was received, close."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.finish()
        while self._stages or self._run_scheduled:
            await asyncio.sleep(0.001)
        if self._pulse_timer is not None:
            self._pulse_timer.cancel()
        # Let the connections finish closing gently (each closes within CLOSE_LINGER_S).
        deadline = asyncio.get_running_loop().time() + constants.CLOSE_LINGER_S + 0.5
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # -- connections

    def connection_opened(self, connection: Connection) -> None:
        if self._closing or len(self.connections) >= constants.CONNECTIONS_MAX:
            connection.transport.abort()
            return
        self.connections.add(connection)

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self.paused.discard(connection)
        self._subscriptions = [s for s in self._subscriptions if s.connection is not connection]

    def connection_writable(self, connection: Connection) -> None:
        """A subscriber's connection takes writes again: its notifications may go on."""
        if any(s.connection is connection for s in self._subscriptions):
            self._loop.call_soon(self._push_notifications)

    def accept(self, connection: Connection, item, nbytes: int) -> None:
        """Queue one checked frame (or frame error) from ``connection``."""
        self.in_flight_bytes += nbytes
        self._stage(connection, item, nbytes).arrivals_ns.append(time.perf_counter_ns())
        if not self._run_scheduled:
            # After every ready socket of this pass of the loop is read: they share the run.
            self._run_scheduled = True
            self._loop.call_soon(self._run_stages)

    def _stage(self, connection: Connection, item, nbytes: int) -> _Stage:
        """Append the request to the stage it belongs to; returns that stage."""
        role = None if isinstance(item, frame.FrameError) else self.roles.get(item.client_id, ADMIN)
        if isinstance(item, frame.FrameError):
            stage = self._ordered_stage()
            stage.requests.append((connection, 0, item.request_id, 0, 0, 0, nbytes, item.status))
        elif not role.allows(item.operation):  # refused whole, nothing staged: an authenticated error reply
            stage = self._ordered_stage()
            stage.requests.append((connection, 0, item.request_id, item.client_id, 0, 0, nbytes,
                                   frame.Status.forbidden))
        elif item.operation in CREATE_RECORD_DTYPES and item.event_count:
            stage = self._stages[-1] if self._stages else None
            if stage is None or not stage.room_for(item.operation, item.event_count):
                stage = _Stage(item.operation, self._spare_buffers.pop() if self._spare_buffers else None)
                self._stages.append(stage)
            stage.requests.append((connection, item.operation, item.request_id, item.client_id, stage.events,
                                   item.event_count, nbytes, None))
            first_byte = stage.nbytes
            stage.add_records(item.body)
            if role.bound and item.operation in MERCHANT_FIELDS:
                # Its events that name another merchant are staged as the core's ``forbidden``.
                role.mark_forbidden(item.operation, np.frombuffer(
                    stage.view[first_byte:stage.nbytes], dtype=CREATE_RECORD_DTYPES[item.operation]))
            stage.events += item.event_count
            # A request whose last event is linked leaves its chain open: it must end the batch,
            # where the core fails the chain (linked_event_chain_open), rather than run on into
            # another request's events.
            flags_offset = _FLAGS_OFFSET.get(item.operation)
            if flags_offset is not None and item.body[-128 + flags_offset] & _LINKED:
                stage.sealed = True
        else:
            payload = bytes(item.body)  # ids or a filter: small, and the receive buffer moves on
            stage = self._ordered_stage()
            stage.requests.append((connection, item.operation, item.request_id, item.client_id, 0, 0, nbytes, payload))
        return stage

    def _ordered_stage(self) -> _Stage:
        if not self._stages or self._stages[-1].operation is not None:
            self._stages.append(_Stage(None))
        return self._stages[-1]

    def _answered(self, connection: Connection, nbytes: int, requests: int = 1) -> None:
        self.in_flight_bytes -= nbytes
        connection.answered(nbytes, requests)
        if self.paused and self.in_flight_bytes < constants.IN_FLIGHT_BYTES_MAX:
            for paused in list(self.paused):
                paused.update_reading()

    # -- the batcher

    def _run_stages(self) -> None:
        """Run every stage received (on the event loop, once per pass that read a request).

        Each create stage is applied (``Store.stage``), each ordered stage read against the
        state applied before it; then one journal write and sync make all of them durable
        (``Store.commit_staged``: the loop waits in it, the GIL released, and the requests that
        arrive meanwhile are the next run's), and every reply goes out. A stage that cannot
        wait (the store holds at most ``commit_pipeline_depth`` batches staged) commits those
        before it, inside ``Store.stage``.
        """
        self._run_scheduled = False
        stages, self._stages = self._stages, collections.deque()
        if not stages:
            return
        ran: list[tuple[_Stage, object]] = []  # (stage, results or the ordered stage's replies)
        # (pending, stage, payment legs, last timestamp) of the batches that notify, for the
        # subscribers: their stages keep their records (not recycled) until the push.
        notifying = []
        failure: Exception | None = None
        ledger = self.store.ledger
        try:
            if self._failed:
                raise core.StoreFailedError("the store failed earlier")
            for stage in stages:
                stage.taken_ns = time.perf_counter_ns()
                if stage.operation is None:
                    ran.append((stage, self._run_ordered(stage)))
                else:
                    notifies = bool(self._subscriptions) and stage.operation in NOTIFYING_OPERATIONS
                    first_transfer = ledger.transfer_count if notifies else 0
                    pending = self.store.stage(stage.operation, stage.records())
                    if notifies or (self._subscriptions and pending.expired.shape[0]):
                        # (a batch of any operation may close orders by the clock at its start)
                        legs = self._payment_legs(stage.operation, first_transfer) if notifies else None
                        notifying.append((pending, stage, legs, ledger.last_timestamp))
                    else:
                        self._recycle(stage)
                    self.batches += 1
                    self.events += stage.events
                    ran.append((stage, pending))
                stage.applied_ns = time.perf_counter_ns()
        except Exception as error:  # a bug, or a failed store: the stages after it are not run
            failure = error
        try:
            # What ran before a failure is committed and answered as usual: it was applied.
            self.store.commit_staged()
        except Exception as error:  # the disk: nothing of this run is known to be durable
            failure = failure or error
            ran = []
        committed_ns = time.perf_counter_ns()
        for stage, outcome in ran:
            stage.committed_ns = committed_ns
            if stage.operation is None:
                self._answer_ordered(stage, outcome)
            else:
                self._answer_batch(stage, outcome.result())
        if failure is not None:
            self._fail_server(failure, list(stages)[len(ran):])
            return
        if self._subscriptions and (notifying or not all(s.live for s in self._subscriptions)):
            self._push_notifications([self.store.notifications_of_batch(pending.sequence, stage.operation,
                                                                        stage.records(), pending.result(),
                                                                        last_timestamp, pending.expired, legs)
                                      for pending, stage, legs, last_timestamp in notifying])
        for _, stage, _, _ in notifying:
            self._recycle(stage)
        self._arm_pulse()

    def _payment_legs(self, operation: int, first_transfer: int) -> np.ndarray | None:
        """A batch of payments just applied: its payer -> merchant legs (the ledger's transfers
        from ``first_transfer`` on, still in memory), which name its payments' merchants."""
        if operation != Operation.pay_orders:
            return None
        ledger = self.store.ledger
        try:
            return notifications.payment_legs(ledger.transfers_range(first_transfer, ledger.transfer_count))
        except ValueError:  # (not all in memory: the store looks the orders up instead)
            return None

    def _arm_pulse(self) -> None:
        """Wake when the soonest pending timeout is due (at most ``PULSE_WAIT_MAX_S`` ahead)."""
        next_expiry_ns = 0 if self._failed or self._closing else self.store.next_expiry_ns
        if self._pulse_timer is not None:
            if next_expiry_ns == self._pulse_for_ns:
                return  # armed for it already
            self._pulse_timer.cancel()
            self._pulse_timer = None
        self._pulse_for_ns = next_expiry_ns
        if next_expiry_ns:
            wait_s = min(max(0.0, (next_expiry_ns - self.store.now_ns()) / 1e9), PULSE_WAIT_MAX_S)
            self._pulse_timer = self._loop.call_later(wait_s, self._pulse)

    def _pulse(self) -> None:
        """The engine clock, with no request coming: expire what is due (a logged empty batch)."""
        self._pulse_timer = None
        if self._stages or self._failed:
            return  # the run about to come expires it (and arms the next pulse)
        try:
            pulsed = self.store.pulse()  # applied and committed here, as a run's batches are
        except Exception as error:
            self._fail_server(error, [])
            return
        if pulsed is not None and pulsed.expired is not None and pulsed.expired.shape[0] and self._subscriptions:
            for subscription in self._subscriptions:
                subscription.live = False  # the orders it closed are read from the log, as a catch-up
            self._push_notifications()
        self._arm_pulse()

    def _answer_ordered(self, stage: _Stage, replies: list[tuple]) -> None:
        for request, reply in zip(stage.requests, replies):
            self._send(request, *reply)
        replied_ns = time.perf_counter_ns()
        by_operation: dict[int, list[int]] = {}
        for request, arrival_ns in zip(stage.requests, stage.arrivals_ns):
            by_operation.setdefault(request[1], []).append(arrival_ns)
        for operation, arrivals_ns in by_operation.items():
            self.metrics.record_batch(operation, len(arrivals_ns), arrivals_ns, stage.taken_ns, stage.applied_ns,
                                      stage.committed_ns, replied_ns)

    def _recycle(self, stage: _Stage) -> None:
        # The store has packed the records into its log entry: the buffer can take the next
        # batch. Kept, because fresh memory costs a page fault per 4 KiB (about 0.3 ms a batch).
        if len(stage.buffer) == constants.FRAME_BODY_BYTES_MAX and len(self._spare_buffers) < SPARE_BUFFERS_MAX:
            self._spare_buffers.append(stage.buffer)
        stage.buffer, stage.view = bytearray(), memoryview(b"")

    def _answer_batch(self, stage: _Stage, results: np.ndarray) -> None:
        # Every reply of the batch built and sealed in one C pass, one write per connection.
        replies = self._sealer.batch_replies(stage.requests, results.view(np.uint8), results.dtype.itemsize)
        for connection, (frames, requests, nbytes) in replies.items():
            connection.reply_frames(frames)
            self._answered(connection, nbytes, requests)
        self.metrics.record_batch(stage.operation, len(stage.requests), stage.arrivals_ns, stage.taken_ns,
                                  stage.applied_ns, stage.committed_ns, time.perf_counter_ns())

    def _run_ordered(self, stage: _Stage) -> list[tuple]:
        """(status, body, event_count) for each request of an ordered stage, read as applied."""
        replies = []
        for connection, operation, request_id, client_id, _, _, _, payload in stage.requests:
            if operation == 0:  # a frame error: payload is its status
                replies.append((payload, _NO_BODY, 0))
            elif operation == Operation.ping or operation in CREATE_RECORD_DTYPES:  # a create of no events
                replies.append((frame.Status.ok, _NO_BODY, 0))
            elif operation in LOOKUP_RECORD_DTYPES:
                if len(payload) % ID_BYTES or len(payload) // ID_BYTES > constants.EVENTS_PER_REQUEST_MAX:
                    replies.append((frame.Status.bad_record_size, _NO_BODY, 0))
                    continue
                ids = np.frombuffer(payload, dtype=core.ID_DTYPE)
                # Not waiting for the commits: this reply already goes out after them, in order.
                if operation == Operation.lookup_accounts:
                    found = self.store.ledger.lookup_accounts(ids)
                elif operation == Operation.lookup_orders:
                    found = self.store.lookup_orders(ids, wait_for_commits=False)
                elif operation == Operation.lookup_merchants:
                    found = self.store.lookup_merchants(ids, wait_for_commits=False)
                elif operation == Operation.lookup_refunds:
                    found = self.store.lookup_refunds(ids, wait_for_commits=False)
                elif operation == Operation.lookup_settlements:
                    found = self.store.lookup_settlements(ids, wait_for_commits=False)
                elif operation == Operation.lookup_codes:
                    found = self.store.lookup_codes(ids, wait_for_commits=False)
                elif operation == Operation.lookup_wallet_limits:
                    found = self.store.lookup_wallet_limits(ids, wait_for_commits=False)
                else:
                    found = self.store.lookup_transfers(ids, wait_for_commits=False)  # hot, then cold
                if operation in MERCHANT_FIELDS:  # a merchant gateway sees its merchants' only
                    found = np.ascontiguousarray(self.roles.get(client_id, ADMIN).visible(operation, found))
                replies.append((frame.Status.ok, memoryview(found).cast("B"), len(found)))
            elif operation == Operation.list_merchants:
                replies.append(self._merchants_page(payload))
            elif operation == Operation.subscribe_notifications:
                replies.append(self._subscribe(connection, request_id, client_id, payload))
            else:  # get_account_transfers
                replies.append(self._account_transfers(payload))
        return replies

    def _subscribe(self, connection, request_id: int, client_id: int, payload: bytes) -> tuple:
        """Answer with the first page of notifications after the request's cursor (those
        committed by now) and keep the request open: later pages follow as they commit."""
        subscription = None

        def first_page(request):
            nonlocal subscription
            merchants = self.roles.get(client_id, ADMIN).merchants_wanted(request.merchant_ids())
            subscription = _Subscription(connection, request_id, client_id, (request.sequence, request.index),
                                         merchants)
            notes = self._next_notifications(subscription)
            subscription.live = notes.shape[0] < NOTIFICATIONS_PAGE  # (the log read took every commit so far)
            return notes

        reply = self._query(NOTIFICATIONS_DECODER, payload, first_page)
        if subscription is not None:
            self._subscriptions.append(subscription)
        return reply

    def _next_notifications(self, subscription: _Subscription) -> np.ndarray:
        """A subscriber's next page, its cursor moved past it."""
        notes = self.store.notifications(subscription.cursor, merchants=subscription.merchants,
                                         limit=NOTIFICATIONS_PAGE)
        if notes.shape[0]:
            subscription.cursor = (int(notes["sequence"][-1]), int(notes["index"][-1]))
        return notes

    def _push_notifications(self, committed: list[np.ndarray] = ()) -> None:
        """Send each subscriber whose connection takes writes its next notifications: a live one
        those of the batches just ``committed`` (in memory, built once for all subscribers), one
        catching up a page of the log (a full page: another pass soon, so that a catch-up does
        not hold the loop). Frames of up to ``NOTIFICATIONS_PAGE`` records: a full batch's
        notifications are sent as they are, smaller ones joined."""
        more = False
        for subscription in list(self._subscriptions):
            connection = subscription.connection
            if connection.transport is None or connection._writing_paused:
                subscription.live = False  # what it misses meanwhile is read from the log later
                continue
            if subscription.live:
                if not committed:
                    continue
                parts = []
                for notes in committed:
                    notes = notifications.of_merchants(notes, subscription.merchants)
                    if notes.shape[0] and (int(notes["sequence"][0]), int(notes["index"][0])) <= subscription.cursor:
                        notes = notifications.after(notes, *subscription.cursor)  # (else all are after it)
                    if notes.shape[0]:
                        parts.append(notes)
                        subscription.cursor = (int(notes["sequence"][-1]), int(notes["index"][-1]))
            else:  # the log, from its cursor (this run's batches included: they are committed)
                notes = self._next_notifications(subscription)
                subscription.live = notes.shape[0] < NOTIFICATIONS_PAGE
                more = more or not subscription.live
                parts = [notes]
            for page in _pages(parts):
                connection.reply(Operation.subscribe_notifications, subscription.request_id,
                                 subscription.client_id, memoryview(page).cast("B"), page.shape[0])
        if more:
            self._loop.call_soon(self._push_notifications)

    def _merchants_page(self, payload: bytes) -> tuple:
        return self._query(PAGE_DECODER, payload, lambda page: self.store.list_merchants(
            page.offset, page.limit, wait_for_commits=False))

    def _account_transfers(self, payload: bytes) -> tuple:
        return self._query(FILTER_DECODER, payload, lambda query: self.store.get_account_transfers(
            query.account, timestamp_min=query.timestamp_min, timestamp_max=query.timestamp_max,
            limit=query.limit, debits=query.debits, credits=query.credits, reverse=query.reverse,
            wait_for_commits=False))

    @staticmethod
    def _query(decoder, payload: bytes, read) -> tuple:
        """A query's reply: its msgpack body decoded and checked (else ``bad_body``), then read."""
        try:
            query = decoder.decode(payload)
        except Exception:  # msgspec.DecodeError / ValidationError: the body is not the query's
            return frame.Status.bad_body, _NO_BODY, 0
        if query.check() is not None:
            return frame.Status.bad_body, _NO_BODY, 0
        found = read(query)
        return frame.Status.ok, memoryview(found).cast("B"), len(found)

    def _send(self, request: tuple, status: int, body, event_count: int) -> None:
        connection, operation, request_id, client_id, _, _, nbytes, _ = request
        connection.reply(operation, request_id, client_id, body, event_count, status)
        self._answered(connection, nbytes)

    def _fail_server(self, error: Exception, stages) -> None:
        """Something failed on the request path (the disk, or a bug): fail safe. The stages
        not answered get ``unavailable``; the server takes no more requests."""
        if not isinstance(error, core.StoreError):
            traceback.print_exception(error)
        for stage in stages or [_Stage(None)]:  # (no stage: still stop accepting, finish the connections)
            self._fail(stage)

    def _fail(self, stage: _Stage) -> None:
        """The store failed (a commit did): nothing more can be acknowledged. Say so and close."""
        self._failed = True
        if self._server is not None:
            self._server.close()  # stop accepting: this process must be restarted
        for request in stage.requests:
            request[0].finished = True
            self._send(request, frame.Status.unavailable, _NO_BODY, 0)
        for connection in list(self.connections):
            connection.finish()
