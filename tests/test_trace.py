"""Load traces (loadgen/trace.py, docs/trace-format.md): round trips, truncation, damage, hostile files."""

import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import core
from core import codec
from loadgen import trace
from loadgen.trace import (CHUNK_HEADER, END_RECORD, FILE_HEADER, TraceData, TraceError, TraceWriter,
                           iter_chunks, read)
from tally.bench_e2e import PaymentStream

HEADER = {"workload": {"seconds": 3, "rate": {"shape": "constant", "per_s": 1000}}, "seed": 7,
          "connections": 4, "mode": "open", "kinds": {0: "setup", 1: "payment", 2: "p2p", 3: "hold"},
          "id_base": 1 << 40, "tally_version": "0.1.0", "created_at": "2026-01-01T00:00:00Z"}
COLUMNS = ("operation", "request_index", "scheduled_ns", "connection", "kind", "result")


def payments(rng, n, first_id):
    """Payment records like tally/bench_e2e.py's PaymentStream (small ids, amounts, no user data)."""
    batch = np.zeros(n, core.TRANSFER_DTYPE)
    batch["id_lo"] = np.arange(first_id, first_id + n, dtype=np.uint64)
    batch["debit_account_id_lo"] = rng.integers(1, 100_000, n, dtype=np.uint64)
    batch["credit_account_id_lo"] = rng.integers(100_000, 101_000, n, dtype=np.uint64)
    batch["amount"] = rng.integers(1, 10_001, n, dtype=np.uint64)
    batch["ledger"] = core.Currency.CNY
    batch["code"] = core.TransferCode.payment
    return batch


def accounts(n, first_id):
    batch = np.zeros(n, core.ACCOUNT_DTYPE)
    batch["id_lo"] = np.arange(first_id, first_id + n, dtype=np.uint64)
    batch["ledger"] = core.Currency.CNY
    batch["code"] = core.AccountCode.user_wallet
    return batch


def make_frames(rng, sizes, accounts_frames=2):
    """Frames in send order: a setup phase of account frames, then payments; columns as the runner gives them."""
    frames, index = [], 0
    for k, n in enumerate(sizes):
        operation = 1 if k < accounts_frames else 2
        events = accounts(n, 1 + index) if operation == 1 else payments(rng, n, 1_000_000 + index)
        if k % 5 == 3:
            events = events.tobytes()                           # raw bytes
        elif k % 5 == 4:
            events = events.view(np.uint8).reshape(n, 128)      # uint8 rows
        frames.append({
            "operation": operation,
            "request_index": np.arange(index, index + n, dtype=np.uint64),
            "scheduled_ns": np.uint64(0) if operation == 1 else
                            np.sort(rng.integers(0, 10**9, n)).astype(np.uint64),
            "connection": k % 4 if k % 2 else np.full(n, k % 4, np.uint16),
            "kind": np.uint8(0) if operation == 1 else rng.integers(1, 4, n).astype(np.uint8),
            "result": rng.choice(np.array([0, 0, 0, 21, 46], np.uint32), n),
            "events": events,
        })
        index += n
    return frames


def expected_columns(frames):
    """The frames' requests as read() must return them: every column broadcast, sorted by request_index."""
    columns = {name: [] for name in (*COLUMNS, "events")}
    for frame in frames:
        n = len(frame["request_index"])
        columns["operation"].append(np.full(n, frame["operation"], np.uint16))
        for name, dtype in (("request_index", np.uint64), ("scheduled_ns", np.uint64),
                            ("connection", np.uint16), ("kind", np.uint8), ("result", np.uint32)):
            columns[name].append(np.broadcast_to(np.asarray(frame[name], dtype), (n,)))
        columns["events"].append(np.frombuffer(bytes(memoryview(frame["events"]).cast("B")), np.uint8).reshape(n, 128))
    joined = {name: np.concatenate(parts) for name, parts in columns.items()}
    order = np.argsort(joined["request_index"], kind="stable")
    return {name: values[order] for name, values in joined.items()}


def write(path, frames, order=None, header=HEADER, footer=None, **options):
    with TraceWriter(str(path), header, **options) as writer:
        for i in (range(len(frames)) if order is None else order):
            writer.append(**frames[i])
        totals = writer.close(footer)
    return totals


def assert_same(data: TraceData, expected):
    for name in COLUMNS:
        assert getattr(data, name).dtype == expected[name].dtype, name
        np.testing.assert_array_equal(getattr(data, name), expected[name], err_msg=name)
    assert data.events.shape == expected["events"].shape
    assert data.events.tobytes() == expected["events"].tobytes()


def reply_order(rng, count):
    """Frames answered out of send order: each reply is late by up to 3 frames."""
    return list(np.argsort(np.arange(count) + rng.uniform(0, 3, count), kind="stable"))


