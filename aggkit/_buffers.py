"""Accumulators and result buffers reused across rounds, so a round does not pay first-touch
page faults.

A fresh large ``np.zeros`` is mapped lazily by the operating system: the first write to each
4 KiB page faults, and those faults land inside the parallel sum kernel, where they can cost as
much as the sum itself (``docs/benchmarks-history.md``, "Reused buffers";
``docs/design.md``, "Buffers and threads").

:func:`zeros` (and :func:`empty`, for a mean's float32 result, which is written in full) hands
out a pooled buffer only when nothing but the pool refers to it (CPython reference counts; a view
of a buffer refers to it too), so a result or a view that a caller still holds is never
overwritten; otherwise it allocates. Small buffers are not pooled.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["MIN_POOLED_BYTES", "clear", "empty", "zeros"]

#: Buffers smaller than this are allocated afresh (the allocator serves them from its own pool).
MIN_POOLED_BYTES = 1 << 20
#: Buffers kept per (length, dtype), and distinct (length, dtype) keys kept (least recent out).
_PER_KEY, _KEYS = 4, 8

_lock = threading.Lock()
_pool: OrderedDict[tuple[int, str], list[np.ndarray]] = OrderedDict()
# References to a free buffer while it is checked: its slot in the pool's list, the local name
# and getrefcount's own argument.
_FREE_REFCOUNT = 3


def zeros(length: int, dtype: type | np.dtype = np.float64) -> np.ndarray:
    """A zero-filled 1-D array of ``length`` and ``dtype``, reusing a pooled one when it is free.

    The caller may hold and mutate the array; once every reference to it (and to its views) is
    gone, a later call may hand it out again, zeroed.

    Examples
    --------
    >>> import numpy as np
    >>> a = zeros(1 << 18)          # 2 MiB of float64: pooled
    >>> a[:] = 1.0
    >>> b = zeros(1 << 18)          # ``a`` is still held, so ``b`` is another buffer
    >>> b is a, float(b.sum())
    (False, 0.0)
    """
    buf, fresh = _take(length, dtype)
    if not fresh:
        buf.fill(0)
    return buf


def empty(length: int, dtype: type | np.dtype = np.float64) -> np.ndarray:
    """Like :func:`zeros` but with arbitrary contents: for a buffer the caller writes in full.

    Examples
    --------
    >>> import numpy as np
    >>> out = empty(1 << 19, np.float32)
    >>> out[:] = 2.0
    >>> out.dtype, out.shape
    (dtype('float32'), (524288,))
    """
    return _take(length, dtype)[0]


def _take(length: int, dtype: type | np.dtype) -> tuple[np.ndarray, bool]:
    """A free pooled buffer (or a new zeroed one) and whether it is new."""
    dtype = np.dtype(dtype)
    length = int(length)
    if length * dtype.itemsize < MIN_POOLED_BYTES:
        return np.zeros(length, dtype), True
    key = (length, dtype.str)
    with _lock:
        buffers = _pool.get(key)
        if buffers is None:
            buffers = _pool[key] = []
            while len(_pool) > _KEYS:
                _pool.popitem(last=False)
        _pool.move_to_end(key)
        for buf in buffers:
            if sys.getrefcount(buf) <= _FREE_REFCOUNT:
                return buf, False
        buf = np.zeros(length, dtype)
        if len(buffers) < _PER_KEY:
            buffers.append(buf)
        return buf, True


def clear() -> None:
    """Drop every pooled buffer (their memory is freed once no caller holds them)."""
    with _lock:
        _pool.clear()
