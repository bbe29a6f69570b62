"""Gaussian differential privacy: ``ak.gaussian_fixed`` and ``ak.gaussian_adaptive``.

Both are unweighted aggregators computing a differentially private *mean* of client updates
(TFF's ``DifferentiallyPrivateFactory.gaussian_fixed`` / ``gaussian_adaptive``, after TF-Privacy's
``NormalizedQuery(GaussianSumQuery)`` and ``QuantileAdaptiveClipSumQuery``). Per round, with clip
``C`` and expected clients per round ``n``:

1. each client's update ``x_i`` is scaled by ``min(1, C / ||x_i||_2)`` (the global L2 norm over
   all tensors). Like zeroing and clipping this only changes the client's coefficient: the norms
   come from the composition's single statistics pass and the sum applies the factors while
   reading the matrix, so no clipped copy of the client matrix is made;
2. the clipped updates are summed (by ``record_sum``, :func:`aggkit.sum` by default) in float64;
3. independent Gaussian noise ``N(0, (z C)^2)`` is added to every coordinate of the sum;
4. the noised sum is divided by ``n``, the *expected* number of clients, not the number that took
   part (dividing by the actual count would leak it). With fewer clients than expected the result
   shrinks toward 0; so these aggregators belong with uniform client weights.

The adaptive variant (Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private
Learning with Adaptive Clipping", https://arxiv.org/abs/1905.03871) also tracks, with a private
quantile estimator (:func:`aggkit.private_quantile_estimator`), the clip below which a fraction
``target_unclipped_quantile`` of the client norms lie. Each client adds ``1[||x_i|| <= C] - 0.5``
(sensitivity 0.5) to a count noised with ``N(0, sigma_b^2)``; the value noise multiplier is raised
to ``z_v = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` so that the two Gaussian releases together cost
exactly what one Gaussian of multiplier ``z`` costs (:func:`adaptive_clip_noise_params`). The
value noise uses this round's clip; the clip for the next round is
``C * exp(-learning_rate * (b - target_unclipped_quantile))`` with ``b`` the noised unclipped
fraction clamped to [0, 1].

Non-finite clients
    A client holding NaN or Inf is dropped: its coefficient is 0, so it contributes exact zeros
    (which lie in the clip ball, so the sensitivity, hence the privacy guarantee, is unchanged).
    The adaptive variant counts it as clipped (its norm is ``inf``, above any clip). No exact
    count of such clients is reported: an exact count would be a release without noise.

State and measurements
    State: ``{"query_state": ..., "agg_state": record_sum state, "dp_event": ..., "is_init_state":
    bool}`` (TFF's ``DPAggregatorState``). ``query_state`` holds ``l2_norm_clip`` and ``stddev``
    (the clip and value-noise standard deviation of the next round), the noise key (0 without a
    seed) and the round counter, and for the adaptive variant the value noise multiplier and the
    quantile estimator's state. ``dp_event`` describes the last round's release as plain data (TFF's
    named-tuple form: ``module_name``, ``class_name`` and the fields); :func:`extract_dp_event`
    turns it into a ``dp_accounting`` DpEvent. Measurements: ``{"dp_query_metrics": () or {"clip":
    C_next}, "dp": record_sum measurements}``, plus ``"privacy": {"epsilon", "delta", "rounds",
    "sampling"}`` when the population size is given: the (epsilon, delta) guarantee of all rounds so
    far, with Poisson sampling of ``clients_per_round`` clients out of ``population``, from
    dp-accounting's RDP accountant (:mod:`aggkit.privacy`). ``"sampling"`` is ``"poisson"``: a run
    that samples a fixed number of clients must not report this epsilon
    (:func:`aggkit.privacy.check_sampling`).

Randomness
    Noise comes from the counter-based Philox generator (:mod:`aggkit.kernels.gaussian_noise`).
    With ``seed=None`` (the default) every released round draws a fresh 64-bit key from the
    operating system, so calling ``next`` twice on one saved state (a retry after an error, with a
    different set of clients) never releases the same noise twice; the difference of two such
    results would otherwise reveal the clients that differ. With a ``seed``, the key is derived
    from the seed and the round counter in the state: ``next`` is then a pure function of (state,
    values), which is what tests and reproducible research need, and a saved state must never be
    used for two released rounds (the two results would share their noise exactly). Either way
    the bits do not depend on the thread count. Whoever knows the seed can subtract the noise: a
    seed is a testing aid, never a deployment setting.

Noise multipliers and the sampler's reach
    Any finite-precision Gaussian sampler has bounded support. aggkit's reaches 38.33 standard
    deviations (:data:`aggkit.kernels.limits.MAX_ABS_NORMAL`); the factories refuse noise
    multipliers in ``(0, 0.04)`` (:data:`~aggkit.kernels.limits.MIN_NOISE_MULTIPLIER`), below
    which a release could fall outside the neighbouring dataset's support with a probability that
    is no longer negligible (:func:`aggkit.kernels.limits.infinite_loss_bound`: below 1e-26 at
    0.04). Zero is accepted and means no privacy.

Floating-point caveat
    The result is a float32 or float64 rounding of ``sum + noise``: the set of representable
    outputs depends on the magnitude of the sum, and floating-point samplers are known to leak
    through their low-order bits (Mironov 2012 for Laplace; Holohan and Braghin 2021 for Gaussian
    samplers). The guarantee is that of the continuous Gaussian mechanism, up to that caveat. The
    exact alternative is discrete noise on integers: :func:`aggkit.distributed_dp` samples the
    discrete Gaussian or Skellam distribution exactly and adds it to an integer secure sum.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aggkit import _checks, kernels
from aggkit._checks import clip_factors  # one implementation, also for dp.clip_factors
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dp_accounting import DpEvent

    from aggkit.quantile import QuantileEstimator

__all__ = [
    "ExtractingDpEventFromInitialStateError",
    "GaussianAdaptiveFactory",
    "GaussianFixedFactory",
    "adaptive_clip_noise_params",
    "extract_dp_event",
    "gaussian_adaptive",
    "gaussian_fixed",
]

#: Default delta of the running epsilon (when the population is known): ``min(1e-5, 1/population)``.
DEFAULT_DELTA = 1e-5

_DP_EVENT_MODULE = "dp_accounting.dp_event"
_STATE_KEYS = frozenset({"query_state", "agg_state", "dp_event", "is_init_state"})


class ExtractingDpEventFromInitialStateError(ValueError):
    """:func:`extract_dp_event` was given a state from ``initialize()``: no round has run."""


# -- argument checks -----------------------------------------------------------------------------


def _positive(value: Any, name: str) -> float:
    return _checks.real(value, name, low=0.0, low_open=True)


def _non_negative(value: Any, name: str) -> float:
    return _checks.real(value, name, low=0.0)


def check_accounting(
    population: Any, delta: Any, clients_per_round: float
) -> tuple[float | None, float | None]:
    """``(population, delta)`` of a running epsilon, validated; delta defaults to ``min(1e-5, 1 /
    population)``. Shared by the DP factories that report ``"privacy"`` measurements."""
    if population is None:
        if delta is not None:
            raise ValueError("delta is only used with population (the running epsilon needs both)")
        return None, None
    population = _positive(population, "population")
    if population < clients_per_round:
        raise ValueError(
            f"population ({population:g}) must be at least clients_per_round "
            f"({clients_per_round:g})"
        )
    if delta is None:
        delta = min(DEFAULT_DELTA, 1.0 / population)
    delta = _checks.real(delta, "delta", low=0.0, high=1.0, low_open=True, high_open=True)
    return population, delta


def adaptive_clip_noise_params(
    noise_multiplier: float,
    clients_per_round: float,
    clipped_count_stddev: float | None = None,
) -> tuple[float, float]:
    """Split a noise multiplier between the value sum and the clipped count (adaptive clipping).

    The clipped-count query has sensitivity 0.5 and noise ``sigma_b``, i.e. noise multiplier
    ``2 sigma_b``; Gaussian releases compose as ``z^-2 = z_v^-2 + (2 sigma_b)^-2``, so the value
    sum gets ``z_v = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` and the round as a whole costs exactly one
    Gaussian mechanism of multiplier ``z``.

    Parameters
    ----------
    noise_multiplier : float
        The overall noise multiplier ``z`` (>= 0).
    clients_per_round : float
        Expected clients per round (> 0).
    clipped_count_stddev : float, optional
        ``sigma_b`` (>= 0). Default ``0.05 * clients_per_round`` (Andrew et al.'s recommendation),
        or 0 when ``z == 0``.

    Returns
    -------
    (value_noise_multiplier, clipped_count_stddev) : tuple of float

    Raises
    ------
    ValueError
        When ``z > 0`` and ``z >= 2 * sigma_b`` (the count alone would cost more than the budget).

    Warns
    -----
    UserWarning
        When ``z_v / z >= 2``: the value noise is at least doubled; use a larger
        ``clipped_count_stddev`` or more clients per round.

    Examples
    --------
    >>> from aggkit.dp import adaptive_clip_noise_params
    >>> z_v, sigma_b = adaptive_clip_noise_params(2.0, 100)
    >>> sigma_b, round(z_v, 4)  # (2**-2 - 10**-2) ** -0.5
    (5.0, 2.0412)
    """
    z = _non_negative(noise_multiplier, "noise_multiplier")
    clients = _positive(clients_per_round, "clients_per_round")
    if clipped_count_stddev is not None:
        clipped_count_stddev = _non_negative(clipped_count_stddev, "clipped_count_stddev")
    if z == 0.0:
        return 0.0, 0.0 if clipped_count_stddev is None else clipped_count_stddev
    sigma_b = 0.05 * clients if clipped_count_stddev is None else clipped_count_stddev
    if z >= 2.0 * sigma_b:
        raise ValueError(
            f"noise_multiplier ({z}) must be less than 2 * clipped_count_stddev "
            f"(2 * {sigma_b} = {2.0 * sigma_b}): the clipped-count noise alone would need more "
            "than the whole budget; raise clipped_count_stddev or clients_per_round"
        )
    value_z = (z**-2 - (2.0 * sigma_b) ** -2) ** -0.5
    if value_z / z >= 2.0:
        warnings.warn(
            f"the value noise multiplier is {value_z / z:.3g} times noise_multiplier ({z}) to pay "
            f"for the clipped-count noise (clipped_count_stddev={sigma_b}); a larger "
            "clipped_count_stddev or more clients_per_round would need less value noise",
            UserWarning,
            stacklevel=2,
        )
    return value_z, sigma_b


# -- DP events as plain data -----------------------------------------------------------------------


def _gaussian_event_data(noise_multiplier: float) -> dict:
    return {
        "module_name": _DP_EVENT_MODULE,
        "class_name": "GaussianDpEvent",
        "noise_multiplier": np.float64(noise_multiplier),
    }


def _composed_event_data(*events: dict) -> dict:
    return {"module_name": _DP_EVENT_MODULE, "class_name": "ComposedDpEvent", "events": events}


def event_from_data(data: Any) -> DpEvent:
    """The ``dp_accounting`` DpEvent described by the plain data kept in DP states.

    ``data`` is a dict with ``module_name`` (a ``dp_accounting`` module), ``class_name`` and the
    event's fields (nested events the same way), as TFF keeps events in states.
    """
    if isinstance(data, dict) and "class_name" in data:
        module_name = data["module_name"]
        if module_name.split(".")[0] != "dp_accounting":
            raise ValueError(f"not a dp_accounting event: module {module_name!r}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "DP events need the optional dependency dp-accounting: pip install aggkit[dp]"
            ) from error
        cls = getattr(module, data["class_name"])
        fields = {
            k: event_from_data(v) for k, v in data.items() if k not in ("module_name", "class_name")
        }
        return cls(**fields)
    if isinstance(data, tuple | list):
        return [event_from_data(v) for v in data]
    if isinstance(data, np.generic):
        return data.item()
    return data


def _dp_states(state: Any) -> list[dict]:
    """Every DP aggregator state inside ``state`` (outermost first, depth first)."""
    found: list[dict] = []
    if isinstance(state, dict):
        if _STATE_KEYS <= state.keys():
            found.append(state)
        for value in state.values():
            found.extend(_dp_states(value))
    elif isinstance(state, tuple | list):
        for value in state:
            found.extend(_dp_states(value))
    return found


def extract_dp_event(state: State) -> DpEvent:
    """The ``dp_accounting`` DpEvent of the round that produced ``state``.

    ``state`` is the state returned by ``next`` of a :func:`gaussian_fixed` or
    :func:`gaussian_adaptive` process, or of a composition holding one (such as
    :func:`aggkit.dp_aggregator`'s; several DP layers give their events composed). The event is
    what one round releases, *without* client sampling: for accounting over rounds with Poisson
    sampling, wrap it with :func:`aggkit.privacy.sampled_event` and compose the rounds (or call
    :func:`aggkit.privacy.epsilon`). For :func:`aggkit.tree_aggregation` the event is the whole
    run so far (its trees as ``SingleEpochTreeAggregationDpEvent``; see :mod:`aggkit.tree`),
    which :func:`aggkit.privacy.epsilon` accepts as it is.

    Raises
    ------
    ExtractingDpEventFromInitialStateError
        ``state`` comes from ``initialize()`` (no round has released anything yet).
    ValueError
        ``state`` holds no DP aggregator state.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.dp import extract_dp_event
    >>> process = ak.gaussian_fixed(1.1, 10, clip=1.0, seed=0).create(
    ...     ak.TensorSpec((3,), np.float32))
    >>> out = process.next(process.initialize(), [np.ones(3, np.float32)] * 10)
    >>> extract_dp_event(out.state)
    GaussianDpEvent(noise_multiplier=1.1)
    """
    found = _dp_states(state)
    if not found:
        raise ValueError("state holds no DP aggregator state (gaussian_fixed / gaussian_adaptive)")
    if any(bool(s["is_init_state"]) for s in found):
        raise ExtractingDpEventFromInitialStateError(
            "cannot extract a DpEvent from an initial state: run a round with next() first"
        )
    events = [event_from_data(s["dp_event"]) for s in found]
    if len(events) == 1:
        return events[0]
    from aggkit import privacy

    return privacy._dp_accounting().ComposedDpEvent(events)


# -- factories ------------------------------------------------------------------------------------


def _estimator_seed(seed: int) -> int:
    """A 63-bit seed for the clipped-count noise, independent of the value noise's key."""
    digest = hashlib.blake2b(f"aggkit.dp/{seed}/clipped_count".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class GaussianFixedFactory(Factory):
    """Gaussian DP mean with a fixed clip; build it with :func:`aggkit.gaussian_fixed`."""

    noise_multiplier: float
    clients_per_round: float
    clip: float
    record_sum: Factory
    population: float | None = None
    delta: float | None = None
    seed: int | None = None

    is_weighted = False

    def _create(self, layout: Layout) -> DPProcess:
        return DPProcess(
            layout,
            self.record_sum.create(layout),
            noise_multiplier=self.noise_multiplier,
            value_noise_multiplier=self.noise_multiplier,
            clients_per_round=self.clients_per_round,
            initial_clip=self.clip,
            estimator=None,
            population=self.population,
            delta=self.delta,
            seed=self.seed,
        )


@dataclass(frozen=True)
class GaussianAdaptiveFactory(Factory):
    """Gaussian DP mean with an adaptive clip; build it with :func:`aggkit.gaussian_adaptive`.

    ``value_noise_multiplier`` and ``clipped_count_stddev`` are the split of ``noise_multiplier``
    (:func:`adaptive_clip_noise_params`).
    """

    noise_multiplier: float
    clients_per_round: float
    initial_l2_norm_clip: float
    target_unclipped_quantile: float
    learning_rate: float
    clipped_count_stddev: float
    value_noise_multiplier: float
    record_sum: Factory
    geometric_update: bool = True
    population: float | None = None
    delta: float | None = None
    seed: int | None = None

    is_weighted = False

    def estimator(self) -> QuantileEstimator:
        """The private quantile estimator of the clip (TF-Privacy's ``QuantileEstimatorQuery``)."""
        from aggkit.quantile import QuantileEstimator

        # Built directly rather than through private_quantile_estimator, which requires a
        # positive learning rate: DP allows 0 (a fixed clip with the split noise), as TFF does.
        return QuantileEstimator(
            self.initial_l2_norm_clip,
            self.target_unclipped_quantile,
            self.learning_rate,
            geometric_update=self.geometric_update,
            record_sum=self.record_sum,
            below_estimate_stddev=self.clipped_count_stddev,
            expected_num_records=self.clients_per_round,
            seed=None if self.seed is None else _estimator_seed(self.seed),
        )

    def _create(self, layout: Layout) -> DPProcess:
        return DPProcess(
            layout,
            self.record_sum.create(layout),
            noise_multiplier=self.noise_multiplier,
            value_noise_multiplier=self.value_noise_multiplier,
            clients_per_round=self.clients_per_round,
            initial_clip=self.initial_l2_norm_clip,
            estimator=self.estimator(),
            population=self.population,
            delta=self.delta,
            seed=self.seed,
        )


def gaussian_fixed(
    noise_multiplier: float,
    clients_per_round: float,
    clip: float,
    *,
    record_sum: Factory | None = None,
    population: float | None = None,
    delta: float | None = None,
    seed: int | None = None,
) -> GaussianFixedFactory:
    """A differentially private mean: clip to L2 norm ``clip``, sum, add Gaussian noise, divide.

    ``result = (sum_i x_i * min(1, clip / ||x_i||_2) + N(0, (noise_multiplier * clip)^2 I))
    / clients_per_round`` (the global L2 norm over all tensors; independent noise per coordinate;
    the division is by the *expected* number of clients). Each round is a Gaussian mechanism with
    noise multiplier ``noise_multiplier`` with respect to adding or removing one client.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clip: 0 (no privacy) or at least 0.04 (the sampler's
        floor, see :mod:`aggkit.dp`).
    clients_per_round : float
        The expected number of clients per round (> 0), public; the denominator.
    clip : float
        The L2 clip (> 0).
    record_sum : unweighted factory, optional
        How the clipped updates are summed (default :func:`aggkit.sum`). It must not increase the
        sensitivity (the caller's responsibility); its state and measurements appear under
        ``agg_state`` and ``dp``.
    population : float, optional
        The number of clients rounds are drawn from (Poisson sampling at rate
        ``clients_per_round / population``). When given, measurements include the running
        ``{"privacy": {"epsilon", "delta", "rounds"}}`` (dp-accounting's RDP accountant; needs the
        ``dp`` extra).
    delta : float, optional
        Delta of the running epsilon, in (0, 1); default ``min(1e-5, 1 / population)``.
    seed : int, optional
        Seed of the noise, a testing aid. None (default) draws a fresh key from the operating
        system for every released round. With a seed, the noise is a function of the seed and the
        round counter in the state: never use one state for two released rounds (they would
        share their noise), and never deploy a seeded run (whoever knows the seed can remove
        the noise).

    Returns
    -------
    GaussianFixedFactory
        Unweighted. Measurements ``{"dp_query_metrics": (), "dp": record_sum's}`` (+ ``privacy``).

    Raises
    ------
    ValueError
        A parameter is out of range (the message names it).
    TypeError
        A parameter has the wrong kind; at ``create``, a template with non-float tensors.

    Notes
    -----
    A client holding NaN or Inf is dropped (contributes zeros; this keeps the guarantee, since
    zeros lie within the clip). See :mod:`aggkit.dp` for the state layout.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.gaussian_fixed(0.0, clients_per_round=4, clip=1.0).create(
    ...     ak.TensorSpec((), np.float32))
    >>> print(process.next(process.initialize(), [0.5, 1.0, 3.0]).result)  # (0.5 + 1 + 1) / 4
    0.625
    >>> process = ak.gaussian_fixed(1.0, 100, clip=0.1, population=10_000, seed=0).create(
    ...     ak.TensorSpec((1000,), np.float32))
    >>> out = process.next(process.initialize(), [np.ones(1000, np.float32)] * 100)
    >>> round(out.measurements["privacy"]["epsilon"], 2), out.measurements["privacy"]["rounds"]
    (0.96, 1)
    """
    z = _checks.noise_multiplier(noise_multiplier)
    clients = _positive(clients_per_round, "clients_per_round")
    clip = _positive(clip, "clip")
    population, delta = check_accounting(population, delta, clients)
    return GaussianFixedFactory(
        z,
        clients,
        clip,
        _checks.unweighted_factory(record_sum, "record_sum"),
        population,
        delta,
        _checks.seed(seed),
    )


def gaussian_adaptive(
    noise_multiplier: float,
    clients_per_round: float,
    initial_l2_norm_clip: float = 0.1,
    target_unclipped_quantile: float = 0.5,
    learning_rate: float = 0.2,
    clipped_count_stddev: float | None = None,
    *,
    geometric_update: bool = True,
    record_sum: Factory | None = None,
    population: float | None = None,
    delta: float | None = None,
    seed: int | None = None,
) -> GaussianAdaptiveFactory:
    """A differentially private mean whose clip tracks a quantile of the client norms.

    Round ``t`` with clip ``C_t``: clip every update to ``C_t``, sum, add
    ``N(0, (z_v C_t)^2)`` per coordinate, divide by ``clients_per_round``; then
    ``b = clamp((sum_i (1[||x_i|| <= C_t] - 0.5) + N(0, sigma_b^2)) / clients_per_round + 0.5,
    0, 1)`` and ``C_{t+1} = C_t * exp(-learning_rate * (b - target_unclipped_quantile))``.
    ``z_v`` and ``sigma_b`` split ``noise_multiplier`` so that a round costs exactly one Gaussian
    mechanism of multiplier ``noise_multiplier`` (:func:`adaptive_clip_noise_params`; Andrew et
    al. 2021).

    Parameters
    ----------
    noise_multiplier : float
        The overall noise multiplier ``z``: 0 or at least 0.04 (as in :func:`gaussian_fixed`).
    clients_per_round : float
        The expected number of clients per round (> 0), public.
    initial_l2_norm_clip : float
        The first round's clip (> 0).
    target_unclipped_quantile : float
        The fraction of clients the clip should leave unclipped, in [0, 1].
    learning_rate : float
        The clip's learning rate (>= 0; at most 10 with the geometric update, see
        :func:`aggkit.quantile_estimator`).
    clipped_count_stddev : float, optional
        Noise ``sigma_b`` on the unclipped count (>= 0); default ``0.05 * clients_per_round``
        (0 when ``z == 0``). Must exceed ``z / 2``.
    geometric_update : bool
        Geometric update (default, as TFF) or arithmetic ``C - learning_rate * (b - target)``.
    record_sum, population, delta, seed
        As in :func:`gaussian_fixed`; ``record_sum`` sums the unclipped-count records too.

    Returns
    -------
    GaussianAdaptiveFactory
        Unweighted. Measurements ``{"dp_query_metrics": {"clip": C_next}, "dp": record_sum's}``
        (+ ``privacy``), where ``clip`` is the clip of the *next* round.

    Raises
    ------
    ValueError
        A parameter is out of range (the message names it), or ``z >= 2 * sigma_b``.

    Warns
    -----
    UserWarning
        When the value noise multiplier is at least twice ``noise_multiplier``.

    Notes
    -----
    A client holding NaN or Inf is dropped (contributes zeros) and counts as clipped in the
    (noised) unclipped fraction.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> factory = ak.gaussian_adaptive(0.0, 3, initial_l2_norm_clip=1.0,
    ...                                target_unclipped_quantile=1.0, learning_rate=1.0)
    >>> process = factory.create(ak.TensorSpec((), np.float32))
    >>> out = process.next(process.initialize(), [0.5, 1.5, 2.0])
    >>> print(out.result * 3)  # 0.5 + 1 + 1
    2.5
    >>> round(out.measurements["dp_query_metrics"]["clip"], 4)  # exp(2/3): 2 of 3 were clipped
    1.9477
    """
    clients = _positive(clients_per_round, "clients_per_round")
    initial = _positive(initial_l2_norm_clip, "initial_l2_norm_clip")
    target = _checks.real(target_unclipped_quantile, "target_unclipped_quantile", low=0.0, high=1.0)
    geometric_update = _checks.boolean(geometric_update, "geometric_update")
    rate = _checks.learning_rate(
        learning_rate, "learning_rate", geometric=geometric_update, allow_zero=True
    )
    z = _checks.noise_multiplier(noise_multiplier)
    value_z, sigma_b = adaptive_clip_noise_params(z, clients, clipped_count_stddev)
    population, delta = check_accounting(population, delta, clients)
    return GaussianAdaptiveFactory(
        z,
        clients,
        initial,
        target,
        rate,
        sigma_b,
        value_z,
        _checks.unweighted_factory(record_sum, "record_sum"),
        geometric_update,
        population,
        delta,
        _checks.seed(seed),
    )


# -- process --------------------------------------------------------------------------------------


class DPProcess(AggregationProcess):
    """The process of :func:`gaussian_fixed` (``estimator=None``) and :func:`gaussian_adaptive`."""

    is_weighted = False

    def __init__(
        self,
        layout: Layout,
        record: AggregationProcess,
        *,
        noise_multiplier: float,
        value_noise_multiplier: float,
        clients_per_round: float,
        initial_clip: float,
        estimator: QuantileEstimator | None,
        population: float | None,
        delta: float | None,
        seed: int | None,
    ):
        _checks.floating_layout(layout, "DP aggregation")
        super().__init__(layout)
        self.record = record
        self.noise_multiplier = noise_multiplier
        self.value_noise_multiplier = value_noise_multiplier
        self.clients_per_round = clients_per_round
        self.initial_clip = initial_clip
        self.estimator = estimator
        self.population = population
        self.delta = delta
        self.seed = seed
        self.stats_needed = record.stats_needed | {"l2"}
        if estimator is None:
            self.event = _gaussian_event_data(noise_multiplier)
        else:
            # TF-Privacy's QuantileAdaptiveClipSumQuery: the value sum's Gaussian, then the
            # unclipped count's (sensitivity 0.5, noise sigma_b: multiplier 2 sigma_b).
            self.event = _composed_event_data(
                _gaussian_event_data(value_noise_multiplier),
                _gaussian_event_data(2.0 * estimator.below_estimate_stddev),
            )

    def initialize(self) -> State:
        clip = self.initial_clip
        query: dict[str, Any] = {
            "l2_norm_clip": np.float64(clip),
            "stddev": np.float64(self.value_noise_multiplier * clip),
        }
        if self.estimator is not None:
            query["noise_multiplier"] = np.float64(self.value_noise_multiplier)
            query["quantile_estimator_state"] = self.estimator.initialize()
        # Only a seeded run keys its noise from the state; seed=None draws each round's key.
        key = 0 if self.seed is None else kernels.counter_rng.seed_to_key(self.seed)
        query["noise_key"] = np.uint64(key)
        query["round"] = np.int64(0)
        return {
            "query_state": query,
            "agg_state": self.record.initialize(),
            "dp_event": self.event,
            "is_init_state": np.bool_(True),
        }

    def begin_round(self, state: State) -> Round:
        return _DPRound(self, state)


class _DPRound(Round):
    owns_result = True  # the noised copy

    def __init__(self, process: DPProcess, state: State):
        self.process = process
        self.query = state["query_state"]
        self.clip = float(self.query["l2_norm_clip"])
        self.record = process.record.begin_round(state["agg_state"])
        self.norms: list[np.ndarray] = []

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        norms = block.norms(2.0)  # 0 for coefficient-0 rows, inf for rows holding NaN/Inf
        if self.process.estimator is not None:
            self.norms.append(norms)
        self.record.add(block.scaled(clip_factors(norms, self.clip)), None)

    def finish(self):
        process = self.process
        query = self.query
        # Noised in place: the inner round's own array, or a copy when it does not own it.
        agg_state, result, agg_measurements = self.record.finish_owned()
        sigma = float(query["stddev"])
        round_index = int(query["round"])
        if sigma > 0.0:
            if process.seed is None:  # fresh entropy for every release, even from one state
                key = kernels.counter_rng.seed_to_key(None)
            else:
                key = kernels.counter_rng.derive_key(
                    int(query["noise_key"]), "dp_noise", round_index
                )
            kernels.gaussian_noise.add_gaussian_noise(result, sigma, key)
        result /= process.clients_per_round

        new_query = dict(query)
        new_query["round"] = np.int64(round_index + 1)
        metrics: Any = ()
        if process.estimator is not None:
            norms = np.concatenate(self.norms) if self.norms else np.zeros(0)
            estimate = process.estimator.next(query["quantile_estimator_state"], norms)
            clip = float(process.estimator.report(estimate))
            new_query["quantile_estimator_state"] = estimate
            new_query["l2_norm_clip"] = np.float64(clip)
            new_query["stddev"] = np.float64(process.value_noise_multiplier * clip)
            metrics = {"clip": clip}
        state = {
            "query_state": new_query,
            "agg_state": agg_state,
            "dp_event": process.event,
            "is_init_state": np.bool_(False),
        }
        measurements: dict[str, Any] = {"dp_query_metrics": metrics, "dp": agg_measurements}
        if process.population is not None:
            from aggkit import privacy

            rounds = round_index + 1
            # The adaptive round's two Gaussians compose to exactly one of multiplier z.
            epsilon = privacy.epsilon(
                process.noise_multiplier,
                clients_per_round=process.clients_per_round,
                population=process.population,
                rounds=rounds,
                delta=process.delta,
            )
            measurements["privacy"] = {
                "epsilon": float(epsilon),
                "delta": float(process.delta),
                "rounds": rounds,
                "sampling": "poisson",  # the scheme this epsilon holds for (privacy.SAMPLINGS)
            }
        return state, result, measurements
