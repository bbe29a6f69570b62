"""Parameters that used to be accepted and broke later (issue 20, item 7): each is now refused
where it is written, with a ValueError naming the argument and its range, or works."""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak

F32 = ak.TensorSpec((3,), np.float32)


# -- adaptive learning rates ---------------------------------------------------------------------


@pytest.mark.parametrize("rate", [2000.0, 10.5, 1e4])
def test_quantile_estimator_refuses_a_geometric_rate_that_overflows(rate):
    with pytest.raises(ValueError, match=r"learning_rate.*\(0, 10\]"):
        ak.quantile_estimator(1.0, 0.5, rate)
    with pytest.raises(ValueError, match="learning_rate"):
        ak.private_quantile_estimator(
            1.0, 0.5, rate, below_estimate_stddev=1.0, expected_num_records=10
        )


def test_the_largest_geometric_rate_runs_and_an_arithmetic_rate_is_unbounded():
    estimator = ak.quantile_estimator(1.0, 0.5, 10.0)
    state = estimator.next(estimator.initialize(), [5.0, 6.0])
    assert np.isfinite(estimator.report(state)) and estimator.report(state) > 1.0
    arithmetic = ak.quantile_estimator(1.0, 0.5, 2000.0, geometric_update=False)
    state = arithmetic.next(arithmetic.initialize(), [0.1, 0.2])
    assert arithmetic.report(state) == 0.0  # max(0, 1 - 2000 * 0.5)


def test_gaussian_adaptive_refuses_a_rate_that_throws_the_clip_away():
    with pytest.raises(ValueError, match=r"learning_rate.*\[0, 10\]"):
        ak.gaussian_adaptive(1.0, 10, learning_rate=1e4)
    factory = ak.gaussian_adaptive(0.0, 10, learning_rate=10.0, seed=0)  # the limit itself
    process = factory.create(F32)
    out = process.next(process.initialize(), [np.ones(3, np.float32)] * 10)
    assert np.isfinite(out.measurements["dp_query_metrics"]["clip"])


# -- secure_sum bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(("upper", "lower"), [(1e-300, 0.0), (1e-300, None), (1e308, -1e308)])
def test_secure_sum_refuses_float_bounds_whose_code_cannot_be_built(upper, lower):
    with pytest.raises(ValueError, match="upper_bound - lower_bound must be in"):
        ak.secure_sum(upper, lower)


def test_secure_sum_accepts_the_narrowest_range_its_code_can_scale():
    from aggkit.secure.secure_sum import MIN_FLOAT_SPAN

    process = ak.secure_sum(MIN_FLOAT_SPAN, 0.0).create(ak.TensorSpec((2,), np.float64))
    out = process.next(process.initialize(), [np.zeros(2), np.full(2, MIN_FLOAT_SPAN)])
    assert np.isfinite(out.result).all()
    assert 0.0 <= out.result.min() and out.result.max() <= 2 * MIN_FLOAT_SPAN


# -- TensorSpec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2**32, 2**32), (2**62, 3), (2**61, 2**61, 4)])
def test_tensor_spec_refuses_a_size_beyond_int64(shape):
    with pytest.raises(ValueError, match="TensorSpec shape"):
        ak.TensorSpec(shape, np.float32)


@pytest.mark.parametrize("shape", [(2.5,), (2.0,), ("3",), (True,)])
def test_tensor_spec_refuses_a_dimension_that_is_not_an_int(shape):
    with pytest.raises(TypeError, match="TensorSpec shape must be a tuple of ints"):
        ak.TensorSpec(shape, np.float32)


def test_a_layout_whose_flat_vector_would_overflow_is_refused():
    with pytest.raises(ValueError, match="TensorSpec shape"):
        ak.TensorSpec((2**60,), np.float64)  # 2**63 bytes: one more than the limit
    big = ak.TensorSpec((2**59,), np.float64)
    with pytest.raises(ValueError, match="flat client vector"):
        ak.Layout([big, big])


def test_tensor_spec_sizes_are_exact_python_ints():
    spec = ak.TensorSpec((2**20, 2**20), np.float32)
    assert spec.size == 2**40 and isinstance(spec.size, int)


# -- an iterator of weights ----------------------------------------------------------------------


def _values(kind: str, process):
    rows = np.arange(9, dtype=np.float32).reshape(3, 3)
    if kind == "list":
        return list(rows)
    if kind == "batch":
        return ak.ClientBatch(rows, process.layout)
    if kind == "ndarray":
        return rows
    return iter(rows)


@pytest.mark.parametrize("kind", ["list", "batch", "ndarray", "iterator"])
def test_an_iterator_of_weights_goes_with_any_kind_of_values(kind):
    process = ak.mean().create(F32)
    weights = [1.0, 2.0, 3.0]
    out = process.next(process.initialize(), _values(kind, process), iter(weights))
    expected = np.average(np.arange(9, dtype=np.float64).reshape(3, 3), axis=0, weights=weights)
    np.testing.assert_allclose(out.result, expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["list", "batch", "ndarray"])
def test_an_iterator_of_weights_of_the_wrong_length_is_named(kind):
    process = ak.mean().create(F32)
    for weights, match in (([1.0, 2.0], "one weight per client"), ([1.0] * 4, "one weight")):
        with pytest.raises(ak.InvalidUpdateError, match=match):
            process.next(process.initialize(), _values(kind, process), iter(weights))


def test_an_iterator_of_weights_is_checked_like_a_list():
    process = ak.mean().create(F32)
    with pytest.raises(ak.InvalidUpdateError, match="client 1, weight"):
        process.next(process.initialize(), _values("list", process), iter([1.0, -1.0, 1.0]))
