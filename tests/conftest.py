import asyncio
import os

import pytest

# NumPy's BLAS threads spin while idle: keep them from competing with the code under test.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture
def data_dir(tmp_path):
    """A fresh directory for one LMDB environment."""
    return str(tmp_path / "store")


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_kind(request):
    """The test once on stock asyncio and once on uvloop, which tally serve runs on: asyncio.run
    (and asyncio.new_event_loop) make their loop through the policy set here."""
    if request.param == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)
