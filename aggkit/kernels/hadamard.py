"""Randomized Walsh-Hadamard rotation: random signs and the fast Walsh-Hadamard transform (FWHT).

A tensor of ``n`` elements is zero-padded to ``d``, the next power of two, and rotated by
``x -> H D x / sqrt(d)``, where ``D`` is a diagonal of random signs and ``H`` the ``d x d``
Hadamard matrix (``H H = d I``); the rotation is orthonormal, so it keeps the L2 norm, and its
inverse is ``y -> D H y / sqrt(d)``. With several repeats, the rotations are applied in order and
inverted in reverse order. Tensors with ``d <= 1`` are left alone.

* :func:`fill_signs` writes the signs of one (tensor, repeat) as int8: sign ``j`` is
  ``rademacher(key, j)`` from :mod:`aggkit.kernels.counter_rng`. Every client of a round uses the
  same signs, so they are drawn once per round, not once per client.
* :func:`rotate_rows` rotates the active rows of a client matrix into a padded matrix (one task
  per row and tensor, in parallel), in the output's dtype: ``out = x * (sign / sqrt(d))`` rounded
  to the output dtype, then the FWHT in that dtype.
* :func:`unrotate` inverts the rotation of one float64 vector (the server's sum), with a parallel
  FWHT.

The FWHT is the butterfly network ``(a, b) -> (a + b, a - b)`` over strides 1, 2, 4, ... . Every
butterfly of a stage reads the previous stage's outputs, so the order in which a stage's
butterflies run does not change a bit: the kernels work through the stages in cache-sized
blocks, and two stages at a time (radix 4) over large strides, and still equal the NumPy twins,
which run one stage at a time over the whole vector, bit for bit, whatever the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from aggkit import _checks
from aggkit.kernels._jit import kernel
from aggkit.kernels.counter_rng import _as_key, rademacher, rademacher_numpy

__all__ = [
    "fill_signs",
    "fill_signs_numpy",
    "fwht",
    "fwht_numpy",
    "padded_size",
    "rotate_rows",
    "rotate_rows_numpy",
    "unrotate",
    "unrotate_numpy",
]

#: Elements per cache block of the FWHT (stages with smaller strides run block by block).
BLOCK = 2048
_SIGN_PIECE = 1 << 16


def padded_size(n: int) -> int:
    """The next power of two ``>= n`` (``n`` itself for 0 and 1)."""
    n = int(n)
    return n if n <= 1 else 1 << (n - 1).bit_length()


# --------------------------------------------------------------------------------------------
# FWHT building blocks
# --------------------------------------------------------------------------------------------


@kernel(inline=True)
def _radix8_contiguous(v):  # pragma: no cover - compiled
    """Stages with strides 1, 2 and 4 over groups of eight neighbours (``v.size % 8 == 0``)."""
    for i in range(0, v.shape[0], 8):
        x0 = v[i]
        x1 = v[i + 1]
        x2 = v[i + 2]
        x3 = v[i + 3]
        x4 = v[i + 4]
        x5 = v[i + 5]
        x6 = v[i + 6]
        x7 = v[i + 7]
        # stride 1
        a0 = x0 + x1
        a1 = x0 - x1
        a2 = x2 + x3
        a3 = x2 - x3
        a4 = x4 + x5
        a5 = x4 - x5
        a6 = x6 + x7
        a7 = x6 - x7
        # stride 2
        b0 = a0 + a2
        b1 = a1 + a3
        b2 = a0 - a2
        b3 = a1 - a3
        b4 = a4 + a6
        b5 = a5 + a7
        b6 = a4 - a6
        b7 = a5 - a7
        # stride 4
        v[i] = b0 + b4
        v[i + 1] = b1 + b5
        v[i + 2] = b2 + b6
        v[i + 3] = b3 + b7
        v[i + 4] = b0 - b4
        v[i + 5] = b1 - b5
        v[i + 6] = b2 - b6
        v[i + 7] = b3 - b7


@kernel(inline=True)
def _radix2_pass(a, b):  # pragma: no cover - compiled
    """One butterfly stage between two halves."""
    for j in range(a.shape[0]):
        s = a[j]
        d = b[j]
        a[j] = s + d
        b[j] = s - d


@kernel(inline=True)
def _radix4_pass(a, b, c, e):  # pragma: no cover - compiled
    """Two stages (strides h and 2h) over four quarters ``a, b, c, e`` of length h."""
    for j in range(a.shape[0]):
        x0 = a[j]
        x1 = b[j]
        x2 = c[j]
        x3 = e[j]
        s01 = x0 + x1
        d01 = x0 - x1
        s23 = x2 + x3
        d23 = x2 - x3
        a[j] = s01 + s23
        b[j] = d01 + d23
        c[j] = s01 - s23
        e[j] = d01 - d23


@kernel
def _stages(v, h, limit):  # pragma: no cover - compiled
    """The stages with strides ``h, 2h, ... < limit`` (``v.size`` a multiple of ``limit``)."""
    n = v.shape[0]
    while h < limit:
        if 4 * h <= limit:
            for i in range(0, n, 4 * h):
                _radix4_pass(
                    v[i : i + h],
                    v[i + h : i + 2 * h],
                    v[i + 2 * h : i + 3 * h],
                    v[i + 3 * h : i + 4 * h],
                )
            h *= 4
        else:
            for i in range(0, n, 2 * h):
                _radix2_pass(v[i : i + h], v[i + h : i + 2 * h])
            h *= 2


@kernel
def _block_stages(v):  # pragma: no cover - compiled
    """Every stage of the FWHT of the power-of-two block ``v`` (which fits in cache)."""
    if v.shape[0] >= 8:
        _radix8_contiguous(v)
        _stages(v, 8, v.shape[0])
    else:
        _stages(v, 1, v.shape[0])


@kernel
def _fwht_serial(x):  # pragma: no cover - compiled
    """Unnormalized FWHT of ``x`` in place (``x.size`` a power of two), on one thread."""
    n = x.shape[0]
    if n < 2:
        return
    block = min(n, BLOCK)
    for base in range(0, n, block):
        _block_stages(x[base : base + block])
    _stages(x, block, n)


@kernel(parallel=True)
def _fwht_parallel(x):  # pragma: no cover - compiled
    """Unnormalized FWHT of ``x`` in place, blocks and butterfly pieces spread over threads."""
    n = x.shape[0]
    if n < 2:
        return
    block = min(n, BLOCK)
    for p in prange(n // block):
        _block_stages(x[p * block : (p + 1) * block])
    h = block
    while h < n:
        if 4 * h <= n:
            # n // (4h) groups of four quarters of length h, cut into pieces of `block`.
            per_group = h // block
            for p in prange((n // (4 * h)) * per_group):
                i = (p // per_group) * 4 * h
                j = (p % per_group) * block
                _radix4_pass(
                    x[i + j : i + j + block],
                    x[i + h + j : i + h + j + block],
                    x[i + 2 * h + j : i + 2 * h + j + block],
                    x[i + 3 * h + j : i + 3 * h + j + block],
                )
            h *= 4
        else:
            per_group = h // block
            for p in prange((n // (2 * h)) * per_group):
                i = (p // per_group) * 2 * h
                j = (p % per_group) * block
                _radix2_pass(x[i + j : i + j + block], x[i + h + j : i + h + j + block])
            h *= 2


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@kernel(parallel=True)
def _fill_signs(key, out):  # pragma: no cover - compiled
    n = out.shape[0]
    for piece in prange((n + _SIGN_PIECE - 1) // _SIGN_PIECE):
        start = piece * _SIGN_PIECE
        part = out[start : min(n, start + _SIGN_PIECE)]
        for j in range(part.shape[0]):
            part[j] = np.int8(rademacher(key, start + j))


@kernel(parallel=True)
def _rotate_rows(matrix, rows, offsets, padded, signs, sign_offsets, out):  # pragma: no cover
    num_tensors = offsets.shape[0] - 1
    repeats = sign_offsets.shape[1]
    for task in prange(rows.shape[0] * num_tensors):
        i = rows[task // num_tensors]
        t = task % num_tensors
        src = matrix[i, offsets[t] : offsets[t + 1]]
        dst = out[i, padded[t] : padded[t + 1]]
        n = src.shape[0]
        d = dst.shape[0]
        for j in range(n):
            dst[j] = src[j]
        for j in range(n, d):
            dst[j] = 0
        if d > 1:
            inv = 1.0 / np.sqrt(np.float64(d))
            for r in range(repeats):
                s = signs[sign_offsets[t, r] : sign_offsets[t, r] + d]
                for j in range(d):
                    dst[j] = dst[j] * (s[j] * inv)
                _fwht_serial(dst)


@kernel
def _unrotate_tensor(y, signs, inv):  # pragma: no cover - compiled
    _fwht_parallel(y)
    for j in range(y.shape[0]):
        y[j] = y[j] * (signs[j] * inv)


# --------------------------------------------------------------------------------------------
# Python wrappers
# --------------------------------------------------------------------------------------------


def fwht(x: np.ndarray) -> np.ndarray:
    """The unnormalized fast Walsh-Hadamard transform of ``x`` (power-of-two length), in place.

    Examples
    --------
    >>> fwht(np.array([1.0, 0.0, 0.0, 0.0]))
    array([1., 1., 1., 1.])
    >>> fwht(np.array([1.0, 2.0, 3.0, 4.0]))
    array([10., -2., -4.,  0.])
    """
    if x.ndim != 1 or (x.size & (x.size - 1)):
        raise ValueError(f"fwht needs a 1-D array of power-of-two length, got shape {x.shape}")
    _checks.array(x, "x", dtype=(np.float32, np.float64), ndim=1, writeable=True)
    _fwht_parallel(x)
    return x


def fill_signs(out: np.ndarray, key: int) -> np.ndarray:
    """Fill ``int8`` ``out`` with random signs: ``out[j] = rademacher(key, j)``."""
    _checks.array(out, "out", dtype=np.int8, ndim=1, writeable=True)
    _fill_signs(_as_key(key), out)
    return out


def _check_rotation(
    offsets: np.ndarray,
    padded: np.ndarray,
    signs: np.ndarray,
    sign_offsets: np.ndarray,
    columns: int,
    padded_columns: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The tensor boundaries of a rotation, checked against the arrays they index."""
    offsets = _checks.offsets(offsets, columns)
    padded = _checks.offsets(padded, padded_columns, "padded")
    if padded.shape != offsets.shape:
        raise ValueError(f"padded must have {offsets.size} entries, got {padded.size}")
    sizes, padded_sizes = np.diff(offsets), np.diff(padded)
    if ((padded_sizes < sizes) | (padded_sizes & (padded_sizes - 1) != 0)).any():
        raise ValueError("padded sizes must be powers of two no smaller than the tensors' sizes")
    _checks.array(signs, "signs", dtype=np.int8, ndim=1)
    _checks.array(sign_offsets, "sign_offsets", dtype=np.int64, shape=(offsets.size - 1, None))
    ends = sign_offsets + padded_sizes[:, None]
    if sign_offsets.size and ((sign_offsets < 0).any() or ends.max() > signs.size):
        raise ValueError(
            f"signs must hold every tensor's signs ({int(ends.max())}), got {signs.size}"
        )
    return offsets, padded


