"""Argument checks for the kernels' Python entry points: compiled code trusts its arrays.

Numba kernels do not check bounds: a coefficient vector longer than the matrix reads rows that do
not exist, an output shorter than its input is written past its end, and either can kill the
interpreter. The kernel modules are importable, so every Python entry point that hands arrays to
compiled code checks them first with these helpers, and a malformed call is a TypeError (wrong
kind or dtype) or ValueError (wrong shape, layout or range) naming the argument, before anything
runs. A check costs a few attribute reads (about a microsecond), nothing per element, except
:func:`offsets`, which reads the ``T + 1`` tensor boundaries once.

Arrays must be C-contiguous: every kernel is compiled for contiguous arrays, and a strided view
would compile (for seconds) a second, slower copy of it.

Example
-------
>>> import numpy as np
>>> array(np.zeros(3), "acc", dtype=np.float64, shape=(3,), writeable=True).shape
(3,)
>>> array(np.zeros(3), "acc", dtype=np.float64, shape=(4,))
Traceback (most recent call last):
...
ValueError: acc must have shape (4,), got (3,)
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["array", "block", "offsets"]


def array(
    value: Any,
    name: str,
    *,
    dtype: Any,
    shape: tuple[int | None, ...] | None = None,
    ndim: int | None = None,
    writeable: bool = False,
    contiguous: bool = True,
) -> np.ndarray:
    """``value`` if it is an ndarray of ``dtype`` (one dtype or a tuple of them) with ``shape``
    (None entries match any length) or ``ndim`` dimensions, C-contiguous (unless
    ``contiguous=False``, for NumPy code) and writeable if asked."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    allowed = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,)))
    if value.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{name} must be {names}, got {value.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {value.shape}")
    if shape is not None and any(
        want is not None and got != want for got, want in zip(value.shape, shape, strict=True)
    ):
        want = tuple("any" if d is None else d for d in shape)
        raise ValueError(f"{name} must have shape {want}, got {value.shape}".replace("'", ""))
    if contiguous and not value.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray makes a copy)")
    if writeable and not value.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return value


def block(value: Any, name: str = "block") -> int:
    """A positive int (a block or chunk size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def offsets(value: Any, size: int, name: str = "offsets") -> np.ndarray:
    """Tensor boundaries as ``int64[T + 1]``: from 0, non-decreasing, ending at ``size``."""
    bounds = np.asarray(value)
    if bounds.ndim != 1 or bounds.size < 1 or bounds.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array, got {bounds.dtype}{bounds.shape}")
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    if bounds[0] != 0 or bounds[-1] != size or (np.diff(bounds) < 0).any():
        raise ValueError(
            f"{name} must rise from 0 to {size} (the columns), got {bounds.tolist()[:8]}"
            + ("..." if bounds.size > 8 else "")
        )
    return bounds
