"""DP-FTRL's tree aggregation: ``ak.tree_aggregation``, private learning without sampling.

Central Gaussian DP (:func:`aggkit.gaussian_fixed`) gets its small epsilons from amplification by
sampling: each client must join each round independently at random, which few deployments can
promise. Tree aggregation (Kairouz, McMahan, Song, Thakkar, Thakurta and Xu 2021, "Practical and
Private (Deep) Learning without Sampling or Shuffling", https://arxiv.org/abs/2103.00039) needs
no sampling. It privatizes the *cumulative sums* ``s_t = x_0 + ... + x_t`` of the clipped round
sums with the binary-tree mechanism: leaf ``t`` is round ``t``, every node of the tree gets
independent Gaussian noise ``N(0, (z C)^2)``, and ``s_t`` is released with the noise of the
``O(log t)`` nodes that cover rounds ``0..t``. A client that takes part in one round changes
``log2(T) + 1`` nodes at most, whatever ``T``, which is what the accountant charges.

What a round returns (TFF's ``DifferentiallyPrivateFactory.tree_aggregation``)
    TFF's ``TreeResidualSumQuery`` inside ``NormalizedQuery``: round ``t`` returns the *residual*
    ``(x_t + N_t - N_{t-1}) / clients_per_round``, where ``N_t`` is the tree noise of the
    cumulative sum ``s_t`` (``N_{-1} = 0``). Summing the results of rounds ``0..t`` gives the
    noised cumulative mean ``(s_t + N_t) / clients_per_round`` exactly (up to float rounding), so
    a server optimizer that applies the results as SGD steps *is* DP-FTRL: its model after round
    ``t`` is the initial model minus the learning rate times the noised cumulative sum. (With
    server momentum the paper's DP-FTRLM applies momentum to these per-round values.) Each single
    result is noisier than a Gaussian round's (``N_t - N_{t-1}`` has up to ``log2 t`` nodes); the
    sums are what the mechanism makes accurate.

``efficient=True`` (default)
    Honaker's variance reduction ("Efficient Use of Differentially Private Binary Trees", 2015;
    TFF's ``use_efficient``, ``EfficientTreeAggregator``): a node's estimate combines its own noisy
    value with its children's estimates, ``v = n + (v_left + v_right) / 2``, and enters the
    cumulative noise with weight ``1 / (2 - 2**-level)``; a node at level ``k`` then has variance
    ``(z C)^2 / (2 - 2**-k)`` instead of ``(z C)^2``. Same privacy (it is post-processing of the
    same nodes), about half the noise variance of the cumulative sums.

Restarts
    ``restart_rounds=R`` starts a new tree every ``R`` rounds (TFF's ``RestartQuery`` with a
    ``PeriodicRoundRestartIndicator(R)``): rounds ``R, 2R, ...`` start from ``N = 0``. DP-FTRL
    restarts at each epoch, when every client has had its turn.

Accounting (what :func:`aggkit.dp.extract_dp_event` returns)
    The whole run so far, as one event (not the last round's, unlike the Gaussian factories):
    ``SingleEpochTreeAggregationDpEvent(z, t)`` after ``t`` rounds without restarts, and with
    restarts every ``R`` rounds ``SelfComposedDpEvent(SingleEpochTreeAggregationDpEvent(z, R),
    t // R)`` composed with ``SingleEpochTreeAggregationDpEvent(z, t % R)`` for the tree in
    progress. The event assumes that **each client takes part in at most one round per tree**
    (per restart period; over the whole run without restarts): a client that joins two rounds
    of one tree changes twice as many nodes, and the event then understates the privacy loss.
    dp-accounting evaluates it with the RDP accountant under the ``REPLACE_SPECIAL``
    neighbouring relation (one client's data replaced by a special, zero contribution, in the
    round it would have joined), which :func:`aggkit.privacy.epsilon` selects for such events.

Randomness and state
    As in :mod:`aggkit.dp`: with ``seed=None`` every round's new nodes come from a fresh key drawn
    from the operating system, so two ``next`` calls on one saved state never release the same
    new noise; with a seed the nodes are a function of (seed, round, node), a state must never be
    used for two released rounds, and a seeded run is no deployment. The state holds the noise
    of the tree's pending left-child nodes (at most ``log2(T) + 1`` float64 vectors of the
    model's size): **the state is a secret**, since whoever holds it can subtract that noise. The
    noise multiplier floor of :mod:`aggkit.dp` applies (0, or at least 0.04).

Example
-------
>>> import numpy as np, aggkit as ak
>>> process = ak.tree_aggregation(0.0, clients_per_round=2, clip=1.0).create(
...     ak.TensorSpec((2,), np.float32))
>>> clients = [np.array([3.0, 4.0], np.float32), np.array([0.5, 0.0], np.float32)]
>>> out = process.next(process.initialize(), clients)
>>> out.result.tolist()  # ([0.6, 0.8] + [0.5, 0]) / 2: the first client is clipped to norm 1
[0.550000011920929, 0.4000000059604645]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggkit import _checks, dp, kernels
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout, TensorSpec

__all__ = ["TreeAggregationFactory", "tree_aggregation", "tree_dp_event", "tree_noise_multiplier"]

_EVENT_MODULE = "dp_accounting.dp_event"
_TREE_EVENT = "SingleEpochTreeAggregationDpEvent"


def _tree_event_data(noise_multiplier: float, steps: int) -> dict:
    return {
        "module_name": _EVENT_MODULE,
        "class_name": _TREE_EVENT,
        "noise_multiplier": np.float64(noise_multiplier),
        "step_counts": np.int64(steps),
    }


def _run_event_data(noise_multiplier: float, rounds: int, restart_rounds: int | None) -> dict:
    """The plain-data event of ``rounds`` rounds (see the module notes on accounting)."""
    if restart_rounds is None or rounds <= restart_rounds:
        return _tree_event_data(noise_multiplier, rounds)
    full, partial = divmod(rounds, restart_rounds)
    parts: list[dict] = [_tree_event_data(noise_multiplier, restart_rounds)]
    if full > 1:
        parts = [
            {
                "module_name": _EVENT_MODULE,
                "class_name": "SelfComposedDpEvent",
                "event": parts[0],
                "count": np.int64(full),
            }
        ]
    if partial:
        parts.append(_tree_event_data(noise_multiplier, partial))
    if len(parts) == 1:
        return parts[0]
    return {"module_name": _EVENT_MODULE, "class_name": "ComposedDpEvent", "events": tuple(parts)}


def tree_dp_event(noise_multiplier: float, rounds: int, restart_rounds: int | None = None) -> Any:
    """The ``dp_accounting`` event of ``rounds`` rounds of :func:`tree_aggregation`.

    What :func:`aggkit.dp.extract_dp_event` returns for such a run's state, computed from the
    parameters alone (for planning: how many rounds fit in a budget). Assumes each client takes
    part in at most one round per tree (see :mod:`aggkit.tree`).

    Example
    -------
    >>> full, partial = tree_dp_event(1.0, 10, restart_rounds=4).events
    >>> full  # doctest: +NORMALIZE_WHITESPACE
    SelfComposedDpEvent(event=SingleEpochTreeAggregationDpEvent(noise_multiplier=1.0,
    step_counts=4), count=2)
    >>> partial
    SingleEpochTreeAggregationDpEvent(noise_multiplier=1.0, step_counts=2)
    """
    z = _checks.real(noise_multiplier, "noise_multiplier", low=0.0)
    rounds = _checks.integer(rounds, "rounds", low=1)
    return dp.event_from_data(_run_event_data(z, rounds, _check_restart(restart_rounds)))


def tree_noise_multiplier(
    epsilon: float, *, delta: float, rounds: int, restart_rounds: int | None = None
) -> float:
    """The smallest noise multiplier whose :func:`tree_dp_event` spends at most ``epsilon``.

    Geometric bisection to a relative tolerance of 1e-6 on the noise multiplier; the returned
    value always meets the target (``aggkit.privacy.epsilon(tree_dp_event(z, ...), delta) <=
    epsilon``). The planning counterpart of :func:`aggkit.privacy.noise_multiplier` for tree
    aggregation (no sampling; each client at most once per tree).

    Example
    -------
    >>> z = tree_noise_multiplier(6.0, delta=1e-5, rounds=5, restart_rounds=10)
    >>> round(z, 2)
    1.41
    """
    from aggkit import privacy

    target = _checks.real(epsilon, "epsilon", low=0.0, low_open=True)
    rounds = _checks.integer(rounds, "rounds", low=1)
    restart = _check_restart(restart_rounds)

    def eps_of(z: float) -> float:
        return privacy.epsilon(tree_dp_event(z, rounds, restart), delta=delta)

    hi = 1.0
    while eps_of(hi) > target:
        hi *= 2.0
        if hi > 1e6:
            raise ValueError(f"epsilon={target} is unreachable at delta={delta}")
    lo = hi / 2.0
    while eps_of(lo) <= target:
        hi, lo = lo, lo / 2.0
        if lo < 1e-3:
            return hi
    while hi / lo > 1.0 + 1e-6:
        mid = math.sqrt(lo * hi)
        if eps_of(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def _check_restart(value: Any) -> int | None:
    return None if value is None else _checks.integer(value, "restart_rounds", low=1)


@dataclass(frozen=True)
class TreeAggregationFactory(Factory):
    """Tree-aggregation DP mean (DP-FTRL); build it with :func:`aggkit.tree_aggregation`."""

    noise_multiplier: float
    clients_per_round: float
    clip: float
    efficient: bool
    restart_rounds: int | None
    record_sum: Factory
    seed: int | None = None

    is_weighted = False

    def _create(self, layout: Layout) -> TreeProcess:
        return TreeProcess(layout, self.record_sum.create(layout), self)


def tree_aggregation(
    noise_multiplier: float,
    clients_per_round: float,
    clip: float,
    *,
    efficient: bool = True,
    restart_rounds: int | None = None,
    seed: int | None = None,
    record_sum: Factory | None = None,
) -> TreeAggregationFactory:
    """A DP mean whose noise comes from a binary tree over rounds (DP-FTRL; no sampling needed).

    Round ``t`` clips every update to L2 norm ``clip``, sums them (``x_t``) and returns
    ``(x_t + N_t - N_{t-1}) / clients_per_round``, where ``N_t`` is the binary-tree noise of the
    cumulative sum of rounds ``0..t`` (every tree node ``N(0, (noise_multiplier * clip)^2)``), so
    the results of rounds ``0..t`` add up to the noised cumulative mean. See :mod:`aggkit.tree`.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation of each tree node over the clip: 0 (no privacy) or at least
        0.04 (the sampler's floor, see :mod:`aggkit.dp`).
    clients_per_round : float
        The expected number of clients per round (> 0), public; the denominator.
    clip : float
        The L2 clip (> 0).
    efficient : bool
        Honaker's variance-reduced tree (default, TFF's ``use_efficient``) or the plain tree.
    restart_rounds : int, optional
        Start a new tree every ``restart_rounds`` rounds (an epoch); None never restarts.
    seed : int, optional
        Seed of the noise, a testing aid (see :mod:`aggkit.dp`: a seeded state is single-use).
    record_sum : unweighted factory, optional
        How the clipped updates are summed (default :func:`aggkit.sum`; a secure sum keeps the
        updates from the server). It must not increase the sensitivity.

    Returns
    -------
    TreeAggregationFactory
        Unweighted. Measurements ``{"dp_query_metrics": {"tree_agg_dpftrl_clip": clip}, "dp":
        record_sum's}`` (TFF's names).

    Raises
    ------
    ValueError, TypeError
        A parameter is out of range or of the wrong kind (the message names it); at ``create``,
        a template with non-float tensors.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.dp import extract_dp_event
    >>> process = ak.tree_aggregation(1.0, 10, clip=0.5, restart_rounds=4, seed=0).create(
    ...     ak.TensorSpec((100,), np.float32))
    >>> state = process.initialize()
    >>> for _ in range(5):
    ...     state = process.next(state, [np.ones(100, np.float32)] * 10).state
    >>> event = extract_dp_event(state)  # two trees: 4 rounds, then 1
    >>> round(ak.privacy.epsilon(event, delta=1e-5), 2)
    10.73
    """
    z = _checks.noise_multiplier(noise_multiplier)
    clients = _checks.real(clients_per_round, "clients_per_round", low=0.0, low_open=True)
    clip = _checks.real(clip, "clip", low=0.0, low_open=True)
    efficient = _checks.boolean(efficient, "efficient")
    return TreeAggregationFactory(
        z,
        clients,
        clip,
        efficient,
        _check_restart(restart_rounds),
        _checks.unweighted_factory(record_sum, "record_sum"),
        _checks.seed(seed),
    )


def _level_weight(level: int, efficient: bool) -> float:
    """Weight of a level-``level`` node in the cumulative noise (Honaker's, or 1)."""
    return 1.0 / (2.0 - 0.5**level) if efficient else 1.0


class TreeProcess(AggregationProcess):
    """The process of :func:`tree_aggregation`.

    State: ``{"query_state": {"l2_norm_clip", "stddev", "noise_key", "round", "tree_levels",
    "tree_nodes"}, "agg_state", "dp_event", "is_init_state"}``. ``tree_levels`` (int64) and
    ``tree_nodes`` (a tuple of float64 vectors, unweighted node values) list the pending left
    children from the highest level down: the nodes whose dyadic blocks cover the rounds of the
    current tree so far, i.e. the set bits of the tree's round count. ``round`` counts all
    rounds; ``noise_key`` is 0 without a seed.
    """

    is_weighted = False

    def __init__(self, layout: Layout, record: AggregationProcess, factory: TreeAggregationFactory):
        _checks.floating_layout(layout, "tree aggregation")
        super().__init__(layout)
        self.record = record
        self.factory = factory
        self.stats_needed = record.stats_needed | {"l2"}
        #: One float64 vector of the model's size: the layout of the noise nodes.
        self.noise_layout = Layout(TensorSpec((layout.size,), np.float64))

    def initialize(self) -> State:
        f = self.factory
        key = 0 if f.seed is None else kernels.counter_rng.seed_to_key(f.seed)
        query = {
            "l2_norm_clip": np.float64(f.clip),
            "stddev": np.float64(f.noise_multiplier * f.clip),
            "noise_key": np.uint64(key),
            "round": np.int64(0),
            "tree_levels": np.zeros(0, np.int64),
            "tree_nodes": (),
        }
        return {
            "query_state": query,
            "agg_state": self.record.initialize(),
            "dp_event": {"module_name": _EVENT_MODULE, "class_name": "NoOpDpEvent"},
            "is_init_state": np.bool_(True),
        }

    def begin_round(self, state: State) -> Round:
        return _TreeRound(self, state)


class _TreeRound(Round):
    owns_result = True  # a new array

    def __init__(self, process: TreeProcess, state: State):
        self.process = process
        self.query = state["query_state"]
        self.clip = float(self.query["l2_norm_clip"])
        self.record = process.record.begin_round(state["agg_state"])

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        self.record.add(block.scaled(dp.clip_factors(block.norms(2.0), self.clip)), None)

    def finish(self):
        f, query = self.process.factory, self.query
        # Noised in place: the inner round's own array, or a copy when it does not own it.
        agg_state, result, agg_measurements = self.record.finish_owned()
        round_index = int(query["round"])
        levels = [int(v) for v in query["tree_levels"]]
        nodes = list(query["tree_nodes"])
        if f.restart_rounds is not None and round_index % f.restart_rounds == 0:
            levels, nodes = [], []  # a new tree: N_{t-1} = 0
        sigma = float(query["stddev"])
        if sigma > 0.0:
            self._add_tree_noise(result, levels, nodes, sigma, round_index)
        result /= f.clients_per_round
        new_query = dict(query)
        new_query["round"] = np.int64(round_index + 1)
        new_query["tree_levels"] = np.array(levels, dtype=np.int64)
        new_query["tree_nodes"] = tuple(nodes)
        state = {
            "query_state": new_query,
            "agg_state": agg_state,
            "dp_event": _run_event_data(f.noise_multiplier, round_index + 1, f.restart_rounds),
            "is_init_state": np.bool_(False),
        }
        measurements = {
            "dp_query_metrics": {"tree_agg_dpftrl_clip": self.clip},
            "dp": agg_measurements,
        }
        return state, result, measurements

    def _add_tree_noise(
        self, result: np.ndarray, levels: list[int], nodes: list, sigma: float, round_index: int
    ) -> None:
        """Add ``N_t - N_{t-1}`` to ``result`` and update the pending nodes (lists, in place).

        Leaf ``t`` closes the nodes of the trailing run of levels ``0, 1, ..., k-1`` in the
        pending list (the trailing set bits of the tree's round count) and creates one node at
        level ``k``. ``N_{t-1}`` is the weighted sum of the pending nodes and ``N_t`` that of the
        new list, so the residual is the new node's term minus the closed nodes' terms.
        """
        rng = kernels.counter_rng
        f = self.process.factory
        if f.seed is None:  # fresh entropy for every release, even from one saved state
            base = rng.seed_to_key(None)
        else:
            base = rng.derive_key(int(self.query["noise_key"]), "tree_noise", round_index)
        size = result.size
        closed = 0
        while closed < len(levels) and levels[len(levels) - 1 - closed] == closed:
            closed += 1
        if f.efficient:
            # v = n + (v_left + v_right) / 2 from the leaf up (EfficientTreeAggregator).
            node = kernels.gaussian_noise.gaussian(size, sigma, rng.derive_key(base, 0))
            for level in range(closed):
                left = nodes[len(nodes) - 1 - level]
                node += left
                node *= 0.5
                kernels.gaussian_noise.add_gaussian_noise(
                    node, sigma, rng.derive_key(base, level + 1)
                )
        else:  # one fresh node at level `closed`; its children leave the sum
            node = kernels.gaussian_noise.gaussian(size, sigma, rng.derive_key(base, 0))
        for level in range(closed):
            left = nodes.pop()
            levels.pop()
            result -= self._weighted(left, _level_weight(level, f.efficient))
        result += self._weighted(node, _level_weight(closed, f.efficient))
        levels.append(closed)
        nodes.append(node)

    def _weighted(self, node: np.ndarray, weight: float) -> np.ndarray:
        """``weight * node``, into a scratch vector reused across rounds (fresh pages cost)."""
        if weight == 1.0:
            return node
        process = self.process
        scratch = process.scratch_rows(1, process.noise_layout, name="tree_weighted")[0]
        return np.multiply(node, weight, out=scratch)
