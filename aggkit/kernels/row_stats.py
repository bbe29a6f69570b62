"""One statistics pass over client rows: norms, per-tensor min/max and finiteness.

Every layer of a composition reads its per-client numbers from this one pass: zeroing (L1, L2 or
L-inf norm), clipping and DP (L2 norm), quantization (per-tensor min/max), secure summation
(max |x|), and the quantized sum (finiteness). Scaling is linear, so the numbers of a client scaled
by ``c >= 0`` are ``c`` times these; layers never rescan the matrix.

How it is fast (see ``docs/design.md``, "Contributions: a composition as coefficients"):

* Work is split into tasks: eight rows side by side over at most ``CHUNK`` columns of one tensor.
  Threads run the tasks (:func:`aggkit.kernels._jit.run_tasks`) and the per-task partials are
  combined afterwards in a fixed order, so the bits do not depend on the thread count.
* Loop A streams the eight row pieces from memory and sums ``x**2`` (and, in a second loop, ``|x|``
  when asked) in float64. These sums are the only loops allowed to reassociate
  (``fastmath={"reassoc"}``), which lets LLVM vectorize them; the order then depends on the
  compiled vector width, never on threads.
* Loop B computes ``max |x|`` (and per-tensor min/max when asked). Float min/max loops do not
  vectorize in numba (they run several times slower than memory), so loop B works on the float
  bits as integers: ``bits & 0x7f..f`` orders ``|x|``, and ``bits ^ ((bits >> 31) & 0x7f..f)``
  orders signed floats; integer min/max vectorizes. For float32 rows, loops A and B are one loop
  (the helpers of :func:`_sum_sq_max32_8`, with FMA in the sums of squares), which reads each
  element once; when min/max are asked for, that loop keeps the signed-order keys' minima and
  maxima instead, and ``max |x|`` follows from them. Float64 rows keep two loops, with loop B
  re-reading the pieces from cache (and a third, per row, for the keys). The measurements behind
  these choices are in ``docs/benchmarks-history.md`` ("Statistics pass").
* Finiteness: a float32 row is finite exactly when its float64 sum of squares is (a finite float32
  squared is below 1.2e77); for float64 rows a non-finite sum of squares is confirmed with
  ``np.isfinite`` on that row, and norms of rows that merely overflowed are recomputed with scaling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from aggkit import _checks
from aggkit.kernels._jit import kernel, run_tasks
from aggkit.kernels._minmax import max2, min2

__all__ = ["CHUNK", "RowStats", "row_stats", "row_stats_numpy"]

#: Elements per row per task: eight rows of 8k float32 (256 KiB) stay in L2 between the loops.
CHUNK = 1 << 13


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of a ``[K, n]`` matrix.

    Attributes
    ----------
    l2, linf : numpy.ndarray
        ``float64[K]`` norms; ``inf`` for rows that hold NaN or Inf.
    l1 : numpy.ndarray or None
        ``float64[K]``, when asked for; ``inf`` for non-finite rows.
    finite : numpy.ndarray
        ``bool[K]``: the row holds no NaN or Inf.
    tensor_min, tensor_max : numpy.ndarray or None
        ``float64[K, T]`` per-tensor minimum and maximum, when asked for; 0 for empty tensors,
        NaN for non-finite rows.
    """

    l2: np.ndarray
    linf: np.ndarray
    finite: np.ndarray
    l1: np.ndarray | None = None
    tensor_min: np.ndarray | None = None
    tensor_max: np.ndarray | None = None


# Each task reads eight rows side by side: several concurrent memory streams per thread read
# faster than one (docs/benchmarks-history.md, "Statistics pass").


@kernel(fastmath_reassoc=True, helper=True)
def _sum_sq8(x0, x1, x2, x3, x4, x5, x6, x7):  # pragma: no cover - compiled
    q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = 0.0
    for j in range(x0.shape[0]):
        v0 = np.float64(x0[j])
        v1 = np.float64(x1[j])
        v2 = np.float64(x2[j])
        v3 = np.float64(x3[j])
        v4 = np.float64(x4[j])
        v5 = np.float64(x5[j])
        v6 = np.float64(x6[j])
        v7 = np.float64(x7[j])
        q0 += v0 * v0
        q1 += v1 * v1
        q2 += v2 * v2
        q3 += v3 * v3
        q4 += v4 * v4
        q5 += v5 * v5
        q6 += v6 * v6
        q7 += v7 * v7
    return q0, q1, q2, q3, q4, q5, q6, q7


