"""``ak.dft``: a randomized discrete Fourier transform rotation around an inner (sum) factory.

The reference is TFF's ``DiscreteFourierTransformFactory(inner_agg_factory, num_repeats)`` (in
``rotation.py``), beside :func:`aggkit.hadamard`. Each client flattens every tensor and pads it
with at most one zero to an even size ``d``; the vector is read as ``m = d / 2`` complex numbers
``z = x[:m] + i x[m:]`` and rotated ``num_repeats`` times: multiply by random phases
``exp(i theta_j)`` (``theta_j`` uniform on ``[0, 2 pi)``), take the FFT, divide by ``sqrt(m)``,
and write the real parts then the imaginary parts back. The server inverts it (multiply by
``sqrt(m)``, inverse FFT, multiply by ``exp(-i theta_j)``, repeats in reverse order), drops the
padding and restores the shapes. Every client uses the same rotation in a round (the inverse of a
sum needs it), and a new one the next round.

The rotation is unitary, so L2 norms are kept exactly (up to float rounding), and like the
Hadamard rotation it spreads a vector's mass over all coordinates; unlike it, the padding is at
most one value instead of up to ``2x``, which matters for distributed DP where every padded
coordinate receives noise. The FFT is NumPy's (pocketfft), in float64 complex arithmetic.

Seeding follows :func:`aggkit.hadamard`: state ``(inner_state, seed)`` with ``seed =
numpy.uint64[2]``, the stream key (from ``seed``, or the operating system at ``initialize()``)
and a counter. Tensor ``k``, repeat ``r`` draws its phases from the uniforms of stream
``derive_key(key, "dft", counter + k * num_repeats + r)``; each round adds ``num_repeats *
num_tensors`` to the counter. Integer structures are rotated as floats and rounded back. Client
coefficients (weights, clipping factors) pass through to the inner process unchanged: the
rotation is linear. Measurements: ``{"dft": inner_measurements}`` (TFF's name).

Example
-------
>>> import numpy as np, aggkit as ak
>>> from aggkit.dft import dft
>>> process = dft(ak.sum(), seed=0).create(ak.TensorSpec((3,), np.float32))
>>> out = process.next(process.initialize(), [np.array([1, 2, 3], np.float32)] * 2)
>>> np.round(out.result, 5), out.measurements
(array([2., 4., 6.], dtype=float32), {'dft': ()})
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aggkit import kernels
from aggkit.errors import InvalidUpdateError
from aggkit.hadamard import (
    HadamardFactory,
    HadamardProcess,
    check_rotation_overflow,
    split_seed_state,
)
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import ClientBatch, Layout

__all__ = ["DftFactory", "DftProcess", "dft"]

_STREAM = "dft"


def _padded_size(n: int) -> int:
    return n + (n & 1)


@dataclass(frozen=True)
class DftFactory(HadamardFactory):
    """Unweighted factory of :class:`DftProcess`; build it with :func:`dft`.

    Shares :class:`~aggkit.hadamard.HadamardFactory`'s parameters and their checks.
    """

    _name = "ak.dft"

    @staticmethod
    def _padded_size(n: int) -> int:
        return _padded_size(n)

    def _process(self, layout: Layout, padded: Layout, inner: AggregationProcess):
        return DftProcess(layout, padded, inner, self.num_repeats, self.seed)


def dft(
    inner: Factory | None = None,
    num_repeats: int = 1,
    seed: int | None = None,
) -> DftFactory:
    """Rotate client values by a randomized discrete Fourier transform around ``inner``.

    Parameters
    ----------
    inner : unweighted factory, optional
        Aggregates the rotated (flattened, even-padded, float) values; :func:`aggkit.sum` by
        default.
    num_repeats : int
        How many phase-and-FFT rotations to apply (``>= 1``).
    seed : int or None
        Seeds the phases; None draws a key from the operating system at ``initialize``.

    Returns
    -------
    DftFactory
        Unweighted; state ``(inner_state, numpy.uint64[2])``, measurements ``{"dft": inner's}``.

    Raises
    ------
    TypeError, ValueError
        As :func:`aggkit.hadamard`.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.dft import dft
    >>> process = dft(seed=1).create(ak.TensorSpec((2, 2), np.float64))
    >>> out = process.next(process.initialize(), [np.eye(2), np.ones((2, 2))])
    >>> np.round(out.result, 12).tolist()
    [[2.0, 1.0], [1.0, 2.0]]
    """
    return DftFactory(inner, num_repeats, seed)


class DftProcess(HadamardProcess):
    """Process of :func:`dft`: :class:`~aggkit.hadamard.HadamardProcess`'s layout and state,
    with the Fourier rotation."""

    def begin_round(self, state: State) -> Round:
        inner_state, key, counter = split_seed_state(state)
        return _DftRound(self, self.inner.begin_round(inner_state), key, counter)

    def phases(self, key: int, counter: int) -> list[list[np.ndarray]]:
        """``exp(i theta)`` per (tensor, repeat) of a round: complex128 vectors of ``d / 2``."""
        sizes = np.diff(self.padded_layout.offsets)
        out = []
        for t, d in enumerate(sizes):
            per_tensor = []
            for r in range(self.num_repeats):
                stream = kernels.counter_rng.derive_key(
                    key, _STREAM, counter + t * self.num_repeats + r
                )
                u = kernels.counter_rng.fill_uniform01(np.empty(int(d) // 2), stream)
                per_tensor.append(np.exp(2j * math.pi * u))
            out.append(per_tensor)
        return out

    def rotate(
        self, rows: np.ndarray, phases: list[list[np.ndarray]], active: np.ndarray
    ) -> np.ndarray:
        """Rotate ``[K, layout.size]`` rows into a new ``[K, padded_layout.size]`` float array.

        Inactive rows (coefficient 0, which may hold anything, NaN included) become zeros.
        """
        out = np.zeros((rows.shape[0], self.padded_layout.size), self.padded_layout.dtype)
        src, dst = self.layout.offsets, self.padded_layout.offsets
        for t, per_tensor in enumerate(phases):
            n, d = src[t + 1] - src[t], dst[t + 1] - dst[t]
            if d == 0:
                continue
            m = d // 2
            x = np.zeros((rows.shape[0], d))
            x[active, :n] = rows[active, src[t] : src[t + 1]]
            z = x[:, :m] + 1j * x[:, m:]
            for phase in per_tensor:
                z = np.fft.fft(z * phase, axis=1) / math.sqrt(m)
            out[:, dst[t] : dst[t] + m] = z.real
            out[:, dst[t] + m : dst[t + 1]] = z.imag
        return out

    def unrotate(self, total: np.ndarray, phases: list[list[np.ndarray]]) -> np.ndarray:
        """Invert :meth:`rotate` on one padded vector; float64 of ``layout.size``."""
        result = np.empty(self.layout.size)
        src, dst = self.layout.offsets, self.padded_layout.offsets
        for t, per_tensor in enumerate(phases):
            n, d = src[t + 1] - src[t], dst[t + 1] - dst[t]
            if d == 0:
                continue
            m = d // 2
            v = np.asarray(total[dst[t] : dst[t + 1]], np.float64)
            z = v[:m] + 1j * v[m:]
            for phase in reversed(per_tensor):
                z = np.fft.ifft(z * math.sqrt(m)) * np.conj(phase)
            result[src[t] : src[t + 1]] = np.concatenate([z.real, z.imag])[:n]
        return result


class _DftRound(Round):
    owns_result = True

    def __init__(self, process: DftProcess, inner_round: Round, key: int, counter: int):
        self.process = process
        self.inner_round = inner_round
        self.key = key
        self.counter = counter
        self.phases = process.phases(key, counter)

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        process = self.process
        rotated = process.rotate(block.matrix, self.phases, block.active)
        inner_block = Contributions(
            ClientBatch(rotated, process.padded_layout),
            block.coef,
            first_client=block.first_client,
            needs=process.inner.stats_needed,
        )
        try:
            self.inner_round.add(inner_block, None)
        except InvalidUpdateError as error:  # a finite client whose rotation overflowed
            check_rotation_overflow(block, error)
            raise

    def finish(self) -> tuple[State, np.ndarray, dict]:
        process = self.process
        inner_state, total, inner_measurements = self.inner_round.finish()
        result = process.unrotate(total, self.phases)
        if any(s.dtype.kind in "iu" for s in process.layout.specs):
            result = np.rint(result)
        advance = process.num_repeats * process.layout.num_tensors
        seed = np.array([self.key, self.counter + advance], dtype=np.uint64)
        return (inner_state, seed), result, {"dft": inner_measurements}
