"""``ak.trimmed_mean(trim_fraction)``: the coordinate-wise trimmed mean (Flower's
``FedTrimmedAvg``).

For each coordinate, the ``K`` client values are sorted, ``t = int(trim_fraction * K)`` values are
cut at each end, and the ``K - 2t`` others are averaged: the semantics of
``scipy.stats.trim_mean`` and Flower's ``aggregate_trimmed_avg``. Unweighted. With at most ``t``
attackers, every coordinate lies within the honest clients' range.

The kept values are summed in ascending order in float64 and divided once, so the result is the
correctly ordered float64 mean rounded to the values' dtype (scipy and Flower average in the
values' dtype; the two agree to a few float32 units). Like the median it needs plaintext updates
(one recorded use of the plain channel). Kernel: :mod:`aggkit.kernels.order_stats`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from aggkit import _checks, kernels
from aggkit._byzantine import WholeRound, require_clients
from aggkit.median import order_statistic_result
from aggkit.process import AggregationProcess, Factory, Round, State
from aggkit.structure import Layout

__all__ = ["TrimmedMeanFactory", "TrimmedMeanProcess", "trimmed_mean"]


@dataclass(frozen=True)
class TrimmedMeanFactory(Factory):
    """Coordinate-wise trimmed mean; build it with :func:`aggkit.trimmed_mean`."""

    trim_fraction: float

    is_weighted = False

    def __post_init__(self) -> None:
        value = self.trim_fraction
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"trim_fraction must be a number, got {value!r}")
        if not 0.0 <= float(value) < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {value!r}")
        object.__setattr__(self, "trim_fraction", float(value))

    def _create(self, layout: Layout) -> TrimmedMeanProcess:
        _checks.floating_layout(layout, "ak.trimmed_mean", kernel_floats=True)
        return TrimmedMeanProcess(layout, self.trim_fraction)


def trimmed_mean(trim_fraction: float) -> TrimmedMeanFactory:
    """An unweighted aggregator: per coordinate, the mean after cutting ``int(trim_fraction * K)``
    values at each end.

    Parameters
    ----------
    trim_fraction : float
        In ``[0, 0.5)``; the fraction of the round's clients cut at each end (rounded down).

    Returns
    -------
    TrimmedMeanFactory
        Its processes have state ``()`` and measurements ``{"trimmed_count": t}`` (values cut at
        each end of every coordinate).

    Raises
    ------
    ValueError
        ``trim_fraction`` outside ``[0, 0.5)``.
    aggkit.EmptyRoundError, aggkit.InvalidUpdateError
        At ``next``, as :func:`aggkit.median`.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.trimmed_mean(0.2).create(ak.TensorSpec((), np.float32))
    >>> print(process.next(process.initialize(), [1.0, 2.0, 3.0, 4.0, 1e9]).result)  # cuts 1, 1e9
    3.0
    """
    return TrimmedMeanFactory(trim_fraction)


class TrimmedMeanProcess(AggregationProcess):
    """Process of :func:`aggkit.trimmed_mean`."""

    is_weighted = False

    def __init__(self, layout: Layout, trim_fraction: float):
        super().__init__(layout)
        self.trim_fraction = trim_fraction

    def initialize(self) -> State:
        return ()

    def begin_round(self, state: State) -> Round:
        return _TrimmedMeanRound(self.layout, self.trim_fraction)


class _TrimmedMeanRound(WholeRound):
    def __init__(self, layout: Layout, trim_fraction: float):
        super().__init__(layout)
        self.trim_fraction = trim_fraction

    def compute(self, matrix, coef, weights):
        k = matrix.shape[0]
        require_clients(k, 1, "ak.trimmed_mean", "a mean of nothing is undefined")
        cut = int(self.trim_fraction * k)
        result = order_statistic_result(
            self,
            matrix,
            coef,
            np.arange(k, dtype=np.int64),
            mode=kernels.order_stats.TRIMMED,
            start=cut,
            count=k - 2 * cut,
            owner="trimmed_mean",
        )
        return (), result, {"trimmed_count": cut}
