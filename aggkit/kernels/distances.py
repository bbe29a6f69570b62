"""Distances between client rows (Krum, Bulyan) and from client rows to a center (RFA, centered
clipping), in float64, in one pass over the client matrix.

Pairwise (:func:`pairwise_sq_distances`). Krum needs ``||x_i - x_j||^2`` for every pair of the
``K`` contributions ``x_i = coef[i] * matrix[i]``. Forming the ``K^2 / 2`` difference vectors
(Flower's ``_compute_distances``) reads the matrix ``K`` times; here they come from the Gram matrix
``G = Y Y^T`` as ``G_ii + G_jj - 2 G_ij``, reading the matrix once. The columns are cut into blocks
of :func:`gram_columns`; each block's contributions are copied into a float64 scratch matrix and
*centered* on a reference row (its contribution is subtracted: distances do not change, and the
Gram entries shrink to the size of the spread, so that ``G_ii + G_jj - 2 G_ij`` does not cancel
away the distance of two updates that share a large common part). The reference is a typical
row, not the mean: one huge client would dominate a mean and, through it, every entry. Each
block's Gram matrix is formed in 4 x 4 tiles of rows (each loaded value feeds four products) and
added, in float64, to its task's partial Gram matrix; the :data:`TASKS` partial sums are added in
task order. Two identical rows get a distance of exactly 0 (their products are the same numbers,
summed in the same order).

To a center (:func:`center_distances`): ``||coef[i] * matrix[i] - center||`` for every row, as a
sum of squared differences in float64 (no cancellation), per block and task as above.

Determinism: the work split (blocks and tasks) is fixed, not derived from the thread count, and
partial sums are combined in a fixed order, so the bits do not depend on the thread count. The dot
products of a block are vectorized by reassociating their sums (``fastmath_reassoc``), so their
bits depend on the compiled vector width; the NumPy twins are therefore compared with a tolerance.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from aggkit import _checks
from aggkit.kernels._jit import kernel, threads_for
from aggkit.kernels.weighted_sum import add_rows, weighted_row_sum_numpy

__all__ = [
    "GRAM_BYTES",
    "STEP_BYTES",
    "TASKS",
    "center_distances",
    "center_distances_numpy",
    "center_step",
    "center_step_numpy",
    "gram_columns",
    "pairwise_sq_distances",
    "pairwise_sq_distances_numpy",
    "step_columns",
]

#: Bytes of the float64 scratch block of :func:`pairwise_sq_distances` (``K`` centered rows of
#: :func:`gram_columns` columns): half of a 1 MiB L2, where it stays while its ``K^2 / 2`` dot
#: products run over it.
GRAM_BYTES = 1 << 19
#: Parallel tasks; a fixed number so that the sums' order never depends on the thread count.
TASKS = 32


def gram_columns(k: int) -> int:
    """Columns per block of :func:`pairwise_sq_distances` for ``k`` rows: the largest power of
    two whose float64 block (``k`` rounded up to 4 rows) fits :data:`GRAM_BYTES`, within [256,
    2048]. Fixed by the shape, not by the thread count. Each 4 x 4 tile of dot products ends with
    16 horizontal sums per block, so longer blocks spend less on them; at K=100, 512 columns
    (400 KiB) ran the kernel 1.1-1.2x faster than 256, and 1024 (800 KiB, no longer in L2 beside
    the rows streaming in) slower.

    >>> gram_columns(100), gram_columns(32), gram_columns(1000), gram_columns(2)
    (512, 2048, 256, 2048)
    """
    kp = max(4, -(-k // 4) * 4)
    fit = max(1, GRAM_BYTES // (kp * 8))
    return int(min(1 << 11, max(1 << 8, 1 << (fit.bit_length() - 1))))


@kernel
def _centered_block(matrix, coef, ref, lo, hi, y, center):  # pragma: no cover
    """``y[r, :m] = coef[r] * matrix[r, lo:hi] - coef[ref] * matrix[ref, lo:hi]`` in float64
    (``m = hi - lo``; a row of coefficient 0 is zeros and is not read), the rest of ``y`` zeros.
    One pass over the block; compiled without ``contract``, so that the product and the
    difference are rounded separately (no FMA) as in the NumPy twin, and the reference row
    becomes exactly zeros."""
    k = matrix.shape[0]
    width = y.shape[1]
    m = hi - lo
    for j in range(width):
        center[j] = 0.0
    cr = coef[ref]
    if cr != 0.0:
        sref = matrix[ref, lo:hi]
        for j in range(m):
            center[j] = cr * np.float64(sref[j])
    for r in range(k):
        dst = y[r]
        c = coef[r]
        if c == 0.0:
            for j in range(m):
                dst[j] = -center[j]
        else:
            src = matrix[r, lo:hi]
            for j in range(m):
                dst[j] = c * np.float64(src[j]) - center[j]
        for j in range(m, width):
            dst[j] = 0.0


@kernel(parallel=True, fastmath_reassoc=True, fastmath_contract=True)
def _gram(matrix, coef, ref, width, partial):  # pragma: no cover
    n = matrix.shape[1]
    kp = partial.shape[1]  # k rounded up to a multiple of 4; the extra rows stay zero
    num_blocks = (n + width - 1) // width
    tasks = partial.shape[0]
    per_task = (num_blocks + tasks - 1) // tasks
    for t in prange(tasks):
        y = np.zeros((kp, width), dtype=np.float64)
        center = np.empty(width, dtype=np.float64)
        g = partial[t]
        for b in range(t * per_task, min((t + 1) * per_task, num_blocks)):
            lo = b * width
            _centered_block(matrix, coef, ref, lo, min(lo + width, n), y, center)
            for i in range(0, kp, 4):
                a0 = y[i]
                a1 = y[i + 1]
                a2 = y[i + 2]
                a3 = y[i + 3]
                for jj in range(0, i + 4, 4):
                    b0 = y[jj]
                    b1 = y[jj + 1]
                    b2 = y[jj + 2]
                    b3 = y[jj + 3]
                    s00 = s01 = s02 = s03 = 0.0
                    s10 = s11 = s12 = s13 = 0.0
                    s20 = s21 = s22 = s23 = 0.0
                    s30 = s31 = s32 = s33 = 0.0
                    for j in range(width):
                        p0 = a0[j]
                        p1 = a1[j]
                        p2 = a2[j]
                        p3 = a3[j]
                        q0 = b0[j]
                        q1 = b1[j]
                        q2 = b2[j]
                        q3 = b3[j]
                        s00 += p0 * q0
                        s01 += p0 * q1
                        s02 += p0 * q2
                        s03 += p0 * q3
                        s10 += p1 * q0
                        s11 += p1 * q1
                        s12 += p1 * q2
                        s13 += p1 * q3
                        s20 += p2 * q0
                        s21 += p2 * q1
                        s22 += p2 * q2
                        s23 += p2 * q3
                        s30 += p3 * q0
                        s31 += p3 * q1
                        s32 += p3 * q2
                        s33 += p3 * q3
                    g[i, jj] += s00
                    g[i, jj + 1] += s01
                    g[i, jj + 2] += s02
                    g[i, jj + 3] += s03
                    g[i + 1, jj] += s10
                    g[i + 1, jj + 1] += s11
                    g[i + 1, jj + 2] += s12
                    g[i + 1, jj + 3] += s13
                    g[i + 2, jj] += s20
                    g[i + 2, jj + 1] += s21
                    g[i + 2, jj + 2] += s22
                    g[i + 2, jj + 3] += s23
                    g[i + 3, jj] += s30
                    g[i + 3, jj + 1] += s31
                    g[i + 3, jj + 2] += s32
                    g[i + 3, jj + 3] += s33


def _to_sq_distances(gram: np.ndarray) -> np.ndarray:
    diag = np.diag(gram)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows: the caller checks
        out = diag[:, None] + diag[None, :] - 2.0 * gram
    np.maximum(out, 0.0, out=out)
    np.fill_diagonal(out, 0.0)
    return out


def _check_rows(matrix: np.ndarray, coef: np.ndarray) -> None:
    """``[K, n]`` float rows and one coefficient per row (the kernels do not check bounds)."""
    _checks.array(matrix, "matrix", dtype=(np.float32, np.float64), ndim=2)
    coef = np.asarray(coef)
    _checks.array(
        coef, "coef", dtype=(np.float64, np.float32), shape=(matrix.shape[0],), contiguous=False
    )


def pairwise_sq_distances(
    matrix: np.ndarray, coef: np.ndarray, reference: int = 0, *, width: int | None = None
) -> np.ndarray:
    """``float64[K, K]``: squared L2 distances between the contributions ``coef[i] * matrix[i]``.

    Every contribution is taken relative to row ``reference``'s (distances do not change): pick a
    typical row (Krum takes the one of median norm), so that neither a large part common to all
    rows nor one huge row can cancel the others' distances away.

    A row with coefficient 0 is the zero vector (its values are not read). Non-finite values give
    non-finite distances (the caller checks finiteness first). The result is symmetric with a zero
    diagonal and no negative entry.
    The columns are cut into blocks of ``width`` (default :func:`gram_columns`), each centered
    on its own part of the reference row.

    Examples
    --------
    >>> m = np.array([[0, 0], [3, 4], [6, 8]], np.float32)
    >>> pairwise_sq_distances(m, np.ones(3)).tolist()
    [[0.0, 25.0, 100.0], [25.0, 0.0, 25.0], [100.0, 25.0, 0.0]]
    """
    _check_rows(matrix, coef)
    k, n = matrix.shape
    if k == 0:
        return np.zeros((0, 0))
    reference = _checks.integer(reference, "reference", low=0)
    if reference >= k:
        raise ValueError(f"reference must be a row index below {k}, got {reference}")
    kp = -(-k // 4) * 4
    width = gram_columns(k) if width is None else _checks.integer(width, "width", low=1)
    num_blocks = -(-n // width)
    tasks = max(1, min(TASKS, num_blocks))
    partial = np.zeros((tasks, kp, kp))
    if n:
        with threads_for(tasks, elements=matrix.size):
            _gram(
                matrix,
                np.ascontiguousarray(coef, dtype=np.float64),
                reference,
                width,
                partial,
            )
    gram = partial[0].copy()
    for t in range(1, tasks):
        gram += partial[t]
    gram = gram[:k, :k]
    lower = np.tril(gram)
    return _to_sq_distances(lower + np.tril(gram, -1).T)


def pairwise_sq_distances_numpy(
    matrix: np.ndarray, coef: np.ndarray, reference: int = 0, *, width: int | None = None
) -> np.ndarray:
    """NumPy twin of :func:`pairwise_sq_distances`: the same blocks relative to the reference
    row, Gram matrices by ``np.dot`` (equal up to the order of each dot product's sum)."""
    k, n = matrix.shape
    c = np.asarray(coef, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        contrib = np.where(c == 0, 0.0, c * matrix.astype(np.float64))
    gram = np.zeros((k, k))
    width = gram_columns(k) if width is None else width
    for lo in range(0, n, width):
        y = contrib[:, lo : lo + width]
        y = y - y[reference]
        gram += y @ y.T
    return _to_sq_distances(gram)


@kernel(fastmath_reassoc=True, fastmath_contract=True)
def _block_center_sq(matrix, active, coef, v, lo, hi, acc):  # pragma: no cover
    """``acc[r] += ||coef[r] * matrix[r, lo:hi] - v||^2`` for every row (``v`` is the center's
    block). ``active`` lists the rows with ``coef != 0``, four at a time (each load of ``v``
    feeds four rows); the others are zeros and are not read: they add ``||v||^2``."""
    k = matrix.shape[0]
    m = hi - lo
    num_active = active.shape[0]
    if num_active < k:
        s = 0.0
        for j in range(m):
            vj = np.float64(v[j])
            s += vj * vj
        for r in range(k):
            if coef[r] == 0.0:
                acc[r] += s
    i = 0
    while i + 4 <= num_active:
        r0 = active[i]
        r1 = active[i + 1]
        r2 = active[i + 2]
        r3 = active[i + 3]
        c0 = coef[r0]
        c1 = coef[r1]
        c2 = coef[r2]
        c3 = coef[r3]
        x0 = matrix[r0, lo:hi]
        x1 = matrix[r1, lo:hi]
        x2 = matrix[r2, lo:hi]
        x3 = matrix[r3, lo:hi]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(m):
            vj = np.float64(v[j])
            d0 = c0 * np.float64(x0[j]) - vj
            d1 = c1 * np.float64(x1[j]) - vj
            d2 = c2 * np.float64(x2[j]) - vj
            d3 = c3 * np.float64(x3[j]) - vj
            s0 += d0 * d0
            s1 += d1 * d1
            s2 += d2 * d2
            s3 += d3 * d3
        acc[r0] += s0
        acc[r1] += s1
        acc[r2] += s2
        acc[r3] += s3
        i += 4
    while i < num_active:
        r0 = active[i]
        c0 = coef[r0]
        x0 = matrix[r0, lo:hi]
        s0 = 0.0
        for j in range(m):
            d0 = c0 * np.float64(x0[j]) - np.float64(v[j])
            s0 += d0 * d0
        acc[r0] += s0
        i += 1


@kernel(parallel=True)
def _center_sq(matrix, active, coef, center, width, partial):  # pragma: no cover
    n = matrix.shape[1]
    num_blocks = (n + width - 1) // width
    tasks = partial.shape[0]
    per_task = (num_blocks + tasks - 1) // tasks
    for t in prange(tasks):
        for b in range(t * per_task, min((t + 1) * per_task, num_blocks)):
            lo = b * width
            hi = min(lo + width, n)
            _block_center_sq(matrix, active, coef, center[lo:hi], lo, hi, partial[t])


@kernel(fastmath_reassoc=True, fastmath_contract=True)
def _block_nonfinite(v, acc):  # pragma: no cover
    """``acc[0] += sum_j v[j] * 0``: NaN once any ``v[j]`` is NaN or infinite, else 0."""
    s = 0.0
    for j in range(v.shape[0]):
        s += np.float64(v[j]) * 0.0
    acc[0] += s


@kernel(parallel=True)
def _step_center_sq(
    matrix,
    flat,
    rows,
    row_coef,
    active,
    coef,
    keep,
    denominator,
    width,
    center,
    out,
    partial,
    distances,
):  # pragma: no cover
    """``flat`` is ``matrix.reshape(-1)``, from the caller (for ``add_rows``)."""
    n = matrix.shape[1]
    num_blocks = (n + width - 1) // width
    tasks = partial.shape[0]
    per_task = (num_blocks + tasks - 1) // tasks
    for t in prange(tasks):
        acc = np.empty(width, dtype=np.float64)
        for b in range(t * per_task, min((t + 1) * per_task, num_blocks)):
            lo = b * width
            hi = min(lo + width, n)
            m = hi - lo
            for j in range(m):
                acc[j] = 0.0
            add_rows(flat, n, rows, row_coef, acc, lo, hi)
            v = out[lo:hi]
            if keep == 0.0:  # the old center is not read
                for j in range(m):
                    v[j] = acc[j] / denominator
            else:
                old = center[lo:hi]
                for j in range(m):
                    v[j] = old[j] * keep + acc[j] / denominator
            if distances:  # the block's rows are still in cache
                _block_center_sq(matrix, active, coef, v, lo, hi, partial[t])
            else:  # a non-finite center shows as NaN in partial[t, 0]
                _block_nonfinite(v, partial[t])


#: Columns per block of :func:`center_distances`: long runs of each row for the prefetcher.
CENTER_COLUMNS = 1 << 13


def center_distances(matrix: np.ndarray, coef: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``float64[K]``: ``||coef[i] * matrix[i] - center||`` (a row with coefficient 0 is zeros).

    Examples
    --------
    >>> m = np.array([[3, 4], [0, 0]], np.float32)
    >>> center_distances(m, np.array([1.0, 1.0]), np.zeros(2)).tolist()
    [5.0, 0.0]
    """
    _check_rows(matrix, coef)
    _checks.array(
        np.asarray(center),
        "center",
        dtype=(np.float32, np.float64),
        shape=(matrix.shape[1],),
        contiguous=False,
    )
    k, n = matrix.shape
    num_blocks = -(-n // CENTER_COLUMNS)
    tasks = max(1, min(TASKS, num_blocks))
    partial = np.zeros((tasks, k))
    if k and n:
        with threads_for(tasks, elements=matrix.size):
            coef = np.ascontiguousarray(coef, dtype=np.float64)
            _center_sq(
                matrix,
                np.flatnonzero(coef).astype(np.int64),
                coef,
                np.ascontiguousarray(center),
                CENTER_COLUMNS,
                partial,
            )
    return _combined_sqrt(partial)


def _combined_sqrt(partial: np.ndarray) -> np.ndarray:
    """The tasks' partial squared distances added in task order, square-rooted."""
    total = partial[0].copy()
    for t in range(1, partial.shape[0]):
        total += partial[t]
    return np.sqrt(total)


#: Bytes of client rows per block of :func:`center_step`: the block's rows are read a second
#: time, for the distances, and should still be in L2 then (half of a 1 MiB L2).
STEP_BYTES = 1 << 19


def step_columns(k: int, itemsize: int, distances: bool = True) -> int:
    """Columns per block of :func:`center_step` for ``k`` rows of ``itemsize`` bytes: with
    ``distances``, the largest power of two whose block fits :data:`STEP_BYTES`, within [256,
    8192]; without, 16,384 (nothing is read twice, and long runs of each row suit the
    prefetcher, as in :mod:`aggkit.kernels.weighted_sum`). Fixed by the shape, not by the thread
    count.

    >>> step_columns(100, 4), step_columns(32, 4), step_columns(100, 8), step_columns(100, 4, False)
    (1024, 4096, 512, 16384)
    """
    if not distances:
        return 1 << 14
    fit = max(1, STEP_BYTES // max(1, k * itemsize))
    return int(min(1 << 13, max(1 << 8, 1 << (fit.bit_length() - 1))))


def center_step(
    matrix: np.ndarray,
    coef: np.ndarray,
    row_coef: np.ndarray,
    denominator: float,
    out: np.ndarray,
    *,
    keep: float = 0.0,
    center: np.ndarray | None = None,
    distances: bool = True,
    width: int | None = None,
) -> np.ndarray:
    """One step of an iterative center (RFA's Weiszfeld, centered clipping) in one pass.

    Writes ``out = keep * center + S / denominator``, where ``S = sum_i row_coef[i] *
    matrix[i]`` over the rows with ``row_coef[i] != 0`` (in row order, the bits of
    :func:`aggkit.kernels.weighted_sum.weighted_row_sum`; with ``keep == 0`` no ``center`` is
    read, and ``out`` may be ``center``; the sum and the step are float64, rounded once to
    ``out``'s dtype). With ``distances`` it returns ``float64[K]``: ``||coef[i] * matrix[i] -
    out||`` to the *new* center, as :func:`center_distances` (``out`` must be float64 then);
    without, ``float64[1]``: 0.0 when ``out`` is finite, NaN when not (``out`` may be float32: a
    last step writes its result in the layout's dtype). The columns are cut into blocks of
    ``width`` (default :func:`step_columns`); each block's new center is computed and its
    distances added while the block's rows are still in cache, so the matrix is read from memory
    once for both: the two passes of an iteration become one.

    Non-finite rows make the center and the distances non-finite (the caller checks); a row with
    ``row_coef[i] == 0`` is not summed, one with ``coef[i] == 0`` is the zero vector, and neither
    is read for that part.

    Examples
    --------
    >>> m = np.array([[0, 0], [3, 4], [6, 8]], np.float32)
    >>> out = np.empty(2)
    >>> center_step(m, np.ones(3), np.ones(3), 3.0, out).tolist(), out.tolist()
    ([5.0, 0.0, 5.0], [3.0, 4.0])
    """
    _check_rows(matrix, coef)
    k, n = matrix.shape
    row_coef = _checks.array(row_coef, "row_coef", dtype=np.float64, shape=(k,), contiguous=False)
    out_dtypes = np.float64 if distances else (np.float32, np.float64)
    _checks.array(out, "out", dtype=out_dtypes, shape=(n,), writeable=True)
    denominator = _checks.real(denominator, "denominator")
    keep = _checks.real(keep, "keep")
    if keep != 0.0:
        if center is None:
            raise ValueError("center is required when keep != 0")
        _checks.array(center, "center", dtype=(np.float32, np.float64), shape=(n,))
    if width is None:
        width = step_columns(k, matrix.dtype.itemsize, distances)
    width = _checks.integer(width, "width", low=1)
    num_blocks = -(-n // width)
    tasks = max(1, min(TASKS, num_blocks))
    partial = np.zeros((tasks, k if distances else 1))
    if n:
        coef = np.ascontiguousarray(coef, dtype=np.float64)
        with threads_for(tasks, elements=matrix.size):
            _step_center_sq(
                matrix,
                matrix.reshape(-1),
                np.flatnonzero(row_coef).astype(np.int64),
                np.ascontiguousarray(row_coef),
                np.flatnonzero(coef).astype(np.int64),
                coef,
                keep,
                denominator,
                width,
                out if center is None else center,
                out,
                partial,
                bool(distances),
            )
    if distances:
        return _combined_sqrt(partial)
    return partial.sum(axis=0)


def center_distances_numpy(matrix: np.ndarray, coef: np.ndarray, center: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`center_distances` (equal up to the order of each sum)."""
    c = np.asarray(coef, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        contrib = np.where(c == 0, 0.0, c * matrix.astype(np.float64))
    diff = contrib - np.asarray(center, dtype=np.float64)[None, :]
    return np.sqrt((diff * diff).sum(axis=1))


def center_step_numpy(
    matrix: np.ndarray,
    coef: np.ndarray,
    row_coef: np.ndarray,
    denominator: float,
    out: np.ndarray,
    *,
    keep: float = 0.0,
    center: np.ndarray | None = None,
    distances: bool = True,
) -> np.ndarray:
    """NumPy twin of :func:`center_step`: the same center bits (a row-order weighted sum, then
    ``keep * center + S / denominator``), distances equal up to the order of each sum."""
    total = weighted_row_sum_numpy(matrix, row_coef, np.zeros(matrix.shape[1]))
    with np.errstate(all="ignore"):
        step = total / denominator if keep == 0.0 else center.astype(np.float64) * keep
        out[...] = step if keep == 0.0 else step + total / denominator
        if not distances:
            return np.array([0.0 if np.isfinite(out).all() else np.nan])
    return center_distances_numpy(matrix, coef, out)
