"""``ak.discretization`` and ``ak.modular_clipping``: the integer steps of distributed DP.

Both are TFF's factories of the same names (``discretization.DiscretizationFactory`` and
``modular_clipping.ModularClippingSumFactory``), composable on their own around an inner sum.

``discretization(inner, scale, stochastic=True, beta=0.0)``
    Each client's (coefficient-scaled) value ``v`` becomes the integer vector ``q ~ round(v *
    scale)``: deterministic rounding to the nearest integer, or stochastic rounding (``floor(y)``
    or ``floor(y) + 1``, the latter with probability ``y - floor(y)``, so ``E[q] = y``). With
    ``beta > 0`` the stochastic rounding is *conditional* (Kairouz, Liu and Steinke 2021, Sec.
    4.1): it is redrawn until ``||q||_2`` is at most :func:`inflated_l2_norm_bound` of the
    client's norm (or of ``prior_norm_bound``), which bounds the L2 sensitivity after rounding
    while adding a small bias. The inner factory sums int32 tensors of the same shapes; the
    server divides the sum by ``scale``. A client whose rounded value does not fit in int32 is
    refused (:class:`aggkit.InvalidUpdateError`), never wrapped. State ``(inner_state,
    numpy.uint64[2])``, the rounding's stream key and a counter, seeded like
    :func:`aggkit.hadamard`; measurements ``{"discretize": inner's}``.

``modular_clipping(inner, clip_range_lower, clip_range_upper)``
    Integer values are wrapped into ``[lo, hi)`` modulo ``hi - lo`` on the clients, summed by the
    inner factory, and the sum is wrapped into ``[lo, hi)`` again on the server: the result is
    the true sum modulo ``hi - lo``, represented in ``[lo, hi)``. Around a secure sum of range
    ``[0, 2**b)`` this is what a secure *modular* sum computes, and centred ranges keep small
    negative sums small. Client coefficients must be 0 or 1 (integers are not scaled).
    Measurements ``{"modclip": inner's}``.

Example
-------
>>> import numpy as np, aggkit as ak
>>> process = ak.discretization(ak.sum(), scale=10.0, stochastic=False).create(
...     ak.TensorSpec((2,), np.float32))
>>> process.next(process.initialize(), [np.array([0.12, -0.5], np.float32)] * 3).result
array([ 0.3, -1.5], dtype=float32)
>>> process = ak.modular_clipping(ak.sum(), -4, 4).create(ak.TensorSpec((), np.int32))
>>> print(process.next(process.initialize(), [3, 3, 1]).result)  # 7 wraps to 7 - 8
-1
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from aggkit import _checks, kernels
from aggkit.errors import InvalidUpdateError
from aggkit.hadamard import seed_state, split_seed_state
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import ClientBatch, Layout, TensorSpec

__all__ = [
    "DiscretizationFactory",
    "ModularClippingFactory",
    "discretization",
    "inflated_l2_norm_bound",
    "modular_clipping",
    "stochastic_round",
]

_STREAM = "discretization"
_INT32_MAX = 2**31 - 1
#: Redraws of conditional stochastic rounding before a client is refused (TFF's ``max_tries``).
MAX_TRIES = 1000


def inflated_l2_norm_bound(l2_norm_bound: float, gamma: float, beta: float, dim: int) -> float:
    """The L2 norm bound after stochastic rounding to the grid ``gamma Z^dim``.

    Kairouz, Liu and Steinke 2021 (https://arxiv.org/abs/2102.06387), Theorem 1 and Sec. 4.1, as
    TFF's ``discretization.inflated_l2_norm_bound``: ``min(c + gamma sqrt(d), sqrt(c^2 + gamma^2
    d / 4 + sqrt(2 log(1/beta)) gamma (c + gamma sqrt(d) / 2)))``, the second term only when
    ``beta > 0``. Computed in float64.

    Example
    -------
    >>> round(inflated_l2_norm_bound(1.0, 0.01, math.exp(-0.5), 10_000), 4)
    1.1247
    """
    c, gamma, d = float(l2_norm_bound), float(gamma), float(dim)
    gamma_sqrt_dim = math.sqrt(d) * gamma
    bound_1 = c + gamma_sqrt_dim
    if beta <= 0.0:
        return bound_1
    squared = c * c + 0.25 * gamma_sqrt_dim**2
    squared += math.sqrt(2.0 * math.log(1.0 / beta)) * gamma * (c + 0.5 * gamma_sqrt_dim)
    return min(bound_1, math.sqrt(squared))


def stochastic_round(
    values: np.ndarray, key: int, threshold: float | None = None, *, client: int = 0
) -> tuple[np.ndarray, int]:
    """Stochastically round the float64 vector ``values``; redraw while ``||q|| > threshold``.

    Try ``j`` (from 0) reads its uniforms from stream ``derive_key(key, j)``. Returns the float64
    rounded vector and the number of tries. Raises :class:`aggkit.InvalidUpdateError` after
    :data:`MAX_TRIES` tries (a threshold that rounding cannot meet).

    Example
    -------
    >>> q, tries = stochastic_round(np.array([0.5, 2.0, -1.25]), key=1)
    >>> q[1], tries
    (np.float64(2.0), 1)
    """
    floor = np.floor(values)
    fraction = values - floor
    u = np.empty(values.size)
    for tries in range(1, MAX_TRIES + 1):
        kernels.counter_rng.fill_uniform01(u, kernels.counter_rng.derive_key(key, tries - 1))
        rounded = floor + (u < fraction)
        if threshold is None or float(np.linalg.norm(rounded)) <= threshold:
            return rounded, tries
    raise InvalidUpdateError(
        f"client {client}: conditional stochastic rounding failed {MAX_TRIES} times (its norm "
        f"bound {threshold:g} after scaling is out of reach); use beta=0 or a larger scale"
    )


@dataclass(frozen=True)
class DiscretizationFactory(Factory):
    """Unweighted factory of :func:`discretization`."""

    inner: Factory
    scale: float
    stochastic: bool = True
    beta: float = 0.0
    prior_norm_bound: float | None = None
    seed: int | None = None

    is_weighted = False

    def _create(self, layout: Layout) -> DiscretizationProcess:
        if layout.num_tensors == 0 or not all(s.dtype.kind == "f" for s in layout.specs):
            kinds = ", ".join(str(s.dtype) for s in layout.specs) or "no tensors"
            raise TypeError(f"ak.discretization needs floating-point tensors, got {kinds}")
        int_layout = layout.map_specs(lambda spec: TensorSpec(spec.shape, np.int32))
        return DiscretizationProcess(layout, int_layout, self.inner.create(int_layout), self)


def discretization(
    inner: Factory | None = None,
    scale: float = 1.0,
    stochastic: bool = True,
    beta: float = 0.0,
    *,
    prior_norm_bound: float | None = None,
    seed: int | None = None,
) -> DiscretizationFactory:
    """Scale client values and round them to integers around an inner (integer) sum.

    Parameters
    ----------
    inner : unweighted factory, optional
        Sums the int32 tensors (default :func:`aggkit.sum`; a secure sum in distributed DP).
    scale : float
        Multiplies values before rounding (> 0); the server divides the sum by it.
    stochastic : bool
        Stochastic rounding (unbiased; default) or rounding to the nearest integer.
    beta : float
        In [0, 1): conditional stochastic rounding when > 0 (see :mod:`aggkit.discrete`).
    prior_norm_bound : float, optional
        A known L2 bound of the client values (e.g. a clip), used for the conditional rounding's
        threshold instead of each client's own norm.
    seed : int or None
        Seeds the rounding; None draws a key from the operating system at ``initialize``.

    Returns
    -------
    DiscretizationFactory

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.discretization(scale=4.0, seed=0).create(ak.TensorSpec((3,), np.float64))
    >>> out = process.next(process.initialize(), [np.array([0.25, 0.5, 1.0])] * 2)
    >>> out.result.tolist(), out.measurements  # multiples of 1/4 round exactly
    ([0.5, 1.0, 2.0], {'discretize': ()})
    """
    scale = _checks.real(scale, "scale", low=0.0, low_open=True)
    stochastic = _checks.boolean(stochastic, "stochastic")
    beta = _checks.real(beta, "beta", low=0.0, high=1.0, high_open=True)
    if prior_norm_bound is not None:
        prior_norm_bound = _checks.real(
            prior_norm_bound, "prior_norm_bound", low=0.0, low_open=True
        )
    seed = _checks.seed(seed)
    return DiscretizationFactory(
        _checks.unweighted_factory(inner, "inner"), scale, stochastic, beta, prior_norm_bound, seed
    )


class DiscretizationProcess(AggregationProcess):
    """Process of :func:`discretization`; the inner process sums :attr:`int_layout`."""

    is_weighted = False

    def __init__(
        self,
        layout: Layout,
        int_layout: Layout,
        inner: AggregationProcess,
        factory: DiscretizationFactory,
    ):
        super().__init__(layout)
        self.int_layout = int_layout
        self.inner = inner
        self.factory = factory
        self.stats_needed = frozenset()

    def initialize(self) -> State:
        return (self.inner.initialize(), seed_state(self.factory.seed))

    def begin_round(self, state: State) -> Round:
        inner_state, key, counter = split_seed_state(state)
        return _DiscretizationRound(self, self.inner.begin_round(inner_state), key, counter)

    def threshold(self, norm: float) -> float | None:
        """The conditional rounding's bound on ``||q||`` for a client of (unscaled) ``norm``."""
        f = self.factory
        if f.beta == 0.0:
            return None
        bound = f.prior_norm_bound if f.prior_norm_bound is not None else norm
        return f.scale * inflated_l2_norm_bound(bound, 1.0 / f.scale, f.beta, self.layout.size)

    def discretize(self, block: Contributions, round_key: int) -> np.ndarray:
        """The int32 rows of a block (inactive rows are zeros)."""
        f = self.factory
        out = np.zeros((block.num_clients, self.layout.size), self.int_layout.dtype)
        for i in np.flatnonzero(block.active):
            client = block.first_client + int(i)
            v = float(block.coef[i]) * block.matrix[i].astype(np.float64)
            if not np.isfinite(v).all():
                raise block.nonfinite_error(int(i))
            v *= f.scale
            if f.stochastic:
                key = kernels.counter_rng.derive_key(round_key, client)
                threshold = self.threshold(float(np.linalg.norm(v)) / f.scale)
                q, _ = stochastic_round(v, key, threshold, client=client)
            else:
                q = np.rint(v)
            if q.size and float(np.abs(q).max()) > _INT32_MAX:
                raise InvalidUpdateError(
                    f"client {client}: a scaled value ({float(np.abs(q).max()):g}) does not fit "
                    "in int32; lower the scale or clip the values"
                )
            out[i] = q
        return out


