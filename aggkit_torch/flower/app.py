"""Write the Flower app directory that ``flwr run`` takes.

A Flower app is a directory whose ``pyproject.toml`` names the ServerApp and ClientApp and
holds the run configuration. The apps live in the installed ``aggkit_torch`` package, so the
directory needs nothing else::

    python -m aggkit_torch.flower.app flower-mnist          # writes flower-mnist/pyproject.toml
    flwr run flower-mnist <superlink> --run-config 'rounds=5 aggregator="robust"' --stream

The SuperLink and every SuperNode must have ``aggkit[torch,flower]`` installed: the app
bundle carries the configuration, not the code.

Examples
--------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     lines = write_app(d, rounds=2).read_text().splitlines()
>>> [line for line in lines if line.startswith(("clientapp", "rounds"))]
['clientapp = "aggkit_torch.flower.client_app:app"', 'rounds = 2']
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from aggkit_torch.flower.run_config import RUN_CONFIG

__all__ = ["write_app"]

_HEADER = """\
# A Flower app: federated MNIST with an aggkit aggregator (written by aggkit_torch.flower.app).
# The code is the installed aggkit_torch package; SuperLink and SuperNodes need
# `pip install 'aggkit[torch,flower]'`. Override any key below with
# `flwr run <this directory> <superlink> --run-config 'key=value ...'`.

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "Federated MNIST with an aggkit aggregator, on Flower"
license = {{ file = "LICENSE" }}
dependencies = ["flwr>=1.41"]

[tool.flwr.app]
publisher = "aggkit"

[tool.flwr.app.components]
serverapp = "aggkit_torch.flower.server_app:app"
clientapp = "aggkit_torch.flower.client_app:app"

# The options of `python -m aggkit_torch.mnist` (0 or "" where its default is None), then the
# Flower-only keys.
[tool.flwr.app.config]
"""


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (str, int, float)):
        raise TypeError(f"run config values are strings, numbers or booleans, got {value!r}")
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def write_app(
    directory: str | os.PathLike[str],
    *,
    name: str = "aggkit-flower-mnist",
    **config: str | int | float | bool,
) -> Path:
    """Write ``directory/pyproject.toml`` (and a LICENSE) for the federated MNIST apps.

    Parameters
    ----------
    directory : path-like
        Created if missing.
    name : str
        The app's project name.
    **config
        Run-config defaults to change, with underscores for dashes (``local_steps=5``).

    Returns
    -------
    pathlib.Path
        The ``pyproject.toml`` written.
    """
    values = dict(RUN_CONFIG)
    for key, value in config.items():
        toml_key = key.replace("_", "-")
        if toml_key not in values:
            raise ValueError(f"unknown run config key {key!r}; known: {sorted(values)}")
        values[toml_key] = value
    lines = [_HEADER.format(name=name)]
    lines += [f"{key} = {_toml_value(value)}\n" for key, value in values.items()]
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text("".join(lines))
    (path / "LICENSE").write_text(
        "Apache-2.0. The code of this app is the aggkit package (aggkit_torch.flower).\n"
    )
    return path / "pyproject.toml"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m aggkit_torch.flower.app",
        description="Write a Flower app directory for federated MNIST with aggkit.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--name", default="aggkit-flower-mnist", help="the app's project name")
    args = parser.parse_args(argv)
    path = write_app(args.directory, name=args.name)
    print(f"wrote {path}; run it with: flwr run {args.directory} <superlink> --stream")
    return path


if __name__ == "__main__":
    main()
