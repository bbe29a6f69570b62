"""The last pass of a mean: ``out[j] = dtype(total[j] / denominator)``, in one pass over threads.

NumPy spends two passes and a fresh array on this (``np.divide`` then ``astype``), and the fresh
array's first-touch page faults can cost more than both passes. This kernel reads ``total`` once
and writes into a reused buffer (``docs/benchmarks-history.md``, "Divide and cast", has the
figures).

Bits: each element is one IEEE float64 division rounded once to the output dtype, exactly what
``np.divide(total, d).astype(dtype)`` computes, so the NumPy twin gives the same bits (NaN, Inf
and signed zeros included; a zero denominator gives Inf/NaN as ``np.divide`` does).
"""

from __future__ import annotations

import numpy as np

from aggkit import _checks
from aggkit.kernels._jit import kernel, run_tasks
from aggkit.kernels._minmax import min2

__all__ = ["BLOCK", "divide_cast", "divide_cast_numpy"]

#: Elements per parallel task.
BLOCK = 1 << 16


@kernel
def _divide_cast(first, stop, total, denominator, out, block):  # pragma: no cover - compiled
    """Blocks ``first .. stop - 1``; :func:`aggkit.kernels._jit.run_tasks` runs them on threads."""
    n = total.shape[0]
    for b in range(first, stop):
        lo = b * block
        hi = min2(lo + block, n)
        src = total[lo:hi]
        dst = out[lo:hi]
        for j in range(hi - lo):
            dst[j] = src[j] / denominator


def divide_cast(
    total: np.ndarray, denominator: float, out: np.ndarray, *, block: int = BLOCK
) -> np.ndarray:
    """Write ``total / denominator`` (float64 division) into ``out``, rounded to its dtype.

    Parameters
    ----------
    total : numpy.ndarray
        ``float64[n]``.
    denominator : float
        The divisor (0 gives Inf/NaN, as ``np.divide`` does).
    out : numpy.ndarray
        ``float32[n]`` or ``float64[n]``, written in full (it may be ``total`` itself).
    block : int
        Elements per parallel task; the result does not depend on it.

    Returns
    -------
    numpy.ndarray
        ``out``.

    Examples
    --------
    >>> import numpy as np
    >>> divide_cast(np.array([1.0, 3.0]), 4.0, np.empty(2, np.float32))
    array([0.25, 0.75], dtype=float32)
    """
    _checks.array(total, "total", dtype=np.float64, ndim=1)
    _checks.array(out, "out", dtype=(np.float32, np.float64), shape=total.shape, writeable=True)
    block = _checks.integer(block, "block", low=1)
    if total.size:
        run_tasks(_divide_cast, -(-total.size // block), total, np.float64(denominator), out, block)
    return out


def divide_cast_numpy(total: np.ndarray, denominator: float, out: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`divide_cast` (the same bits)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out[...] = np.divide(total, np.float64(denominator)).astype(out.dtype)
    return out
