"""Tutorial: federated MNIST, from two workers to 100 clients with each aggkit preset.

    python docs/tutorials/federated_mnist.py            # the committed figures (~30 min, 2 cores)
    python docs/tutorials/federated_mnist.py --quick    # a minute; what tests/test_docs.py runs

Part 1 runs the two example scripts: ``examples/mnist_plain.py`` (the PyTorch MNIST example) and
``examples/mnist_federated.py`` (the same script trained over the workers "bob" and "alice").
Part 2 trains the MNIST CNN over 100 clients with the plain mean and each preset, and records the
test accuracy, the aggregators' measurements and their cost per round.

Writes into ``--out`` (default ``docs/tutorials/figures/federated-mnist``): ``seed.diff``,
``seed.txt``, ``presets.md``, ``accuracy.png``, ``norms.png``, ``history.json`` and ``run.md``.
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
from pathlib import Path

import numpy as np
from tutorial_utils import (
    FIGURES,
    Output,
    Settings,
    fedavg_config,
    load_data,
    markdown_table,
    pyplot,
    round_axis,
)

import aggkit as ak

ROOT = Path(__file__).resolve().parents[2]

#: The DP preset's noise multiplier (see the page: meaningful privacy needs far more clients).
NOISE_MULTIPLIER = 0.1


def seed_diff() -> str:
    """The lines that turn the plain PyTorch script into federated training."""
    plain, federated = (
        (ROOT / "examples" / name).read_text().splitlines(keepends=True)
        for name in ("mnist_plain.py", "mnist_federated.py")
    )
    return "".join(
        difflib.unified_diff(
            plain, federated, "examples/mnist_plain.py", "examples/mnist_federated.py", n=2
        )
    )


def run_seed_scenario(out: Output, quick: bool) -> None:
    """Part 1: the plain script and its federated version, as a user would run them."""
    out.text("seed.diff", seed_diff())
    transcript = []
    for script in ("mnist_plain.py", "mnist_federated.py"):
        # Two epochs in quick mode too: tests/test_docs.py checks that both scripts learn from
        # this transcript (it is the suite's only run of the two examples).
        args = [f"examples/{script}", "--epochs", "2"] + (["--quick"] if quick else [])
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True
        )
        transcript.append(f"$ python {' '.join(args)}\n{done.stdout.strip()}\n")
        print(transcript[-1])
    out.text("seed.txt", "\n".join(transcript))


# --8<-- [start:presets]
def presets(settings: Settings) -> dict[str, ak.Factory]:
    """The aggregators of part 2: the plain weighted mean and the four presets."""
    return {
        "mean": ak.mean(),
        "robust": ak.robust_aggregator(),
        # The trainer reports the epsilon of the sampling it does (exactly clients_per_round).
        "dp": ak.dp_aggregator(NOISE_MULTIPLIER, settings.clients_per_round, seed=0),
        "compression": ak.compression_aggregator(),
        "secure": ak.secure_aggregator(),
    }


def train_presets(settings: Settings) -> dict[str, list[dict]]:
    """Part 2: one federated run per aggregator, same clients and seeds; the histories."""
    import torch

    from aggkit_torch.data import partition_iid
    from aggkit_torch.federated import FederatedTrainer
    from aggkit_torch.models import MnistCNN

    train_x, train_y, test_x, test_y = load_data(settings)
    parts = partition_iid(train_y, settings.num_clients, seed=0)
    histories = {}
    for name, factory in presets(settings).items():
        print(f"--- {name}")
        torch.manual_seed(0)  # the same initial model for every aggregator
        trainer = FederatedTrainer(
            MnistCNN(),
            factory,
            train_x,
            train_y,
            parts,
            test_x,
            test_y,
            config=fedavg_config(settings),
        )
        histories[name] = trainer.run(settings.rounds, progress=False)
    return histories


# --8<-- [end:presets]


def last(history: list[dict], key: str):
    return history[-1]["measurements"].get(key)


def summarize(histories: dict[str, list[dict]], settings: Settings) -> str:
    """``presets.md``: accuracy, cost and the telling measurements of each run."""
    notes = {
        "mean": lambda h: "",
        "robust": lambda h: (
            f"zeroing norm {last(h, 'zeroing_norm'):.3g}, "
            f"clipping norm {last(h, 'zeroing/clipping_norm'):.3g}"
        ),
        "dp": lambda h: (
            f"clip {last(h, 'zeroing/dp_query_metrics/clip'):.3g}, epsilon "
            f"{h[-1]['epsilon']:.3g} at delta {h[-1]['delta']:.2g} ({h[-1]['sampling']})"
        ),
        "compression": lambda h: (
            f"{last(h, 'zeroing/clipping/mean_value/bytes_per_client'):,} bytes per client, "
            f"{last(h, 'zeroing/clipping/mean_value/compression_ratio'):.2f}x smaller"
        ),
        "secure": lambda h: (
            f"secure range +-{last(h, 'zeroing/clipping/mean_value/secure_upper_threshold'):.3g}"
        ),
    }
    rows = []
    for name, history in histories.items():
        rows.append(
            [
                f"`{name}`",
                history[-1]["test_accuracy"],
                max(m["test_accuracy"] for m in history),
                1e3 * float(np.median([m["aggregate_seconds"] for m in history])),
                float(np.median([m["round_seconds"] for m in history])),
                notes[name](history),
            ]
        )
    headers = [
        "aggregator",
        f"accuracy after {settings.rounds} rounds",
        "best",
        "aggregation ms/round",
        "s/round (all)",
        "last round",
    ]
    return markdown_table(headers, rows)


def plot_accuracy(histories: dict[str, list[dict]]):
    """Accuracy per round (left) and its difference from the plain mean's (right)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    baseline = np.array([m["test_accuracy"] for m in histories["mean"]])
    styles = ["-", "--", "-", "-.", ":"]
    for (name, history), style in zip(histories.items(), styles, strict=False):
        rounds = [m["round"] for m in history]
        accuracy = np.array([m["test_accuracy"] for m in history])
        left.plot(rounds, accuracy, style, marker="o", markersize=3, label=name)
        right.plot(rounds, 100 * (accuracy - baseline), style, marker="o", markersize=3, label=name)
    left.set_ylabel("test accuracy")
    left.set_title("Federated MNIST, 100 clients: each aggregator")
    right.set_ylabel("percentage points")
    right.set_title("Test accuracy minus the plain mean's")
    for ax in (left, right):
        round_axis(ax)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_norms(histories: dict[str, list[dict]]):
    """The adaptive thresholds of the presets, round by round."""
    plt = pyplot()
    series = [
        ("robust", "zeroing_norm", "robust: zeroing norm (L-inf)"),
        ("robust", "zeroing/clipping_norm", "robust: clipping norm (L2)"),
        ("dp", "zeroing/dp_query_metrics/clip", "dp: clip for the next round (L2)"),
        (
            "secure",
            "zeroing/clipping/mean_value/secure_upper_threshold",
            "secure: secure-sum range (max |weighted value|)",
        ),
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, key, label in series:
        history = histories[run]
        ax.plot(
            [m["round"] for m in history],
            [m["measurements"][key] for m in history],
            marker="o",
            markersize=3,
            label=label,
        )
    ax.set_yscale("log")
    round_axis(ax)
    ax.set_ylabel("threshold used in the round")
    ax.set_title("Adaptive norms and bounds during training")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (the docs test)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of the full run")
    parser.add_argument("--out", type=Path, default=FIGURES / "federated-mnist")
    parser.add_argument("--skip-seed", action="store_true", help="skip part 1")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings.full(args.rounds)
    command = "python docs/tutorials/federated_mnist.py" + (" --quick" if args.quick else "")
    out = Output(args.out, settings, command)
    if not args.skip_seed:
        run_seed_scenario(out, args.quick)
    histories = train_presets(settings)
    out.text("presets.md", summarize(histories, settings))
    out.json("history.json", histories)
    out.figure("accuracy.png", plot_accuracy(histories))
    out.figure("norms.png", plot_norms(histories))
    out.finish()


if __name__ == "__main__":
    main()
