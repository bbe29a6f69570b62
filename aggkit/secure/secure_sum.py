"""``ak.secure_sum``: a sum the server computes through secure aggregation.

Secure aggregation adds integers: the server learns the sum of the clients' integer vectors and
nothing else. So every client clips its value into a range known in advance, ``[lower, upper]``,
and maps it to integers; the server decodes the integer sum.

* **Integer mode** (integer bounds, integer tensors): a client sends ``clip(x, lo, hi) - lo`` on
  the secure channel with bit width ``b = ceil(log2(hi - lo + 1))``; the server adds ``n * lo``,
  ``n`` being the number of clients (a 1-bit secure sum of ones). The sum is exact.
* **Float mode** (float or estimated bounds, float tensors): a client discretizes
  ``clip(x, lo, hi)`` to 32 bits, ``q = sat64(rint(x * s)) - sat64(rint(lo * s))`` with
  ``s = (2**32 - 1) / (hi - lo)``, and the server decodes
  ``(sum q + n * sat64(rint(lo * s))) * (hi - lo) / (2**32 - 1)``. Each client's value is off by
  at most half a step ``(hi - lo) / (2**32 - 1)``, so about 9 significant digits of the range;
  a zero decodes to exactly zero whatever the range. ``secure_sum(..., code_bits=b)`` uses
  ``b``-bit codes instead (``2**b - 1`` in place of ``2**32 - 1``): coarser, but a sum of ``K``
  clients then needs ``b + ceil(log2 K)`` bits on a secure aggregation protocol's wire.

Bounds are constants, or estimation processes that adapt between rounds: one process gives the
symmetric range ``[-R, R]`` and is fed each client's ``max(|min|, |max|)``; two processes give the
upper and lower bounds and are fed each client's maximum and minimum (before clipping).

Every sum goes through a secure channel (:mod:`aggkit.channels`): the values (32-bit, or ``b``-bit
in integer mode) and, as one 1-bit sum per client ``[1, clipped above, clipped below]``, the
number of clients and the clipping counts. With the default in-process backend the clipping,
discretization and summation happen in one pass over the client matrix
(:mod:`aggkit.kernels.discretize`).

A client whose contribution is ``0 * x`` (a coefficient of 0, e.g. zeroed by ``ak.zeroing``)
holds exact zeros, as in TFF where zeroing replaces the value by zeros: it is counted in ``n`` and
its zeros are clipped into the range like any value. Non-finite values raise
:class:`~aggkit.InvalidUpdateError` naming the client and tensor (wrap the sum in ``ak.zeroing``
to drop such clients instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggkit import _buffers, _checks, channels, kernels
from aggkit.kernels.limits import CODE_BITS, INT64_MAX, INT64_MIN, MAX_BITWIDTH, MAX_CODE
from aggkit.process import (
    AggregationProcess,
    Contributions,
    EstimationProcess,
    Factory,
    Round,
    State,
)
from aggkit.structure import Layout

__all__ = [
    "MAX_CODE",
    "FloatCode",
    "SecureSumFactory",
    "SecureSumProcess",
    "dequantize",
    "quantize",
    "secure_quantized_sum",
    "secure_sum",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_PRIMITIVE_DTYPES = (np.dtype(np.int32), np.dtype(np.int64), *_FLOAT_DTYPES)
#: The smallest float range ``hi - lo`` whose code scale ``MAX_CODE / (hi - lo)`` is finite.
MIN_FLOAT_SPAN = MAX_CODE / float(np.finfo(np.float64).max)

Bound = int | float | np.integer | np.floating | EstimationProcess


# -- the 32-bit float code (docs/design.md, "Secure sums of floats") -----------------------------


def _sat64(value: float) -> int:
    """``value`` rounded half to even and saturated to int64 (TF's ``saturate_cast(round(.))``)."""
    rounded = float(np.rint(value))
    if rounded >= 2.0**63:
        return INT64_MAX
    if rounded < -(2.0**63):
        return INT64_MIN
    return int(rounded)


@dataclass(frozen=True)
class FloatCode:
    """How floats in ``[lo, hi]`` map to 32-bit integers and back.

    Build it with :meth:`of`: the bounds are taken in the value dtype, then ``span = hi - lo``,
    ``scale = (2**32 - 1) / span`` (0 when ``span == 0``) and ``shift = sat64(rint(lo * scale))``
    are computed in float64.

    Difference from TFF, on purpose: TFF computes ``hi - lo`` in the value dtype. In float32 that
    difference can be off by half a float32 unit of the span, and then the code of ``hi`` exceeds
    ``2**32 - 1`` and is clipped, so a client at the upper bound loses up to ``2**-25`` of the
    range, far more than the half step (``2**-33`` of the range) the discretization promises.
    In float64 the difference of two float32 bounds is exact (unless their magnitudes are more
    than ``2**29`` apart) and every client stays within one step.

    Examples
    --------
    >>> code = FloatCode.of(-1.0, 1.0, np.float32)
    >>> code.scale == (2**32 - 1) / 2, code.shift
    (True, -2147483648)
    >>> code.decode(np.array([2147483648, 4294967295]), 1).tolist()  # codes of 0 and of 1
    [0.0, 0.9999999997671694]
    """

    lo: float
    hi: float
    span: float
    scale: float
    shift: int
    #: The largest code, ``2**bits - 1`` (``bits`` is 32 unless :meth:`of` was given fewer).
    max_code: int = MAX_CODE

    @classmethod
    def of(cls, lo: float, hi: float, dtype: Any, bits: int = CODE_BITS) -> FloatCode:
        """The code of ``[lo, hi]`` for ``dtype`` values, ``bits`` (1 to 32) bits wide."""
        max_code = (1 << _checks.integer(bits, "bits", low=1, high=CODE_BITS)) - 1
        dtype = np.dtype(dtype)
        lo_d, hi_d = dtype.type(lo), dtype.type(hi)
        with np.errstate(over="ignore", invalid="ignore"):
            span = float(hi_d) - float(lo_d)
        if not (np.isfinite(lo_d) and np.isfinite(hi_d) and np.isfinite(span)):
            raise ValueError(
                f"the bounds [{lo}, {hi}] are not finite, or too far apart, in {dtype}"
            )
        if span < 0:
            raise ValueError(
                f"the lower bound {float(lo_d)} is above the upper bound {float(hi_d)}"
            )
        if 0 < span < MIN_FLOAT_SPAN:
            raise ValueError(
                f"the bounds [{lo}, {hi}] are too close: upper - lower must be 0 or at least "
                f"{MIN_FLOAT_SPAN:.3g} (else the 32-bit code's scale overflows)"
            )
        scale = max_code / span if span else 0.0
        shift = _sat64(float(lo_d) * scale)
        return cls(float(lo_d), float(hi_d), span, scale, shift, max_code)

    @property
    def bits(self) -> int:
        """The code's width in bits."""
        return self.max_code.bit_length()

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The ``int64`` codes of float ``values`` (clipped into ``[lo, hi]`` first)."""
        return kernels.discretize.encode_float_numpy(
            values, self.lo, self.hi, self.scale, self.shift, self.max_code
        )

    def decode(
        self,
        total: np.ndarray,
        num_summands: int,
        *,
        checked: bool = False,
        denominator: float = 1.0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The float64 sum that ``num_summands`` clients' codes adding up to ``total`` encode.

        ``checked``: first refuse a ``total`` outside ``[0, max_code * num_summands]``
        (ValueError), with its range read in the decoding pass. ``denominator`` and ``out`` (a
        float32 or float64 vector): the sum divided by ``denominator`` and rounded to ``out``'s
        dtype in the same pass, a mean's last step (the bits of ``np.divide`` then ``astype``).
        """
        total = np.asarray(total, dtype=np.int64)
        offset = num_summands * self.shift
        step = self.span / self.max_code
        if self.span and abs(offset) + self.max_code * num_summands <= INT64_MAX:
            decoded, low, high = kernels.discretize.decode_sum(
                np.ascontiguousarray(total).reshape(-1),
                offset,
                step,
                denominator=denominator,
                out=None if out is None else out.reshape(-1),
            )
            if checked and total.size:
                _check_range(low, high, num_summands, self.max_code)
            return decoded.reshape(total.shape)
        if checked:
            _check_total(total, num_summands, self.max_code)
        if not self.span:
            decoded = np.full(total.shape, num_summands * self.lo)
        else:  # Only for ranges tiny next to their offset: Python integers.
            exact = (total.astype(object) + offset).astype(np.float64)
            decoded = np.multiply(exact, step, dtype=np.float64)
        if denominator == 1.0 and out is None:
            return decoded
        out = np.empty(decoded.shape) if out is None else out.reshape(decoded.shape)
        return kernels.divide_cast.divide_cast_numpy(decoded, denominator, out)


def _check_total(total: np.ndarray, num_summands: int, max_code: int = MAX_CODE) -> None:
    """The server's check that a sum of ``num_summands`` codes is in ``[0, max_code * n]``."""
    if total.size:
        _check_range(int(total.min()), int(total.max()), num_summands, max_code)


def _check_range(low: int, high: int, num_summands: int, max_code: int) -> None:
    if low < 0 or high > max_code * num_summands:
        raise ValueError(
            f"a sum of {num_summands} {max_code.bit_length()}-bit codes must be in "
            f"[0, {max_code * num_summands}], got values in [{low}, {high}]"
        )


# -- the primitive (TFF's secure_quantized_sum) --------------------------------------------------


def _primitive_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _PRIMITIVE_DTYPES:
        raise TypeError(
            f"secure quantized sums support int32, int64, float32 and float64 values, not {dtype}"
        )
    return dtype


def _int_divisor(lo: int, hi: int, dtype: np.dtype) -> int:
    return 1 if dtype == np.int32 else (hi - lo) // MAX_CODE + 1


def _bounds_for(dtype: np.dtype, lower_bound: Any, upper_bound: Any) -> tuple:
    if dtype.kind == "f":
        return lower_bound, upper_bound
    lo, hi = int(lower_bound), int(upper_bound)
    info = np.iinfo(dtype)
    if not info.min <= lo <= info.max or not info.min <= hi <= info.max:
        raise ValueError(f"bounds [{lo}, {hi}] do not fit {dtype}")
    return lo, hi


def quantize(values: Any, lower_bound: Any, upper_bound: Any) -> np.ndarray:
    """The client side of a secure quantized sum: ``values`` as codes in ``[0, 2**32 - 1]``.

    The dtype of ``values`` decides: int32 codes are ``clip(x) - lo`` (exact); int64 codes are
    ``(clip(x) - lo) // f`` with ``f = (hi - lo) // (2**32 - 1) + 1`` (exact when ``f == 1``);
    float codes are as in :class:`FloatCode`.

    Raises
    ------
    ValueError
        ``lower_bound > upper_bound``.
    TypeError
        ``values`` is not int32, int64, float32 or float64.

    Examples
    --------
    >>> quantize(np.array([-2.0, -1.0, 1.0, 2.0], np.float32), -1.0, 1.0)
    array([         0,          0, 4294967295, 4294967295])
    >>> quantize(np.array([-1, 0, 5], np.int32), 1, 1)
    array([0, 0, 0])
    """
    values = np.asarray(values)
    dtype = _primitive_dtype(values.dtype)
    lo, hi = _bounds_for(dtype, lower_bound, upper_bound)
    if lo > hi:
        raise ValueError(f"lower_bound {lower_bound} must not exceed upper_bound {upper_bound}")
    if dtype.kind == "f":
        return FloatCode.of(lo, hi, dtype).encode(values)
    return kernels.discretize.encode_int_numpy(values, lo, hi, _int_divisor(lo, hi, dtype))


def dequantize(
    total: Any, num_summands: int, lower_bound: Any, upper_bound: Any, dtype: Any
) -> np.ndarray:
    """The server side of a secure quantized sum: the sum of ``num_summands`` clients' values
    whose codes (from :func:`quantize`) add up to ``total``, in ``dtype``.

    Raises
    ------
    ValueError
        ``total`` is outside ``[0, (2**32 - 1) * num_summands]``.
    OverflowError
        An integer sum does not fit ``dtype`` (integers never wrap).

    Examples
    --------
    >>> dequantize(np.array([2**32 - 1]), 2, 4.0, 20.0, np.float32)
    array([24.], dtype=float32)
    """
    dtype = _primitive_dtype(dtype)
    total = np.asarray(total, dtype=np.int64)
    num_summands = int(num_summands)
    _check_total(total, num_summands)
    lo, hi = _bounds_for(dtype, lower_bound, upper_bound)
    if dtype.kind == "f":
        return FloatCode.of(lo, hi, dtype).decode(total, num_summands).astype(dtype)
    divisor = _int_divisor(lo, hi, dtype)
    shifted = total.astype(object) * divisor + num_summands * lo
    info = np.iinfo(dtype)
    if shifted.size and (min(shifted.flat) < info.min or max(shifted.flat) > info.max):
        raise OverflowError(
            f"the sum of {num_summands} values does not fit {dtype}: values in "
            f"[{min(shifted.flat)}, {max(shifted.flat)}]"
        )
    return shifted.astype(dtype)


def secure_quantized_sum(values: Any, lower_bound: Any, upper_bound: Any) -> np.ndarray:
    """The sum over clients of ``values`` (``[K, ...]``, one client per row) computed through a
    32-bit secure sum: :func:`quantize`, secure channel, :func:`dequantize`.

    The number of clients goes through a 1-bit secure sum.

    Examples
    --------
    >>> secure_quantized_sum(np.array([[-(2**31)], [2**31 - 1]], np.int32), -(2**31), 2**31 - 1)
    array([-1], dtype=int32)
    >>> float(secure_quantized_sum(np.array([1e6, 1e5, 1e4, 1000, 1], np.float32), -1e6, 1e6))
    1111001.0
    """
    values = np.asarray(values)
    if values.ndim == 0:
        raise ValueError("values must hold one row per client, got a scalar")
    dtype = _primitive_dtype(values.dtype)
    codes = quantize(values, lower_bound, upper_bound).reshape(len(values), -1)
    total = channels.secure_sum_bitwidth(codes, CODE_BITS, owner="secure_quantized_sum values")
    ones = np.ones((len(values), 1), dtype=np.int64)
    count = int(channels.secure_sum_bitwidth(ones, 1, owner="secure_quantized_sum count")[0])
    out = dequantize(total, count, lower_bound, upper_bound, dtype)
    return out.reshape(values.shape[1:])


# -- the factory ---------------------------------------------------------------------------------


def _bound_kind(value: Any, name: str) -> str:
    if isinstance(value, EstimationProcess):
        return "process"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, a float or an estimation process, got {value!r}")
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    raise TypeError(f"{name} must be an int, a float or an estimation process, got {value!r}")


@dataclass(frozen=True)
class SecureSumFactory(Factory):
    """Unweighted factory of :class:`SecureSumProcess`; build it with :func:`secure_sum`."""

    upper_bound: Bound
    lower_bound: Bound | None = None
    #: Float mode: bits per client code (1 to 32).
    code_bits: int = CODE_BITS
    #: ``"int"`` for integer bounds, ``"float"`` for float bounds or estimation processes (part of
    #: the value: ``secure_sum(1) != secure_sum(1.0)``).
    mode: str = field(init=False, repr=False)

    is_weighted = False

    def __post_init__(self) -> None:
        kind = _bound_kind(self.upper_bound, "upper_bound")
        object.__setattr__(self, "mode", "int" if kind == "int" else "float")
        if self.lower_bound is not None and _bound_kind(self.lower_bound, "lower_bound") != kind:
            raise TypeError(
                "upper_bound and lower_bound must be of one kind (both ints, both floats or "
                f"both estimation processes), got {self.upper_bound!r} and {self.lower_bound!r}"
            )
        bits = _checks.integer(self.code_bits, "code_bits", low=1, high=CODE_BITS)
        object.__setattr__(self, "code_bits", bits)
        if kind == "int" and bits != CODE_BITS:
            raise ValueError(
                f"code_bits applies to float bounds (integer bounds set their own width), got "
                f"{bits} with integer bounds"
            )
        if kind == "process":
            return
        cast = int if kind == "int" else float
        upper = cast(self.upper_bound)
        lower = None if self.lower_bound is None else cast(self.lower_bound)
        if kind == "float" and not (
            math.isfinite(upper) and (lower is None or math.isfinite(lower))
        ):
            raise ValueError(f"bounds must be finite, got {upper!r} and {lower!r}")
        if kind == "float":
            span = upper - (-upper if lower is None else lower)
            if not MIN_FLOAT_SPAN <= span <= np.finfo(np.float64).max:
                raise ValueError(
                    f"upper_bound - lower_bound must be in [{MIN_FLOAT_SPAN:.3g}, "
                    f"{np.finfo(np.float64).max:.3g}] (the range of the 32-bit code), got {span}"
                )
        if lower is None:
            if upper <= 0:
                raise ValueError(
                    f"upper_bound must be positive when lower_bound is omitted (the range is "
                    f"[-upper_bound, upper_bound]), got {upper!r}"
                )
        elif upper <= lower:
            raise ValueError(f"upper_bound {upper!r} must be larger than lower_bound {lower!r}")
        if kind == "int":
            lo = -upper if lower is None else lower
            if not INT64_MIN <= lo <= upper <= INT64_MAX:
                raise ValueError(f"integer bounds must fit int64, got [{lo}, {upper}]")
            if (upper - lo).bit_length() > MAX_BITWIDTH:
                raise ValueError(
                    f"upper_bound - lower_bound must be below 2**{MAX_BITWIDTH}, got {upper - lo}"
                )
        object.__setattr__(self, "upper_bound", upper)
        object.__setattr__(self, "lower_bound", lower)

    def _create(self, layout: Layout) -> SecureSumProcess:
        return SecureSumProcess(layout, self)


def secure_sum(
    upper_bound: Bound, lower_bound: Bound | None = None, *, code_bits: int = CODE_BITS
) -> SecureSumFactory:
    """An unweighted aggregator summing client values through secure aggregation.

    Values are clipped into ``[lower_bound, upper_bound]`` and summed on secure channels only.
    Integer bounds sum integer tensors exactly; float bounds or estimation processes sum float
    tensors discretized to ``code_bits`` bits, 32 by default (see the module docstring).

    Parameters
    ----------
    upper_bound : int, float or EstimationProcess
        The upper clipping bound, or an estimation process reporting it each round. Alone, it
        bounds the absolute value: the range is ``[-upper_bound, upper_bound]`` (a constant must
        then be positive; a process is fed each client's ``max(|min|, |max|)``).
    lower_bound : same kind as ``upper_bound``, optional
        The lower bound (a process is fed each client's minimum, and the upper one each client's
        maximum).
    code_bits : int
        Float mode: the width of each client's code, 1 to 32 (default 32). Each value is off by
        at most half a step ``(hi - lo) / (2**code_bits - 1)``; in exchange a sum of ``K``
        clients needs ``code_bits + ceil(log2 K)`` bits, which is what a secure aggregation
        protocol sends per value (22 bits over 20 clients fit 32-bit words, 32 bits need 37).
        Integer bounds take their width from the bounds: ``code_bits`` must stay 32 there.

    Returns
    -------
    SecureSumFactory
        Its processes have state ``()``, the process's state, or ``(upper_state, lower_state)``,
        and measurements ``{"secure_upper_clipped_count", "secure_lower_clipped_count",
        "secure_upper_threshold", "secure_lower_threshold"}``: the clients with some value above
        (below) the bound, and the bounds used. A value equal to a bound is not clipped.

    Raises
    ------
    TypeError
        A bound is of another kind, or the bounds are of different kinds; at ``create``, the
        template mixes dtypes, or its dtype does not suit the mode (integer bounds need integer
        tensors; float bounds need float32 or float64 tensors).
    ValueError
        ``upper_bound <= lower_bound``, a lone constant ``upper_bound <= 0``, a non-finite float
        bound, integer bounds beyond int64 or further apart than ``2**62``, ``code_bits``
        outside 1..32, or other than 32 with integer bounds.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.secure.secure_sum import secure_sum
    >>> process = secure_sum(1.0, -1.0).create(ak.TensorSpec((), np.float32))
    >>> out = process.next(process.initialize(), [-2.5, -0.5, 0.0, 1.0, 1.5, 2.5])
    >>> print(out.result)
    1.5
    >>> counts = out.measurements
    >>> counts["secure_upper_clipped_count"], counts["secure_lower_clipped_count"]
    (2, 1)
    """
    return SecureSumFactory(upper_bound, lower_bound, code_bits)


# -- the process ---------------------------------------------------------------------------------


def _single_dtype(layout: Layout, mode: str) -> np.dtype:
    if layout.num_tensors == 0:
        raise TypeError("secure_sum needs a template with at least one tensor")
    dtypes = sorted({str(s.dtype) for s in layout.specs})
    if len(dtypes) != 1:
        raise TypeError(f"secure_sum needs tensors of a single dtype, got {', '.join(dtypes)}")
    dtype = layout.specs[0].dtype
    if mode == "int" and dtype.kind not in "iu":
        raise TypeError(
            f"secure_sum with integer bounds sums integer tensors, got {dtype} (use float bounds "
            "for floating-point tensors)"
        )
    if mode == "float" and dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"secure_sum with float bounds sums float32 or float64 tensors, got {dtype}"
            + (" (use integer bounds for integer tensors)" if dtype.kind in "iu" else "")
        )
    return dtype


