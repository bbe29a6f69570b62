"""Gaussian DP aggregation: every applicable case of TFF's differential_privacy_test.py,
validation, the preset, fusion.

Statistical properties of the noise and the accounting are in ``test_dp_statistics.py``.
"""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aggkit as ak
from aggkit import kernels
from aggkit import process as process_module
from aggkit.dp import (
    ExtractingDpEventFromInitialStateError,
    GaussianAdaptiveFactory,
    GaussianFixedFactory,
    adaptive_clip_noise_params,
    extract_dp_event,
)
from aggkit.testing import SumPlusOneFactory
from tests.memory import peak_allocation
from tests.strategies import client_matrices

dpa = pytest.importorskip("dp_accounting")

F32 = ak.TensorSpec((), np.float32)
PAIR = (F32, F32)


def _run(factory, template, data, rounds=1):
    process = factory.create(template)
    state = process.initialize()
    outputs = []
    for _ in range(rounds):
        out = process.next(state, data)
        state = out.state
        outputs.append(out)
    return outputs


def _adaptive(geometric=True, **kwargs):
    """TFF's test_adaptive_query: C0=1, z=0, target 1, lr 1, sigma_b 0, n=3."""
    return ak.gaussian_adaptive(
        0.0,
        3,
        initial_l2_norm_clip=1.0,
        target_unclipped_quantile=1.0,
        learning_rate=1.0,
        clipped_count_stddev=0.0,
        geometric_update=geometric,
        **kwargs,
    )


# -- type properties (TFF) -----------------------------------------------------------------------


def test_fixed_state_and_measurement_structure():
    process = ak.gaussian_fixed(1.5, 10, clip=2.0, seed=1).create(F32)
    assert not process.is_weighted
    state = process.initialize()
    assert set(state) == {"query_state", "agg_state", "dp_event", "is_init_state"}
    query = state["query_state"]
    assert set(query) == {"l2_norm_clip", "stddev", "noise_key", "round"}
    assert query["l2_norm_clip"] == 2.0 and query["stddev"] == 3.0 and query["round"] == 0
    assert state["agg_state"] == ()
    assert state["dp_event"] == {
        "module_name": "dp_accounting.dp_event",
        "class_name": "GaussianDpEvent",
        "noise_multiplier": 1.5,
    }
    assert bool(state["is_init_state"]) is True
    out = process.next(state, [1.0, 2.0])
    assert out.measurements == {"dp_query_metrics": (), "dp": ()}
    assert bool(out.state["is_init_state"]) is False
    assert out.state["query_state"]["round"] == 1
    assert pickle.loads(pickle.dumps(out.state))["query_state"]["round"] == 1


def test_adaptive_state_and_measurement_structure():
    process = ak.gaussian_adaptive(0.05, 10, seed=1).create(F32)
    state = process.initialize()
    query = state["query_state"]
    assert set(query) == {
        "l2_norm_clip",
        "stddev",
        "noise_multiplier",
        "quantile_estimator_state",
        "noise_key",
        "round",
    }
    z_v, _ = adaptive_clip_noise_params(0.05, 10)
    assert query["l2_norm_clip"] == 0.1
    assert query["noise_multiplier"] == z_v
    assert query["stddev"] == pytest.approx(z_v * 0.1, rel=1e-15)
    assert state["dp_event"]["class_name"] == "ComposedDpEvent"
    out = process.next(state, [1.0, 2.0])
    assert set(out.measurements) == {"dp_query_metrics", "dp"}
    assert set(out.measurements["dp_query_metrics"]) == {"clip"}
    clip = out.measurements["dp_query_metrics"]["clip"]
    assert isinstance(clip, float)
    assert out.state["query_state"]["l2_norm_clip"] == clip
    assert out.state["query_state"]["stddev"] == pytest.approx(z_v * clip, rel=1e-15)


def test_gaussian_fixed_cls():
    factory = ak.gaussian_fixed(0.05, 10, clip=1.0)
    assert isinstance(factory, GaussianFixedFactory)
    assert not factory.is_weighted
    assert not factory.create(F32).is_weighted


