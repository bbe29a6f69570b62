"""Checkpoints are read with weights_only=True: a crafted file cannot run code and is refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import aggkit as ak
from aggkit_torch import checkpoint
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
from aggkit_torch.models import MnistCNN
from aggkit_torch.params import parameters_to_vector


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: what an attacker's checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _tiny_trainer(aggregator=None, **config) -> FederatedTrainer:
    torch.manual_seed(0)
    x, y = torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))
    settings = {"clients_per_round": 3, "local_steps": 1, "seed": 2, "server_momentum": 0.9}
    return FederatedTrainer(
        MnistCNN(),
        aggregator if aggregator is not None else ak.dp_aggregator(0.1, 3, seed=5),
        x,
        y,
        [range(0, 8), range(8, 16), range(16, 24)],
        config=FedAvgConfig(**{**settings, **config}),
    )


def test_a_crafted_pickle_runs_nothing_and_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "run.ckpt"
    # The crafted payload is a real attack: unpickled without restrictions, it creates the file.
    torch.save({"round": 1, "model": _Payload(marker)}, crafted)
    torch.load(crafted, weights_only=False)
    assert marker.exists()
    marker.unlink()
    trainer = _tiny_trainer(client_weighting="uniform")
    before = parameters_to_vector(trainer.model).copy()
    with pytest.raises(checkpoint.CheckpointError, match=r"refused.*Unsupported global"):
        trainer.load(crafted)
    assert not marker.exists()
    np.testing.assert_array_equal(parameters_to_vector(trainer.model), before)
    assert trainer.round == 0


def test_the_main_job_refuses_a_crafted_checkpoint(tmp_path):
    # --checkpoint loads the file automatically when it exists: it must refuse it, not run it.
    from tests.torch.test_data import _fake_mnist

    _fake_mnist(tmp_path / "data" / "MNIST" / "raw", n_train=8, n_test=4)
    marker = tmp_path / "pwned"
    crafted = tmp_path / "run.ckpt"
    torch.save(_Payload(marker), crafted)
    command = [sys.executable, "-m", "aggkit_torch.mnist", "--clients", "2", "--rounds", "1"]
    command += ["--local-steps", "1", "--data", str(tmp_path / "data"), "--no-download"]
    command += ["--no-progress", "--out", str(tmp_path / "out"), "--checkpoint", str(crafted)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--checkpoint:" in done.stderr, done.stderr[-2000:]
    assert "refused" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_other_files_are_refused_clearly(tmp_path):
    (tmp_path / "text").write_text("not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
        checkpoint.load(tmp_path / "text")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
        checkpoint.load(tmp_path / "empty")
    torch.save({"model": torch.zeros(2)}, tmp_path / "foreign")
    with pytest.raises(checkpoint.CheckpointError, match="not an aggkit_torch checkpoint"):
        checkpoint.load(tmp_path / "foreign")


def test_save_creates_missing_parent_directories(tmp_path):
    # The main job saves after its first round: a --checkpoint in a directory that does not
    # exist yet must not end the job there.
    path = tmp_path / "runs" / "today" / "job.ckpt"
    checkpoint.save(path, {"round": 3, "t": torch.arange(3)})
    back = checkpoint.load(path)
    assert back["round"] == 3 and torch.equal(back["t"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["job.ckpt"]  # no .tmp left


def test_numpy_values_round_trip_with_their_dtypes():
    state = {
        "a": (np.float64(0.1), np.int64(-3), np.uint64(2**64 - 1), np.bool_(True), ()),
        "b": [np.arange(6, dtype=np.uint64).reshape(2, 3), np.zeros((0,), np.float32)],
        1: {"nested": "text", "t": torch.ones(2), "x": None},
    }
    back = checkpoint.from_plain(checkpoint.to_plain(state))
    assert type(back["a"]) is tuple and [type(v) for v in back["a"][:4]] == [
        np.float64,
        np.int64,
        np.uint64,
        np.bool_,
    ]
    assert back["a"][:4] == state["a"][:4]
    assert back["b"][0].dtype == np.uint64 and back["b"][0].shape == (2, 3)
    np.testing.assert_array_equal(back["b"][0], state["b"][0])
    assert back[1]["nested"] == "text" and torch.equal(back[1]["t"], torch.ones(2))
    with pytest.raises(TypeError, match=r"cannot checkpoint a builtins\.object"):
        checkpoint.to_plain({"x": object()})
    with pytest.raises(TypeError, match="dtype object"):
        checkpoint.to_plain(np.array([None]))


def _same(a, b) -> bool:
    """Equal values of the same types, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


def test_resume_from_a_safe_checkpoint_is_bit_exact(tmp_path):
    # dp's state holds np.uint64 noise keys and np.int64 counters (seeded, so that the noise is
    # the same in both runs).
    straight = _tiny_trainer(ak.dp_aggregator(0.1, 3, seed=5), client_weighting="uniform")
    for _ in range(3):
        straight.run_round()
    first = _tiny_trainer(ak.dp_aggregator(0.1, 3, seed=5), client_weighting="uniform")
    for _ in range(2):
        first.run_round()
    first.save(tmp_path / "run.ckpt")
    resumed = _tiny_trainer(ak.dp_aggregator(0.1, 3, seed=5), client_weighting="uniform")
    resumed.load(tmp_path / "run.ckpt")
    assert resumed.round == 2 and _same(resumed.aggregator_state, first.aggregator_state)
    resumed.run_round()
    np.testing.assert_array_equal(
        parameters_to_vector(resumed.model), parameters_to_vector(straight.model)
    )
    assert resumed.history[-1]["measurements"] == straight.history[-1]["measurements"]


def test_a_compression_state_survives_with_its_uint64_array(tmp_path):
    trainer = _tiny_trainer(ak.compression_aggregator())
    trainer.run_round()
    trainer.save(tmp_path / "run.ckpt")
    other = _tiny_trainer(ak.compression_aggregator())
    other.load(tmp_path / "run.ckpt")
    assert _same(other.aggregator_state, trainer.aggregator_state)
    assert _same(other.state_dict()["history"], trainer.state_dict()["history"])