@pytest.mark.parametrize("background", [True, False])
def test_round_trip_of_mixed_operations_appended_in_reply_order(tmp_path, background):
    rng = np.random.default_rng(1)
    sizes = [300, 950] + list(rng.integers(1, 700, 28))
    frames = make_frames(rng, sizes)
    order = reply_order(rng, len(frames))
    assert order != sorted(order)
    path = tmp_path / "run.trace"
    write(path, frames, order, chunk_events=1000, background=background)
    data = read(str(path))
    assert data.complete and data.version == trace.TRACE_VERSION and data.trailing_bytes == 0
    assert_same(data, expected_columns(frames))
    # Chunks are in reply order, at most chunk_events each, one operation each.
    chunks = list(iter_chunks(str(path)))
    assert all(1 <= len(c.request_index) <= 1000 for c in chunks)
    first_indexes = np.concatenate([c.request_index for c in chunks])
    assert not np.all(np.diff(first_indexes.astype(np.int64)) > 0)
    # The records of one operation, as its dtype.
    transfers = data.records(2)
    assert transfers.dtype == core.TRANSFER_DTYPE and len(transfers) == sum(sizes[2:])
    assert np.all(np.diff(transfers["id_lo"].astype(np.int64)) == 1)
    assert data.records(1)["id_lo"].tolist() == list(range(1, 1 + sizes[0] + sizes[1]))
    # Columns only.
    columns_only = read(str(path), events=False)
    assert columns_only.events is None
    np.testing.assert_array_equal(columns_only.request_index, data.request_index)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=0, max_size=12), chunk_events=st.integers(1, 50),
       seed=st.integers(0, 2**32 - 1))
def test_any_frames_in_any_order_read_back_sorted(tmp_path_factory, sizes, chunk_events, seed):
    rng = np.random.default_rng(seed)
    frames = make_frames(rng, sizes, accounts_frames=int(rng.integers(0, 3)))
    order = list(rng.permutation(len(frames)))
    path = tmp_path_factory.mktemp("trace") / "t"
    totals = write(path, frames, order, chunk_events=chunk_events, background=bool(seed % 2))
    data = read(str(path))
    assert data.complete and len(data) == sum(sizes) == totals["events"]
    if frames:
        assert_same(data, expected_columns(frames))
    else:
        assert data.events.shape == (0, 128) and data.result_counts() == {}


def test_header_and_footer_round_trip(tmp_path):
    path = tmp_path / "t"
    footer = {"elapsed_s": 3.25, "stopped": "schedule done", "latency_ms": [1.5, 9.0], "nested": {"a": None}}
    write(path, make_frames(np.random.default_rng(2), [3, 4]), footer=footer)
    data = read(str(path))
    assert data.header == HEADER and data.header["kinds"][2] == "p2p"     # int keys survive
    assert data.footer == footer
    # An empty header and no footer.
    write(path, [], header={})
    empty = read(str(path))
    assert empty.header == {} and empty.footer == {} and len(empty) == 0 and empty.complete
    with pytest.raises(ValueError, match="header is"):
        TraceWriter(str(tmp_path / "big"), {"blob": b"x" * trace.HEADER_BYTES_MAX})
    with pytest.raises(TypeError):
        TraceWriter(str(tmp_path / "list"), [1, 2])


def test_close_returns_the_totals_and_the_reader_checks_them(tmp_path):
    rng = np.random.default_rng(3)
    frames = make_frames(rng, [10, 20, 30, 40, 50])
    path = tmp_path / "t"
    writer = TraceWriter(str(path), HEADER, chunk_events=25)
    for frame in frames:
        writer.append(**frame)
    totals = writer.close()
    assert totals["events"] == 150 and totals["account_events"] == 30 and totals["transfer_events"] == 120
    assert totals["chunks"] == 2 + 5        # 30 accounts: 25 + 5 (at close); 120 transfers: 4 × 25 + 20
    assert totals["bytes"] == os.path.getsize(path) and totals["path"] == str(path)
    assert writer.close() is totals
    data = read(str(path))
    assert {k: data.totals[k] for k in ("chunks", "events", "account_events", "transfer_events", "product_events",
                                        "bytes", "chunks_crc")} == {k: totals[k] for k in data.totals}
    expected = expected_columns(frames)
    values, counts = np.unique(expected["result"], return_counts=True)
    assert data.result_counts() == dict(zip(values.tolist(), counts.tolist()))
    transfers = data.operation == 2
    assert sum(data.result_counts(transfers).values()) == 120
    with pytest.raises(ValueError, match="closed"):
        writer.append(**frames[0])


def small_trace(tmp_path, chunk_events=4):
    rng = np.random.default_rng(4)
    frames = make_frames(rng, [3, 6, 5, 2, 7], accounts_frames=1)
    path = tmp_path / "small"
    write(path, frames, reply_order(rng, len(frames)), chunk_events=chunk_events)
    return path, path.read_bytes(), frames


