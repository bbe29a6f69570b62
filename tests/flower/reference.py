"""The run every Flower test compares with: aggkit_torch's own FederatedTrainer on real MNIST."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

#: One small federated MNIST run, as a Flower run config (the main job's options).
RUN = {
    "aggregator": "robust",
    "rounds": 2,
    "local-steps": 3,
    "batch-size": 32,
    "train-subset": 1200,
    "seed": 7,
    "server-eval": False,
}


def run_config(clients: int, per_round: int, **extra: Any) -> dict[str, Any]:
    return {**RUN, "clients": clients, "clients-per-round": per_round, **extra}


def as_flag(config: dict[str, Any]) -> str:
    """The run config as ``flwr run --run-config`` takes it."""

    def toml(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return f'"{value}"' if isinstance(value, str) else repr(value)

    return " ".join(f"{key}={toml(value)}" for key, value in config.items())


@contextlib.contextmanager
def torch_threads(count: int | None):
    import torch

    saved = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def trainer_run(
    mnist: Any, clients: int, per_round: int, threads: int | None = None, rounds: int | None = None
):
    """FederatedTrainer with the seeds, partitions and initial weights the Flower apps use.

    Written out by hand (not through aggkit_torch.flower's helpers), so the comparison checks
    the Flower apps against the trainer rather than against themselves.
    """
    import torch

    import aggkit as ak
    from aggkit_torch.data import partition_iid
    from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
    from aggkit_torch.models import MnistCNN

    n, seed = RUN["train-subset"], RUN["seed"]
    images, labels = mnist.train_images[:n], mnist.train_labels[:n]
    with torch_threads(threads):
        torch.manual_seed(seed)
        trainer = FederatedTrainer(
            MnistCNN(),
            ak.robust_aggregator(),
            images,
            labels,
            partition_iid(labels, clients, seed=seed),
            config=FedAvgConfig(
                clients_per_round=per_round,
                local_steps=RUN["local-steps"],
                batch_size=RUN["batch-size"],
                seed=seed,
            ),
        )
        for _ in range(RUN["rounds"] if rounds is None else rounds):
            trainer.run_round()
    params = {name: p.detach().numpy().copy() for name, p in trainer.model.named_parameters()}
    return params, trainer.history


def assert_same_run(flower_arrays: dict[str, np.ndarray], flower_history, reference) -> float:
    """The Flower run equals the trainer's: same clients, measurements and final weights.

    Returns the largest absolute weight difference (0.0 when the runs agree bit for bit).
    """
    params, history = reference
    assert len(flower_history) == len(history) > 0
    for ours, theirs in zip(flower_history, history, strict=True):
        assert [str(c) for c in ours["clients"]] == theirs["clients"]
        assert ours["measurements"].keys() == theirs["measurements"].keys()
        for key, value in theirs["measurements"].items():
            assert np.isclose(ours["measurements"][key], value, rtol=1e-6, atol=0), key
        assert ours["nonfinite_clients"] == theirs["nonfinite_clients"] == 0
        assert ours["examples"] == theirs["examples"]
    assert sorted(flower_arrays) == sorted(params)
    worst = 0.0
    for name, value in params.items():
        np.testing.assert_allclose(flower_arrays[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        worst = max(worst, float(np.abs(flower_arrays[name] - value).max()))
    return worst


def flower_run(federation: Any, tmp_path: Path, config: dict[str, Any], timeout: float):
    """Write the app, ``flwr run`` it on ``federation``; the run's metrics.json and weights.

    Also checks what every real run must show: it succeeded, and the aggregator's measurements
    reached Flower as metrics and logs.
    """
    from aggkit_torch.flower.app import write_app

    app = write_app(tmp_path / "app").parent
    done = federation.run(app, as_flag(config), timeout=timeout)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:] + federation.tail()
    out = Path(config["out"])
    assert (out / "model.npz").exists(), logs[-4000:] + federation.tail()
    summary = json.loads((out / "metrics.json").read_text())
    last = summary["train_metrics"][str(config["rounds"])]
    assert {"aggregator/zeroing_norm", "aggregator/zeroing/clipping_norm"} <= set(last)
    assert last["clients"] == config["clients-per-round"]
    assert "'aggregator/zeroing/clipping_norm'" in logs
    return summary, dict(np.load(out / "model.npz"))
