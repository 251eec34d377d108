"""The Tally server, first cut: frames in, batches through the durable core, replies out.

Requests from every connection go through one queue, in arrival order. The batcher packs
consecutive create requests of the same operation from any number of connections into one core
batch (at most BATCH_EVENTS_MAX events, never splitting a request), applies it, waits for its
commit without blocking the event loop, and only then answers each request with its slice of
the results. Lookups and pings wait their turn in the same queue, so every reply on a connection
comes in request order and a lookup sees everything acknowledged before it.

Still to come (issue 3): pipelining the next batch while one commits, per-connection and global
in-flight limits with pause_reading, graceful shutdown on signals, TLS, the config file.
"""

from __future__ import annotations

import asyncio
import collections

import numpy as np

import core
from core.store import RECORD_DTYPES
from engine import constants, frame

OPERATION_LOOKUP_ACCOUNTS = 3
OPERATION_LOOKUP_TRANSFERS = 4
OPERATION_PING = 1000

CREATE_OPERATIONS = RECORD_DTYPES  # the logged operations are exactly the create operations
OPERATIONS = set(CREATE_OPERATIONS) | {OPERATION_LOOKUP_ACCOUNTS, OPERATION_LOOKUP_TRANSFERS, OPERATION_PING}
ID_BYTES = 16


class Connection(asyncio.Protocol):
    """One client connection: decodes frames, queues them, writes replies."""

    def __init__(self, server: "Server"):
        self.server = server
        self.decoder = frame.Decoder(server.secrets, OPERATIONS, set(CREATE_OPERATIONS))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        for item in self.decoder.feed(data):
            if isinstance(item, frame.FrameError):
                self.server.queue_error(self, item)
            else:
                self.server.queue_request(self, item)

    def reply(self, request: frame.Frame, body: bytes | memoryview = b"", event_count: int = 0,
              status: int = frame.Status.ok, close: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the client left; what it sent was still applied and is durable
        secret = self.server.secrets.get(request.client_id, b"")
        self.transport.write(frame.encode(request.operation, request.request_id, body, client_id=request.client_id,
                                          secret=secret, event_count=event_count, status=status))
        if close:
            self.transport.close()


class Server:
    """Serves a ``core.Store`` to authenticated clients (``secrets``: client id -> secret)."""

    def __init__(self, store: core.Store, secrets: dict[int, bytes]):
        self.store = store
        self.secrets = secrets
        self._queue: collections.deque = collections.deque()
        self._work = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._batcher: asyncio.Task | None = None
        self.batches = 0  # core batches applied (for tests and stats)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the port."""
        loop = asyncio.get_running_loop()
        self._batcher = loop.create_task(self._run())
        self._server = await loop.create_server(lambda: Connection(self), host, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        while self._queue:  # finish what was accepted
            await asyncio.sleep(0.001)
        if self._batcher is not None:
            self._batcher.cancel()

    def queue_request(self, connection: Connection, request: frame.Frame) -> None:
        self._queue.append((connection, request, None))
        self._work.set()

    def queue_error(self, connection: Connection, error: frame.FrameError) -> None:
        self._queue.append((connection, None, error))
        self._work.set()

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while self._queue:
                connection, request, error = self._queue[0]
                if error is not None:
                    self._queue.popleft()
                    _answer_error(connection, error)
                elif request.operation in CREATE_OPERATIONS:
                    await self._apply_creates(request.operation)
                else:
                    self._queue.popleft()
                    self._answer_read(connection, request)

    async def _apply_creates(self, operation: int) -> None:
        """One core batch from the consecutive create requests of ``operation`` at the queue's head."""
        taken, events = [], 0
        while self._queue:
            connection, request, error = self._queue[0]
            if error is not None or request.operation != operation:
                break
            if events + request.event_count > constants.EVENTS_PER_REQUEST_MAX:
                break
            taken.append(self._queue.popleft())
            events += request.event_count
        records = np.frombuffer(b"".join(request.body for _, request, _ in taken), dtype=CREATE_OPERATIONS[operation])
        pending = self.store.submit(operation, records)
        self.batches += 1
        await asyncio.get_running_loop().run_in_executor(None, pending.wait)
        results = pending.result()
        start = 0
        for connection, request, _ in taken:
            part = results[start:start + request.event_count]
            start += request.event_count
            connection.reply(request, part.tobytes(), event_count=request.event_count)

    def _answer_read(self, connection: Connection, request: frame.Frame) -> None:
        if request.operation == OPERATION_PING:
            connection.reply(request)
            return
        if len(request.body) % ID_BYTES or len(request.body) // ID_BYTES > constants.EVENTS_PER_REQUEST_MAX:
            connection.reply(request, status=frame.Status.bad_record_size)
            return
        ids = np.frombuffer(request.body, dtype=core.ID_DTYPE)
        lookup = self.store.lookup_accounts if request.operation == OPERATION_LOOKUP_ACCOUNTS else self.store.lookup_transfers
        found = lookup(ids)
        connection.reply(request, found.tobytes(), event_count=len(found))


def _answer_error(connection: Connection, error: frame.FrameError) -> None:
    request = frame.Frame(0, error.request_id, 0, 0, 0, memoryview(b""))
    connection.reply(request, status=error.status, close=error.status.closes_connection)
