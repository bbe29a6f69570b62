"""AggkitStrategy with Poisson client sampling and the run's epsilon, on an in-process grid."""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from aggkit import privacy
from aggkit_torch.federated import FedAvgConfig, sample_clients
from aggkit_torch.flower.strategy import AggkitStrategy
from tests.flower.test_strategy import _grid, _run_round, _scripted_app, _strategy

pytest.importorskip("dp_accounting")
pytestmark = pytest.mark.usefixtures("task_identity")


def test_poisson_rounds_are_the_trainers_and_report_the_runs_epsilon():
    # Four partitions, two per round on average: some rounds have 1, 3 or 4 clients.
    aggregator = ak.gaussian_fixed(0.9, 2, clip=10.0, seed=4)
    strategy = _strategy(aggregator, clients_per_round=2, seed=8, sampling="poisson")
    grid = _grid(_scripted_app())
    accounted = 0
    for server_round in range(1, 7):
        expected = sorted(int(p) for p in sample_clients(8, server_round - 1, 4, 2, "poisson"))
        arrays, metrics = _run_round(strategy, grid, server_round)
        if not expected:  # nobody sampled: nothing released, nothing accounted
            assert arrays is None
            continue
        accounted += 1
        assert sorted(strategy.history[-1]["clients"]) == expected
        assert metrics["clients"] == len(expected)
        epsilon = privacy.epsilon(
            0.9, clients_per_round=2, population=4, rounds=accounted, delta=1e-5
        )
        assert metrics["epsilon"] == pytest.approx(epsilon, rel=1e-12)
        assert strategy.history[-1]["epsilon"] == metrics["epsilon"]
    assert len({len(h["clients"]) for h in strategy.history}) > 1  # the size varied


def test_a_mismatched_aggregator_epsilon_is_refused_and_poisson_needs_partitions():
    accounted = ak.gaussian_fixed(0.9, 2, clip=10.0, population=4, seed=4)
    strategy = _strategy(accounted, clients_per_round=2, seed=8)  # fixed-size sampling
    with pytest.raises(privacy.SamplingMismatchError, match="'fixed_size'"):
        _run_round(strategy, _grid(_scripted_app()))
    assert strategy.history == []
    # Without partitions the population (hence the sampling rate) is unknown.
    with pytest.raises(ValueError, match="partition_sampling"):
        AggkitStrategy(
            ak.mean(),
            FedAvgConfig(clients_per_round=2, sampling="poisson"),
            partition_sampling=False,
        )
    # The same aggregator in a Poisson run reports the same epsilon as the strategy's.
    poisson = _strategy(accounted, clients_per_round=2, seed=8, sampling="poisson")
    _, metrics = _run_round(poisson, _grid(_scripted_app()), 2)
    assert metrics["epsilon"] == pytest.approx(metrics["aggregator/privacy/epsilon"], rel=1e-12)
    assert np.isfinite(metrics["epsilon"])
