"""128-bit ids as 16-byte NumPy values (little-endian ``lo``, ``hi``), to compare, sort and
match whole arrays of them: a record field's (``name_lo``, ``name_hi``) or Python ints.

>>> import numpy as np
>>> from core.records import ID_DTYPE
>>> ids = np.zeros(2, dtype=ID_DTYPE); ids["lo"] = [7, 8]
>>> bool(np.isin(of_field(ids, None), of_ints([8])).tolist() == [False, True])
True
"""

from __future__ import annotations

import numpy as np


def of_field(records: np.ndarray, name: str | None) -> np.ndarray:
    """The ids of a record field (``name_lo``/``name_hi``; ``None``: an ID_DTYPE array's ``lo``/``hi``)."""
    lo, hi = ("lo", "hi") if name is None else (f"{name}_lo", f"{name}_hi")
    out = np.zeros((records.shape[0], 2), dtype="<u8")
    out[:, 0], out[:, 1] = records[lo], records[hi]
    return out.view("V16").reshape(-1)


def of_ints(ids) -> np.ndarray:
    """Python ints (0 .. 2**128 - 1) as 16-byte values."""
    out = np.zeros((len(ids), 2), dtype="<u8")
    for row, value in enumerate(ids):
        out[row] = (value & 0xFFFFFFFFFFFFFFFF, value >> 64)
    return out.view("V16").reshape(-1)
