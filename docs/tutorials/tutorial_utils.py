"""Helpers shared by the two tutorial scripts: run settings, data, tables and plots.

The tutorials import this file from their own folder (``python docs/tutorials/<script>.py`` puts
the folder on ``sys.path``); it is not part of the aggkit package.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parent / "figures"


@dataclass(frozen=True)
class Settings:
    """How big a run is. ``full()`` made the committed figures; ``quick()`` is the docs test."""

    num_clients: int
    clients_per_round: int
    rounds: int
    train_subset: int | None  # None: all 60,000 training examples
    test_subset: int | None  # None: all 10,000 test examples
    local_steps: int
    batch_size: int = 32

    @classmethod
    def full(cls, rounds: int) -> Settings:
        return cls(
            num_clients=100,
            clients_per_round=10,
            rounds=rounds,
            train_subset=None,
            test_subset=None,
            local_steps=10,
        )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            num_clients=20,
            clients_per_round=4,
            rounds=2,
            train_subset=2000,
            test_subset=500,
            local_steps=2,
        )

    def describe(self) -> str:
        data = "all 60,000" if self.train_subset is None else f"the first {self.train_subset:,}"
        test = "10,000" if self.test_subset is None else f"{self.test_subset:,}"
        return (
            f"{self.num_clients} clients over {data} training examples, "
            f"{self.clients_per_round} per round, {self.rounds} rounds, "
            f"{self.local_steps} local steps of batch {self.batch_size} "
            f"(SGD lr 0.01, momentum 0.5), FedAvg server (SGD lr 1.0), accuracy on {test} "
            "test images"
        )


def load_data(settings: Settings):
    """MNIST in memory, cut to the settings' subsets: (train_x, train_y, test_x, test_y)."""
    from aggkit_torch.data import load_mnist

    data = load_mnist()
    n, m = settings.train_subset, settings.test_subset
    return (
        data.train_images[:n],
        data.train_labels[:n],
        data.test_images[:m],
        data.test_labels[:m],
    )


def fedavg_config(settings: Settings, **overrides: Any):
    """The FedAvgConfig of the tutorials (the library defaults, seed 0)."""
    from aggkit_torch.federated import FedAvgConfig

    return FedAvgConfig(
        clients_per_round=settings.clients_per_round,
        local_steps=settings.local_steps,
        batch_size=settings.batch_size,
        seed=0,
        **overrides,
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats keep 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class Output:
    """Writes a tutorial's files into one folder and remembers what it wrote."""

    def __init__(self, folder: Path, settings: Settings, command: str):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.command = command
        self.started = time.perf_counter()
        self.written: list[str] = []

    def text(self, name: str, content: str) -> None:
        (self.folder / name).write_text(content)
        self.written.append(name)
        print(f"wrote {self.folder / name}")

    def json(self, name: str, data: Any) -> None:
        self.text(name, json.dumps(data, indent=1, default=float) + "\n")

    def figure(self, name: str, fig) -> None:
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(self.folder / name, dpi=110)
        plt.close(fig)
        self.written.append(name)
        print(f"wrote {self.folder / name}")

    def finish(self) -> None:
        """Write ``run.md``: the command and settings that produced these files."""
        import platform

        import torch

        import aggkit

        minutes = (time.perf_counter() - self.started) / 60
        self.text(
            "run.md",
            (
                f"Produced by `{self.command}` ({self.settings.describe()}) in {minutes:.1f} "
                f"minutes on {platform.machine()} with {torch.get_num_threads()} torch threads, "
                f"aggkit {aggkit.__version__}, torch {torch.__version__}.\n"
            ),
        )


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def round_axis(ax) -> None:
    """Label the x axis as rounds, with integer ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