def test_gaussian_adaptive_cls():
    factory = ak.gaussian_adaptive(0.05, 10)
    assert isinstance(factory, GaussianAdaptiveFactory)
    assert not factory.is_weighted
    assert not factory.create(F32).is_weighted


def test_factories_compare_by_value():
    assert ak.gaussian_fixed(1.0, 10, 1.0, seed=3) == ak.gaussian_fixed(1.0, 10.0, 1.0, seed=3)
    assert ak.gaussian_adaptive(1.0, 100) == ak.gaussian_adaptive(1.0, 100)
    assert ak.gaussian_adaptive(1.0, 100) != ak.gaussian_adaptive(1.0, 100, learning_rate=0.3)


@pytest.mark.parametrize("make", [lambda: ak.gaussian_fixed(1.0, 10, 1.0), ak.gaussian_adaptive])
def test_non_float_templates_are_rejected(make):
    factory = make() if make is not ak.gaussian_adaptive else make(1.0, 100)
    with pytest.raises(TypeError, match="floating-point"):
        factory.create(ak.TensorSpec((3,), np.int32))


@pytest.mark.parametrize("bad", [ak.mean(), "sum", ak.zeroing(1.0, ak.mean())])
def test_bad_record_sum_raises_type_error(bad):
    with pytest.raises(TypeError, match="record_sum"):
        ak.gaussian_fixed(1.0, 10, 1.0, record_sum=bad)
    with pytest.raises(TypeError, match="record_sum"):
        ak.gaussian_adaptive(1.0, 100, record_sum=bad)


def test_weights_are_rejected():
    process = ak.gaussian_fixed(0.0, 1, 1.0).create(F32)
    with pytest.raises(TypeError, match="unweighted"):
        process.next(process.initialize(), [1.0], [1.0])


# -- numbered cases (TFF) ------------------------------------------------------------------------


def test_simple_sum():
    # GaussianSum(clip 1, stddev 0): [0.5, 1, 1.5] -> 2.5 (1.5 clipped to 1); n = 1 so no division.
    (out,) = _run(ak.gaussian_fixed(0.0, 1, clip=1.0), F32, [0.5, 1.0, 1.5])
    assert out.result == np.float32(2.5)


def test_simple_mean_divides_by_expected_clients():
    (out,) = _run(ak.gaussian_fixed(0.0, 4, clip=1.0), F32, [0.5, 1.0, 1.5])
    assert out.result == np.float32(2.5 / 4)


def test_structure_sum():
    data = [(0.1, 0.2), (5 / 13, 12 / 13), (3.0, 4.0)]  # norms 0.22, 1 (not clipped), 5
    (out,) = _run(ak.gaussian_fixed(0.0, 1, clip=1.0), PAIR, data)
    np.testing.assert_allclose(out.result, [0.1 + 5 / 13 + 3 / 5, 0.2 + 12 / 13 + 4 / 5], rtol=1e-6)


def test_norm_exactly_at_the_clip_is_not_clipped():
    # [0.6, 0.8] in float64 has norm 1.0 exactly: its coefficient must stay exactly 1.
    template = ak.TensorSpec((2,), np.float64)
    value = np.array([0.6, 0.8])
    assert math.sqrt(0.6**2 + 0.8**2) == 1.0
    (out,) = _run(ak.gaussian_fixed(0.0, 1, clip=1.0), template, [value])
    assert np.array_equal(out.result, value)


def test_inner_sum():
    factory = ak.gaussian_fixed(0.0, 1, clip=1.0, record_sum=SumPlusOneFactory())
    first, second = _run(factory, F32, [0.5, 1.5, 2.0], rounds=2)
    assert first.result == np.float32(0.5 + 1 + 1 + 1)
    assert first.state["agg_state"] == 1
    assert second.state["agg_state"] == 2
    assert first.measurements["dp"] == 42


