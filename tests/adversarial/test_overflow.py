"""Issue 20, items 2, 3 and 5: nothing wraps, overflows or gets clipped silently.

Each test names the finding it pins down. Integer aggregates either come out exact or raise; a
weighted mean that is representable in the template's dtype is returned, whatever the weights;
``ak.secure_sum`` refuses +-Inf as it refuses NaN.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import aggkit as ak
from aggkit.errors import InvalidUpdateError

T = ak.TensorSpec


def _next(factory, spec, values, weights=None):
    process = factory.create(spec)
    state = process.initialize()
    if weights is None:
        return process.next(state, values).result
    return process.next(state, values, weights).result


# -- item 2: integers never wrap -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "value", "count"),
    [(np.int32, 2**31 - 1, 2), (np.int8, 100, 3), (np.int64, 2**62, 4), (np.uint8, 200, 2)],
)
def test_integer_sum_that_does_not_fit_raises(dtype, value, count):
    with pytest.raises(OverflowError, match=r"<root>.*does not fit"):
        _next(ak.sum(), T((), dtype), [dtype(value)] * count)


def test_integer_sum_that_fits_is_exact_even_when_int64_partials_would_wrap():
    # 2**62 * 2 - 2**62 * 2 = 0 fits, and so does every partial sum in exact arithmetic here
    values = [np.int64(2**62), np.int64(2**62 - 1), np.int64(-(2**62)), np.int64(-(2**62))]
    assert int(_next(ak.sum(), T((), np.int64), values)) == -1
    values = [np.int64(2**62)] * 3 + [np.int64(-(2**62))] * 3
    assert int(_next(ak.sum(), T((), np.int64), values)) == 0


def test_integer_sum_exact_against_python_integers():
    rng = np.random.default_rng(0)
    values = rng.integers(-(2**25), 2**25, size=(50, 7)).astype(np.int32)
    values[:, 0] = 2**31 - 1  # a column at the edge: 50 * (2**31 - 1) does not fit int32
    values[::2, 0] = -(2**31)  # ... but its alternating sum does
    got = _next(ak.sum(), T((7,), np.int32), list(values))
    assert got.tolist() == [sum(int(v) for v in values[:, j]) for j in range(7)]


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (np.int32, 2**40),
        (np.int32, -(2**31) - 1),
        (np.uint8, -1),
        (np.uint32, 2**32),
        (np.int8, 128),
    ],
)
def test_python_int_that_does_not_fit_the_template_is_an_invalid_update(dtype, value):
    with pytest.raises(InvalidUpdateError, match=r"client 1, tensor <root>.*does not fit"):
        _next(ak.sum(), T((), dtype), [0, value])


def test_python_float_that_overflows_the_template_dtype_is_an_invalid_update():
    with pytest.raises(InvalidUpdateError, match=r"client 0, tensor \['w'\].*does not fit"):
        _next(ak.sum(), {"w": T((2,), np.float32)}, [{"w": [1e40, 0.0]}])


def test_client_batch_with_values_outside_a_narrow_integer_tensor_is_an_invalid_update():
    layout = ak.Layout({"a": T((2,), np.int8), "b": T((), np.int64)})
    batch = ak.ClientBatch(np.array([[1, 2, 3], [1, 300, 5]], np.int64), layout)
    process = ak.sum().create(layout)
    with pytest.raises(
        InvalidUpdateError, match=r"client 1, tensor \['a'\].*does not fit the template's int8"
    ):
        process.next((), batch)


def test_secure_sum_of_integers_does_not_wrap():
    with pytest.raises(OverflowError, match="does not fit int32"):
        _next(ak.secure_sum(2**31 - 1, 0), T((), np.int32), [np.int32(2**31 - 1)] * 2)


def test_secure_sum_does_not_narrow_a_python_int_before_clipping():
    # 2**32 + 50 used to become 50 (same_kind casting) and was summed as 50
    with pytest.raises(
        InvalidUpdateError, match=r"client 0, tensor <root>.*does not fit the template's int32"
    ):
        _next(ak.secure_sum(100, 0), T((), np.int32), [2**32 + 50])


def test_secure_sum_of_int64_sum_beyond_int64_raises():
    lo = -(2**62)  # a narrow range far from zero: the codes are small, the decoded sum is not
    with pytest.raises(OverflowError, match="does not fit int64"):
        _next(ak.secure_sum(lo + 10, lo), T((), np.int64), [np.int64(lo)] * 3)
    assert int(_next(ak.secure_sum(lo + 10, lo), T((), np.int64), [np.int64(lo)] * 2)) == 2 * lo


def test_secure_modular_sum_refuses_a_modulus_its_template_cannot_hold():
    with pytest.raises(ValueError, match=r"modulus.*int32"):
        ak.secure_modular_sum(2**40).create(T((), np.int32))
    with pytest.raises(ValueError, match=r"symmetric.*uint8"):
        ak.secure_modular_sum(5, symmetric_range=True).create(T((), np.uint8))
    with pytest.raises(ValueError, match=r"modulus.*int8"):
        ak.secure_modular_sum(200, symmetric_range=True).create(T((), np.int8))
    # the largest modulus that fits is fine, and results stay in [0, m)
    process = ak.secure_modular_sum(2**31).create(T((), np.int32))
    result = process.next((), [np.int32(2**31 - 1)] * 2).result
    assert 0 <= int(result) < 2**31 and int(result) == (2 * (2**31 - 1)) % 2**31


# -- item 3: representable weighted means come back ------------------------------------------------


def _exact_mean(values, weights):
    num = sum(Fraction(float(w)) * Fraction(float(v)) for v, w in zip(values, weights, strict=True))
    return float(num / sum(Fraction(float(w)) for w in weights))


MEAN_CASES = [
    ([0.1, 0.2], [1e308, 1e308]),
    ([10.0, 10.0], [1e308, 1.0]),
    ([1.0, -3.0, 2.0], [1.7e308, 1e300, 1e-300]),
    ([3e38, 3e38], [1e308, 1e308]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("values", "weights"), MEAN_CASES)
@pytest.mark.parametrize(
    "factory",
    [
        ak.mean(),
        ak.zeroing(1e39, ak.mean()),
        ak.clipping(1e39, ak.mean()),
        ak.robust_aggregator(),
        ak.compression_aggregator(),
    ],
    ids=["mean", "zeroing", "clipping", "robust", "compression"],
)
def test_weighted_mean_with_huge_weights_is_the_true_mean(factory, dtype, values, weights):
    # A weighted mean depends on the weights' ratios only: the same round with the weights
    # divided by the largest one is the reference (for ak.mean, also the exact rational mean).
    moderate = [w / max(weights) for w in weights]
    for shape in ((), (40,)):  # the small-column path and the kernel's path
        spec = T(shape, dtype)
        clients = [np.full(shape, v, dtype) for v in values]
        got = np.asarray(_next(factory, spec, clients, weights), np.float64)
        want = np.asarray(_next(factory, spec, clients, moderate), np.float64)
        assert np.isfinite(got).all(), (factory, got)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        if factory == ak.mean():
            exact = _exact_mean(
                [np.float64(c.flat[0]) if c.size else 0.0 for c in clients], weights
            )
            np.testing.assert_allclose(got, exact, rtol=1e-6)


@pytest.mark.parametrize("shape", [(), (40,)])
def test_float64_mean_of_huge_values_is_representable(shape):
    values = [np.full(shape, 1e308), np.full(shape, 1e308)]
    got = _next(ak.mean(), T(shape, np.float64), values, [1.0, 1.0])
    np.testing.assert_array_equal(got, np.full(shape, 1e308))
    got = _next(ak.unweighted_mean(), T(shape, np.float64), values)
    np.testing.assert_array_equal(got, np.full(shape, 1e308))
    got = _next(ak.mean(), T(shape, np.float64), [*values, np.full(shape, -1e308)], [1.0, 3.0, 2.0])
    np.testing.assert_allclose(got, np.full(shape, 1e308 / 3), rtol=1e-15)


@pytest.mark.parametrize("shape", [(), (40,)])
def test_float_sum_that_overflows_raises_instead_of_returning_inf(shape):
    with pytest.raises(OverflowError, match="does not fit float64"):
        _next(ak.sum(), T(shape, np.float64), [np.full(shape, 1e308)] * 2)


@pytest.mark.parametrize(
    "factory",
    [ak.mean(), ak.geometric_median(), ak.centered_clipping(1.0)],
    ids=["mean", "geometric_median", "centered_clipping"],
)
@pytest.mark.parametrize(
    ("values", "weights"),
    [
        ([4.3981101420465504e-275], [4.3981101420465504e-275]),  # found by hypothesis
        ([1e-200, 3e-200], [1e-200, 1e-200]),
        ([1e-200, 3e-200], [1e-300, 3e-300]),
    ],
)
def test_weighted_mean_with_tiny_weights_does_not_underflow(factory, values, weights):
    # Products of tiny weights and tiny values fall below float64's normals (1e-400 -> 0); the
    # weights of a whole round are scaled up by a power of two first (exact: only ratios count).
    if isinstance(factory, type(ak.geometric_median())) and len(set(weights)) > 1:
        weights = [weights[0]] * len(weights)  # a geometric median is the mean only when equal
    got = _next(factory, T((3,), np.float64), [np.full(3, v) for v in values], weights)
    np.testing.assert_allclose(got, np.full(3, float(_exact_mean(values, weights))), rtol=1e-12)


def test_streamed_mean_with_huge_weights():
    values = [np.full(3, v, np.float32) for v in (0.1, 0.2, 0.4)]
    weights = [1e308, 1e308, 1.0]
    process = ak.mean().create(T((3,), np.float32))
    got = process.next((process.initialize()), iter(values), iter(weights)).result
    np.testing.assert_allclose(
        got, _exact_mean([np.float32(v) for v in (0.1, 0.2, 0.4)], weights), rtol=1e-6
    )


# -- item 5: +-Inf is refused by ak.secure_sum, as NaN is -----------------------------------------


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("shape", [(), (5000,)])
@pytest.mark.parametrize(
    "upper", [1.0, ak.quantile_estimator(1.0, 0.5, 0.2)], ids=["fixed", "adaptive"]
)
def test_secure_sum_refuses_non_finite_values(bad, shape, upper):
    values = np.zeros((3, *shape), np.float32)
    values.reshape(3, -1)[1, -1] = bad
    process = ak.secure_sum(upper).create(T(shape, np.float32))
    state = process.initialize()
    with pytest.raises(InvalidUpdateError, match=r"client 1, tensor <root>: holds (Inf|NaN)"):
        process.next(state, list(values))
    # zeroing drops the client instead, as for NaN
    wrapped = ak.zeroing(10.0, ak.secure_sum(upper)).create(T(shape, np.float32))
    out = wrapped.next(wrapped.initialize(), list(values))
    assert out.measurements["zeroed_count"] == 1


def test_secure_sum_refuses_a_python_float_that_overflows_float32():
    with pytest.raises(InvalidUpdateError, match="client 0"):
        _next(ak.secure_sum(1.0), T((), np.float32), [1e40, 0.0])
