"""Adaptive quantile estimation: the estimation processes behind adaptive norms and bounds.

Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning with Adaptive Clipping"
(NeurIPS 2021, https://arxiv.org/abs/1905.03871). Each round, every client reports whether its
value is at most the current estimate ``C``; with ``b`` the fraction that is, the geometric update

    C <- C * exp(-learning_rate * (b - target_quantile))

moves ``C`` toward the ``target_quantile`` of the client values: at most ``exp(lr * q)`` up per
round (every value above) and ``exp(-lr * (1 - q))`` down (every value below).

The no-noise estimator uses the exact fraction over participating clients; the private one adds
Gaussian noise to the count and divides by the expected (public) number of clients, so it can be
used with differential privacy.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggkit import _checks, kernels
from aggkit.process import Contributions, EstimationProcess, Factory, State
from aggkit.structure import ClientBatch, Layout, TensorSpec

__all__ = [
    "QuantileEstimator",
    "private_quantile_estimator",
    "quantile_estimator",
]

_F32 = TensorSpec((), np.float32)
#: Records of the no-noise estimator: ``(1[v <= C] - 0.5, 1.0)`` per client (TFF's pair).
_PAIR_LAYOUT = Layout((_F32, _F32))
#: Records of the private estimator: ``1[v <= C] - 0.5`` per client.
_SINGLE_LAYOUT = Layout((_F32,))


@dataclass(frozen=True)
class QuantileEstimator(EstimationProcess):
    """Estimation process of :func:`quantile_estimator` and :func:`private_quantile_estimator`.

    State: ``(query_state, record_sum_state)`` with ``query_state = (current_estimate,
    target_quantile, learning_rate, below_estimate_state)``; ``below_estimate_state`` is ``()``
    without noise, and ``((0.5, below_estimate_stddev), expected_num_records, (noise_key,
    round))`` with noise (TFF's layout plus the noise stream, so that ``next`` is a pure function
    of the state). ``report`` returns ``multiplier * current_estimate + increment``.
    """

    initial_estimate: float
    target_quantile: float
    learning_rate: float
    multiplier: float = 1.0
    increment: float = 0.0
    geometric_update: bool = True
    record_sum: Factory | None = None
    below_estimate_stddev: float | None = None
    expected_num_records: float | None = None
    seed: int | None = None
    _record_process: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        record_sum = _checks.unweighted_factory(self.record_sum, "record_sum")
        object.__setattr__(self, "record_sum", record_sum)
        layout = _PAIR_LAYOUT if self.below_estimate_stddev is None else _SINGLE_LAYOUT
        object.__setattr__(self, "_record_process", self.record_sum.create(layout))

    @property
    def is_private(self) -> bool:
        """Whether the below-estimate count is noised (the DP variant)."""
        return self.below_estimate_stddev is not None

    # -- process ----------------------------------------------------------------------------------

    def initialize(self) -> State:
        below: tuple = ()
        if self.is_private:
            key = self.seed if self.seed is not None else secrets.randbits(63)
            below = (
                (np.float64(0.5), np.float64(self.below_estimate_stddev)),
                np.float64(self.expected_num_records),
                (np.int64(key), np.int64(0)),
            )
        query = (
            np.float64(self.initial_estimate),
            np.float64(self.target_quantile),
            np.float64(self.learning_rate),
            below,
        )
        return (query, self._record_process.initialize())

    def next(self, state: State, values: Any) -> State:
        """Observe one value per client (NaN and Inf count as above the estimate)."""
        (estimate, quantile, learning_rate, below), record_state = state
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore"):
            records = np.where(values <= estimate, 0.5, -0.5)
        if self.is_private:
            matrix = records.astype(np.float32).reshape(-1, 1)
            layout = _SINGLE_LAYOUT
        else:
            matrix = np.stack([records, np.ones_like(records)], axis=1).astype(np.float32)
            layout = _PAIR_LAYOUT
        round_ = self._record_process.begin_round(record_state)
        round_.add(Contributions(ClientBatch(np.ascontiguousarray(matrix), layout)), None)
        record_state, total, _ = round_.finish()
        if self.is_private:
            (clip, stddev), expected, (key, counter) = below
            # seed=None: fresh entropy for every release, so that two calls on one saved state
            # never share their noise; a seeded run is a function of (seed, round).
            if self.seed is None:
                # Fresh OS entropy for every release (a saved state never replays its noise),
                # from aggkit's Gaussian sampler, whose tails reach 38 standard deviations
                # (NumPy's ziggurat stops near 13.7: at a small noise multiplier 2 * stddev the
                # count could leave the neighbour's support; aggkit.kernels.limits).
                fresh = kernels.counter_rng.seed_to_key(None)
                noise = float(kernels.gaussian_noise.gaussian(1, float(stddev), fresh)[0])
            else:  # a seeded run (a testing aid) keeps its reproducible NumPy stream
                rng = np.random.default_rng([int(key), int(counter)])
                noise = rng.normal(0.0, float(stddev))
            fraction = (float(total[0]) + noise) / float(expected) + 0.5
            below = ((clip, stddev), expected, (key, np.int64(counter + 1)))
        else:
            count = float(total[1])
            if count == 0:  # no clients: keep the estimate (TFF would divide 0 by 0)
                return ((estimate, quantile, learning_rate, below), record_state)
            fraction = float(total[0]) / count + 0.5
        fraction = min(max(fraction, 0.0), 1.0)
        step = fraction - float(quantile)
        if self.geometric_update:
            new = float(estimate) * math.exp(-float(learning_rate) * step)
        else:
            new = max(0.0, float(estimate) - float(learning_rate) * step)
        return ((np.float64(new), quantile, learning_rate, below), record_state)

    def report(self, state: State) -> float:
        return self.multiplier * float(state[0][0]) + self.increment


def _check_common(
    initial_estimate, target_quantile, learning_rate, geometric_update
) -> tuple[float, float, float, bool]:
    geometric_update = _checks.boolean(geometric_update, "geometric_update")
    return (
        _checks.real(initial_estimate, "initial_estimate", low=0.0, low_open=True),
        _checks.real(target_quantile, "target_quantile", low=0.0, high=1.0),
        _checks.learning_rate(learning_rate, "learning_rate", geometric=geometric_update),
        geometric_update,
    )


def _record_sum(secure_estimation: bool, record_sum: Factory | None) -> Factory | None:
    if _checks.boolean(secure_estimation, "secure_estimation"):
        if record_sum is not None:
            raise ValueError("give either secure_estimation=True or record_sum, not both")
        from aggkit.secure.secure_sum import secure_sum

        # Bounds +-1 cover the records +-0.5 and the count 1.0 (TFF: SecureSumFactory(1.0)).
        return secure_sum(1.0)
    return record_sum


def quantile_estimator(
    initial_estimate: float,
    target_quantile: float,
    learning_rate: float,
    multiplier: float = 1.0,
    increment: float = 0.0,
    *,
    secure_estimation: bool = False,
    geometric_update: bool = True,
    record_sum: Factory | None = None,
) -> QuantileEstimator:
    """An adaptive estimate of a quantile of one value per client (no noise).

    Usable wherever a norm or bound is expected: ``ak.clipping(ak.quantile_estimator(1.0, 0.8,
    0.2), inner)`` clips at the running 80th percentile of the client norms.

    Parameters
    ----------
    initial_estimate : float
        The starting estimate, > 0.
    target_quantile : float
        The quantile to track, in [0, 1].
    learning_rate : float
        > 0; with the geometric update the estimate moves by at most ``exp(lr * q)`` per round,
        and ``lr`` is at most 10 (:data:`aggkit._checks.MAX_GEOMETRIC_LEARNING_RATE`).
    multiplier, increment : float
        ``report`` returns ``multiplier * estimate + increment`` (multiplier > 0, increment >= 0).
    secure_estimation : bool
        Sum the client records with a secure sum (bounds +-1), as ``secure_aggregator`` needs.
    geometric_update : bool
        Geometric (default, keeps the estimate positive) or arithmetic update.
    record_sum : unweighted factory, optional
        How the per-client records are summed (default :func:`aggkit.sum`).

    Returns
    -------
    QuantileEstimator

    Raises
    ------
    ValueError
        A parameter is out of range (the message names it).

    Examples
    --------
    >>> import aggkit as ak
    >>> estimator = ak.quantile_estimator(1.0, target_quantile=0.5, learning_rate=0.2)
    >>> state = estimator.next(estimator.initialize(), [3.0, 4.0])  # both above: grow
    >>> round(estimator.report(state), 4)  # exp(0.2 * 0.5)
    1.1052
    """
    initial_estimate, target_quantile, learning_rate, geometric_update = _check_common(
        initial_estimate, target_quantile, learning_rate, geometric_update
    )
    multiplier = _checks.real(multiplier, "multiplier", low=0.0, low_open=True)
    increment = _checks.real(increment, "increment", low=0.0)
    return QuantileEstimator(
        initial_estimate,
        target_quantile,
        learning_rate,
        multiplier,
        increment,
        geometric_update,
        _record_sum(secure_estimation, record_sum),
    )


def private_quantile_estimator(
    initial_estimate: float,
    target_quantile: float,
    learning_rate: float,
    *,
    below_estimate_stddev: float,
    expected_num_records: float,
    geometric_update: bool = True,
    record_sum: Factory | None = None,
    seed: int | None = None,
) -> QuantileEstimator:
    """A differentially private adaptive quantile estimate.

    The fraction of clients at or below the estimate is computed as
    ``(sum_i (1[v_i <= C] - 0.5) + N(0, below_estimate_stddev**2)) / expected_num_records + 0.5``
    and clipped to [0, 1]; each record has sensitivity 0.5. Andrew et al. recommend
    ``below_estimate_stddev = expected_num_records / 20`` and a geometric learning rate of 0.2.

    Parameters
    ----------
    initial_estimate, target_quantile, learning_rate
        As for :func:`quantile_estimator`.
    below_estimate_stddev : float
        Standard deviation of the noise on the below-estimate count, >= 0.
    expected_num_records : float
        The expected (public) number of clients per round, > 0.
    geometric_update : bool
        Geometric (default) or arithmetic update.
    record_sum : unweighted factory, optional
        How the records are summed (default :func:`aggkit.sum`).
    seed : int, optional
        Seed of the noise, a testing aid. None draws fresh noise from the OS for every call of
        ``next``, even on one saved state. With a seed the noise is a function of (seed, round):
        never use one state for two released rounds, and never deploy a seeded run (anyone with
        the seed can remove the noise).

    Examples
    --------
    >>> import aggkit as ak
    >>> estimator = ak.private_quantile_estimator(
    ...     1.0, 0.5, 0.2, below_estimate_stddev=0.0, expected_num_records=2, seed=0)
    >>> round(estimator.report(estimator.next(estimator.initialize(), [0.1, 0.2])), 4)
    0.9048
    """
    initial_estimate, target_quantile, learning_rate, geometric_update = _check_common(
        initial_estimate, target_quantile, learning_rate, geometric_update
    )
    below_estimate_stddev = _checks.real(below_estimate_stddev, "below_estimate_stddev", low=0.0)
    expected_num_records = _checks.real(
        expected_num_records, "expected_num_records", low=0.0, low_open=True
    )
    seed = _checks.seed(seed)
    return QuantileEstimator(
        initial_estimate,
        target_quantile,
        learning_rate,
        geometric_update=geometric_update,
        record_sum=record_sum,
        below_estimate_stddev=below_estimate_stddev,
        expected_num_records=expected_num_records,
        seed=seed,
    )
