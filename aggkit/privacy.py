"""Privacy accounting for Gaussian DP aggregation, through Google's ``dp-accounting``.

aggkit does not implement an accountant. Its DP factories describe what each round releases as
``dp_accounting`` DpEvents, and this module turns events into (epsilon, delta) guarantees with
dp-accounting's Renyi-DP (``"rdp"``) or privacy-loss-distribution (``"pld"``) accountant.

One round of DP aggregation adds Gaussian noise of standard deviation ``z * clip`` to a sum of
client updates clipped to L2 norm ``clip``: a Gaussian mechanism with noise multiplier ``z``. When
each of ``population`` clients takes part in a round independently with probability
``q = clients_per_round / population`` (Poisson sampling), the round is a
``PoissonSampledDpEvent(q, GaussianDpEvent(z))``; with ``population=None`` (or equal to
``clients_per_round``) every round sees the whole population and no amplification by sampling is
claimed. ``rounds`` rounds compose.

The guarantee is user-level (add or remove one client's whole data) only when each client
contributes one clipped update per round, which is how aggkit's DP factories work. dp-accounting
is an optional dependency: ``pip install aggkit[dp]``. Importing this module does not import it.

Sampling schemes and neighbouring relations
    An epsilon is a guarantee only for the sampling the run really did; every function here takes
    ``sampling`` (one of :data:`SAMPLINGS`) and accounts for that scheme alone:

    ``"poisson"`` (default)
        Each client joins each round independently with probability ``q``; the round's size
        varies. Accounted as ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under
        *add-or-remove-one*: the two worlds compared are the population with and without one
        client, so the guarantee hides whether the client took part at all.
    ``"fixed_size"``
        Exactly ``clients_per_round`` distinct clients, uniformly without replacement from a
        population of ``population`` (``rng.choice(population, m, replace=False)``). Accounted
        with dp-accounting's ``SampledWithoutReplacementDpEvent`` (Wang, Balle and
        Kasiviswanathan 2019, Theorem 27), which holds only under *replace-one*: the two worlds
        have the same, public, population size and differ in one client's data (any data
        replaced by any other). A clipped sum then moves by up to ``2 * clip``, twice its
        add-or-remove sensitivity, so a round with noise ``z * clip`` is a Gaussian of multiplier
        ``z / 2`` with respect to that relation: the event is
        ``SampledWithoutReplacementDpEvent(population, m, GaussianDpEvent(z / 2))``. Neither
        relation's epsilon converts into the other's for free (add-or-remove ``eps`` implies
        replace-one ``2 eps``), and the fixed-size bound is looser: 100 of 1,000 clients at
        ``z = 1`` for 5 rounds give 2.9 with Poisson sampling and 13.8 with fixed-size sampling
        (delta 1e-5).

    Events of the two schemes cannot be composed into one guarantee (no accountant holds both
    relations at once): :func:`epsilon_of_event` raises :class:`SamplingMismatchError` for such
    a mix, and :func:`check_sampling` is how a trainer refuses a DP aggregator whose running
    epsilon assumes another scheme than the one it samples with.

dp-accounting's RDP accountant logs an absl warning ("_compute_log_a_frac failed to converge")
for each fractional RDP order it cannot evaluate at small noise and large sampling rates, and
drops that order (a valid, slightly looser bound). This module keeps dp-accounting's default
orders, so its epsilons are dp-accounting's, and silences those messages while it computes: a
running epsilon printed every round would otherwise flood the console.

Example
-------
>>> from aggkit import privacy
>>> eps = privacy.epsilon(1.0, clients_per_round=100, population=10_000, rounds=1000, delta=1e-6)
>>> round(eps, 2)
2.44
>>> z = privacy.noise_multiplier(2.0, delta=1e-6, clients_per_round=100, population=10_000,
...                              rounds=1000)
>>> privacy.epsilon(z, clients_per_round=100, population=10_000, rounds=1000, delta=1e-6) <= 2.0
True
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import numbers
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aggkit import _checks

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dp_accounting import DpEvent

__all__ = [
    "ACCOUNTANTS",
    "SAMPLINGS",
    "SamplingMismatchError",
    "check_sampling",
    "composed_event",
    "epsilon",
    "epsilon_of_event",
    "gaussian_event",
    "noise_multiplier",
    "round_event",
    "sampled_event",
]

#: Accountant names accepted by :func:`epsilon`, :func:`epsilon_of_event` and
#: :func:`noise_multiplier`.
ACCOUNTANTS = ("rdp", "pld")

#: Client-sampling schemes the accounting covers (see the module docstring): ``"poisson"``
#: (add-or-remove-one neighbours) and ``"fixed_size"`` (without replacement; replace-one).
SAMPLINGS = ("poisson", "fixed_size")


# The default of epsilon()'s population: required for a noise multiplier (None is a value there:
# no sampling), absent for an event.
_REQUIRED: Any = object()


class SamplingMismatchError(ValueError):
    """An epsilon was asked for one client-sampling scheme of a run that used another."""


# The largest noise multiplier noise_multiplier() tries before calling a target unreachable.
_MAX_NOISE_MULTIPLIER = 1e6
# Below this noise multiplier the search stops (targets so large are met by almost no noise).
_MIN_NOISE_MULTIPLIER = 1e-9
# Relative tolerance of the noise multiplier found by noise_multiplier().
_RTOL = 1e-6


# The absl message dp-accounting logs for each fractional RDP order it cannot evaluate (it then
# drops that order: a valid, slightly looser bound). Dropped while this module computes.
_NON_CONVERGENCE = "_compute_log_a_frac failed to converge"
_QUIET = contextvars.ContextVar("aggkit_privacy_quiet", default=False)


class _DropNonConvergence(logging.Filter):
    """Drops dp-accounting's non-convergence warnings, only inside :func:`_quiet` blocks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_QUIET.get() and str(record.msg).startswith(_NON_CONVERGENCE))


