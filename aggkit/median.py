"""``ak.median()``: the coordinate-wise median of the round's clients (Flower's ``FedMedian``).

Each coordinate of the result is the median of the clients' values of that coordinate; for an even
number of clients, the mean of the two middle values (as ``np.median``). Unweighted: every client
counts once, whatever its number of examples. Fewer than half of the clients, however large their
values, cannot move a coordinate outside the range of the honest clients' values.

The median reads plaintext updates (it needs every client's value of a coordinate), so it cannot
run under secure aggregation; the one use of the plain channel is recorded
(:func:`aggkit.testing.assert_only_secure` fails on it, as it should).

Computed by :mod:`aggkit.kernels.order_stats`: column blocks sorted by a vectorized sorting
network, with no ``K x n`` copy of the client matrix. Composes with ``ak.zeroing`` and
``ak.clipping`` around it: a clipped client contributes its scaled update (rounded to the values'
dtype), a zeroed one the zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import _checks, channels, kernels
from aggkit._byzantine import WholeRound, require_clients
from aggkit.process import AggregationProcess, Factory, Round, State
from aggkit.structure import Layout

__all__ = ["MedianFactory", "MedianProcess", "median", "order_statistic_result"]


def order_statistic_result(
    round_: WholeRound,
    matrix: np.ndarray,
    coef: np.ndarray,
    rows: np.ndarray,
    *,
    mode: int,
    start: int = 0,
    count: int = 1,
    owner: str,
) -> np.ndarray:
    """The coordinate-wise statistic of the clients ``rows`` as a fresh vector of the layout's
    dtype; records the plaintext read and raises InvalidUpdateError for a non-finite client."""
    channels.record_plain(matrix.shape[1], len(rows), owner=owner)
    out = np.empty(matrix.shape[1], dtype=round_.layout.dtype)
    finite = kernels.order_stats.order_statistic(
        matrix, rows, coef, out, mode=mode, start=start, count=count
    )
    if not finite:
        round_.raise_nonfinite(matrix, coef)
        raise OverflowError(f"{owner}: a client's scaled update overflows {matrix.dtype}")
    return out


@dataclass(frozen=True)
class MedianFactory(Factory):
    """Coordinate-wise median; build it with :func:`aggkit.median`."""

    is_weighted = False

    def _create(self, layout: Layout) -> MedianProcess:
        _checks.floating_layout(layout, "ak.median", kernel_floats=True)
        return MedianProcess(layout)


def median() -> MedianFactory:
    """An unweighted aggregator returning the coordinate-wise median of the client values.

    Returns
    -------
    MedianFactory
        Its processes have state ``()`` and measurements ``{"num_clients": K}``.

    Raises
    ------
    TypeError
        At ``create``, for tensors that are not float32/float64.
    aggkit.EmptyRoundError
        At ``next``, for a round of no clients.
    aggkit.InvalidUpdateError
        At ``next``, for a client holding NaN or Inf (wrap in ``ak.zeroing`` to drop such
        clients instead).

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.median().create(ak.TensorSpec((2,), np.float32))
    >>> values = np.array([[1, 10], [2, -5], [1e9, 7], [3, 8]], np.float32)
    >>> print(process.next(process.initialize(), values).result)
    [2.5 7.5]
    """
    return MedianFactory()


class MedianProcess(AggregationProcess):
    """Process of :func:`aggkit.median`."""

    is_weighted = False

    def initialize(self) -> State:
        return ()

    def begin_round(self, state: State) -> Round:
        return _MedianRound(self.layout)


class _MedianRound(WholeRound):
    def compute(self, matrix, coef, weights):
        k = matrix.shape[0]
        require_clients(k, 1, "ak.median", "a median of nothing is undefined")
        rows = np.arange(k, dtype=np.int64)
        result = order_statistic_result(
            self, matrix, coef, rows, mode=kernels.order_stats.MEDIAN, owner="median"
        )
        return (), result, {"num_clients": k}