@pytest.mark.parametrize("geometric", [False, True])
def test_adaptive_query(geometric):
    first, second = _run(_adaptive(geometric), F32, [0.5, 1.5, 2.0], rounds=2)
    assert first.result * 3 == pytest.approx(0.5 + 1 + 1, rel=1e-6)
    # One of three below the clip: b = 1/3, b - target = -2/3.
    clip = 1 + 2 / 3 if not geometric else math.exp(2 / 3)
    assert first.measurements["dp_query_metrics"]["clip"] == pytest.approx(clip, rel=1e-12)
    assert second.result * 3 == pytest.approx(0.5 + 1.5 + clip, rel=1e-6)
    # Round 2: with clip 5/3 (arithmetic) or 1.9477 (geometric), 0.5 and 1.5 are below, 2.0 is not.
    next_clip = clip + 1 / 3 if not geometric else clip * math.exp(1 / 3)
    assert second.measurements["dp_query_metrics"]["clip"] == pytest.approx(next_clip, rel=1e-12)


def test_adaptive_inner_sum_sums_the_count_records_too():
    # TFF sums (clipped value, count record) with one record aggregator: SumPlusOne adds 1 to both.
    first, _ = _run(_adaptive(False, record_sum=SumPlusOneFactory()), F32, [0.5, 1.5, 2.0], 2)
    assert first.result * 3 == pytest.approx(0.5 + 1 + 1 + 1, rel=1e-6)
    # Records 0.5 - 0.5 - 0.5 + 1 = 0.5: b = 0.5 / 3 + 0.5 = 2/3, clip 1 - (2/3 - 1) = 4/3.
    assert first.measurements["dp_query_metrics"]["clip"] == pytest.approx(4 / 3, rel=1e-12)
    assert first.measurements["dp"] == 42 and first.state["agg_state"] == 1


def test_extract_dp_event_from_state():
    (fixed,) = _run(ak.gaussian_fixed(1.1, 10, clip=1.0, seed=0), F32, [1.0])
    assert extract_dp_event(fixed.state) == dpa.GaussianDpEvent(1.1)
    (adaptive,) = _run(ak.gaussian_adaptive(2.0, 100, seed=0), F32, [1.0])
    z_v, sigma_b = adaptive_clip_noise_params(2.0, 100)
    assert extract_dp_event(adaptive.state) == dpa.ComposedDpEvent(
        [dpa.GaussianDpEvent(z_v), dpa.GaussianDpEvent(2 * sigma_b)]
    )
    (preset,) = _run(ak.dp_aggregator(2.0, 100, seed=0), F32, [1.0])
    assert extract_dp_event(preset.state) == extract_dp_event(adaptive.state)


def test_error_when_extracting_from_initial_state():
    for factory in (ak.gaussian_fixed(1.0, 10, 1.0), ak.dp_aggregator(1.0, 100)):
        state = factory.create(F32).initialize()
        with pytest.raises(ExtractingDpEventFromInitialStateError, match="initial state"):
            extract_dp_event(state)
    with pytest.raises(ValueError, match="no DP aggregator state"):
        extract_dp_event(ak.mean().create(F32).initialize())


def test_noise():
    # TFF: z = 3.14159, n = 1, clip 1, input 0.36788 (unclipped), 500 rounds: the sample standard
    # deviation is z within 15% (the estimate's relative standard error is 1/sqrt(1000), 3.2%).
    z = 3.14159
    outputs = _run(ak.gaussian_fixed(z, 1, clip=1.0, seed=2024), F32, [0.36788], rounds=500)
    results = np.array([float(o.result) for o in outputs])
    assert np.std(results - 0.36788) == pytest.approx(z, rel=0.15)


def test_adaptive_clip_noise_params():
    z_v, sigma_b = adaptive_clip_noise_params(2.0, 100)
    assert sigma_b == 5.0
    assert z_v > 2.0
    assert z_v == pytest.approx((2.0**-2 - 10.0**-2) ** -0.5, rel=1e-15)
    assert adaptive_clip_noise_params(2.0, 100, 5.0) == (z_v, 5.0)
    assert adaptive_clip_noise_params(0.0, 100) == (0.0, 0.0)
    assert adaptive_clip_noise_params(0.0, 100, 3.0) == (0.0, 3.0)


