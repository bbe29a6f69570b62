"""Peak memory of a call, for tests that claim a round makes no copy of the client matrix."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any


def peak_allocation(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``(fn(), peak)``: ``peak`` is the most memory allocated at any time during the call, in
    bytes above what was allocated when it started.

    NumPy reports its array buffers to :mod:`tracemalloc`, so a copy of a matrix counts in full.
    Run the call once before measuring it: compiling kernels allocates too.
    """
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base