class SecureSumProcess(AggregationProcess):
    """Process of :func:`secure_sum`."""

    is_weighted = False

    def __init__(self, layout: Layout, factory: SecureSumFactory):
        super().__init__(layout)
        self.mode = factory.mode
        self.code_bits = factory.code_bits
        self.dtype = _single_dtype(layout, self.mode)
        self.upper = factory.upper_bound
        self.lower = factory.lower_bound
        self.adaptive = isinstance(self.upper, EstimationProcess)
        if self.adaptive:
            self.stats_needed = frozenset({"linf"} if self.lower is None else {"minmax"})
        #: ``bool[T]``: which tensors hold values (the others have no minimum or maximum).
        self.nonempty_tensors = np.array([s.size > 0 for s in layout.specs])

    def initialize(self) -> State:
        if not self.adaptive:
            return ()
        if self.lower is None:
            return self.upper.initialize()
        return (self.upper.initialize(), self.lower.initialize())

    def bounds(self, state: State) -> tuple[Any, Any]:
        """The ``(lower, upper)`` bounds a round from ``state`` clips to, in the value dtype."""
        if self.mode == "int":
            return (-self.upper if self.lower is None else self.lower), self.upper
        cast = self.dtype.type
        if not self.adaptive:
            lo = -self.upper if self.lower is None else self.lower
            return float(cast(lo)), float(cast(self.upper))
        if self.lower is None:
            hi = float(cast(self.upper.report(state)))
            lo = -hi
        else:
            hi = float(cast(self.upper.report(state[0])))
            lo = float(cast(self.lower.report(state[1])))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(
                f"secure_sum: the bound estimates give the range [{lo}, {hi}] in {self.dtype}; "
                "it must be finite with lower <= upper"
            )
        return lo, hi

    def begin_round(self, state: State) -> Round:
        lo, hi = self.bounds(state)
        return _SecureSumRound(self, state, lo, hi)

    def update_state(self, state: State, minimum: np.ndarray, maximum: np.ndarray) -> State:
        """The bound processes' new state after seeing each client's minimum and maximum."""
        if not self.adaptive:
            return ()
        if self.lower is None:
            return self.upper.next(state, np.maximum(np.abs(minimum), np.abs(maximum)))
        return (self.upper.next(state[0], maximum), self.lower.next(state[1], minimum))


