import os

import pytest

# NumPy's BLAS threads spin while idle: keep them from competing with the code under test.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture
def data_dir(tmp_path):
    """A fresh directory for one LMDB environment."""
    return str(tmp_path / "store")