def test_adaptive_noise_split_errors_and_warns():
    with pytest.raises(ValueError, match=r"noise_multiplier.*clipped_count_stddev"):
        ak.gaussian_adaptive(10.0, 100)  # 2 * sigma_b = 10
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        ak.gaussian_adaptive(1.0, 100, clipped_count_stddev=0.0)
    with pytest.warns(UserWarning, match="value noise multiplier"):
        ak.gaussian_adaptive(9.0, 100)  # z_v / z = (1 - 0.81) ** -0.5 = 2.29
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ak.gaussian_adaptive(8.0, 100)  # z_v / z = (1 - 0.64) ** -0.5 = 1.67: no warning


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": math.inf}, "noise_multiplier"),
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"clients_per_round": -3.0}, "clients_per_round"),
        ({"clip": 0.0}, "clip"),
        ({"clip": -1.0}, "clip"),
        ({"clip": math.nan}, "clip"),
        ({"population": 5}, "population"),
        ({"population": 0}, "population"),
        ({"population": 1000, "delta": 0.0}, "delta"),
        ({"population": 1000, "delta": 1.0}, "delta"),
        ({"delta": 1e-6}, "delta"),
        ({"seed": -1}, "seed"),
    ],
)
def test_fixed_bad_parameters_raise_value_error(kwargs, name):
    args = {"noise_multiplier": 1.0, "clients_per_round": 10, "clip": 1.0, **kwargs}
    with pytest.raises(ValueError, match=name):
        ak.gaussian_fixed(**args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"initial_l2_norm_clip": 0.0}, "initial_l2_norm_clip"),
        ({"initial_l2_norm_clip": -0.1}, "initial_l2_norm_clip"),
        ({"target_unclipped_quantile": 1.5}, "target_unclipped_quantile"),
        ({"target_unclipped_quantile": -0.1}, "target_unclipped_quantile"),
        ({"learning_rate": -0.2}, "learning_rate"),
        ({"clipped_count_stddev": -1.0}, "clipped_count_stddev"),
        ({"population": 50}, "population"),
        ({"population": 1000, "delta": 2.0}, "delta"),
        ({"seed": -5}, "seed"),
    ],
)
def test_adaptive_bad_parameters_raise_value_error(kwargs, name):
    args = {"noise_multiplier": 1.0, "clients_per_round": 100, **kwargs}
    with pytest.raises(ValueError, match=name):
        ak.gaussian_adaptive(**args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_multiplier": "1"}, "noise_multiplier"),
        ({"noise_multiplier": True}, "noise_multiplier"),
        ({"clip": None}, "clip"),
        ({"seed": 1.5}, "seed"),
        ({"population": "many"}, "population"),
    ],
)
def test_bad_parameter_kinds_raise_type_error(kwargs, name):
    args = {"noise_multiplier": 1.0, "clients_per_round": 10, "clip": 1.0, **kwargs}
    with pytest.raises(TypeError, match=name):
        ak.gaussian_fixed(**args)
    with pytest.raises(TypeError, match="geometric_update"):
        ak.gaussian_adaptive(1.0, 100, geometric_update=1)


def test_learning_rate_zero_keeps_the_clip():
    # TFF allows a zero learning rate (a fixed clip paid for with the split noise).
    factory = ak.gaussian_adaptive(0.0, 2, initial_l2_norm_clip=1.0, learning_rate=0.0)
    (out,) = _run(factory, F32, [5.0, 7.0])
    assert out.measurements["dp_query_metrics"]["clip"] == 1.0


# -- edge cases ----------------------------------------------------------------------------------


def test_non_finite_clients_are_dropped():
    template = ak.TensorSpec((2,), np.float32)
    data = [
        np.array([np.nan, 1.0], np.float32),
        np.array([0.5, 0.0], np.float32),
        np.array([np.inf, 0.0], np.float32),
    ]
    (out,) = _run(ak.gaussian_fixed(0.0, 2, clip=1.0), template, data)
    np.testing.assert_array_equal(out.result, [0.25, 0.0])


