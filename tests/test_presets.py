"""The compression and secure presets (TFF's model_update_aggregator_test.py) and secure quantile
estimation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import aggkit as ak
from aggkit.testing import assert_only_secure

COMBOS = list(itertools.product([True, False], [True, False], [True, False]))
MATRIX = ak.TensorSpec((200, 300), np.float32)


def _clients(count=5, seed=0, shape=(200, 300)):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.001, shape).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize(("zeroing", "clipping", "weighted"), COMBOS)
def test_secure_aggregator_uses_only_secure_channels(zeroing, clipping, weighted):
    factory = ak.secure_aggregator(zeroing=zeroing, clipping=clipping, weighted=weighted)
    assert factory.is_weighted is weighted
    process = factory.create(MATRIX)
    weights = [1.0, 2.0, 3.0, 4.0, 5.0] if weighted else None
    state = process.initialize()
    for _ in range(2):  # the second round uses the updated (secure) estimates
        out = assert_only_secure(process, state, _clients(), weights)
        state = out.state
    clients = np.stack(_clients()).astype(np.float64)
    w = np.asarray(weights if weighted else [1.0] * 5)
    expected = np.tensordot(w, clients, axes=1) / w.sum()  # norms are far below every bound
    np.testing.assert_allclose(out.result, expected, atol=2e-6)


def test_robust_aggregator_is_not_secure():
    process = ak.robust_aggregator().create(MATRIX)
    with pytest.raises(AssertionError, match="plain"):
        assert_only_secure(process, process.initialize(), _clients(), [1.0] * 5)


def test_secure_aggregator_measurements_nest_like_tff():
    process = ak.secure_aggregator().create(MATRIX)
    out = process.next(process.initialize(), _clients(), [1.0] * 5)
    inner = out.measurements["zeroing"]["clipping"]
    assert set(out.measurements) == {"zeroing", "zeroing_norm", "zeroed_count"}
    assert set(out.measurements["zeroing"]) == {"clipping", "clipping_norm", "clipped_count"}
    assert set(inner) == {"mean_value", "mean_weight"}
    assert inner["mean_value"]["secure_upper_threshold"] == pytest.approx(100.0)  # 2 * 50
    assert inner["mean_weight"]["secure_upper_threshold"] == pytest.approx(2**20 - 1)


def test_secure_aggregator_clips_huge_weights_and_counts_them():
    process = ak.secure_aggregator(zeroing=False, clipping=False).create(
        ak.TensorSpec((3,), np.float32)
    )
    values = [np.full(3, 1.0, np.float32), np.full(3, 3.0, np.float32)]
    out = process.next(process.initialize(), values, [1.0, 2.0**21])
    assert out.measurements["mean_weight"]["secure_upper_clipped_count"] == 1
    # The weighted value 3 * 2**21 is also far outside the value range [-100, 100] and clipped.
    assert out.measurements["mean_value"]["secure_upper_clipped_count"] == 1
    expected = (1.0 * 1.0 + 100.0) / (1.0 + 2**20 - 1)
    np.testing.assert_allclose(out.result, expected, rtol=1e-5)


@pytest.mark.parametrize(("zeroing", "clipping", "weighted"), COMBOS)
def test_compression_aggregator_weightedness_and_result(zeroing, clipping, weighted):
    factory = ak.compression_aggregator(zeroing=zeroing, clipping=clipping, weighted=weighted)
    assert factory.is_weighted is weighted
    process = factory.create(MATRIX)
    assert process.is_weighted is weighted
    weights = [1.0, 2.0, 3.0, 4.0, 5.0] if weighted else None
    out = process.next(process.initialize(), _clients(), weights)
    clients = np.stack(_clients()).astype(np.float64)
    w = np.asarray(weights if weighted else [1.0] * 5)
    expected = np.tensordot(w, clients, axes=1) / w.sum()
    step = (clients.max() - clients.min()) * w.max() / 255 / w.sum()
    assert np.abs(out.result - expected).max() < 5 * step  # quantized: within a few steps


def test_compression_aggregator_sends_under_40_percent_of_float32_bytes():
    process = ak.compression_aggregator().create(ak.TensorSpec((200, 300), np.float32))
    out = process.next(process.initialize(), _clients(3), [1.0, 1.0, 1.0])
    sent = out.measurements["zeroing"]["clipping"]["mean_value"]["bytes_per_client"]
    assert sent < 0.4 * 60_000 * 4


def test_small_tensors_are_summed_exactly_by_the_compression_aggregator():
    template = [ak.TensorSpec((10,), np.float32), ak.TensorSpec((30_000,), np.float32)]
    process = ak.compression_aggregator(zeroing=False, clipping=False).create(template)
    values = [[np.full(10, 0.25, np.float32), np.ones(30_000, np.float32) * i] for i in range(3)]
    out = process.next(process.initialize(), values, [1.0, 1.0, 2.0])
    np.testing.assert_array_equal(out.result[0], np.full(10, 0.25, np.float32))


def test_secure_and_plain_quantile_estimation_agree():
    # TFF's test_no_noise_secure_true_false_equal_results (quantile_estimation_test.py).
    plain = ak.quantile_estimator(1.0, 0.5, 1.0)
    secure = ak.quantile_estimator(1.0, 0.5, 1.0, secure_estimation=True)
    state_p, state_s = plain.initialize(), secure.initialize()
    for _ in range(3):
        state_p = plain.next(state_p, [0.5, 1.5, 2.5])
        state_s = secure.next(state_s, [0.5, 1.5, 2.5])
        assert secure.report(state_s) == pytest.approx(plain.report(state_p), rel=1e-6)


def test_secure_quantile_estimation_uses_only_secure_channels():
    # TFF's test_secure_estimation_true_only_contains_secure_aggregation, as a clipping norm.
    from aggkit.secure.secure_sum import secure_sum

    norm = ak.quantile_estimator(1.0, 0.5, 1.0, secure_estimation=True)
    factory = ak.clipping(norm, secure_sum(10.0), clipped_count_sum=secure_sum(1, 0))
    process = factory.create(ak.TensorSpec((3,), np.float32))
    assert_only_secure(process, process.initialize(), [np.ones(3, np.float32)] * 4)
    plain = ak.clipping(
        ak.quantile_estimator(1.0, 0.5, 1.0), secure_sum(10.0), clipped_count_sum=secure_sum(1, 0)
    ).create(ak.TensorSpec((3,), np.float32))
    with pytest.raises(AssertionError, match="plain"):
        assert_only_secure(plain, plain.initialize(), [np.ones(3, np.float32)] * 4)