def test_a_trace_cut_anywhere_is_refused_or_read_up_to_its_last_whole_chunk(tmp_path):
    path, whole, _ = small_trace(tmp_path)
    chunks = list(iter_chunks(str(path)))
    assert len(chunks) >= 6
    data_start = chunks[0].offset
    cut_path = tmp_path / "cut"
    for cut in range(len(whole)):
        cut_path.write_bytes(whole[:cut])
        with pytest.raises(TraceError):
            read(str(cut_path))
        if cut < data_start:           # no header: not a trace at all
            with pytest.raises(TraceError):
                read(str(cut_path), allow_truncated=True)
            continue
        data = read(str(cut_path), allow_truncated=True)
        kept = [c for c in chunks if c.end <= cut]
        assert not data.complete and data.totals is None
        assert data.trailing_bytes == cut - (kept[-1].end if kept else data_start)
        expected = np.sort(np.concatenate([c.request_index for c in kept] or [np.empty(0, np.uint64)]))
        np.testing.assert_array_equal(data.request_index, expected)
        expected_events = {int(i): bytes(e) for c in kept for i, e in zip(c.request_index, c.events)}
        assert {int(i): bytes(e) for i, e in zip(data.request_index, data.events)} == expected_events
    assert read(str(path)).complete


def test_a_flipped_bit_anywhere_is_a_trace_error(tmp_path):
    path, whole, frames = small_trace(tmp_path)
    chunks = list(iter_chunks(str(path)))
    body_offsets = {o for c in chunks for o in range(c.offset + CHUNK_HEADER.size, c.end)}
    boundaries = [c.offset for c in chunks] + [chunks[-1].end, len(whole)]
    damaged_path = tmp_path / "damaged"
    for offset in range(len(whole)):
        damaged = bytearray(whole)
        damaged[offset] ^= 1 << (offset % 8)
        damaged_path.write_bytes(damaged)
        with pytest.raises(TraceError) as error:
            read(str(damaged_path))
        # The error names a place in the damaged record (or before it), never past it.
        assert error.value.offset < min(b for b in boundaries if b > offset)
        if offset in body_offsets:       # damage is not truncation
            with pytest.raises(TraceError, match="checksum"):
                read(str(damaged_path), allow_truncated=True)
    assert_same(read(str(path)), expected_columns(frames))


def patched_file_header(whole, **fields):
    """The trace with file header fields replaced and its checksum made right again."""
    names = ("magic", "version", "minor", "flags", "header_bytes", "reserved", "checksum")
    values = dict(zip(names, FILE_HEADER.unpack_from(whole)))
    values.update(fields)
    fixed = bytearray(FILE_HEADER.pack(*(values[n] for n in names)))
    padded = values["header_bytes"] + (-values["header_bytes"] % 8)
    rest = whole[FILE_HEADER.size:]
    struct.pack_into("<I", fixed, 28, zlib.crc32(rest[:padded], zlib.crc32(fixed[:28])))
    return bytes(fixed) + rest