def test_adaptive_counts_non_finite_clients_as_clipped():
    # [0.5, NaN] with clip 1: b = (0.5 - 0.5) / 2 + 0.5 = 0.5; arithmetic: 1 - (0.5 - 1) = 1.5.
    factory = ak.gaussian_adaptive(
        0.0, 2, 1.0, 1.0, 1.0, clipped_count_stddev=0.0, geometric_update=False
    )
    (out,) = _run(factory, F32, [0.5, np.nan])
    assert out.result == np.float32(0.25)
    assert out.measurements["dp_query_metrics"]["clip"] == 1.5
    (finite,) = _run(factory, F32, [0.5, 0.7])
    assert finite.measurements["dp_query_metrics"]["clip"] == 1.0


def test_empty_round_adds_noise_and_moves_the_clip():
    factory = ak.gaussian_adaptive(
        0.0, 4, 1.0, target_unclipped_quantile=0.8, learning_rate=0.5, clipped_count_stddev=0.0
    )
    (out,) = _run(factory, ak.TensorSpec((3,), np.float32), [])
    np.testing.assert_array_equal(out.result, np.zeros(3))
    # No records: b = 0 / 4 + 0.5, clip exp(-0.5 * (0.5 - 0.8)) (no records: a noise-only update).
    assert out.measurements["dp_query_metrics"]["clip"] == pytest.approx(math.exp(0.15))
    noisy = ak.gaussian_fixed(1.0, 4, 1.0, seed=0)
    (out,) = _run(noisy, ak.TensorSpec((3,), np.float32), [])
    assert np.all(out.result != 0)


def test_state_is_not_mutated_and_next_is_pure():
    process = ak.gaussian_adaptive(0.5, 20, seed=11).create(ak.TensorSpec((50,), np.float32))
    state = process.initialize()
    snapshot = pickle.dumps(state)
    data = list(np.random.default_rng(0).normal(0, 0.1, (20, 50)).astype(np.float32))
    first = process.next(state, data)
    second = process.next(state, data)
    assert pickle.dumps(state) == snapshot
    np.testing.assert_array_equal(first.result, second.result)
    assert first.measurements == second.measurements
    third = process.next(first.state, data)
    assert not np.array_equal(third.result, first.result)  # a new round draws new noise


def test_seed_none_draws_a_fresh_key():
    process = ak.gaussian_fixed(1.0, 1, 1.0).create(ak.TensorSpec((20,), np.float32))
    a = process.next(process.initialize(), [np.zeros(20, np.float32)]).result
    b = process.next(process.initialize(), [np.zeros(20, np.float32)]).result
    assert not np.array_equal(a, b)


def test_seed_none_never_replays_noise_from_one_saved_state():
    # A retry on a saved state must not release the same noise: the difference of the two
    # results would be the difference of the two client sets, without noise.
    template = ak.TensorSpec((1000,), np.float32)
    zeros = [np.zeros(1000, np.float32)] * 4
    adaptive = ak.gaussian_adaptive(1.0, 4, clipped_count_stddev=5.0)
    for factory in (ak.gaussian_fixed(1.0, 4, 1.0), adaptive):
        process = factory.create(template)
        state = process.initialize()
        snapshot = pickle.dumps(state)
        first = process.next(state, zeros)
        second = process.next(state, zeros)
        assert pickle.dumps(state) == snapshot
        assert not np.any(first.result == second.result)
        later = process.next(first.state, zeros)
        assert not np.any(later.result == first.result)


def test_seed_none_never_replays_the_clipped_count_noise():
    estimator = ak.private_quantile_estimator(
        1.0, 0.5, 0.2, below_estimate_stddev=1.0, expected_num_records=10
    )
    state = estimator.initialize()
    values = np.linspace(0.0, 2.0, 10)  # half below the estimate: no clamping at 0 or 1
    reports = {estimator.report(estimator.next(state, values)) for _ in range(5)}
    assert len(reports) == 5


