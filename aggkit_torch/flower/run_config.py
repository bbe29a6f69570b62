"""The Flower MNIST app's configuration: the options of ``python -m aggkit_torch.mnist``.

A Flower run is configured by a flat TOML table, ``[tool.flwr.app.config]`` in the app's
``pyproject.toml``, overridden with ``flwr run --run-config 'key=value ...'``. The MNIST app's
keys are the long options of the main job (``aggregator``, ``clients``, ``rounds``,
``local-steps``, ...) and are read by the main job's own parser (:func:`mnist_args`), so a
Flower run and ``python -m aggkit_torch.mnist`` given the same options train the same model.
TOML has no null: ``0`` or ``""`` stands for "not set" where the command line's default is
None (``clients-per-round``, ``server-lr``, ``local-steps``, ``weighting``, ``sampling``,
``target-epsilon``, ``num-byzantine``, ``trim-fraction``, ``data``, ``train-subset``,
``threads``). The main job's
simulated attacks (``attack``, ``malicious``) act inside its in-process trainer and are not
run-config keys.

The strategy tells each client how to train in the train message's config
(:func:`client_train_config`; read back with :func:`client_train_settings`), so one client
app serves any run.

Examples
--------
>>> args = mnist_args({"aggregator": "mean", "local-steps": 0, "lr": 0.05})
>>> args.aggregator, args.local_steps, args.lr, args.clients_per_round
('mean', None, 0.05, 10)
>>> config = fedavg_config(args)
>>> train = client_train_config(config)
>>> train["client-lr"], train["local-steps"]
(0.05, 0)
>>> client_train_settings(train)["steps"] is None
True
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aggkit_torch import mnist

if TYPE_CHECKING:
    from aggkit_torch.federated import FedAvgConfig

__all__ = [
    "FLOWER_KEYS",
    "RUN_CONFIG",
    "client_train_config",
    "client_train_settings",
    "fedavg_config",
    "mnist_args",
    "partitions",
]

#: The app's run configuration and its defaults (those of ``python -m aggkit_torch.mnist``).
RUN_CONFIG: dict[str, str | int | float | bool] = {
    "aggregator": "robust",
    "clients": 10,
    "clients-per-round": 0,
    "rounds": 3,
    "local-epochs": 1,
    "local-steps": 0,
    "partition": "iid",
    "alpha": 0.5,
    "batch-size": 64,
    "lr": 0.01,
    "momentum": 0.5,
    "proximal-mu": 0.0,
    "buffers": "aggregate",
    "server-optimizer": "sgd",
    "server-lr": 0.0,
    "server-momentum": 0.0,
    "weighting": "",
    "weight-cap": 4.0,
    "noise-multiplier": 0.7,
    "clip": 0.12,
    "num-byzantine": 0,
    "trim-fraction": 0.0,
    "code-bits": 32,
    "target-epsilon": 0.0,
    "delta": 1e-5,
    "sampling": "",
    "data": "",
    "train-subset": 0,
    "eval-every": 1,
    "seed": 0,
    "threads": 0,
    # Flower only: whether the server evaluates on the MNIST test set (every eval-every rounds
    # and after the last), the fraction of nodes that evaluate on their share of the test set
    # each round (0: none), where the server app writes metrics.json and model.npz ("":
    # nowhere), and how long a round may wait for replies (seconds).
    "server-eval": True,
    "fraction-evaluate": 0.0,
    "out": "",
    "round-timeout": 3600.0,
}

#: Keys that only the Flower apps read (the others are ``python -m aggkit_torch.mnist``'s).
FLOWER_KEYS = ("server-eval", "fraction-evaluate", "out", "round-timeout")

# Values that mean "not set" (the command line's default, None, has no TOML spelling).
_UNSET = {
    "clients-per-round": 0,
    "server-lr": 0.0,
    "local-steps": 0,
    "weighting": "",
    "num-byzantine": 0,
    "trim-fraction": 0.0,
    "target-epsilon": 0.0,
    "sampling": "",
    "data": "",
    "train-subset": 0,
    "threads": 0,
}


def mnist_args(run_config: Mapping[str, Any]) -> argparse.Namespace:
    """The main job's arguments for a Flower run configuration.

    Keys of :data:`RUN_CONFIG` that are missing take the command line's defaults; unknown keys
    are ignored (a Flower app may carry its own).

    Raises
    ------
    ValueError
        A value the main job's parser rejects (the message is the parser's).
    """
    argv: list[str] = []
    for key in RUN_CONFIG:
        if key in FLOWER_KEYS or key not in run_config:
            continue
        value = run_config[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"run config {key}={value!r}: expected a string or a number")
        if key in _UNSET and value == _UNSET[key]:
            continue
        argv += [f"--{key}", str(value)]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return mnist.parse_args(argv)
    except SystemExit:
        raise ValueError(
            f"invalid run config: {errors.getvalue().strip().splitlines()[-1]}"
        ) from None


# The main job's own builders, so that a Flower run and `python -m aggkit_torch.mnist` agree.
fedavg_config = mnist.fedavg_config
partitions = mnist.partitions


def client_train_config(config: FedAvgConfig) -> dict[str, int | float | bool]:
    """What a client needs to train as :class:`FederatedTrainer` would (a ConfigRecord's items).

    ``local-steps`` 0 means whole epochs; ``channels-last`` is resolved, since the memory format
    changes the convolution's rounding.
    """
    from aggkit_torch.local_training import CHANNELS_LAST_DEFAULT

    channels_last = config.channels_last
    return {
        "seed": config.seed,
        "local-epochs": config.local_epochs,
        "local-steps": config.local_steps or 0,
        "batch-size": config.batch_size,
        "client-lr": float(config.client_lr),
        "client-momentum": float(config.client_momentum),
        "proximal-mu": float(config.proximal_mu),
        "channels-last": CHANNELS_LAST_DEFAULT if channels_last is None else bool(channels_last),
    }


def client_train_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """Read :func:`client_train_config`'s items back (KeyError names a missing one)."""
    try:
        return {
            "seed": int(record["seed"]),
            "epochs": int(record["local-epochs"]),
            "steps": int(record["local-steps"]) or None,
            "batch_size": int(record["batch-size"]),
            "lr": float(record["client-lr"]),
            "momentum": float(record["client-momentum"]),
            # Flower's FedProx key; absent (a strategy that sends none): no proximal term.
            "proximal_mu": float(record.get("proximal-mu", 0.0)),
            "channels_last": bool(record["channels-last"]),
        }
    except KeyError as error:
        raise KeyError(
            f"the train message's config lacks {error}; was it sent by AggkitStrategy?"
        ) from None
