"""``ak.mean`` (weighted) and ``ak.unweighted_mean``: a sum divided by the total weight or count.

Both delegate the summation to inner *sum factories* (plain :func:`aggkit.sum` by default), which
is where quantization and secure summation plug in: ``ak.mean(ak.quantized_sum())``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import _buffers
from aggkit.errors import EmptyRoundError
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout, TensorSpec
from aggkit.sum import SumFactory, SumRound

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


def _check_unweighted(factory: Factory | None, name: str) -> Factory:
    if factory is None:
        return SumFactory()
    if not isinstance(factory, Factory):
        raise TypeError(f"{name} must be an aggregation factory, got {factory!r}")
    if factory.is_weighted:
        raise TypeError(f"{name} must be an unweighted factory, got the weighted {factory!r}")
    return factory


def _check_floating(layout: Layout, who: str) -> None:
    if not layout.is_floating:
        bad = [
            f"{p}: {s.dtype}"
            for p, s in zip(layout.paths, layout.specs, strict=True)
            if s.dtype.kind != "f"
        ]
        raise TypeError(f"{who} needs floating-point tensors; got {', '.join(bad)}")


@dataclass(frozen=True)
class MeanFactory(Factory):
    """Weighted mean; build it with :func:`aggkit.mean`."""

    value_sum: Factory | None = None
    weight_sum: Factory | None = None
    no_nan_division: bool = False

    is_weighted = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_sum", _check_unweighted(self.value_sum, "value_sum"))
        object.__setattr__(self, "weight_sum", _check_unweighted(self.weight_sum, "weight_sum"))
        if not isinstance(self.no_nan_division, bool):
            raise TypeError(f"no_nan_division must be a bool, got {self.no_nan_division!r}")

    def _create(self, layout: Layout) -> MeanProcess:
        _check_floating(layout, "ak.mean")
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


def _divide(
    total: np.ndarray,
    denominator: float,
    no_nan_division: bool,
    in_place: bool,
    dtype: np.dtype,
) -> np.ndarray:
    """``total / denominator`` (a float64 division) as a vector of the layout's ``dtype``.

    When the caller owns ``total`` (``in_place``) the quotient is written in one fused pass, into
    ``total`` itself for float64 or into a reused buffer for float32 (see
    :mod:`aggkit.kernels.divide_cast`); otherwise a fresh array is returned.
    """
    if no_nan_division and denominator == 0:
        return np.zeros(total.shape, dtype=dtype)
    if (
        in_place
        and total.dtype == np.float64
        and total.ndim == 1
        and total.flags.writeable
        and total.flags.c_contiguous
        and dtype in (np.float32, np.float64)
    ):
        from aggkit import kernels

        out = total if dtype == np.float64 else _buffers.empty(total.size, dtype)
        return kernels.divide_cast.divide_cast(total, denominator, out)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.divide(total, np.float64(denominator)).astype(dtype, copy=False)


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
    owns_result = True  # a fresh quotient, or the inner sum divided in its own memory

    def __init__(
        self, value_round: Round, weight_round: Round, no_nan_division: bool, dtype: np.dtype
    ):
        self.value_round = value_round
        self.weight_round = weight_round
        self.no_nan_division = no_nan_division
        self.dtype = dtype
        self.quotient: np.ndarray | None = None

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        if self.quotient is not None:
            raise RuntimeError("a block came after the block marked as the whole round")
        weight_block = Contributions.of_scalars(
            weights, WEIGHT_LAYOUT, first_client=block.first_client
        )
        if (
            block.whole_round
            and type(self.value_round) is SumRound
            and type(self.weight_round) is SumRound
        ):
            # Plain sums of the round's only block: the weight total is known before the values
            # are read, so the value sum's pass divides as well (no second pass, no second
            # kernel launch; the same bits as dividing in finish). The total is computed as the
            # weight sum will compute it, so that the values are still summed first.
            from aggkit import kernels

            denominator = float(
                kernels.weighted_sum.small_weighted_row_sum(
                    weight_block.matrix, weight_block.coef, np.zeros(1), fresh=True
                )[0]
            )
            if not (self.no_nan_division and denominator == 0):
                self.quotient = self.value_round.add_divided(
                    block.scaled(weights), denominator, self.dtype
                )
            else:
                self.value_round.add(block.scaled(weights), None)
            self.weight_round.add(weight_block, None)
            return
        self.value_round.add(block.scaled(weights), None)
        self.weight_round.add(weight_block, None)

    def finish(self):
        value_state, total, value_measurements = self.value_round.finish()
        weight_state, weight_total, weight_measurements = self.weight_round.finish()
        state = {"value_sum_process": value_state, "weight_sum_process": weight_state}
        if self.quotient is not None:
            result = self.quotient
        else:
            result = _divide(
                total,
                float(weight_total[0]),
                self.no_nan_division,
                self.value_round.owns_result,
                self.dtype,
            )
        measurements = {"mean_value": value_measurements, "mean_weight": weight_measurements}
        return state, result, measurements


@dataclass(frozen=True)
class UnweightedMeanFactory(Factory):
    """Unweighted mean; build it with :func:`aggkit.unweighted_mean`."""

    value_sum: Factory | None = None
    count_sum: Factory | None = None
    strict_empty: bool = False

    is_weighted = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_sum", _check_unweighted(self.value_sum, "value_sum"))
        object.__setattr__(self, "count_sum", _check_unweighted(self.count_sum, "count_sum"))
        if not isinstance(self.strict_empty, bool):
            raise TypeError(f"strict_empty must be a bool, got {self.strict_empty!r}")

    def _create(self, layout: Layout) -> UnweightedMeanProcess:
        _check_floating(layout, "ak.unweighted_mean")
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
    owns_result = True  # a fresh quotient, or the inner sum divided in its own memory

    def __init__(self, value_round: Round, count_round: Round, strict_empty: bool, dtype: np.dtype):
        self.value_round = value_round
        self.count_round = count_round
        self.strict_empty = strict_empty
        self.dtype = dtype
        self.clients = 0

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        self.value_round.add(block, None)
        ones = np.ones(block.num_clients, dtype=COUNT_LAYOUT.dtype)
        self.count_round.add(
            Contributions.of_scalars(ones, COUNT_LAYOUT, first_client=block.first_client), None
        )
        self.clients += block.num_clients

    def finish(self):
        if self.strict_empty and self.clients == 0:
            raise EmptyRoundError("unweighted_mean over zero clients (strict_empty=True)")
        value_state, total, value_measurements = self.value_round.finish()
        count_state, count, count_measurements = self.count_round.finish()
        result = _divide(
            total,
            float(count[0]),
            no_nan_division=False,
            in_place=self.value_round.owns_result,
            dtype=self.dtype,
        )
        return (
            (value_state, count_state),
            result,
            {"mean_value": value_measurements, "mean_count": count_measurements},
        )
