"""Coordinate-wise order statistics of client rows: median, trimmed mean, Bulyan's closest mean.

Each output coordinate ``j`` is a function of the sorted values ``s[0] <= ... <= s[k-1]`` of the
contributions ``coef[r] * matrix[r, j]`` of the rows ``r`` in ``rows`` (computed in float64 and
rounded to the matrix dtype, as a client would send its scaled update; exact for coefficient 1);
the statistics are then computed in float64 and rounded once to the output dtype:

* ``MEDIAN``: ``(s[(k-1)//2] + s[k//2]) / 2`` (``np.median``'s definition);
* ``TRIMMED``: ``(s[start] + ... + s[start+count-1]) / count``, summed in that order in float64
  (the trimmed mean with ``start`` values cut at each end, ``count = k - 2 * start``);
* ``CLOSEST``: the mean of the ``count`` values closest to the median, summed in ascending order
  (Bulyan's second step). They form a window ``s[l:l+count]``; ``l`` is the number of ``i`` in
  ``[0, k - count)`` with ``m - s[i] > s[i+count] - m``, so a tie in distance keeps the lower
  value.

How (speed without a K x n copy). The columns are cut into blocks of :data:`LANES` columns; a
block's ``k`` rows are copied (with their coefficients) into a ``k x LANES`` scratch matrix that
stays in the L1 cache, and each column of it is sorted by a sorting network (Batcher's odd-even
merge sort, trimmed to ``k`` wires and to the comparators that reach the wires the statistic
reads): every comparator is a ``min``/``max`` over a contiguous run of :data:`LANES` lanes, which
the compiler vectorizes. ``np.median`` over a ``[K, n]`` array instead runs introselect column by
column. Memory beyond the input: one scratch matrix per task (``k * LANES`` values, 25 KiB for
100 float32 rows) and the ``n`` outputs; nothing ``K x n``.

Determinism. A sorting network's output is the sorted multiset exactly (``min`` and ``max`` do not
round), so the result does not depend on the thread count, and the NumPy
twin (``np.sort`` and the same sums) gives the same bits. ``-0.0`` is turned into ``+0.0`` as the
values are loaded (``v + 0.0``), so equal values are equal bit for bit and their order does not
matter. Rows whose coefficient is 0 contribute exact zeros (their values are not read). Non-finite
values make :func:`order_statistic` return ``False`` in its ``finite`` flag (the caller names the
client); the outputs are then meaningless.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from aggkit import _checks
from aggkit.kernels._jit import kernel, threads_for

__all__ = [
    "CLOSEST",
    "MEDIAN",
    "TRIMMED",
    "block_width",
    "order_statistic",
    "order_statistic_numpy",
    "sorting_network",
]

MEDIAN, TRIMMED, CLOSEST = 0, 1, 2

#: Columns a comparator works on at once: a ``min``/``max`` over 64 contiguous lanes vectorized
#: (32 and more did; 8 and 16 did not), and ``k x 64`` values (25 KiB for 100 float32 rows) stay
#: in L1 while the network runs over them.
LANES = 64
#: Bytes of a block's scratch copy (``k`` rows x ``width`` columns, in L2). Copying only 64 columns
#: of each row at a time is slow (the prefetcher does not follow 100 streams of 256 bytes; see
#: ``docs/benchmarks-history.md``, "Order statistics"); long rows are read as fast as the network
#: runs.
SCRATCH_BYTES = 1 << 19
#: Parallel tasks the blocks are dealt to (each allocates one scratch matrix); fixed, so that the
#: work split never depends on the thread count (the bits would not either: columns are
#: independent).
TASKS = 64


@functools.lru_cache(maxsize=256)
def _batcher(k: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on the next power of two >= k, without comparators that
    touch a wire ``>= k`` (those wires hold +inf and such comparators do nothing)."""
    size = 1
    while size < k:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        step = p
        while step >= 1:
            for j in range(step % p, size - step, 2 * step):
                for i in range(min(step, size - j - step)):
                    a, b = i + j, i + j + step
                    if a // (2 * p) == b // (2 * p) and b < k:
                        pairs.append((a, b))
            step //= 2
        p *= 2
    return tuple(pairs)