_FILTER = _DropNonConvergence()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence dp-accounting's non-convergence warnings in this block (this thread only)."""
    logger = logging.getLogger("absl")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def _dp_accounting() -> Any:
    """Import ``dp_accounting`` on first use, with an install hint when it is missing."""
    try:
        import dp_accounting
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "privacy accounting needs the optional dependency dp-accounting: "
            "pip install aggkit[dp]  (or: pip install dp-accounting)"
        ) from error
    return dp_accounting


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_noise_multiplier(value: Any) -> float:
    return _checks.real(value, "noise_multiplier", low=0.0)


def _check_delta(value: Any) -> float:
    return _checks.real(value, "delta", low=0.0, high=1.0, low_open=True, high_open=True)


def _check_rounds(value: Any) -> int:
    return _checks.integer(value, "rounds", low=0)


def _check_accountant(value: Any) -> str:
    if value not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {value!r}")
    return value


def _check_sampling(value: Any) -> str:
    if value not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {value!r}")
    return value


def check_sampling(accounted: str, ran: str) -> None:
    """Raise :class:`SamplingMismatchError` unless ``accounted`` (an epsilon's scheme) is ``ran``.

    The one place where a run's sampling and its accounting are compared: a trainer calls it
    with the scheme a DP aggregator's running epsilon assumes and the scheme it samples with.

    Example
    -------
    >>> check_sampling("poisson", "poisson")
    >>> check_sampling("poisson", "fixed_size")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aggkit.privacy.SamplingMismatchError: an epsilon accounted for 'poisson' sampling is no ...
    """
    accounted, ran = _check_sampling(accounted), _check_sampling(ran)
    if accounted != ran:
        raise SamplingMismatchError(
            f"an epsilon accounted for {accounted!r} sampling is no guarantee for a run that used "
            f"{ran!r} sampling"
        )


def _fixed_size(clients_per_round: Any, population: Any) -> tuple[int, int]:
    """``(population, clients_per_round)`` as the integers a fixed-size sample needs."""
    sizes = []
    for value, name in ((population, "population"), (clients_per_round, "clients_per_round")):
        if value is None:
            raise ValueError(f"fixed_size sampling needs {name} (sampling from a known population)")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
            raise TypeError(f"{name} must be a whole number for fixed_size sampling, got {value!r}")
        sizes.append(int(value))
    return sizes[0], sizes[1]


