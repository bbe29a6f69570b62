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

Reference counts decide only on an interpreter where they are exact: CPython with its GIL. On
another implementation, or on a free-threaded build (``sys._is_gil_enabled()`` false), where
counts may be deferred, or if a probe at import finds that a held buffer does not count more than
a free one, :func:`refcounts_decide` is false and every call allocates afresh (slower, never
wrong).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

__all__ = [
    "ALIGNMENT",
    "MIN_POOLED_BYTES",
    "aligned_empty",
    "clear",
    "empty",
    "refcounts_decide",
    "zeros",
]

#: Buffers smaller than this are allocated afresh (the allocator serves them from its own pool).
MIN_POOLED_BYTES = 1 << 20
#: Buffers kept per (length, dtype), and distinct (length, dtype) keys kept (least recent out).
_PER_KEY, _KEYS = 4, 8

#: Bytes that :func:`aligned_empty` aligns to: a cache line and an AVX-512 vector.
ALIGNMENT = 64


def aligned_empty(length: int, dtype: type | np.dtype) -> np.ndarray:
    """``np.empty(length, dtype)`` starting on an :data:`ALIGNMENT`-byte boundary.

    NumPy's large arrays start 16 bytes past one, so every 64-byte vector load or store of a
    kernel straddles two cache lines: the FWHT of a 2**19 float32 row ran about 15% slower in such
    a buffer (``docs/benchmarks-history.md``, "Hadamard rotation, second look").

    >>> aligned_empty(1000, np.float32).ctypes.data % ALIGNMENT
    0
    """
    dtype = np.dtype(dtype)
    if ALIGNMENT % dtype.itemsize:
        return np.empty(length, dtype)
    raw = np.empty(length + ALIGNMENT // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % ALIGNMENT) // dtype.itemsize
    return raw[skip : skip + length]


_lock = threading.Lock()
_pool: OrderedDict[tuple[int, str], list[np.ndarray]] = OrderedDict()


def _probe(buffers: list, hold: bool) -> int:
    """``sys.getrefcount`` of a pooled buffer as :func:`_take` sees it (``hold``: one more
    holder)."""
    held = buffers[0] if hold else None  # noqa: F841 - the extra reference under test
    for buf in buffers:
        return sys.getrefcount(buf)
    raise AssertionError("unreachable")


# References to a free buffer while _take checks it (its slot in the pool's list, the loop name
# and getrefcount's own argument: 3 on CPython 3.11), and to one that a caller also holds.
_FREE_REFCOUNT = _probe([np.empty(0)], hold=False)
_HELD_REFCOUNT = _probe([np.empty(0)], hold=True)


def refcounts_decide() -> bool:
    """Whether buffers are reused: reference counts are exact here (see the module docstring)."""
    if sys.implementation.name != "cpython" or _HELD_REFCOUNT <= _FREE_REFCOUNT:
        return False
    gil_enabled = getattr(sys, "_is_gil_enabled", None)  # Python 3.13+
    return gil_enabled is None or bool(gil_enabled())


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
    if length * dtype.itemsize < MIN_POOLED_BYTES or not refcounts_decide():
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
