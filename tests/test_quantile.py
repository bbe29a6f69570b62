"""Quantile estimation: every applicable case of TFF's quantile_estimation_test.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

import aggkit as ak
from aggkit.quantile import QuantileEstimator


def test_process_type_signature():
    for estimator in (
        ak.quantile_estimator(1.0, 0.5, 0.2),
        ak.private_quantile_estimator(
            1.0, 0.5, 0.2, below_estimate_stddev=0.5, expected_num_records=10, seed=1
        ),
    ):
        state = estimator.initialize()
        query_state, record_state = state
        assert record_state == ()
        assert len(query_state) == 4 and query_state[:3] == (1.0, 0.5, 0.2)
        assert isinstance(estimator.report(state), float)
    assert ak.quantile_estimator(1.0, 0.5, 0.2).initialize()[0][3] == ()


def test_bad_aggregation_factory():
    with pytest.raises(TypeError, match="unweighted"):
        ak.quantile_estimator(1.0, 0.5, 0.2, record_sum=ak.mean())
    with pytest.raises(TypeError, match="factory"):
        ak.quantile_estimator(1.0, 0.5, 0.2, record_sum="sum")


@pytest.mark.parametrize("geometric", [True, False])
def test_adaptation(geometric):
    c0, q, lr = 3.14159, 0.61803, 2.71828
    estimator = ak.quantile_estimator(c0, q, lr, geometric_update=geometric)
    state = estimator.next(estimator.initialize(), [c0 + 1, c0 + 2])  # both above
    expected = c0 * math.exp(lr * q) if geometric else c0 + lr * q
    assert estimator.report(state) == pytest.approx(expected, rel=1e-12)


def test_all_below_shrinks_by_the_documented_factor():
    estimator = ak.quantile_estimator(2.0, 0.8, 0.2)
    state = estimator.next(estimator.initialize(), [0.1, 2.0, 1.0])  # a value equal counts below
    assert estimator.report(state) == pytest.approx(2.0 * math.exp(-0.2 * (1 - 0.8)), rel=1e-12)


def test_no_noise_cls():
    estimator = ak.quantile_estimator(1.0, 0.5, 1.0)
    assert isinstance(estimator, QuantileEstimator) and not estimator.is_private
    assert estimator.report(estimator.initialize()) == 1.0


def test_no_noise_affine_cls():
    estimator = ak.quantile_estimator(1.0, 0.5, 1.0, multiplier=2.0, increment=1.0)
    assert estimator.report(estimator.initialize()) == 3.0


def test_converges_to_the_target_quantile():
    rng = np.random.default_rng(0)
    estimator = ak.quantile_estimator(1.0, 0.8, 0.2)
    state = estimator.initialize()
    for _ in range(400):
        state = estimator.next(state, rng.exponential(5.0, size=50))
    expected = -5.0 * math.log(1 - 0.8)  # the 0.8 quantile of Exp(mean 5) is 8.05
    assert estimator.report(state) == pytest.approx(expected, rel=0.15)


def test_nonfinite_values_count_as_above():
    estimator = ak.quantile_estimator(1.0, 0.5, 1.0)
    state = estimator.next(estimator.initialize(), [np.nan, np.inf])
    assert estimator.report(state) == pytest.approx(math.exp(0.5))


def test_zero_clients_keep_the_estimate():
    estimator = ak.quantile_estimator(1.5, 0.5, 1.0)
    state = estimator.initialize()
    assert estimator.next(state, []) == state


def test_private_noise_is_reproducible_for_a_seed():
    def run(seed):
        estimator = ak.private_quantile_estimator(
            1.0, 0.5, 0.2, below_estimate_stddev=2.0, expected_num_records=10, seed=seed
        )
        state = estimator.initialize()
        reports = []
        for _ in range(3):
            state = estimator.next(state, np.linspace(0.5, 1.5, 10))
            reports.append(estimator.report(state))
        return reports

    assert run(7) == run(7) and run(7) != run(8)
    # Without noise, data with exactly half the values at or below the estimate leave it in place.
    quiet = ak.private_quantile_estimator(
        1.0, 0.5, 0.2, below_estimate_stddev=0.0, expected_num_records=10, seed=0
    )
    state = quiet.next(quiet.initialize(), np.linspace(0.5, 1.5, 10))
    assert quiet.report(state) == pytest.approx(1.0)


def test_private_divides_by_the_expected_count():
    estimator = ak.private_quantile_estimator(
        1.0, 0.5, 1.0, below_estimate_stddev=0.0, expected_num_records=4, seed=0
    )
    # 2 clients, both below: sum of records = 1.0 -> fraction 1.0 / 4 + 0.5 = 0.75
    state = estimator.next(estimator.initialize(), [0.1, 0.2])
    assert estimator.report(state) == pytest.approx(math.exp(-1.0 * (0.75 - 0.5)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"initial_estimate": 0.0}, "initial_estimate"),
        ({"initial_estimate": -1.0}, "initial_estimate"),
        ({"target_quantile": 1.5}, "target_quantile"),
        ({"target_quantile": -0.1}, "target_quantile"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"multiplier": 0.0}, "multiplier"),
        ({"increment": -1.0}, "increment"),
        ({"initial_estimate": math.nan}, "initial_estimate"),
    ],
)
def test_bad_parameters_name_the_argument(kwargs, name):
    args = {"initial_estimate": 1.0, "target_quantile": 0.5, "learning_rate": 0.2, **kwargs}
    with pytest.raises(ValueError, match=name):
        ak.quantile_estimator(**args)


def test_bad_private_parameters():
    with pytest.raises(ValueError, match="below_estimate_stddev"):
        ak.private_quantile_estimator(
            1.0, 0.5, 0.2, below_estimate_stddev=-1.0, expected_num_records=1
        )
    with pytest.raises(ValueError, match="expected_num_records"):
        ak.private_quantile_estimator(
            1.0, 0.5, 0.2, below_estimate_stddev=1.0, expected_num_records=0
        )
    with pytest.raises(TypeError, match="initial_estimate"):
        ak.quantile_estimator("1.0", 0.5, 0.2)
