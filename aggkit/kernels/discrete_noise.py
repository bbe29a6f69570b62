"""Discrete noise on integers for distributed DP: the discrete Gaussian and Skellam distributions.

Both are sampled from their own definitions, not by rounding a float Gaussian (which would give
another distribution, with another privacy analysis):

* **Discrete Gaussian** ``N_Z(0, sigma^2)``, ``P(z) ∝ exp(-z^2 / (2 sigma^2))`` on the integers,
  by the rejection sampler of Canonne, Kamath and Steinke ("The Discrete Gaussian for
  Differential Privacy", NeurIPS 2020, Algorithm 3): with ``t = floor(sigma) + 1``, draw ``z``
  from the discrete Laplace distribution ``P(z) ∝ exp(-|z| / t)`` (a geometric magnitude
  ``floor(t E)``, ``E ~ Exp(1)``, and a random sign, where "minus zero" is redrawn) and accept it
  with probability ``exp(-(|z| - sigma^2 / t)^2 / (2 sigma^2))``. The accepted values have
  exactly the discrete Gaussian's pmf; about 1/0.6 attempts are needed on average.
* **Skellam** ``Sk(mu, mu)``, the difference of two independent ``Poisson(mu)``: variance
  ``2 mu``, and sums of independent Skellams are Skellam (Agarwal, Kairouz and Liu, "The Skellam
  Mechanism for Differentially Private Federated Learning", NeurIPS 2021). Poisson draws use
  inversion for ``mu < 10`` and Hormann's transformed rejection (PTRS, 1993; NumPy's algorithm)
  above.

Floating-point caveat: the Bernoulli and rejection tests compare a 53-bit uniform with a float64
``exp``, ``log`` or ``lgamma`` (libm), so each probability is exact to about 1e-16 relative;
the exponential variable's tail stops at ``53 ln 2 = 36.7`` (a geometric magnitude above
``36.7 t`` has probability below 1e-16). The pmfs agree with the exact ones to that precision
(tested with chi-square tests); Canonne et al. give an exact rational-arithmetic version for
settings that need more.

Streams: element ``i`` of a call with ``key`` and ``offset`` uses index ``offset + i``; its
attempt ``a`` reads the Philox block of counter words ``(index_lo, index_hi, a, tag)``, with a tag
per distribution (the two Poissons of a Skellam value use indices ``2 index`` and ``2 index +
1``). Every value is a function of ``(key, index)`` only, so the bits do not depend on the thread
count or on how a vector is split. An element that has not accepted after :data:`MAX_ATTEMPTS`
attempts (probability far below 2**-1000) is reported, never silently set.

Example
-------
>>> import numpy as np
>>> from aggkit.kernels import discrete_noise
>>> x = np.zeros(5, np.int64)
>>> discrete_noise.add_discrete_gaussian(x, sigma=3.0, key=7) is x
True
>>> bool(np.array_equal(x, discrete_noise.add_discrete_gaussian_numpy(np.zeros(5, np.int64),
...                                                                     3.0, 7)))
True
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numba import prange

from aggkit.kernels import counter_rng
from aggkit.kernels._jit import kernel, threads_for
from aggkit.kernels.counter_rng import _log_unit, _log_unit_numpy, philox4x32_10

__all__ = [
    "MAX_ATTEMPTS",
    "DiscreteNoiseError",
    "add_discrete_gaussian",
    "add_discrete_gaussian_numpy",
    "add_skellam",
    "add_skellam_numpy",
]

#: Rejection attempts per value before the call reports a failure.
MAX_ATTEMPTS = 1 << 12

_DG_TAG = np.uint64(0x64676175)  # "dgau"
_PO_TAG = np.uint64(0x706F6973)  # "pois"
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK31 = np.uint64(0x7FFFFFFF)
_SHIFT32 = np.uint64(32)
_SHIFT31 = np.uint64(31)
_SHIFT11 = np.uint64(11)
_SHIFT10 = np.uint64(10)
_TWO_M53 = 2.0**-53
_PIECE = 1 << 12
_SMALL_MEAN = 10.0  # Poisson: inversion below, PTRS above


class DiscreteNoiseError(RuntimeError):
    """A rejection sampler did not accept within :data:`MAX_ATTEMPTS` attempts."""


# -- device functions ------------------------------------------------------------------------------


@kernel(inline=True)
def _words(key, index, attempt, tag):
    k = np.uint64(key)
    i = np.uint64(index)
    return philox4x32_10(
        i & _MASK32, i >> _SHIFT32, np.uint64(attempt), tag, k & _MASK32, k >> _SHIFT32
    )


@kernel(inline=True)
def _open_unit(w0, w1):
    """A uniform in (0, 1] on the 2**-53 grid, from two words."""
    return (np.int64(((w0 << _SHIFT32) | w1) >> _SHIFT11) + 1) * _TWO_M53


@kernel(inline=True)
def _unit(w0, w1):
    """A uniform in [0, 1) on the 2**-53 grid, from two words."""
    return np.int64(((w0 << _SHIFT32) | w1) >> _SHIFT11) * _TWO_M53


@kernel
def discrete_gaussian_value(key, index, sigma, t, sigma2_over_t, two_sigma2):
    """``(value, attempts)`` of element ``index``; attempts is -1 after :data:`MAX_ATTEMPTS`."""
    for attempt in range(MAX_ATTEMPTS):
        w0, w1, w2, w3 = _words(key, index, attempt, _DG_TAG)
        e = -_log_unit(_open_unit(w0, w1))  # Exp(1)
        y = np.floor(t * e)  # P(y) = (1 - exp(-1/t)) exp(-y/t)
        negative = (w2 >> _SHIFT31) != 0
        if negative and y == 0.0:
            continue
        u = np.int64((((w2 & _MASK31) << _SHIFT32) | w3) >> _SHIFT10) * _TWO_M53
        d = y - sigma2_over_t
        if u < math.exp(-d * d / two_sigma2):
            value = np.int64(y)
            return (-value if negative else value), attempt + 1
    return np.int64(0), -1


@kernel
def poisson_value(key, index, mean, tag):
    """``(value, attempts)`` of a Poisson(``mean``) draw at ``index``; -1 attempts on failure."""
    if mean <= 0.0:
        return np.int64(0), 1
    if mean < _SMALL_MEAN:  # inversion of one uniform
        w0, w1, _, _ = _words(key, index, 0, tag)
        u = _unit(w0, w1)
        p = math.exp(-mean)
        cdf = p
        k = 0
        while u >= cdf and k < 1000:
            k += 1
            p = p * mean / k
            cdf = cdf + p
        return np.int64(k), 1
    slam = math.sqrt(mean)
    loglam = math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    for attempt in range(MAX_ATTEMPTS):
        w0, w1, w2, w3 = _words(key, index, attempt, tag)
        uu = _unit(w0, w1) - 0.5
        v = _unit(w2, w3)
        us = 0.5 - abs(uu)
        k = math.floor((2.0 * a / us + b) * uu + mean + 0.43)
        if us >= 0.07 and v <= vr:
            return np.int64(k), attempt + 1
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if v > 0.0 and (math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)) <= (
            -mean + k * loglam - math.lgamma(k + 1.0)
        ):
            return np.int64(k), attempt + 1
    return np.int64(0), -1


@kernel(parallel=True)
def _add_discrete_gaussian_kernel(out, sigma, key, offset, failures):
    n = out.size
    t = math.floor(sigma) + 1.0
    sigma2_over_t = sigma * sigma / t
    two_sigma2 = 2.0 * sigma * sigma
    for piece in prange((n + _PIECE - 1) // _PIECE):
        start = piece * _PIECE
        stop = min(n, start + _PIECE)
        bad = 0
        for i in range(start, stop):
            z, attempts = discrete_gaussian_value(
                key, offset + i, sigma, t, sigma2_over_t, two_sigma2
            )
            out[i] += z
            if attempts < 0:
                bad += 1
        failures[piece] = bad


@kernel(parallel=True)
def _add_skellam_kernel(out, mean, key, offset, failures):
    n = out.size
    for piece in prange((n + _PIECE - 1) // _PIECE):
        start = piece * _PIECE
        stop = min(n, start + _PIECE)
        bad = 0
        for i in range(start, stop):
            index = 2 * (offset + i)
            p, a1 = poisson_value(key, index, mean, _PO_TAG)
            q, a2 = poisson_value(key, index + 1, mean, _PO_TAG)
            out[i] += p - q
            if a1 < 0 or a2 < 0:
                bad += 1
        failures[piece] = bad


# -- wrappers --------------------------------------------------------------------------------------


def _as_int_out(out: Any) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.int64:
        raise TypeError(f"out must be an int64 NumPy array, got {getattr(out, 'dtype', type(out))}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out.reshape(-1)


def _as_scale(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value < 2.0**40):
        raise ValueError(f"{name} must be finite, >= 0 and below 2**40, got {value}")
    return value


def _check_failures(failures: np.ndarray, what: str) -> None:
    if failures.any():
        raise DiscreteNoiseError(
            f"{int(failures.sum())} {what} values did not accept within {MAX_ATTEMPTS} attempts"
        )


def add_discrete_gaussian(out: np.ndarray, sigma: float, key: int, offset: int = 0) -> np.ndarray:
    """Add discrete Gaussian noise ``N_Z(0, sigma^2)`` to the int64 array ``out``, in place.

    Parameters
    ----------
    out : numpy.ndarray
        C-contiguous, writeable int64 (taken flat). Additions wrap like int64 (the caller keeps
        values far from the limits: distributed DP works modulo ``2**bits``).
    sigma : float
        The scale parameter (>= 0; 0 adds nothing).
    key, offset : int
        Stream key and the index of ``out.flat[0]`` (see the module notes).

    Example
    -------
    >>> add_discrete_gaussian(np.zeros(3, np.int64), 0.0, key=1).tolist()
    [0, 0, 0]
    """
    flat = _as_int_out(out)
    sigma = _as_scale(sigma, "sigma")
    key, offset = counter_rng.check_key_and_offset(key, offset, flat.size)
    if sigma == 0.0 or flat.size == 0:
        return out
    failures = np.zeros((flat.size + _PIECE - 1) // _PIECE, np.int64)
    with threads_for(failures.size):
        _add_discrete_gaussian_kernel(flat, sigma, key, offset, failures)
    _check_failures(failures, "discrete Gaussian")
    return out


def add_skellam(out: np.ndarray, mean: float, key: int, offset: int = 0) -> np.ndarray:
    """Add ``Poisson(mean) - Poisson(mean)`` (Skellam, variance ``2 mean``) to ``out``, in place.

    Parameters are as in :func:`add_discrete_gaussian`, with ``mean`` the mean of each Poisson.

    Example
    -------
    >>> x = add_skellam(np.zeros(100_000, np.int64), 50.0, key=3)
    >>> bool(abs(x.var() / 100.0 - 1.0) < 0.03)
    True
    """
    flat = _as_int_out(out)
    mean = _as_scale(mean, "mean")
    key, offset = counter_rng.check_key_and_offset(key, offset, flat.size)
    if offset + flat.size > 2**62:  # the Poissons use indices up to 2 (offset + size)
        raise ValueError(f"offset must be in [0, 2**62 - size], got {offset}")
    if mean == 0.0 or flat.size == 0:
        return out
    failures = np.zeros((flat.size + _PIECE - 1) // _PIECE, np.int64)
    with threads_for(failures.size):
        _add_skellam_kernel(flat, mean, key, offset, failures)
    _check_failures(failures, "Poisson")
    return out


# -- NumPy twins (bit-exact: the same words, the same libm calls, one element at a time) ----------


def _words_numpy(key: int, index: int, attempt: int, tag: np.uint64) -> np.ndarray:
    i = np.uint64(index)
    counters = np.array([[i & _MASK32, i >> _SHIFT32, np.uint64(attempt), tag]], np.uint64)
    return counter_rng.philox4x32_10_numpy(counters, np.uint64(key))[0]


def _discrete_gaussian_value_numpy(key: int, index: int, sigma: float) -> int:
    t = math.floor(sigma) + 1.0
    sigma2_over_t = sigma * sigma / t
    two_sigma2 = 2.0 * sigma * sigma
    for attempt in range(MAX_ATTEMPTS):
        w = _words_numpy(key, index, attempt, _DG_TAG)
        unit = (int(((w[0] << _SHIFT32) | w[1]) >> _SHIFT11) + 1) * _TWO_M53
        e = -float(_log_unit_numpy(np.array([unit]))[0])
        y = math.floor(t * e)
        negative = int(w[2] >> _SHIFT31) != 0
        if negative and y == 0:
            continue
        u = int((((w[2] & _MASK31) << _SHIFT32) | w[3]) >> _SHIFT10) * _TWO_M53
        d = y - sigma2_over_t
        if u < math.exp(-d * d / two_sigma2):
            return -y if negative else y
    raise DiscreteNoiseError("discrete Gaussian value did not accept")


def _poisson_value_numpy(key: int, index: int, mean: float) -> int:
    def unit(hi, lo):
        return int(((hi << _SHIFT32) | lo) >> _SHIFT11) * _TWO_M53

    if mean <= 0.0:
        return 0
    if mean < _SMALL_MEAN:
        w = _words_numpy(key, index, 0, _PO_TAG)
        u = unit(w[0], w[1])
        p = math.exp(-mean)
        cdf, k = p, 0
        while u >= cdf and k < 1000:
            k += 1
            p = p * mean / k
            cdf = cdf + p
        return k
    slam, loglam = math.sqrt(mean), math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    for attempt in range(MAX_ATTEMPTS):
        w = _words_numpy(key, index, attempt, _PO_TAG)
        uu = unit(w[0], w[1]) - 0.5
        v = unit(w[2], w[3])
        us = 0.5 - abs(uu)
        k = math.floor((2.0 * a / us + b) * uu + mean + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if v > 0.0 and (math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)) <= (
            -mean + k * loglam - math.lgamma(k + 1.0)
        ):
            return k
    raise DiscreteNoiseError("Poisson value did not accept")


def add_discrete_gaussian_numpy(
    out: np.ndarray, sigma: float, key: int, offset: int = 0
) -> np.ndarray:
    """Twin of :func:`add_discrete_gaussian` (bit-exact; slow, for tests)."""
    flat = out.reshape(-1)
    if sigma > 0.0:
        for i in range(flat.size):
            flat[i] += _discrete_gaussian_value_numpy(key, offset + i, float(sigma))
    return out


def add_skellam_numpy(out: np.ndarray, mean: float, key: int, offset: int = 0) -> np.ndarray:
    """Twin of :func:`add_skellam` (bit-exact; slow, for tests)."""
    flat = out.reshape(-1)
    if mean > 0.0:
        for i in range(flat.size):
            index = 2 * (offset + i)
            p = _poisson_value_numpy(key, index, float(mean))
            q = _poisson_value_numpy(key, index + 1, float(mean))
            flat[i] += p - q
    return out
