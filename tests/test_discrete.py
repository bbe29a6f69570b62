"""ak.discretization and ak.modular_clipping: TFF's integer steps of distributed DP."""

from __future__ import annotations

import math

import numpy as np
import pytest

import aggkit as ak
from aggkit.discrete import MAX_TRIES, inflated_l2_norm_bound, stochastic_round
from aggkit.process import Contributions
from aggkit.structure import ClientBatch
from aggkit.testing import assert_only_secure

F64 = ak.TensorSpec((4,), np.float64)


def test_deterministic_rounding_is_to_the_nearest_grid_point():
    process = ak.discretization(ak.sum(), 8.0, stochastic=False).create(F64)
    out = process.next(process.initialize(), [np.array([0.06, -0.06, 0.2, 1.0])] * 2)
    # 0.48 -> 0, -0.48 -> 0, 1.6 -> 2, 8 -> 8 per client.
    np.testing.assert_array_equal(out.result, [0.0, 0.0, 0.5, 2.0])
    assert out.measurements == {"discretize": ()}


def test_stochastic_rounding_is_unbiased():
    n = 200_000
    process = ak.discretization(ak.sum(), 1.0, seed=3).create(ak.TensorSpec((n,), np.float64))
    out = process.next(process.initialize(), [np.full(n, 0.3)])
    assert set(np.unique(out.result)) == {0.0, 1.0}
    standard_error = math.sqrt(0.3 * 0.7 / n)
    assert abs(out.result.mean() - 0.3) < 4 * standard_error


def test_conditional_rounding_meets_its_bound_and_biases_toward_small_norms():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 2000)
    bound = inflated_l2_norm_bound(np.linalg.norm(x), 1.0, math.exp(-0.5), x.size)
    plain = inflated_l2_norm_bound(np.linalg.norm(x), 1.0, 0.0, x.size)
    assert bound < plain == pytest.approx(np.linalg.norm(x) + math.sqrt(2000))
    tries = []
    for key in range(50):
        q, t = stochastic_round(x, key, bound)
        assert np.linalg.norm(q) <= bound
        assert np.all((q == np.floor(x)) | (q == np.floor(x) + 1))
        tries.append(t)
    assert max(tries) < MAX_TRIES


def test_inflated_bound_matches_the_papers_formula():
    c, gamma, beta, d = 2.0, 0.05, math.exp(-0.5), 4096
    expected = math.sqrt(
        c**2
        + gamma**2 * d / 4
        + math.sqrt(2 * math.log(1 / beta)) * gamma * (c + gamma * math.sqrt(d) / 2)
    )
    assert inflated_l2_norm_bound(c, gamma, beta, d) == pytest.approx(min(expected, c + gamma * 64))


def test_unreachable_bound_is_refused(monkeypatch):
    from aggkit import discrete

    monkeypatch.setattr(discrete, "MAX_TRIES", 20)  # the real 1000 tries take a while
    with pytest.raises(ak.InvalidUpdateError, match="client 3: conditional stochastic rounding"):
        stochastic_round(np.full(10, 0.5), 1, threshold=0.1, client=3)


def test_values_that_do_not_fit_int32_are_refused_with_the_client():
    process = ak.discretization(None, 1e9, stochastic=False).create(F64)
    with pytest.raises(ak.InvalidUpdateError, match=r"client 1: .*int32"):
        process.next(process.initialize(), [np.zeros(4), np.full(4, 3.0)])


def test_non_finite_clients_are_refused():
    process = ak.discretization(None, 2.0).create(F64)
    with pytest.raises(ak.InvalidUpdateError, match="client 0"):
        process.next(process.initialize(), [np.array([np.nan, 0, 0, 0])])


def test_seeded_rounding_repeats_and_moves_on_each_round():
    template = ak.TensorSpec((1000,), np.float64)
    x = [np.full(1000, 0.5)]
    results = []
    for seed in (1, 1, 2):
        process = ak.discretization(None, 1.0, seed=seed).create(template)
        first = process.next(process.initialize(), x)
        second = process.next(first.state, x)
        results.append((first.result, second.result))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert not np.array_equal(results[0][0], results[0][1])
    assert not np.array_equal(results[0][0], results[2][0])


def test_discretization_over_a_secure_sum_is_secure():
    inner = ak.secure_sum(2**20, -(2**20))
    process = ak.discretization(inner, 100.0, seed=0).create(F64)
    out = assert_only_secure(process, process.initialize(), [np.array([0.5, -0.25, 1.0, 0.0])] * 3)
    np.testing.assert_allclose(out.result, [1.5, -0.75, 3.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scale": 0.0}, ValueError),
        ({"scale": "2"}, TypeError),
        ({"beta": 1.0}, ValueError),
        ({"stochastic": 1}, TypeError),
        ({"prior_norm_bound": -1.0}, ValueError),
        ({"seed": -1}, ValueError),
        ({"inner": ak.mean()}, TypeError),
    ],
)
def test_discretization_bad_arguments(kwargs, error):
    with pytest.raises(error):
        ak.discretization(**{"scale": 1.0, **kwargs})
    with pytest.raises(TypeError, match="floating"):
        ak.discretization(None, 1.0).create(ak.TensorSpec((2,), np.int32))


# -- modular clipping ----------------------------------------------------------------------------


def test_modular_clipping_returns_the_sum_modulo_the_width():
    rng = np.random.default_rng(1)
    values = [rng.integers(-1000, 1000, 6).astype(np.int32) for _ in range(7)]
    process = ak.modular_clipping(ak.sum(), -8, 8).create(ak.TensorSpec((6,), np.int32))
    out = process.next(process.initialize(), values)
    expected = (np.sum(values, axis=0) + 8) % 16 - 8
    np.testing.assert_array_equal(out.result, expected)
    assert out.measurements == {"modclip": ()}


def test_modular_clipping_is_exact_for_wide_int64_ranges():
    process = ak.modular_clipping(None, -(2**61), 2**61).create(ak.TensorSpec((2,), np.int64))
    big = np.array([2**62 + 5, -(2**62) - 7], np.int64)
    out = process.next(process.initialize(), [big])
    np.testing.assert_array_equal(out.result, [5, -7])


def test_modular_clipping_around_a_secure_sum_is_a_secure_modular_sum():
    bits = 10
    inner = ak.secure_sum(2**bits - 1, 0)
    process = ak.modular_clipping(inner, 0, 2**bits).create(ak.TensorSpec((3,), np.int32))
    values = [np.array([1000, -3, 512], np.int32), np.array([100, -1, 600], np.int32)]
    out = assert_only_secure(process, process.initialize(), values)
    np.testing.assert_array_equal(out.result, np.sum(values, axis=0) % 2**bits)


def test_modular_clipping_refuses_bad_ranges_scaling_and_floats():
    with pytest.raises(ValueError, match="below"):
        ak.modular_clipping(None, 4, 4)
    with pytest.raises(TypeError, match="int"):
        ak.modular_clipping(None, 0.0, 4)
    with pytest.raises(TypeError, match="does not fit"):
        ak.modular_clipping(None, 0, 2**40).create(ak.TensorSpec((2,), np.int32))
    with pytest.raises(TypeError, match="integer"):
        ak.modular_clipping(None, 0, 8).create(ak.TensorSpec((2,), np.float32))
    process = ak.modular_clipping(None, 0, 8).create(ak.TensorSpec((2,), np.int32))
    with pytest.raises(TypeError, match="coefficients"):
        round_ = process.begin_round(process.initialize())
        batch = ClientBatch(np.ones((1, 2), np.int64), process.layout)
        round_.add(Contributions(batch, np.array([0.5])), None)
