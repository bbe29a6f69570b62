"""``ak.sum()``: the plain sum of client values, the leaf of every composition."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aggkit import _buffers, channels, kernels
from aggkit.kernels.limits import INT64_MAX, INT64_MIN
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State, divide
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


#: An overflowed float sum is redone with coefficients scaled so that every partial sum stays
#: below ``2**OVERFLOW_HEADROOM`` (float64 holds values below ``2**1024``).
OVERFLOW_HEADROOM = 1020


class SumRound(Round):
    """Accumulates contributions in float64 (int64 for integer layouts).

    Also used by other aggregators that end in a plain sum. When the round's only block comes
    through :meth:`add_last`, it is kept and summed by :meth:`finish`, or by
    :meth:`finish_divided` in the same pass that divides (one kernel launch and no second pass
    over the accumulator; the bits of :func:`aggkit.kernels.divide_cast.divide_cast`).

    Nothing wraps or overflows silently:

    * Integer sums are exact. The round keeps, per tensor, a bound on ``|running sum|`` (from the
      tensor dtype's range, or the block's actual range for int64 tensors); a block that could
      take it past int64 has that tensor re-summed with Python integers, and a sum outside int64
      raises OverflowError. (Narrower results are checked against their dtype when the result is
      unflattened.)
    * A float64 sum that overflows in the round's first block (finite rows, an infinite sum) is
      redone with every coefficient scaled by ``2**-exponent``: :meth:`finish` returns the true
      sum (OverflowError if it does not fit float64), while :meth:`finish_divided` divides the
      scaled sum, so a representable mean comes back. Power-of-two scaling is exact, so a sum
      that does not overflow keeps its bits. An overflow in a later block of a streamed round
      (the accumulator is overwritten by then) raises OverflowError.
    """

    owns_result = True  # ``acc`` belongs to this round only

    def __init__(self, layout: Layout):
        self.layout = layout
        self.integer = layout.dtype.kind in "iu"
        # Written in full by the first add (the kernel zeroes each block in cache), or by finish.
        self.acc = _buffers.empty(layout.size, np.int64 if self.integer else np.float64)
        self.fresh = True
        self._finite = np.ones(1, dtype=bool)
        self._last: Contributions | None = None
        #: ``acc`` holds the sum times ``2**-exponent`` (0 unless the first block overflowed).
        self.exponent = 0
        # Per tensor, a bound on |running sum| (integer layouts; Python ints).
        self._bound = [0] * layout.num_tensors

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
        if self._last is not None and dtype in (np.float32, np.float64):
            block, self._last = self._last, None
            quotient = self.acc if dtype == np.float64 else _buffers.empty(self.acc.size, dtype)
            if self._add(block, quotient, denominator):
                return (), quotient, ()
        state, acc, measurements = self._finish_scaled()
        if not self.exponent:
            return state, divide(acc, denominator, dtype, in_place=True), measurements
        # A rescaled sum: ``acc * 2**exponent / denominator`` may fit where the sum did not.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            quotient = np.ldexp(np.divide(acc, np.float64(denominator)), self.exponent)
            out = quotient.astype(dtype)
        if np.isinf(out).any() and denominator != 0:
            raise OverflowError(f"the mean does not fit {dtype}")
        return state, out, measurements

    def _add(self, block: Contributions, quotient: np.ndarray | None, denominator: float) -> bool:
        """Add ``block``; True when ``quotient`` was written (no overflow redid the block)."""
        channels.record_plain(self.acc.size, block.num_clients, owner="sum")
        coef = block.coef
        exact: list[tuple[int, np.ndarray]] = []
        if self.integer:
            integral = coef.astype(np.int64)
            if not np.array_equal(integral, coef):
                raise TypeError("integer values can only be summed with integer coefficients")
            coef = integral
            exact = self._risky_tensors(block, coef)
        elif self.exponent:
            coef = np.ldexp(coef, -self.exponent)
        fresh = self.fresh
        self._run(block.matrix, coef, quotient, denominator)
        self.fresh = False
        for t, before in exact:
            self._exact_tensor(block, coef, t, before)
        if self.integer or self._finite[0]:
            return quotient is not None
        # The kernel checked ``acc`` block by block while each was in cache. Some contributing
        # row holds NaN or Inf (name it), or the sum of finite rows overflowed float64.
        for row in np.flatnonzero(block.active):
            if not np.isfinite(block.matrix[row]).all():
                raise block.nonfinite_error(int(row))
        if not fresh:
            raise OverflowError(
                f"the float64 sum overflowed in a later block (clients from {block.first_client}) "
                "of a streamed round; pass the round as a sequence or ClientBatch so that it can "
                "be rescaled"
            )
        self.exponent = _overflow_exponent(block)
        self.fresh = True
        self._run(block.matrix, np.ldexp(block.coef, -self.exponent), None, 1.0)
        self.fresh = False
        if not self._finite[0]:  # pragma: no cover - the exponent leaves 2**4 of headroom
            raise OverflowError("the float64 sum overflowed even after rescaling")
        return False

    def _run(
        self,
        matrix: np.ndarray,
        coef: np.ndarray,
        quotient: np.ndarray | None,
        denominator: float,
    ) -> None:
        finite = self._finite
        if self.acc.size <= kernels.weighted_sum.SMALL_COLUMNS:
            with np.errstate(over="ignore", invalid="ignore"):
                kernels.weighted_sum.small_weighted_row_sum(
                    matrix, coef, self.acc, fresh=self.fresh
                )
            finite[0] = self.integer or bool(np.isfinite(self.acc).all())
        else:
            kernels.weighted_sum.weighted_row_sum(
                matrix,
                coef,
                self.acc,
                fresh=self.fresh,
                finite=None if self.integer else finite,
                quotient=quotient,
                denominator=denominator,
            )

    def _risky_tensors(self, block: Contributions, coef: np.ndarray) -> list:
        """Integer tensors whose running sum this block could take past int64, each with a copy
        of its accumulator before the block (to be re-summed exactly)."""
        layout = self.layout
        weight = int(np.abs(coef).sum())
        risky = []
        for t, spec in enumerate(layout.specs):
            part = block.matrix[:, layout.tensor_slice(t)]
            if not part.size or not weight:
                continue
            if spec.dtype.itemsize == 8 or block.matrix.dtype != np.int64:
                largest = max(-int(part.min()), int(part.max()))
            else:  # checked against the dtype's range when packed
                info = np.iinfo(spec.dtype)
                largest = max(-int(info.min), int(info.max))
            self._bound[t] += largest * weight
            if self._bound[t] > INT64_MAX:
                part = layout.tensor_slice(t)
                if self.fresh:  # the accumulator is not written yet
                    before = np.zeros(part.stop - part.start, dtype=object)
                else:
                    before = self.acc[part].astype(object)
                risky.append((t, before))
        return risky

    def _exact_tensor(self, block: Contributions, coef: np.ndarray, t: int, before) -> None:
        """Re-sum tensor ``t`` of ``block`` with Python integers; OverflowError beyond int64."""
        part = self.layout.tensor_slice(t)
        total = before
        for row in np.flatnonzero(coef):
            total = total + int(coef[row]) * block.matrix[row, part].astype(object)
        low, high = (min(total), max(total)) if len(total) else (0, 0)
        if low < INT64_MIN or high > INT64_MAX:
            raise OverflowError(
                f"the sum of tensor {self.layout.paths[t]} does not fit int64: values in "
                f"[{low}, {high}]"
            )
        self.acc[part] = np.asarray(total, dtype=np.int64)
        self._bound[t] = max(-low, high)

    def _finish_scaled(self) -> tuple[State, np.ndarray, tuple]:
        """``finish`` without undoing :attr:`exponent`: the sum is ``acc * 2**exponent``."""
        if self._last is not None:
            block, self._last = self._last, None
            self._add(block, None, 1.0)
        if self.fresh:  # no block came (a round of zero clients): the sum is zeros
            self.acc.fill(0)
            self.fresh = False
        return (), self.acc, ()

    def finish(self) -> tuple[State, np.ndarray, tuple]:
        state, acc, measurements = self._finish_scaled()
        if self.exponent:
            with np.errstate(over="ignore"):
                np.ldexp(acc, self.exponent, out=acc)
            if not np.isfinite(acc).all():
                path = next(
                    self.layout.paths[t]
                    for t in range(self.layout.num_tensors)
                    if not np.isfinite(acc[self.layout.tensor_slice(t)]).all()
                )
                raise OverflowError(f"the sum of tensor {path} does not fit float64")
        return state, acc, measurements


def _overflow_exponent(block: Contributions) -> int:
    """A power of two that keeps ``sum_i coef[i] * |matrix[i]|`` of ``block`` below
    ``2**OVERFLOW_HEADROOM`` once the coefficients are divided by it."""
    rows = np.flatnonzero(block.active)
    largest = max(float(np.abs(block.matrix[row]).max(initial=0.0)) for row in rows)
    total = float(np.sum(block.coef[rows]))
    return max(1, math.frexp(largest)[1] + math.frexp(total)[1] - OVERFLOW_HEADROOM)