@pytest.mark.parametrize("z", [1e-3, 0.01, 0.039])
def test_noise_multipliers_below_the_samplers_floor_are_refused(z):
    for make in (
        lambda: ak.gaussian_fixed(z, 10, 1.0),
        lambda: ak.gaussian_adaptive(z, 100),
        lambda: ak.dp_aggregator(z, 100),
    ):
        with pytest.raises(ValueError, match=r"noise_multiplier must be 0 \(no privacy\) or at"):
            make()


def test_noise_multipliers_at_the_floor_and_zero_are_accepted():
    from aggkit.kernels.limits import MIN_NOISE_MULTIPLIER, infinite_loss_bound

    assert MIN_NOISE_MULTIPLIER == 0.04
    assert infinite_loss_bound(MIN_NOISE_MULTIPLIER) < 1e-26
    ak.gaussian_fixed(MIN_NOISE_MULTIPLIER, 10, 1.0)
    ak.gaussian_fixed(0.0, 10, 1.0)
    ak.gaussian_adaptive(MIN_NOISE_MULTIPLIER, 100)


def test_streaming_gives_the_same_bits(monkeypatch):
    template = ak.TensorSpec((64,), np.float32)
    data = list(np.random.default_rng(5).normal(0, 0.3, (30, 64)).astype(np.float32))
    data[7][3] = np.nan
    factory = ak.gaussian_adaptive(0.3, 30, initial_l2_norm_clip=2.0, seed=9)
    process = factory.create(template)
    state = process.initialize()
    batch = process.next(state, np.stack(data))
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 64 * 4 * 7)  # blocks of 7 clients
    streamed = process.next(state, iter(data))
    np.testing.assert_array_equal(batch.result, streamed.result)
    assert batch.measurements == streamed.measurements


@given(client_matrices(max_rows=8, max_cols=40, magnitude=10.0), st.floats(0.1, 20.0))
def test_fused_path_equals_plain_numpy_clipping(matrix, clip):
    layout = ak.Layout([ak.TensorSpec((matrix.shape[1],), matrix.dtype)])
    process = ak.gaussian_fixed(0.0, 3.0, clip).create(layout)
    out = process.next(process.initialize(), ak.ClientBatch(matrix, layout))
    expected = np.zeros(matrix.shape[1])
    for row in matrix.astype(np.float64):
        if not np.isfinite(row).all():
            continue
        norm = np.linalg.norm(row)
        expected += row * (clip / norm if norm > clip else 1.0)
    rtol = 1e-5 if matrix.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.result[0], expected / 3.0, rtol=rtol, atol=1e-6)


def test_dp_aggregator_reads_the_matrix_twice(monkeypatch):
    calls = {"stats": 0, "sum_rows": 0}
    stats, rows = kernels.row_stats.row_stats, kernels.weighted_sum.weighted_row_sum
    template = {"w": ak.TensorSpec((50, 20), np.float32), "b": ak.TensorSpec((20,), np.float32)}
    process = ak.dp_aggregator(0.5, 12, seed=0).create(template)
    batch = process.layout.empty_batch(12)

    def counting_stats(matrix, *args, **kwargs):
        calls["stats"] += matrix is batch.matrix
        return stats(matrix, *args, **kwargs)

    def counting_sum(matrix, *args, **kwargs):
        calls["sum_rows"] += matrix is batch.matrix
        return rows(matrix, *args, **kwargs)

    monkeypatch.setattr(kernels.row_stats, "row_stats", counting_stats)
    monkeypatch.setattr(kernels.weighted_sum, "weighted_row_sum", counting_sum)
    batch.matrix[:] = np.random.default_rng(0).normal(0, 0.01, batch.matrix.shape)
    batch.matrix[3] *= 1e5  # zeroed
    out = process.next(process.initialize(), batch)
    assert out.measurements["zeroed_count"] == 1
    assert calls == {"stats": 1, "sum_rows": 1}


