"""The compiled frame checks and seals (engine.wire) against their plain-Python definition."""

import hashlib
import hmac
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine import frame, wire
from engine.protocol import CREATE_RECORD_DTYPES, OPERATIONS
from tests import frame_reference

SECRETS = {1: b"service-one", 2: bytes(range(80)), 7: b""}  # short, longer than a block, empty
OPERATION_NUMBERS = sorted(set(OPERATIONS))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=9000), key=st.binary(max_size=150), seed=st.integers(0, 2**32 - 1))
def test_hmac_and_crc_are_those_of_the_standard_library(data, key, seed):
    assert wire.MacKey(key).mac(data) == hmac.new(key, data, hashlib.sha256).digest()
    assert wire.crc32(data, seed) == zlib.crc32(data, seed)


@st.composite
def frames(draw):
    """A frame as a client could send it: sealed right or not, then maybe damaged."""
    operation = draw(st.sampled_from(OPERATION_NUMBERS + [0, 6, 99, 999, 65535]))
    records = operation in CREATE_RECORD_DTYPES
    event_count = draw(st.integers(0, 3)) if records else draw(st.sampled_from([0, 1, 9000]))
    body_bytes = event_count * 128 if records and draw(st.booleans()) else draw(
        st.sampled_from([0, 1, 16, 127, 128, 4096, 4097, 6000]))
    body = draw(st.binary(min_size=body_bytes, max_size=body_bytes)) if body_bytes < 200 else bytes(
        (i * 7 + body_bytes) & 0xFF for i in range(body_bytes))
    client_id = draw(st.sampled_from([1, 2, 7, 3]))  # 3 is unknown
    secret = SECRETS.get(client_id, b"not a secret") if draw(st.integers(0, 9)) else b"the wrong secret"
    raw = bytearray(frame_reference.encode(operation, draw(st.integers(0, 2**64 - 1)), body, client_id=client_id,
                                           secret=secret, event_count=event_count,
                                           status=draw(st.sampled_from([0, 0, 6]))))
    for _ in range(draw(st.integers(0, 2))):  # damage: a flipped bit, header or body
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(raw)


@settings(max_examples=1500, deadline=None)
@given(raw=frames())
def test_the_compiled_checker_answers_as_the_reference(raw):
    operations, records = set(OPERATIONS), set(CREATE_RECORD_DTYPES)
    expected_size = frame.frame_bytes(raw)
    reference = frame_reference.Checker(SECRETS, operations, records)
    compiled = frame.Checker(SECRETS, operations, records)
    if isinstance(expected_size, frame.Status):  # a length that cannot be a frame
        status, total, *_ = compiled.check_at(raw, 0, len(raw))
        assert (status, total) == (expected_size, 0)
        return
    if expected_size != len(raw):  # a flipped length: the frame is not all there, or more is
        status, total, *_ = compiled.check_at(raw, 0, len(raw))
        if expected_size > len(raw):
            assert (status, total) == (wire.INCOMPLETE, expected_size)
        return
    want, got = reference.check(memoryview(raw)), compiled.check(memoryview(raw))
    assert type(want) is type(got)
    if isinstance(want, frame.FrameError):
        assert (want.status, want.request_id) == (got.status, got.request_id)
    else:
        assert (want.operation, want.request_id, want.client_id, want.event_count, want.status, bytes(want.body)) == (
            got.operation, got.request_id, got.client_id, got.event_count, got.status, bytes(got.body))


@settings(max_examples=200, deadline=None)
@given(operation=st.integers(0, 65535), request_id=st.integers(0, 2**64 - 1), client_id=st.integers(0, 2**32 - 1),
       body=st.one_of(st.binary(max_size=300), st.integers(4090, 9000).map(lambda n: bytes(n % 251 for _ in range(n)))),
       secret=st.binary(max_size=100), status=st.integers(0, 20))