class _DiscretizationRound(Round):
    owns_result = True

    def __init__(self, process: DiscretizationProcess, inner_round: Round, key: int, counter: int):
        self.process = process
        self.inner_round = inner_round
        self.key, self.counter = key, counter
        self.round_key = kernels.counter_rng.derive_key(key, _STREAM, counter)

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        process = self.process
        rows = process.discretize(block, self.round_key)
        inner_block = Contributions(
            ClientBatch(rows, process.int_layout),
            block.active.astype(np.float64),
            first_client=block.first_client,
            needs=process.inner.stats_needed,
        )
        self.inner_round.add(inner_block, None)

    def finish(self) -> tuple[State, np.ndarray, dict]:
        inner_state, total, inner_measurements = self.inner_round.finish()
        result = np.asarray(total, np.float64) / self.process.factory.scale
        seed = np.array([self.key, self.counter + 1], dtype=np.uint64)
        return (inner_state, seed), result, {"discretize": inner_measurements}


@dataclass(frozen=True)
class ModularClippingFactory(Factory):
    """Unweighted factory of :func:`modular_clipping`."""

    inner: Factory
    clip_range_lower: int
    clip_range_upper: int

    is_weighted = False

    def _create(self, layout: Layout) -> ModularClippingProcess:
        if layout.num_tensors == 0 or not all(s.dtype.kind in "iu" for s in layout.specs):
            kinds = ", ".join(str(s.dtype) for s in layout.specs) or "no tensors"
            raise TypeError(f"ak.modular_clipping needs integer tensors, got {kinds}")
        return ModularClippingProcess(layout, self.inner.create(layout), self)


