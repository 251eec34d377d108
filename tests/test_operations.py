"""The one table of operations (core/operations.py) and everything that must agree with it."""

import os
import re

import numpy as np

from core import constants, operations
from core.operations import OPERATIONS, Kind, Operation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_numbers_are_in_their_ranges_and_every_create_has_128_byte_events():
    for operation, spec in OPERATIONS.items():
        assert spec.operation is operation
        if spec.kind is Kind.control:
            assert operation >= 1000
        else:
            assert 1 <= operation <= 199, operation  # 1-99 the ledger's, 100-199 the products'
        if spec.kind is Kind.create:
            assert spec.event_dtype.itemsize == constants.RECORD_SIZE_BYTES
            # One reply record per event, its u32 result first (create_orders' carries a token).
            assert spec.reply_dtype == np.dtype(np.uint32) or spec.reply_dtype.fields["result"] == (np.dtype("<u4"), 0)
            assert spec.component in ("ledger", "orders", "merchants", "refunds", "settlement", "codes", "envelopes",
                                      "coupons", "fx", "limits", "tiers")
        if spec.kind is Kind.lookup:
            assert spec.event_dtype.itemsize == 16 and spec.reply_dtype.itemsize == constants.RECORD_SIZE_BYTES
    assert set(OPERATIONS) == set(Operation)


def test_the_store_logs_exactly_the_creates_and_the_protocol_numbers_them_from_the_table():
    from core import store
    from engine import protocol

    creates = {operation for operation, spec in OPERATIONS.items() if spec.kind is Kind.create}
    assert set(store.RECORD_DTYPES) == creates == set(protocol.CREATE_RECORD_DTYPES)
    assert protocol.Operation is Operation
    assert protocol.OPERATIONS == frozenset(OPERATIONS)
    assert set(protocol.LOOKUP_RECORD_DTYPES) == {op for op, spec in OPERATIONS.items() if spec.kind is Kind.lookup}


def test_docs_protocol_lists_every_operation_with_its_number():
    text = open(os.path.join(ROOT, "docs", "protocol.md")).read()
    section = text[text.index("## Operations"):text.index("## Semantics")]
    listed = {int(number): name for number, name in re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`", section, re.M)}
    assert listed == {int(operation): operation.name for operation in OPERATIONS}
    assert operations.RESULT_DTYPE.itemsize == 4