@kernel(fastmath_reassoc=True, helper=True)
def _sum_abs8(x0, x1, x2, x3, x4, x5, x6, x7):  # pragma: no cover - compiled
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for j in range(x0.shape[0]):
        s0 += abs(np.float64(x0[j]))
        s1 += abs(np.float64(x1[j]))
        s2 += abs(np.float64(x2[j]))
        s3 += abs(np.float64(x3[j]))
        s4 += abs(np.float64(x4[j]))
        s5 += abs(np.float64(x5[j]))
        s6 += abs(np.float64(x6[j]))
        s7 += abs(np.float64(x7[j]))
    return s0, s1, s2, s3, s4, s5, s6, s7


# numba widens int32 arithmetic to int64, which halves the vector width; the explicit np.int32
# casts keep the maxima in 32-bit lanes.
def _sum_sq_max32_8(keys: bool):
    """Loops A and B in one pass for float32 rows, over the eight pieces ``x[o_k : o_k + m]`` of
    the flat matrix ``x`` (and ``b[o_k : o_k + m]`` of its int32 view ``b``).

    Returns the pieces' sums of squares (with FMA) and, when ``keys`` is False, the largest
    ``bits & 0x7f..f`` of each piece (which orders ``|x|``); when ``keys`` is True, the least
    and the largest signed-order key ``bits ^ ((bits >> 31) & 0x7f..f)`` of each piece instead
    (the min/max case: ``max |x|`` follows from them, so no second pass over the rows for the
    keys). ``keys`` is a constant of the closure, so numba prunes the other branch before typing
    it (a literal argument would not be pruned: numba types and lowers both branches then).

    One loop reads each element once from memory and has no second pass over the cache (figures
    in ``docs/benchmarks-history.md``, "Statistics pass"). The pieces are read at unsigned offsets
    of the flat matrix rather than passed as sixteen slices: the same loop (and the same packed
    instructions), with a fraction of the code for numba to lower and LLVM to optimize.
    """

    def _sum_sq_max32_8_(x, b, o0, o1, o2, o3, o4, o5, o6, o7, m):  # pragma: no cover
        mask = np.int32(0x7FFFFFFF)
        q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = 0.0
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.int32(0)  # max |x| bits, or the largest keys
        n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = mask  # the least keys
        if keys:
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.int32(-mask - 1)
        for i in range(m):
            j = np.uint64(i)
            v0 = np.float64(x[o0 + j])
            v1 = np.float64(x[o1 + j])
            v2 = np.float64(x[o2 + j])
            v3 = np.float64(x[o3 + j])
            v4 = np.float64(x[o4 + j])
            v5 = np.float64(x[o5 + j])
            v6 = np.float64(x[o6 + j])
            v7 = np.float64(x[o7 + j])
            q0 += v0 * v0
            q1 += v1 * v1
            q2 += v2 * v2
            q3 += v3 * v3
            q4 += v4 * v4
            q5 += v5 * v5
            q6 += v6 * v6
            q7 += v7 * v7
            if keys:
                c0 = b[o0 + j]
                c1 = b[o1 + j]
                c2 = b[o2 + j]
                c3 = b[o3 + j]
                c4 = b[o4 + j]
                c5 = b[o5 + j]
                c6 = b[o6 + j]
                c7 = b[o7 + j]
                k0 = np.int32(c0 ^ ((c0 >> 31) & mask))
                k1 = np.int32(c1 ^ ((c1 >> 31) & mask))
                k2 = np.int32(c2 ^ ((c2 >> 31) & mask))
                k3 = np.int32(c3 ^ ((c3 >> 31) & mask))
                k4 = np.int32(c4 ^ ((c4 >> 31) & mask))
                k5 = np.int32(c5 ^ ((c5 >> 31) & mask))
                k6 = np.int32(c6 ^ ((c6 >> 31) & mask))
                k7 = np.int32(c7 ^ ((c7 >> 31) & mask))
                n0 = min2(n0, k0)
                n1 = min2(n1, k1)
                n2 = min2(n2, k2)
                n3 = min2(n3, k3)
                n4 = min2(n4, k4)
                n5 = min2(n5, k5)
                n6 = min2(n6, k6)
                n7 = min2(n7, k7)
                a0 = max2(a0, k0)
                a1 = max2(a1, k1)
                a2 = max2(a2, k2)
                a3 = max2(a3, k3)
                a4 = max2(a4, k4)
                a5 = max2(a5, k5)
                a6 = max2(a6, k6)
                a7 = max2(a7, k7)
            else:
                a0 = max2(a0, np.int32(b[o0 + j] & mask))
                a1 = max2(a1, np.int32(b[o1 + j] & mask))
                a2 = max2(a2, np.int32(b[o2 + j] & mask))
                a3 = max2(a3, np.int32(b[o3 + j] & mask))
                a4 = max2(a4, np.int32(b[o4 + j] & mask))
                a5 = max2(a5, np.int32(b[o5 + j] & mask))
                a6 = max2(a6, np.int32(b[o6 + j] & mask))
                a7 = max2(a7, np.int32(b[o7 + j] & mask))
        return (
            (q0, q1, q2, q3, q4, q5, q6, q7),
            (
                np.int64(a0),
                np.int64(a1),
                np.int64(a2),
                np.int64(a3),
                np.int64(a4),
                np.int64(a5),
                np.int64(a6),
                np.int64(a7),
            ),
            (
                np.int64(n0),
                np.int64(n1),
                np.int64(n2),
                np.int64(n3),
                np.int64(n4),
                np.int64(n5),
                np.int64(n6),
                np.int64(n7),
            ),
        )

    _sum_sq_max32_8_.__qualname__ = f"_sum_sq_{'keys' if keys else 'abs_max'}32_8"
    return kernel(_sum_sq_max32_8_, fastmath_reassoc=True, fastmath_contract=True, helper=True)


