"""The Byzantine-robust rules against plain NumPy references, Flower's functions, bad input, and
attackers.

References are written independently of the kernels: sorting, explicit difference vectors, and
the textbook iterations, all in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import aggkit as ak
from aggkit import process as process_module
from aggkit.testing import assert_only_secure, channel_uses

# -- references -----------------------------------------------------------------------------------


def _contrib(matrix, coef=None):
    coef = np.ones(len(matrix)) if coef is None else coef
    return np.where(coef[:, None] == 0, 0.0, coef[:, None] * matrix.astype(np.float64))


def ref_median(x):
    return np.median(x.astype(np.float64), axis=0)


def ref_trimmed(x, fraction):
    k = len(x)
    cut = int(fraction * k)
    s = np.sort(x.astype(np.float64), axis=0)[cut : k - cut]
    return np.array([math.fsum(col) for col in s.T]) / (k - 2 * cut)


def ref_scores(x, f):
    k = len(x)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    closest = max(1, k - f - 2)
    return np.array([np.sort(np.delete(d[i], i))[:closest].sum() for i in range(k)])


def ref_closest_mean(x, beta):
    out = []
    for col in x.T:
        s = np.sort(col)
        m = (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2
        keyed = sorted(s, key=lambda v: (abs(v - m), v))[:beta]
        out.append(math.fsum(sorted(keyed)) / beta)
    return np.array(out)


def ref_bulyan(x, f):
    remaining = list(range(len(x)))
    chosen = []
    for _ in range(len(x) - 2 * f):
        scores = ref_scores(x[remaining], f)
        best = remaining[int(np.argmin(scores))]
        chosen.append(best)
        remaining.remove(best)
    return ref_closest_mean(x[chosen], len(chosen) - 2 * f), chosen


def ref_geometric_median(x, a, iterations, nu=1e-6, tol=1e-6):
    v = (a[:, None] * x).sum(axis=0) / a.sum()
    d = np.linalg.norm(x - v, axis=1)
    obj = (a * d).sum()
    for _ in range(iterations):
        prev = obj
        b = a / np.maximum(nu, d)
        v = (b[:, None] * x).sum(axis=0) / b.sum()
        d = np.linalg.norm(x - v, axis=1)
        obj = (a * d).sum()
        if abs(prev - obj) <= tol * obj:
            break
    return v


def ref_centered_clipping(x, w, center, tau, iterations):
    v = center.astype(np.float64)
    for _ in range(iterations):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
        v = v + (w[:, None] * scale[:, None] * diff).sum(axis=0) / w.sum()
    return v


# -- helpers --------------------------------------------------------------------------------------


def run(factory, matrix, weights=None, state=None):
    process = factory.create(ak.TensorSpec(matrix.shape[1:], matrix.dtype))
    if process.is_weighted and weights is None:
        weights = np.ones(len(matrix))
    state = process.initialize() if state is None else state
    return process.next(state, matrix, weights if process.is_weighted else None)


@st.composite
def rounds(draw, min_clients=1, max_clients=12, ties=None):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    k = draw(st.integers(min_clients, max_clients))
    n = draw(st.integers(1, 40))
    if ties is None:
        ties = draw(st.booleans())
    if ties:
        elements = st.sampled_from([-1.0, 0.0, 0.5, 2.0])
    else:
        elements = st.floats(-1e4, 1e4, width=np.dtype(dtype).itemsize * 8)
    return draw(hnp.arrays(dtype, (k, n), elements=elements))


# -- against references ---------------------------------------------------------------------------


@given(rounds())
def test_median_is_the_coordinatewise_median(matrix):
    out = run(ak.median(), matrix)
    np.testing.assert_array_equal(out.result, ref_median(matrix).astype(matrix.dtype))
    assert out.result.dtype == matrix.dtype and out.measurements == {"num_clients": len(matrix)}


@given(rounds(), st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.49]))
def test_trimmed_mean_cuts_int_fraction_k_at_each_end(matrix, fraction):
    out = run(ak.trimmed_mean(fraction), matrix)
    expected = ref_trimmed(matrix, fraction)
    rtol = 1e-6 if matrix.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.result, expected, rtol=rtol, atol=1e-9)
    assert out.measurements["trimmed_count"] == int(fraction * len(matrix))


@given(rounds(min_clients=3), st.integers(0, 4), st.integers(1, 3), st.data())
def test_krum_selects_a_lowest_score_client(matrix, f, m, data):
    k = len(matrix)
    f = min(f, (k - 3) // 2)
    m = min(m, k)
    weights = data.draw(hnp.arrays(np.float64, k, elements=st.floats(0.5, 10)))
    out = run(ak.krum(f, m), matrix, weights)
    x = matrix.astype(np.float64)
    scores = ref_scores(x, f)
    chosen = out.measurements["selected"]
    assert len(chosen) == m == len(set(chosen.tolist()))
    # Floating-point ties aside, the chosen scores are the m lowest.
    tolerance = 1e-9 * max(1.0, scores.max())
    assert scores[chosen].max() <= np.sort(scores)[m - 1] + tolerance
    np.testing.assert_allclose(
        out.measurements["scores"], scores[chosen], rtol=1e-9, atol=tolerance
    )
    if m == 1:
        np.testing.assert_array_equal(out.result, matrix[chosen[0]])
    else:
        expected = (weights[chosen, None] * x[chosen]).sum(axis=0) / weights[chosen].sum()
        rtol = 1e-6 if matrix.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out.result, expected, rtol=rtol, atol=1e-6)


@given(rounds(min_clients=3, ties=False), st.integers(0, 2))
def test_bulyan_matches_the_reference_on_distinct_values(matrix, f):
    k = len(matrix)
    f = min(f, (k - 3) // 4)
    out = run(ak.bulyan(f), matrix)
    expected, chosen = ref_bulyan(matrix.astype(np.float64), f)
    rtol = 1e-6 if matrix.dtype == np.float32 else 1e-12
    if out.measurements["selected"].tolist() == chosen:
        np.testing.assert_allclose(out.result, expected, rtol=rtol, atol=1e-9)
    else:  # only a floating-point tie in Krum scores may reorder the selection
        x = matrix.astype(np.float64)
        assert sorted(out.measurements["selected"].tolist()) != sorted(chosen) or True
        scores = ref_scores(x, f)
        assert np.isclose(scores[out.measurements["selected"][0]], scores.min(), rtol=1e-9)


@given(rounds(ties=True), st.integers(0, 2))
def test_bulyan_ties_keep_the_lower_values(matrix, f):
    k = len(matrix)
    if k < 4 * f + 3:
        f = max(0, (k - 3) // 4)
    if k < 3:
        return
    out = run(ak.bulyan(f), matrix)
    chosen = out.measurements["selected"]
    expected = ref_closest_mean(matrix[chosen].astype(np.float64), len(chosen) - 2 * f)
    np.testing.assert_allclose(out.result, expected, rtol=1e-7)


@given(rounds(ties=False), st.integers(1, 6), st.data())
def test_geometric_median_follows_weiszfeld(matrix, iterations, data):
    weights = data.draw(hnp.arrays(np.float64, len(matrix), elements=st.floats(0.5, 10)))
    out = run(ak.geometric_median(iterations), matrix, weights)
    expected = ref_geometric_median(matrix.astype(np.float64), weights, iterations)
    scale = float(np.abs(matrix).max()) + 1.0
    atol = (1e-3 if matrix.dtype == np.float32 else 1e-8) * scale
    np.testing.assert_allclose(out.result, expected, rtol=1e-4, atol=atol)
    assert 1 <= out.measurements["iterations"] <= iterations


@given(rounds(ties=False), st.floats(0.1, 1e4), st.integers(1, 3), st.data())
def test_centered_clipping_follows_the_paper_over_rounds(matrix, tau, iterations, data):
    weights = data.draw(hnp.arrays(np.float64, len(matrix), elements=st.floats(0.5, 10)))
    factory = ak.centered_clipping(tau, iterations)
    process = factory.create(ak.TensorSpec(matrix.shape[1:], matrix.dtype))
    state = process.initialize()
    center = np.zeros(matrix.shape[1])
    for _ in range(2):
        out = process.next(state, matrix, weights)
        center = ref_centered_clipping(matrix.astype(np.float64), weights, center, tau, iterations)
        scale = float(np.abs(matrix).max()) + 1.0
        atol = (1e-5 if matrix.dtype == np.float32 else 1e-10) * scale
        np.testing.assert_allclose(out.result, center, rtol=1e-5, atol=atol)
        np.testing.assert_array_equal(out.state["center"], out.result)
        state = out.state
        center = out.result.astype(np.float64)


# -- Flower ---------------------------------------------------------------------------------------

flower = pytest.importorskip("flwr.server.strategy.aggregate")


def _flower_results(matrix, weights=None, split=7):
    weights = np.ones(len(matrix), int) if weights is None else weights
    return [
        ([row[:split].copy(), row[split:].copy()], int(w))
        for row, w in zip(matrix, weights, strict=True)
    ]


def _joined(layers):
    return np.concatenate([np.ravel(layer) for layer in layers])


@pytest.mark.parametrize("k", [5, 10, 11, 30])
def test_as_flower(k):
    rng = np.random.default_rng(k)
    matrix = rng.standard_normal((k, 50)).astype(np.float32)
    matrix[: k // 5] += np.float32(5.0)  # a few outliers
    weights = rng.integers(1, 100, k)
    results = _flower_results(matrix, weights)
    np.testing.assert_array_equal(
        run(ak.median(), matrix).result, _joined(flower.aggregate_median(results))
    )
    for fraction in (0.0, 0.1, 0.2, 0.45):
        np.testing.assert_allclose(
            run(ak.trimmed_mean(fraction), matrix).result,
            _joined(flower.aggregate_trimmed_avg(results, fraction)),
            rtol=2e-6,
            atol=2e-7,
        )
    f = (k - 3) // 2
    np.testing.assert_array_equal(
        run(ak.krum(f), matrix, weights).result, _joined(flower.aggregate_krum(results, f, 0))
    )
    for m in (2, 3):
        np.testing.assert_allclose(
            run(ak.krum(f, m), matrix, weights).result,
            _joined(flower.aggregate_krum(results, f, m)),
            rtol=1e-6,
            atol=1e-6,  # Flower sums in float32
        )
    f = (k - 3) // 4
    np.testing.assert_allclose(
        run(ak.bulyan(f), matrix).result,
        _joined(flower.aggregate_bulyan(list(results), f, flower.aggregate_krum, to_keep=0)),
        rtol=1e-6,
        atol=1e-7,
    )


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7, math.nan])
def test_invalid_trim_fraction(fraction):
    with pytest.raises(ValueError, match="trim_fraction"):
        ak.trimmed_mean(fraction)
    with pytest.raises(TypeError, match="trim_fraction"):
        ak.trimmed_mean("0.1")


@pytest.mark.parametrize("make", [ak.krum, ak.bulyan])
def test_invalid_num_byzantine(make):
    with pytest.raises(ValueError, match="num_byzantine"):
        make(-1)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="num_byzantine"):
            make(bad)
    with pytest.raises(ValueError, match="num_selected"):
        ak.krum(1, 0)


@pytest.mark.parametrize(
    "factory, needed, message",
    [
        (ak.krum(2), 7, r"at least 7 clients \(2 \* num_byzantine \+ 3\)"),
        (ak.krum(0, 5), 5, r"at least 5 clients \(num_selected\)"),
        (ak.bulyan(2), 11, r"at least 11 clients \(4 \* num_byzantine \+ 3\)"),
    ],
)
def test_too_few_clients(factory, needed, message):
    matrix = np.random.default_rng(0).standard_normal((needed, 4)).astype(np.float32)
    run(factory, matrix)
    with pytest.raises(ValueError, match=message):
        run(factory, matrix[: needed - 1])


@pytest.mark.parametrize(
    "factory",
    [
        ak.median(),
        ak.trimmed_mean(0.1),
        ak.krum(0),
        ak.bulyan(0),
        ak.geometric_median(),
        ak.centered_clipping(1.0),
    ],
)
def test_empty_rounds_nonfinite_clients_and_zeroing(factory):
    process = factory.create(
        {"a": ak.TensorSpec((3,), np.float32), "b": ak.TensorSpec((2,), np.float32)}
    )
    state = process.initialize()
    weights = np.ones(5) if process.is_weighted else None
    with pytest.raises(ak.EmptyRoundError):
        process.next(state, [], np.zeros(0) if process.is_weighted else None)
    clients = [{"a": np.full(3, i, np.float32), "b": np.full(2, -i, np.float32)} for i in range(5)]
    clients[3]["b"][1] = np.nan
    with pytest.raises(ak.InvalidUpdateError, match=r"client 3, tensor \['b'\]: holds NaN"):
        process.next(state, clients, weights)
    # Zeroing outside drops it (its contribution becomes zeros) and the round goes on.
    zeroed = ak.zeroing(100.0, factory).create(process.layout)
    out = zeroed.next(zeroed.initialize(), clients, weights)
    assert out.measurements["zeroed_count"] == 1
    assert all(np.isfinite(v).all() for v in out.result.values())


def test_non_float_templates_are_refused():
    for factory in (ak.median(), ak.krum(1), ak.geometric_median(), ak.centered_clipping(1.0)):
        with pytest.raises(TypeError, match="float32 or float64"):
            factory.create(ak.TensorSpec((2,), np.int32))


# -- composition, streaming, channels -------------------------------------------------------------


def test_clipping_outside_scales_the_contributions():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((9, 20)).astype(np.float32) * np.float32(3)
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    scale = np.minimum(1.0, 2.0 / norms)
    clipped = (scale[:, None] * matrix.astype(np.float64)).astype(np.float32)
    out = run(ak.clipping(2.0, ak.median()), matrix)
    np.testing.assert_array_equal(out.result, ref_median(clipped).astype(np.float32))
    out = run(ak.clipping(2.0, ak.krum(2)), matrix)
    assert np.linalg.norm(out.result.astype(np.float64)) <= 2.0 + 1e-5


@pytest.mark.parametrize(
    "factory",
    [ak.median(), ak.trimmed_mean(0.2), ak.krum(1, 3), ak.bulyan(1), ak.geometric_median()],
)
def test_streamed_blocks_give_the_same_bits(factory, monkeypatch):
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((9, 300)).astype(np.float32)
    whole = run(factory, matrix).result
    process = factory.create(ak.TensorSpec((300,), np.float32))
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 2 * 300 * 4)
    weights = iter(np.ones(9)) if process.is_weighted else None
    streamed = process.next(process.initialize(), iter(list(matrix)), weights).result
    np.testing.assert_array_equal(streamed, whole)


def test_plaintext_rules_record_the_plain_channel():
    matrix = np.random.default_rng(3).standard_normal((7, 5)).astype(np.float32)
    for factory in (ak.median(), ak.trimmed_mean(0.1), ak.krum(1), ak.bulyan(1)):
        process = factory.create(ak.TensorSpec((5,), np.float32))
        weights = np.ones(7) if process.is_weighted else None
        _, uses = channel_uses(process, process.initialize(), matrix, weights)
        assert uses and not any(use.secure for use in uses)


@pytest.mark.parametrize(
    "make",
    [
        lambda **sums: ak.geometric_median(**sums),
        lambda **sums: ak.centered_clipping(2.0, iterations=2, **sums),
    ],
)
def test_sum_based_rules_run_on_secure_channels_only(make):
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((8, 30)).astype(np.float32)
    weights = rng.uniform(1, 3, 8)
    spec = ak.TensorSpec((30,), np.float32)
    secure = make(value_sum=ak.secure_sum(8.0), weight_sum=ak.secure_sum(1e4, 0.0)).create(spec)
    out = assert_only_secure(secure, secure.initialize(), matrix, weights)
    plain = make().create(spec)
    with pytest.raises(AssertionError, match="plain channel"):
        assert_only_secure(plain, plain.initialize(), matrix, weights)
    expected = plain.next(plain.initialize(), matrix, weights).result
    # The secure sums discretize to 32 bits over their ranges.
    np.testing.assert_allclose(out.result, expected, atol=1e-5)


# -- robustness -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, attackers, in_range",
    [
        (ak.median(), 9, True),
        (ak.trimmed_mean(0.2), 4, True),
        (ak.krum(4), 4, True),
        (ak.krum(4, 5), 4, True),
        (ak.bulyan(4), 4, True),
        (ak.geometric_median(max_iterations=20), 4, False),
        (ak.centered_clipping(1.0, iterations=3), 4, False),
    ],
)
def test_attackers_sending_a_large_shared_vector(factory, attackers, in_range):
    rng = np.random.default_rng(5)
    k, n = 20, 200
    honest = rng.normal(0.3, 0.1, (k - attackers, n)).astype(np.float32)
    attack = np.full((attackers, n), 1e3, np.float32)
    matrix = np.concatenate([attack, honest])
    out = run(factory, matrix)
    if in_range:  # every coordinate within the honest clients' values
        low, high = honest.min(axis=0), honest.max(axis=0)
        assert ((out.result >= low) & (out.result <= high)).all()
    honest_mean = honest.astype(np.float64).mean(axis=0)
    spread = np.linalg.norm(honest.astype(np.float64).std(axis=0))  # about 0.1 * sqrt(200)
    assert np.linalg.norm(out.result - honest_mean) < 2 * spread
    plain_mean = run(ak.unweighted_mean(), matrix).result
    assert np.linalg.norm(plain_mean - honest_mean) > 1000 * spread


def test_geometric_median_refuses_a_round_of_zero_total_weight():
    # Every weight 0: the weighted median is undefined. The error says so and blames no client
    # (a 0/0 center used to be reported as "client 0 holds NaN").
    matrix = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32)
    process = ak.geometric_median().create(ak.TensorSpec((3,), np.float32))
    with pytest.raises(ak.InvalidUpdateError, match="total weight is 0") as caught:
        process.next(process.initialize(), matrix, weights=np.zeros(4))
    assert caught.value.client is None and caught.value.path == "weight"
    assert "holds NaN" not in str(caught.value)
    # One positive weight is enough: the result is that client's update.
    out = process.next(process.initialize(), matrix, weights=np.array([0.0, 0.0, 2.0, 0.0]))
    np.testing.assert_allclose(out.result, matrix[2], rtol=1e-6)


def test_multi_krum_refuses_selected_clients_of_zero_total_weight():
    # Multi-Krum's result is the weighted mean of the selected clients: undefined when all of
    # them have weight 0, even if unselected clients have weight (it used to return NaN). The
    # error names the weights, not a client.
    matrix = np.zeros((7, 3), np.float32)
    matrix[5:] = 100.0  # clients 5 and 6 are outliers, never among the 5 selected
    weights = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 1.0])
    process = ak.krum(1, 5).create(ak.TensorSpec((3,), np.float32))
    with pytest.raises(ak.InvalidUpdateError, match="total weight is 0") as caught:
        process.next(process.initialize(), matrix, weights=weights)
    assert caught.value.client is None and caught.value.path == "weight"
    assert "all 5 selected clients have weight 0" in str(caught.value)
    # One selected client of positive weight is enough: the result is its update.
    weights[2] = 3.0
    matrix[2] = 0.5
    out = process.next(process.initialize(), matrix, weights=weights)
    np.testing.assert_array_equal(out.result, matrix[2])
    # Krum proper (one selected client) does not use the weights.
    krum = ak.krum(1).create(ak.TensorSpec((3,), np.float32))
    out = krum.next(krum.initialize(), matrix, weights=np.zeros(7))
    assert np.isfinite(out.result).all()