def rotate_rows(
    matrix: np.ndarray,
    coef: np.ndarray,
    offsets: np.ndarray,
    padded: np.ndarray,
    signs: np.ndarray,
    sign_offsets: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Rotate every row with ``coef != 0`` into ``out``; other rows of ``out`` become zeros.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``[K, n]`` client rows (any real dtype).
    coef : numpy.ndarray
        ``[K]``; rows with coefficient 0 are not read (they may hold NaN).
    offsets, padded : numpy.ndarray
        ``int64[T + 1]`` tensor boundaries in ``matrix`` and in ``out`` (padded sizes are
        :func:`padded_size` of the sizes).
    signs : numpy.ndarray
        ``int8`` signs of all tensors and repeats; those of tensor ``t``, repeat ``r`` start at
        ``sign_offsets[t, r]`` (``int64[T, R]``) and are ``padded`` long.
    out : numpy.ndarray
        ``[K, N]`` float32 or float64, C-contiguous.

    Examples
    --------
    >>> x = np.array([[3.0, 4.0]])
    >>> y = rotate_rows(x, np.ones(1), np.array([0, 2]), np.array([0, 2]),
    ...                 np.array([1, 1], np.int8), np.zeros((1, 1), np.int64), np.empty((1, 2)))
    >>> np.round(y * np.sqrt(2), 12)  # (3 + 4, 3 - 4)
    array([[ 7., -1.]])
    """
    _checks.array(matrix, "matrix", dtype=(np.float32, np.float64, np.int64), ndim=2)
    _checks.array(coef, "coef", dtype=np.float64, shape=(matrix.shape[0],))
    _checks.array(out, "out", dtype=(np.float32, np.float64), ndim=2, writeable=True)
    if out.shape[0] != matrix.shape[0]:
        raise ValueError(f"out must have a row per client ({matrix.shape[0]}), got {out.shape}")
    offsets, padded = _check_rotation(
        offsets, padded, signs, sign_offsets, matrix.shape[1], out.shape[1]
    )
    active = coef != 0
    out[~active] = 0
    rows = np.flatnonzero(active).astype(np.int64)
    if rows.size and len(offsets) > 1:
        _rotate_rows(matrix, rows, offsets, padded, signs, sign_offsets, out)
    return out


def unrotate(
    vector: np.ndarray,
    offsets: np.ndarray,
    padded: np.ndarray,
    signs: np.ndarray,
    sign_offsets: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Invert :func:`rotate_rows` on one float64 vector (the server's sum), tensor by tensor.

    ``vector`` (``float64[N]``, padded layout) is overwritten; tensor ``t`` lands in
    ``out[offsets[t]:offsets[t + 1]]``.
    """
    _checks.array(vector, "vector", dtype=np.float64, ndim=1, writeable=True)
    _checks.array(out, "out", dtype=(np.float32, np.float64), ndim=1, writeable=True)
    offsets, padded = _check_rotation(offsets, padded, signs, sign_offsets, out.size, vector.size)
    for t in range(len(offsets) - 1):
        y = vector[padded[t] : padded[t + 1]]
        d = y.size
        if d > 1:
            inv = 1.0 / np.sqrt(np.float64(d))
            for r in reversed(range(sign_offsets.shape[1])):
                s = signs[sign_offsets[t, r] : sign_offsets[t, r] + d]
                _unrotate_tensor(y, s, inv)
        out[offsets[t] : offsets[t + 1]] = y[: offsets[t + 1] - offsets[t]]
    return out


# --------------------------------------------------------------------------------------------
# NumPy twins (bit-exact)
# --------------------------------------------------------------------------------------------


def fwht_numpy(x: np.ndarray) -> np.ndarray:
    """Twin of :func:`fwht`: one stage at a time over the whole vector (returns a new array)."""
    y = np.array(x)
    n = y.size
    h = 1
    while h < n:
        v = y.reshape(-1, 2, h)
        a = v[:, 0, :].copy()
        b = v[:, 1, :].copy()
        v[:, 0, :] = a + b
        v[:, 1, :] = a - b
        h *= 2
    return y


def fill_signs_numpy(size: int, key: int) -> np.ndarray:
    """Twin of :func:`fill_signs`."""
    return rademacher_numpy(key, np.arange(size, dtype=np.uint64)).astype(np.int8)


def rotate_rows_numpy(matrix, coef, offsets, padded, signs, sign_offsets, out) -> np.ndarray:
    """Twin of :func:`rotate_rows`."""
    out[...] = 0
    for i in np.flatnonzero(coef != 0):
        for t in range(len(offsets) - 1):
            src = matrix[i, offsets[t] : offsets[t + 1]]
            d = int(padded[t + 1] - padded[t])
            y = np.zeros(d, dtype=out.dtype)
            y[: src.size] = src
            if d > 1:
                inv = 1.0 / np.sqrt(np.float64(d))
                for r in range(sign_offsets.shape[1]):
                    s = signs[sign_offsets[t, r] : sign_offsets[t, r] + d]
                    y = (y.astype(np.float64) * (s * inv)).astype(out.dtype)
                    y = fwht_numpy(y)
            out[i, padded[t] : padded[t + 1]] = y
    return out


def unrotate_numpy(vector, offsets, padded, signs, sign_offsets, out) -> np.ndarray:
    """Twin of :func:`unrotate` (does not modify ``vector``)."""
    for t in range(len(offsets) - 1):
        y = np.array(vector[padded[t] : padded[t + 1]], dtype=np.float64)
        d = y.size
        if d > 1:
            inv = 1.0 / np.sqrt(np.float64(d))
            for r in reversed(range(sign_offsets.shape[1])):
                s = signs[sign_offsets[t, r] : sign_offsets[t, r] + d]
                y = fwht_numpy(y) * (s * inv)
        out[offsets[t] : offsets[t + 1]] = y[: offsets[t + 1] - offsets[t]]
    return out
