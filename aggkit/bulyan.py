"""``ak.bulyan(num_byzantine)``: Bulyan (El Mhamdi, Guerraoui, Rouault, 2018) with Krum as its
selection rule, as Flower's ``aggregate_bulyan(results, f, aggregate_krum, to_keep=0)``.

1. Select ``theta = K - 2f`` clients by repeated Krum: pick the lowest Krum score among the
   clients not yet selected (scores recomputed over those clients, with ``max(1, K' - f - 2)``
   neighbours for ``K'`` of them), remove it, repeat.
2. Per coordinate, average the ``beta = theta - 2f`` values of the selected clients closest to
   their median.

Requires ``K >= 4f + 3`` (the assumption of the paper; Flower checks the same). Unweighted. Ties in
score go to the lower client index; ties in distance to the median go to the lower value (Flower's
choice among ties is unspecified). Plaintext only (one recorded use of the plain channel).

Cost: the pairwise distances once (one pass, :mod:`aggkit.kernels.distances`), ``theta`` rounds of
``K x K`` score arithmetic, then one pass of :mod:`aggkit.kernels.order_stats` over the selected
rows (no copy of them). Measurements: ``{"selected": int64[theta]}`` in selection order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import _checks, channels, kernels
from aggkit._byzantine import WholeRound, require_clients
from aggkit.krum import krum_scores, lowest, pairwise_distances
from aggkit.median import order_statistic_result
from aggkit.process import AggregationProcess, Factory, Round, State
from aggkit.structure import Layout

__all__ = ["BulyanFactory", "BulyanProcess", "bulyan", "bulyan_selection"]


def bulyan_selection(distances: np.ndarray, num_byzantine: int) -> np.ndarray:
    """The ``K - 2f`` clients Bulyan selects by repeated Krum, in selection order.

    Examples
    --------
    >>> x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])
    >>> bulyan_selection((x[:, None] - x[None, :]) ** 2, 1).tolist()
    [2, 4, 3, 1, 5, 0]
    """
    k = distances.shape[0]
    remaining = np.arange(k)
    chosen = []
    for _ in range(k - 2 * num_byzantine):
        sub = distances[np.ix_(remaining, remaining)]
        best = int(lowest(krum_scores(sub, num_byzantine), 1)[0])
        chosen.append(int(remaining[best]))
        remaining = np.delete(remaining, best)
    return np.asarray(chosen, dtype=np.int64)


@dataclass(frozen=True)
class BulyanFactory(Factory):
    """Bulyan; build it with :func:`aggkit.bulyan`."""

    num_byzantine: int

    is_weighted = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "num_byzantine", _checks.integer(self.num_byzantine, "num_byzantine", low=0)
        )

    def _create(self, layout: Layout) -> BulyanProcess:
        _checks.floating_layout(layout, "ak.bulyan", kernel_floats=True)
        return BulyanProcess(layout, self.num_byzantine)


def bulyan(num_byzantine: int) -> BulyanFactory:
    """An unweighted aggregator: Krum-selected clients, then a trimmed average around their
    coordinate-wise median.

    Parameters
    ----------
    num_byzantine : int
        ``f >= 0``; a round needs ``K >= 4f + 3`` clients.

    Returns
    -------
    BulyanFactory
        State ``()``; measurements ``{"selected": int64[K - 2f]}``.

    Raises
    ------
    TypeError, ValueError
        ``num_byzantine`` is not a non-negative int; at ``next``, fewer than ``4f + 3`` clients
        (:class:`~aggkit.EmptyRoundError` for none).
    aggkit.InvalidUpdateError
        At ``next``, a client holding NaN or Inf.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.bulyan(1).create(ak.TensorSpec((), np.float32))
    >>> values = np.array([0, 1, 2, 3, 4, 5, 1000], np.float32)
    >>> out = process.next(process.initialize(), values)
    >>> print(out.result, out.measurements["selected"])  # 1000 left out; the mean of 1, 2, 3
    2.0 [2 3 1 4 0]
    """
    return BulyanFactory(num_byzantine)


class BulyanProcess(AggregationProcess):
    """Process of :func:`aggkit.bulyan`."""

    is_weighted = False

    def __init__(self, layout: Layout, num_byzantine: int):
        super().__init__(layout)
        self.num_byzantine = num_byzantine

    def initialize(self) -> State:
        return ()

    def begin_round(self, state: State) -> Round:
        return _BulyanRound(self.layout, self.num_byzantine)


class _BulyanRound(WholeRound):
    def __init__(self, layout: Layout, num_byzantine: int):
        super().__init__(layout)
        self.f = num_byzantine

    def compute(self, matrix, coef, weights):
        k, n = matrix.shape
        f = self.f
        require_clients(k, 4 * f + 3, f"ak.bulyan(num_byzantine={f})", "4 * num_byzantine + 3")
        channels.record_plain(n, k, owner="bulyan selection")
        chosen = bulyan_selection(pairwise_distances(self, matrix, coef), f)
        theta = len(chosen)
        result = order_statistic_result(
            self,
            matrix,
            coef,
            chosen,
            mode=kernels.order_stats.CLOSEST,
            count=theta - 2 * f,
            owner="bulyan",
        )
        return (), result, {"selected": chosen}
