"""Real Flower runs of the MNIST apps, each checked against aggkit_torch's FederatedTrainer.

- simulation: the SuperLink runs in simulation mode as a subprocess and ``flwr run`` submits the
  app, as ``docs/flower.md`` does on a laptop; 12 virtual SuperNodes live in Flower's
  simulation engine (Ray workers), 10 train per round. Needs ``flwr[simulation]``.
- deployment: a SuperLink and SuperNodes as subprocesses on 127.0.0.1 (``flower-superlink``,
  ``flower-supernode --node-config 'partition-id=<i> num-partitions=<n>'``), talking HTTP, with
  the commands of ``docs/flower.md``. Every node answers the partition query; 3 train per
  round, because every ClientApp task is a fresh ``flwr-clientapp`` process (about 5 s of CPU
  for Flower's runtime, torch and MNIST). Needs only ``flwr``. 5 SuperNodes for 2 rounds: a
  round that carries the aggregator's state (the adaptive clip) from a real first round, with
  11 ClientApp starts; many clients per round are the simulation's part (and the in-process
  test's, ``test_strategy.py``), which keeps the suite near its ten-minute budget.

Both run ``robust_aggregator()``; the final global model must be the one the
trainer computes from the same seeds, partitions and initial weights, and the aggregator's
measurements must reach Flower as metrics.
"""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

from tests.flower import reference
from tests.flower.federation import Federation

HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.parametrize(
    ("engine", "nodes", "per_round", "rounds"),
    [("simulation", 12, 10, 2), ("deployment", 5, 3, 2)],
)
def test_flower_run_equals_the_trainer(
    engine, nodes, per_round, rounds, mnist, mnist_root, tmp_path
):
    if engine == "simulation" and not HAVE_RAY:
        pytest.skip("Flower's simulation engine needs flwr[simulation] (Ray)")
    config = reference.run_config(
        nodes, per_round, rounds=rounds, threads=1, data=str(mnist_root), out=str(tmp_path / "out")
    )
    simulation = engine == "simulation"
    with Federation(tmp_path / "flwr", nodes, simulation=simulation) as federation:
        summary, arrays = reference.flower_run(federation, tmp_path, config, timeout=300)
    expected = reference.trainer_run(mnist, nodes, per_round, threads=1, rounds=rounds)
    worst = reference.assert_same_run(arrays, summary["history"], expected)
    print(f"{engine}: largest weight difference from FederatedTrainer: {worst:.3g}")
