"""Distances between client rows (Krum, Bulyan) and from client rows to a center (RFA, centered
clipping), in float64, in one pass over the client matrix.

Pairwise (:func:`pairwise_sq_distances`). Krum needs ``||x_i - x_j||^2`` for every pair of the
``K`` contributions ``x_i = coef[i] * matrix[i]``. Forming the ``K^2 / 2`` difference vectors
(Flower's ``_compute_distances``) reads the matrix ``K`` times; here they come from the Gram matrix
``G = Y Y^T`` as ``G_ii + G_jj - 2 G_ij``, reading the matrix once. The columns are cut into blocks
of :data:`GRAM_COLUMNS`; each block's contributions are copied into a float64 scratch matrix and
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

__all__ = [
    "GRAM_COLUMNS",
    "TASKS",
    "center_distances",
    "center_distances_numpy",
    "pairwise_sq_distances",
    "pairwise_sq_distances_numpy",
]

#: Columns per block: a ``K x 256`` float64 scratch (200 KiB for K=100) stays in L2 while its
#: ``K^2 / 2`` dot products run over it.
GRAM_COLUMNS = 256
#: Parallel tasks; a fixed number so that the sums' order never depends on the thread count.
TASKS = 32


@kernel(parallel=True, fastmath_reassoc=True, fastmath_contract=True)
def _gram(matrix, coef, ref, width, partial):  # pragma: no cover
    k, n = matrix.shape
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
            hi = min(lo + width, n)
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
                    for j in range(width):
                        dst[j] = 0.0
                    continue
                src = matrix[r, lo:hi]
                for j in range(m):
                    dst[j] = c * np.float64(src[j])
                for j in range(m, width):
                    dst[j] = 0.0
            for r in range(k):
                dst = y[r]
                for j in range(m):
                    dst[j] -= center[j]
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


def pairwise_sq_distances(matrix: np.ndarray, coef: np.ndarray, reference: int = 0) -> np.ndarray:
    """``float64[K, K]``: squared L2 distances between the contributions ``coef[i] * matrix[i]``.

    Every contribution is taken relative to row ``reference``'s (distances do not change): pick a
    typical row (Krum takes the one of median norm), so that neither a large part common to all
    rows nor one huge row can cancel the others' distances away.

    A row with coefficient 0 is the zero vector (its values are not read). Non-finite values give
    non-finite distances (the caller checks finiteness first). The result is symmetric with a zero
    diagonal and no negative entry.

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
    num_blocks = -(-n // GRAM_COLUMNS)
    tasks = max(1, min(TASKS, num_blocks))
    partial = np.zeros((tasks, kp, kp))
    if n:
        with threads_for(tasks):
            _gram(
                matrix,
                np.ascontiguousarray(coef, dtype=np.float64),
                reference,
                GRAM_COLUMNS,
                partial,
            )
    gram = partial[0].copy()
    for t in range(1, tasks):
        gram += partial[t]
    gram = gram[:k, :k]
    lower = np.tril(gram)
    return _to_sq_distances(lower + np.tril(gram, -1).T)


def pairwise_sq_distances_numpy(
    matrix: np.ndarray, coef: np.ndarray, reference: int = 0
) -> np.ndarray:
    """NumPy twin of :func:`pairwise_sq_distances`: the same blocks relative to the reference
    row, Gram matrices by ``np.dot`` (equal up to the order of each dot product's sum)."""
    k, n = matrix.shape
    c = np.asarray(coef, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        contrib = np.where(c == 0, 0.0, c * matrix.astype(np.float64))
    gram = np.zeros((k, k))
    for lo in range(0, n, GRAM_COLUMNS):
        y = contrib[:, lo : lo + GRAM_COLUMNS]
        y = y - y[reference]
        gram += y @ y.T
    return _to_sq_distances(gram)


@kernel(parallel=True, fastmath_reassoc=True, fastmath_contract=True)
def _center_sq(matrix, coef, center, width, partial):  # pragma: no cover
    k, n = matrix.shape
    num_blocks = (n + width - 1) // width
    tasks = partial.shape[0]
    per_task = (num_blocks + tasks - 1) // tasks
    for t in prange(tasks):
        acc = partial[t]
        for b in range(t * per_task, min((t + 1) * per_task, num_blocks)):
            lo = b * width
            hi = min(lo + width, n)
            v = center[lo:hi]
            for r in range(k):
                c = coef[r]
                s = 0.0
                if c == 0.0:
                    for j in range(hi - lo):
                        s += v[j] * v[j]
                else:
                    src = matrix[r, lo:hi]
                    for j in range(hi - lo):
                        d = c * np.float64(src[j]) - v[j]
                        s += d * d
                acc[r] += s


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
        with threads_for(tasks):
            _center_sq(
                matrix,
                np.ascontiguousarray(coef, dtype=np.float64),
                np.ascontiguousarray(center, dtype=np.float64),
                CENTER_COLUMNS,
                partial,
            )
    total = partial[0].copy()
    for t in range(1, tasks):
        total += partial[t]
    return np.sqrt(total)


def center_distances_numpy(matrix: np.ndarray, coef: np.ndarray, center: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`center_distances` (equal up to the order of each sum)."""
    c = np.asarray(coef, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        contrib = np.where(c == 0, 0.0, c * matrix.astype(np.float64))
    diff = contrib - np.asarray(center, dtype=np.float64)[None, :]
    return np.sqrt((diff * diff).sum(axis=1))