def _sampling_rate(clients_per_round: Any, population: Any) -> float:
    """The Poisson sampling rate ``clients_per_round / population`` (1.0 without a population)."""
    clients = _checks.real(clients_per_round, "clients_per_round", low=0.0, low_open=True)
    if population is None:
        return 1.0
    pop = _checks.real(population, "population", low=0.0, low_open=True)
    if pop < clients:
        raise ValueError(
            f"population ({pop}) must be at least clients_per_round ({clients}), or None"
        )
    return clients / pop


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def gaussian_event(noise_multiplier: float) -> DpEvent:
    """The DpEvent of one Gaussian sum query: noise std = ``noise_multiplier`` x sensitivity.

    Parameters
    ----------
    noise_multiplier : float
        Ratio of the noise standard deviation to the L2 sensitivity (the clip); >= 0. Zero means
        no privacy (infinite epsilon).

    Returns
    -------
    dp_accounting.GaussianDpEvent

    Example
    -------
    >>> gaussian_event(1.1)
    GaussianDpEvent(noise_multiplier=1.1)
    """
    z = _check_noise_multiplier(noise_multiplier)
    return _dp_accounting().GaussianDpEvent(z)


def sampled_event(
    event: DpEvent,
    *,
    clients_per_round: float,
    population: float | None = None,
    sampling: str = "poisson",
) -> DpEvent:
    """Wrap ``event`` (stated for add-or-remove-one) in the round's client sampling.

    ``"poisson"``: ``PoissonSampledDpEvent(clients_per_round / population, event)``.
    ``"fixed_size"``: ``SampledWithoutReplacementDpEvent(population, clients_per_round, event')``
    where ``event'`` is ``event`` restated for replace-one neighbours (every Gaussian's noise
    multiplier halved: replacing a client moves a clipped sum twice as far as removing it).
    Returns ``event`` unchanged when ``population`` is None or equal to ``clients_per_round``
    (every client takes part: no amplification by sampling, add-or-remove-one).

    Example
    -------
    >>> sampled_event(gaussian_event(1.0), clients_per_round=10, population=1000)
    PoissonSampledDpEvent(sampling_probability=0.01, event=GaussianDpEvent(noise_multiplier=1.0))
    >>> sampled_event(gaussian_event(1.0), clients_per_round=10, population=1000,
    ...               sampling="fixed_size")  # doctest: +NORMALIZE_WHITESPACE
    SampledWithoutReplacementDpEvent(source_dataset_size=1000, sample_size=10,
    event=GaussianDpEvent(noise_multiplier=0.5))
    """
    dpa = _dp_accounting()
    if not isinstance(event, dpa.DpEvent):
        raise TypeError(f"event must be a dp_accounting DpEvent, got {type(event).__name__}")
    sampling = _check_sampling(sampling)
    q = _sampling_rate(clients_per_round, population)
    if q == 1.0:
        return event
    if sampling == "poisson":
        return dpa.PoissonSampledDpEvent(q, event)
    size, sample = _fixed_size(clients_per_round, population)
    return dpa.SampledWithoutReplacementDpEvent(size, sample, _replace_one(event))


def _replace_one(event: DpEvent) -> DpEvent:
    """``event`` restated for replace-one neighbours: Gaussian noise multipliers halved.

    Only Gaussian events and their compositions have a sensitivity to double here; anything else
    is refused rather than guessed at.
    """
    dpa = _dp_accounting()
    if isinstance(event, dpa.GaussianDpEvent):
        return dpa.GaussianDpEvent(event.noise_multiplier / 2.0)
    if isinstance(event, dpa.SelfComposedDpEvent):
        return dpa.SelfComposedDpEvent(_replace_one(event.event), event.count)
    if isinstance(event, dpa.ComposedDpEvent):
        return dpa.ComposedDpEvent([_replace_one(e) for e in event.events])
    raise ValueError(
        f"fixed_size sampling accounts for Gaussian events and their compositions, not {event!r}"
    )


def round_event(
    noise_multiplier: float,
    *,
    clients_per_round: float,
    population: float | None = None,
    sampling: str = "poisson",
) -> DpEvent:
    """The DpEvent of one round of Gaussian DP aggregation with client sampling.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clip (>= 0).
    clients_per_round : float
        Expected number of clients per round (> 0).
    population : float or None
        Number of clients sampled from. None (or ``clients_per_round``) means every client takes
        part in every round.
    sampling : {"poisson", "fixed_size"}
        How the round's clients are drawn (see the module docstring).

    Returns
    -------
    dp_accounting.DpEvent
        ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, or with ``"fixed_size"``
        ``SampledWithoutReplacementDpEvent(population, clients_per_round, GaussianDpEvent(z/2))``
        (replace-one), or ``GaussianDpEvent(z)`` without sampling.

    Example
    -------
    >>> round_event(1.0, clients_per_round=50, population=5000)
    PoissonSampledDpEvent(sampling_probability=0.01, event=GaussianDpEvent(noise_multiplier=1.0))
    >>> round_event(1.0, clients_per_round=50)
    GaussianDpEvent(noise_multiplier=1.0)
    """
    return sampled_event(
        gaussian_event(noise_multiplier),
        clients_per_round=clients_per_round,
        population=population,
        sampling=sampling,
    )


