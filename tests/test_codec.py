"""The log packing is lossless for any record, and rejects damaged input instead of misreading it."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core import codec

words = st.one_of(st.just(0), st.integers(0, 255), st.integers(0, 2**32), st.integers(0, 2**64 - 1))
records = st.lists(st.lists(words, min_size=16, max_size=16), min_size=0, max_size=40)


def _bytes(rows):
    return np.array(rows, dtype="<u8").reshape(-1).tobytes() if rows else b""


@settings(max_examples=300, deadline=None)
@given(records)
def test_pack_round_trips_any_records(rows):
    raw = _bytes(rows)
    packed = codec.pack(raw)
    assert len(packed) <= len(rows) * 136
    assert codec.unpack(packed, len(rows)).tobytes() == raw


@settings(max_examples=300, deadline=None)
@given(records.filter(bool), st.data())
def test_damaged_input_is_rejected_or_read_exactly(rows, data):
    packed = bytearray(codec.pack(_bytes(rows)))
    cut = data.draw(st.integers(0, len(packed) - 1))
    with pytest.raises(ValueError):
        codec.unpack(bytes(packed[:cut]), len(rows))  # truncated
    with pytest.raises(ValueError):
        codec.unpack(bytes(packed) + b"\x00", len(rows))  # trailing garbage
    position = data.draw(st.integers(0, len(packed) - 1))
    packed[position] ^= data.draw(st.integers(1, 255))
    try:
        out = codec.unpack(bytes(packed), len(rows))
    except ValueError:
        return
    # A flip that still parses yields different records, never a silent partial read.
    assert out.shape == (len(rows) * 128,)
    assert out.tobytes() != _bytes(rows)


def test_typical_payment_packs_small():
    import core
    batch = core.transfers_from_dicts([{"id": 10_000 + i, "debit_account_id": 500 + i, "credit_account_id": 7,
                                        "amount": 1999, "ledger": 156, "code": 1} for i in range(100)])
    assert len(codec.pack(batch)) / 100 <= 26


def test_pack_into_checks_room():
    with pytest.raises(ValueError):
        codec.pack_into(b"\x00" * 128, bytearray(10))
    with pytest.raises(ValueError):
        codec.pack(b"\x00" * 100)