def test_a_sealed_header_is_the_reference_s(operation, request_id, client_id, body, secret, status):
    event_count = len(body) // 128
    assert frame.encode(operation, request_id, body, client_id=client_id, secret=secret, event_count=event_count,
                        status=status) == frame_reference.encode(operation, request_id, body, client_id=client_id,
                                                                 secret=secret, event_count=event_count, status=status)


def test_check_at_reads_frames_in_place_and_reports_incomplete_ones():
    checker = frame.Checker(SECRETS, set(OPERATIONS), set(CREATE_RECORD_DTYPES))
    one = frame.encode(1000, 5, client_id=1, secret=SECRETS[1])
    two = frame.encode(1000, 6, b"", client_id=2, secret=SECRETS[2])
    stream = bytearray(b"xx" + one + two)
    status, total, operation, _, request_id, client_id, _ = checker.check_at(stream, 2, len(stream))
    assert (status, total, operation, request_id, client_id) == (0, len(one), 1000, 5, 1)
    assert checker.check_at(stream, 2 + len(one), len(stream))[4] == 6
    assert checker.check_at(stream, 2, 5)[:2] == (wire.INCOMPLETE, 0)           # no length yet
    assert checker.check_at(stream, 2, 2 + 10)[:2] == (wire.INCOMPLETE, len(one))  # length known
    with pytest.raises(ValueError):
        checker.check_at(stream, 2, len(stream) + 1)


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.sampled_from([0, 1, 3, 1024, 1025, 2000]), min_size=1, max_size=8),
       connections=st.lists(st.sampled_from("abc"), min_size=8, max_size=8),
       clients=st.lists(st.sampled_from([1, 2, 7, 99]), min_size=8, max_size=8))
def test_batch_replies_are_the_frames_encode_gives(counts, connections, clients):
    # 99 is an unknown client: its replies are sealed with the empty key, as error replies are.
    results = bytes((i * 13) & 0xFF for i in range(4 * sum(counts)))
    requests, first = [], 0
    for k, count in enumerate(counts):
        requests.append((connections[k], 2, 1000 + k, clients[k], first, count, 64 + 128 * count, None))
        first += count
    grouped = wire.ReplySealer(SECRETS).batch_replies(requests, results)
    for connection in set(connections[:len(counts)]):
        mine = [r for r in requests if r[0] == connection]
        expected = b"".join(
            frame.encode(2, r[2], results[r[4] * 4:(r[4] + r[5]) * 4], client_id=r[3],
                         secret=SECRETS.get(r[3], b""), event_count=r[5]) for r in mine)
        frames, replies, nbytes = grouped[connection]
        assert bytes(frames) == expected
        assert (replies, nbytes) == (len(mine), sum(r[6] for r in mine))
    with pytest.raises(ValueError, match="outside"):
        wire.ReplySealer(SECRETS).batch_replies([("a", 2, 1, 1, 0, len(results) // 4 + 1, 64, None)], results)


def test_batch_replies_of_16_byte_records_and_no_larger():
    # create_orders' replies are 16 bytes per event (core/operations.py caps create replies there).
    replies = np.arange(3 * 16, dtype=np.uint8)
    grouped = wire.ReplySealer(SECRETS).batch_replies([("a", 100, 9, 1, 0, 2, 64, None), ("a", 100, 10, 1, 2, 1, 64, None)],
                                                      replies, 16)
    frames = bytes(grouped["a"][0])
    expected = b"".join(frame.encode(100, request_id, bytes(replies[first * 16:(first + count) * 16]), client_id=1,
                                     secret=SECRETS[1], event_count=count)
                        for request_id, first, count in ((9, 0, 2), (10, 2, 1)))
    assert frames == expected
    for reply_bytes in (0, 17, 20):
        with pytest.raises(ValueError, match="reply record"):
            wire.ReplySealer(SECRETS).batch_replies([("a", 100, 9, 1, 0, 1, 64, None)], np.zeros(64, np.uint8),
                                                    reply_bytes)