def composed_event(events: Iterable[DpEvent]) -> DpEvent:
    """Compose events, in order, into one DpEvent.

    Runs of equal consecutive events become ``SelfComposedDpEvent(event, count)``, which the RDP
    accountant evaluates once instead of ``count`` times (same guarantee, since composition is
    what self-composition means). An empty sequence gives ``NoOpDpEvent()``; one run gives that
    run's event without a ``ComposedDpEvent`` around it.

    Example
    -------
    >>> e = round_event(1.0, clients_per_round=10, population=1000)
    >>> composed_event([e, e, e])  # doctest: +NORMALIZE_WHITESPACE
    SelfComposedDpEvent(event=PoissonSampledDpEvent(sampling_probability=0.01,
    event=GaussianDpEvent(noise_multiplier=1.0)), count=3)
    """
    dpa = _dp_accounting()
    runs: list[list[Any]] = []
    for event in events:
        if not isinstance(event, dpa.DpEvent):
            raise TypeError(
                f"events must contain dp_accounting DpEvents, got {type(event).__name__}"
            )
        if isinstance(event, dpa.NoOpDpEvent):
            continue
        if runs and runs[-1][0] == event:
            runs[-1][1] += 1
        else:
            runs.append([event, 1])
    parts = [
        event if count == 1 else dpa.SelfComposedDpEvent(event, count) for event, count in runs
    ]
    if not parts:
        return dpa.NoOpDpEvent()
    if len(parts) == 1:
        return parts[0]
    return dpa.ComposedDpEvent(parts)


# --------------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------------


def _fresh_accountant(accountant: str, relation: Any = None) -> Any:
    """A new accountant; ``relation`` is a ``NeighboringRelation`` (None: add-or-remove-one)."""
    dpa = _dp_accounting()
    if relation is None:
        relation = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    if accountant == "rdp":
        return dpa.rdp.RdpAccountant(neighboring_relation=relation)
    return dpa.pld.PLDAccountant(neighboring_relation=relation)


def _has_zero_noise(event: Any) -> bool:
    """Whether ``event`` holds a Gaussian with noise multiplier 0 (a release without privacy)."""
    dpa = _dp_accounting()
    if isinstance(event, dpa.GaussianDpEvent):
        return event.noise_multiplier == 0
    if isinstance(event, dpa.ComposedDpEvent):
        return any(_has_zero_noise(e) for e in event.events)
    inner = getattr(event, "event", None)  # self-composed and sampled events
    return isinstance(inner, dpa.DpEvent) and _has_zero_noise(inner)


def _sampling_relation(event: DpEvent) -> Any:
    """The neighbouring relation ``event``'s client sampling is accounted under.

    Replace-one when ``event`` holds fixed-size (``SampledWithoutReplacementDpEvent``) rounds,
    ``REPLACE_SPECIAL`` when it holds tree aggregation (``SingleEpochTreeAggregationDpEvent``),
    add-or-remove-one otherwise. Raises :class:`SamplingMismatchError` when it holds both kinds,
    or fixed-size rounds beside a Gaussian stated for add-or-remove-one outside any of them: no
    single relation covers such a run.
    """
    dpa = _dp_accounting()
    kinds: set[str] = set()

    def walk(e: Any, inside_fixed: bool) -> None:
        if isinstance(e, dpa.SampledWithoutReplacementDpEvent):
            kinds.add("fixed_size")
            walk(e.event, True)
        elif isinstance(e, dpa.PoissonSampledDpEvent):
            kinds.add("poisson")
        elif isinstance(e, dpa.SelfComposedDpEvent):
            walk(e.event, inside_fixed)
        elif isinstance(e, dpa.ComposedDpEvent):
            for part in e.events:
                walk(part, inside_fixed)
        elif isinstance(e, dpa.GaussianDpEvent) and not inside_fixed:
            kinds.add("unsampled")
        elif isinstance(e, dpa.SingleEpochTreeAggregationDpEvent):
            kinds.add("tree")

    walk(event, False)
    if "tree" in kinds:
        # Tree aggregation is analysed for a client replaced by a special (zero) contribution:
        # dp-accounting accepts the tree event only under REPLACE_SPECIAL.
        if "fixed_size" in kinds:
            raise SamplingMismatchError(
                "the event mixes tree aggregation (REPLACE_SPECIAL neighbours) with fixed_size "
                "rounds (replace-one): no single guarantee covers both"
            )
        return dpa.NeighboringRelation.REPLACE_SPECIAL
    if "fixed_size" not in kinds:
        return dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    if len(kinds) > 1:
        raise SamplingMismatchError(
            "the event mixes fixed_size rounds (replace-one neighbours) with "
            f"{' and '.join(sorted(kinds - {'fixed_size'}))} rounds (add-or-remove-one): no "
            "single guarantee covers both; account each run for the sampling it used"
        )
    return dpa.NeighboringRelation.REPLACE_ONE


