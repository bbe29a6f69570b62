"""Numba kernels, and only kernels, each with a NumPy twin.

Each module holds one family of kernels (``@kernel``-decorated functions from ``_jit.py``), a thin
Python wrapper that prepares buffers and calls them, and a ``*_numpy`` twin that computes the same
result with plain NumPy; the tests compare the two with hypothesis.

Modules are imported on first attribute access (``kernels.weighted_sum``), so ``import aggkit``
does not import numba or compile anything. Loading the first kernel module also sets up numba's
thread pool (:func:`aggkit.kernels._jit.prepare_runtime`), before any kernel runs.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = module
    jit = sys.modules.get(f"{__name__}._jit")
    if jit is not None and not name.startswith("_"):  # a kernel module (limits is plain Python)
        jit.prepare_runtime()
    return module
