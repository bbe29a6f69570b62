"""Test utilities for aggregator authors: spy factories and checks.

``SumPlusOneFactory`` is TFF's ``aggregator_test_utils.SumPlusOneFactory``: an inner factory whose
effect is visible in every number, so a wrapper test proves the wrapper delegated exactly once per
round, passed the inner state through and nested the inner measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout
from aggkit.sum import SumRound

__all__ = ["SumPlusOneFactory"]


@dataclass(frozen=True)
class SumPlusOneFactory(Factory):
    """An unweighted factory: the sum of the client values plus 1 on every element.

    State is an int32 counter starting at 0 and incremented by each ``next``; measurements are
    the constant ``42``. Integer and floating structures are accepted.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.testing import SumPlusOneFactory
    >>> process = SumPlusOneFactory().create(ak.TensorSpec((), np.float32))
    >>> out = process.next(process.initialize(), [1.0, 2.0])
    >>> print(out.result, out.state, out.measurements)
    4.0 1 42
    """

    is_weighted = False

    def _create(self, layout: Layout) -> AggregationProcess:
        return _SumPlusOneProcess(layout)


class _SumPlusOneProcess(AggregationProcess):
    is_weighted = False

    def initialize(self) -> State:
        return np.int32(0)

    def begin_round(self, state: State) -> Round:
        return _SumPlusOneRound(self.layout, state)


class _SumPlusOneRound(Round):
    def __init__(self, layout: Layout, state: State):
        self.sum = SumRound(layout)
        self.state = state

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        self.sum.add(block, None)

    def finish(self):
        _, total, _ = self.sum.finish()
        return np.int32(self.state + 1), total + 1, 42
