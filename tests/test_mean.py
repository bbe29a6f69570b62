"""ak.sum, ak.mean and ak.unweighted_mean: every numbered case of TFF's mean_test.py."""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from aggkit.testing import SumPlusOneFactory

F32 = ak.TensorSpec((), np.float32)
STRUCT = ((F32, F32), F32)
STRUCT_VALUES = [((1, 2), 3), ((2, 5), 4), ((3, 0), 5)]


def _run(factory, template, values, weights=None):
    process = factory.create(template)
    return process.next(process.initialize(), values, weights)


def _close(actual, expected, rtol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol)


@pytest.mark.parametrize(
    ("factory", "weighted"),
    [
        (ak.sum(), False),
        (ak.mean(), True),
        (ak.unweighted_mean(), False),
        (ak.mean(SumPlusOneFactory(), SumPlusOneFactory()), True),
        (ak.unweighted_mean(SumPlusOneFactory(), SumPlusOneFactory()), False),
    ],
)
def test_type_properties(factory, weighted):
    assert factory.is_weighted is weighted
    process = factory.create(STRUCT)
    assert process.is_weighted is weighted
    assert process.layout == ak.Layout(STRUCT)


def test_state_and_measurement_structure():
    state = ak.mean().create(F32).initialize()
    assert state == {"value_sum_process": (), "weight_sum_process": ()}
    out = _run(ak.mean(), F32, [1.0], [1.0])
    assert out.measurements == {"mean_value": (), "mean_weight": ()}
    assert ak.unweighted_mean().create(F32).initialize() == ((), ())
    assert _run(ak.unweighted_mean(), F32, [1.0]).measurements == {
        "mean_value": (),
        "mean_count": (),
    }
    assert _run(ak.sum(), F32, [1.0]).measurements == ()


def test_incorrect_create_type_raises():
    with pytest.raises(TypeError, match="floating"):
        ak.mean().create(ak.TensorSpec((2,), np.int32))
    with pytest.raises(TypeError, match="floating"):
        ak.unweighted_mean().create([F32, ak.TensorSpec((), np.int64)])
    with pytest.raises(TypeError, match="unweighted"):
        ak.mean(value_sum=ak.mean())
    with pytest.raises(TypeError, match="unweighted"):
        ak.unweighted_mean(count_sum=ak.mean())
    with pytest.raises(TypeError, match="factory"):
        ak.mean(weight_sum="sum")


def test_sum_scalar_and_structure():
    _close(_run(ak.sum(), F32, [1.0, 2.0, 3.0]).result, 6.0)
    out = _run(ak.sum(), STRUCT, STRUCT_VALUES).result
    _close(out[0][0], 6.0)
    _close(out[0][1], 7.0)
    _close(out[1], 12.0)
    ints = _run(ak.sum(), ak.TensorSpec((2,), np.int32), [[1, 2], [3, 4]]).result
    assert ints.dtype == np.int32 and ints.tolist() == [4, 6]


def test_scalar_value():
    _close(_run(ak.mean(), F32, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]).result, 10 / 6)


def test_scalar_value_unweighted():
    _close(_run(ak.unweighted_mean(), F32, [1.0, 2.0, 3.0]).result, 2.0)


def test_structure_value():
    out = _run(ak.mean(), STRUCT, STRUCT_VALUES, [3.0, 2.0, 1.0]).result
    _close(out[0][0], 10 / 6)
    _close(out[0][1], 16 / 6)
    _close(out[1], 22 / 6)
    assert out[1].dtype == np.float32


def test_structure_value_unweighted():
    out = _run(ak.unweighted_mean(), STRUCT, STRUCT_VALUES).result
    _close(out[0][0], 2.0)
    _close(out[0][1], 7 / 3)
    _close(out[1], 4.0)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [([1.0, 1.0, 1.0], 2.0), ([0.1, 0.1, 0.1], 2.0), ([6.0, 3.0, 1.0], 1.5)],
)
def test_weight_arg(weights, expected):
    _close(_run(ak.mean(), F32, [1.0, 2.0, 3.0], weights).result, expected)


@pytest.mark.parametrize("weight_dtype", [np.float32, np.float64, np.int32, np.int64])
def test_weight_dtypes(weight_dtype):
    weights = np.array([3, 2, 1], dtype=weight_dtype)
    _close(_run(ak.mean(), F32, [1.0, 2.0, 3.0], weights).result, 10 / 6)


def test_weight_arg_all_zeros_nan_division():
    out = _run(ak.mean(), F32, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).result
    assert not np.isfinite(out)


def test_weight_arg_all_zeros_no_nan_division():
    out = _run(ak.mean(no_nan_division=True), F32, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).result
    assert out == 0.0


