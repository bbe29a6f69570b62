"""Robust aggregation: ``ak.zeroing`` and ``ak.clipping`` around an inner aggregator.

Both wrappers compute one norm per client, compare it with a threshold (a number, or an
estimation process such as :func:`aggkit.quantile_estimator` that adapts it round by round), and
change only the client's *coefficient*: zeroing sets it to 0, clipping multiplies it by
``C / norm``. The norms come from the composition's single statistics pass and the inner sum
applies the coefficients as it reads the matrix, so ``zeroing(clipping(mean()))`` reads the client
matrix twice and never materializes a clipped copy.

Per round (TFF's ``zeroing_factory`` / ``clipping_factory``):

1. read the threshold from the state (the value *used* this round is what gets measured);
2. per client, the norm of its contribution (0 for clients already zeroed by an outer wrapper,
   ``inf`` for clients holding NaN or Inf);
3. zeroing drops clients whose norm is strictly above the threshold, or non-finite; clipping
   rescales clients whose L2 norm is strictly above it and drops non-finite ones; both count the
   clients they changed (through a count-sum factory, so the count can be a secure sum);
4. the inner aggregator gets the changed clients, with their weights unchanged (a zeroed client
   still counts in a weighted mean's denominator, as in TFF);
5. the threshold's estimation process is updated with the round's norms.

State: ``{"<kind>_norm": threshold state, "inner_agg": inner state, "<counted>_count_agg": count
state}``; measurements: ``{"<kind>": inner measurements, "<kind>_norm": float, "<counted>_count":
int}``, with ``<kind>`` = ``zeroing``/``clipping`` and ``<counted>`` = ``zeroed``/``clipped``.

Differences from TFF, on purpose: a client holding NaN is dropped and counted (TFF lets NaN
through, since ``NaN > C`` is false), and norms are computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggkit import _checks
from aggkit.mean import COUNT_LAYOUT
from aggkit.process import (
    AggregationProcess,
    Contributions,
    EstimationProcess,
    Factory,
    Round,
    State,
    as_estimation_process,
)
from aggkit.structure import Layout

__all__ = ["ClippingFactory", "ZeroingFactory", "clipping", "zeroing"]

_NORM_KEYS = {1.0: "l1", 2.0: "l2", math.inf: "linf"}


def _threshold(norm: Any, name: str) -> EstimationProcess:
    process = as_estimation_process(norm, name)
    if not isinstance(norm, EstimationProcess):
        _checks.real(norm, name, low=0.0, low_open=True)
    return process


@dataclass(frozen=True)
class ZeroingFactory(Factory):
    """Zeroing around ``inner``; build it with :func:`aggkit.zeroing`."""

    norm: EstimationProcess
    inner: Factory
    norm_order: float = math.inf
    zeroed_count_sum: Factory | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "zeroed_count_sum",
            _checks.unweighted_factory(self.zeroed_count_sum, "zeroed_count_sum"),
        )

    @property
    def is_weighted(self) -> bool:  # type: ignore[override]
        return self.inner.is_weighted

    def _create(self, layout: Layout) -> AggregationProcess:
        return _NormWrapperProcess(
            layout,
            "zeroing",
            "zeroed",
            self.norm_order,
            self.norm,
            self.inner.create(layout),
            self.zeroed_count_sum.create(COUNT_LAYOUT),
        )


@dataclass(frozen=True)
class ClippingFactory(Factory):
    """L2 clipping around ``inner``; build it with :func:`aggkit.clipping`."""

    norm: EstimationProcess
    inner: Factory
    clipped_count_sum: Factory | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "clipped_count_sum",
            _checks.unweighted_factory(self.clipped_count_sum, "clipped_count_sum"),
        )

    @property
    def is_weighted(self) -> bool:  # type: ignore[override]
        return self.inner.is_weighted

    def _create(self, layout: Layout) -> AggregationProcess:
        return _NormWrapperProcess(
            layout,
            "clipping",
            "clipped",
            2.0,
            self.norm,
            self.inner.create(layout),
            self.clipped_count_sum.create(COUNT_LAYOUT),
        )


def zeroing(
    norm: float | EstimationProcess,
    inner: Factory,
    norm_order: float = math.inf,
    *,
    zeroed_count_sum: Factory | None = None,
) -> ZeroingFactory:
    """Replace a client's whole update by zeros when its norm exceeds a threshold.

    Parameters
    ----------
    norm : float or EstimationProcess
        The threshold: a positive number, or an estimation process fed each round's
        pre-zeroing norms (for instance ``ak.quantile_estimator(10.0, 0.98, math.log(10),
        multiplier=2.0, increment=1.0)``, which ``robust_aggregator`` uses).
    inner : factory
        The aggregator that sums the (possibly zeroed) updates; the result is weighted exactly
        when ``inner`` is.
    norm_order : float
        1, 2 or ``math.inf`` (default): the global L1, L2 or L-inf norm over all tensors.
    zeroed_count_sum : unweighted factory, optional
        How the zeroed-client count is summed (default :func:`aggkit.sum`).

    Returns
    -------
    ZeroingFactory
        Measurements ``{"zeroing": inner's, "zeroing_norm": float, "zeroed_count": int}``.

    Notes
    -----
    A client is zeroed when its norm is strictly greater than the threshold or when it holds NaN
    or Inf; zeroed clients keep their weight. Non-floating templates raise TypeError at
    ``create``.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.zeroing(2.0, ak.sum(), norm_order=2.0).create(ak.TensorSpec((), np.float32))
    >>> out = process.next(process.initialize(), [1.0, 2.0, 5.0])
    >>> print(out.result, out.measurements["zeroed_count"])
    3.0 1
    """
    order = float(norm_order) if not isinstance(norm_order, bool) else norm_order
    if not isinstance(order, float):
        raise TypeError(f"norm_order must be a float, got {norm_order!r}")
    if order not in _NORM_KEYS:
        raise ValueError(f"norm_order must be 1.0, 2.0 or math.inf, got {norm_order!r}")
    return ZeroingFactory(
        _threshold(norm, "norm"),
        _checks.factory(inner, "inner"),
        order,
        _checks.unweighted_factory(zeroed_count_sum, "zeroed_count_sum"),
    )


def clipping(
    norm: float | EstimationProcess,
    inner: Factory,
    *,
    clipped_count_sum: Factory | None = None,
) -> ClippingFactory:
    """Project each client's update onto the L2 ball of radius ``norm`` (the global L2 norm over
    all tensors), then aggregate with ``inner``.

    Parameters
    ----------
    norm : float or EstimationProcess
        The clipping norm: a positive number, or an estimation process fed each round's
        pre-clipping norms (``ak.quantile_estimator(1.0, 0.8, 0.2)`` in ``robust_aggregator``).
    inner : factory
        The aggregator of the clipped updates; weightedness is ``inner``'s.
    clipped_count_sum : unweighted factory, optional
        How the clipped-client count is summed (default :func:`aggkit.sum`).

    Returns
    -------
    ClippingFactory
        Measurements ``{"clipping": inner's, "clipping_norm": float, "clipped_count": int}``.

    Notes
    -----
    A client with norm ``v > C`` is scaled by ``C / v`` (computed in float64); a client at exactly
    ``C`` is kept. A client holding NaN or Inf is dropped (contributes zeros) and counted as
    clipped.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.clipping(2.0, ak.sum()).create(ak.TensorSpec((), np.float32))
    >>> out = process.next(process.initialize(), [1.0, 3.0, 5.0])
    >>> print(out.result, out.measurements["clipped_count"])
    5.0 2
    """
    return ClippingFactory(
        _threshold(norm, "norm"),
        _checks.factory(inner, "inner"),
        _checks.unweighted_factory(clipped_count_sum, "clipped_count_sum"),
    )


class _NormWrapperProcess(AggregationProcess):
    """The process of zeroing (``kind="zeroing"``) and clipping (``kind="clipping"``)."""

    def __init__(
        self,
        layout: Layout,
        kind: str,
        counted: str,
        order: float,
        threshold: EstimationProcess,
        inner: AggregationProcess,
        count: AggregationProcess,
    ):
        _checks.floating_layout(layout, f"ak.{kind}")
        super().__init__(layout)
        self.kind = kind
        self.counted = counted
        self.order = order
        self.threshold = threshold
        self.inner = inner
        self.count = count
        self.is_weighted = inner.is_weighted
        self.stats_needed = inner.stats_needed | {_NORM_KEYS[order]}

    def initialize(self) -> State:
        return {
            f"{self.kind}_norm": self.threshold.initialize(),
            "inner_agg": self.inner.initialize(),
            f"{self.counted}_count_agg": self.count.initialize(),
        }

    def begin_round(self, state: State) -> Round:
        return _NormWrapperRound(self, state)


class _NormWrapperRound(Round):
    @property
    def owns_result(self) -> bool:  # the inner's result is passed through
        return self.inner.owns_result

    def __init__(self, process: _NormWrapperProcess, state: State):
        self.process = process
        self.state = state
        self.limit = float(process.threshold.report(state[f"{process.kind}_norm"]))
        self.inner = process.inner.begin_round(state["inner_agg"])
        self.count = process.count.begin_round(state[f"{process.counted}_count_agg"])
        self.norms: list[np.ndarray] = []

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        self.inner.add(*self._scale(block, weights))

    def add_last(self, block: Contributions, weights: np.ndarray | None) -> None:
        self.inner.add_last(*self._scale(block, weights))

    def _scale(self, block: Contributions, weights: np.ndarray | None) -> tuple:
        """The block for the inner round (and the count of changed clients, summed here)."""
        norms = block.norms(self.process.order)
        over = norms > self.limit  # non-finite norms are inf, so they are "over" too
        if self.process.kind == "zeroing":
            factors = np.where(over, 0.0, 1.0)
        else:
            factors = _checks.clip_factors(norms, self.limit)
        self.norms.append(norms)
        self.count.add(
            Contributions.of_scalars(over, COUNT_LAYOUT, first_client=block.first_client), None
        )
        return block.scaled(factors), weights

    def finish(self):
        process = self.process
        inner_state, result, inner_measurements = self.inner.finish()
        count_state, count, _ = self.count.finish()
        norms = np.concatenate(self.norms) if self.norms else np.zeros(0)
        threshold_state = process.threshold.next(self.state[f"{process.kind}_norm"], norms)
        state = {
            f"{process.kind}_norm": threshold_state,
            "inner_agg": inner_state,
            f"{process.counted}_count_agg": count_state,
        }
        measurements = {
            process.kind: inner_measurements,
            f"{process.kind}_norm": self.limit,
            f"{process.counted}_count": int(count[0]),
        }
        return state, result, measurements
