"""Argument checks shared by aggkit's factories, processes and backends: one rule per concept.

Every public factory validates its arguments at construction, so that a bad parameter fails
where it was written, not rounds later inside ``next``. The rules live here once; a module that
needs one imports it instead of writing its own. Each check returns the normalised value (a
Python ``float``/``int``/``bool``) and raises ``TypeError`` for a value of the wrong kind and
``ValueError`` for one out of range, with a message that names the argument and the valid range.

Rules
-----
* real numbers (:func:`real`): ``numbers.Real`` but not ``bool``; always finite (NaN and
  infinities are rejected even where a range is open), then the given range;
* integers (:func:`integer`): ``numbers.Integral`` but not ``bool``, then the range;
* seeds (:func:`seed`): ``None`` or an integer ``>= 0``. A ``numpy.random.Generator`` is refused:
  a factory is immutable configuration, and a generator would be consumed by each
  ``initialize()``, so two processes of one factory would draw different keys;
* factories (:func:`factory`, :func:`unweighted_factory`): an inner unweighted factory defaults
  to :func:`aggkit.sum`;
* layouts (:func:`floating_layout`): aggregators that scale values need floating tensors;
* shapes (:func:`shape`): non-negative int dimensions (a float such as 2.5 is refused, not
  truncated) whose product, in bytes, fits int64 (so sizes and offsets never wrap);
* secret-sharing thresholds and dropout plans (:func:`sharing_threshold`, :func:`dropouts`).

Example
-------
>>> from aggkit import _checks
>>> _checks.real(0.5, "target_quantile", low=0.0, high=1.0)
0.5
>>> _checks.real(float("inf"), "clip", low=0.0, low_open=True)
Traceback (most recent call last):
...
ValueError: clip must be a finite number in (0, inf), got inf
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from aggkit.errors import InvalidUpdateError
from aggkit.kernels.limits import INT64_MAX

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aggkit.process import Factory
    from aggkit.structure import Layout

__all__ = [
    "MAX_GEOMETRIC_LEARNING_RATE",
    "array",
    "boolean",
    "clip_factors",
    "dropouts",
    "factory",
    "floating_layout",
    "integer",
    "learning_rate",
    "noise_multiplier",
    "offsets",
    "positive_total_weight",
    "real",
    "residues",
    "seed",
    "shape",
    "sharing_threshold",
    "unweighted_factory",
]

#: The largest learning rate of a geometric (multiplicative) estimate update. One round moves the
#: estimate by a factor of at most ``exp(learning_rate)``: at 10, about 22,000, already more than
#: the spread of norms an adaptive clip has to follow; beyond it a single round can throw the
#: estimate out of any meaningful range (``exp(2000)`` overflows a float64).
MAX_GEOMETRIC_LEARNING_RATE = 10.0


def _describe(value: float) -> str:
    """A bound as written in messages: ``2**k`` for large powers of two, else ``%g``."""
    if isinstance(value, int) and value > 2**16 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    if isinstance(value, int):
        return str(value)
    return f"{value:g}"


def _range_text(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if high is None:
        if low is None:
            return ""
        return f"{'>' if low_open else '>='} {_describe(low)}"
    if low is None:
        return f"{'<' if high_open else '<='} {_describe(high)}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"in {left}{_describe(low)}, {_describe(high)}{right}"


def _check_range(
    value: Any, name: str, low: Any, high: Any, low_open: bool, high_open: bool, what: str
) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(
            f"{name} must be {what} {_range_text(low, high, low_open, high_open)}, got {value}"
        )


def real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` in the given range.

    ``low``/``high`` bound it (inclusive unless ``low_open``/``high_open``). NaN and infinities
    are always rejected.

    Examples
    --------
    >>> real(3, "clip", low=0.0, low_open=True)
    3.0
    >>> real(True, "clip")
    Traceback (most recent call last):
    ...
    TypeError: clip must be a real number, got True
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        text = _range_text(low, math.inf if high is None else high, low_open, True)
        if low is None and high is None:
            text = ""
        raise ValueError(f"{name} must be a finite number{' ' + text if text else ''}, got {value}")
    _check_range(result, name, low, high, low_open, high_open, "a number")
    return result


def integer(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either bound optional).

    Examples
    --------
    >>> integer(np.int64(3), "bits", low=1, high=16)
    3
    >>> integer(2**63, "modulus", low=1, high=2**62)
    Traceback (most recent call last):
    ...
    ValueError: modulus must be an int in [1, 2**62], got 9223372036854775808
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    result = int(value)
    _check_range(result, name, low, high, False, False, "an int")
    return result


def shape(value: Any, itemsize: int, name: str = "TensorSpec shape") -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints) as a tuple of non-negative ``int`` dimensions whose
    element count times ``itemsize`` is at most ``2**63 - 1`` bytes.

    Examples
    --------
    >>> shape((2, 3), 4), shape(5, 4)
    ((2, 3), (5,))
    >>> shape((2.5,), 4)
    Traceback (most recent call last):
    ...
    TypeError: TensorSpec shape must be a tuple of ints, got (2.5,) (2.5 is not an int)
    """
    dims = (value,) if isinstance(value, numbers.Integral) else value
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}") from None
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, numbers.Integral)]
    if bad:
        raise TypeError(f"{name} must be a tuple of ints, got {value!r} ({bad[0]!r} is not an int)")
    dims = tuple(int(d) for d in dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{name} must have non-negative dimensions, got {dims}")
    count = math.prod(dims)
    if count * itemsize > INT64_MAX:
        raise ValueError(
            f"{name} {dims} holds {_describe(count)} elements of {itemsize} bytes; a tensor is at "
            "most 2**63 - 1 bytes"
        )
    return dims


def boolean(value: Any, name: str) -> bool:
    """``value`` itself when it is a ``bool`` (NumPy's ``bool_`` included)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def seed(value: Any, name: str = "seed") -> int | None:
    """``None`` or a non-negative ``int`` (see the module docstring for why not a Generator).

    Examples
    --------
    >>> seed(None), seed(7)
    (None, 7)
    """
    if value is None:
        return None
    if isinstance(value, np.random.Generator):
        raise TypeError(
            f"{name} must be None or a non-negative int, not a numpy Generator: a factory is "
            "immutable configuration and each initialize() would draw from the generator again; "
            f"pass an int, e.g. {name}=int(generator.integers(2**63))"
        )
    return integer(value, name, low=0)


def learning_rate(value: Any, name: str, *, geometric: bool, allow_zero: bool = False) -> float:
    """A learning rate of an adaptive estimate: finite, positive (or ``>= 0``), and at most
    :data:`MAX_GEOMETRIC_LEARNING_RATE` for a geometric update."""
    return real(
        value,
        name,
        low=0.0,
        low_open=not allow_zero,
        high=MAX_GEOMETRIC_LEARNING_RATE if geometric else None,
    )


def noise_multiplier(value: Any, name: str = "noise_multiplier") -> float:
    """A Gaussian DP noise multiplier: 0 (no privacy) or at least the sampler's floor
    (:data:`aggkit.kernels.limits.MIN_NOISE_MULTIPLIER`)."""
    from aggkit.kernels.limits import MIN_NOISE_MULTIPLIER

    value = real(value, name, low=0.0)
    if 0.0 < value < MIN_NOISE_MULTIPLIER:
        raise ValueError(
            f"{name} must be 0 (no privacy) or at least {MIN_NOISE_MULTIPLIER}, got {value}: "
            "below that the Gaussian sampler's bounded tails would let a release fall outside "
            "the neighbouring dataset's support with non-negligible probability "
            "(aggkit.kernels.limits.infinite_loss_bound); such a multiplier gives almost no "
            "privacy anyway"
        )
    return value


def factory(value: Any, name: str) -> Factory:
    """``value`` when it is an aggregation factory (weighted or not)."""
    from aggkit.process import Factory

    if not isinstance(value, Factory):
        raise TypeError(f"{name} must be an aggregation factory, got {value!r}")
    return value


def unweighted_factory(value: Any, name: str) -> Factory:
    """An unweighted aggregation factory; ``None`` gives the default, :func:`aggkit.sum`."""
    if value is None:
        from aggkit.sum import SumFactory

        return SumFactory()
    result = factory(value, name)
    if result.is_weighted:
        raise TypeError(
            f"{name} must be an unweighted aggregation factory, got the weighted {value!r}"
        )
    return result


def floating_layout(layout: Layout, who: str, *, kernel_floats: bool = False) -> None:
    """TypeError naming every tensor ``who`` cannot take: a non-floating one, or with
    ``kernel_floats`` (rules whose kernels read the tensors in their own dtype) any tensor that is
    not float32 or float64."""
    if kernel_floats:
        bad = [
            f"{p}: {s.dtype}"
            for p, s in zip(layout.paths, layout.specs, strict=True)
            if s.dtype not in (np.float32, np.float64)
        ]
        if bad:
            raise TypeError(f"{who} needs float32 or float64 tensors; got {', '.join(bad)}")
    elif not layout.is_floating:
        bad = [
            f"{p}: {s.dtype}"
            for p, s in zip(layout.paths, layout.specs, strict=True)
            if s.dtype.kind != "f"
        ]
        raise TypeError(f"{who} needs floating-point tensors; got {', '.join(bad)}")


def clip_factors(norms: np.ndarray, clip: float) -> np.ndarray:
    """Per-client factors that project a contribution of norm ``norms[i]`` onto the ball of
    radius ``clip``: ``clip / norm`` above it, 1 within it, 0 for a non-finite norm (a client
    holding NaN or Inf is dropped).

    Examples
    --------
    >>> clip_factors(np.array([0.5, 4.0, np.inf]), 2.0).tolist()
    [1.0, 0.5, 0.0]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = np.where(norms > clip, clip / norms, 1.0)
    factors[~np.isfinite(norms)] = 0.0
    return factors


def positive_total_weight(
    total: float, count: int, who: str, what: str, clients: str = "clients of the round"
) -> None:
    """Raise :class:`~aggkit.InvalidUpdateError` (on the weights) unless a round's total weight
    ``total`` over ``count`` clients is positive: a weighted rule ``who`` whose result ``what`` is
    a ratio by the total weight is undefined when every weight is 0 (and no client is to blame).
    ``clients`` says which clients the total is over (Multi-Krum: its selected clients).

    Examples
    --------
    >>> positive_total_weight(0.0, 3, "ak.geometric_median", "the weighted geometric median")
    Traceback (most recent call last):
    ...
    aggkit.errors.InvalidUpdateError: weight: ak.geometric_median: the weighted geometric median \
is undefined when the total weight is 0 (all 3 clients of the round have weight 0)
    """
    if not total > 0.0:
        raise InvalidUpdateError(
            f"{who}: {what} is undefined when the total weight is 0 "
            f"(all {count} {clients} have weight 0)",
            path="weight",
        )


def sharing_threshold(value: Any, name: str = "threshold") -> int | float | None:
    """A secret-sharing threshold: ``None`` (the default), an int ``>= 1`` (shares), or a float in
    ``(0, 1]`` (a fraction of the share holders)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an int or a float, got {value!r}")
    if isinstance(value, numbers.Integral):
        return integer(value, name, low=1)
    result = float(value)
    if not 0.0 < result <= 1.0:
        raise ValueError(f"a fractional {name} must be in (0, 1], got {value}")
    return result


def dropouts(value: Any, stages: Iterable[str], name: str = "dropouts") -> dict[str, Any]:
    """A dropout plan ``{stage: client indices or fraction}`` as ``{stage: frozenset | float}``.

    ``stages`` are the protocol's stage names; a fraction is in ``[0, 1]``, client indices are
    non-negative ints.
    """
    if value is None:
        return {}
    stages = tuple(stages)
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping {{stage: client indices or fraction}}")
    unknown = set(value) - set(stages)
    if unknown:
        raise ValueError(f"{name}: unknown stage(s) {sorted(map(str, unknown))}; stages: {stages}")
    plan: dict[str, Any] = {}
    for stage, spec in value.items():
        if isinstance(spec, float | np.floating):
            if not 0.0 <= spec <= 1.0:
                raise ValueError(
                    f"{name}: the fraction for {stage!r} must be in [0, 1], got {spec}"
                )
            plan[stage] = float(spec)
            continue
        if isinstance(spec, str | bytes) or not isinstance(spec, Collection):
            raise TypeError(
                f"{name}: stage {stage!r} takes client indices or a float fraction, got {spec!r}"
            )
        clients = []
        for u in spec:
            if isinstance(u, bool) or not isinstance(u, int | np.integer):
                raise TypeError(f"{name}: client indices must be ints, got {u!r} at {stage!r}")
            if u < 0:
                raise ValueError(f"{name}: client indices must be non-negative, got {u}")
            clients.append(int(u))
        plan[stage] = frozenset(clients)
    return plan


# -- kernel arguments ------------------------------------------------------------------------------
# Numba kernels do not check bounds: a coefficient vector longer than the matrix reads rows that do
# not exist, an output shorter than its input is written past its end, and either can kill the
# interpreter. Every kernel entry point (importable, so a trust boundary) checks its arrays with
# these first: a malformed call is a TypeError (kind or dtype) or ValueError (shape, layout, range)
# naming the argument. They cost a few attribute reads, nothing per element (``offsets`` reads the
# T + 1 boundaries once). Arrays must be C-contiguous: every kernel is compiled for contiguous
# arrays, and a strided view would compile (for seconds) a second, slower copy of it.


def array(
    value: Any,
    name: str,
    *,
    dtype: Any,
    shape: tuple[int | None, ...] | None = None,
    ndim: int | None = None,
    writeable: bool = False,
    contiguous: bool = True,
) -> np.ndarray:
    """``value`` if it is an ndarray of ``dtype`` (one dtype or a tuple of them) with ``shape``
    (None entries match any length) or ``ndim`` dimensions, C-contiguous (unless
    ``contiguous=False``, for NumPy code) and writeable if asked."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    # A round makes some 30 of these checks: compare the dtype with what the caller gave (a
    # dtype equals its type and its name) before building anything, and loop instead of
    # building a generator.
    allowed = dtype if isinstance(dtype, tuple) else (dtype,)
    if value.dtype not in allowed:
        names = " or ".join(str(np.dtype(d)) for d in allowed)
        raise TypeError(f"{name} must be {names}, got {value.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {value.shape}")
    if shape is not None:
        for got, want in zip(value.shape, shape, strict=True):
            if want is not None and got != want:
                want = tuple("any" if d is None else d for d in shape)
                raise ValueError(
                    f"{name} must have shape {want}, got {value.shape}".replace("'", "")
                )
    if contiguous and not value.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray makes a copy)")
    if writeable and not value.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return value


