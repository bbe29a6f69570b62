"""``ak.geometric_median(...)``: robust federated aggregation (RFA; Pillutla, Kakade, Harchaoui,
2022), the weighted geometric median by the smoothed Weiszfeld algorithm.

The geometric median of the contributions ``x_i`` with weights ``a_i`` minimizes
``g(v) = sum_i a_i ||v - x_i||``. Starting from the weighted mean, each iteration

1. has every client compute its distance ``d_i = ||v - x_i||`` to the current estimate ``v`` (a
   local computation: the server broadcasts ``v``),
2. re-weights it ``b_i = a_i / max(smoothing, d_i)``,
3. sets ``v = sum_i b_i x_i / sum_i b_i``, a weighted mean,

and the objective ``g(v) = sum_i a_i d_i`` is summed too; it stops after ``max_iterations``
iterations or once the objective changes by at most ``tolerance`` times its value. The defaults
(4 iterations, smoothing 1e-6, tolerance 1e-6) are RFA's reference implementation's. A client
with a huge update gets a weight inversely proportional to its distance, so its pull on the result
is bounded by its weight, whatever its size.

Secure aggregation. Everything the server learns is a sum over clients: ``sum b_i x_i`` through
the ``value_sum`` factory, ``sum b_i`` and ``sum a_i d_i`` through ``weight_sum``. With
``value_sum=ak.secure_sum(...)`` and ``weight_sum=ak.secure_sum(...)`` every sum uses a secure
channel and :func:`aggkit.testing.assert_only_secure` passes (the clients' distances are their own
computation). The default factories are plain ``ak.sum()``.

Cost per iteration: with plain sums, one pass over the client matrix that computes the weighted
mean and every client's distance to it (:func:`aggkit.kernels.distances.center_step`: each column
block's rows are read again for the distances while they are in cache); with other sums, one pass
for the weighted sum and one for the distances. Memory: the ``n``-vector estimate.

State: ``{"value_sum_process": ..., "weight_sum_process": ...}`` (the inner processes', threaded
through every sum). Measurements: ``{"iterations": int, "objective": float, "value_sum": ...,
"weight_sum": ...}`` (the last inner measurements).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import _checks
from aggkit._byzantine import (
    Sums,
    SumsProcess,
    WholeRound,
    require_clients,
    resolve_sums,
)
from aggkit.process import Factory, Round, State
from aggkit.structure import ClientBatch, Layout

__all__ = ["GeometricMedianFactory", "GeometricMedianProcess", "geometric_median"]


@dataclass(frozen=True)
class GeometricMedianFactory(Factory):
    """RFA's smoothed Weiszfeld; build it with :func:`aggkit.geometric_median`."""

    max_iterations: int = 4
    tolerance: float = 1e-6
    smoothing: float = 1e-6
    value_sum: Factory | None = None
    weight_sum: Factory | None = None

    is_weighted = True

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "max_iterations", _checks.integer(self.max_iterations, "max_iterations", low=1)
        )
        object.__setattr__(self, "tolerance", _checks.real(self.tolerance, "tolerance", low=0.0))
        object.__setattr__(
            self, "smoothing", _checks.real(self.smoothing, "smoothing", low=0.0, low_open=True)
        )
        resolve_sums(self)

    def _create(self, layout: Layout) -> GeometricMedianProcess:
        _checks.floating_layout(layout, "ak.geometric_median", kernel_floats=True)
        return GeometricMedianProcess(layout, self)


def geometric_median(
    max_iterations: int = 4,
    tolerance: float = 1e-6,
    smoothing: float = 1e-6,
    *,
    value_sum: Factory | None = None,
    weight_sum: Factory | None = None,
) -> GeometricMedianFactory:
    """A weighted aggregator returning the approximate weighted geometric median (RFA).

    Parameters
    ----------
    max_iterations : int
        Weiszfeld iterations at most (>= 1) after the initial weighted mean.
    tolerance : float
        Stop once ``|g_prev - g| <= tolerance * g`` for the objective ``g`` (>= 0).
    smoothing : float
        ``nu > 0``: distances below it count as ``nu`` (keeps the weights finite).
    value_sum, weight_sum : unweighted factory, optional
        How the weighted rows and the scalars are summed (default :func:`aggkit.sum`); secure
        factories keep the whole rule on secure channels.

    Returns
    -------
    GeometricMedianFactory

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.geometric_median(max_iterations=50).create(ak.TensorSpec((2,), np.float32))
    >>> values = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [1000, 1000]], np.float32)
    >>> out = process.next(process.initialize(), values, weights=np.ones(5))
    >>> print(np.round(out.result, 2), out.measurements["iterations"])
    [0.82 0.82] 9
    """
    return GeometricMedianFactory(max_iterations, tolerance, smoothing, value_sum, weight_sum)


class GeometricMedianProcess(SumsProcess):
    """Process of :func:`aggkit.geometric_median`."""

    def begin_round(self, state: State) -> Round:
        return _GeometricMedianRound(self, state)


class _GeometricMedianRound(WholeRound):
    def __init__(self, process: GeometricMedianProcess, state: State):
        super().__init__(process.layout)
        self.process = process
        self.sums = Sums(process.value_sum, process.weight_sum, state)

    def compute(self, matrix, coef, weights):
        factory = self.process.factory
        k = matrix.shape[0]
        require_clients(k, 1, "ak.geometric_median", "the median of nothing is undefined")
        batch = ClientBatch(matrix, self.layout)
        sums = self.sums

        def weighted_mean(factors: np.ndarray, total: float) -> tuple[np.ndarray, np.ndarray]:
            """The mean weighted by ``factors`` (of sum ``total``) and the clients' distances."""
            center, d = sums.center_step(batch, coef, factors, total, None)
            if not np.isfinite(d).all():
                self.raise_nonfinite(matrix, coef)
            return center, d

        # The first mean's denominator is the total weight: with every weight 0 the weighted
        # median is undefined (and the 0/0 center would blame a client for its NaN).
        total_weight = sums.scalar(weights)
        _checks.positive_total_weight(
            total_weight, k, "ak.geometric_median", "the weighted geometric median"
        )
        center, d = weighted_mean(weights, total_weight)
        objective = sums.scalar(weights * d)
        iterations = 0
        while iterations < factory.max_iterations:
            previous = objective
            factors = weights / np.maximum(factory.smoothing, d)
            center, d = weighted_mean(factors, sums.scalar(factors))
            objective = sums.scalar(weights * d)
            iterations += 1
            if abs(previous - objective) <= factory.tolerance * objective:
                break
        measurements = {
            "iterations": iterations,
            "objective": objective,
            **sums.measurements,
        }
        return sums.state, center.astype(self.layout.dtype), measurements
