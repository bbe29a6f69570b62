"""Counter-based random numbers for aggkit kernels: Philox4x32-10, SplitMix64, and what is built on
them.

Every random value aggkit draws inside a kernel is a pure function of a 64-bit *key* and a 64-bit
*index*: ``value = f(key, index)``. Kernels never carry generator state, so any element can be
computed by any thread in any order, and the bits do not depend on the thread count. Keys come
from a user's seed through :func:`seed_to_key` and are specialised per round, client or purpose
with :func:`derive_key` (Python) or :func:`fold_in` (inside kernels).

The generator
-------------
Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC'11) maps a 128-bit counter and a 64-bit key to 128 random bits with ten rounds of two
32x32->64-bit multiplications. Its authors found it passes all of TestU01's BigCrush for
counter/key patterns such as consecutive counters with one key, and consecutive keys with one
counter; it is the default algorithm of TensorFlow's stateless random ops (which TFF's
aggregators use), of cuRAND's Philox generator, and the 4x64 variant is NumPy's ``Philox``. The
implementation here reproduces the Random123 known-answer vectors (see the tests). It is *not* a
cryptographic generator: a seeded aggkit run is for research reproducibility, and a deployment
of differential privacy needs a cryptographically secure source (``seed=None`` draws the key
from the operating system, but the stream itself remains Philox).

The cheap generator
-------------------
Stochastic rounding draws one uniform per quantized value, so its generator is the inner loop of
compression, and Philox there costs nearly as much as the rounding itself.
``mix_block(key, counter)`` instead gives the 128 bits of a block as two
outputs of SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014), ``mix64(key, i)``. That is the stateless form of ``java.util.SplittableRandom``
and of Vigna's ``splitmix64``:

    z = key + (i + 1) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)        (all mod 2**64)

Its authors report that it passes BigCrush. It takes two 64-bit multiplications per 64 bits,
against Philox's twenty per 128, and costs less than half as much per uniform
(``docs/benchmarks-history.md``, "Random numbers"). Keys still come from Philox (``fold_in``).
Two streams share values only when their keys differ by less than a stream's length times the
odd constant, which has probability about ``length / 2**64`` for independent keys.

Stream layout
-------------
``random_block(key, counter)`` is Philox on the counter words ``(counter_lo, counter_hi, 0, 0)``
and the key words ``(key_lo, key_hi)``; it returns four 32-bit words ``w0..w3``. On that:

* ``uniform01(key, i)``: block ``i``, ``((w0 << 32 | w1) >> 11) * 2**-53``: a float64 in [0, 1)
  on the grid of multiples of 2**-53.
* ``rademacher(key, i)``: block ``i``, ``+1.0`` if the top bit of ``w0`` is 0, else ``-1.0``.
* ``normal_pair(key, p)``: block ``p``; Box-Muller on ``u = ((w0 << 32 | w1) >> 11 + 1) * 2**-53``
  in (0, 1] and ``v = ((w2 << 32 | w3) >> 11) * 2**-53`` in [0, 1):
  ``r = sqrt(-2 log u)``, returns ``(r cos 2 pi v, r sin 2 pi v)``. When the 53 bits of ``u``
  are all zero (probability 2**-53), ``u`` lies in ``(0, 2**-53]`` and is refined as
  ``2**-53 u'``, with ``u'`` from the same construction on Philox of
  ``(p_lo, p_hi, level, 0x7461696C)``, level 1, 2, ... up to 19 (the *tail* stream).
* ``standard_normal(key, i)``: element ``i & 1`` of ``normal_pair(key, i >> 1)``.
* ``mix_block(key, counter)``: the low then the high 32 bits of ``mix64(key, 2 counter)``, then
  of ``mix64(key, 2 counter + 1)`` (the quantizer's stream: :mod:`aggkit.kernels.quantize`).
* ``fold_in(key, data)``: Philox on ``(data_lo, data_hi, 0x6B657973, 1)`` (a counter no stream
  above uses), ``w0 << 32 | w1``: the key of a sub-stream.

Box-Muller runs in float64 with the logarithm, sine and cosine written here as polynomials
(fdlibm's ``log`` kernel; Taylor series of sin and cos on [-pi/4, pi/4] after an exact quarter-turn
reduction of ``v``). They are accurate to about one unit in the last place, avoid libm calls (slow
on some machines, and a barrier to vectorization), and are IEEE-exact arithmetic, so the NumPy
twins reproduce the kernels bit for bit. Thanks to the tail stream, the largest |normal| this
can produce is ``sqrt(2 * 53 * 20 * ln 2) = 38.33`` (:data:`aggkit.kernels.limits.MAX_ABS_NORMAL`)
instead of the 8.57 that 53 bits allow: bounded tails would give a Gaussian DP release a
non-negligible chance of an infinite privacy loss at small noise multipliers (see
:mod:`aggkit.kernels.limits`). The tail costs nothing on the common path: ``normal_pair_head``
computes every pair branch-free and flags the rare tail pairs, which are recomputed afterwards.

Calling from a kernel
---------------------
Pass keys as ``np.uint64``; indices may be any integer type::

    from aggkit.kernels._jit import kernel
    from aggkit.kernels.counter_rng import uniform01

    @kernel
    def stochastic_round(x, key, out):
        for i in range(x.size):
            out[i] = np.floor(x[i] + uniform01(key, i))

Each call computes one Philox block (two normals for ``normal_pair``); a loop that needs several
random words per element can call :func:`random_block` once and use all four words.

Example
-------
>>> key = seed_to_key(42)
>>> out = np.empty(4)
>>> fill_uniform01(out, derive_key(key, "example", 0))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import numbers
import secrets
from typing import Any

import numpy as np
from numba import prange

from aggkit.kernels._jit import kernel, threads_for
from aggkit.kernels._minmax import min2, select
from aggkit.kernels.limits import TAIL_LEVELS, UINT64_LIMIT

__all__ = [
    "check_key_and_offset",
    "check_stream_args",
    "derive_key",
    "fill_rademacher",
    "fill_rademacher_numpy",
    "fill_uniform01",
    "fill_uniform01_numpy",
    "fold_in",
    "fold_in_array",
    "fold_in_numpy",
    "mix64",
    "mix64_numpy",
    "mix_block",
    "mix_block_numpy",
    "normal_pair",
    "normal_pair_head",
    "normal_pair_numpy",
    "normal_pair_tail",
    "normal_pair_tail_numpy",
    "philox4x32_10",
    "philox4x32_10_numpy",
    "rademacher",
    "rademacher_numpy",
    "random_block",
    "random_block_numpy",
    "seed_to_key",
    "standard_normal",
    "standard_normal_numpy",
    "uniform01",
    "uniform01_numpy",
]

# Philox4x32 constants (Salmon et al. 2011): round multipliers and Weyl key increments.
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SHIFT31 = np.uint64(31)
_SHIFT11 = np.uint64(11)
_ZERO = np.uint64(0)
# Counter words (c2, c3) that mark a key-derivation block; streams use (0, 0).
_FOLD_TAG = np.uint64(0x6B657973)  # "keys"
_FOLD_INT = np.uint64(1)
_FOLD_STR = np.uint64(2)
_FOLD_SEED = np.uint64(3)  # the chunk count that closes a seed
_FOLD_SEED_CHUNK = np.uint64(0x100)  # + position: one 64-bit chunk of a seed
_SEED_ROOT = 0x61676B6974526E67  # "agkitRng": the key that absorbs a user's integer seed

# SplitMix64: the golden-ratio increment and the two multipliers of its finalizer (Stafford's
# "Mix13", as in java.util.SplittableRandom).
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFT30 = np.uint64(30)
_SHIFT27 = np.uint64(27)
_ONE = np.uint64(1)
_TWO = np.uint64(2)

_TWO_M53 = 2.0**-53
# Counter word c3 of the tail stream of Box-Muller's radius (c2 holds the level, from 1): no other
# stream uses it (streams have c2 = c3 = 0, key derivation c2 = _FOLD_TAG and c3 in 1..3).
_TAIL_TAG = np.uint64(0x7461696C)  # "tail"

# log(x): the reduction and coefficients of fdlibm's e_log.c, on [sqrt(2)/2, sqrt(2)):
# f = x - 1, s = f / (2 + f), log(x) = f - (f^2/2 - s (f^2/2 + R(s^2))). Its notice:
#   Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
#   Developed at SunSoft, a Sun Microsystems, Inc. business.
#   Permission to use, copy, modify, and distribute this software is freely granted,
#   provided that this notice is preserved.
_LN2_HI = 6.93147180369123816490e-01  # ln 2, high 32 bits: e * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_SQRT_HALF = math.sqrt(0.5)
_INV_P32 = 2.0**-32
_INV_P16 = 2.0**-16
_INV_P8 = 2.0**-8
_INV_P4 = 2.0**-4
_INV_P2 = 2.0**-2
_P32 = 2.0**32
_P16 = 2.0**16
_P8 = 2.0**8
_P4 = 2.0**4
_P2 = 2.0**2
# sin and cos on |a| <= pi/4: Taylor coefficients (-1)^k / (2k+1)! and (-1)^k / (2k)!; the
# truncation error (|a|^19 / 19! and |a|^20 / 20!) is below 1e-19.
_HALF_PI = math.pi / 2.0
_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7, _S8 = (
    (-1.0) ** k / math.factorial(2 * k + 1) for k in range(9)
)
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = (
    (-1.0) ** k / math.factorial(2 * k) for k in range(10)
)


# --------------------------------------------------------------------------------------------
# Device functions (call them from kernels)
# --------------------------------------------------------------------------------------------


@kernel(inline=True)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter words ``c0..c3`` under key words ``k0, k1``.

    All arguments and the four results are ``np.uint64`` holding 32-bit words.
    """
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT32) ^ c1 ^ k0,
            p1 & _MASK32,
            (p0 >> _SHIFT32) ^ c3 ^ k1,
            p0 & _MASK32,
        )
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