def modular_clipping(
    inner: Factory | None, clip_range_lower: int, clip_range_upper: int
) -> ModularClippingFactory:
    """Wrap integer client values and their sum into ``[clip_range_lower, clip_range_upper)``.

    Parameters
    ----------
    inner : unweighted factory or None
        Sums the wrapped values (default :func:`aggkit.sum`).
    clip_range_lower, clip_range_upper : int
        The range, ``lower < upper``; values are taken modulo ``upper - lower``. Both must fit
        the template's integer dtype (checked at ``create``).

    Returns
    -------
    ModularClippingFactory

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.modular_clipping(None, 0, 16).create(ak.TensorSpec((2,), np.int32))
    >>> clients = [np.array([15, -1], np.int32), np.array([3, 2], np.int32)]
    >>> process.next(process.initialize(), clients).result
    array([2, 1], dtype=int32)
    """
    for value, name in (
        (clip_range_lower, "clip_range_lower"),
        (clip_range_upper, "clip_range_upper"),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")
    lo, hi = int(clip_range_lower), int(clip_range_upper)
    if not lo < hi:
        raise ValueError(f"clip_range_lower ({lo}) must be below clip_range_upper ({hi})")
    if hi - lo > 2**62:
        raise ValueError(f"the range width {hi - lo} must be at most 2**62")
    return ModularClippingFactory(_checks.unweighted_factory(inner, "inner"), lo, hi)


class ModularClippingProcess(AggregationProcess):
    """Process of :func:`modular_clipping`."""

    is_weighted = False

    def __init__(self, layout: Layout, inner: AggregationProcess, factory: ModularClippingFactory):
        for spec in layout.specs:
            info = np.iinfo(spec.dtype)
            if factory.clip_range_lower < info.min or factory.clip_range_upper - 1 > info.max:
                raise TypeError(
                    f"the range [{factory.clip_range_lower}, {factory.clip_range_upper}) does "
                    f"not fit the template's {spec.dtype}"
                )
        super().__init__(layout)
        self.inner = inner
        self.factory = factory
        self.stats_needed = frozenset()

    def wrap(self, values: np.ndarray) -> np.ndarray:
        """``((values - lower) mod width) + lower`` as int64, exactly (no int64 overflow)."""
        lo = self.factory.clip_range_lower
        width = self.factory.clip_range_upper - lo
        v = np.asarray(values)
        if v.dtype.kind == "f":
            v = np.rint(v)
        if v.size == 0:
            return v.astype(np.int64)
        if -(2**63) <= int(v.min()) - lo and int(v.max()) - lo < 2**63:
            return np.mod(v.astype(np.int64) - np.int64(lo), np.int64(width)) + np.int64(lo)
        exact = np.array([(int(x) - lo) % width + lo for x in v.reshape(-1)], dtype=np.int64)
        return exact.reshape(v.shape)

    def initialize(self) -> State:
        return self.inner.initialize()

    def begin_round(self, state: State) -> Round:
        return _ModularClippingRound(self, self.inner.begin_round(state))


class _ModularClippingRound(Round):
    owns_result = True

    def __init__(self, process: ModularClippingProcess, inner_round: Round):
        self.process = process
        self.inner_round = inner_round

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        coef = block.coef
        if not np.isin(coef, (0.0, 1.0)).all():
            raise TypeError(
                "ak.modular_clipping takes coefficients 0 or 1 only (integer values cannot be "
                "scaled)"
            )
        process = self.process
        rows = process.wrap(block.matrix).astype(block.matrix.dtype)
        rows[coef == 0] = 0
        inner_block = Contributions(
            ClientBatch(rows, process.layout),
            coef,
            first_client=block.first_client,
            needs=process.inner.stats_needed,
        )
        self.inner_round.add(inner_block, None)

    def finish(self) -> tuple[State, np.ndarray, dict]:
        inner_state, total, inner_measurements = self.inner_round.finish()
        result = self.process.wrap(total)
        return inner_state, result, {"modclip": inner_measurements}
