"""``ak.distributed_dp``: differential privacy without trusting the server with the noise.

Central DP (:func:`aggkit.gaussian_fixed`) trusts the server to add the noise. In distributed DP
each client adds a share of *discrete* noise to its discretized update, and the server only ever
sees the secure modular sum: the privacy guarantee holds against the server as long as secure
aggregation does (Kairouz, Liu and Steinke 2021, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", https://arxiv.org/abs/2102.06387; Agarwal, Kairouz
and Liu 2021, "The Skellam Mechanism for Differentially Private Federated Learning",
https://arxiv.org/abs/2110.04995). This is TFF's ``DistributedDpSumFactory`` pipeline:

1. each client flattens its update, pads it and rotates it (:func:`aggkit.hadamard` or
   :func:`aggkit.dft`, one random rotation per round shared by all clients), which spreads its
   mass evenly over ``d`` coordinates so that few of them wrap around the modulus;
2. clips it to L2 norm ``clip`` (a rotation keeps norms);
3. multiplies it by the scale ``s`` and rounds it stochastically to integers, conditionally
   (``beta > 0``): redrawn until its norm is at most the inflated bound
   (:func:`aggkit.discrete.inflated_l2_norm_bound`), which bounds the sensitivity after rounding;
4. adds its noise share, sampled exactly (:mod:`aggkit.kernels.discrete_noise`): Skellam
   ``Sk(mu, mu)`` with ``2 mu = (s sigma_local)^2``, or the discrete Gaussian ``N_Z(0, (s
   sigma_local)^2)``, where ``sigma_local = noise_multiplier * clip /
   sqrt(expected_clients_per_round)``: with the expected number of clients the noise shares add
   up to the central noise ``noise_multiplier * clip`` (Skellam shares add up exactly to a
   Skellam; discrete Gaussian shares only approximately to a discrete Gaussian, which the
   accounting's ``tau`` term pays for);
5. reduces it modulo ``2**bits`` and sends it through the secure modular sum
   (:func:`aggkit.secure_modular_sum`, a secure channel: ``assert_only_secure`` passes and
   :class:`aggkit.secure.backend.MaskingBackend` runs the masking protocol on it);
6. the server maps the sum back to ``[-2**(bits-1), 2**(bits-1))``, divides it by ``s`` and by
   ``expected_clients_per_round`` (a mean, like :func:`aggkit.gaussian_fixed`), and undoes the
   rotation.

The scale is TFF's heuristic: ``s = sqrt(4**bits - n k^2) / (2 k sqrt(c^2 n^2 / d + n
sigma_local^2))`` (at most 1e6), with ``k`` the number of standard deviations for which the
aggregate's coordinates stay inside the modulus with probability ``1 - modclip_prob`` if they
are roughly normal; a coordinate outside wraps around (a large error, not a privacy failure).

Simulation: Skellam noise drawn once
    In process (the default :class:`aggkit.channels.InProcessBackend`, whose sums are *fused*:
    the clients' encoded vectors are only ever seen summed), the Skellam shares are not drawn
    client by client: the sum of ``K`` independent ``Sk(mu, mu)`` is exactly ``Sk(K mu, K mu)``
    and reduction modulo ``2**bits`` is linear, so the server side adds one ``Sk(K mu, K mu)``
    vector (``K`` the clients encoded this round) to the modular sum. The result has exactly the
    distribution of the per-client pipeline (other bits, same law; tested), at a third of the
    cost. A backend that takes every client's vector (:class:`aggkit.secure.backend.
    MaskingBackend`, a deployment) gets each client's own noisy vector, as the mechanism
    requires. The discrete Gaussian is not closed under sums, so its shares are always drawn per
    client.

Noise, clients and dropouts
    A client with coefficient 0 (left out by an outer layer) sends nothing, not even noise; a
    client holding NaN or Inf is dropped to zeros but still adds its noise share. With fewer
    clients than expected (or dropouts in the masking protocol) the total noise is smaller than
    the target and the guarantee weaker: the accounting assumes ``expected_clients_per_round``
    noise shares. ``actual_num_clients`` is reported (the server learns it from the protocol
    anyway).

Accounting (see :func:`epsilon`)
    The papers' RDP bounds per round, composed over rounds, with Poisson subsampling by Zhu and
    Wang's bound (2019, Theorem 9) when ``population`` is given, converted with dp-accounting's
    RDP-to-(epsilon, delta) conversion. The discrete Gaussian's bound is Proposition 14 / Eq. 17
    of Kairouz et al. with ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))``; the
    Skellam bound is Agarwal et al.'s Theorem (RDP of ``alpha Delta_2^2 / (2 mu) + min(((2 alpha
    - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2), 3 Delta_1 / (2 mu))``), both in the scaled domain
    with ``Delta_2`` the inflated L2 bound and ``Delta_1 = ceil(Delta_2 min(sqrt(d),
    Delta_2))``. The formulas follow the authors' accounting code (google-research/federated,
    ``distributed_dp/accounting_utils.py``); the subsampled bound is theirs too. What
    :func:`aggkit.dp.extract_dp_event` returns: for the discrete Gaussian, a
    ``GaussianDpEvent`` with multiplier ``1 / (Delta_2 / (sqrt(n) s sigma_local) + sqrt(d) tau)``
    (the third of the proposition's three bounds, which is a Gaussian RDP curve; the other two are
    tighter and used by :func:`epsilon`); for Skellam an ``UnsupportedDpEvent``: dp-accounting
    has no event for it, use :func:`epsilon`.

Randomness
    As in :mod:`aggkit.dp`: with ``seed=None`` every round draws fresh keys for the noise and
    the rounding from the operating system (a saved state never replays noise); with a seed
    they are functions of (seed, round, client), a state must not serve two released rounds, and
    the run is no deployment. The rotation is seeded like :func:`aggkit.hadamard`.

Example
-------
>>> import numpy as np, aggkit as ak
>>> process = ak.distributed_dp(0.0, 4, bits=16, clip=1.0, seed=0).create(
...     ak.TensorSpec((3,), np.float32))
>>> out = process.next(process.initialize(), [np.array([0.5, 0.0, 0.0], np.float32)] * 4)
>>> bool(np.abs(out.result - [0.5, 0, 0]).max() < 1e-3), out.measurements["actual_num_clients"]
(True, 4)
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggkit import _checks, dp, kernels
from aggkit.discrete import inflated_l2_norm_bound, stochastic_round
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import ClientBatch, Layout, TensorSpec

__all__ = [
    "MAX_SCALE_FACTOR",
    "MECHANISMS",
    "ROTATIONS",
    "DistributedDpFactory",
    "ddgauss_rdp",
    "ddgauss_tau",
    "distributed_dp",
    "epsilon",
    "heuristic_scale_factor",
    "skellam_rdp",
]

MECHANISMS = ("distributed_skellam", "distributed_dgauss")
ROTATIONS = ("hadamard", "dft")
#: TFF's cap on the scale: larger scales gain nothing and risk overflow.
MAX_SCALE_FACTOR = 1e6
#: RDP orders of the accounting (the authors' code: integers 2..128 and 256).
RDP_ORDERS = (*range(2, 129), 256)
_EVENT_MODULE = "dp_accounting.dp_event"
_CHUNK_ROWS = 8  # clients encoded at a time (bounds the int64 scratch to 8 x d)


def modclip_num_stddevs(modclip_prob: float) -> float:
    """``k`` with ``P(|N(0, 1)| > k) = modclip_prob`` (TFF's ``_clip_prob_to_num_stddevs``).

    Example
    -------
    >>> round(modclip_num_stddevs(1e-6), 3)
    4.892
    """
    return statistics.NormalDist().inv_cdf(1.0 - modclip_prob / 2.0)


def heuristic_scale_factor(
    local_stddev: float, clip: float, bits: int, clients: int, dim: int, k: float, rho=1.0
) -> float:
    """TFF's scale: ``sqrt(4**bits - n k^2) / (2 k sqrt(rho c^2 n^2 / d + n sigma^2))``.

    Example
    -------
    >>> round(heuristic_scale_factor(0.1, 1.0, 16, 10, 1024, 4.0), 2)
    18426.15
    """
    numer = math.sqrt(2.0 ** (2 * bits) - clients * k * k)
    denom = 2.0 * k * math.sqrt(rho / dim * clip**2 * clients**2 + clients * local_stddev**2)
    return numer / denom


# -- accounting ------------------------------------------------------------------------------------


def ddgauss_rdp(order: int, l2: float, l1: float, sigma: float, clients: int, dim: int) -> float:
    """RDP at ``order`` of one round of the distributed discrete Gaussian (scaled domain).

    ``l2``, ``l1``: sensitivities after rounding; ``sigma``: each client's noise scale; the sum
    of ``clients`` shares has variance ``clients sigma^2``. Kairouz, Liu and Steinke 2021,
    Proposition 14 with Theorem 1's ``tau``.

    Example
    -------
    >>> round(ddgauss_rdp(2, 10.0, 100.0, 30.0, 10, 1000), 6)  # tau ~ 0 here: a Gaussian's
    0.011111
    """
    return _ddgauss_rdp(order, l2, l1, sigma, clients, dim, ddgauss_tau(sigma, clients))


def ddgauss_tau(sigma: float, clients: int) -> float:
    """Theorem 1's ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))``.

    Example
    -------
    >>> ddgauss_tau(0.5, 1), f"{ddgauss_tau(0.5, 2):.4f}"
    (0.0, '0.8480')
    """
    return 10.0 * sum(
        math.exp(-2.0 * (math.pi * sigma) ** 2 * (k / (k + 1.0))) for k in range(1, clients)
    )


def _ddgauss_rdp(order, l2, l1, sigma, clients, dim, tau) -> float:
    l2_scale = l2 / (math.sqrt(clients) * sigma)
    l1_scale = l1 / (math.sqrt(clients) * sigma)
    a = float(order)
    return min(
        a / 2.0 * l2_scale**2 + tau * dim,
        a / 2.0 * (l2_scale**2 + 2.0 * l1_scale * tau + tau**2 * dim),
        a / 2.0 * (l2_scale + math.sqrt(dim) * tau) ** 2,
    )


def skellam_rdp(order: int, l2: float, l1: float, variance: float) -> float:
    """RDP at ``order`` of the Skellam mechanism of total ``variance`` (scaled domain).

    Agarwal, Kairouz and Liu 2021: ``alpha l2^2 / (2 mu) + min(((2 alpha - 1) l2^2 + 6 l1) /
    (4 mu^2), 3 l1 / (2 mu))`` with ``mu`` the variance.

    Example
    -------
    >>> round(skellam_rdp(2, 10.0, 100.0, 1e4), 6)  # 0.01 + a small discrete correction
    0.010002
    """
    a, mu = float(order), float(variance)
    return a * l2**2 / (2.0 * mu) + min(
        ((2.0 * a - 1.0) * l2**2 + 6.0 * l1) / (4.0 * mu**2), 3.0 * l1 / (2.0 * mu)
    )


def _subsampled_rdp(order: int, q: float, rdp: Callable[[int], float]) -> float:
    """Zhu and Wang 2019 (Poisson subsampled RDP, Theorem 9 upper bound), integer ``order``."""
    a = int(order)
    logs = [math.log((1 - q) ** (a - 1) * (a * q - q + 1))]
    logs.append(rdp(2) + math.log(math.comb(a, 2) * q * q * (1 - q) ** (a - 2)))
    for j in range(3, a + 1):
        log_comb = math.lgamma(a + 1) - math.lgamma(j + 1) - math.lgamma(a - j + 1)
        logs.append(
            math.log(3.0) + (j - 1) * rdp(j) + log_comb + (a - j) * math.log1p(-q) + j * math.log(q)
        )
    top = max(logs)
    total = top + math.log(sum(math.exp(v - top) for v in logs))
    return total / (a - 1)


def epsilon(
    mechanism: str,
    *,
    l2: float,
    l1: float,
    local_stddev: float,
    clients: int,
    dim: int,
    rounds: int,
    delta: float,
    sampling_rate: float = 1.0,
) -> float:
    """Epsilon of ``rounds`` rounds of distributed DP, from the papers' RDP bounds.

    All quantities in the scaled (integer) domain: ``l2``/``l1`` the sensitivities after
    rounding, ``local_stddev`` each client's noise standard deviation. Poisson subsampling at
    ``sampling_rate`` < 1 uses Zhu and Wang's bound (the minimum with the unsampled RDP, per
    order, as the authors' code does). See :mod:`aggkit.ddp` for the sources.

    Example
    -------
    >>> e = epsilon("distributed_skellam", l2=10.0, l1=100.0, local_stddev=10.0, clients=100,
    ...             dim=1000, rounds=1, delta=1e-5)
    >>> gaussian = epsilon("distributed_dgauss", l2=10.0, l1=100.0, local_stddev=10.0,
    ...                    clients=100, dim=1000, rounds=1, delta=1e-5)
    >>> bool(abs(e - gaussian) / gaussian < 0.01)  # both near the Gaussian's 4.73 at z = 1
    True
    """
    from aggkit import privacy

    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    if local_stddev <= 0:
        return math.inf
    values = _round_rdp(mechanism, l2, l1, local_stddev, clients, dim, sampling_rate)
    compute = privacy._dp_accounting().rdp.rdp_privacy_accountant.compute_epsilon
    return float(compute(np.array(RDP_ORDERS, float), rounds * values, delta)[0])


@functools.lru_cache(maxsize=64)
def _round_rdp(mechanism, l2, l1, local_stddev, clients, dim, sampling_rate) -> np.ndarray:
    """One round's RDP at :data:`RDP_ORDERS` (cached: a running epsilon calls it every round)."""
    if mechanism == "distributed_dgauss":
        tau = ddgauss_tau(local_stddev, clients)
        table = {
            a: _ddgauss_rdp(a, l2, l1, local_stddev, clients, dim, tau)
            for a in range(2, RDP_ORDERS[-1] + 1)
        }
    else:
        variance = clients * local_stddev**2
        table = {a: skellam_rdp(a, l2, l1, variance) for a in range(2, RDP_ORDERS[-1] + 1)}
    values = []
    for order in RDP_ORDERS:
        value = table[order]
        if sampling_rate < 1.0:
            value = min(value, _subsampled_rdp(order, sampling_rate, table.__getitem__))
        values.append(value)
    out = np.array(values)
    out.flags.writeable = False
    return out


# -- the factory ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedDpFactory(Factory):
    """Distributed DP mean over secure sums; build it with :func:`aggkit.distributed_dp`."""

    noise_multiplier: float
    expected_clients_per_round: int
    bits: int
    clip: float
    mechanism: str = "distributed_skellam"
    rotation: str = "hadamard"
    modclip_prob: float = 1e-6
    beta: float = math.exp(-0.5)
    population: float | None = None
    delta: float | None = None
    seed: int | None = None

    is_weighted = False

    def _create(self, layout: Layout) -> DistributedDpProcess:
        from aggkit.dft import dft
        from aggkit.hadamard import hadamard

        if not all(s.dtype.kind == "f" for s in layout.specs):
            raise TypeError("ak.distributed_dp needs floating-point tensors")
        make = hadamard if self.rotation == "hadamard" else dft
        # The rotation runs in float64: a finite float32 client could overflow float32 once
        # rotated (an entry can reach its L2 norm) and would then be dropped, not clipped.
        wide = layout.map_specs(lambda spec: TensorSpec(spec.shape, np.float64))
        rotated = make(_CoreFactory(self), seed=self.seed).create(wide)
        return DistributedDpProcess(layout, rotated, self)


def distributed_dp(
    noise_multiplier: float,
    expected_clients_per_round: int,
    bits: int,
    clip: float,
    *,
    mechanism: str = "distributed_skellam",
    rotation: str = "hadamard",
    modclip_prob: float = 1e-6,
    beta: float = math.exp(-0.5),
    population: float | None = None,
    delta: float | None = None,
    seed: int | None = None,
) -> DistributedDpFactory:
    """A DP mean whose noise the clients add, summed securely modulo ``2**bits``.

    See :mod:`aggkit.ddp` for the pipeline (rotation, clipping, scaling, conditional
    stochastic rounding, exact discrete noise, secure modular sum) and the accounting.

    Parameters
    ----------
    noise_multiplier : float
        Central noise standard deviation over the clip, split into
        ``expected_clients_per_round`` shares: 0 (no noise) or at least 0.04.
    expected_clients_per_round : int
        The number of noise shares (clients) per round; the denominator of the mean.
    bits : int
        Bit width of the secure modular sum, in [1, 22] and at least ``log2`` of the clients
        (TFF's range).
    clip : float
        The L2 clip (> 0).
    mechanism : {"distributed_skellam", "distributed_dgauss"}
        The noise distribution.
    rotation : {"hadamard", "dft"}
        The random rotation (the DFT pads at most one coordinate, Hadamard up to ``2x``).
    modclip_prob : float
        Target probability that a coordinate of the sum wraps around, in (0, 1).
    beta : float
        Conditional rounding's parameter, in [0, 1); 0 is plain stochastic rounding.
    population, delta : float, optional
        With a population, measurements include ``"privacy": {"epsilon", "delta", "rounds"}``
        (Poisson sampling at ``expected_clients_per_round / population``; delta default
        ``min(1e-5, 1 / population)``).
    seed : int, optional
        A testing aid (see :mod:`aggkit.dp`).

    Returns
    -------
    DistributedDpFactory
        Unweighted. Measurements ``{"l2_clip", "scale_factor", "scaled_inflated_l2",
        "scaled_local_stddev", "actual_num_clients", "padded_dim", "dp_query_metrics"}``
        (TFF's names) plus ``"privacy"`` with a population.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> factory = ak.distributed_dp(1.0, 10, bits=20, clip=0.1, mechanism="distributed_dgauss",
    ...                             population=1000, seed=0)
    >>> process = factory.create(ak.TensorSpec((1000,), np.float32))
    >>> out = process.next(process.initialize(), [np.full(1000, 0.01, np.float32)] * 10)
    >>> out.measurements["padded_dim"], round(out.measurements["privacy"]["epsilon"], 2)
    (1024, 1.01)
    """
    z = _checks.noise_multiplier(noise_multiplier)
    clients = _checks.integer(expected_clients_per_round, "expected_clients_per_round", low=1)
    bits = _checks.integer(bits, "bits", low=1, high=22)
    clip = _checks.real(clip, "clip", low=0.0, low_open=True)
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    modclip_prob = _checks.real(
        modclip_prob, "modclip_prob", low=0.0, high=1.0, low_open=True, high_open=True
    )
    beta = _checks.real(beta, "beta", low=0.0, high=1.0, high_open=True)
    if bits < math.log2(clients):
        raise ValueError(f"bits ({bits}) must be at least log2(expected_clients_per_round)")
    k = modclip_num_stddevs(modclip_prob)
    if 2.0 ** (2 * bits) < clients * k * k:
        raise ValueError(
            f"bits={bits} is too small for {clients} clients at modclip_prob={modclip_prob}: "
            "raise bits or modclip_prob, or lower expected_clients_per_round"
        )
    population, delta = dp.check_accounting(population, delta, float(clients))
    return DistributedDpFactory(
        z,
        clients,
        bits,
        clip,
        mechanism,
        rotation,
        modclip_prob,
        beta,
        population,
        delta,
        _checks.seed(seed),
    )


class DistributedDpProcess(AggregationProcess):
    """The process of :func:`distributed_dp`: the rotation process around the integer core, with
    the core's measurements at the top level (TFF's layout)."""

    is_weighted = False

    def __init__(self, layout: Layout, rotated: AggregationProcess, factory: DistributedDpFactory):
        super().__init__(layout)
        self.rotated = rotated
        self.factory = factory
        self.stats_needed = rotated.stats_needed

    def epsilon(self, rounds: int) -> float:
        """The papers' epsilon after ``rounds`` rounds (see :func:`epsilon`), at the factory's
        population and delta; for planning, e.g. the noise multiplier of a target epsilon.

        Example
        -------
        >>> import numpy as np, aggkit as ak
        >>> p = ak.distributed_dp(1.0, 10, bits=20, clip=0.1, population=1000, seed=0).create(
        ...     ak.TensorSpec((1000,), np.float32))
        >>> round(p.epsilon(1), 2)
        1.01
        """
        if self.factory.population is None:
            raise ValueError("the epsilon needs the population: give distributed_dp population=")
        return self.rotated.inner.round_epsilon(_checks.integer(rounds, "rounds", low=1))

    def initialize(self) -> State:
        return self.rotated.initialize()

    def begin_round(self, state: State) -> Round:
        return _UnwrapRound(self, self.rotated.begin_round(state))


class _UnwrapRound(Round):
    owns_result = True

    def __init__(self, process: DistributedDpProcess, inner: Round):
        self.process = process
        self.inner = inner

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        """Hand the rotation float64 rows, a few clients at a time (no float64 copy of the whole
        block)."""
        rotated = self.process.rotated
        for start in range(0, block.num_clients, _CHUNK_ROWS):
            stop = min(block.num_clients, start + _CHUNK_ROWS)
            rows = block.matrix[start:stop].astype(np.float64)
            self.inner.add(
                Contributions(
                    ClientBatch(rows, rotated.layout),
                    block.coef[start:stop],
                    first_client=block.first_client + start,
                    needs=rotated.stats_needed,
                ),
                None,
            )

    def finish(self):
        state, result, measurements = self.inner.finish()
        ((_, core),) = measurements.items()  # {"hd": ...} or {"dft": ...}
        return state, result, core


@dataclass(frozen=True)
class _CoreFactory(Factory):
    """The integer part of the pipeline, created for the rotated (padded) layout."""

    params: DistributedDpFactory

    is_weighted = False

    def _create(self, layout: Layout) -> _CoreProcess:
        return _CoreProcess(layout, self.params)


class _CoreProcess(AggregationProcess):
    is_weighted = False

    def __init__(self, layout: Layout, p: DistributedDpFactory):
        from aggkit.secure.modular_sum import secure_modular_sum

        super().__init__(layout)
        self.p = p
        self.dim = d = max(1, layout.size)
        n = p.expected_clients_per_round
        local = p.noise_multiplier * p.clip / math.sqrt(n)
        k = modclip_num_stddevs(p.modclip_prob)
        scale = min(heuristic_scale_factor(local, p.clip, p.bits, n, d, k), MAX_SCALE_FACTOR)
        if scale <= 1.0:
            warnings.warn(
                f"the scale factor is {scale:.3g} <= 1: rounding errors will be large; raise bits "
                "or lower expected_clients_per_round",
                UserWarning,
                stacklevel=2,
            )
        inflated = inflated_l2_norm_bound(p.clip, 1.0 / scale, p.beta, d)
        self.scale = scale
        self.threshold = inflated * scale if p.beta > 0.0 else None
        self.scaled_l2 = (inflated + 1e-5) * scale  # TFF's leeway for float error
        self.scaled_l1 = math.ceil(self.scaled_l2 * min(math.sqrt(d), self.scaled_l2))
        self.scaled_local_stddev = local * scale
        self.modulus = 2**p.bits
        self.int_layout = Layout(TensorSpec((layout.size,), np.int64))
        self.modular = secure_modular_sum(self.modulus).create(self.int_layout)
        self.stats_needed = frozenset({"l2"})
        self.event = self._event()

    def _event(self) -> dict:
        p = self.p
        if p.mechanism == "distributed_skellam" or self.scaled_local_stddev == 0.0:
            return {"module_name": _EVENT_MODULE, "class_name": "UnsupportedDpEvent"}
        n, sigma = p.expected_clients_per_round, self.scaled_local_stddev
        tau = ddgauss_tau(sigma, n)
        l2_scale = self.scaled_l2 / (math.sqrt(n) * sigma)
        z = 1.0 / (l2_scale + math.sqrt(self.dim) * tau)
        return {
            "module_name": _EVENT_MODULE,
            "class_name": "GaussianDpEvent",
            "noise_multiplier": z,
        }

    def round_epsilon(self, rounds: int) -> float:
        """Epsilon after ``rounds`` rounds at the factory's population and delta."""
        p = self.p
        return epsilon(
            p.mechanism,
            l2=self.scaled_l2,
            l1=self.scaled_l1,
            local_stddev=self.scaled_local_stddev,
            clients=p.expected_clients_per_round,
            dim=self.dim,
            rounds=rounds,
            delta=p.delta,
            sampling_rate=p.expected_clients_per_round / p.population,
        )

    def initialize(self) -> State:
        key = 0 if self.p.seed is None else kernels.counter_rng.seed_to_key(self.p.seed)
        query = {
            "l2_norm_clip": np.float64(self.p.clip),
            "scale_factor": np.float64(self.scale),
            "scaled_inflated_l2": np.float64(self.scaled_l2),
            "scaled_local_stddev": np.float64(self.scaled_local_stddev),
            "noise_key": np.uint64(key),
            "round": np.int64(0),
        }
        return {
            "query_state": query,
            "agg_state": self.modular.initialize(),
            "dp_event": self.event,
            "is_init_state": np.bool_(True),
        }

    def begin_round(self, state: State) -> Round:
        return _CoreRound(self, state)


class _CoreRound(Round):
    owns_result = True

    def __init__(self, process: _CoreProcess, state: State):
        rng = kernels.counter_rng
        self.process = process
        self.query = state["query_state"]
        self.round_index = int(self.query["round"])
        if process.p.seed is None:  # fresh keys for every release, even from one saved state
            base = rng.seed_to_key(None)
        else:
            base = rng.derive_key(int(self.query["noise_key"]), "distributed_dp", self.round_index)
        self.noise_key = rng.derive_key(base, "noise")
        self.rounding_key = rng.derive_key(base, "rounding")
        self.inner = process.modular.begin_round(state["agg_state"])
        self.clients = 0
        # In-process simulation (a fused backend: the clients' vectors are only ever seen summed),
        # Skellam shares are drawn as one Skellam of the summed mean in finish(): the sum of K
        # independent Sk(mu, mu) is exactly Sk(K mu, K mu), and reduction modulo 2**bits is
        # linear. A real protocol (MaskingBackend, deployment) gets every client's noisy vector.
        self.summed_noise = (
            process.p.mechanism == "distributed_skellam"
            and process.scaled_local_stddev > 0.0
            and self.inner.channel.fused
        )

    def _encode(self, values: np.ndarray, client: int) -> np.ndarray:
        """One client's clipped, rotated values (float64) -> its residues modulo ``2**bits``."""
        process, p = self.process, self.process.p
        rng = kernels.counter_rng
        q, _ = stochastic_round(
            values * process.scale,
            rng.derive_key(self.rounding_key, client),
            process.threshold,
            client=client,
        )
        codes = q.astype(np.int64)
        sigma = process.scaled_local_stddev
        if sigma > 0.0 and not self.summed_noise:
            key = rng.derive_key(self.noise_key, client)
            if p.mechanism == "distributed_skellam":
                kernels.discrete_noise.add_skellam(codes, sigma * sigma / 2.0, key)
            else:
                kernels.discrete_noise.add_discrete_gaussian(codes, sigma, key)
        np.remainder(codes, process.modulus, out=codes)
        return codes

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        process = self.process
        factors = _checks.clip_factors(block.norms(2.0), process.p.clip) * block.coef
        active = np.flatnonzero(block.active)
        for start in range(0, active.size, _CHUNK_ROWS):
            rows = active[start : start + _CHUNK_ROWS]
            codes = np.zeros((rows.size, process.int_layout.size), np.int64)
            for j, i in enumerate(rows):
                if factors[i] > 0.0:
                    values = factors[i] * block.matrix[i].astype(np.float64)
                else:  # a dropped (non-finite) client sends zeros, with its noise share
                    values = np.zeros(process.int_layout.size)
                codes[j] = self._encode(values, block.first_client + int(i))
            self.inner.add(
                Contributions(ClientBatch(codes, process.int_layout), np.ones(rows.size)), None
            )
            self.clients += rows.size

    def finish(self):
        process, p = self.process, self.process.p
        agg_state, total, _ = self.inner.finish()
        total = np.array(total, np.int64)
        if self.summed_noise and self.clients:
            mean = self.clients * process.scaled_local_stddev**2 / 2.0  # K shares of Sk(mu, mu)
            key = kernels.counter_rng.derive_key(self.noise_key, "summed")
            kernels.discrete_noise.add_skellam(total, mean, key)
            np.remainder(total, process.modulus, out=total)
        half = process.modulus // 2
        signed = np.where(total >= half, total - process.modulus, total)
        result = signed / (process.scale * p.expected_clients_per_round)
        query = dict(self.query)
        query["round"] = np.int64(self.round_index + 1)
        state = {
            "query_state": query,
            "agg_state": agg_state,
            "dp_event": process.event,
            "is_init_state": np.bool_(False),
        }
        measurements: dict[str, Any] = {
            "l2_clip": p.clip,
            "scale_factor": process.scale,
            "scaled_inflated_l2": process.scaled_l2,
            "scaled_local_stddev": process.scaled_local_stddev,
            "actual_num_clients": self.clients,
            "padded_dim": process.dim,
            "dp_query_metrics": (),
        }
        if p.population is not None:
            rounds = self.round_index + 1
            measurements["privacy"] = {
                "epsilon": process.round_epsilon(rounds),
                "delta": float(p.delta),
                "rounds": rounds,
            }
        return state, result, measurements