@kernel(inline=True)
def random_block(key, counter):
    """The four 32-bit words (as ``np.uint64``) of stream block ``counter`` under ``key``."""
    k = np.uint64(key)
    c = np.uint64(counter)
    return philox4x32_10(c & _MASK32, c >> _SHIFT32, _ZERO, _ZERO, k & _MASK32, k >> _SHIFT32)


@kernel(inline=True)
def mix64(key, index):
    """Output ``index`` (from 0) of SplitMix64 started at state ``key``: a ``np.uint64``."""
    z = np.uint64(key) + _GAMMA * (np.uint64(index) + _ONE)
    z = (z ^ (z >> _SHIFT30)) * _MIX1
    z = (z ^ (z >> _SHIFT27)) * _MIX2
    return z ^ (z >> _SHIFT31)


@kernel(inline=True)
def mix_block(key, counter):
    """The four 32-bit words (as ``np.uint64``) of SplitMix64 block ``counter`` under ``key``."""
    c = np.uint64(counter) * _TWO
    a = mix64(key, c)
    b = mix64(key, c + _ONE)
    return a & _MASK32, a >> _SHIFT32, b & _MASK32, b >> _SHIFT32


@kernel(inline=True)
def fold_in(key, data):
    """The key of sub-stream ``data`` (an integer) of ``key``: a ``np.uint64``."""
    k = np.uint64(key)
    d = np.uint64(data)
    w0, w1, _, _ = philox4x32_10(
        d & _MASK32, d >> _SHIFT32, _FOLD_TAG, _FOLD_INT, k & _MASK32, k >> _SHIFT32
    )
    return (w0 << _SHIFT32) | w1


