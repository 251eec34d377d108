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