def epsilon_of_event(event: DpEvent, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``event``, by dp-accounting.

    The neighbouring relation follows the event's client sampling: replace-one for fixed-size
    rounds (``SampledWithoutReplacementDpEvent``), add-or-remove-one otherwise; an event mixing
    them raises :class:`SamplingMismatchError`.

    Parameters
    ----------
    event : dp_accounting.DpEvent
        What was released, e.g. from :func:`round_event` and :func:`composed_event`.
    delta : float
        Target delta, in (0, 1).
    accountant : {"rdp", "pld"}
        ``"rdp"``: Renyi DP with dp-accounting's default orders and its improved RDP-to-(eps,
        delta) conversion (Balle et al. 2020; Canonne et al. 2020); a slightly loose upper
        bound. ``"pld"``: privacy loss distributions (tighter; slower for many rounds; no
        fixed-size sampling).

    Returns
    -------
    float
        Epsilon (``inf`` when the event contains a non-private step or zero noise).

    Example
    -------
    >>> round(epsilon_of_event(gaussian_event(1.0), delta=1e-5), 2)
    4.73
    """
    dpa = _dp_accounting()
    if not isinstance(event, dpa.DpEvent):
        raise TypeError(f"event must be a dp_accounting DpEvent, got {type(event).__name__}")
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    relation = _sampling_relation(event)
    if _has_zero_noise(event):  # no privacy (dp-accounting divides by the multiplier inside)
        return math.inf
    acc = _fresh_accountant(accountant, relation)
    if not acc.supports(event):
        raise ValueError(f"the {accountant!r} accountant does not support event {event!r}")
    with _quiet():
        acc.compose(event)
        return float(acc.get_epsilon(delta))


def epsilon(
    noise_multiplier: float | DpEvent,
    *,
    clients_per_round: float | None = None,
    population: float | None = _REQUIRED,
    rounds: int | None = None,
    delta: float,
    accountant: str = "rdp",
    sampling: str = "poisson",
) -> float:
    """Epsilon after ``rounds`` rounds of Gaussian DP aggregation with client sampling.

    Or, given a ``dp_accounting`` DpEvent instead of a noise multiplier (and then only
    ``delta`` and ``accountant``), the epsilon of that event: :func:`epsilon_of_event`. That is
    how runs that are not rounds of one Gaussian are accounted, such as the whole-run event of
    :func:`aggkit.tree_aggregation` from :func:`aggkit.dp.extract_dp_event` (RDP accountant,
    ``REPLACE_SPECIAL`` neighbouring relation).

    Parameters
    ----------
    noise_multiplier : float or dp_accounting.DpEvent
        Noise standard deviation over the clip, ``z`` (>= 0; 0 gives ``inf``); or an event.
    clients_per_round : float
        Expected clients per round (> 0).
    population : float or None
        Clients sampled from; the sampling rate is ``clients_per_round / population``. None, or
        a value equal to ``clients_per_round``, means no sampling (every client every round).
    rounds : int
        Number of rounds (>= 0; 0 gives 0.0).
    delta : float
        Target delta in (0, 1); commonly below ``1 / population``.
    accountant : {"rdp", "pld"}
        Which dp-accounting accountant (see :func:`epsilon_of_event`); ``"fixed_size"`` needs
        ``"rdp"``.
    sampling : {"poisson", "fixed_size"}
        The scheme the run really sampled its clients with (see the module docstring):
        Poisson (add-or-remove-one) or exactly ``clients_per_round`` of ``population`` without
        replacement (replace-one; both must be whole numbers). An epsilon for one scheme is no
        guarantee for a run of the other.

    Returns
    -------
    float

    Example
    -------
    >>> eps = epsilon(1.1, clients_per_round=256, population=60_000, rounds=14_040, delta=1e-5)
    >>> round(eps, 2)
    2.59
    >>> round(epsilon(1.0, clients_per_round=100, population=1000, rounds=5, delta=1e-5), 2)
    2.9
    >>> round(epsilon(1.0, clients_per_round=100, population=1000, rounds=5, delta=1e-5,
    ...               sampling="fixed_size"), 2)
    13.82
    >>> import dp_accounting
    >>> tree = dp_accounting.SingleEpochTreeAggregationDpEvent(1.0, 100)  # 100 rounds, no restart
    >>> round(epsilon(tree, delta=1e-5), 2)
    15.18
    """
    dpa = _dp_accounting() if not isinstance(noise_multiplier, numbers.Real) else None
    if dpa is not None and isinstance(noise_multiplier, dpa.DpEvent):
        given = {"clients_per_round": clients_per_round, "rounds": rounds}
        given["population"] = None if population is _REQUIRED else population
        extra = [name for name, value in given.items() if value is not None]
        if extra or sampling != "poisson":
            raise TypeError(
                "epsilon() of a DpEvent takes only delta and accountant; the event already says "
                f"how clients were sampled and how many rounds ran (got {extra or ['sampling']})"
            )
        return epsilon_of_event(noise_multiplier, delta, accountant)
    missing = [
        name
        for name, value in (("clients_per_round", clients_per_round), ("rounds", rounds))
        if value is None
    ]
    if population is _REQUIRED:
        missing.append("population (None for no sampling)")
    if missing:
        raise TypeError(f"epsilon() of a noise multiplier needs {', '.join(missing)}")
    z = _check_noise_multiplier(noise_multiplier)
    _sampling_rate(clients_per_round, population)  # validate before the slow import
    rounds = _check_rounds(rounds)
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    sampling = _check_sampling(sampling)
    if sampling == "fixed_size" and _sampling_rate(clients_per_round, population) < 1.0:
        _fixed_size(clients_per_round, population)
    if rounds == 0:
        return 0.0
    if accountant == "rdp":
        # The RDP of T equal rounds is T times one round's: computing one round's RDP once makes
        # a running epsilon (one call per round) cost microseconds. Same arithmetic as
        # dp-accounting's own composition, so the same bits.
        orders, rdp = _round_rdp(z, clients_per_round, population, sampling)
        compute_epsilon = _dp_accounting().rdp.rdp_privacy_accountant.compute_epsilon
        return float(compute_epsilon(orders, rounds * rdp, delta)[0])
    event = round_event(
        z, clients_per_round=clients_per_round, population=population, sampling=sampling
    )
    dpa = _dp_accounting()
    return epsilon_of_event(dpa.SelfComposedDpEvent(event, rounds), delta, accountant)


@functools.lru_cache(maxsize=256)
def _round_rdp(
    noise_multiplier: float, clients_per_round: float, population: float | None, sampling: str
) -> tuple[Any, Any]:
    """RDP orders and values of one round, from dp-accounting's RDP accountant (cached)."""
    event = round_event(
        noise_multiplier,
        clients_per_round=clients_per_round,
        population=population,
        sampling=sampling,
    )
    with _quiet():
        accountant = _fresh_accountant("rdp", _sampling_relation(event)).compose(event)
    orders, rdp = accountant.orders, accountant.rdp
    orders.flags.writeable = False
    rdp.flags.writeable = False
    return orders, rdp


