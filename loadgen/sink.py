"""A sink server: answers every create request "ok" at once, applying nothing.

It measures the load generator itself (``tally bench loadgen``): with a server that costs
almost nothing, the requests per second the load generator offers is its own ceiling. It
speaks the wire protocol (docs/protocol.md) far enough for ``engine.client``: it reads frame
headers, does not check their MACs (that is the real server's work, and not what is measured),
and answers each create with one ``ok`` reply per event (all zeros: an order's token too),
signed with the client's secret so that the client accepts it. Not a server to run anything
else against.
"""

from __future__ import annotations

import asyncio

from engine import constants, frame
from engine.protocol import CREATE_REPLY_DTYPES

#: Reply bytes per event of each create (a u32 code; create_orders' 16-byte record).
_REPLY_BYTES = {int(operation): dtype.itemsize for operation, dtype in CREATE_REPLY_DTYPES.items()}
_OK_REPLIES = bytes(max(_REPLY_BYTES.values()) * constants.EVENTS_PER_REQUEST_MAX)   # every body is a prefix: zeros


class _Sink(asyncio.Protocol):
    def __init__(self, secret: bytes):
        self.secret = secret
        self.buffer = bytearray()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        offset = 0
        replies = []
        while len(buffer) - offset >= frame.HEADER.size:
            fields = frame.HEADER.unpack_from(buffer, offset)
            total = fields[0] + frame.LENGTH_PREFIX_BYTES
            if len(buffer) - offset < total:
                break
            _, _, _, operation, event_count, request_id, client_id, *_ = fields
            body = memoryview(_OK_REPLIES)[:_REPLY_BYTES.get(operation, 0) * event_count]
            replies.append(frame.encode_header(operation, request_id, body, client_id=client_id,
                                               secret=self.secret, event_count=event_count))
            if len(body):
                replies.append(body)
            offset += total
        del buffer[:offset]
        if replies:
            self.transport.writelines(replies)


async def serve(secret: bytes, ready) -> None:
    """Listen on a free loopback port, report it through ``ready(port)``, serve forever."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Sink(secret), "127.0.0.1", 0)
    ready(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def run_process(secret: bytes, port_queue) -> None:
    """Entry point of a sink process (``multiprocessing``): the port goes into ``port_queue``."""
    import uvloop

    uvloop.run(serve(secret, port_queue.put))