@kernel(inline=True)
def uniform01(key, index):
    """A float64 uniform on [0, 1) (multiples of 2**-53) at ``index`` of stream ``key``."""
    w0, w1, _, _ = random_block(key, index)
    return np.int64(((w0 << _SHIFT32) | w1) >> _SHIFT11) * _TWO_M53


@kernel(inline=True)
def rademacher(key, index):
    """``+1.0`` or ``-1.0`` with probability 1/2 each, at ``index`` of stream ``key``."""
    w0, _, _, _ = random_block(key, index)
    return 1.0 - 2.0 * np.float64(np.int64(w0 >> _SHIFT31))


@kernel(inline=True)
def _log_unit(t):
    """Natural log of ``t`` in (2**-64, 1] (no libm call; about one ulp)."""
    # Scale t into (1/2, 1] by exact powers of two, counting the exponent in e. Branch-free
    # (select): an `if` per step made this device function most of the IR-level inlining cost
    # of the Gaussian noise kernel with an empty cache; the selects are what LLVM made of them.
    c = t <= _INV_P32
    t = select(c, t * _P32, t)
    e = select(c, -32.0, 0.0)
    c = t <= _INV_P16
    t = select(c, t * _P16, t)
    e = select(c, e - 16.0, e)
    c = t <= _INV_P8
    t = select(c, t * _P8, t)
    e = select(c, e - 8.0, e)
    c = t <= _INV_P4
    t = select(c, t * _P4, t)
    e = select(c, e - 4.0, e)
    c = t <= _INV_P2
    t = select(c, t * _P2, t)
    e = select(c, e - 2.0, e)
    c = t <= 0.5
    t = select(c, t * 2.0, t)
    e = select(c, e - 1.0, e)
    c = t < _SQRT_HALF
    t = select(c, t * 2.0, t)
    e = select(c, e - 1.0, e)
    f = t - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    return e * _LN2_HI - ((hfsq - (s * (hfsq + r) + e * _LN2_LO)) - f)


