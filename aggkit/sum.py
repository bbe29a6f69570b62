"""``ak.sum()``: the plain sum of client values, the leaf of every composition."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import _buffers, channels, kernels
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout

__all__ = ["SumFactory", "SumProcess", "sum"]


@dataclass(frozen=True)
class SumFactory(Factory):
    """Unweighted factory of :class:`SumProcess`; build it with :func:`aggkit.sum`."""

    is_weighted = False

    def _create(self, layout: Layout) -> SumProcess:
        return SumProcess(layout)


def sum() -> SumFactory:
    """An unweighted aggregator returning the sum of the client values.

    The created process has state ``()`` and measurements ``()``. Any numeric structure is
    accepted: floating tensors are accumulated in float64 and returned in their own dtype,
    integer tensors are summed exactly in int64. Zero clients give zeros. A client holding NaN or
    Inf raises :class:`~aggkit.InvalidUpdateError` naming the client and tensor (wrap the sum in
    :func:`aggkit.zeroing` to drop such clients instead).

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.sum().create(ak.TensorSpec((2,), np.float32))
    >>> out = process.next(process.initialize(), [np.array([1, 2], np.float32),
    ...                                           np.array([3, 4], np.float32)])
    >>> out.result, out.measurements
    (array([4., 6.], dtype=float32), ())
    """
    return SumFactory()


class SumProcess(AggregationProcess):
    """Sums ``coef[i] * matrix[i]`` over the round's contributions in one pass."""

    is_weighted = False

    def initialize(self) -> State:
        return ()

    def begin_round(self, state: State) -> Round:
        return SumRound(self.layout)


class SumRound(Round):
    """Accumulates contributions in float64 (int64 for integer layouts).

    Also used by other aggregators that end in a plain sum. When the round's only block comes
    through :meth:`add_last`, it is kept and summed by :meth:`finish`, or by
    :meth:`finish_divided` in the same pass that divides (one kernel launch and no second pass
    over the accumulator; the bits of :func:`aggkit.kernels.divide_cast.divide_cast`).
    """

    owns_result = True  # ``acc`` belongs to this round only

    def __init__(self, layout: Layout):
        self.integer = layout.dtype.kind in "iu"
        # Written in full by the first add (the kernel zeroes each block in cache), or by finish.
        self.acc = _buffers.empty(layout.size, np.int64 if self.integer else np.float64)
        self.fresh = True
        self._finite = np.ones(1, dtype=bool)
        self._last: Contributions | None = None

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        if self._last is not None:
            raise RuntimeError("a block came after the round's last block")
        self._add(block, None, 1.0)

    def add_last(self, block: Contributions, weights: np.ndarray | None) -> None:
        if self.fresh and not self.integer and self.acc.size > kernels.weighted_sum.SMALL_COLUMNS:
            self._last = block  # the only block: summed by finish or finish_divided
        else:
            self._add(block, None, 1.0)

    def finish_divided(
        self, denominator: float, dtype: np.dtype
    ) -> tuple[State, np.ndarray, tuple]:
        dtype = np.dtype(dtype)
        if self._last is None or dtype not in (np.float32, np.float64):
            return super().finish_divided(denominator, dtype)
        block, self._last = self._last, None
        quotient = self.acc if dtype == np.float64 else _buffers.empty(self.acc.size, dtype)
        self._add(block, quotient, denominator)
        return (), quotient, ()

    def _add(self, block: Contributions, quotient: np.ndarray | None, denominator: float) -> None:
        channels.record_plain(self.acc.size, block.num_clients, owner="sum")
        coef = block.coef
        if self.integer:
            integral = coef.astype(np.int64)
            if not np.array_equal(integral, coef):
                raise TypeError("integer values can only be summed with integer coefficients")
            coef = integral
        finite = self._finite
        if self.acc.size <= kernels.weighted_sum.SMALL_COLUMNS:
            kernels.weighted_sum.small_weighted_row_sum(
                block.matrix, coef, self.acc, fresh=self.fresh
            )
            finite[0] = self.integer or bool(np.isfinite(self.acc).all())
        else:
            kernels.weighted_sum.weighted_row_sum(
                block.matrix,
                coef,
                self.acc,
                fresh=self.fresh,
                finite=None if self.integer else finite,
                quotient=quotient,
                denominator=denominator,
            )
        self.fresh = False
        if not self.integer and not finite[0]:
            # The kernel checked ``acc`` block by block while each was in cache. Sums of finite
            # float32/float64 rows in float64 stay finite in practice, so some contributing row
            # holds NaN or Inf: find it and name it. (Should the sum alone overflow, the scan finds
            # no such row and the round goes on.)
            for row in np.flatnonzero(block.active):
                if not np.isfinite(block.matrix[row]).all():
                    raise block.nonfinite_error(int(row))

    def finish(self) -> tuple[State, np.ndarray, tuple]:
        if self._last is not None:
            block, self._last = self._last, None
            self._add(block, None, 1.0)
        if self.fresh:  # no block came (a round of zero clients): the sum is zeros
            self.acc.fill(0)
            self.fresh = False
        return (), self.acc, ()