@functools.lru_cache(maxsize=256)
def sorting_network(k: int, first: int = 0, stop: int | None = None) -> np.ndarray:
    """``int64[C, 2]`` comparators ``(a, b)``, ``a < b`` (min to ``a``, max to ``b``) that sort
    ``k`` wires enough for wires ``first .. stop-1`` to hold their sorted values.

    Comparators that cannot reach those wires are dropped (a median over 100 wires keeps fewer
    than the full network's). Cached per arguments.

    Examples
    --------
    >>> sorting_network(2).tolist()
    [[0, 1]]
    >>> len(sorting_network(100)) > len(sorting_network(100, 49, 51))
    True
    """
    stop = k if stop is None else stop
    needed = set(range(first, stop))
    kept = []
    for a, b in reversed(_batcher(k)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    kept.reverse()
    out = np.array(kept, dtype=np.int64).reshape(-1, 2)
    out.flags.writeable = False
    return out


@kernel(inline=True)
def _middle(buf, lo, hi, so, out, w):  # pragma: no cover
    """``out[j] = (buf[lo, so + j] + buf[hi, so + j]) / 2`` in float64 for ``j < w``: the median
    of a sorted block's lanes (``lo``, ``hi``: its middle rows)."""
    x = buf[lo, so : so + LANES]
    y = buf[hi, so : so + LANES]
    for j in range(w):
        out[j] = (np.float64(x[j]) + np.float64(y[j])) * 0.5


@kernel(parallel=True)
def _order_statistic(
    matrix, rows, coef, comps, mode, start, count, width, out, bad, zero
):  # pragma: no cover
    n = matrix.shape[1]
    k = rows.shape[0]
    num_blocks = (n + width - 1) // width
    tasks = bad.shape[0]
    per_task = (num_blocks + tasks - 1) // tasks
    mid_lo = (k - 1) // 2
    mid_hi = k // 2
    for t in prange(tasks):
        buf = np.empty((k, width), dtype=matrix.dtype)
        acc = np.empty(LANES, dtype=np.float64)
        med = np.empty(LANES, dtype=np.float64)
        shift = np.empty(LANES, dtype=np.int64)
        check = np.zeros(LANES, dtype=matrix.dtype)
        for b in range(t * per_task, min((t + 1) * per_task, num_blocks)):
            lo = b * width
            hi = min(lo + width, n)
            m = hi - lo
            padded = (m + LANES - 1) // LANES * LANES
            # Copy the block's rows: long runs of one row, which the prefetcher follows.
            for r in range(k):
                dst = buf[r]
                c = coef[rows[r]]
                if c == 0.0:
                    for j in range(padded):
                        dst[j] = zero
                    continue
                src = matrix[rows[r], lo:hi]
                if c == 1.0:
                    for j in range(m):
                        dst[j] = src[j] + zero  # -0.0 -> +0.0
                else:
                    for j in range(m):
                        dst[j] = c * np.float64(src[j])  # rounded to the matrix dtype
                        dst[j] = dst[j] + zero
                for j in range(m, padded):
                    dst[j] = zero
            for so in range(0, m, LANES):
                for r in range(k):
                    x = buf[r, so : so + LANES]
                    for j in range(LANES):
                        check[j] += x[j] * zero  # NaN once a value is NaN or +-Inf
                for q in range(comps.shape[0]):
                    x = buf[comps[q, 0], so : so + LANES]
                    y = buf[comps[q, 1], so : so + LANES]
                    for j in range(LANES):
                        a = x[j]
                        e = y[j]
                        x[j] = min(a, e)
                        y[j] = max(a, e)
                dst_out = out[lo + so : min(lo + so + LANES, hi)]
                w = dst_out.shape[0]
                if mode == 0:
                    _middle(buf, mid_lo, mid_hi, so, dst_out, w)
                    continue
                for j in range(LANES):
                    acc[j] = 0.0
                if mode == 1:
                    for r in range(start, start + count):
                        x = buf[r, so : so + LANES]
                        for j in range(LANES):
                            acc[j] += x[j]
                else:
                    _middle(buf, mid_lo, mid_hi, so, med, LANES)
                    for j in range(LANES):
                        shift[j] = 0
                    for i in range(k - count):
                        x = buf[i, so : so + LANES]
                        y = buf[i + count, so : so + LANES]
                        for j in range(LANES):
                            shift[j] += (med[j] - x[j]) > (y[j] - med[j])
                    for r in range(k):
                        x = buf[r, so : so + LANES]
                        for j in range(LANES):
                            inside = (shift[j] <= r) & (r < shift[j] + count)
                            acc[j] += x[j] if inside else 0.0
                for j in range(w):
                    dst_out[j] = acc[j] / count
        total = 0.0
        for j in range(LANES):
            total += check[j]
        bad[t] = total != 0.0


def block_width(k: int, itemsize: int) -> int:
    """Columns per block: a ``k x width`` scratch of about :data:`SCRATCH_BYTES`, a multiple of
    :data:`LANES` between 64 and 2048."""
    columns = SCRATCH_BYTES // (max(1, int(k)) * int(itemsize))
    return int(min(2048, max(LANES, columns // LANES * LANES)))


def _check_mode(mode: int, k: int, start: int, count: int) -> None:
    if mode not in (MEDIAN, TRIMMED, CLOSEST):
        raise ValueError(f"mode must be MEDIAN, TRIMMED or CLOSEST, got {mode!r}")
    if k < 1:
        raise ValueError("an order statistic needs at least one row")
    if mode == TRIMMED and not (0 <= start and count >= 1 and start + count <= k):
        raise ValueError(f"rows {start}..{start + count - 1} are not within 0..{k - 1}")
    if mode == CLOSEST and not 1 <= count <= k:
        raise ValueError(f"count must be in [1, {k}], got {count}")


def order_statistic(
    matrix: np.ndarray,
    rows: np.ndarray,
    coef: np.ndarray,
    out: np.ndarray,
    *,
    mode: int,
    start: int = 0,
    count: int = 1,
) -> bool:
    """Write the coordinate-wise statistic ``mode`` of ``coef[r] * matrix[r]``, ``r`` in
    ``rows``, into ``out``; return whether every value read was finite.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``[K, n]`` C-contiguous float32/float64 client rows.
    rows : numpy.ndarray
        ``int64[k]`` distinct row indices (``k >= 1``); the statistic is over these rows.
    coef : numpy.ndarray
        ``float64[K]`` non-negative coefficients (a row with coefficient 0 contributes zeros).
    out : numpy.ndarray
        ``float32[n]`` or ``float64[n]``, written in full (each value rounded once from float64).
    mode : int
        :data:`MEDIAN`, :data:`TRIMMED` (``start``, ``count``: the kept sorted positions) or
        :data:`CLOSEST` (``count``: how many values closest to the median are averaged).

    Examples
    --------
    >>> m = np.array([[1, 9], [3, 2], [2, 4]], np.float32)
    >>> out = np.empty(2, np.float32)
    >>> order_statistic(m, np.arange(3), np.ones(3), out, mode=MEDIAN), out.tolist()
    (True, [2.0, 4.0])
    """
    _checks.array(matrix, "matrix", dtype=(np.float32, np.float64), ndim=2)
    _checks.array(coef, "coef", dtype=np.float64, shape=(matrix.shape[0],))
    _checks.array(
        out, "out", dtype=(np.float32, np.float64), shape=(matrix.shape[1],), writeable=True
    )
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError(f"rows must be a 1-D integer array, got {rows.dtype}{rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= matrix.shape[0]):
        raise ValueError(f"rows must index the matrix's {matrix.shape[0]} rows, got {rows.max()}")
    k = int(rows.shape[0])
    _check_mode(mode, k, start, count)
    n = matrix.shape[1]
    if n == 0:
        return True
    if mode == MEDIAN:
        comps = sorting_network(k, (k - 1) // 2, k // 2 + 1)
    elif mode == TRIMMED:
        comps = sorting_network(k, start, start + count)
    else:
        comps = sorting_network(k)
    width = block_width(k, matrix.dtype.itemsize)
    num_blocks = -(-n // width)
    tasks = min(TASKS, num_blocks)
    bad = np.zeros(tasks, dtype=np.bool_)
    with threads_for(tasks):
        _order_statistic(
            matrix,
            np.ascontiguousarray(rows, dtype=np.int64),
            coef,
            comps,
            int(mode),
            int(start),
            int(count),
            width,
            out,
            bad,
            matrix.dtype.type(0),
        )
    return not bool(bad.any())


def order_statistic_numpy(
    matrix: np.ndarray,
    rows: np.ndarray,
    coef: np.ndarray,
    out: np.ndarray,
    *,
    mode: int,
    start: int = 0,
    count: int = 1,
) -> bool:
    """NumPy twin of :func:`order_statistic` (same bits): ``np.sort`` of the float64
    contributions, then the same sums in the same order."""
    k = int(rows.shape[0])
    _check_mode(mode, k, start, count)
    c = coef[rows][:, None]
    dtype = matrix.dtype
    with np.errstate(invalid="ignore", over="ignore"):
        values = np.where(c == 0, 0.0, c * matrix[rows].astype(np.float64)).astype(dtype)
    values += dtype.type(0)  # -0.0 -> +0.0
    finite = bool(np.isfinite(values).all())
    s = np.sort(values, axis=0).astype(np.float64)
    median = (s[(k - 1) // 2] + s[k // 2]) * 0.5
    if mode == MEDIAN:
        out[...] = median
        return finite
    acc = np.zeros(matrix.shape[1])
    if mode == TRIMMED:
        for r in range(start, start + count):
            acc += s[r]
    else:
        shift = np.zeros(matrix.shape[1], dtype=np.int64)
        for i in range(k - count):
            shift += (median - s[i]) > (s[i + count] - median)
        for r in range(k):
            acc += np.where((shift <= r) & (r < shift + count), s[r], 0.0)
    out[...] = acc / count
    return finite