def test_inner_value_sum_factory():
    out = _run(ak.mean(value_sum=SumPlusOneFactory()), F32, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    _close(out.result, 11 / 6)
    assert out.state == {"value_sum_process": 1, "weight_sum_process": ()}
    assert out.measurements == {"mean_value": 42, "mean_weight": ()}


def test_inner_value_and_count_sum_factory_unweighted():
    factory = ak.unweighted_mean(SumPlusOneFactory(), SumPlusOneFactory())
    out = _run(factory, F32, [1.0, 2.0, 3.0])
    _close(out.result, 7 / 4)
    assert out.state == (1, 1)
    assert out.measurements == {"mean_value": 42, "mean_count": 42}


def test_inner_weight_sum_factory():
    out = _run(ak.mean(weight_sum=SumPlusOneFactory()), F32, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    _close(out.result, 10 / 7)
    assert out.measurements == {"mean_value": (), "mean_weight": 42}


def test_inner_value_and_weight_sum_factory():
    factory = ak.mean(SumPlusOneFactory(), SumPlusOneFactory())
    out = _run(factory, F32, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    _close(out.result, 11 / 7)
    assert out.state == {"value_sum_process": 1, "weight_sum_process": 1}
    assert out.measurements == {"mean_value": 42, "mean_weight": 42}


def test_inner_state_advances_each_round():
    process = ak.mean(SumPlusOneFactory(), SumPlusOneFactory()).create(F32)
    state = process.initialize()
    for expected in (1, 2, 3):
        state = process.next(state, [1.0], [1.0]).state
        assert state == {"value_sum_process": expected, "weight_sum_process": expected}


def test_empty_rounds():
    spec = ak.TensorSpec((2,), np.float32)
    np.testing.assert_array_equal(_run(ak.sum(), spec, []).result, [0, 0])
    assert np.isnan(_run(ak.mean(), spec, [], []).result).all()
    np.testing.assert_array_equal(_run(ak.mean(no_nan_division=True), spec, [], []).result, [0, 0])
    assert np.isnan(_run(ak.unweighted_mean(), spec, []).result).all()
    with pytest.raises(ak.EmptyRoundError):
        _run(ak.unweighted_mean(strict_empty=True), spec, [])


def test_mixed_float_dtypes_are_preserved():
    template = [ak.TensorSpec((2,), np.float16), ak.TensorSpec((), np.float64)]
    out = _run(
        ak.mean(),
        template,
        [[np.ones(2, np.float16), 1.0], [np.zeros(2, np.float16), 3.0]],
        [1.0, 1.0],
    ).result
    assert out[0].dtype == np.float16 and out[1].dtype == np.float64
    _close(out[0], [0.5, 0.5])
    _close(out[1], 2.0)


# -- the division fused into the sum's pass (a ClientBatch is the round's only block) -----------


def _divide_cast_calls(monkeypatch):
    from aggkit import kernels

    calls = []
    original = kernels.divide_cast.divide_cast

    def counting(*args, **kwargs):
        calls.append(args[0].size)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels.divide_cast, "divide_cast", counting)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [17, 1000, 70_001])
@pytest.mark.parametrize("weights", ["random", "some zero", "all zero"])
@pytest.mark.parametrize("no_nan_division", [False, True])
def test_fused_division_gives_the_bits_of_a_separate_one(
    monkeypatch, dtype, n, weights, no_nan_division
):
    rng = np.random.default_rng(n)
    matrix = rng.standard_normal((11, n)).astype(dtype)
    w = {"random": rng.random(11), "some zero": rng.random(11) * (np.arange(11) % 3 > 0)}.get(
        weights, np.zeros(11)
    )
    process = ak.mean(no_nan_division=no_nan_division).create(ak.TensorSpec((n,), dtype))
    state = process.initialize()
    calls = _divide_cast_calls(monkeypatch)
    fused = process.next(state, ak.ClientBatch(matrix, process.layout), w).result
    fused_calls = len(calls)
    # A stream of several blocks: the sum cannot divide in its pass, so finish divides.
    monkeypatch.setattr(ak.process, "STREAM_BLOCK_BYTES", 4 * matrix[0].nbytes)
    streamed = process.next(state, iter(matrix), iter(w)).result
    assert fused.dtype == streamed.dtype == dtype
    np.testing.assert_array_equal(fused, streamed)
    assert fused_calls == 0  # the batch's quotient came from the sum's own pass
    if not (no_nan_division and weights == "all zero"):
        assert len(calls) == 1  # ... while the stream divided separately


def test_fused_division_in_robust_aggregator_and_bad_values(monkeypatch):
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((9, 5000)).astype(np.float32)
    calls = _divide_cast_calls(monkeypatch)
    process = ak.robust_aggregator().create(ak.TensorSpec((5000,), np.float32))
    state = process.initialize()
    fused = process.next(state, ak.ClientBatch(matrix, process.layout), np.arange(1.0, 10.0))
    assert not calls
    streamed = process.next(state, iter(matrix), iter(np.arange(1.0, 10.0)))
    np.testing.assert_array_equal(fused.result, streamed.result)
    # A NaN in a plain mean's batch still names its client, and the state is untouched.
    mean = ak.mean().create(ak.TensorSpec((5000,), np.float32))
    matrix[6, 4321] = np.nan
    with pytest.raises(ak.InvalidUpdateError, match="client 6"):
        mean.next(mean.initialize(), ak.ClientBatch(matrix, mean.layout), np.ones(9))