@kernel(inline=True)
def _cos_sin_turns(v):
    """``(cos 2 pi v, sin 2 pi v)`` for ``v`` in [0, 1) on the 2**-53 grid (no libm call)."""
    x = 4.0 * v  # exact
    q = np.floor(x + 0.5)  # nearest quarter turn, 0..4
    a = (x - q) * _HALF_PI  # x - q exact, in [-1/2, 1/2]: a in [-pi/4, pi/4]
    z = a * a
    s = a * (
        _S0
        + z
        * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * (_S6 + z * (_S7 + z * _S8)))))))
    )
    c = _C0 + z * (
        _C1
        + z
        * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * (_C6 + z * (_C7 + z * (_C8 + z * _C9)))))))
    )
    quadrant = np.int64(q) & 3
    odd = (quadrant & 1) != 0
    cos_t = select(odd, s, c)
    sin_t = select(odd, c, s)
    cos_t = select((((quadrant + 1) >> 1) & 1) != 0, -cos_t, cos_t)  # quadrants 1 and 2
    sin_t = select(((quadrant >> 1) & 1) != 0, -sin_t, sin_t)  # quadrants 2 and 3
    return cos_t, sin_t


@kernel(inline=True)
def normal_pair_head(key, counter):
    """Box-Muller on block ``counter``, except in the tail: ``(z0, z1, tail)``.

    ``tail`` is 1 when the radius uniform fell in its lowest cell (probability ``2**-53``); the
    pair is then ``(0.0, 0.0)`` and the caller must use :func:`normal_pair_tail` instead. This
    split keeps the common path free of calls, so loops over it vectorize.
    """
    w0, w1, w2, w3 = random_block(key, counter)
    m = np.int64(((w0 << _SHIFT32) | w1) >> _SHIFT11)
    u = (m + 1) * _TWO_M53  # (0, 1]
    v = np.int64(((w2 << _SHIFT32) | w3) >> _SHIFT11) * _TWO_M53  # [0, 1)
    tail = np.int64(m == 0)
    r = np.sqrt(-2.0 * _log_unit(u)) * np.float64(1 - tail)
    cos_t, sin_t = _cos_sin_turns(v)
    return r * cos_t, r * sin_t, tail


@kernel
def _tail_minus_log_u(key, counter):
    """``-log u`` for a radius uniform ``u`` in ``(0, 2**-53]``: ``u = 2**-53 u'``, recursively.

    Level ``L`` (1, 2, ...) draws 53 bits ``m_L`` from Philox on the counter words
    ``(counter_lo, counter_hi, L, _TAIL_TAG)``; ``m_L > 0`` ends the recursion with
    ``u = 2**(-53 L) (m_L + 1) 2**-53``, ``m_L == 0`` refines further, up to :data:`TAIL_LEVELS`.
    """
    k = np.uint64(key)
    c = np.uint64(counter)
    level = 1
    while True:
        w0, w1, _, _ = philox4x32_10(
            c & _MASK32, c >> _SHIFT32, np.uint64(level), _TAIL_TAG, k & _MASK32, k >> _SHIFT32
        )
        m = np.int64(((w0 << _SHIFT32) | w1) >> _SHIFT11)
        if m != 0 or level == TAIL_LEVELS:
            e = -53.0 * level  # log 2**(-53 L) = e ln 2, with fdlibm's split of ln 2
            return -((e * _LN2_HI + e * _LN2_LO) + _log_unit((m + 1) * _TWO_M53))
        level += 1


@kernel
def normal_pair_tail(key, counter):
    """The pair of block ``counter`` when :func:`normal_pair_head` reports ``tail``."""
    _, _, w2, w3 = random_block(key, counter)
    v = np.int64(((w2 << _SHIFT32) | w3) >> _SHIFT11) * _TWO_M53
    r = np.sqrt(2.0 * _tail_minus_log_u(key, counter))
    cos_t, sin_t = _cos_sin_turns(v)
    return r * cos_t, r * sin_t


@kernel(inline=True)
def normal_pair(key, counter):
    """Two independent float64 N(0, 1) values from stream block ``counter`` (Box-Muller)."""
    z0, z1, tail = normal_pair_head(key, counter)
    if tail:
        z0, z1 = normal_pair_tail(key, counter)
    return z0, z1


@kernel(inline=True)
def standard_normal(key, index):
    """A float64 N(0, 1) value at ``index`` of stream ``key``: half of a :func:`normal_pair`."""
    i = np.uint64(index)
    z0, z1 = normal_pair(key, i >> np.uint64(1))
    return z1 if i & np.uint64(1) else z0


# --------------------------------------------------------------------------------------------
# Fill kernels
# --------------------------------------------------------------------------------------------

# Elements per parallel piece. Every value depends only on (key, index), so the bits never depend
# on the thread count; the fixed size only keeps the pieces large enough to amortise scheduling.
# (Each piece's loop runs on a slice of ``out``: numba vectorizes that form, not a loop that
# indexes the whole array from inside the prange body.)
_PIECE = 1 << 15