def _int_result(total: np.ndarray, offset: int, layout: Layout) -> np.ndarray:
    """``total + offset`` (the sum of the codes plus ``num * lo``) as int64, exactly.

    OverflowError when a sum does not fit int64 (narrower tensors are checked against their own
    dtype when the result is unflattened): integer sums never wrap.
    """
    if total.size == 0:
        return total.astype(np.int64)
    low, high = int(total.min()) + offset, int(total.max()) + offset
    if low < INT64_MIN or high > INT64_MAX:
        exact = total.astype(object) + offset
        path = next(
            layout.paths[t]
            for t in range(layout.num_tensors)
            if any(not INT64_MIN <= v <= INT64_MAX for v in exact[layout.tensor_slice(t)])
        )
        raise OverflowError(
            f"the secure sum of tensor {path} does not fit int64: values in [{low}, {high}]"
        )
    # Within int64: the two's-complement sum of the uint64 views is exact.
    return (total.view(np.uint64) + np.uint64(offset % 2**64)).view(np.int64)


class _SecureSumRound(Round):
    owns_result = True  # decoding writes a new array: a mean divides it in place

    def __init__(self, process: SecureSumProcess, state: State, lo: Any, hi: Any):
        self.process = process
        self.state = state
        self.lo, self.hi = lo, hi
        size = process.layout.size
        if process.mode == "int":
            self.code = None
            self.bitwidth = max(1, (hi - lo).bit_length())
        else:
            self.code = FloatCode.of(lo, hi, process.dtype, process.code_bits)
            self.bitwidth = process.code_bits
        self.values = channels.SecureChannelSum(
            size, bitwidth=self.bitwidth, owner="secure_sum values"
        )
        # One 1-bit vector per client: [1, clipped above, clipped below].
        self.counts = channels.SecureChannelSum(3, bitwidth=1, owner="secure_sum counts")
        self.minimum: list[np.ndarray] = []
        self.maximum: list[np.ndarray] = []

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        k = block.num_clients
        discretize = kernels.discretize
        matrix, coef = block.matrix, block.coef
        if self.code is None:
            if not np.isin(coef, (0.0, 1.0)).all():
                raise TypeError(
                    "secure_sum of integer values takes coefficients 0 or 1 only (integer "
                    "values cannot be scaled)"
                )
            args = (self.lo, self.hi, 1)
            encode_rows, fused_sum = (
                discretize.discretize_rows_int_numpy,
                discretize.discretize_sum_int,
            )
            options = {}
        else:
            c = self.code
            args = (c.lo, c.hi, c.scale, c.shift)
            options = {"max_code": c.max_code}
            encode_rows, fused_sum = discretize.discretize_rows_numpy, discretize.discretize_sum
        if self.values.fused:
            self.values.add_accumulated(k)
            flags = fused_sum(matrix, coef, *args, self.values.accumulator, **options)
        else:
            flags = discretize.clip_flags_numpy(matrix, coef, self.lo, self.hi)
        bad = np.flatnonzero(flags[:, 2])
        if bad.size:
            raise block.nonfinite_error(int(bad[0]))
        if not self.values.fused:
            self.values.add(encode_rows(matrix, coef, *args, **options))
        per_client = np.ones((k, 3), dtype=np.int64)
        per_client[:, 1:] = flags[:, :2] > 0
        self.counts.add(per_client)
        if self.process.adaptive:
            self._observe(block)

    def _observe(self, block: Contributions) -> None:
        """Each client's minimum and maximum, before clipping, for the bound processes."""
        if self.process.lower is None:
            linf = block.norms(np.inf)  # = max(|min|, |max|) of the contribution
            self.minimum.append(-linf)
            self.maximum.append(linf)
            return
        low, high = block.tensor_min_max()
        nonempty = self.process.nonempty_tensors
        if not nonempty.any():
            self.minimum.append(np.zeros(block.num_clients))
            self.maximum.append(np.zeros(block.num_clients))
            return
        low, high = low[:, nonempty].min(axis=1), high[:, nonempty].max(axis=1)
        # The statistics pass gives NaN for rows holding Inf (NaN rows were refused already):
        # such a row's minimum or maximum is the infinity itself.
        for row in np.flatnonzero(np.isnan(low) | np.isnan(high)):
            with np.errstate(invalid="ignore", over="ignore"):
                values = block.coef[row] * block.matrix[row].astype(np.float64)
            low[row], high[row] = values.min(), values.max()
        self.minimum.append(low)
        self.maximum.append(high)

    def finish(self) -> tuple[State, np.ndarray, dict]:
        return self._finish()

    def finish_divided(self, denominator: float, dtype: np.dtype) -> tuple[State, np.ndarray, dict]:
        """A float code decodes, divides and rounds to ``dtype`` in one pass (the bits of
        :func:`aggkit.process.divide`); an integer sum divides its result as any round does."""
        dtype = np.dtype(dtype)
        if self.code is None or dtype not in (np.float32, np.float64):
            return super().finish_divided(denominator, dtype)
        return self._finish(denominator, _buffers.empty(self.process.layout.size, dtype))

    def _finish(
        self, denominator: float = 1.0, out: np.ndarray | None = None
    ) -> tuple[State, np.ndarray, dict]:
        total = self.values.finish()
        num, above, below = (int(v) for v in self.counts.finish())
        if self.code is None:
            result = _int_result(total, num * self.lo, self.process.layout)
        else:
            result = self.code.decode(total, num, checked=True, denominator=denominator, out=out)
        process = self.process
        if process.adaptive:
            minimum = np.concatenate([np.zeros(0), *self.minimum])
            maximum = np.concatenate([np.zeros(0), *self.maximum])
            new_state = process.update_state(self.state, minimum, maximum)
        else:
            new_state = ()
        measurements = {
            "secure_upper_clipped_count": above,
            "secure_lower_clipped_count": below,
            "secure_upper_threshold": self.hi,
            "secure_lower_threshold": self.lo,
        }
        return new_state, result, measurements
