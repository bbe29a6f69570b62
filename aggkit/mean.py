"""``ak.mean`` (weighted) and ``ak.unweighted_mean``: a sum divided by the total weight or count.

Both delegate the summation to inner *sum factories* (plain :func:`aggkit.sum` by default), which
is where quantization and secure summation plug in: ``ak.mean(ak.quantized_sum())``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aggkit import _checks
from aggkit.errors import EmptyRoundError
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout, TensorSpec

__all__ = [
    "MeanFactory",
    "MeanProcess",
    "UnweightedMeanFactory",
    "UnweightedMeanProcess",
    "mean",
    "unweighted_mean",
]

#: The layout the weight sum of ``ak.mean`` is created for (weights are float64 scalars).
WEIGHT_LAYOUT = Layout(TensorSpec((), np.float64))
#: The layout the count sum of ``ak.unweighted_mean`` is created for (TFF: int32).
COUNT_LAYOUT = Layout(TensorSpec((), np.int32))
#: Weights above ``2**MAX_WEIGHT_EXPONENT`` are scaled down by a power of two first (exact, and a
#: mean depends on the ratios of the weights only): the weight total and every weighted float32
#: value summed over up to ``2**63`` clients then stay finite in float64.
MAX_WEIGHT_EXPONENT = 832
#: A whole round whose largest weight is below ``2**-MIN_WEIGHT_EXPONENT`` has its weights scaled
#: up by a power of two into ``[0.5, 1)``: a weighted value then underflows only where the value
#: itself is below the float64 normals, and it cannot exceed the value, so nothing new overflows.
MIN_WEIGHT_EXPONENT = 512


def weight_shift(weights: np.ndarray, *, scale_up: bool = False) -> int:
    """The power of two that weights are divided by so that none exceeds
    ``2**MAX_WEIGHT_EXPONENT`` (0 for ordinary weights, which then keep their bits).

    A weighted mean, and any rule built from weighted sums and their ratios, depends on the
    weights' ratios only, and dividing by a power of two is exact, so the scaled weights give
    the same result without overflowing float64. With ``scale_up`` (allowed only when these
    weights are the whole round: a later block could not be scaled alike), weights whose largest
    is below ``2**-MIN_WEIGHT_EXPONENT`` get a negative shift that brings the largest into
    ``[0.5, 1)``, so the products of tiny weights and small values do not underflow.

    >>> weight_shift(np.array([1.0, 1e6])), weight_shift(np.array([1e308]))
    (0, 192)
    >>> weight_shift(np.array([1e-300])), weight_shift(np.array([1e-300]), scale_up=True)
    (0, -996)
    """
    top = float(weights.max()) if weights.size else 0.0
    if top > 2.0**MAX_WEIGHT_EXPONENT:
        return math.frexp(top)[1] - MAX_WEIGHT_EXPONENT
    if scale_up and 0.0 < top < 2.0**-MIN_WEIGHT_EXPONENT:
        return math.frexp(top)[1]
    return 0


@dataclass(frozen=True)
class MeanFactory(Factory):
    """Weighted mean; build it with :func:`aggkit.mean`."""

    value_sum: Factory | None = None
    weight_sum: Factory | None = None
    no_nan_division: bool = False

    is_weighted = True

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "value_sum", _checks.unweighted_factory(self.value_sum, "value_sum")
        )
        object.__setattr__(
            self, "weight_sum", _checks.unweighted_factory(self.weight_sum, "weight_sum")
        )
        _checks.boolean(self.no_nan_division, "no_nan_division")

    def _create(self, layout: Layout) -> MeanProcess:
        _checks.floating_layout(layout, "ak.mean")
        return MeanProcess(
            layout,
            self.value_sum.create(layout),
            self.weight_sum.create(WEIGHT_LAYOUT),
            self.no_nan_division,
        )


def mean(
    value_sum: Factory | None = None,
    weight_sum: Factory | None = None,
    *,
    no_nan_division: bool = False,
) -> MeanFactory:
    """A weighted aggregator returning ``sum_i w_i x_i / sum_i w_i``.

    Each client's value is multiplied by its weight, the products are summed by ``value_sum``
    and the weights by ``weight_sum``, and the server divides.

    Parameters
    ----------
    value_sum, weight_sum : unweighted factory, optional
        How the weighted values and the weights are summed (default :func:`aggkit.sum`).
    no_nan_division : bool
        Return 0 instead of NaN/Inf when the total weight is 0.

    Returns
    -------
    MeanFactory
        Its processes have state ``{"value_sum_process": ..., "weight_sum_process": ...}`` and
        measurements ``{"mean_value": ..., "mean_weight": ...}`` (the inner processes').

    Raises
    ------
    TypeError
        An inner factory is weighted, or (at ``create``) the template has non-float tensors.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.mean().create(ak.TensorSpec((), np.float32))
    >>> out = process.next(process.initialize(), [1.0, 2.0, 3.0], weights=[3, 2, 1])
    >>> print(out.result)  # (3 + 4 + 3) / 6
    1.6666666
    """
    return MeanFactory(value_sum, weight_sum, no_nan_division)


class MeanProcess(AggregationProcess):
    """Process of :func:`aggkit.mean`."""

    is_weighted = True

    def __init__(
        self,
        layout: Layout,
        value_sum: AggregationProcess,
        weight_sum: AggregationProcess,
        no_nan_division: bool,
    ):
        super().__init__(layout)
        self.value_sum = value_sum
        self.weight_sum = weight_sum
        self.no_nan_division = no_nan_division
        self.stats_needed = value_sum.stats_needed

    def initialize(self) -> State:
        return {
            "value_sum_process": self.value_sum.initialize(),
            "weight_sum_process": self.weight_sum.initialize(),
        }

    def begin_round(self, state: State) -> Round:
        return _MeanRound(
            self.value_sum.begin_round(state["value_sum_process"]),
            self.weight_sum.begin_round(state["weight_sum_process"]),
            self.no_nan_division,
            self.layout.dtype,
        )


class _MeanRound(Round):
    owns_result = True  # the quotient belongs to the caller (see Round.finish_divided)

    def __init__(
        self, value_round: Round, weight_round: Round, no_nan_division: bool, dtype: np.dtype
    ):
        self.value_round = value_round
        self.weight_round = weight_round
        self.no_nan_division = no_nan_division
        self.dtype = dtype
        #: Weights are divided by ``2**shift`` (0 unless some weight is beyond the limits).
        self.shift = 0
        self.started = False

    def _scale(self, weights: np.ndarray, *, whole: bool = False) -> np.ndarray:
        """``weights`` divided by ``2**shift``, the shift set by the round's first block
        (``whole``: this block is the whole round, so tiny weights may be scaled up)."""
        need = weight_shift(weights, scale_up=whole)
        if not self.started:
            self.shift = need
        elif need > self.shift:
            raise OverflowError(
                f"a weight of {float(weights.max())} came after the first block of a "
                "streamed round, whose weights were scaled for at most "
                f"2**{MAX_WEIGHT_EXPONENT + self.shift}; pass the round as a sequence or "
                "ClientBatch"
            )
        self.started = True
        return np.ldexp(weights, -self.shift) if self.shift else weights

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        weights = self._scale(weights)
        self.value_round.add(block.scaled(weights), None)
        self.weight_round.add(_weight_block(block, weights), None)

    def add_last(self, block: Contributions, weights: np.ndarray | None) -> None:
        weights = self._scale(weights, whole=not self.started)
        # The value sum may keep its last block and divide in the same pass (finish_divided).
        self.value_round.add_last(block.scaled(weights), None)
        self.weight_round.add_last(_weight_block(block, weights), None)

    def finish(self):
        # The weight total first: it is the value sum's denominator.
        weight_state, weight_total, weight_measurements = self.weight_round.finish()
        denominator = float(weight_total[0])
        value_state, result, value_measurements = _finish_mean(
            self.value_round, denominator, self.dtype, zero_if_empty=self.no_nan_division
        )
        state = {"value_sum_process": value_state, "weight_sum_process": weight_state}
        measurements = {"mean_value": value_measurements, "mean_weight": weight_measurements}
        return state, result, measurements


def _weight_block(block: Contributions, weights: np.ndarray) -> Contributions:
    return Contributions.of_scalars(weights, WEIGHT_LAYOUT, first_client=block.first_client)


def _finish_mean(value_round: Round, denominator: float, dtype: np.dtype, *, zero_if_empty: bool):
    """The value round finished and divided by ``denominator`` (zeros when it is 0 and
    ``zero_if_empty``)."""
    if zero_if_empty and denominator == 0:
        state, total, measurements = value_round.finish()
        return state, np.zeros(total.shape, dtype=dtype), measurements
    return value_round.finish_divided(denominator, dtype)


@dataclass(frozen=True)
class UnweightedMeanFactory(Factory):
    """Unweighted mean; build it with :func:`aggkit.unweighted_mean`."""

    value_sum: Factory | None = None
    count_sum: Factory | None = None
    strict_empty: bool = False

    is_weighted = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "value_sum", _checks.unweighted_factory(self.value_sum, "value_sum")
        )
        object.__setattr__(
            self, "count_sum", _checks.unweighted_factory(self.count_sum, "count_sum")
        )
        _checks.boolean(self.strict_empty, "strict_empty")

    def _create(self, layout: Layout) -> UnweightedMeanProcess:
        _checks.floating_layout(layout, "ak.unweighted_mean")
        return UnweightedMeanProcess(
            layout,
            self.value_sum.create(layout),
            self.count_sum.create(COUNT_LAYOUT),
            self.strict_empty,
        )


def unweighted_mean(
    value_sum: Factory | None = None,
    count_sum: Factory | None = None,
    *,
    strict_empty: bool = False,
) -> UnweightedMeanFactory:
    """An unweighted aggregator returning ``sum_i x_i / K`` over the K participating clients.

    Parameters
    ----------
    value_sum : unweighted factory, optional
        How the values are summed (default :func:`aggkit.sum`).
    count_sum : unweighted factory, optional
        How the count is summed: it is created for an int32 scalar and every client contributes
        1 (default :func:`aggkit.sum`).
    strict_empty : bool
        Raise :class:`~aggkit.EmptyRoundError` for a round with no clients instead of returning NaN.

    Returns
    -------
    UnweightedMeanFactory
        Its processes have state ``(value_sum_state, count_sum_state)`` and measurements
        ``{"mean_value": ..., "mean_count": ...}``.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.unweighted_mean().create(ak.TensorSpec((), np.float32))
    >>> print(process.next(process.initialize(), [1.0, 2.0, 3.0]).result)
    2.0
    """
    return UnweightedMeanFactory(value_sum, count_sum, strict_empty)


class UnweightedMeanProcess(AggregationProcess):
    """Process of :func:`aggkit.unweighted_mean`."""

    is_weighted = False

    def __init__(
        self,
        layout: Layout,
        value_sum: AggregationProcess,
        count_sum: AggregationProcess,
        strict_empty: bool,
    ):
        super().__init__(layout)
        self.value_sum = value_sum
        self.count_sum = count_sum
        self.strict_empty = strict_empty
        self.stats_needed = value_sum.stats_needed

    def initialize(self) -> State:
        return (self.value_sum.initialize(), self.count_sum.initialize())

    def begin_round(self, state: State) -> Round:
        return _UnweightedMeanRound(
            self.value_sum.begin_round(state[0]),
            self.count_sum.begin_round(state[1]),
            self.strict_empty,
            self.layout.dtype,
        )


class _UnweightedMeanRound(Round):
    owns_result = True  # the quotient belongs to the caller (see Round.finish_divided)

    def __init__(self, value_round: Round, count_round: Round, strict_empty: bool, dtype: np.dtype):
        self.value_round = value_round
        self.count_round = count_round
        self.strict_empty = strict_empty
        self.dtype = dtype
        self.clients = 0

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        self.value_round.add(block, None)
        self.count_round.add(self._count_block(block), None)

    def add_last(self, block: Contributions, weights: np.ndarray | None) -> None:
        self.value_round.add_last(block, None)
        self.count_round.add_last(self._count_block(block), None)

    def _count_block(self, block: Contributions) -> Contributions:
        self.clients += block.num_clients
        ones = np.ones(block.num_clients, dtype=COUNT_LAYOUT.dtype)
        return Contributions.of_scalars(ones, COUNT_LAYOUT, first_client=block.first_client)

    def finish(self):
        if self.strict_empty and self.clients == 0:
            raise EmptyRoundError("unweighted_mean over zero clients (strict_empty=True)")
        count_state, count, count_measurements = self.count_round.finish()
        value_state, result, value_measurements = _finish_mean(
            self.value_round, float(count[0]), self.dtype, zero_if_empty=False
        )
        return (
            (value_state, count_state),
            result,
            {"mean_value": value_measurements, "mean_count": count_measurements},
        )
