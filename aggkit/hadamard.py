"""``ak.hadamard``: a randomized Walsh-Hadamard rotation around an inner (sum) factory.

The reference is TFF's ``HadamardTransformFactory(inner_agg_factory, num_repeats)`` (in
``rotation.py``). Each client flattens every tensor, pads it with zeros to the next power of two
``d`` and rotates it, ``num_repeats`` times: multiply by random signs, then the normalized fast
Walsh-Hadamard transform ``H / sqrt(d)``. The inner factory aggregates the rotated vectors; the
server inverts the rotation of the aggregate (transform, then the same signs, repeats in reverse
order), drops the padding and restores the shapes. Every client uses the same rotation in a
round (the inverse of a sum needs it), and a new one the next round.

Rotation is orthonormal, so norms are kept, and it spreads a vector's mass evenly over its
coordinates: a vector with a few large entries becomes one whose entries are all about
``norm / sqrt(d)``, which quantization (:func:`aggkit.quantized_sum`, whose error scales with a
client's max - min) handles with much less loss: ``ak.mean(ak.hadamard(ak.quantized_sum()))``.

Details
-------
* The inner process is created for the padded structure: every tensor becomes a 1-D float32
  tensor of its padded size (float64 for float64 tensors, which the reference would narrow).
  Tensors of one element are passed through (the transform of size 1 is the identity); empty
  tensors stay empty.
* The structure must be all floating-point or all integer (TypeError otherwise); integer results
  are rounded back to integers.
* Rotation is linear, so client coefficients (weights, clipping factors) are carried along to the
  inner process unchanged rather than applied.
* State: ``(inner_state, seed)`` with ``seed = numpy.uint64[2]``: the stream key and a counter.
  Tensor ``k``, repeat ``r`` draws its signs from stream ``derive_key(key, "hadamard", counter +
  k * num_repeats + r)``; each round adds ``num_repeats * num_tensors`` to the counter (the
  reference's scheme, with a counter-based generator).
* Measurements: ``{"hd": inner_measurements}``.
* Rotated rows reach the inner process a few at a time (:data:`ROTATED_BYTES`, so they are read
  back from the cache, not from memory), as blocks of a streamed round: the inner sum's bits are
  those of one block, but a float sum that overflows float64 in a later block raises
  OverflowError instead of being redone with scaled coefficients (see :func:`aggkit.sum`; it
  takes weights near ``1e267`` with float32 tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aggkit import _checks, kernels
from aggkit.errors import InvalidUpdateError
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import ClientBatch, Layout, TensorSpec

__all__ = ["HadamardFactory", "HadamardProcess", "hadamard"]

_STREAM = "hadamard"
#: Bytes of rotated rows handed to the inner round at a time (a few MNIST CNN rows): they are
#: written and read again while they sit in the last-level cache, instead of a rotated copy of the
#: whole client matrix going out to memory and back.
ROTATED_BYTES = 1 << 24


def seed_state(seed: Any) -> np.ndarray:
    """The ``numpy.uint64[2]`` part of a seeded factory's state: the stream key, counter 0.

    The key comes from ``seed`` (or the operating system for None) through
    :func:`aggkit.kernels.counter_rng.seed_to_key`; rounds advance the counter.
    """
    return np.array([kernels.counter_rng.seed_to_key(seed), 0], dtype=np.uint64)


def split_seed_state(state: State) -> tuple[State, int, int]:
    """``(inner_state, key, counter)`` of a state ``(inner_state, uint64[2])``; TypeError else."""
    inner_state, seed = state
    seed = np.asarray(seed)
    if seed.shape != (2,) or seed.dtype != np.uint64:
        raise TypeError(f"expected the process's state (inner_state, uint64[2]), got {state!r}")
    return inner_state, int(seed[0]), int(seed[1])


@dataclass(frozen=True)
class HadamardFactory(Factory):
    """Unweighted factory of :class:`HadamardProcess`; build it with :func:`hadamard`."""

    inner: Factory | None = None
    num_repeats: int = 1
    seed: int | None = None

    is_weighted = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", _checks.unweighted_factory(self.inner, "inner"))
        repeats = _checks.integer(self.num_repeats, "num_repeats", low=1)
        object.__setattr__(self, "num_repeats", repeats)
        object.__setattr__(self, "seed", _checks.seed(self.seed))

    #: The public name in errors, and the padded length of a rotated tensor of ``n`` values
    #: (``ak.dft`` subclasses this factory and overrides both, and ``_process``).
    _name = "ak.hadamard"

    @staticmethod
    def _padded_size(n: int) -> int:
        return kernels.hadamard.padded_size(n)

    def _process(self, layout: Layout, padded: Layout, inner: AggregationProcess):
        return HadamardProcess(layout, padded, inner, self.num_repeats, self.seed)

    def _create(self, layout: Layout) -> HadamardProcess:
        kinds = {s.dtype.kind in "iu" for s in layout.specs}
        if len(kinds) > 1:
            described = ", ".join(
                f"{p}: {s.dtype}" for p, s in zip(layout.paths, layout.specs, strict=True)
            )
            raise TypeError(
                f"{self._name} needs all-floating or all-integer tensors, got a mix ({described})"
            )

        def padded_spec(spec: TensorSpec) -> TensorSpec:
            dtype = np.float64 if spec.dtype == np.float64 else np.float32
            return TensorSpec((self._padded_size(spec.size),), dtype)

        padded = layout.map_specs(padded_spec)
        return self._process(layout, padded, self.inner.create(padded))


def hadamard(
    inner: Factory | None = None,
    num_repeats: int = 1,
    seed: int | None = None,
) -> HadamardFactory:
    """Rotate client values by a randomized Walsh-Hadamard transform around ``inner``.

    Parameters
    ----------
    inner : unweighted factory, optional
        Aggregates the rotated (padded, flattened, float) values; :func:`aggkit.sum` by default.
    num_repeats : int
        How many sign-and-transform rotations to apply (``>= 1``).
    seed : int or None
        Seeds the signs (an int >= 0); None draws a key from the operating system at
        ``initialize``.

    Returns
    -------
    HadamardFactory
        Unweighted; its processes have state ``(inner_state, numpy.uint64[2])`` and measurements
        ``{"hd": inner_measurements}``.

    Raises
    ------
    TypeError
        ``inner`` is not an unweighted factory, ``num_repeats`` is not an int, ``seed`` has the
        wrong kind, or (at ``create``) the structure mixes integer and floating tensors.
    ValueError
        ``num_repeats < 1`` or a negative ``seed``.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.hadamard import hadamard
    >>> process = hadamard(ak.sum(), seed=0).create(ak.TensorSpec((3,), np.float32))
    >>> out = process.next(process.initialize(), [np.array([1, 2, 3], np.float32)] * 2)
    >>> np.round(out.result, 5), out.measurements
    (array([2., 4., 6.], dtype=float32), {'hd': ()})
    """
    return HadamardFactory(inner, num_repeats, seed)


class HadamardProcess(AggregationProcess):
    """Process of :func:`hadamard`.

    Attributes
    ----------
    inner : AggregationProcess
        The inner process, created for :attr:`padded_layout`.
    padded_layout : Layout
        The structure the inner process aggregates (1-D padded float tensors).
    """

    is_weighted = False

    def __init__(
        self,
        layout: Layout,
        padded_layout: Layout,
        inner: AggregationProcess,
        num_repeats: int,
        seed: Any,
    ):
        super().__init__(layout)
        self.padded_layout = padded_layout
        self.inner = inner
        self.num_repeats = num_repeats
        self.seed = seed
        # The rotation reads no statistics of the raw rows; the inner process gets its own from
        # the rotated rows.
        self.stats_needed = frozenset()
        self._rotated = None

    def initialize(self) -> State:
        return (self.inner.initialize(), seed_state(self.seed))

    def begin_round(self, state: State) -> Round:
        inner_state, key, counter = split_seed_state(state)
        return _HadamardRound(self, self.inner.begin_round(inner_state), key, counter)

    def signs(self, key: int, counter: int) -> tuple[np.ndarray, np.ndarray]:
        """The int8 signs of every (tensor, repeat) of a round, and where each one starts."""
        sizes = np.diff(self.padded_layout.offsets)
        num_tensors = len(sizes)
        starts = np.zeros((num_tensors, self.num_repeats), dtype=np.int64)
        signs = np.empty(int(sizes.sum()) * self.num_repeats, dtype=np.int8)
        position = 0
        for t, d in enumerate(sizes):
            for r in range(self.num_repeats):
                starts[t, r] = position
                if d > 1:
                    stream = kernels.counter_rng.derive_key(
                        key, _STREAM, counter + t * self.num_repeats + r
                    )
                    kernels.hadamard.fill_signs(signs[position : position + d], stream)
                position += d
        return signs, starts


def check_rotation_overflow(block: Contributions, error: InvalidUpdateError) -> None:
    """OverflowError when the inner round refused a rotated client that was finite before: the
    rotation (entries up to the client's L2 norm) left the tensor's float range."""
    if error.client is None:
        return
    row = error.client - block.first_client
    if 0 <= row < block.num_clients and np.isfinite(block.matrix[row]).all():
        raise OverflowError(
            f"client {error.client}, tensor {error.path}: its rotation overflows "
            f"{block.matrix.dtype} (a rotated entry can reach the client's L2 norm); scale the "
            "update down, or use float64 tensors"
        ) from error


class _HadamardRound(Round):
    owns_result = True  # the unrotated vector is fresh

    def __init__(self, process: HadamardProcess, inner_round: Round, key: int, counter: int):
        self.process = process
        self.inner_round = inner_round
        self.key = key
        self.counter = counter
        self._signs = None

    def _get_signs(self):
        if self._signs is None:
            self._signs = self.process.signs(self.key, self.counter)
        return self._signs

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        # A few rows at a time, so the rotated rows are still in the last-level cache when the
        # inner round reads them (a sum adds each column in row order, so its bits do not change).
        padded = self.process.padded_layout
        rows = max(1, ROTATED_BYTES // max(1, padded.size * padded.dtype.itemsize))
        # An even count: the kernel's threads split the rows' tasks in halves, and an odd count
        # (7 MNIST CNN rows) gave one thread a whole row more of the largest tensor.
        rows += rows % 2
        for lo in range(0, block.num_clients, rows):
            self._add_rows(block, lo, min(lo + rows, block.num_clients))

    def _add_rows(self, block: Contributions, lo: int, hi: int) -> None:
        process = self.process
        signs, starts = self._get_signs()
        # Rounds consume a block inside ``add``, so the next rows may overwrite the buffer.
        rotated = process.scratch_rows(hi - lo, process.padded_layout, name="rotated")
        coef = block.coef[lo:hi]
        kernels.hadamard.rotate_rows(
            block.matrix[lo:hi],
            coef,
            process.layout.offsets,
            process.padded_layout.offsets,
            signs,
            starts,
            rotated,
        )
        inner_block = Contributions(
            ClientBatch(rotated, process.padded_layout),
            coef,
            first_client=block.first_client + lo,
            needs=process.inner.stats_needed,
        )
        try:
            self.inner_round.add(inner_block, None)
        except InvalidUpdateError as error:
            check_rotation_overflow(block, error)
            raise

    def finish(self) -> tuple[State, np.ndarray, dict]:
        process = self.process
        inner_state, total, inner_measurements = self.inner_round.finish_owned()
        signs, starts = self._get_signs()
        result = np.empty(process.layout.size)
        kernels.hadamard.unrotate(
            total,
            process.layout.offsets,
            process.padded_layout.offsets,
            signs,
            starts,
            result,
        )
        advance = process.num_repeats * process.layout.num_tensors
        seed = np.array([self.key, self.counter + advance], dtype=np.uint64)
        return (inner_state, seed), result, {"hd": inner_measurements}