def test_dp_aggregator_never_copies_the_matrix():
    template = {"w": ak.TensorSpec((200, 500), np.float32), "b": ak.TensorSpec((500,), np.float32)}
    process = ak.dp_aggregator(0.5, 32, seed=0).create(template)
    batch = process.layout.empty_batch(32)
    batch.matrix[:] = np.random.default_rng(0).normal(0, 0.01, batch.matrix.shape)
    batch.matrix[3] *= 1e5  # zeroed
    state = process.initialize()
    process.next(state, batch)  # compiles and warms the buffer pool
    out, peak = peak_allocation(lambda: process.next(state, batch))
    assert out.measurements["zeroed_count"] == 1
    # One copy of the matrix would be 12.9 MB; accumulators, noise and result about 1.2 MB.
    assert peak < batch.matrix.nbytes / 4, (peak, batch.matrix.nbytes)


# -- accounting in the measurements --------------------------------------------------------------


def test_running_epsilon_is_reported_with_a_population():
    factory = ak.gaussian_fixed(1.0, 10, 1.0, population=1000, seed=0)
    outputs = _run(factory, F32, [0.1], rounds=3)
    eps = [o.measurements["privacy"]["epsilon"] for o in outputs]
    assert [o.measurements["privacy"]["rounds"] for o in outputs] == [1, 2, 3]
    assert outputs[0].measurements["privacy"]["delta"] == 1e-5
    assert 0 < eps[0] < eps[1] < eps[2] < math.inf
    (zero,) = _run(ak.gaussian_fixed(0.0, 10, 1.0, population=1000), F32, [0.1])
    assert zero.measurements["privacy"]["epsilon"] == math.inf


def test_default_delta():
    assert ak.gaussian_fixed(1.0, 10, 1.0, population=1000).delta == 1e-5
    assert ak.gaussian_fixed(1.0, 10, 1.0, population=10**7).delta == 1e-7
    assert ak.gaussian_fixed(1.0, 10, 1.0).delta is None


# -- the preset (tff.learning) -------------------------------------------------------------------


@pytest.mark.parametrize("zeroing", [True, False])
def test_dp_aggregator_is_unweighted(zeroing):
    factory = ak.dp_aggregator(0.05, 10, zeroing=zeroing)
    assert not factory.is_weighted
    assert not factory.create(F32).is_weighted


def test_dp_aggregator_measurements_nest_as_tff():
    template = ak.TensorSpec((4,), np.float32)
    data = [np.full(4, 0.01, np.float32)] * 9 + [np.full(4, 1e3, np.float32)]
    (out,) = _run(ak.dp_aggregator(0.5, 10, seed=3), template, data)
    measurements = out.measurements
    assert set(measurements) == {"zeroing", "zeroing_norm", "zeroed_count"}
    assert measurements["zeroing_norm"] == 21.0 and measurements["zeroed_count"] == 1
    assert set(measurements["zeroing"]) == {"dp_query_metrics", "dp"}
    assert set(measurements["zeroing"]["dp_query_metrics"]) == {"clip"}
    assert measurements["zeroing"]["dp"] == ()
    (plain,) = _run(ak.dp_aggregator(0.5, 10, zeroing=False, seed=3), template, data)
    assert set(plain.measurements) == {"dp_query_metrics", "dp"}
    (counted,) = _run(ak.dp_aggregator(0.5, 10, population=100, seed=3), template, data)
    assert set(counted.measurements["zeroing"]["privacy"]) == {
        "epsilon",
        "delta",
        "rounds",
        "sampling",
    }


def test_dp_aggregator_uses_the_adaptive_defaults():
    factory = ak.dp_aggregator(0.5, 40, zeroing=False)
    assert factory == ak.gaussian_adaptive(0.5, 40)
    assert factory.initial_l2_norm_clip == 0.1 and factory.target_unclipped_quantile == 0.5
    assert factory.learning_rate == 0.2 and factory.clipped_count_stddev == 2.0


def test_dp_aggregator_bad_flags():
    with pytest.raises(TypeError, match="zeroing"):
        ak.dp_aggregator(0.5, 40, zeroing="yes")
    with pytest.raises(ValueError, match="noise_multiplier"):
        ak.dp_aggregator(5.0, 40)  # 2 * sigma_b = 4
