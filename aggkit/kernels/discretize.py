"""Clip, discretize and sum client rows for secure summation, in one pass over the client matrix.

Secure aggregation can only add integers: every client maps its value into ``[0, 2**32 - 1]``
(``docs/design.md``, "Secure sums of floats"), the server learns the exact integer sum, and
decodes it. These kernels do the client side for every row of the ``[K, n]`` client matrix and
add the results into one ``int64`` accumulator, applying each row's coefficient on the fly (no
scaled copy of the matrix):

* :func:`discretize_sum` (float rows): ``v = clip(coef[i] * x, lo, hi)`` in float64, then
  ``q = min(sat64(rint(v * scale)) - shift, 2**32 - 1)`` with the unsigned difference, where
  ``shift = sat64(rint(lo * scale))`` (rounding ``lo * scale`` on its own makes a zero decode to
  exactly zero). ``rint`` rounds half to even.
* :func:`discretize_sum_int` (integer rows): ``q = (clip(x, lo, hi) - lo) // divisor``, the
  difference taken in uint64 so that any int64 range works.
* :func:`modular_sum` (integer rows): ``acc = (acc + x mod m) mod m``.

Overflow is impossible by construction: a float code is at most ``2**32 - 1``, so ``2**31``
clients fit in the int64 accumulator; integer codes are bounded by ``(hi - lo) // divisor`` and
the wrappers refuse a call whose clients could exceed int64; modular accumulators stay below
``m <= 2**62``. Every sum is an exact integer sum, so the bits depend on neither the thread count
nor the column block size, and the NumPy twins give the same accumulator.

Each pass also reports, per row, how many elements lay above ``hi`` and below ``lo`` (an Inf is
above or below too) and, for float rows, how many were NaN or +-Inf (a secure sum refuses both;
Inf is looked for only in the row blocks where something was clipped, while they are in cache);
a secure sum with constant bounds needs no separate statistics pass.

How the float pass is fast. Written literally, with saturating int64 casts per element, it would
run at a fraction of the weighted sum's speed; three choices bring it close to that speed
(``docs/benchmarks-history.md``, "Secure sum discretization", has the figures):

* When ``|lo * scale|`` and ``|hi * scale|`` are below ``2**40`` (any range that contains 0, and
  most others) the saturations can never act and ``rint(v * scale) - rint(lo * scale)`` is an exact
  difference of doubles, so the code is computed in float64 without integer conversions. Other
  ranges take the literal path; the twin always does, and the tests compare both.
* Codes are summed in a float64 block buffer (exact: at most ``2**20`` rows of codes below
  ``2**32`` per kernel call stay below ``2**53``) and converted to int64 once per block. A NaN
  propagates into that buffer, which is how NaN rows are noticed without a per-element test.
* As in ``weighted_sum.py``, ``prange`` runs over blocks of ``BLOCK`` columns and each block adds
  four rows at a time; the clip counts are register counters per row, written per (block, row)
  and added up afterwards, so threads never share a counter.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import prange

from aggkit import _checks
from aggkit.kernels._jit import kernel, run_tasks, threads_for
from aggkit.kernels._minmax import max2, min2
from aggkit.kernels.divide_cast import divide_cast_numpy
from aggkit.kernels.limits import INT64_MAX, INT64_MIN, MAX_CODE, MAX_MODULUS
from aggkit.kernels.weighted_sum import SMALL_COLUMNS

__all__ = [
    "BLOCK",
    "MAX_CODE",
    "MAX_MODULUS",
    "clip_flags_numpy",
    "decode_sum",
    "decode_sum_numpy",
    "discretize_rows_int_numpy",
    "discretize_rows_numpy",
    "discretize_sum",
    "discretize_sum_int",
    "discretize_sum_int_numpy",
    "discretize_sum_numpy",
    "encode_float_numpy",
    "encode_int_numpy",
    "modular_sum",
    "modular_sum_numpy",
]

#: Columns per parallel block: 4096 int64 accumulators (32 KiB) stay in L1.
BLOCK = 4096
_TWO_63 = 9223372036854775808.0
#: Rows per call of the float kernel, so that its float64 sums of codes stay exact.
_ROWS_PER_CALL = 2**20
#: The fast float form needs ``|rint(lo * scale)|`` and ``|rint(hi * scale)|`` below this.
_FAST_LIMIT = 2.0**40


# -- float rows ----------------------------------------------------------------------------------


def _code_form(general: bool):
    """The helper that gives the code of one float64 value, as a float64 integer; NaN for NaN.

    ``general=False`` (the fast form, ``_code_fast``) returns ``code + low`` with
    ``low = rint(lo * scale)`` and ``high = min(rint(hi * scale), low + 2**32 - 1)``: clipping
    ``v`` and then scaling and rounding equals scaling and rounding and then clipping (all three
    are monotone), so the code is ``min(max(rint(v * scale), low), high) - low``; the caller
    subtracts ``low`` once per sum. This is exact when ``scale > 0`` and ``|lo * scale|``,
    ``|hi * scale|`` are far below ``2**53``, so that no saturation can act and every rounded
    product is an exact double.

    ``general=True`` (``_code_general``) follows the definition literally: clip, saturating
    int64 casts, and the unsigned difference with ``shift`` (a uint64 holding
    ``sat64(rint(lo * scale))``).

    ``general`` is a constant of the closure, so numba prunes the other form before it types it:
    a secure sum compiles one form (with a literal argument numba typed and lowered both).
    """

    def _code(v, lo, hi, scale, low, high, shift):  # pragma: no cover - compiled
        if not general:
            return min2(max2(np.rint(v * scale), low), high)
        v = min2(max2(v, lo), hi)
        t = np.rint(v * scale)
        if t >= _TWO_63:
            a = np.int64(INT64_MAX)
        elif t >= -_TWO_63:
            a = np.int64(t)
        else:  # below the int64 range, or NaN
            a = np.int64(INT64_MIN)
        u = np.uint64(a) - shift
        if u > np.uint64(MAX_CODE):
            u = np.uint64(MAX_CODE)
        code = np.float64(u)
        if v != v:
            code = v
        return code

    _code.__qualname__ = f"_code_{'general' if general else 'fast'}"
    return kernel(_code, helper=True)


# The two forms as module-level helpers (nothing compiles until a kernel that calls one does).
_code_fast = _code_form(general=False)
_code_general = _code_form(general=True)


@kernel(helper=True)
def _count_inf(x):  # pragma: no cover - compiled
    """The number of +-Inf in ``x`` (run only for rows that had values clipped)."""
    count = 0
    for j in range(x.shape[0]):
        count += np.isinf(x[j])
    return count


@kernel(inline=True)
def _four_rows(
    x0, x1, x2, x3, c0, c1, c2, c3, total, lo, hi, scale, low, high, shift, code
):  # pragma: no cover - compiled
    """Add the codes of four rows into ``total``; their counts above ``hi`` and below ``lo``.

    ``code`` is one form of the code (``_code_fast`` or ``_code_general``), chosen by the
    kernel's closure: with a runtime flag picking the form, LLVM computed both forms for every
    element and blended them (twice the work)."""
    a0 = a1 = a2 = a3 = 0
    b0 = b1 = b2 = b3 = 0
    for j in range(total.shape[0]):
        v0 = c0 * np.float64(x0[j])
        v1 = c1 * np.float64(x1[j])
        v2 = c2 * np.float64(x2[j])
        v3 = c3 * np.float64(x3[j])
        a0 += v0 > hi
        a1 += v1 > hi
        a2 += v2 > hi
        a3 += v3 > hi
        b0 += v0 < lo
        b1 += v1 < lo
        b2 += v2 < lo
        b3 += v3 < lo
        q0 = code(v0, lo, hi, scale, low, high, shift)
        q1 = code(v1, lo, hi, scale, low, high, shift)
        q2 = code(v2, lo, hi, scale, low, high, shift)
        q3 = code(v3, lo, hi, scale, low, high, shift)
        total[j] += (q0 + q1) + (q2 + q3)
    return a0, a1, a2, a3, b0, b1, b2, b3


@kernel(inline=True)
def _one_row(x0, c0, total, lo, hi, scale, low, high, shift, code):  # pragma: no cover
    """:func:`_four_rows` for one row."""
    a0 = b0 = 0
    for j in range(total.shape[0]):
        v0 = c0 * np.float64(x0[j])
        a0 += v0 > hi
        b0 += v0 < lo
        total[j] += code(v0, lo, hi, scale, low, high, shift)
    return a0, b0


@functools.cache
def _float_kernel(general: bool, remainder: bool):
    """The float pass for one case, compiled only when a sum first needs it.

    ``general`` (the literal form of the code, for ranges the fast form cannot take) and
    ``remainder`` (the active rows are not a multiple of four: the last ones go one at a time)
    are constants of the closure, so numba prunes the branches a case does not take before it
    types them: a secure sum compiles one form of the code and the one-row loop only when it has
    such rows (one kernel with every path took 1.2 s of CPU time to compile, the largest part of
    ``secure_aggregator()``'s first round with an empty cache). numba's disk cache keys closures
    on their cells' values, so the cases are cached side by side.
    """

    def _discretize_float(
        first,
        stop_block,
        matrix,
        rows,
        coef,
        lo,
        hi,
        scale,
        low,
        high,
        shift,
        out,
        flags,
        nan_columns,
        block,
        buffer,
    ):  # pragma: no cover - compiled
        n = matrix.shape[1]
        num_rows = rows.shape[0]
        # One form of the code: `general` is a constant of the closure, so numba prunes the
        # other. (Not a closure cell holding the helper: numba's disk cache keys a closure on its
        # cells' pickled values, and a dispatcher's differ from one process to the next.)
        code = _code_general if general else _code_fast
        # The fast form sums code + low: subtract low once per row at the end.
        offset = 0
        if not general:
            offset = np.int64(low) * num_rows
        for b in range(first, stop_block):
            start = b * block
            stop = min2(start + block, n)
            m = stop - start
            # Codes (plus low) are integers, and the wrapper bounds the rows per call so that
            # their float64 sums stay below 2**53 and exact; they convert to int64 once per block.
            # The block's sums go to this thread's float64[block] scratch (run_tasks' scratch:
            # an np.zeros here would be three compilations of numba's allocation code).
            total = buffer[:m]
            for j in range(m):
                total[j] = 0.0
            i = 0
            while i + 4 <= num_rows:
                x0 = matrix[rows[i], start:stop]
                x1 = matrix[rows[i + 1], start:stop]
                x2 = matrix[rows[i + 2], start:stop]
                x3 = matrix[rows[i + 3], start:stop]
                c0 = coef[rows[i]]
                c1 = coef[rows[i + 1]]
                c2 = coef[rows[i + 2]]
                c3 = coef[rows[i + 3]]
                # `code`: the one form of the code this case uses.
                a0, a1, a2, a3, b0, b1, b2, b3 = _four_rows(
                    x0, x1, x2, x3, c0, c1, c2, c3, total, lo, hi, scale, low, high, shift, code
                )
                flags[b, i, 0] = a0
                flags[b, i + 1, 0] = a1
                flags[b, i + 2, 0] = a2
                flags[b, i + 3, 0] = a3
                flags[b, i, 1] = b0
                flags[b, i + 1, 1] = b1
                flags[b, i + 2, 1] = b2
                flags[b, i + 3, 1] = b3
                # An Inf is clipped like any large value: look for one only where something was
                # clipped, while the block's rows are still in cache.
                if a0 + b0:
                    flags[b, i, 2] = _count_inf(x0)
                if a1 + b1:
                    flags[b, i + 1, 2] = _count_inf(x1)
                if a2 + b2:
                    flags[b, i + 2, 2] = _count_inf(x2)
                if a3 + b3:
                    flags[b, i + 3, 2] = _count_inf(x3)
                i += 4
            if remainder:
                while i < num_rows:
                    x0 = matrix[rows[i], start:stop]
                    c0 = coef[rows[i]]
                    a0, b0 = _one_row(x0, c0, total, lo, hi, scale, low, high, shift, code)
                    flags[b, i, 0] = a0
                    flags[b, i, 1] = b0
                    if a0 + b0:
                        flags[b, i, 2] = _count_inf(x0)
                    i += 1
            acc = out[start:stop]
            bad = 0
            for j in range(m):
                t = total[j]
                if t == t:
                    acc[j] += np.int64(t) - offset
                else:
                    bad += 1
            nan_columns[b] += bad

    _discretize_float.__qualname__ = f"_discretize_float{'_general' * general}{'_rem' * remainder}"
    return kernel(_discretize_float)


def _active_rows(coef: np.ndarray) -> np.ndarray:
    return np.flatnonzero(coef).astype(np.int64)


def _zero_row_flags(value: float, lo, hi, n: int) -> np.ndarray:
    """The counts of a row of ``n`` copies of ``value`` (coefficient-0 rows hold exact zeros)."""
    return np.array([n if value > hi else 0, n if value < lo else 0, 0], dtype=np.int64)


def _combine(partials: np.ndarray, rows: np.ndarray, coef: np.ndarray, zero_flags) -> np.ndarray:
    flags = np.empty((coef.shape[0], 3), dtype=np.int64)
    flags[:] = zero_flags
    flags[rows] = partials.sum(axis=0)
    return flags


def discretize_sum(
    matrix: np.ndarray,
    coef: np.ndarray,
    lo: float,
    hi: float,
    scale: float,
    shift: int,
    out: np.ndarray,
    *,
    block: int = BLOCK,
    numpy_columns: int = SMALL_COLUMNS,
    max_code: int = MAX_CODE,
) -> np.ndarray:
    """Add the code of ``clip(coef[i] * matrix[i], lo, hi)`` of every row into ``out``.

    A row whose coefficient is 0 holds exact zeros: it adds the code of ``clip(0, lo, hi)`` to
    every column without its values being read (so NaN there does nothing). When an active row
    holds NaN, the returned counts say so and ``out`` is left in an unspecified state.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``[K, n]`` C-contiguous float32/float64 client rows.
    coef : numpy.ndarray
        ``float64[K]`` non-negative coefficients.
    lo, hi : float
        The clipping range (float64 values of the bounds in the value dtype), ``lo <= hi``.
    scale : float
        ``max_code / (hi - lo)``, or 0 when ``hi == lo``.
    shift : int
        ``sat64(rint(lo * scale))``.
    out : numpy.ndarray
        ``int64[n]`` accumulator, updated in place. The caller keeps the number of rows added
        below ``2**31`` (each code is at most ``max_code``).
    block : int
        Columns per parallel block; the result does not depend on it.
    numpy_columns : int
        Up to this many columns (a secure sum's weights or counts), the NumPy twin does the work:
        the same bits, and no kernel to compile for a matrix that only such sums use (the
        float64 weight column of ``secure_aggregator``, for one).
    max_code : int
        The largest code, ``2**b - 1`` for ``b``-bit codes (default 32 bits); codes are clamped
        to it. Below 32 bits, the literal form (ranges far from 0, see :func:`_code_form`) runs in
        the NumPy twin, so the compiled kernel keeps its one clamp.

    Returns
    -------
    numpy.ndarray
        ``int64[K, 3]``: per row, the number of elements of ``coef[i] * matrix[i]`` above ``hi``
        (Inf included), below ``lo`` (-Inf included), and NaN or +-Inf (the non-finite values the
        caller refuses).

    Examples
    --------
    >>> out = np.zeros(3, np.int64)
    >>> x = np.array([[-2.0, 0.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
    >>> scale = (2**32 - 1) / 2.0
    >>> discretize_sum(x, np.array([1.0, 0.5]), -1.0, 1.0, scale, -2147483648, out)
    array([[0, 1, 0],
           [0, 0, 0]])
    >>> out  # codes 0, 2147483648 (0.0), 3221225472 (0.5) plus 3221225472 (0.5) each
    array([3221225472, 5368709120, 6442450944])
    """
    _check_float_args(matrix, coef, out)
    block = _checks.integer(block, "block", low=1)
    rows = _active_rows(coef)
    num_zero = coef.shape[0] - rows.shape[0]
    n = matrix.shape[1]
    num_blocks = (n + block - 1) // block
    max_code = _checks.integer(max_code, "max_code", low=1, high=MAX_CODE)
    low = float(np.rint(lo * scale))
    high = min(float(np.rint(hi * scale)), low + max_code)
    # The fast form sums codes plus `low` in float64: keep each call's sums below 2**53.
    general = not (scale > 0 and max(abs(low), abs(high)) < _FAST_LIMIT)
    if not general and int(low) != shift:
        raise ValueError(f"shift must be rint(lo * scale) = {int(low)}, got {shift}")
    if n <= numpy_columns or (general and max_code != MAX_CODE):
        return discretize_sum_numpy(matrix, coef, lo, hi, scale, shift, out, max_code=max_code)
    if num_zero:
        out += num_zero * encode_float_numpy(np.zeros(1), lo, hi, scale, shift, max_code)[0]
    per_call = _ROWS_PER_CALL
    if not general:
        per_call = min(per_call, int(2**53 // (max(abs(low), abs(high)) + 1)))
    partials = np.zeros((num_blocks, rows.shape[0], 3), dtype=np.int64)
    nan_columns = np.zeros(num_blocks, dtype=np.int64)
    for first in range(0, rows.shape[0] if n else 0, per_call):
        part = slice(first, first + per_call)
        chunk = np.zeros((num_blocks, len(rows[part]), 3), dtype=np.int64)
        run_tasks(
            _float_kernel(general, len(rows[part]) % 4 != 0),
            num_blocks,
            matrix,
            rows[part],
            coef,
            np.float64(lo),
            np.float64(hi),
            np.float64(scale),
            low,
            high,
            np.uint64(np.int64(shift).view(np.uint64)),
            out,
            chunk,
            nan_columns,
            block,
            scratch=((block,), np.float64),
        )
        partials[:, part] = chunk
    if nan_columns.any():  # rare (an error for the caller): count NaN and Inf per row exactly
        for i, r in enumerate(rows):
            partials[:, i, 2] = 0
            partials[0, i, 2] = (~np.isfinite(matrix[r])).sum()
    return _combine(partials, rows, coef, _zero_row_flags(0.0, lo, hi, n))


def _check_rows(matrix: np.ndarray, coef: np.ndarray, out: np.ndarray, dtype: Any) -> None:
    """The arrays every entry point takes: ``[K, n]`` rows, ``[K]`` coefficients, ``int64[n]``."""
    _checks.array(matrix, "matrix", dtype=dtype, ndim=2)
    _checks.array(coef, "coef", dtype=(np.float64, np.int64), shape=(matrix.shape[0],))
    _checks.array(out, "out", dtype=np.int64, shape=(matrix.shape[1],), writeable=True)


def _check_float_args(matrix: np.ndarray, coef: np.ndarray, out: np.ndarray) -> None:
    _check_rows(matrix, coef, out, (np.float32, np.float64))
    if coef.dtype != np.float64:
        raise TypeError(f"coef must be float64 for float rows, got {coef.dtype}")


def encode_float_numpy(
    values: np.ndarray, lo: float, hi: float, scale: float, shift: int, max_code: int = MAX_CODE
) -> np.ndarray:
    """The codes of float64 ``values`` (after the client's shift by ``lo``), as ``int64``,
    clamped to ``max_code`` (``2**32 - 1`` unless a narrower code asks otherwise).

    Examples
    --------
    >>> encode_float_numpy(np.array([-2.0, -1.0, 1.0, 2.0]), -1.0, 1.0, (2**32 - 1) / 2.0,
    ...                    -2147483648)
    array([         0,          0, 4294967295, 4294967295])
    """
    v = np.clip(np.asarray(values, dtype=np.float64), lo, hi)
    with np.errstate(invalid="ignore"):
        t = np.rint(v * scale)
        inside = (t >= -_TWO_63) & (t < _TWO_63)
        a = np.where(inside, np.where(inside, t, 0.0).astype(np.int64), INT64_MIN)
    a = np.where(t >= _TWO_63, INT64_MAX, a)
    d = a.view(np.uint64) - np.int64(shift).view(np.uint64)
    return np.minimum(d, np.uint64(max_code)).astype(np.int64)


def discretize_rows_numpy(matrix, coef, lo, hi, scale, shift, *, max_code=MAX_CODE) -> np.ndarray:
    """The ``int64[K, n]`` codes of every float row: what each client sends (each clamped to
    ``max_code``, ``2**32 - 1`` unless a narrower code asks otherwise).

    A secure-sum backend that runs the real protocol receives these, one row per client.
    Coefficient-0 rows hold exact zeros. (Whole-matrix NumPy, elementwise as row by row: a
    secure round runs it on its few-column sums, where a loop over 100 rows cost more than the
    round's kernels.)
    """
    with np.errstate(invalid="ignore"):  # 0 * Inf in a coefficient-0 row: replaced below
        values = coef[:, None] * matrix.astype(np.float64)
    codes = encode_float_numpy(values, lo, hi, scale, shift, max_code)
    zero = coef == 0
    if zero.any():
        codes[zero] = encode_float_numpy(np.zeros(1), lo, hi, scale, shift, max_code)[0]
    return codes


def clip_flags_numpy(matrix: np.ndarray, coef: np.ndarray, lo, hi) -> np.ndarray:
    """``int64[K, 3]``: per row, elements of ``coef[i] * matrix[i]`` above ``hi``, below ``lo``,
    and NaN or +-Inf in ``matrix[i]`` (float rows). Coefficient-0 rows hold exact zeros."""
    flags = np.zeros((matrix.shape[0], 3), dtype=np.int64)
    if matrix.dtype.kind == "f":
        x = matrix.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            v = coef[:, None] * x
            flags[:, 0] = (v > hi).sum(axis=1)
            flags[:, 1] = (v < lo).sum(axis=1)
        flags[:, 2] = (~np.isfinite(x)).sum(axis=1)
    else:
        flags[:, 0] = (matrix > hi).sum(axis=1)
        flags[:, 1] = (matrix < lo).sum(axis=1)
    zero = coef == 0
    if zero.any():
        flags[zero] = _zero_row_flags(0, lo, hi, matrix.shape[1])
    return flags


def discretize_sum_numpy(
    matrix: np.ndarray,
    coef: np.ndarray,
    lo: float,
    hi: float,
    scale: float,
    shift: int,
    out: np.ndarray,
    *,
    max_code: int = MAX_CODE,
) -> np.ndarray:
    """NumPy twin of :func:`discretize_sum` (same accumulator, same counts)."""
    codes = discretize_rows_numpy(matrix, coef, lo, hi, scale, shift, max_code=max_code)
    out += codes.sum(axis=0, dtype=np.int64)
    return clip_flags_numpy(matrix, coef, lo, hi)


# -- the server's decoding ----------------------------------------------------------------------

#: Values per parallel piece of :func:`decode_sum`.
_DECODE_PIECE = 1 << 15


@kernel
def _decode_sum(
    first, stop, total, offset, step, denominator, out, bounds
):  # pragma: no cover - compiled
    n = total.shape[0]
    for p in range(first, stop):
        part = total[p * _DECODE_PIECE : min2(n, (p + 1) * _DECODE_PIECE)]
        dst = out[p * _DECODE_PIECE : min2(n, (p + 1) * _DECODE_PIECE)]
        low = part[0]
        high = part[0]
        for j in range(part.shape[0]):
            t = part[j]
            low = min2(low, t)
            high = max2(high, t)
            # Rounded to the product, then to the quotient, then to out's dtype, as NumPy does.
            dst[j] = (np.float64(t + offset) * step) / denominator
        bounds[p, 0] = low
        bounds[p, 1] = high


def decode_sum(
    total: np.ndarray,
    offset: int,
    step: float,
    *,
    denominator: float = 1.0,
    out: np.ndarray | None = None,
    numpy_columns: int = SMALL_COLUMNS,
) -> tuple[np.ndarray, int, int]:
    """``float64(total + offset) * step``, and the smallest and largest ``total``, in one pass.

    The server's side of a secure sum of float codes: ``total`` is the exact sum of the clients'
    codes, ``offset`` their summed shifts, ``step`` the value of one code unit; the range of
    ``total`` is what the server checks before it trusts the sum. One pass over ``total`` instead
    of four (minimum, maximum, the int64 sum, the product), and no int64 temporary. The caller
    keeps ``|offset| + max(|total|)`` within int64 for totals that pass its check (a total that
    fails it may wrap here; its decoding is discarded).

    A mean's last step can ride along: the decoded value divided by ``denominator`` (a float64
    division; 1.0, the default, changes no bit) and rounded to ``out``'s dtype, float32 or
    float64 (a new float64 array by default). These are the bits of
    ``np.divide(decoded, denominator).astype(out.dtype)``, without the decoded vector in memory.

    Returns ``(out, low, high)``; ``low = high = 0`` for an empty ``total``.

    Examples
    --------
    >>> decode_sum(np.array([0, 2, 4]), -2, 0.5)
    (array([-1.,  0.,  1.]), 0, 4)
    >>> decode_sum(np.array([0, 2, 4]), -2, 0.5, denominator=4.0, out=np.empty(3, np.float32))
    (array([-0.25,  0.  ,  0.25], dtype=float32), 0, 4)
    """
    _checks.array(total, "total", dtype=np.int64, ndim=1)
    n = total.shape[0]
    if out is None:
        out = np.empty(n)
    _checks.array(out, "out", dtype=(np.float32, np.float64), shape=(n,), writeable=True)
    if n <= numpy_columns:
        return decode_sum_numpy(total, offset, step, denominator=denominator, out=out)
    bounds = np.empty(((n + _DECODE_PIECE - 1) // _DECODE_PIECE, 2), dtype=np.int64)
    run_tasks(
        _decode_sum,
        bounds.shape[0],
        total,
        np.int64(offset),
        np.float64(step),
        np.float64(denominator),
        out,
        bounds,
        elements=n,
    )
    return out, int(bounds[:, 0].min()), int(bounds[:, 1].max())


def decode_sum_numpy(
    total: np.ndarray,
    offset: int,
    step: float,
    *,
    denominator: float = 1.0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """Twin of :func:`decode_sum`."""
    decoded = np.multiply(total + np.int64(offset), step, dtype=np.float64)
    if out is None and denominator == 1.0:  # a division by 1.0 changes no bit
        out = decoded
    else:
        out = divide_cast_numpy(
            decoded, denominator, np.empty(decoded.shape) if out is None else out
        )
    if not total.size:
        return out, 0, 0
    return out, int(total.min()), int(total.max())


# -- integer rows --------------------------------------------------------------------------------


@kernel(parallel=True)
def _discretize_int(matrix, rows, lo, hi, divisor, out, flags, block):  # pragma: no cover
    n = matrix.shape[1]
    num_rows = rows.shape[0]
    num_blocks = (n + block - 1) // block
    ulo = np.uint64(lo)
    one = np.uint64(1)
    for b in prange(num_blocks):
        start = b * block
        stop = min2(start + block, n)
        acc = out[start:stop]
        for i in range(num_rows):
            x = matrix[rows[i], start:stop]
            above = 0
            below = 0
            for j in range(x.shape[0]):
                v = x[j]
                if v > hi:
                    above += 1
                    v = hi
                if v < lo:
                    below += 1
                    v = lo
                d = np.uint64(v) - ulo
                if divisor != one:
                    d = d // divisor
                acc[j] += np.int64(d)
            flags[b, i, 0] = above
            flags[b, i, 1] = below


def _check_int_args(
    matrix: np.ndarray, coef: np.ndarray, out: np.ndarray, lo: int, hi: int, divisor: int
) -> np.ndarray:
    _check_rows(matrix, coef, out, np.int64)
    if not np.isin(coef, (0, 1)).all():
        raise ValueError("integer rows take coefficients 0 or 1 only")
    if not INT64_MIN <= lo <= hi <= INT64_MAX:
        raise ValueError(f"need int64 bounds with lo <= hi, got lo={lo}, hi={hi}")
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    max_code = (hi - lo) // divisor
    if matrix.shape[0] * max_code > INT64_MAX:
        raise ValueError(
            f"{matrix.shape[0]} rows of codes up to {max_code} could overflow the int64 "
            "accumulator; add fewer rows per call"
        )
    return _active_rows(coef)


def discretize_sum_int(
    matrix: np.ndarray,
    coef: np.ndarray,
    lo: int,
    hi: int,
    divisor: int,
    out: np.ndarray,
    *,
    block: int = BLOCK,
    numpy_columns: int = SMALL_COLUMNS,
) -> np.ndarray:
    """Add ``(clip(matrix[i], lo, hi) - lo) // divisor`` of every row into ``out``.

    Rows with coefficient 0 hold exact zeros (their values are not read); other rows must have
    coefficient 1.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``int64[K, n]`` C-contiguous client rows.
    coef : numpy.ndarray
        ``[K]`` coefficients, each 0 or 1.
    lo, hi : int
        The clipping range, int64 values with ``lo <= hi``.
    divisor : int
        ``>= 1``; codes are ``(clip(x) - lo) // divisor`` (the difference is exact in uint64).
    out : numpy.ndarray
        ``int64[n]`` accumulator, updated in place. Raises ValueError when ``K`` codes of up to
        ``(hi - lo) // divisor`` could overflow it.

    Returns
    -------
    numpy.ndarray
        ``int64[K, 3]``: per row, elements above ``hi``, below ``lo``, and 0.

    Examples
    --------
    >>> out = np.zeros(3, np.int64)
    >>> discretize_sum_int(np.array([[-5, 0, 7]]), np.ones(1), -1, 1, 1, out)
    array([[1, 1, 0]])
    >>> out
    array([0, 1, 2])
    """
    rows = _check_int_args(matrix, coef, out, lo, hi, divisor)
    block = _checks.integer(block, "block", low=1)
    if matrix.shape[1] <= numpy_columns:  # as in discretize_sum: the same bits, no compiling
        return discretize_sum_int_numpy(matrix, coef, lo, hi, divisor, out)
    num_zero = coef.shape[0] - rows.shape[0]
    if num_zero:
        out += num_zero * int(encode_int_numpy(np.zeros(1, np.int64), lo, hi, divisor)[0])
    n = matrix.shape[1]
    num_blocks = (n + block - 1) // block
    partials = np.zeros((num_blocks, rows.shape[0], 3), dtype=np.int64)
    if rows.size and n:
        with threads_for(num_blocks):
            _discretize_int(
                matrix, rows, np.int64(lo), np.int64(hi), np.uint64(divisor), out, partials, block
            )
    return _combine(partials, rows, coef, _zero_row_flags(0, lo, hi, n))


def encode_int_numpy(values: np.ndarray, lo: int, hi: int, divisor: int = 1) -> np.ndarray:
    """``(clip(values, lo, hi) - lo) // divisor`` for int64 ``values``, as ``int64``.

    Examples
    --------
    >>> encode_int_numpy(np.array([0, 1, 2, 3, 5, -254, -255, -256, 255, 256, 257]), -255, 256)
    array([255, 256, 257, 258, 260,   1,   0,   0, 510, 511, 511])
    """
    clipped = np.clip(np.asarray(values, dtype=np.int64), lo, hi)
    d = clipped.view(np.uint64) - np.int64(lo).view(np.uint64)
    return (d // np.uint64(divisor)).astype(np.int64)


def discretize_rows_int_numpy(
    matrix: np.ndarray, coef: np.ndarray, lo: int, hi: int, divisor: int
) -> np.ndarray:
    """The ``int64[K, n]`` codes of every integer row (coefficient-0 rows hold zeros)."""
    codes = encode_int_numpy(matrix, lo, hi, divisor)
    zero = coef == 0
    if zero.any():
        codes[zero] = encode_int_numpy(np.zeros(1, np.int64), lo, hi, divisor)[0]
    return codes


def discretize_sum_int_numpy(
    matrix: np.ndarray, coef: np.ndarray, lo: int, hi: int, divisor: int, out: np.ndarray
) -> np.ndarray:
    """NumPy twin of :func:`discretize_sum_int`."""
    out += discretize_rows_int_numpy(matrix, coef, lo, hi, divisor).sum(axis=0, dtype=np.int64)
    return clip_flags_numpy(matrix, coef, lo, hi)


# -- modular sums --------------------------------------------------------------------------------


@kernel(parallel=True)
def _modular_sum(matrix, rows, modulus, out, block):  # pragma: no cover - compiled
    n = matrix.shape[1]
    num_blocks = (n + block - 1) // block
    for b in prange(num_blocks):
        start = b * block
        stop = min2(start + block, n)
        acc = out[start:stop]
        for i in range(rows.shape[0]):
            x = matrix[rows[i], start:stop]
            for j in range(x.shape[0]):
                s = acc[j] + x[j] % modulus  # Python semantics: the remainder is in [0, m)
                if s >= modulus:
                    s -= modulus
                acc[j] = s


def modular_sum(
    matrix: np.ndarray, coef: np.ndarray, modulus: int, out: np.ndarray, *, block: int = BLOCK
) -> np.ndarray:
    """``out = (out + sum_i (matrix[i] mod m)) mod m`` over rows with coefficient 1.

    Rows with coefficient 0 are skipped (they hold zeros); others must have coefficient 1.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``int64[K, n]`` client rows (any values: they wrap).
    coef : numpy.ndarray
        ``[K]`` coefficients, each 0 or 1.
    modulus : int
        ``1 <= m <= 2**62``.
    out : numpy.ndarray
        ``int64[n]`` accumulator with entries in ``[0, m)``, updated in place.

    Examples
    --------
    >>> out = np.zeros(2, np.int64)
    >>> modular_sum(np.array([[-1, 7], [22, 220]]), np.ones(2), 22, out)
    array([21,  7])
    """
    _check_rows(matrix, coef, out, np.int64)
    block = _checks.integer(block, "block", low=1)
    if not 1 <= modulus <= MAX_MODULUS:
        raise ValueError(f"modulus must be in [1, 2**62], got {modulus}")
    if not np.isin(coef, (0, 1)).all():
        raise ValueError("integer rows take coefficients 0 or 1 only")
    rows = _active_rows(coef)
    if rows.size and matrix.shape[1]:
        with threads_for(-(-matrix.shape[1] // block)):
            _modular_sum(matrix, rows, np.int64(modulus), out, block)
    return out


def modular_sum_numpy(
    matrix: np.ndarray, coef: np.ndarray, modulus: int, out: np.ndarray
) -> np.ndarray:
    """NumPy twin of :func:`modular_sum` (Python integers, no overflow possible)."""
    total = out.astype(object)
    for i in np.flatnonzero(coef):
        total = (total + matrix[i].astype(object)) % modulus
    out[:] = total.astype(np.int64)
    return out