# The two cases as module-level helpers (a kernel calls them as globals; nothing compiles until a
# kernel that calls one compiles).
_sum_sq_abs_max32_8 = _sum_sq_max32_8(keys=False)
_sum_sq_keys32_8 = _sum_sq_max32_8(keys=True)


@kernel(helper=True)
def _abs_max64_8(x0, x1, x2, x3, x4, x5, x6, x7):  # pragma: no cover - compiled
    mask = np.int64(0x7FFFFFFFFFFFFFFF)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.int64(0)
    for j in range(x0.shape[0]):
        a0 = max2(a0, x0[j] & mask)
        a1 = max2(a1, x1[j] & mask)
        a2 = max2(a2, x2[j] & mask)
        a3 = max2(a3, x3[j] & mask)
        a4 = max2(a4, x4[j] & mask)
        a5 = max2(a5, x5[j] & mask)
        a6 = max2(a6, x6[j] & mask)
        a7 = max2(a7, x7[j] & mask)
    return a0, a1, a2, a3, a4, a5, a6, a7


@kernel(helper=True)
def _key_min_max64(x):  # pragma: no cover - compiled
    mask = np.int64(0x7FFFFFFFFFFFFFFF)
    kmin = mask
    kmax = -mask - 1
    for j in range(x.shape[0]):
        b = x[j]
        k = b ^ ((b >> 63) & mask)
        kmin = min2(kmin, k)
        kmax = max2(kmax, k)
    return kmin, kmax


