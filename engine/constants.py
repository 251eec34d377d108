"""Every bound of the engine side, in one place; relationships checked at import.

The core's bounds live in ``core/constants.py``; the ones that must agree are derived from it.
"""

from core import constants as core_constants

#: Fixed frame header (docs/protocol.md).
FRAME_HEADER_BYTES = 64

#: The largest body: a full batch of 128-byte records.
FRAME_BODY_BYTES_MAX = core_constants.BATCH_EVENTS_MAX * core_constants.RECORD_SIZE_BYTES

#: The largest frame on the wire, header included.
FRAME_BYTES_MAX = FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX

#: Events in one request (the core's batch bound).
EVENTS_PER_REQUEST_MAX = core_constants.BATCH_EVENTS_MAX

#: Bytes of HMAC-SHA256 carried in each frame.
MAC_BYTES = 16


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ImportError(f"engine/constants.py is inconsistent: {what}")


_check(FRAME_BYTES_MAX < 1 << 31, "frames must stay far below 2 GiB")
_check(FRAME_BODY_BYTES_MAX >= EVENTS_PER_REQUEST_MAX * core_constants.RECORD_SIZE_BYTES,
       "a full request must fit one frame")

# ---------------------------------------------------------------- server limits (docs/protocol.md)

#: Connections served at once; one more is closed as soon as it is accepted.
CONNECTIONS_MAX = 1024

#: Requests a connection may have received and not yet been answered; at the limit the server
#: stops reading from it (``pause_reading``) until replies go out.
IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX = 256

#: Request bytes a connection may have in flight (a few full frames, so that a client can keep
#: the pipeline full); the same treatment.
IN_FLIGHT_BYTES_PER_CONNECTION_MAX = 4 * FRAME_BYTES_MAX

#: Request bytes in flight over all connections: past it, every connection that sends more is
#: paused until the backlog is answered. With the per-connection receive buffers (at most one
#: frame plus ``RECEIVE_BUFFER_BYTES_MIN`` each) this bounds the server's memory.
IN_FLIGHT_BYTES_MAX = 64 * FRAME_BYTES_MAX

#: A connection's receive buffer starts this small and grows to the largest frame it was sent.
RECEIVE_BUFFER_BYTES_MIN = 64 * 1024

#: Reply bytes queued for a client that is not reading before the server stops reading from it.
WRITE_BUFFER_BYTES_HIGH = 2 * FRAME_BYTES_MAX

#: A client that reads none of its replies for this long is disconnected.
WRITE_STALL_TIMEOUT_S = 30.0

#: After its last reply to a closing connection, the server waits this long for the client to
#: close its side (reading and dropping what it still sends) before closing anyway.
CLOSE_LINGER_S = 1.0

_check(IN_FLIGHT_BYTES_PER_CONNECTION_MAX >= FRAME_BYTES_MAX, "a connection must be able to send a full frame")
_check(IN_FLIGHT_BYTES_MAX >= IN_FLIGHT_BYTES_PER_CONNECTION_MAX, "the global limit must admit one connection's")
