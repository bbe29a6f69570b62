"""``ak.centered_clipping(radius, iterations=1)``: centered clipping (Karimireddy, He, Jaggi, 2021).

The server keeps a center ``v``, the previous round's aggregate (zeros at first), in the state.
Each iteration clips every client's difference from the center to the L2 ball of radius ``tau``
and moves the center by the weighted mean of the clipped differences::

    v <- v + sum_i w_i * clip(x_i - v, tau) / sum_i w_i,   clip(z, tau) = z * min(1, tau / ||z||)

The result is the final ``v``, which the next round starts from. An attacker's pull on the
result is at most ``tau`` times its weight share, however large its update.

Since ``clip(x_i - v) = s_i (x_i - v)`` with ``s_i = min(1, tau / ||x_i - v||)``, one iteration is
``v <- v (1 - S / W) + T / W`` with ``T = sum_i w_i s_i x_i``, ``S = sum_i w_i s_i`` and
``W = sum_i w_i``: sums over clients, each client computing its own ``s_i`` from the broadcast
center. ``T`` goes through the ``value_sum`` factory, ``W``, ``S`` and the clipped count through
``weight_sum``; with secure factories every sum uses a secure channel and
:func:`aggkit.testing.assert_only_secure` passes.

The radius is a positive number or an estimation process, as in :func:`aggkit.clipping`; a
process is fed the round's distances ``||x_i - v||`` to the round's first center. Cost: one pass
for the first distances (:mod:`aggkit.kernels.distances`) and one per iteration for ``T``; with
plain sums, an iteration's pass also computes the next iteration's distances to the moved center
(:func:`aggkit.kernels.distances.center_step`), with other sums they are a pass of their own.

State: ``{"center": array of the layout's size and dtype, "radius": radius state,
"value_sum_process": ..., "weight_sum_process": ...}``. Measurements: ``{"radius": float,
"clipped_count": int (clients clipped in the first iteration), "value_sum": ..., "weight_sum":
...}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import _checks, kernels
from aggkit._byzantine import (
    Sums,
    SumsProcess,
    WholeRound,
    require_clients,
    resolve_sums,
)
from aggkit.process import EstimationProcess, Factory, Round, State
from aggkit.robust import _threshold
from aggkit.structure import ClientBatch, Layout

__all__ = ["CenteredClippingFactory", "CenteredClippingProcess", "centered_clipping"]


@dataclass(frozen=True)
class CenteredClippingFactory(Factory):
    """Centered clipping; build it with :func:`aggkit.centered_clipping`."""

    radius: EstimationProcess
    iterations: int = 1
    value_sum: Factory | None = None
    weight_sum: Factory | None = None

    is_weighted = True

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "iterations", _checks.integer(self.iterations, "iterations", low=1)
        )
        resolve_sums(self)

    def _create(self, layout: Layout) -> CenteredClippingProcess:
        _checks.floating_layout(layout, "ak.centered_clipping", kernel_floats=True)
        return CenteredClippingProcess(layout, self)


def centered_clipping(
    radius: float | EstimationProcess,
    iterations: int = 1,
    *,
    value_sum: Factory | None = None,
    weight_sum: Factory | None = None,
) -> CenteredClippingFactory:
    """A weighted aggregator: clip each client's distance from the last aggregate, then average.

    Parameters
    ----------
    radius : float or EstimationProcess
        ``tau``: a positive number, or an estimation process fed each round's distances from
        the center (e.g. ``ak.quantile_estimator(1.0, 0.5, 0.2)``).
    iterations : int
        Clipping iterations per round (>= 1; the paper uses 1 with client momentum).
    value_sum, weight_sum : unweighted factory, optional
        How ``T`` and the scalars are summed (default :func:`aggkit.sum`).

    Returns
    -------
    CenteredClippingFactory

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.centered_clipping(1.0).create(ak.TensorSpec((), np.float32))
    >>> out = process.next(process.initialize(), [0.5, 0.5, 0.5, 1000.0], weights=np.ones(4))
    >>> print(out.result, out.measurements["clipped_count"])  # (0.5 * 3 + 1) / 4
    0.625 1
    """
    return CenteredClippingFactory(_threshold(radius, "radius"), iterations, value_sum, weight_sum)


class CenteredClippingProcess(SumsProcess):
    """Process of :func:`aggkit.centered_clipping`."""

    def initialize(self) -> State:
        return {
            "center": np.zeros(self.layout.size, dtype=self.layout.dtype),
            "radius": self.factory.radius.initialize(),
            **super().initialize(),
        }

    def begin_round(self, state: State) -> Round:
        return _CenteredClippingRound(self, state)


class _CenteredClippingRound(WholeRound):
    def __init__(self, process: CenteredClippingProcess, state: State):
        super().__init__(process.layout)
        self.process = process
        self.state = state
        center = np.asarray(state["center"])
        if center.shape != (process.layout.size,):
            raise ValueError(
                f"the state's center has shape {center.shape}, not ({process.layout.size},)"
            )
        # Read, never written (each step writes a new center): the state is not modified.
        if center.dtype in (np.float32, np.float64):
            self.center = np.ascontiguousarray(center)
        else:
            self.center = center.astype(np.float64)
        self.radius = float(process.factory.radius.report(state["radius"]))
        self.sums = Sums(process.value_sum, process.weight_sum, state)

    def distances(self, matrix: np.ndarray, coef: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``d`` once it is finite (else the InvalidUpdateError of the client holding NaN/Inf)."""
        if not np.isfinite(d).all():
            self.raise_nonfinite(matrix, coef)
        return d

    def compute(self, matrix, coef, weights):
        k = matrix.shape[0]
        require_clients(k, 1, "ak.centered_clipping", "an average of nothing is undefined")
        batch = ClientBatch(matrix, self.layout)
        sums = self.sums
        tau = self.radius
        center = self.center
        total_weight = sums.scalar(weights)
        d = self.distances(matrix, coef, kernels.distances.center_distances(matrix, coef, center))
        first = d
        clipped = round(sums.scalar((d > tau).astype(np.float64)))
        iterations = self.process.factory.iterations
        for iteration in range(iterations):
            with np.errstate(divide="ignore"):
                scale = np.where(d > tau, tau / d, 1.0)
            factors = weights * scale
            kept = sums.scalar(factors)
            if not total_weight > 0:  # nothing to average: the center stays
                sums.rows(batch, coef * factors)
                continue
            # The next iteration's distances come from the same pass as the new center.
            last = iteration == iterations - 1
            center, d = sums.center_step(
                batch,
                coef,
                factors,
                total_weight,
                center,
                keep=1.0 - kept / total_weight,
                distances=not last,
                dtype=self.layout.dtype,
            )
            if not last:
                d = self.distances(matrix, coef, d)
        # A new array (never the state's center, which is only read).
        result = center.astype(self.layout.dtype, copy=center is self.center)
        state = {
            "center": result.copy(),
            "radius": self.process.factory.radius.next(self.state["radius"], first),
            **sums.state,
        }
        measurements = {"radius": tau, "clipped_count": clipped, **sums.measurements}
        return state, result, measurements
