"""Test utilities for aggregator authors: spy factories and checks.

``SumPlusOneFactory`` is TFF's ``aggregator_test_utils.SumPlusOneFactory``: an inner factory whose
effect is visible in every number, so a wrapper test proves the wrapper delegated exactly once per
round, passed the inner state through and nested the inner measurements.

``assert_only_secure`` is TFF's ``assert_not_contains_unsecure_aggregation``: it runs one round and
checks that every sum went through a secure channel (:mod:`aggkit.channels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import channels
from aggkit.process import AggregationProcess, Contributions, Factory, Output, Round, State
from aggkit.structure import Layout
from aggkit.sum import SumRound

__all__ = ["SumPlusOneFactory", "assert_only_secure", "channel_uses"]


def channel_uses(
    process: AggregationProcess, state: State, values, weights=None
) -> tuple[Output, list[channels.ChannelUse]]:
    """Run ``process.next(state, values, weights)`` and return its output and the channel uses."""
    with channels.recording() as log:
        out = process.next(state, values, weights)
    return out, list(log)


def assert_only_secure(process: AggregationProcess, state: State, values, weights=None) -> Output:
    """Run one round and assert that every sum in it went through a secure channel.

    Raises AssertionError naming the plain sums, or when nothing was summed at all (a process
    that sums nothing proves nothing). Returns the round's output.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.mean().create(ak.TensorSpec((), np.float32))
    >>> assert_only_secure(process, process.initialize(), [1.0, 2.0], [1.0, 1.0])
    Traceback (most recent call last):
    ...
    AssertionError: 2 of 2 sums used the plain channel: sum (2 clients x 1 values), ...
    """
    out, uses = channel_uses(process, state, values, weights)
    if not uses:
        raise AssertionError("the round summed nothing through any channel")
    plain = [u for u in uses if not u.secure]
    if plain:
        names = ", ".join(
            f"{u.owner or 'unnamed'} ({u.clients} clients x {u.length} values)" for u in plain
        )
        raise AssertionError(f"{len(plain)} of {len(uses)} sums used the plain channel: {names}")
    return out


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
