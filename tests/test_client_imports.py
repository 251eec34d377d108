"""A client needs no database: the client library and the load generator load neither LMDB nor
the ledger nor the store (issue 13: a service that only wants the client gets only the wire)."""

import subprocess
import sys

HEAVY = ("lmdb", "core.ledger", "core.store", "core.cold", "core.idmap", "core.filter")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_the_client_library_loads_no_database():
    loaded = _loaded_after("import engine.client")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert "engine.wire" in loaded and "core.records" in loaded


def test_the_load_generator_loads_no_database():
    loaded = _loaded_after("import loadgen.runner, loadgen.replay, loadgen.trace, loadgen.generator, loadgen.report, "
                           "loadgen.merchant_side, loadgen.envelope_side")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_the_store_is_still_there_on_first_use():
    loaded = _loaded_after("import core\nassert core.open and core.Ledger and core.StoreError")
    assert {"lmdb", "core.store", "core.ledger"} <= loaded