@kernel(parallel=True)
def _fill_uniform01_kernel(out, key, offset, bits):
    """``out[i] = floor(uniform01(key, offset + i) * 2**bits) / 2**bits`` (bits <= 53)."""
    n = out.size
    shift = np.uint64(64 - bits)
    scale = 2.0**-bits
    for piece in prange((n + _PIECE - 1) // _PIECE):
        start = piece * _PIECE
        part = out[start : min2(n, start + _PIECE)]
        first = offset + start
        for j in range(part.size):
            w0, w1, _, _ = random_block(key, first + j)
            part[j] = np.int64(((w0 << _SHIFT32) | w1) >> shift) * scale


@kernel(parallel=True)
def _fill_rademacher_kernel(out, key, offset):
    """``out[i] = rademacher(key, offset + i)``."""
    n = out.size
    for piece in prange((n + _PIECE - 1) // _PIECE):
        start = piece * _PIECE
        part = out[start : min2(n, start + _PIECE)]
        first = offset + start
        for j in range(part.size):
            part[j] = rademacher(key, first + j)


# --------------------------------------------------------------------------------------------
# Python: keys and wrappers
# --------------------------------------------------------------------------------------------


def check_stream_args(out: Any, key: Any, offset: Any) -> tuple[np.ndarray, np.uint64, int]:
    """The checks of every ``fill_*``-style entry point that writes stream values into ``out``.

    ``out`` must be a C-contiguous writeable float32/float64 array, ``key`` an integer in
    ``[0, 2**64)``, ``offset`` an integer with ``offset + out.size <= 2**63``. Returns the flat
    view of ``out``, the key as ``uint64`` and the offset as ``int``; raises TypeError/ValueError
    naming the argument otherwise.
    """
    flat = _as_float_out(out)
    key, offset = check_key_and_offset(key, offset, flat.size)
    return flat, key, offset


def check_key_and_offset(key: Any, offset: Any, size: int) -> tuple[np.uint64, int]:
    """``key`` as ``uint64`` (an integer in ``[0, 2**64)``) and ``offset`` as ``int`` (an integer
    with ``offset + size <= 2**63``): the stream arguments of every noise entry point, whatever
    its output dtype. Raises TypeError/ValueError naming the argument otherwise."""
    return _as_key(key), _as_offset(offset, size)


def _as_key(key: Any, name: str = "key") -> np.uint64:
    if isinstance(key, bool) or not isinstance(key, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [0, 2**64), got {type(key).__name__}")
    key = int(key)
    if not 0 <= key < UINT64_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**64), got {key}")
    return np.uint64(key)


def _as_offset(offset: Any, size: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset must be an integer, got {type(offset).__name__}")
    offset = int(offset)
    if offset < 0 or offset + size > 2**63:
        raise ValueError(f"offset must be in [0, 2**63 - size], got {offset}")
    return offset


def _as_float_out(out: Any) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.dtype not in (np.float32, np.float64):
        raise TypeError(f"out must be float32 or float64, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    return out.reshape(-1)


def _fold(key: int, data: int, kind: np.uint64) -> int:
    """Philox on (data_lo, data_hi, _FOLD_TAG, kind) under key: a 64-bit Python int.

    One counter, in Python ints (:func:`_philox_words`): NumPy's per-call overhead made this
    about 120 us, and a compression round derives its stream key with two of them."""
    k = int(np.uint64(key))  # np.uint64 keeps the range check (OverflowError outside [0, 2**64))
    d = int(np.uint64(data))
    w0, w1, _, _ = _philox_words(
        d & _MASK32_INT, d >> 32, int(_FOLD_TAG), int(kind), k & _MASK32_INT, k >> 32
    )
    return (w0 << 32) | w1


def seed_to_key(seed: int | np.random.Generator | None = None) -> int:
    """A 64-bit stream key from a user's seed.

    Parameters
    ----------
    seed : int, numpy.random.Generator or None
        A non-negative integer (any size; hashed, so nearby seeds give unrelated keys), a NumPy
        Generator (one 64-bit draw, which advances it), or None: 64 bits from the operating
        system (``secrets``), for a run that nobody can replay.

    Returns
    -------
    int
        In [0, 2**64).

    Example
    -------
    >>> seed_to_key(0) == seed_to_key(0) != seed_to_key(1)
    True
    """
    if seed is None:
        return secrets.randbits(64)
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, UINT64_LIMIT, dtype=np.uint64))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"seed must be None, a non-negative int or a numpy Generator, got {type(seed).__name__}"
        )
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    key = _SEED_ROOT
    chunks = 0
    while True:  # absorb 64 bits at a time, position-tagged, then the number of chunks
        key = _fold(key, seed & (UINT64_LIMIT - 1), _FOLD_SEED_CHUNK + np.uint64(chunks))
        chunks += 1
        seed >>= 64
        if seed == 0:
            break
    return _fold(key, chunks, _FOLD_SEED)


def derive_key(key: int, *fields: int | str) -> int:
    """The key of a sub-stream of ``key`` named by ``fields`` (integers or strings), in order.

    ``derive_key(k, a, b) == derive_key(derive_key(k, a), b)``; an integer field ``f`` gives the
    same key as ``fold_in(k, f)`` inside a kernel. Strings are hashed (BLAKE2b) to 64 bits and
    folded with a different tag, so a string field never gives the key of an integer field.

    Example
    -------
    >>> base = seed_to_key(7)
    >>> noise_key = derive_key(base, "dp_noise", 12)  # purpose, then round
    >>> noise_key == derive_key(derive_key(base, "dp_noise"), 12)
    True
    """
    k = int(_as_key(key))
    for field in fields:
        if isinstance(field, str):
            digest = hashlib.blake2b(field.encode("utf-8"), digest_size=8).digest()
            k = _fold(k, int.from_bytes(digest, "little"), _FOLD_STR)
        else:
            k = _fold(k, int(_as_key(field, "field")), _FOLD_INT)
    return k


def fill_uniform01(out: np.ndarray, key: int, offset: int = 0) -> np.ndarray:
    """Fill ``out`` with uniforms on [0, 1): ``out.flat[i]`` from index ``offset + i`` of ``key``.

    float64 values are :func:`uniform01`'s; float32 values are the same numbers rounded *down*
    to multiples of 2**-24 (so they stay below 1). Returns ``out``.
    """
    flat, key, offset = check_stream_args(out, key, offset)
    bits = 53 if flat.dtype == np.float64 else 24
    with threads_for(-(-flat.size // _PIECE)):  # a tiny fill should not wake every thread
        _fill_uniform01_kernel(flat, key, offset, bits)
    return out


def fill_rademacher(out: np.ndarray, key: int, offset: int = 0) -> np.ndarray:
    """Fill ``out`` with random signs: ``out.flat[i] = rademacher(key, offset + i)``."""
    flat, key, offset = check_stream_args(out, key, offset)
    _fill_rademacher_kernel(flat, key, offset)
    return out


# --------------------------------------------------------------------------------------------
# NumPy twins (bit-exact)
# --------------------------------------------------------------------------------------------


def philox4x32_10_numpy(counters: np.ndarray, key: int | np.ndarray) -> np.ndarray:
    """Philox4x32-10 of ``counters`` (shape ``(..., 4)``, 32-bit words) under a 64-bit ``key``.

    ``key`` is an integer (words ``key & 0xFFFFFFFF`` and ``key >> 32``) or an array of shape
    ``(..., 2)`` of 32-bit key words. Returns a uint64 array of shape ``(..., 4)``.
    """
    c = np.asarray(counters).astype(np.uint64)
    if np.ndim(key) == 0:
        k = int(np.uint64(key))
        k0, k1 = k & _MASK32_INT, k >> 32
    else:
        k = np.asarray(key).astype(np.uint64)
        k0, k1 = k[..., 0], k[..., 1]
    return np.stack(_philox_words(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k0, k1), axis=-1)


_M0_INT, _M1_INT, _W0_INT, _W1_INT = int(_M0), int(_M1), int(_W0), int(_W1)
_MASK32_INT = int(_MASK32)
_ROUND_INDEX = np.arange(10, dtype=np.uint64)


def _round_keys(k: Any, weyl: int) -> Any:
    """The ten round keys ``(k + r * weyl) mod 2**32`` of one key word: a list for a Python
    int, one ``[10, ...]`` array (a single vectorized pass) for an array of key words."""
    if isinstance(k, int):
        return [(k + r * weyl) & _MASK32_INT for r in range(10)]
    r = _ROUND_INDEX.reshape(10, *(1,) * np.ndim(k))
    return (k + r * np.uint64(weyl)) & _MASK32


def _philox_words(c0: Any, c1: Any, c2: Any, c3: Any, k0: Any, k1: Any) -> tuple[Any, ...]:
    """Philox4x32-10's rounds on counter words ``c0..c3`` under key words ``k0, k1``: 32-bit
    Python ints, or uint64 arrays (and ints) that broadcast against each other.

    With Python ints (one counter: :func:`derive_key`, :func:`seed_to_key`) it takes about a
    twentieth of the time of NumPy on a one-element array; with arrays (:func:`fold_in_array`,
    :func:`philox4x32_10_numpy`) the key schedule is one vectorized pass instead of four NumPy
    calls per round. The constants are Python ints, which NumPy applies to uint64 arrays in
    uint64 (every product of two 32-bit words fits).
    """
    k0s, k1s = _round_keys(k0, _W0_INT), _round_keys(k1, _W1_INT)
    for r in range(10):
        p0 = _M0_INT * c0
        p1 = _M1_INT * c2
        c0, c1, c2, c3 = (
            (p1 >> 32) ^ c1 ^ k0s[r],
            p1 & _MASK32_INT,
            (p0 >> 32) ^ c3 ^ k1s[r],
            p0 & _MASK32_INT,
        )
    return c0, c1, c2, c3


def random_block_numpy(key: int, counters: Any) -> np.ndarray:
    """Twin of :func:`random_block` over an array of counters: uint64 words, shape ``(..., 4)``."""
    c = np.asarray(counters).astype(np.uint64)
    zero = np.zeros_like(c)
    return philox4x32_10_numpy(np.stack([c & _MASK32, c >> _SHIFT32, zero, zero], -1), key)


def mix64_numpy(key: int, indices: Any) -> np.ndarray:
    """Twin of :func:`mix64` over an array of indices (uint64, wrapping like the kernel)."""
    i = np.asarray(indices).astype(np.uint64)
    z = np.uint64(key) + _GAMMA * (i + _ONE)
    z = (z ^ (z >> _SHIFT30)) * _MIX1
    z = (z ^ (z >> _SHIFT27)) * _MIX2
    return z ^ (z >> _SHIFT31)


def mix_block_numpy(key: int, counters: Any) -> np.ndarray:
    """Twin of :func:`mix_block` over an array of counters: uint64 words, shape ``(..., 4)``."""
    c = np.asarray(counters).astype(np.uint64) * _TWO
    a = mix64_numpy(key, c)
    b = mix64_numpy(key, c + _ONE)
    return np.stack([a & _MASK32, a >> _SHIFT32, b & _MASK32, b >> _SHIFT32], -1)


def fold_in_numpy(key: int, data: int) -> int:
    """Twin of :func:`fold_in`."""
    return _fold(int(key), int(data), _FOLD_INT)


def fold_in_array(keys: Any, data: Any) -> np.ndarray:
    """:func:`fold_in` over arrays: ``uint64`` keys and integer data, broadcast against each other.

    Element ``i`` is ``fold_in_numpy(keys[i], data[i])``, from one vectorized Philox pass: a
    caller that needs many sub-stream keys computes them here instead of in a kernel.

    Example
    -------
    >>> keys = fold_in_array(np.uint64(7), np.arange(3))
    >>> [int(k) for k in keys] == [fold_in_numpy(7, i) for i in range(3)]
    True
    """
    k = np.asarray(keys, dtype=np.uint64)
    d = np.asarray(data).astype(np.uint64)
    k, d = np.broadcast_arrays(k, d)
    w0, w1, _, _ = _philox_words(
        d & _MASK32, d >> _SHIFT32, int(_FOLD_TAG), int(_FOLD_INT), k & _MASK32, k >> _SHIFT32
    )
    return (w0 << _SHIFT32) | w1


def uniform01_numpy(key: int, index: Any) -> np.ndarray:
    """Twin of :func:`uniform01` over an array of indices."""
    w = random_block_numpy(key, index)
    return (((w[..., 0] << _SHIFT32) | w[..., 1]) >> _SHIFT11).astype(np.int64) * _TWO_M53


def rademacher_numpy(key: int, index: Any) -> np.ndarray:
    """Twin of :func:`rademacher` over an array of indices."""
    w = random_block_numpy(key, index)
    return 1.0 - 2.0 * (w[..., 0] >> _SHIFT31).astype(np.int64).astype(np.float64)


def _log_unit_numpy(t: np.ndarray) -> np.ndarray:
    t = np.array(t, dtype=np.float64)
    e = np.zeros_like(t)
    for limit, scale, step in (
        (_INV_P32, _P32, 32.0),
        (_INV_P16, _P16, 16.0),
        (_INV_P8, _P8, 8.0),
        (_INV_P4, _P4, 4.0),
        (_INV_P2, _P2, 2.0),
        (0.5, 2.0, 1.0),
    ):
        small = t <= limit
        t = np.where(small, t * scale, t)
        e = np.where(small, e - step, e)
    small = t < _SQRT_HALF
    t = np.where(small, t * 2.0, t)
    e = np.where(small, e - 1.0, e)
    f = t - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    return e * _LN2_HI - ((hfsq - (s * (hfsq + r) + e * _LN2_LO)) - f)


def _cos_sin_turns_numpy(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = 4.0 * np.asarray(v, dtype=np.float64)
    q = np.floor(x + 0.5)
    a = (x - q) * _HALF_PI
    z = a * a
    s = a * (
        _S0
        + z
        * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * (_S6 + z * (_S7 + z * _S8)))))))
    )
    c = _C0 + z * (
        _C1
        + z
        * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * (_C6 + z * (_C7 + z * (_C8 + z * _C9)))))))
    )
    quadrant = q.astype(np.int64) & 3
    odd = (quadrant & 1) == 1
    cos_t = np.where(odd, s, c)
    sin_t = np.where(odd, c, s)
    cos_t = np.where(((quadrant + 1) >> 1) & 1 == 1, -cos_t, cos_t)
    sin_t = np.where((quadrant >> 1) & 1 == 1, -sin_t, sin_t)
    return cos_t, sin_t