def _unsampled_noise_multiplier(target: float, delta: float, rounds: int, dpa: Any) -> float:
    """``sqrt(rounds)`` times the analytic Gaussian mechanism's multiplier (1.0 on failure)."""
    try:
        z = math.sqrt(rounds) * float(dpa.get_sigma_gaussian(target, delta))
    except (ValueError, ArithmeticError):  # pragma: no cover - extreme arguments
        return 1.0
    return z if 1e-6 < z < _MAX_NOISE_MULTIPLIER else 1.0


def noise_multiplier(
    epsilon: float,
    *,
    delta: float,
    clients_per_round: float,
    population: float | None,
    rounds: int,
    accountant: str = "rdp",
    sampling: str = "poisson",
) -> float:
    """The smallest noise multiplier whose ``rounds``-round epsilon is at most ``epsilon``.

    The search brackets the answer by doubling, then runs dp-accounting's
    ``calibrate_dp_mechanism`` (Brent's method) to a relative tolerance of 1e-6; the returned
    value always satisfies the target (``epsilon(z, ...) <= epsilon``).

    Parameters
    ----------
    epsilon : float
        Target epsilon (> 0).
    delta, clients_per_round, population, rounds, accountant, sampling
        As in :func:`epsilon`.

    Returns
    -------
    float
        The noise multiplier ``z`` (0.0 when ``rounds == 0``).

    Raises
    ------
    ValueError
        For bad arguments, or when no noise multiplier up to 1e6 reaches the target (the RDP
        accountant cannot certify very small epsilons at a given delta whatever the noise).

    Example
    -------
    >>> z = noise_multiplier(3.0, delta=1e-5, clients_per_round=256, population=60_000,
    ...                      rounds=14_040)
    >>> round(z, 3)
    1.014
    """
    target = _checks.real(epsilon, "epsilon", low=0.0, low_open=True)
    delta = _check_delta(delta)
    _sampling_rate(clients_per_round, population)
    rounds = _check_rounds(rounds)
    accountant = _check_accountant(accountant)
    sampling = _check_sampling(sampling)
    if rounds == 0:
        return 0.0
    with _quiet():
        return _calibrate(
            target, delta, clients_per_round, population, rounds, accountant, sampling
        )


