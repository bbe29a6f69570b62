"""Limits of the kernels that Python-side checks need, without importing numba.

Integer ranges, code widths and word sizes the kernels rely on (and the checks that guard them
import from here, so the two cannot drift apart), and the bounds of the samplers.

The Gaussian sampler (:func:`aggkit.kernels.counter_rng.normal_pair`) is Box-Muller on a radius
uniform ``u`` that may reach down to ``2**(-53 * (TAIL_LEVELS + 1))``, so no standard normal it
produces exceeds :data:`MAX_ABS_NORMAL` (38.33) in absolute value: its support is bounded, like
that of every finite-precision sampler.

Why that matters for differential privacy: a Gaussian mechanism with noise multiplier ``z`` moves
a client's contribution by up to ``1 / z`` noise standard deviations. An output that only one of
two neighbouring datasets can produce reveals which one it came from (an infinite privacy loss);
:func:`infinite_loss_bound` bounds the probability of such outputs. The previous sampler had a
radius of 8.57: at ``z = 0.2`` about 1.8e-4 in a single coordinate, above the usual delta; with a
radius of 38.33 the bound stays below 1e-26 for every ``z >= MIN_NOISE_MULTIPLIER`` (0.04) and
every dimension below 2**63. aggkit's DP factories refuse noise multipliers in
``(0, MIN_NOISE_MULTIPLIER)``.

Example
-------
>>> from aggkit.kernels import limits
>>> round(limits.MAX_ABS_NORMAL, 2), limits.MIN_NOISE_MULTIPLIER
(38.33, 0.04)
>>> limits.infinite_loss_bound(limits.MIN_NOISE_MULTIPLIER) < 1e-26
True
"""

from __future__ import annotations

import math

__all__ = [
    "CODE_BITS",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_ABS_NORMAL",
    "MAX_BITWIDTH",
    "MAX_CODE",
    "MAX_MODULUS",
    "MIN_NOISE_MULTIPLIER",
    "TAIL_LEVELS",
    "UINT64_LIMIT",
    "WORD_BITS",
    "infinite_loss_bound",
]

# -- integer ranges and codes (each defined once: kernels and their callers import them here) ---

#: The int64 range (the exact accumulators of integer sums and of secure-sum codes).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: One past the largest uint64 (stream keys are in ``[0, UINT64_LIMIT)``).
UINT64_LIMIT = 2**64

#: Bits of a discretized float on the secure channel, and the largest such code.
CODE_BITS = 32
MAX_CODE = 2**CODE_BITS - 1

#: The widest secure-channel input and the largest channel modulus: a modular accumulator
#: ``acc + r`` with ``acc, r < 2**62`` cannot overflow int64.
MAX_BITWIDTH = 62
MAX_MODULUS = 2**MAX_BITWIDTH

#: Payload bits per packed int32 word of a quantized tensor (the sign bit and 3 more stay clear).
WORD_BITS = 28


#: Extra levels of 53 random bits Box-Muller's radius uniform may use after its first 53 bits
#: (each needed with probability 2**-53): ``u >= 2**(-53 * (TAIL_LEVELS + 1))``.
TAIL_LEVELS = 19

#: The largest |value| of a standard normal from the sampler, ``sqrt(-2 log u_min)`` = 38.33.
MAX_ABS_NORMAL = math.sqrt(2.0 * 53.0 * (TAIL_LEVELS + 1) * math.log(2.0))

#: The smallest positive noise multiplier aggkit's Gaussian DP factories accept (0 is accepted and
#: means no privacy). At 0.04, :func:`infinite_loss_bound` is 5e-27 in any dimension.
MIN_NOISE_MULTIPLIER = 0.04


def infinite_loss_bound(
    noise_multiplier: float, dimension: int = 2**63, radius: float = MAX_ABS_NORMAL
) -> float:
    """Bound on the probability that one Gaussian release has an infinite privacy loss.

    The noise has standard deviation ``noise_multiplier`` (``z``) times the L2 sensitivity and
    comes in pairs (Box-Muller) whose radius is at most ``radius`` (``R``). A neighbour shifts pair
    ``j`` by ``d_j`` (in noise units), ``sum_j |d_j|^2 <= 1 / z^2``. If every pair's radius is at
    most ``R - |d_j|``, the shifted noise is still in the support, so an output only one side can
    produce needs a pair with radius in ``(R - |d_j|, R]``: probability
    ``integral_0^|d_j| (R - t) exp(-(R - t)^2 / 2) dt <= R |d_j| exp(-(R - 1/z)^2 / 2)``. Summing
    over at most ``dimension / 2`` pairs, with ``sum_j |d_j| <= sqrt(dimension / 2) / z``::

        bound = R / z * sqrt(dimension / 2) * exp(-(R - 1/z)^2 / 2)     (capped at 1)

    This treats the sampler as a continuous truncated Gaussian; the floating-point grid of the
    outputs is a separate caveat (see :mod:`aggkit.dp`).

    Example
    -------
    >>> f"{infinite_loss_bound(0.04):.0e}"  # any dimension below 2**63
    '5e-27'
    """
    z = float(noise_multiplier)
    if not z > 0.0:
        return 1.0
    shift = 1.0 / z
    if shift >= radius:
        return 1.0
    log_bound = (
        math.log(radius * shift) + 0.5 * math.log(dimension / 2.0) - 0.5 * (radius - shift) ** 2
    )
    return min(1.0, math.exp(log_bound))
