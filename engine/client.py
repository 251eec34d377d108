"""The asyncio client library, first cut: one connection, requests matched to replies by id.

>>> client = await Client.connect("127.0.0.1", port, client_id=1, secret=b"...")
>>> results = await client.create_transfers(batch)      # uint32 Result codes, after the commit

Still to come (issue 3): automatic batching of concurrent single calls into one frame,
reconnect-and-retry with the same ids, a blocking wrapper, typed results.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np

import core
from engine import frame
from engine.server import (
    OPERATION_LOOKUP_ACCOUNTS, OPERATION_LOOKUP_TRANSFERS, OPERATION_PING, OPERATIONS,
)
from core.store import OPERATION_CREATE_ACCOUNTS, OPERATION_CREATE_TRANSFERS


class ServerError(Exception):
    """The server rejected a frame (``status`` is an ``engine.frame.Status``)."""

    def __init__(self, status: int):
        super().__init__(f"server rejected the request: {frame.Status(status).name}")
        self.status = frame.Status(status)


class _ReplyReader(asyncio.Protocol):
    def __init__(self, client: "Client"):
        self.client = client

    def data_received(self, data):
        for item in self.client._decoder.feed(data):
            self.client._deliver(item)

    def connection_lost(self, exc):
        self.client._fail_all(ConnectionError("connection to the Tally server lost"))


class Client:
    def __init__(self, client_id: int, secret: bytes):
        self.client_id = client_id
        self.secret = secret
        # Replies are signed with this client's secret; error frames for unreadable headers with
        # client id 0 and an empty secret.
        self._decoder = frame.Decoder({client_id: secret, 0: b""}, OPERATIONS | {0}, set())
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def connect(cls, host: str, port: int, *, client_id: int, secret: bytes) -> "Client":
        client = cls(client_id, secret)
        client._transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: _ReplyReader(client), host, port)
        return client

    async def request(self, operation: int, body: bytes | memoryview = b"", event_count: int = 0) -> frame.Frame:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._transport.write(frame.encode(operation, request_id, body, client_id=self.client_id,
                                           secret=self.secret, event_count=event_count))
        reply = await future
        if reply.status != frame.Status.ok:
            raise ServerError(reply.status)
        return reply

    async def create_accounts(self, batch: np.ndarray) -> np.ndarray:
        reply = await self.request(OPERATION_CREATE_ACCOUNTS, _bytes(batch, core.ACCOUNT_DTYPE), len(batch))
        return np.frombuffer(reply.body, dtype=np.uint32).copy()

    async def create_transfers(self, batch: np.ndarray) -> np.ndarray:
        reply = await self.request(OPERATION_CREATE_TRANSFERS, _bytes(batch, core.TRANSFER_DTYPE), len(batch))
        return np.frombuffer(reply.body, dtype=np.uint32).copy()

    async def lookup_accounts(self, ids) -> np.ndarray:
        reply = await self.request(OPERATION_LOOKUP_ACCOUNTS, core.ids_array(ids).tobytes())
        return np.frombuffer(reply.body, dtype=core.ACCOUNT_DTYPE).copy()

    async def lookup_transfers(self, ids) -> np.ndarray:
        reply = await self.request(OPERATION_LOOKUP_TRANSFERS, core.ids_array(ids).tobytes())
        return np.frombuffer(reply.body, dtype=core.TRANSFER_DTYPE).copy()

    async def ping(self) -> None:
        await self.request(OPERATION_PING)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _deliver(self, item) -> None:
        if isinstance(item, frame.FrameError):
            self._fail_all(ServerError(item.status))
            return
        future = self._waiting.pop(item.request_id, None)
        if future is not None and not future.done():
            future.set_result(item)
        elif item.request_id == 0 and item.status != frame.Status.ok:
            self._fail_all(ServerError(item.status))  # the server could not read our frame

    def _fail_all(self, error: Exception) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()


def _bytes(batch: np.ndarray, dtype) -> memoryview:
    if batch.dtype != dtype:
        raise TypeError(f"batch dtype must be {dtype}")
    return memoryview(np.ascontiguousarray(batch)).cast("B")