def _calibrate(
    target: float,
    delta: float,
    clients_per_round: float,
    population: float | None,
    rounds: int,
    accountant: str,
    sampling: str,
) -> float:
    """:func:`noise_multiplier` after its argument checks."""
    dpa = _dp_accounting()
    relation = _sampling_relation(
        round_event(
            1.0, clients_per_round=clients_per_round, population=population, sampling=sampling
        )
    )

    def make_event(z: float) -> DpEvent:
        event = round_event(
            z, clients_per_round=clients_per_round, population=population, sampling=sampling
        )
        return dpa.SelfComposedDpEvent(event, rounds)

    def eps_of(z: float) -> float:
        return epsilon_of_event(make_event(z), delta, accountant)

    # Bracket: target < eps(lo) < inf and eps(hi) <= target (epsilon falls as the noise grows).
    # Start from the exact answer without sampling (T Gaussian rounds of multiplier z are one
    # Gaussian of multiplier z / sqrt(T)): sampling only lowers it, and it saves evaluations at
    # small noise, which are the slow ones for the PLD accountant.
    hi = _unsampled_noise_multiplier(target, delta, rounds, dpa)
    if _sampling_rate(clients_per_round, population) < 1.0:
        hi = min(hi, 1.0)
    while eps_of(hi) > target:
        hi *= 2.0
        if hi > _MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"epsilon={target} is unreachable at delta={delta} with the {accountant!r} "
                f"accountant: even noise_multiplier={_MAX_NOISE_MULTIPLIER:g} gives "
                f"epsilon={eps_of(_MAX_NOISE_MULTIPLIER):.6g}"
            )
    lo = hi / 2.0
    eps_lo = eps_of(lo)
    while eps_lo <= target:
        hi, lo = lo, lo / 2.0
        if lo < _MIN_NOISE_MULTIPLIER:  # an absurdly large target: almost no noise meets it
            return hi
        eps_lo = eps_of(lo)
    while math.isinf(eps_lo):  # Brent's method needs finite values: bisect geometrically first
        if hi / lo < 1.0 + _RTOL:
            return hi
        mid = math.sqrt(lo * hi)
        eps_mid = eps_of(mid)
        if eps_mid <= target:
            hi = mid
        else:
            lo, eps_lo = mid, eps_mid
    return float(
        dpa.calibrate_dp_mechanism(
            lambda: _fresh_accountant(accountant, relation),
            make_event,
            target,
            delta,
            bracket_interval=dpa.ExplicitBracketInterval(lo, hi),
            tol=_RTOL * hi,
        )
    )