def test_wrong_magic_newer_version_and_unknown_flags_are_refused_clearly(tmp_path):
    path, whole, _ = small_trace(tmp_path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04" + whole[4:])
    with pytest.raises(TraceError, match="not a Tally trace") as error:
        read(str(bad))
    assert error.value.offset == 0 and str(bad) in str(error.value)
    bad.write_bytes(b"")
    with pytest.raises(TraceError, match="not a Tally trace"):
        read(str(bad))
    bad.write_bytes(patched_file_header(whole, version=2, minor=0))
    with pytest.raises(TraceError, match=r"version 2\.0 is newer than this reader supports \(1\.x\)"):
        read(str(bad), allow_truncated=True)
    bad.write_bytes(patched_file_header(whole, version=0))
    with pytest.raises(TraceError, match="not supported"):
        read(str(bad))
    bad.write_bytes(patched_file_header(whole, flags=1 << 5))
    with pytest.raises(TraceError, match=r"features this reader does not know \(flags 0x20\)"):
        read(str(bad))
    with pytest.raises(TraceError, match="cannot open"):
        read(str(tmp_path / "missing"))


def test_a_newer_minor_version_with_extra_sections_is_read(tmp_path):
    """What a newer minor version may add (reserved fields, sections after the events) this reader skips."""
    path, whole, frames = small_trace(tmp_path)
    newer_minor = trace.TRACE_MINOR_VERSION + 1
    out = bytearray(patched_file_header(whole, minor=newer_minor)[:list(iter_chunks(str(path)))[0].offset])
    chunks_crc = 0
    for c in iter_chunks(str(path)):
        fields = list(CHUNK_HEADER.unpack_from(whole, c.offset))
        body = whole[c.offset + CHUNK_HEADER.size:c.end] + b"new col!" * 2
        fields[2] = 7                   # reserved u16
        fields[6] = 16                  # extra_bytes
        header = bytearray(CHUNK_HEADER.pack(*fields))
        struct.pack_into("<I", header, 28, zlib.crc32(body, zlib.crc32(header[:28])))
        chunks_crc = zlib.crc32(header, chunks_crc)
        out += header + body
    end = list(END_RECORD.unpack_from(whole, c.end))
    end[6] = chunks_crc
    end_record = bytearray(END_RECORD.pack(*end))
    footer = whole[c.end + END_RECORD.size:]
    struct.pack_into("<I", end_record, 36, zlib.crc32(footer, zlib.crc32(end_record[:36])))
    newer = tmp_path / "newer"
    newer.write_bytes(out + end_record + footer)
    data = read(str(newer))
    assert data.complete and data.minor_version == newer_minor
    assert_same(data, expected_columns(frames))


def valid_file_header(payload=msgspec.msgpack.encode({}), flags=0):
    fixed = bytearray(FILE_HEADER.pack(trace.TRACE_MAGIC, 1, 0, flags, len(payload), 0, 0))
    body = payload + bytes(-len(payload) % 8)
    struct.pack_into("<I", fixed, 28, zlib.crc32(body, zlib.crc32(fixed[:28])))
    return bytes(fixed) + body


def chunk_record(operation, count, body, *, columns_bytes=None, events_bytes=None, sequence=0):
    columns = -(-23 * count // 8) * 8
    header = bytearray(CHUNK_HEADER.pack(trace.CHUNK_MAGIC, operation, 0, count,
                                         columns if columns_bytes is None else columns_bytes,
                                         len(body) - columns if events_bytes is None else events_bytes,
                                         0, sequence, 0))
    struct.pack_into("<I", header, 28, zlib.crc32(body, zlib.crc32(header[:28])))
    return bytes(header) + body


def test_lying_lengths_are_refused_without_a_big_allocation(tmp_path):
    path = tmp_path / "hostile"

    def refused(data, match, allow_truncated=False):
        path.write_bytes(data)
        tracemalloc.start()
        try:
            with pytest.raises(TraceError, match=match) as error:
                read(str(path), allow_truncated=allow_truncated)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024 + 4 * len(data), f"{peak} bytes allocated reading {len(data)} bytes"
        return error.value

    start = valid_file_header()
    # The largest count, the largest body, and only 100 bytes of it.
    liar = chunk_record(2, 65_536, bytes(1 << 21), events_bytes=136 * 65_536)[:CHUNK_HEADER.size + 100]
    error = refused(start + liar, "truncated: chunk 0 needs")
    assert error.offset == len(start)
    path.write_bytes(start + liar)
    assert len(read(str(path), allow_truncated=True)) == 0       # read as a cut-short chunk, no allocation
    refused(start + chunk_record(2, 2**32 - 1, b"", columns_bytes=0, events_bytes=0),
            r"count 4294967295 is not in 1\.\.65536")
    refused(start + chunk_record(2, 0, b""), "count 0 is not")
    refused(start + chunk_record(7, 1, bytes(32)), "unknown operation 7")
    refused(start + chunk_record(100, 1, bytes(32)), "unknown operation 100")   # a product's, without the flag
    refused(start + chunk_record(2, 1, bytes(32), columns_bytes=2**31), "columns length")
    refused(start + chunk_record(2, 4, bytes(96 + 8), events_bytes=7), "events length 7 is impossible")
    refused(start + chunk_record(2, 4, bytes(96 + 600), events_bytes=600), "events length 600 is impossible")
    refused(start + chunk_record(1, 1, bytes(32), sequence=5), "sequence number 5, expected 0")
    # Lengths that fit but records that do not unpack (a faulty writer: the checksum matches).
    refused(start + chunk_record(2, 1, bytes(24) + b"\x09" + bytes(15)), "do not unpack")
    # A file header claiming a huge run header; an end record claiming a huge footer.
    fixed = bytearray(start[:FILE_HEADER.size])
    struct.pack_into("<I", fixed, 16, 2**32 - 1)
    refused(bytes(fixed) + start[FILE_HEADER.size:], "header length 4294967295 exceeds the limit")
    end = END_RECORD.pack(trace.END_MAGIC, 0, 0, 2**31, 0, 0, 0, 0)
    refused(start + end, "footer length 2147483648 exceeds the limit", allow_truncated=True)
    refused(start + b"JUNK" + bytes(60), "unknown record b'JUNK'", allow_truncated=True)
    # Run headers that are not a msgpack map, with a good checksum.
    refused(valid_file_header(b"\xdd\xff\xff\xff\xff\x01"), "not valid msgpack")
    refused(valid_file_header(b"\x91" * 100_000 + b"\x01"), "not valid msgpack")
    refused(valid_file_header(b"\x93\x01\x02\x03"), "not a map")
    refused(valid_file_header()[:-1], "truncated run header")


def product_frames(rng):
    """A run with orders, in send order: setup (accounts, top-ups, merchants' terms), then
    transfers, orders' creates, payments, closes and refunds, each frame one operation."""
    frames, index = [], 0
    for operation, n in ((1, 40), (2, 30), (104, 5), (2, 50), (100, 60), (101, 45), (102, 6), (106, 20), (100, 7)):
        dtype = trace.OPERATION_DTYPES[operation]
        records = np.zeros(n, dtype)
        raw = records.view(np.uint8).reshape(n, 128)
        raw[:, :48] = rng.integers(0, 256, (n, 48), dtype=np.uint8)   # ids and amounts: any bytes
        if "ledger" in dtype.names:
            records["ledger"] = core.Currency.CNY
        frames.append({"operation": operation, "request_index": np.arange(index, index + n, dtype=np.uint64),
                       "scheduled_ns": np.uint64(0) if operation in (1, 104) else
                                       np.sort(rng.integers(0, 10**9, n)).astype(np.uint64),
                       "connection": 0, "kind": np.uint8(operation % 13),
                       "result": rng.choice(np.array([0, 0, 72, 74], np.uint32), n), "events": records})
        index += n
    return frames


def refused_without_flag_or_section(path, operation, flag, section_message):
    """A chunk of ``operation`` (one request, no extra section) is refused in a file without
    ``flag``, and in one with it for the extra section it lacks."""
    with pytest.raises(TraceError, match=f"unknown operation {operation}"):
        path.write_bytes(valid_file_header() + chunk_record(operation, 1, bytes(32)))
        read(str(path))
    path.write_bytes(valid_file_header(flags=trace.FLAG_PRODUCTS | flag) + chunk_record(operation, 1, bytes(32)))
    with pytest.raises(TraceError, match=section_message):
        read(str(path))


def random_frame(rng, operation, n, index, *, kind, results):
    """A frame of ``n`` requests of ``operation`` from request ``index`` on: records of random ids
    (their first 32 bytes), due times within a second, ``results`` drawn, one ``kind``."""
    records = np.zeros(n, trace.OPERATION_DTYPES[operation])
    records.view(np.uint8).reshape(n, 128)[:, :32] = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    return {"operation": operation, "request_index": np.arange(index, index + n, dtype=np.uint64),
            "scheduled_ns": np.sort(rng.integers(0, 10**9, n)).astype(np.uint64), "connection": 0,
            "kind": np.uint8(kind), "result": rng.choice(np.array(results, np.uint32), n), "events": records}


def test_a_trace_of_the_products_operations_round_trips_and_says_so(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    frames = product_frames(rng)
    path = tmp_path / "orders.tly"
    totals = write(path, frames, reply_order(rng, len(frames)), chunk_events=32,
                   operations=(2, 100, 101, 102, 106))
    whole = path.read_bytes()
    assert FILE_HEADER.unpack_from(whole)[2:4] == (trace.TRACE_MINOR_VERSION, trace.FLAG_PRODUCTS)
    data = read(str(path))
    assert_same(data, expected_columns(frames))
    assert (totals["account_events"], totals["transfer_events"], totals["product_events"]) == (40, 80, 143)
    assert data.totals["product_events"] == 143 and data.totals["events"] == len(data) == 263
    creates = data.records(100)
    assert creates.dtype == core.ORDER_CREATE_DTYPE and len(creates) == 67
    assert creates.tobytes() == np.concatenate([f["events"] for f in frames if f["operation"] == 100]).tobytes()
    # The end record of such a trace is 48 bytes (product_events added); damage to it is caught.
    end = whole.rindex(trace.END_MAGIC)
    for offset in range(end, end + trace.END_RECORD_PRODUCTS.size):
        damaged = bytearray(whole)
        damaged[offset] ^= 0x10
        path.write_bytes(damaged)
        with pytest.raises(TraceError):
            read(str(path))
    # A reader that knows no products (1.0) refuses the file rather than misreading it.
    path.write_bytes(whole)
    monkeypatch.setattr(trace, "FLAGS_KNOWN", 0)
    with pytest.raises(TraceError, match="features this reader does not know"):
        read(str(path))


def test_a_trace_of_payment_codes_keeps_each_issues_code_and_says_so(tmp_path, monkeypatch):
    """1.2: issue_codes, charge_codes and confirm_charges chunks, only with the codes flag; each
    issue_codes chunk carries the codes its requests were answered, read back in send order."""
    rng = np.random.default_rng(13)
    frames = product_frames(rng)
    index = sum(len(frame["request_index"]) for frame in frames)
    issued = {}
    for operation, n in ((112, 50), (113, 40), (114, 9), (112, 70)):
        frame = random_frame(rng, operation, n, index, kind=13 + operation - 112, results=(0, 103))
        if operation == 112:
            frame["issued_code"] = rng.integers(10**17, 16 * 10**16, n, dtype=np.uint64)
            issued.update(zip(frame["request_index"].tolist(), frame["issued_code"].tolist()))
        frames.append(frame)
        index += n
    path = tmp_path / "codes.tly"
    write(path, frames, reply_order(rng, len(frames)), chunk_events=32, operations=(2, 100, 112, 113, 114))
    whole = path.read_bytes()
    assert FILE_HEADER.unpack_from(whole)[2:4] == (trace.TRACE_MINOR_VERSION, trace.FLAG_PRODUCTS | trace.FLAG_CODES)
    data = read(str(path))
    assert_same(data, expected_columns(frames))
    assert data.totals["product_events"] == 143 + 169
    expected = np.array([issued.get(i, 0) for i in data.request_index.tolist()], np.uint64)
    np.testing.assert_array_equal(data.issued_code, expected)
    chunks = [chunk for chunk in iter_chunks(str(path)) if chunk.operation == 112]
    assert chunks and all(len(chunk.issued_code) == len(chunk.request_index) for chunk in chunks)
    # The codes are covered by their chunk's checksum.
    damaged = bytearray(whole)
    damaged[chunks[0].end - 3] ^= 0x01
    path.write_bytes(damaged)
    with pytest.raises(TraceError, match="checksum mismatch"):
        read(str(path))
    # A reader of 1.1 (products, no codes) refuses the file by its flag, not midway.
    path.write_bytes(whole)
    monkeypatch.setattr(trace, "FLAGS_KNOWN", trace.FLAG_PRODUCTS)
    with pytest.raises(TraceError, match=r"features this reader does not know \(flags 0x2\)"):
        read(str(path))
    monkeypatch.undo()
    # A writer not told of codes refuses them; codes are given for issue_codes only.
    with TraceWriter(str(tmp_path / "no-codes.tly"), {}, operations=(2, 100)) as writer:
        with pytest.raises(ValueError, match="payment code's"):
            writer.append(**frames[-1])
        with pytest.raises(ValueError, match="issued_code: only for issue_codes"):
            writer.append(**dict(frames[4], issued_code=np.zeros(60, np.uint64)))
    # A codes chunk in a file without the flag, and an issue_codes chunk without its codes, are refused.
    refused_without_flag_or_section(path, 112, trace.FLAG_CODES, "an issue_codes chunk starts them with its 1 codes")


def test_a_trace_of_red_envelopes_keeps_each_claims_share_and_position_and_says_so(tmp_path, monkeypatch):
    """1.3: send_envelopes and claim_envelopes chunks, only with the envelopes flag; each
    claim_envelopes chunk carries the share and position its requests were answered, read back
    in send order (0 for the other operations' requests)."""
    rng = np.random.default_rng(17)
    frames = product_frames(rng)
    index = sum(len(frame["request_index"]) for frame in frames)
    answered = {}
    for operation, n in ((116, 30), (117, 41), (116, 5), (117, 78)):   # chunks of 32: the last of 23, padded
        frame = random_frame(rng, operation, n, index, kind=18 + operation - 116, results=(0, 112))
        if operation == 117:
            claimed = np.zeros(n, core.ENVELOPE_CLAIMED_DTYPE)
            claimed["result"] = frame["result"]
            claimed["position"] = rng.integers(0, 10_000, n)
            claimed["amount"] = rng.integers(1, 2**40, n)
            frame["claimed"] = claimed
            answered.update(zip(frame["request_index"].tolist(), zip(claimed["amount"].tolist(),
                                                                    claimed["position"].tolist())))
        frames.append(frame)
        index += n
    path = tmp_path / "envelopes.tly"
    write(path, frames, reply_order(rng, len(frames)), chunk_events=32, operations=(2, 100, 116, 117))
    whole = path.read_bytes()
    assert FILE_HEADER.unpack_from(whole)[2:4] == (trace.TRACE_MINOR_VERSION, trace.FLAG_PRODUCTS | trace.FLAG_ENVELOPES)
    data = read(str(path))
    assert_same(data, expected_columns(frames))
    assert data.totals["product_events"] == 143 + 154
    expected = [answered.get(i, (0, 0)) for i in data.request_index.tolist()]
    np.testing.assert_array_equal(data.claimed_amount, np.array([a for a, _ in expected], np.uint64))
    np.testing.assert_array_equal(data.claimed_position, np.array([p for _, p in expected], np.uint32))
    assert data.claimed_position.dtype == np.uint32 and not data.issued_code.any()
    chunks = [chunk for chunk in iter_chunks(str(path)) if chunk.operation == 117]
    assert chunks and all(len(chunk.claimed_amount) == len(chunk.claimed_position) == len(chunk.request_index)
                          for chunk in chunks)
    # The shares and positions are covered by their chunk's checksum; their padding must be zero.
    odd = next(chunk for chunk in chunks if len(chunk.request_index) % 2)
    for offset in (odd.end - 9, odd.end - 1):    # a position, the padding
        damaged = bytearray(whole)
        damaged[offset] ^= 0x01
        path.write_bytes(damaged)
        with pytest.raises(TraceError, match="checksum mismatch"):
            read(str(path))
        struct.pack_into("<I", damaged, odd.offset + 28, zlib.crc32(damaged[odd.offset + 32:odd.end],
                                                                   zlib.crc32(damaged[odd.offset:odd.offset + 28])))
        path.write_bytes(damaged)   # the chunk's checksum made to match: the padding is checked, the end record's too
        with pytest.raises(TraceError, match="nonzero padding" if offset == odd.end - 1 else "running checksum"):
            read(str(path))
    # A reader of 1.2 (products and codes, no envelopes) refuses the file by its flag, not midway.
    path.write_bytes(whole)
    monkeypatch.setattr(trace, "FLAGS_KNOWN", trace.FLAG_PRODUCTS | trace.FLAG_CODES)
    with pytest.raises(TraceError, match=r"features this reader does not know \(flags 0x4\)"):
        read(str(path))
    monkeypatch.undo()
    # A writer not told of envelopes refuses them; the answers are given for claims only.
    with TraceWriter(str(tmp_path / "no-envelopes.tly"), {}, operations=(2, 100, 112)) as writer:
        with pytest.raises(ValueError, match="red envelope's"):
            writer.append(**frames[-1])
    with TraceWriter(str(tmp_path / "other.tly"), {}, operations=(2, 116, 117)) as writer:
        with pytest.raises(ValueError, match="claimed: only for claim_envelopes"):
            writer.append(**dict(frames[-2], claimed=frames[-1]["claimed"][:5]))
        with pytest.raises(ValueError, match="claimed: 78 replies"):
            writer.append(**dict(frames[-1], claimed=frames[-1]["claimed"][:5]))
        writer.append(**dict(frames[-1], claimed=None))    # no answers: 0s
    assert not read(str(tmp_path / "other.tly")).claimed_amount.any()
    # An envelopes chunk in a file without the flag, and a claims chunk without its answers, are refused.
    refused_without_flag_or_section(path, 117, trace.FLAG_ENVELOPES,
                                    "a claim_envelopes chunk starts them with its 1 shares and positions")


def test_a_trace_of_coupons_and_cross_border_payments_says_so(tmp_path, monkeypatch):
    """1.4: create_stocks, grant_coupons and pay_with_coupon chunks only with the coupons flag,
    set_rates, pay_cross_border and refund_cross_border chunks only with the fx flag; no extra
    section (their ids are digests of what their events hold)."""
    rng = np.random.default_rng(19)
    frames = product_frames(rng)
    index = sum(len(frame["request_index"]) for frame in frames)
    for operation, n in ((120, 3), (121, 45), (122, 37), (125, 1), (126, 50), (127, 6), (122, 11)):
        frames.append(random_frame(rng, operation, n, index, kind=20, results=(0, 116)))
        index += n
    path = tmp_path / "coupons-fx.tly"
    write(path, frames, reply_order(rng, len(frames)), chunk_events=32, operations=(2, 100, 120, 121, 122, 126))
    whole = path.read_bytes()
    flags = trace.FLAG_PRODUCTS | trace.FLAG_COUPONS | trace.FLAG_FX
    assert FILE_HEADER.unpack_from(whole)[2:4] == (4, flags)
    data = read(str(path))
    assert_same(data, expected_columns(frames))
    assert data.totals["product_events"] == 143 + 153
    assert data.records(126).dtype == core.FX_PAY_DTYPE and len(data.records(122)) == 48
    # A reader of 1.3 (no coupons, no fx) refuses the file by its flags, not midway.
    monkeypatch.setattr(trace, "FLAGS_KNOWN", trace.FLAG_PRODUCTS | trace.FLAG_CODES | trace.FLAG_ENVELOPES)
    with pytest.raises(TraceError, match=r"features this reader does not know \(flags 0x18\)"):
        read(str(path))
    monkeypatch.undo()
    # A writer not told of coupons (or of fx) refuses theirs.
    with TraceWriter(str(tmp_path / "no-coupons.tly"), {}, operations=(2, 100, 126)) as writer:
        with pytest.raises(ValueError, match="coupon's"):
            writer.append(**frames[-1])
    with TraceWriter(str(tmp_path / "no-fx.tly"), {}, operations=(2, 100, 122)) as writer:
        with pytest.raises(ValueError, match="cross-border payment's"):
            writer.append(**frames[-3])
    # Their chunks in a file without their flag are refused.
    for operation, flag in ((121, trace.FLAG_FX), (126, trace.FLAG_COUPONS)):
        path.write_bytes(valid_file_header(flags=trace.FLAG_PRODUCTS | flag) + chunk_record(operation, 1, bytes(32)))
        with pytest.raises(TraceError, match=f"unknown operation {operation}"):
            read(str(path))


def test_a_trace_of_transfers_stays_what_a_1_0_reader_reads(tmp_path, monkeypatch):
    path = tmp_path / "transfers.tly"
    frames = make_frames(np.random.default_rng(12), [30, 40, 50])
    write(path, frames)
    whole = path.read_bytes()
    assert FILE_HEADER.unpack_from(whole)[3] == 0          # no flag: the layout of 1.0
    assert whole.rindex(trace.END_MAGIC) == len(whole) - trace.END_RECORD.size - 8   # a 40-byte end record, {} footer
    monkeypatch.setattr(trace, "FLAGS_KNOWN", 0)
    assert_same(read(str(path)), expected_columns(frames))


def test_trailing_bytes_after_the_end_record_are_refused(tmp_path):
    path, whole, _ = small_trace(tmp_path)
    path.write_bytes(whole + bytes(8))
    with pytest.raises(TraceError, match="8 bytes after the end record"):
        read(str(path), allow_truncated=True)


def test_the_trace_is_written_as_partial_and_renamed_on_close(tmp_path):
    path = tmp_path / "run.trace"
    partial = tmp_path / "run.trace.partial"
    path.write_bytes(b"the previous trace")
    frames = make_frames(np.random.default_rng(5), [10, 20, 30])
    writer = TraceWriter(str(path), HEADER, chunk_events=16)
    for frame in frames:
        writer.append(**frame)
    writer.flush()
    assert partial.exists() and path.read_bytes() == b"the previous trace"
    with pytest.raises(TraceError, match="truncated"):
        read(str(partial))
    flushed = read(str(partial), allow_truncated=True)
    assert not flushed.complete and len(flushed) == 60 and flushed.trailing_bytes == 0
    writer.close()
    assert not partial.exists() and read(str(path)).complete

    # An exception inside the with block: what was appended is written, the file stays .partial.
    path.unlink()
    with pytest.raises(RuntimeError, match="run failed"):
        with TraceWriter(str(path), HEADER, chunk_events=16) as writer:
            for frame in frames:
                writer.append(**frame)
            raise RuntimeError("run failed")
    assert not path.exists()
    data = read(str(partial), allow_truncated=True)
    assert not data.complete and len(data) == 60
    assert_same(data, expected_columns(frames))
    with pytest.raises(ValueError, match="aborted"):
        writer.close()


def test_a_killed_run_leaves_a_readable_partial_file(tmp_path):
    path = tmp_path / "killed.trace"
    script = f"""
import os, signal, numpy as np
from loadgen.trace import TraceWriter
from tests.test_trace import make_frames, HEADER
frames = make_frames(np.random.default_rng(6), [100, 200, 300, 400])
writer = TraceWriter({str(path)!r}, HEADER, chunk_events=128)
for frame in frames[:3]:
    writer.append(**frame)
writer.flush()
writer.append(**frames[3])          # 3 of its 4 chunks written (the thread is drained below), 1 buffered
writer._wait_all()
os.kill(os.getpid(), signal.SIGKILL)
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == -9, run.stderr
    assert not path.exists()
    data = read(str(path) + ".partial", allow_truncated=True)
    assert not data.complete and len(data) == 600 + 3 * 128
    np.testing.assert_array_equal(data.request_index, np.arange(600 + 3 * 128))


def test_append_copies_the_callers_buffers(tmp_path):
    rng = np.random.default_rng(7)
    frame = make_frames(rng, [50], accounts_frames=0)[0]
    reused = {name: value.copy() if isinstance(value, np.ndarray) else value for name, value in frame.items()}
    path = tmp_path / "t"
    with TraceWriter(str(path), {}) as writer:
        writer.append(**reused)
        for name in ("request_index", "scheduled_ns", "kind", "result", "events"):
            if name == "events":
                reused[name].view(np.uint8)[:] = 0
            else:
                reused[name][...] = 0 if name != "request_index" else reused[name] + 50
        writer.append(**reused)
    data = read(str(path))
    assert data.events[:50].tobytes() == frame["events"].tobytes() and not data.events[50:].any()
    np.testing.assert_array_equal(data.kind[:50], frame["kind"])


def test_append_refuses_bad_input(tmp_path):
    records = payments(np.random.default_rng(8), 4, 1)
    ok = {"operation": 2, "request_index": np.arange(4, dtype=np.uint64), "scheduled_ns": 0,
          "connection": 0, "kind": 1, "result": np.zeros(4, np.uint32), "events": records}
    with TraceWriter(str(tmp_path / "t"), {}) as writer:
        for change, match in (
            ({"operation": 3}, "operation 3"),
            ({"operation": 100}, "a product's, in a trace not made for them"),
            ({"operation": 1}, "another dtype"),
            ({"events": records.tobytes()[:-1]}, "whole number"),
            ({"events": np.zeros(4, np.float64)}, "records"),
            ({"request_index": np.arange(5)}, r"request_index: shape \(5,\)"),
            ({"connection": 70_000}, "out of range"),
            ({"connection": np.full(4, -1)}, "out of range"),
            ({"result": np.zeros(4, np.float32)}, "integers expected"),
        ):
            with pytest.raises(ValueError, match=match):
                writer.append(**{**ok, **change})
        writer.append(**ok)
        writer.append(**{**ok, "events": records[:0], "request_index": np.arange(0, dtype=np.uint64),
                         "result": np.zeros(0, np.uint32)})      # an empty frame is nothing
    assert len(read(str(tmp_path / "t"))) == 4


def test_a_large_trace_costs_under_64_bytes_per_payment(tmp_path):
    """200,000 payments built like bench_e2e's PaymentStream, in frames of 8,190.

    About 24.6 bytes of packed record plus 23 column bytes (request_index 8, scheduled_ns 8,
    result 4, connection 2, kind 1): ~47 bytes per request.
    """
    stream = PaymentStream(accounts=200_000, first_id=1 << 32)
    frame, total = 8_190, 200_000
    path = tmp_path / "big"
    writer = TraceWriter(str(path), HEADER)
    sent = 0
    batch = np.empty(frame, core.TRANSFER_DTYPE)
    while sent < total:
        n = min(frame, total - sent)
        writer.append(2, np.arange(sent, sent + n, dtype=np.uint64),
                      np.arange(sent, sent + n, dtype=np.uint64) * 1_000, (sent // frame) % 4,
                      np.ones(n, np.uint8), np.zeros(n, np.uint32), stream.batch(n, out=batch))
        sent += n
    totals = writer.close()
    per_event = totals["bytes"] / total
    print(f"\ntrace bytes per payment: {per_event:.1f} ({totals['bytes']} bytes, {totals['chunks']} chunks)")
    assert 40 < per_event < 64
    assert totals["chunks"] == 4      # 3 × 65,536 + 3,392
    data = read(str(path))
    assert len(data) == total and data.result_counts() == {0: total}
    ids = data.records(2)["id_lo"]
    np.testing.assert_array_equal(ids, np.arange(1 << 32, (1 << 32) + total, dtype=np.uint64))
    assert codec.pack(data.events[:100]) == codec.pack(data.records(2)[:100])
