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

import functools
import math
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dp_accounting import DpEvent

__all__ = [
    "ACCOUNTANTS",
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

# The largest noise multiplier noise_multiplier() tries before calling a target unreachable.
_MAX_NOISE_MULTIPLIER = 1e6
# Below this noise multiplier the search stops (targets so large are met by almost no noise).
_MIN_NOISE_MULTIPLIER = 1e-9
# Relative tolerance of the noise multiplier found by noise_multiplier().
_RTOL = 1e-6


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


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def _check_noise_multiplier(value: Any) -> float:
    value = _real(value, "noise_multiplier")
    if not (0.0 <= value < math.inf):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {value}")
    return value


def _check_delta(value: Any) -> float:
    value = _real(value, "delta")
    if not (0.0 < value < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {value}")
    return value


def _check_rounds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"rounds must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < 0:
        raise ValueError(f"rounds must be >= 0, got {value}")
    return value


def _check_accountant(value: Any) -> str:
    if value not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {value!r}")
    return value


def _sampling_rate(clients_per_round: Any, population: Any) -> float:
    """The Poisson sampling rate ``clients_per_round / population`` (1.0 without a population)."""
    clients = _real(clients_per_round, "clients_per_round")
    if not (0.0 < clients < math.inf):
        raise ValueError(f"clients_per_round must be finite and > 0, got {clients}")
    if population is None:
        return 1.0
    pop = _real(population, "population")
    if not (0.0 < pop < math.inf):
        raise ValueError(f"population must be finite and > 0, got {pop}")
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
    event: DpEvent, *, clients_per_round: float, population: float | None = None
) -> DpEvent:
    """Wrap ``event`` in Poisson sampling at rate ``clients_per_round / population``.

    Returns ``event`` unchanged when ``population`` is None or equal to ``clients_per_round``
    (every client takes part: no amplification by sampling).

    Example
    -------
    >>> sampled_event(gaussian_event(1.0), clients_per_round=10, population=1000)
    PoissonSampledDpEvent(sampling_probability=0.01, event=GaussianDpEvent(noise_multiplier=1.0))
    """
    dpa = _dp_accounting()
    if not isinstance(event, dpa.DpEvent):
        raise TypeError(f"event must be a dp_accounting DpEvent, got {type(event).__name__}")
    q = _sampling_rate(clients_per_round, population)
    if q == 1.0:
        return event
    return dpa.PoissonSampledDpEvent(q, event)


def round_event(
    noise_multiplier: float, *, clients_per_round: float, population: float | None = None
) -> DpEvent:
    """The DpEvent of one round of Gaussian DP aggregation with Poisson client sampling.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clip (>= 0).
    clients_per_round : float
        Expected number of clients per round (> 0).
    population : float or None
        Number of clients sampled from. None (or ``clients_per_round``) means every client takes
        part in every round.

    Returns
    -------
    dp_accounting.DpEvent
        ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, or ``GaussianDpEvent(z)`` without
        sampling.

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


def _fresh_accountant(accountant: str) -> Any:
    dpa = _dp_accounting()
    if accountant == "rdp":
        return dpa.rdp.RdpAccountant()
    return dpa.pld.PLDAccountant()


def epsilon_of_event(event: DpEvent, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``event`` (add-or-remove-one neighbouring), by dp-accounting.

    Parameters
    ----------
    event : dp_accounting.DpEvent
        What was released, e.g. from :func:`round_event` and :func:`composed_event`.
    delta : float
        Target delta, in (0, 1).
    accountant : {"rdp", "pld"}
        ``"rdp"``: Renyi DP with dp-accounting's default orders and its improved RDP-to-(eps,
        delta) conversion (Balle et al. 2020; Canonne et al. 2020); a slightly loose upper
        bound. ``"pld"``: privacy loss distributions (tighter; slower for many rounds).

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
    acc = _fresh_accountant(accountant)
    if not acc.supports(event):
        raise ValueError(f"the {accountant!r} accountant does not support event {event!r}")
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def epsilon(
    noise_multiplier: float,
    *,
    clients_per_round: float,
    population: float | None,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon after ``rounds`` rounds of Gaussian DP aggregation with Poisson client sampling.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clip, ``z`` (>= 0; 0 gives ``inf``).
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
        Which dp-accounting accountant (see :func:`epsilon_of_event`).

    Returns
    -------
    float

    Example
    -------
    >>> eps = epsilon(1.1, clients_per_round=256, population=60_000, rounds=14_040, delta=1e-5)
    >>> round(eps, 2)
    2.59
    """
    z = _check_noise_multiplier(noise_multiplier)
    _sampling_rate(clients_per_round, population)  # validate before the slow import
    rounds = _check_rounds(rounds)
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    if rounds == 0:
        return 0.0
    if accountant == "rdp":
        # The RDP of T equal rounds is T times one round's: computing one round's RDP once makes
        # a running epsilon (one call per round) cost microseconds. Same arithmetic as
        # dp-accounting's own composition, so the same bits.
        orders, rdp = _round_rdp(z, _sampling_rate(clients_per_round, population))
        compute_epsilon = _dp_accounting().rdp.rdp_privacy_accountant.compute_epsilon
        return float(compute_epsilon(orders, rounds * rdp, delta)[0])
    event = round_event(z, clients_per_round=clients_per_round, population=population)
    dpa = _dp_accounting()
    return epsilon_of_event(dpa.SelfComposedDpEvent(event, rounds), delta, accountant)


@functools.lru_cache(maxsize=256)
def _round_rdp(noise_multiplier: float, sampling_rate: float) -> tuple[Any, Any]:
    """RDP orders and values of one round, from dp-accounting's RDP accountant (cached)."""
    dpa = _dp_accounting()
    event = dpa.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dpa.PoissonSampledDpEvent(sampling_rate, event)
    accountant = dpa.rdp.RdpAccountant().compose(event)
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
) -> float:
    """The smallest noise multiplier whose ``rounds``-round epsilon is at most ``epsilon``.

    The search brackets the answer by doubling, then runs dp-accounting's
    ``calibrate_dp_mechanism`` (Brent's method) to a relative tolerance of 1e-6; the returned
    value always satisfies the target (``epsilon(z, ...) <= epsilon``).

    Parameters
    ----------
    epsilon : float
        Target epsilon (> 0).
    delta, clients_per_round, population, rounds, accountant
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
    target = _real(epsilon, "epsilon")
    if not (0.0 < target < math.inf):
        raise ValueError(f"epsilon must be finite and > 0, got {target}")
    delta = _check_delta(delta)
    _sampling_rate(clients_per_round, population)
    rounds = _check_rounds(rounds)
    accountant = _check_accountant(accountant)
    if rounds == 0:
        return 0.0
    dpa = _dp_accounting()

    def make_event(z: float) -> DpEvent:
        event = round_event(z, clients_per_round=clients_per_round, population=population)
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
            lambda: _fresh_accountant(accountant),
            make_event,
            target,
            delta,
            bracket_interval=dpa.ExplicitBracketInterval(lo, hi),
            tol=_RTOL * hi,
        )
    )
