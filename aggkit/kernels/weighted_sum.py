"""The weighted sum of client rows: ``acc += sum_i coef[i] * matrix[i]`` over rows with coef != 0.

Every aggregate in aggkit ends in this pass (or a variant of it that quantizes or discretizes on
the fly): clipping, zeroing and weighting are per-client coefficients folded into it, so the client
matrix is read once.

Speed comes from the access pattern. A row-by-row loop would stream the float64 accumulator
through the cache ``K`` times. This kernel splits the columns into blocks (:func:`block_size`) and,
for each block, adds eight rows at a time, so the accumulator block stays in cache, each matrix
element is read once, and the accumulator is loaded and stored once per eight rows. Blocks are
independent, so threads run them with no reduction (:func:`aggkit.kernels._jit.run_tasks`).
Blocks are long (up to 32,768 columns, a 256 KiB accumulator block that stays in L2) because
each row's piece of a block is a separate memory stream for the hardware prefetcher. The target
is the speed of one BLAS pass ``w @ X`` over the same matrix; the measurements behind these
choices are in ``docs/benchmarks-history.md`` ("Weighted sum").

Determinism: for each column the additions happen in row order, one row at a time
(``((acc + c0*x0) + c1*x1) + ...``); no reassociation (fastmath is off). The bits therefore do not
depend on the thread count, on the block size, or on how the rows are split into calls, and the
NumPy twin reproduces them exactly. Accumulation is in float64 (int64 for integer matrices).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from aggkit import _checks
from aggkit.kernels._jit import kernel, run_tasks
from aggkit.kernels._minmax import max2, min2
from aggkit.kernels.divide_cast import divide_cast_numpy

__all__ = [
    "MAX_BLOCK",
    "MIN_BLOCK",
    "SMALL_COLUMNS",
    "block_size",
    "small_weighted_row_sum",
    "weighted_row_sum",
    "weighted_row_sum_numpy",
]

#: Columns per parallel block: at most 32,768 (a 256 KiB float64 accumulator block stays in L2) ...
MAX_BLOCK = 1 << 15
#: ... and at least 4,096, however many threads there are.
MIN_BLOCK = 1 << 12


#: ``bits & _ABS_MASK`` of a float64 reaches ``_EXP_MASK`` exactly for NaN and +-Inf.
_ABS_MASK = np.int64(0x7FFFFFFFFFFFFFFF)
_EXP_MASK = 0x7FF0000000000000
#: Passed for ``bits`` and ``top`` when finiteness is not asked for.
_NO_BITS = np.zeros(0, np.int64)
#: Passed for ``quotient`` when no division is asked for.
_NO_QUOTIENT = np.zeros(0, np.float64)


@kernel(inline=True)
def add_rows(flat, n, rows, coef, out, lo, hi):  # pragma: no cover
    """``out += sum_i coef[rows[i]] * matrix[rows[i], lo:hi]``, eight rows at a time, each column
    in row order (``((out + c0*x0) + c1*x1) + ...``); a device function of the kernels that sum
    a block of columns (this module's and :mod:`aggkit.kernels.distances`).

    ``flat`` is the ``[K, n]`` matrix's values in C order (``matrix.reshape(-1)``): element ``j``
    of row ``r``'s piece is ``flat[r * n + lo + j]``, read at unsigned offsets. numba cannot prove
    a computed signed index non-negative and keeps a negative-index branch in the loop, which
    stops LLVM from vectorizing it; unsigned offsets have no such branch, and they cost numba a
    fraction of the code of eight row slices to lower (and LLVM to optimize), for the same loop.
    """
    num_rows = rows.shape[0]
    m = hi - lo
    i = 0
    while i + 8 <= num_rows:
        o0 = np.uint64(rows[i] * n + lo)
        o1 = np.uint64(rows[i + 1] * n + lo)
        o2 = np.uint64(rows[i + 2] * n + lo)
        o3 = np.uint64(rows[i + 3] * n + lo)
        o4 = np.uint64(rows[i + 4] * n + lo)
        o5 = np.uint64(rows[i + 5] * n + lo)
        o6 = np.uint64(rows[i + 6] * n + lo)
        o7 = np.uint64(rows[i + 7] * n + lo)
        c0 = coef[rows[i]]
        c1 = coef[rows[i + 1]]
        c2 = coef[rows[i + 2]]
        c3 = coef[rows[i + 3]]
        c4 = coef[rows[i + 4]]
        c5 = coef[rows[i + 5]]
        c6 = coef[rows[i + 6]]
        c7 = coef[rows[i + 7]]
        for jj in range(m):
            j = np.uint64(jj)
            a = out[j]
            a += c0 * flat[o0 + j]
            a += c1 * flat[o1 + j]
            a += c2 * flat[o2 + j]
            a += c3 * flat[o3 + j]
            a += c4 * flat[o4 + j]
            a += c5 * flat[o5 + j]
            a += c6 * flat[o6 + j]
            a += c7 * flat[o7 + j]
            out[j] = a
        i += 8
    while i < num_rows:
        o0 = np.uint64(rows[i] * n + lo)
        c0 = coef[rows[i]]
        for jj in range(m):
            j = np.uint64(jj)
            out[j] += c0 * flat[o0 + j]
        i += 1


@functools.cache
def _sum_kernel(divide: bool):
    """The weighted sum's kernel, with (``divide``) or without the fused division of a mean.

    ``divide`` is a constant of the closure, so numba prunes the division loop before typing it
    in a round that does not divide (``dp_aggregator``'s sum, which is noised first): the loop
    took a fifth of the kernel's compile time with an empty cache (``docs/benchmarks-history.md``,
    "Cold start", fourth pass). numba's disk cache keys closures on their cells' values, so the
    two cases are cached side by side.
    """

    def _weighted_row_sum(
        first, stop, flat, rows, coef, acc, block, fresh, bits, top, quotient, denominator
    ):  # pragma: no cover
        # Blocks first .. stop - 1 of the sum (run_tasks runs the blocks on threads: a serial
        # kernel compiles in half a parallel one's time). flat is the matrix in C order,
        # matrix.reshape(-1) from the caller (see add_rows).
        n = acc.shape[0]
        for b in range(first, stop):
            lo = b * block
            hi = min2(lo + block, n)
            out = acc[lo:hi]
            m = out.shape[0]
            if fresh:  # zero the block in cache, just before its rows are added
                for j in range(m):
                    out[j] = 0
            add_rows(flat, n, rows, coef, out, lo, hi)
            if bits.shape[0]:  # while the block is in cache: its largest |value| as integer bits
                seg = bits[lo:hi]
                t = np.int64(0)
                for j in range(m):
                    t = max2(t, seg[j] & _ABS_MASK)
                top[b] = t
            if divide:  # ``acc / denominator``, while the block is in cache
                dst = quotient[lo:hi]
                for j in range(m):
                    dst[j] = out[j] / denominator

    _weighted_row_sum.__qualname__ = f"_weighted_row_sum{'_divided' * divide}"
    return kernel(_weighted_row_sum)


def _check_sum_args(
    matrix: np.ndarray, coef: np.ndarray, acc: np.ndarray, *, compiled: bool = True
) -> None:
    """The arrays of a weighted row sum: float rows into float64, integer rows into int64
    (a strided matrix is fine for the NumPy path, ``compiled=False``)."""
    _checks.array(
        matrix, "matrix", dtype=(np.float32, np.float64, np.int64), ndim=2, contiguous=compiled
    )
    k, n = matrix.shape
    integer = matrix.dtype == np.int64
    _checks.array(coef, "coef", dtype=np.int64 if integer else np.float64, shape=(k,))
    _checks.array(acc, "acc", dtype=np.int64 if integer else np.float64, shape=(n,), writeable=True)


def block_size(columns: int, threads: int) -> int:
    """Columns per block for ``columns`` on ``threads`` threads: long blocks, yet at least four per
    thread where the limits allow (so threads finish together)."""
    per_task = -(-int(columns) // (4 * max(1, int(threads))))
    return int(min(MAX_BLOCK, max(MIN_BLOCK, per_task)))


def weighted_row_sum(
    matrix: np.ndarray,
    coef: np.ndarray,
    acc: np.ndarray,
    *,
    block: int | None = None,
    fresh: bool = False,
    finite: np.ndarray | None = None,
    quotient: np.ndarray | None = None,
    denominator: float = 1.0,
) -> np.ndarray:
    """Add ``coef[i] * matrix[i]`` into ``acc`` for every row with ``coef[i] != 0``.

    Rows whose coefficient is exactly zero are skipped, so they contribute nothing even when they
    hold NaN or Inf (that is how zeroing works).

    The three options save a round's separate passes over the ``n``-long accumulator (for
    ``ak.mean`` at K=32 x 10,000,000, 80 MB each). ``fresh`` replaces a zero-fill before the sum,
    ``finite`` a check after it, and ``quotient`` the division of a mean's last block
    (:func:`aggkit.kernels.divide_cast.divide_cast`, with the same bits): each block is zeroed,
    its finiteness read and its quotient written while it is in cache. The fused division also
    saves the second kernel launch (a few percent of an ``ak.mean`` round; see
    ``docs/benchmarks-history.md``, "Fused division of a mean").

    Parameters
    ----------
    matrix : numpy.ndarray
        ``[K, n]`` C-contiguous float32/float64 (or integer) client rows.
    coef : numpy.ndarray
        ``float64[K]`` coefficients (``int64[K]`` for int64 matrices).
    acc : numpy.ndarray
        ``float64[n]`` accumulator (``int64[n]`` for int64 matrices), C-contiguous and writeable,
        updated in place. Malformed arrays raise TypeError/ValueError naming them (the compiled
        code does not check bounds).
    block : int, optional
        Columns per parallel block (default :func:`block_size` for numba's thread count); the
        result does not depend on it.
    fresh : bool
        Ignore what ``acc`` holds: the result is the sum alone, as if ``acc`` were zeros.
    finite : numpy.ndarray, optional
        ``bool[1]``, set to whether ``acc`` holds no NaN or Inf afterwards (float accumulators).
    quotient : numpy.ndarray, optional
        ``float32[n]`` or ``float64[n]`` (``acc`` itself is allowed), written in full with
        ``acc / denominator`` (a float64 division, rounded to its dtype) after the sum.
    denominator : float
        The divisor for ``quotient``.

    Returns
    -------
    numpy.ndarray
        ``acc``.

    Examples
    --------
    >>> import numpy as np
    >>> acc = np.zeros(2)
    >>> weighted_row_sum(np.array([[1, 2], [3, 4]], np.float32), np.array([0.5, 2.0]), acc)
    array([6.5, 9. ])
    """
    _check_sum_args(matrix, coef, acc)
    if quotient is not None and (
        quotient.shape != acc.shape
        or quotient.dtype not in (np.float32, np.float64)
        or acc.dtype != np.float64
    ):
        raise TypeError(
            f"quotient must be a float32/float64 vector of length {acc.size} beside a float64 "
            f"accumulator, got {quotient.dtype}{list(quotient.shape)} and {acc.dtype}"
        )
    if quotient is not None:
        _checks.array(quotient, "quotient", dtype=(np.float32, np.float64), writeable=True)
    if finite is not None:
        _checks.array(finite, "finite", dtype=np.bool_, shape=(1,), writeable=True)
    if block is not None:
        block = _checks.integer(block, "block", low=1)
    rows = np.flatnonzero(coef).astype(np.int64)
    if not (rows.size and matrix.shape[1]):
        if fresh:
            acc.fill(0)
        if finite is not None:
            finite[0] = bool(np.isfinite(acc).all())
        if quotient is not None:
            divide_cast_numpy(acc, denominator, quotient)
        return acc
    if block is None:
        block = block_size(matrix.shape[1], numba.get_num_threads())
    num_blocks = -(-matrix.shape[1] // block)
    if finite is not None and acc.dtype == np.float64:
        bits, top = acc.view(np.int64), np.zeros(num_blocks, np.int64)
    else:
        bits, top = _NO_BITS, _NO_BITS
    run_tasks(
        _sum_kernel(quotient is not None),
        num_blocks,
        matrix.reshape(-1),
        rows,
        coef,
        acc,
        block,
        bool(fresh),
        bits,
        top,
        _NO_QUOTIENT if quotient is None else quotient,
        np.float64(denominator),
    )
    if finite is not None:
        if top.size:
            finite[0] = bool(top.max() < _EXP_MASK)
        else:  # integer accumulators are finite; any other dtype is checked the NumPy way
            finite[0] = acc.dtype.kind in "iu" or bool(np.isfinite(acc).all())
    return acc


#: Sums of at most this many columns (client weights, counts, quantile records) are cheaper in
#: NumPy: launching the parallel kernel costs more than such a sum (``docs/benchmarks-history.md``,
#: "Small sums").
SMALL_COLUMNS = 16


def small_weighted_row_sum(
    matrix: np.ndarray, coef: np.ndarray, acc: np.ndarray, *, fresh: bool = False
) -> np.ndarray:
    """:func:`weighted_row_sum` in NumPy, for a matrix of a few columns (the same bits).

    ``np.add.accumulate`` down the rows is a sequential sum per column,
    ``((acc + c0 x0) + c1 x1) + ...``, as in the kernel.
    """
    _check_sum_args(matrix, coef, acc, compiled=False)
    rows = np.flatnonzero(coef)
    start = np.zeros_like(acc) if fresh else acc
    if rows.size:
        terms = coef[rows, None] * matrix[rows].astype(acc.dtype)
        acc[...] = np.add.accumulate(np.concatenate([start[None], terms]), axis=0)[-1]
    elif fresh:
        acc.fill(0)
    return acc


def weighted_row_sum_numpy(matrix: np.ndarray, coef: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`weighted_row_sum` (same bits: one row at a time, in row order)."""
    for i in np.flatnonzero(coef):
        acc += coef[i] * matrix[i].astype(acc.dtype)
    return acc