@functools.cache
def _partials_kernel(wide: bool, with_l1: bool, with_minmax: bool):
    """The statistics kernel for one case, compiled only when first used.

    ``wide`` (float64 rows), ``with_l1`` and ``with_minmax`` are constants of the closure, so
    numba prunes the branches a case does not take before it types and compiles them: a float32
    round without L1 norms or min/max compiles neither the float64 helpers nor ``_sum_abs8``
    nor the key min/max loops (one parallel kernel with every branch cost 4.5 s of CPU time to
    compile, most of the first round of ``robust_aggregator()`` with an empty cache). Numba's
    disk cache keys closures on their cells' values, so the cases are cached side by side. The
    kernel is serial over a range of tasks; :func:`aggkit.kernels._jit.run_tasks` runs the tasks
    on threads (a parallel kernel took 1.6-3 times as long to compile).
    """

    def _row_stats_partials(
        first, stop, flat, flat_bits, n, groups, starts, ends, p_sq, p_abs, p_bits
    ):  # pragma: no cover - compiled
        # flat and flat_bits: the matrix and its integer view in C order, from the caller (a
        # reshape here is one more compilation of numba's reshape code with an empty cache);
        # element j of row r's piece is flat[r * n + lo + j].
        num_tasks = starts.shape[0]
        for t in range(first, stop):
            g = t // num_tasks
            c = t - g * num_tasks
            lo = starts[c]
            hi = ends[c]
            r0 = groups[g, 0]
            r1 = groups[g, 1]
            r2 = groups[g, 2]
            r3 = groups[g, 3]
            r4 = groups[g, 4]
            r5 = groups[g, 5]
            r6 = groups[g, 6]
            r7 = groups[g, 7]
            m = hi - lo
            if wide or with_l1:
                s0, s1, s2, s3 = r0 * n + lo, r1 * n + lo, r2 * n + lo, r3 * n + lo
                s4, s5, s6, s7 = r4 * n + lo, r5 * n + lo, r6 * n + lo, r7 * n + lo
                x0, x1, x2, x3 = (
                    flat[s0 : s0 + m],
                    flat[s1 : s1 + m],
                    flat[s2 : s2 + m],
                    flat[s3 : s3 + m],
                )
                x4, x5, x6, x7 = (
                    flat[s4 : s4 + m],
                    flat[s5 : s5 + m],
                    flat[s6 : s6 + m],
                    flat[s7 : s7 + m],
                )
            if wide:
                q = _sum_sq8(x0, x1, x2, x3, x4, x5, x6, x7)
                a = _abs_max64_8(
                    flat_bits[s0 : s0 + m],
                    flat_bits[s1 : s1 + m],
                    flat_bits[s2 : s2 + m],
                    flat_bits[s3 : s3 + m],
                    flat_bits[s4 : s4 + m],
                    flat_bits[s5 : s5 + m],
                    flat_bits[s6 : s6 + m],
                    flat_bits[s7 : s7 + m],
                )
            else:
                # Element j of row r's piece is flat[r * n + lo + j]: unsigned offsets, so the
                # helper indexes without slices (and without negative-index checks).
                o0 = np.uint64(r0 * n + lo)
                o1 = np.uint64(r1 * n + lo)
                o2 = np.uint64(r2 * n + lo)
                o3 = np.uint64(r3 * n + lo)
                o4 = np.uint64(r4 * n + lo)
                o5 = np.uint64(r5 * n + lo)
                o6 = np.uint64(r6 * n + lo)
                o7 = np.uint64(r7 * n + lo)
                if with_minmax:
                    q, a, kn = _sum_sq_keys32_8(flat, flat_bits, o0, o1, o2, o3, o4, o5, o6, o7, m)
                else:
                    q, a, kn = _sum_sq_abs_max32_8(
                        flat, flat_bits, o0, o1, o2, o3, o4, o5, o6, o7, m
                    )
            if with_l1:
                s = _sum_abs8(x0, x1, x2, x3, x4, x5, x6, x7)
            for k in range(8):
                r = groups[g, k]
                p_sq[r, c] = q[k]
                if with_l1:
                    p_abs[r, c] = s[k]
                if wide:
                    p_bits[r, c, 0] = a[k]
                    if with_minmax:
                        kmin, kmax = _key_min_max64(flat_bits[r * n + lo : r * n + hi])
                        p_bits[r, c, 1] = kmin
                        p_bits[r, c, 2] = kmax
                elif with_minmax:
                    # Back from the keys to the float bits; their magnitudes' maximum is max |x|
                    # (0 for the piece of an empty tensor, whose keys keep their start values).
                    kmin = kn[k]
                    kmax = a[k]
                    a_k = 0
                    if kmin <= kmax:
                        a_k = max2(
                            (kmin ^ ((kmin >> 31) & 0x7FFFFFFF)) & 0x7FFFFFFF,
                            (kmax ^ ((kmax >> 31) & 0x7FFFFFFF)) & 0x7FFFFFFF,
                        )
                    p_bits[r, c, 0] = a_k
                    p_bits[r, c, 1] = kmin
                    p_bits[r, c, 2] = kmax
                else:
                    p_bits[r, c, 0] = a[k]

    _row_stats_partials.__qualname__ = (
        f"_row_stats_partials_{'f64' if wide else 'f32'}{'_l1' * with_l1}{'_minmax' * with_minmax}"
    )
    return kernel(_row_stats_partials)