def residues(values: np.ndarray, modulus: int, name: str) -> np.ndarray:
    """``values`` (an integer array) if every entry is in ``[0, modulus)``: the range check of
    words modulo ``modulus`` (secure aggregation's inputs and masked words), one pass each for
    the minimum (signed dtypes only) and the maximum.

    >>> residues(np.array([0, 6], np.uint32), 7, "masked").tolist()
    [0, 6]
    >>> residues(np.array([0, 7], np.uint32), 7, "masked")
    Traceback (most recent call last):
    ...
    ValueError: masked must be in [0, 7), got values in [0, 7]
    """
    if values.size and (
        int(values.max()) >= modulus or (values.dtype.kind == "i" and int(values.min()) < 0)
    ):
        low, high = int(values.min()), int(values.max())
        raise ValueError(f"{name} must be in [0, {modulus}), got values in [{low}, {high}]")
    return values


def offsets(value: Any, size: int, name: str = "offsets") -> np.ndarray:
    """Tensor boundaries as ``int64[T + 1]``: from 0, non-decreasing, ending at ``size``."""
    bounds = np.asarray(value)
    if bounds.ndim != 1 or bounds.size < 1 or bounds.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array, got {bounds.dtype}{bounds.shape}")
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    if bounds[0] != 0 or bounds[-1] != size or (np.diff(bounds) < 0).any():
        raise ValueError(
            f"{name} must rise from 0 to {size} (the columns), got {bounds.tolist()[:8]}"
            + ("..." if bounds.size > 8 else "")
        )
    return bounds
