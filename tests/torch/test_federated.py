"""The federated trainer, parameter views and the MNIST command line, on real data."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import aggkit as ak
from aggkit_torch import mnist as mnist_cli
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer, flatten_measurements
from aggkit_torch.models import MnistCNN
from aggkit_torch.params import (
    model_layout,
    parameters_to_vector,
    vector_to_parameters,
    write_delta,
)


@pytest.mark.parametrize("channels_last", [False, True])
def test_parameter_views_round_trip(channels_last):
    from aggkit_torch.local_training import prepare_model

    model = prepare_model(MnistCNN(), channels_last=channels_last)
    layout = model_layout(model)
    assert layout.size == 431_080 and layout.paths[0] == "['conv1.weight']"
    vector = parameters_to_vector(model)
    structure = layout.unflatten(vector)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(structure[name], p.detach().numpy())
    new = np.arange(layout.size, dtype=np.float32) / layout.size
    vector_to_parameters(new, model)
    np.testing.assert_array_equal(parameters_to_vector(model), new)
    # A delta written into a batch row is initial - trained, in the layout's order.
    batch = layout.empty_batch(2)
    assert write_delta(new + 1, model, batch.matrix[1])
    np.testing.assert_allclose(batch.matrix[1], 1.0, rtol=0, atol=1e-6)
    with torch.no_grad():
        next(model.parameters()).view(-1)[5] = float("nan")
    assert not write_delta(new, model, batch.matrix[0])


def _subset(mnist, n_train=2400, n_test=2000):
    return (
        mnist.train_images[:n_train],
        mnist.train_labels[:n_train],
        mnist.test_images[:n_test],
        mnist.test_labels[:n_test],
    )


def _trainer(mnist, aggregator, **config):
    from aggkit_torch.data import partition_iid

    x, y, tx, ty = _subset(mnist)
    defaults = {"clients_per_round": 4, "local_steps": 15, "seed": 3}
    torch.manual_seed(0)
    return FederatedTrainer(
        MnistCNN(),
        aggregator,
        x,
        y,
        partition_iid(y, 6, seed=0),
        tx,
        ty,
        config=FedAvgConfig(**{**defaults, **config}),
    )


@pytest.mark.mnist
# dp-ftrl and distributed-dp need far more clients per round than four to learn through their
# noise: tests/torch/test_dp_training.py trains them in a setting that should.
@pytest.mark.parametrize(
    "name", [n for n in mnist_cli.AGGREGATORS if n not in ("dp-ftrl", "distributed-dp")]
)
def test_short_real_mnist_run_learns(mnist, name):
    # Four clients per round: the dp job's default noise multiplier (1.0, for 100 per round)
    # exceeds what the adaptive clip's count noise allows there; 0.1 does not.
    noise = ["--noise-multiplier", "0.1"] if name == "dp" else []
    args = mnist_cli.parse_args(["--aggregator", name, "--clients-per-round", "4", *noise])
    weighting = "uniform" if name == "dp" else "num_examples"
    trainer = _trainer(mnist, mnist_cli.make_aggregator(name, args), client_weighting=weighting)
    history = trainer.run(2, progress=False, log=None)
    # Chance is 0.1. DP starts from a clip norm of 0.1 (TFF's default) that adapts upwards over
    # rounds, so two short rounds move it less far (0.40 measured; the others 0.7-0.9). Krum
    # (one selected client) applies a single client's update per round, so two rounds learn from
    # two clients' data instead of eight: the bar is "well above chance", as for DP.
    bar = 0.25 if name in ("dp", "krum") else 0.6
    assert history[-1]["test_accuracy"] > bar
    assert history[-1]["nonfinite_clients"] == 0
    if name == "robust":
        assert {"zeroing_norm", "zeroed_count", "zeroing/clipping_norm"} <= set(
            history[-1]["measurements"]
        )


@pytest.mark.mnist
def test_a_nan_client_is_zeroed_with_weight_zero_and_the_run_goes_on(mnist, monkeypatch):
    from aggkit_torch import federated

    real_train = federated.train_local
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        result = real_train(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the second client of the first round diverges
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(federated, "train_local", poisoned)
    seen = []
    trainer = _trainer(mnist, ak.mean())
    original_next = trainer.process.next

    def spy(state, batch, weights=None):
        seen.append((batch.matrix.copy(), None if weights is None else weights.copy()))
        return original_next(state, batch, weights)

    trainer.process.next = spy
    history = trainer.run(2, progress=False, log=None)
    matrix, weights = seen[0]
    assert weights[1] == 0 and not matrix[1].any() and (weights[[0, 2, 3]] > 0).all()
    assert history[0]["nonfinite_clients"] == 1 and history[1]["nonfinite_clients"] == 0
    assert all(math.isfinite(p.sum().item()) for p in trainer.model.parameters())
    assert history[-1]["test_accuracy"] > 0.5


@pytest.mark.mnist
def test_checkpoint_resume_is_bit_exact(mnist, tmp_path):
    straight = _trainer(mnist, ak.robust_aggregator(), server_momentum=0.9)
    straight.run(3, progress=False, log=None)
    first = _trainer(mnist, ak.robust_aggregator(), server_momentum=0.9)
    first.run(2, progress=False, log=None)
    first.save(tmp_path / "run.ckpt")
    resumed = _trainer(mnist, ak.robust_aggregator(), server_momentum=0.9)
    resumed.load(tmp_path / "run.ckpt")
    assert resumed.round == 2
    resumed.run(1, progress=False, log=None)
    np.testing.assert_array_equal(
        parameters_to_vector(resumed.model), parameters_to_vector(straight.model)
    )
    assert resumed.history[-1]["measurements"] == straight.history[-1]["measurements"]


def test_server_optimizer_sgd_lr_one_is_the_average_of_trained_models():
    torch.manual_seed(0)
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    trainer = FederatedTrainer(
        MnistCNN(),
        ak.mean(),
        x,
        y,
        [range(0, 10), range(10, 40)],
        config=FedAvgConfig(clients_per_round=2, local_steps=2, seed=1, channels_last=False),
    )
    initial = parameters_to_vector(trainer.model).astype(np.float64)
    captured = []
    original = trainer.process.next

    def spy(state, batch, weights=None):
        captured.append((batch.matrix.astype(np.float64), weights.copy()))
        return original(state, batch, weights)

    trainer.process.next = spy
    trainer.run_round()
    deltas, weights = captured[0]
    expected = initial - (weights @ deltas) / weights.sum()
    np.testing.assert_allclose(parameters_to_vector(trainer.model), expected, atol=1e-6)


def test_config_and_trainer_validation():
    with pytest.raises(ValueError, match="clients_per_round"):
        FedAvgConfig(clients_per_round=0)
    with pytest.raises(ValueError, match="server_optimizer"):
        FedAvgConfig(server_optimizer="rmsprop")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="exceeds"):
        FederatedTrainer(MnistCNN(), ak.mean(), x, y, [range(4)])
    with pytest.raises(TypeError, match="factory"):
        FederatedTrainer(MnistCNN(), "mean", x, y, [range(4)])


def test_flatten_measurements():
    nested = {
        "zeroing": {"clipping": {"mean_value": ()}, "clipping_norm": np.float64(1.5)},
        "zeroed_count": 2,
    }
    assert flatten_measurements(nested) == {"zeroing/clipping_norm": 1.5, "zeroed_count": 2}


@pytest.mark.mnist
@pytest.mark.slow
def test_cli_runs_and_writes_metrics_and_plot(mnist_root, tmp_path, capsys):
    command = [
        sys.executable,
        "-m",
        "aggkit_torch.mnist",
        "--aggregator",
        "robust",
        "--clients",
        "4",
        "--rounds",
        "2",
        "--local-steps",
        "10",
        "--train-subset",
        "2000",
        "--data",
        str(mnist_root),
        "--out",
        str(tmp_path),
        "--no-progress",
        "--checkpoint",
        str(tmp_path / "ckpt"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("test accuracy: ")
    accuracy = float(last.split(": ")[1])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert len(metrics["history"]) == 2 and "zeroed_count" in metrics["history"][0]["measurements"]
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # Running again with the same checkpoint resumes after round 2 and does no more rounds (in
    # this process: the command line was exercised above, a second interpreter adds nothing).
    from aggkit_torch.mnist import main

    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    try:
        main(command[3:])
    finally:  # main() sets both for its run; the tests after this one keep theirs
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
    assert "resumed from" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 2  # no new round
