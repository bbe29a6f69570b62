"""The Flower app's run configuration is the main job's command line, and the app directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aggkit_torch import mnist
from aggkit_torch.flower.app import write_app
from aggkit_torch.flower.run_config import (
    FLOWER_KEYS,
    RUN_CONFIG,
    client_train_config,
    client_train_settings,
    fedavg_config,
    mnist_args,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "flower.md"

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def test_defaults_are_the_main_jobs():
    assert vars(mnist_args(RUN_CONFIG)) == vars(mnist.parse_args([]))
    assert vars(mnist_args({})) == vars(mnist.parse_args([]))


def test_every_main_job_option_is_a_run_config_key():
    options = {name.replace("_", "-") for name in vars(mnist.parse_args([]))}
    not_for_flower = {"out", "checkpoint", "no-progress", "no-download", "attack", "malicious"}
    # The Flower apps are the MNIST apps: the MNIST CNN on MNIST, on each node's CPU.
    not_for_flower |= {"dataset", "device"}
    assert options - not_for_flower == set(RUN_CONFIG) - set(FLOWER_KEYS)


def test_values_reach_the_parser():
    args = mnist_args(
        {"aggregator": "mean", "local-steps": 5, "lr": 1, "weighting": "uniform", "seed": 0}
    )
    assert (args.aggregator, args.local_steps, args.lr, args.weighting) == (
        "mean",
        5,
        1.0,
        "uniform",
    )
    assert mnist_args({"train-subset": 0, "threads": 0}).train_subset is None
    assert mnist_args({"aggregator": "dp"}).weighting == "uniform"  # the main job's rule


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"aggregator": "medoid"}, "invalid choice: 'medoid'"),
        ({"rounds": "three"}, "invalid int value"),
        ({"rounds": True}, "rounds=True: expected a string or a number"),
    ],
)
def test_bad_values_are_value_errors(config, message):
    with pytest.raises(ValueError, match=message):
        mnist_args(config)


def test_client_train_config_round_trips():
    pytest.importorskip("torch")
    args = mnist_args(
        {"local-steps": 4, "batch-size": 16, "lr": 0.2, "momentum": 0.0, "proximal-mu": 0.01}
    )
    settings = client_train_settings(client_train_config(fedavg_config(args)))
    assert settings == {
        "seed": 0,
        "epochs": 1,
        "steps": 4,
        "batch_size": 16,
        "lr": 0.2,
        "momentum": 0.0,
        "proximal_mu": 0.01,
        "channels_last": True,
    }
    with pytest.raises(KeyError, match="lacks 'seed'"):
        client_train_settings({})


def test_write_app(tmp_path):
    path = write_app(tmp_path / "app", rounds=2, server_eval=False, data="/x/y")
    config = tomllib.loads(path.read_text())
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "aggkit_torch.flower.server_app:app",
        "clientapp": "aggkit_torch.flower.client_app:app",
    }
    assert app["config"] == {**RUN_CONFIG, "rounds": 2, "server-eval": False, "data": "/x/y"}
    assert config["project"]["license"] == {"file": "LICENSE"}
    assert (tmp_path / "app" / "LICENSE").exists()
    with pytest.raises(ValueError, match="unknown run config key 'round'"):
        write_app(tmp_path / "other", round=2)


def test_docs_name_every_run_config_key():
    text = DOCS.read_text()
    missing = [key for key in RUN_CONFIG if f"`{key}`" not in text]
    assert not missing, f"docs/flower.md does not mention {missing}"
    for flag in re.findall(r'--run-config "([^"]*(?:\\"[^"]*)*)"', text):
        keys = re.findall(r"([a-z-]+)=", flag)
        assert keys and set(keys) <= set(RUN_CONFIG), flag


def test_import_needs_neither_flower_nor_torch():
    code = (
        "import sys, aggkit_torch, aggkit_torch.flower, aggkit_torch.flower.app; "
        "print(','.join(m for m in ('flwr', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