def _tail_minus_log_u_numpy(key: int, counter: int) -> float:
    """Twin of :func:`_tail_minus_log_u` for one counter."""
    c = np.uint64(counter)
    for level in range(1, TAIL_LEVELS + 1):
        words = np.array([[c & _MASK32, c >> _SHIFT32, np.uint64(level), _TAIL_TAG]], np.uint64)
        w = philox4x32_10_numpy(words, np.uint64(key))[0]
        m = int(((w[0] << _SHIFT32) | w[1]) >> _SHIFT11)
        if m != 0 or level == TAIL_LEVELS:
            e = -53.0 * level
            return float(-((e * _LN2_HI + e * _LN2_LO) + _log_unit_numpy((m + 1) * _TWO_M53)))
    raise AssertionError("unreachable")  # pragma: no cover


def normal_pair_tail_numpy(key: int, counters: Any) -> tuple[np.ndarray, np.ndarray]:
    """Twin of :func:`normal_pair_tail` over an array of block counters."""
    c = np.asarray(counters).astype(np.uint64)
    w = random_block_numpy(key, c)
    v = (((w[..., 2] << _SHIFT32) | w[..., 3]) >> _SHIFT11).astype(np.int64) * _TWO_M53
    t = np.array([_tail_minus_log_u_numpy(key, int(i)) for i in c.reshape(-1)]).reshape(c.shape)
    r = np.sqrt(2.0 * t)
    cos_t, sin_t = _cos_sin_turns_numpy(v)
    return r * cos_t, r * sin_t


