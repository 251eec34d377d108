"""Record layouts and result codes agree with docs/data-model.md, and the compiled core is loaded."""

import pathlib
import re

import numpy as np
import pytest

import core
import core.ledger
import core.records

DOC = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "data-model.md").read_text()


def test_compiled_core_is_loaded():
    # No silent pure-Python fallback: the modules are extension modules.
    for module in (core.records, core.ledger, core.idmap):
        assert module.__file__.endswith((".so", ".pyd")), module.__file__


def test_record_sizes():
    assert core.ACCOUNT_DTYPE.itemsize == 128
    assert core.TRANSFER_DTYPE.itemsize == 128


def _doc_table(heading):
    section = DOC.split(heading, 1)[1].split("\n## ", 1)[0]
    # Field rows only: "| offset | `name`[, `name`] | type | meaning |".
    return re.findall(r"^\| (\d+) \| `([a-z_0-9]+)`[^|]*\| (?:u64|u32|u16|\d+ bytes)", section, re.M)


@pytest.mark.parametrize("heading,dtype", [("## Account (128 bytes)", core.ACCOUNT_DTYPE),
                                           ("## Transfer (128 bytes)", core.TRANSFER_DTYPE)])
def test_documented_offsets_match_dtype(heading, dtype):
    rows = _doc_table(heading)
    assert len(rows) >= 10
    for offset, name in rows:
        assert dtype.fields[name][1] == int(offset), name


def test_result_codes_match_the_documented_table():
    table = dict(re.findall(r"^\| (\d+) \| ([a-z_0-9]+) \|$", DOC, re.M))
    documented = {name: int(code) for code, name in table.items()}
    assert documented == {member.name: member.value for member in core.Result}
    assert len(core.Result) == 149


def test_dict_round_trip_of_wide_fields():
    rows = [{"id": (1 << 127) + 5, "debit_account_id": (1 << 64) + 1, "credit_account_id": 2,
             "amount": 2**64 - 1, "user_data_128": 3 << 70, "reserved": 0x0102, "ledger": 156, "code": 1}]
    back = core.to_dicts(core.transfers_from_dicts(rows))[0]
    for key, value in rows[0].items():
        assert back[key] == value


def test_converters_reject_out_of_range_values():
    with pytest.raises(OverflowError):
        core.transfers_from_dicts([{"id": 1 << 128}])
    with pytest.raises(OverflowError):
        core.transfers_from_dicts([{"amount": 1 << 64}])
    with pytest.raises(KeyError):
        core.transfers_from_dicts([{"amout": 1}])


def test_id_map_insert_lookup_remove():
    ids = core.IdMap(1000)
    keys = [k * 0x9E3779B97F4A7C15 % (1 << 128) or 1 for k in range(1, 900)]
    for index, key in enumerate(keys):
        ids.insert(key, index)
    for index, key in enumerate(keys):
        assert ids.lookup(key) == index
    for key in keys[::2]:
        ids.discard(key)
    for index, key in enumerate(keys):
        assert ids.lookup(key) == (None if index % 2 == 0 else index)
    assert len(ids) == len(keys) // 2


def test_hot_path_functions_are_declared_nogil():
    # Cython refuses any Python object operation inside a nogil function at compile time, so
    # this is the guarantee that the loops create no Python object per event.
    directory = pathlib.Path(core.ledger.__file__).parent
    hot_paths = {
        "ledger.pxd": ("apply_transfers", "create_transfer", "post_or_void", "append_transfer", "apply_accounts",
                       "create_account", "rollback", "expire_pending", "schedule_expiries", "evict",
                       "pending_insert", "pending_release", "chain_begin", "chain_abort", "save_field", "leg"),
        "product.pxd": ("run_batch",),
        "orders.pxd": ("expire_due", "create_order", "pay_batch", "pay_order", "close_order", "drop_resolved"),
        "merchants.pxd": ("set_merchant", "terms_of", "resolve"),
        "refunds.pxd": ("refund",),
        "expiry.pxd": ("heap_sift_up", "heap_sift_down", "heap_remove", "heap_push", "heap_place"),
    }
    for file, names in hot_paths.items():
        pxd = re.sub(r"\s+", " ", (directory / file).read_text())
        for name in names:
            declaration = re.search(rf"cdef [\w *]+?\b{name}\([^)]*\) noexcept nogil", pxd)
            assert declaration, f"{file}: {name} must be declared noexcept nogil"


@pytest.mark.parametrize("heading,flags", [("Account flags (`core.AccountFlags`)", core.AccountFlags),
                                           ("Transfer flags (`core.TransferFlags`)", core.TransferFlags)])
def test_flags_match_the_documented_tables(heading, flags):
    section = DOC.split(heading, 1)[1].split("\n\n", 2)[1]
    documented = {name: 1 << int(bit) for bit, name in re.findall(r"^\| (\d+) \| `([a-z_]+)` \|", section, re.M)}
    assert documented == {member.name: member.value for member in flags if member.value}


def test_type_stubs_list_the_runtime_enum_members():
    stub = (pathlib.Path(core.records.__file__).parent / "records.pyi").read_text()
    for enum_type in (core.Result, core.AccountFlags, core.TransferFlags, core.AccountCode, core.TransferCode,
                      core.Currency):
        section = stub.split(f"class {enum_type.__name__}(", 1)[1].split("\n\n", 1)[0]
        stubbed = dict(re.findall(r"^    (\w+) = (\d+)$", section, re.M))
        stubbed.pop("none", None)  # IntFlag's zero value, not iterated at run time
        assert {name: int(value) for name, value in stubbed.items()} == {
            member.name: member.value for member in enum_type}
