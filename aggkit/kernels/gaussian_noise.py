"""Gaussian noise from the counter-based generator: fill or add N(0, sigma^2) into a vector.

Element ``i`` of the noise is ``sigma * standard_normal(key, offset + i)`` (see
:mod:`aggkit.kernels.counter_rng`): a pure function of ``(key, offset + i)``. So a vector can be
noised in pieces (``offset`` continues the stream), by any number of threads, with the same bits.
The kernel walks the vector in fixed pieces of Box-Muller pairs; each pair of outputs costs one
Philox4x32-10 block, one logarithm, one square root and one sine/cosine polynomial, all in float64,
and vectorizes (no libm calls). A pair whose radius needs the tail stream (probability 2**-53,
see :mod:`aggkit.kernels.counter_rng`) adds 0.0 in the vectorized loop, which leaves the value
unchanged; the kernel counts such pairs per piece and the wrapper adds their real noise with the
NumPy twin. A leading or trailing half pair (at most one value at each end, when ``offset`` or
the end falls inside a pair) is also the twin's. The result has the twin's bits throughout, and
the kernel compiles no tail sampler and no single-value sampler (with them, it cost 7.9 s of CPU
time to compile, against 4.7 s without: most of a DP round's cold start).

float32 vectors receive ``float32(x + sigma * z)`` computed in float64: one rounding.

The sampler reaches 38.33 standard deviations (:mod:`aggkit.kernels.limits`). Seeded noise is
predictable by whoever knows the seed, and floating-point Gaussian samplers leak through their
low-order bits (Mironov 2012 for Laplace; Holohan and Braghin 2021 for Gaussian samplers): the
exact alternative is discrete noise sampled exactly and added to integers
(:mod:`aggkit.kernels.discrete_noise`, used by :func:`aggkit.distributed_dp`).

Example
-------
>>> import numpy as np
>>> from aggkit.kernels import gaussian_noise, counter_rng
>>> key = counter_rng.derive_key(counter_rng.seed_to_key(0), "dp_noise", 0)
>>> x = np.zeros(5, np.float32)
>>> _ = gaussian_noise.add_gaussian_noise(x, sigma=0.1, key=key)
>>> bool(np.array_equal(x, gaussian_noise.gaussian(5, 0.1, key, np.float32)))
True
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from aggkit.kernels import counter_rng
from aggkit.kernels._jit import kernel, run_tasks
from aggkit.kernels._minmax import min2
from aggkit.kernels.counter_rng import normal_pair_head

__all__ = [
    "add_gaussian_noise",
    "add_gaussian_noise_numpy",
    "gaussian",
    "gaussian_numpy",
]

# Box-Muller pairs per parallel piece (fixed: the bits never depend on the thread count anyway,
# since every value is a function of its index only).
_PIECE_PAIRS = 1 << 14


@kernel
def _add_gaussian_noise_kernel(first, stop, out, sigma, key, first_pair, tails):
    """``out[2p + h] += sigma * (z0, z1)[h]`` of Philox block ``first_pair + p``, for every pair
    of pieces ``first .. stop - 1`` outside the tail; ``tails[piece]`` counts the piece's tail
    pairs (those added 0.0). Serial: :func:`aggkit.kernels._jit.run_tasks` runs the pieces on
    threads (as a ``prange`` kernel it took twice as long to compile).

    ``out`` holds whole pairs (an even length starting at an even stream index). The wrapper adds
    a leading or trailing half pair, and the real values of tail pairs (probability ``2**-53``
    each), with the NumPy twin: the kernel compiles neither a single-value sampler nor the tail
    sampler, which together cost more CPU time to compile than this kernel.
    """
    pairs = out.size // 2
    for piece in range(first, stop):
        start = piece * _PIECE_PAIRS
        stop = min2(pairs, start + _PIECE_PAIRS)
        # A slice per piece: numba vectorizes a loop over it (not one over the whole of out).
        part = out[2 * start : 2 * stop]
        block = first_pair + np.uint64(start)
        count = 0
        for j in range(stop - start):
            z0, z1, tail = normal_pair_head(key, block + np.uint64(j))
            part[2 * j] = part[2 * j] + sigma * z0
            part[2 * j + 1] = part[2 * j + 1] + sigma * z1
            count += tail
        tails[piece] = count


def _tail_counters(key: np.uint64, counters: np.ndarray) -> np.ndarray:
    """The counters among ``counters`` whose pair is in the radius tail (``normal_pair_head``'s
    ``tail``: the 53-bit radius word is 0)."""
    w = counter_rng.random_block_numpy(int(key), counters)
    return counters[(((w[:, 0] << np.uint64(32)) | w[:, 1]) >> np.uint64(11)) == 0]


def _add_tail_pairs(
    flat: np.ndarray, sigma: float, key: np.uint64, first_pair: int, counters: np.ndarray
) -> None:
    """Add the pairs of ``counters`` (tail pairs, to which the kernel added 0.0) into ``flat``,
    whose element 0 is the first of pair ``first_pair``: the kernel's arithmetic, in NumPy."""
    if not counters.size:
        return
    z0, z1 = counter_rng.normal_pair_tail_numpy(int(key), counters)
    at = 2 * (counters.astype(np.int64) - first_pair)
    for index, z in ((at, z0), (at + 1, z1)):
        flat[index] = flat[index].astype(np.float64) + sigma * z