def normal_pair_numpy(key: int, counters: Any) -> tuple[np.ndarray, np.ndarray]:
    """Twin of :func:`normal_pair` over an array of block counters."""
    c = np.asarray(counters).astype(np.uint64)
    w = random_block_numpy(key, c)
    m = (((w[..., 0] << _SHIFT32) | w[..., 1]) >> _SHIFT11).astype(np.int64)
    u = (m + 1) * _TWO_M53
    v = (((w[..., 2] << _SHIFT32) | w[..., 3]) >> _SHIFT11).astype(np.int64) * _TWO_M53
    r = np.sqrt(-2.0 * _log_unit_numpy(u))
    cos_t, sin_t = _cos_sin_turns_numpy(v)
    z0, z1 = r * cos_t, r * sin_t
    tail = m == 0
    if np.any(tail):  # probability 2**-53 per pair
        z0[tail], z1[tail] = normal_pair_tail_numpy(key, c[tail])
    return z0, z1


def standard_normal_numpy(key: int, index: Any) -> np.ndarray:
    """Twin of :func:`standard_normal` over an array of indices."""
    i = np.asarray(index).astype(np.uint64)
    z0, z1 = normal_pair_numpy(key, i >> np.uint64(1))
    return np.where((i & np.uint64(1)) == 1, z1, z0)


def fill_uniform01_numpy(out: np.ndarray, key: int, offset: int = 0) -> np.ndarray:
    """Twin of :func:`fill_uniform01`."""
    flat = out.reshape(-1)
    bits = 53 if flat.dtype == np.float64 else 24
    w = random_block_numpy(key, np.arange(offset, offset + flat.size, dtype=np.uint64))
    top = ((w[..., 0] << _SHIFT32) | w[..., 1]) >> np.uint64(64 - bits)
    flat[...] = top.astype(np.int64) * 2.0**-bits
    return out


def fill_rademacher_numpy(out: np.ndarray, key: int, offset: int = 0) -> np.ndarray:
    """Twin of :func:`fill_rademacher`."""
    flat = out.reshape(-1)
    flat[...] = rademacher_numpy(key, np.arange(offset, offset + flat.size, dtype=np.uint64))
    return out
