"""``ak.krum(num_byzantine, num_selected=1)``: Krum and Multi-Krum (Blanchard et al., 2017).

A client's *score* is the sum of the squared L2 distances from its update to its
``max(1, K - num_byzantine - 2)`` nearest other updates. Krum returns the update of the client with
the lowest score; Multi-Krum (``num_selected = m > 1``) returns the weighted mean, by the clients'
weights, of the ``m`` lowest-score updates. These are the semantics of Flower's
``aggregate_krum(results, num_malicious, to_keep)`` (Krum for ``to_keep=0``, Multi-Krum
otherwise). Ties in score go to the lower client index (Flower's order among ties is unspecified).

Requires ``K >= 2 * num_byzantine + 3`` clients (Blanchard et al.'s ``n > 2f + 2``) and
``K >= num_selected``. Plaintext only (one recorded use of the plain channel).

Distances come from one pass over the client matrix (:mod:`aggkit.kernels.distances`: a centered
Gram matrix accumulated in float64), not from ``K^2 / 2`` difference vectors. Memory beyond the
client matrix: the ``K x K`` distances and the result.

Measurements: ``{"selected": int64[m] client indices, best first, "scores": float64[m] their
scores}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import _checks, channels, kernels
from aggkit._byzantine import WholeRound, require_clients
from aggkit.process import AggregationProcess, Factory, Round, State
from aggkit.structure import Layout

__all__ = ["KrumFactory", "KrumProcess", "krum", "krum_scores", "pairwise_distances"]


def krum_scores(distances: np.ndarray, num_byzantine: int) -> np.ndarray:
    """``float64[K]`` Krum scores from squared distances ``[K, K]`` (zero diagonal).

    Each score sums the ``max(1, K - num_byzantine - 2)`` smallest distances to *other* clients,
    in ascending order. Infinite distances (an overflowing client) give infinite scores.

    Examples
    --------
    >>> d = np.array([[0, 1, 9], [1, 0, 4], [9, 4, 0]], float)
    >>> krum_scores(d, 0).tolist()
    [1.0, 1.0, 4.0]
    """
    k = distances.shape[0]
    closest = max(1, k - num_byzantine - 2)
    if k < 2:
        return np.zeros(k)
    others = distances[~np.eye(k, dtype=bool)].reshape(k, k - 1)
    part = np.sort(others, axis=1)[:, :closest]
    scores = np.zeros(k)
    for c in range(part.shape[1]):  # ascending order, one column at a time
        scores += part[:, c]
    return scores


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` lowest scores, lowest first, ties by index."""
    return np.lexsort((np.arange(len(scores)), scores))[:count].astype(np.int64)


def pairwise_distances(round_: WholeRound, matrix: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Squared distances between the round's contributions, with non-finite clients named
    (InvalidUpdateError) and overflowing distances made ``inf``."""
    # Relative to the client of median norm: a typical update (fewer than half attack), so that
    # neither a common part nor one huge update swamps the others' distances.
    norms = round_.contributions(matrix, coef).norms(2.0)
    reference = int(np.lexsort((np.arange(len(norms)), norms))[(len(norms) - 1) // 2])
    distances = kernels.distances.pairwise_sq_distances(matrix, coef, reference)
    if not np.isfinite(distances).all():
        round_.raise_nonfinite(matrix, coef)
        distances = np.where(np.isnan(distances), np.inf, distances)
    return distances


@dataclass(frozen=True)
class KrumFactory(Factory):
    """Krum / Multi-Krum; build it with :func:`aggkit.krum`."""

    num_byzantine: int
    num_selected: int = 1

    is_weighted = True

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "num_byzantine", _checks.integer(self.num_byzantine, "num_byzantine", low=0)
        )
        object.__setattr__(
            self, "num_selected", _checks.integer(self.num_selected, "num_selected", low=1)
        )

    def _create(self, layout: Layout) -> KrumProcess:
        _checks.floating_layout(layout, "ak.krum", kernel_floats=True)
        return KrumProcess(layout, self.num_byzantine, self.num_selected)


def krum(num_byzantine: int, num_selected: int = 1) -> KrumFactory:
    """A weighted aggregator selecting the update(s) closest to their neighbours (Krum).

    Parameters
    ----------
    num_byzantine : int
        ``f >= 0``, the number of Byzantine clients to tolerate; a round needs ``K >= 2f + 3``.
    num_selected : int
        ``m >= 1``. 1: the lowest-score client's update (weights are not used). ``m > 1``
        (Multi-Krum): the weighted mean of the ``m`` lowest-score updates (``K >= m``).

    Returns
    -------
    KrumFactory
        Weighted; state ``()``; measurements ``{"selected": ..., "scores": ...}``.

    Raises
    ------
    TypeError, ValueError
        A parameter is not an int, or is out of range; at ``next``, too few clients
        (:class:`~aggkit.EmptyRoundError` for none).
    aggkit.InvalidUpdateError
        At ``next``, a client holding NaN or Inf (wrap in ``ak.zeroing`` to drop such clients);
        with ``m > 1``, selected clients whose weights are all 0 (their mean is undefined).

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.krum(num_byzantine=1).create(ak.TensorSpec((2,), np.float32))
    >>> values = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [50, 50]], np.float32)
    >>> out = process.next(process.initialize(), values, weights=np.ones(5))
    >>> print(out.result, out.measurements["selected"])
    [0. 0.] [0]
    """
    return KrumFactory(num_byzantine, num_selected)


class KrumProcess(AggregationProcess):
    """Process of :func:`aggkit.krum`."""

    is_weighted = True

    def __init__(self, layout: Layout, num_byzantine: int, num_selected: int):
        super().__init__(layout)
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected

    def initialize(self) -> State:
        return ()

    def begin_round(self, state: State) -> Round:
        return _KrumRound(self.layout, self.num_byzantine, self.num_selected)


class _KrumRound(WholeRound):
    def __init__(self, layout: Layout, num_byzantine: int, num_selected: int):
        super().__init__(layout)
        self.f = num_byzantine
        self.m = num_selected

    def compute(self, matrix, coef, weights):
        k, n = matrix.shape
        who = f"ak.krum(num_byzantine={self.f}, num_selected={self.m})"
        require_clients(k, 2 * self.f + 3, who, "2 * num_byzantine + 3")
        require_clients(k, self.m, who, "num_selected")
        channels.record_plain(n, k, owner="krum")
        scores = krum_scores(pairwise_distances(self, matrix, coef), self.f)
        chosen = lowest(scores, self.m)
        measurements = {"selected": chosen, "scores": scores[chosen]}
        if self.m == 1:
            i = int(chosen[0])
            result = (coef[i] * matrix[i].astype(np.float64)).astype(self.layout.dtype)
            return (), result, measurements
        factors = np.zeros(k)
        factors[chosen] = weights[chosen] * coef[chosen]
        total = float(np.add.accumulate(weights[chosen])[-1])
        # The weighted mean of the selected clients is 0/0 when all their weights are 0 (whatever
        # the unselected clients weigh): an error on the weights, as in ak.geometric_median.
        _checks.positive_total_weight(
            total, self.m, who, "the weighted mean of the selected clients", "selected clients"
        )
        out = np.empty(n, dtype=self.layout.dtype)
        kernels.weighted_sum.weighted_row_sum(
            matrix, factors, np.empty(n), fresh=True, quotient=out, denominator=total
        )
        return (), out, measurements