def _as_sigma(sigma: Any) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be a real number, got {type(sigma).__name__}")
    sigma = float(sigma)
    if not (0.0 <= sigma < math.inf):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    return sigma


def add_gaussian_noise(out: np.ndarray, sigma: float, key: int, offset: int = 0) -> np.ndarray:
    """Add N(0, sigma^2) noise to every element of ``out``, in place.

    Parameters
    ----------
    out : numpy.ndarray
        A C-contiguous, writeable float32 or float64 array of any shape (taken flat).
    sigma : float
        The noise standard deviation (finite, >= 0).
    key : int
        A stream key in [0, 2**64): from :func:`aggkit.kernels.counter_rng.seed_to_key`, usually
        specialised with :func:`~aggkit.kernels.counter_rng.derive_key` (purpose, round).
    offset : int
        Stream index of ``out.flat[0]``: noise for a long vector may be added piece by piece.

    Returns
    -------
    numpy.ndarray
        ``out``.

    Example
    -------
    >>> x = np.ones(4)
    >>> add_gaussian_noise(x, 0.5, key=12345).shape
    (4,)
    """
    flat, key, offset = counter_rng.check_stream_args(out, key, offset)
    sigma = _as_sigma(sigma)
    if flat.size and offset & 1:  # out[0] is the second half of its pair
        add_gaussian_noise_numpy(flat[:1], sigma, key, offset)
        flat, offset = flat[1:], offset + 1
    if flat.size & 1:  # the last value is the first half of its pair
        add_gaussian_noise_numpy(flat[-1:], sigma, key, offset + flat.size - 1)
        flat = flat[:-1]
    if flat.size:
        first_pair = offset >> 1
        tails = np.zeros(-(-(flat.size // 2) // _PIECE_PAIRS), np.int64)
        run_tasks(
            _add_gaussian_noise_kernel, tails.size, flat, sigma, key, np.uint64(first_pair), tails
        )
        for piece in np.flatnonzero(tails):
            start = first_pair + int(piece) * _PIECE_PAIRS
            stop = min(first_pair + flat.size // 2, start + _PIECE_PAIRS)
            counters = np.arange(start, stop, dtype=np.uint64)
            _add_tail_pairs(flat, sigma, key, first_pair, _tail_counters(key, counters))
    return out


def gaussian(
    size: int | tuple[int, ...],
    sigma: float,
    key: int,
    dtype: Any = np.float64,
    offset: int = 0,
) -> np.ndarray:
    """A new array of N(0, sigma^2) noise: the noise :func:`add_gaussian_noise` would add.

    Example
    -------
    >>> gaussian(3, 1.0, key=1, dtype=np.float32).dtype
    dtype('float32')
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return add_gaussian_noise(np.zeros(size, dtype=dtype), sigma, key, offset)


def add_gaussian_noise_numpy(
    out: np.ndarray, sigma: float, key: int, offset: int = 0
) -> np.ndarray:
    """Twin of :func:`add_gaussian_noise` (bit-exact), with plain NumPy."""
    flat = out.reshape(-1)
    z = counter_rng.standard_normal_numpy(key, np.arange(offset, offset + flat.size))
    flat[...] = flat.astype(np.float64) + float(sigma) * z
    return out


def gaussian_numpy(
    size: int | tuple[int, ...],
    sigma: float,
    key: int,
    dtype: Any = np.float64,
    offset: int = 0,
) -> np.ndarray:
    """Twin of :func:`gaussian` (bit-exact), with plain NumPy."""
    return add_gaussian_noise_numpy(np.zeros(size, dtype=dtype), sigma, key, offset)
