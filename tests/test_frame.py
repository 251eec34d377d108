"""Framing of the wire protocol: round trips, every documented rejection, and fuzzing."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from engine import constants
from engine.frame import HEADER, MAGIC, Decoder, Frame, FrameError, Status, encode

SECRETS = {1: b"first-secret", 2: b"second-secret"}
OPERATIONS = {1, 2, 3, 4, 5, 1000}
RECORDS = {1, 2}


def decoder():
    return Decoder(SECRETS, OPERATIONS, RECORDS)


def transfers_frame(request_id=9, events=3, client_id=1, secret=SECRETS[1]):
    return encode(2, request_id, bytes(range(256)) * (events // 2) + bytes(128 * (events % 2)),
                  client_id=client_id, secret=secret, event_count=events)


def test_round_trip_in_any_split():
    frames = transfers_frame(1) + encode(1000, 2, client_id=2, secret=SECRETS[2]) + transfers_frame(3)
    for cut in (1, 3, 5, 64, 100, len(frames) - 1):
        d = decoder()
        got = d.feed(frames[:cut]) + d.feed(frames[cut:])
        assert [(f.operation, f.request_id) for f in got] == [(2, 1), (1000, 2), (2, 3)]
        assert all(isinstance(f, Frame) for f in got)
        assert got[0].event_count == 3 and len(got[0].body) == 3 * 128


def _resealed(frame: bytes, **changes) -> bytes:
    """The same body re-sent with header fields changed, checksum and MAC valid (a well-formed lie)."""
    fields = {"operation": 2, "request_id": 9, "client_id": 1, "event_count": 3} | changes
    return encode(fields["operation"], fields["request_id"], frame[HEADER.size:], client_id=fields["client_id"],
                  secret=SECRETS.get(fields["client_id"], b"unknown"), event_count=fields["event_count"])


@pytest.mark.parametrize("mutate,status", [
    (lambda f: struct.pack("<I", constants.FRAME_BYTES_MAX) + f[4:], Status.too_large),
    (lambda f: struct.pack("<I", 10) + f[4:], Status.too_small),
    (lambda f: f[:4] + b"XALY" + f[8:], Status.bad_magic),
    (lambda f: f[:8] + struct.pack("<H", 2) + f[10:], Status.bad_version),
    (lambda f: f[:32] + struct.pack("<I", 1) + f[36:], Status.bad_length),
    (lambda f: f[:-1] + bytes([f[-1] ^ 1]), Status.bad_checksum),
    (lambda f: f[:56] + b"\x01" + f[57:], Status.bad_checksum),
    (lambda f: _resealed(f, client_id=77), Status.unknown_client),
    (lambda f: encode(2, 9, f[64:], client_id=1, secret=b"wrong", event_count=3), Status.bad_mac),
    (lambda f: _resealed(f, operation=4242), Status.unknown_operation),
    (lambda f: _resealed(f, event_count=2), Status.bad_record_size),
])
def test_each_bad_frame_gets_its_documented_status(mutate, status):
    d = decoder()
    got = d.feed(mutate(transfers_frame()))
    assert len(got) == 1 and isinstance(got[0], FrameError)
    assert got[0].status == status
    assert d.closed == status.closes_connection
    if not d.closed:
        # The connection goes on: the next good frame is read.
        assert isinstance(d.feed(transfers_frame(10))[0], Frame)


def test_reserved_bytes_must_be_zero():
    frame = bytearray(transfers_frame())
    frame[60] = 1  # reserved, then re-checksummed and re-signed as a sender would
    import hashlib, hmac, zlib
    header = bytearray(frame[:64])
    header[36:56] = bytes(20)
    body = bytes(frame[64:])
    struct.pack_into("<I", frame, 36, zlib.crc32(body, zlib.crc32(header)))
    frame[40:56] = hmac.new(SECRETS[1], bytes(header) + body, hashlib.sha256).digest()[:16]
    (got,) = decoder().feed(bytes(frame))
    assert got.status == Status.reserved_not_zero


def test_an_oversized_length_is_rejected_before_anything_is_buffered():
    d = decoder()
    got = d.feed(struct.pack("<I", 1 << 31) + MAGIC)
    assert got == [FrameError(Status.too_large, 0)] and d.closed
    assert d.feed(b"more") == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_random_bytes_never_raise_and_never_pass(noise, chunk):
    d = decoder()
    for start in range(0, len(noise), chunk):
        for result in d.feed(noise[start:start + chunk]):
            assert isinstance(result, FrameError)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 64 + 3 * 128 - 1), st.integers(1, 255))
def test_any_flipped_byte_is_rejected(position, mask):
    frame = bytearray(transfers_frame())
    frame[position] ^= mask
    results = decoder().feed(bytes(frame)) + decoder().feed(b"")
    # Either rejected, or (a length that grew) still waiting for bytes: never accepted.
    assert all(isinstance(r, FrameError) for r in results)


def test_the_status_table_in_the_protocol_doc_matches_the_code():
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split("## Checks and statuses", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|(.*)\|$", section, flags=re.M)
    assert [(int(number), name) for number, name, _ in rows] == [(s.value, s.name) for s in Status]
    for number, name, rest in rows:
        treatment = rest.rsplit("|", 1)[1]
        assert ("connection closed" in treatment) == Status(int(number)).closes_connection, name
