"""Builds Tally's compiled core.

Every ``core/*.pyx`` is one extension module, and ``engine/wire.pyx`` another. Compiler directives are set here once for the
whole core; bounds checks stay on by default and are turned off per function, right after an
explicit length check, in the hot loops. ``TALLY_DEBUG=1`` builds with C asserts and
line tracing off-limits checks kept for debugging.
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("TALLY_DEBUG") == "1"

extensions = [
    Extension(
        f"core.{name}",
        [f"core/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # Python's own CFLAGS carry -DNDEBUG: a debug build must undo it for the asserts to exist.
        extra_compile_args=["-O2", "-fno-strict-aliasing"] + (["-UNDEBUG"] if DEBUG else ["-DNDEBUG"]),
    )
    for name in ("records", "idmap", "filter", "ledger", "codec", "digest", "product", "table", "merchants", "orders",
                 "refunds", "settlement", "codes", "envelopes", "coupons", "fx", "limits", "tiers")
] + [
    # The wire protocol's frame checks and seals (engine/wire.pyx): plain C, no NumPy.
    Extension("engine.wire", ["engine/wire.pyx"],
              extra_compile_args=["-O2", "-fno-strict-aliasing"] + (["-UNDEBUG"] if DEBUG else ["-DNDEBUG"])),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            "cdivision": True,
            "initializedcheck": False,
        },
        annotate=os.environ.get("TALLY_ANNOTATE") == "1",
    ),
)