def _row_groups(num_rows: int) -> np.ndarray:
    """Rows in groups of eight; the last group repeats its last row (recomputed, same values)."""
    rows = np.arange(num_rows, dtype=np.int64)
    pad = (-num_rows) % 8
    if num_rows and pad:
        rows = np.concatenate([rows, np.full(pad, num_rows - 1, dtype=np.int64)])
    return rows.reshape(-1, 8)


def _tasks(offsets: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every tensor into pieces of at most ``chunk`` elements (one piece for an empty one)."""
    starts, ends, owner = [], [], []
    for t in range(len(offsets) - 1):
        lo, hi = int(offsets[t]), int(offsets[t + 1])
        cuts = list(range(lo, hi, chunk)) or [lo]
        starts += cuts
        ends += [min(c + chunk, hi) for c in cuts]
        owner += [t] * len(cuts)
    return (
        np.asarray(starts, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        np.asarray(owner, dtype=np.int64),
    )


def _keys_to_float(keys: np.ndarray, float_dtype: np.dtype) -> np.ndarray:
    """Invert the signed-order key ``bits ^ ((bits >> w-1) & mask)`` back to float values."""
    int_dtype = np.int64 if float_dtype == np.float64 else np.int32
    keys = keys.astype(int_dtype)
    mask = np.array(np.iinfo(int_dtype).max, dtype=int_dtype)
    shift = np.array(np.iinfo(int_dtype).bits - 1, dtype=int_dtype)
    bits = keys ^ ((keys >> shift) & mask)
    return bits.view(float_dtype).astype(np.float64)


def row_stats(
    matrix: np.ndarray,
    offsets: np.ndarray,
    *,
    with_l1: bool = False,
    with_minmax: bool = False,
    chunk: int = CHUNK,
) -> RowStats:
    """Norms, finiteness and (optionally) per-tensor min/max of every row, in one pass.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``[K, n]`` C-contiguous float32 or float64 client rows.
    offsets : numpy.ndarray
        ``int64[T + 1]`` tensor boundaries (``Layout.offsets``).
    with_l1, with_minmax : bool
        Also compute L1 norms / per-tensor min and max (each costs a little more compute).
    chunk : int
        Task size; results do not depend on it beyond float rounding of the sums.

    Returns
    -------
    RowStats

    Examples
    --------
    >>> import numpy as np
    >>> m = np.array([[3, -4, 0], [1, np.nan, 0]], np.float32)
    >>> s = row_stats(m, np.array([0, 2, 3]), with_minmax=True)
    >>> s.l2, s.linf, s.finite
    (array([ 5., inf]), array([ 4., inf]), array([ True, False]))
    >>> s.tensor_min[0], s.tensor_max[0]
    (array([-4.,  0.]), array([3., 0.]))
    """
    _checks.array(matrix, "matrix", dtype=(np.float32, np.float64), ndim=2)
    offsets = _checks.offsets(offsets, matrix.shape[1])
    chunk = _checks.integer(chunk, "chunk", low=1)
    num_rows = matrix.shape[0]
    num_tensors = len(offsets) - 1
    starts, ends, owner = _tasks(offsets, chunk)
    num_tasks = len(starts)
    wide = matrix.dtype == np.float64
    bits = matrix.view(np.int64 if wide else np.int32)
    p_sq = np.empty((num_rows, num_tasks))
    p_abs = np.empty((num_rows, num_tasks) if with_l1 else (0, 0))
    p_bits = np.empty((num_rows, num_tasks, 3), dtype=np.int64)
    groups = _row_groups(num_rows)
    if num_rows and num_tasks:
        partials = _partials_kernel(bool(wide), bool(with_l1), bool(with_minmax))
        run_tasks(
            partials,
            len(groups) * num_tasks,
            *(matrix.reshape(-1), bits.reshape(-1), matrix.shape[1], groups, starts, ends),
            *(p_sq, p_abs, p_bits),
            elements=matrix.size,
        )
    sq = p_sq.sum(axis=1)
    finite = np.isfinite(sq)
    int_dtype = np.int64 if wide else np.int32
    linf = np.max(p_bits[:, :, 0], axis=1, initial=0).astype(int_dtype).view(matrix.dtype)
    linf = linf.astype(np.float64)
    l2 = np.sqrt(sq)
    l1 = p_abs.sum(axis=1) if with_l1 else None
    if with_l1:
        finite &= np.isfinite(l1)
    for r in np.flatnonzero(~finite):
        if wide and np.isfinite(matrix[r]).all():  # the float64 sums overflowed; the row is fine
            finite[r] = True
            x = matrix[r] / linf[r]
            l2[r] = linf[r] * np.sqrt(np.dot(x, x))
            if with_l1:
                l1[r] = linf[r] * np.abs(x).sum()
    l2[~finite] = np.inf
    linf[~finite] = np.inf
    if with_l1:
        l1[~finite] = np.inf
    tensor_min = tensor_max = None
    if with_minmax:
        tensor_min = np.zeros((num_rows, num_tensors))
        tensor_max = np.zeros((num_rows, num_tensors))
        sizes = np.diff(offsets)
        for t in np.flatnonzero(sizes > 0):
            mine = owner == t
            tensor_min[:, t] = _keys_to_float(p_bits[:, mine, 1].min(axis=1), matrix.dtype)
            tensor_max[:, t] = _keys_to_float(p_bits[:, mine, 2].max(axis=1), matrix.dtype)
        tensor_min[~finite] = np.nan
        tensor_max[~finite] = np.nan
    return RowStats(
        l2=l2, linf=linf, finite=finite, l1=l1, tensor_min=tensor_min, tensor_max=tensor_max
    )


def row_stats_numpy(
    matrix: np.ndarray, offsets: np.ndarray, *, with_l1: bool = False, with_minmax: bool = False
) -> RowStats:
    """NumPy twin of :func:`row_stats` (equal up to float rounding of the sums)."""
    x = matrix.astype(np.float64)
    finite = np.isfinite(x).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        l2 = np.linalg.norm(x, axis=1) if x.shape[1] else np.zeros(len(x))
        linf = np.abs(x).max(axis=1, initial=0.0)
        l1 = np.abs(x).sum(axis=1) if with_l1 else None
    l2 = np.where(finite, l2, np.inf)
    linf = np.where(finite, linf, np.inf)
    if with_l1:
        l1 = np.where(finite, l1, np.inf)
    tensor_min = tensor_max = None
    if with_minmax:
        tensor_min = np.zeros((len(x), len(offsets) - 1))
        tensor_max = np.zeros((len(x), len(offsets) - 1))
        for t in range(len(offsets) - 1):
            segment = x[:, offsets[t] : offsets[t + 1]]
            if segment.shape[1]:
                tensor_min[:, t] = segment.min(axis=1)
                tensor_max[:, t] = segment.max(axis=1)
        tensor_min[~finite] = np.nan
        tensor_max[~finite] = np.nan
    return RowStats(
        l2=l2, linf=linf, finite=finite, l1=l1, tensor_min=tensor_min, tensor_max=tensor_max
    )
