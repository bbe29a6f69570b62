"""Federated training throughput against plain PyTorch, in the same process and run.

The setting: the MNIST CNN on real MNIST, 100 IID clients, 10 per round, one local epoch
(6,000 samples a round), batch 64, SGD lr 0.01 momentum 0.5, channels_last, with
``robust_aggregator``. The baselines train the same CNN on the same in-memory data with the same
batch size, optimizer and memory format: ``plain`` (an index-sliced loop over one tensor) and
``dataloader`` (the PySyft tutorial's DataLoader with per-sample transforms). With torchvision
installed, a second pair: the federated trainer on the torchvision dataset itself
(``clients=partition_dataset(datasets.MNIST(transform=...), parts)``, per-sample transforms
through a DataLoader) against that same tutorial DataLoader. Passes are interleaved and each
keeps its best, so a machine shared with other jobs slows all of them alike.

Script (the figures for the docs)::

    .venv/bin/python benchmarks/bench_federated.py --budget 300 --out .benchmarks/federated.md

It prints, and writes as Markdown: samples/s of each loop, the federated time per sample as a
multiple of plain PyTorch's (goal <= 1.05x; the PySyft tutorial: 1.9x), and for each preset the
share of a round spent aggregating.

pytest-benchmark (``AGGKIT_BENCH_FULL=1`` for the real sizes; a smoke run otherwise)::

    AGGKIT_BENCH_FULL=1 .venv/bin/python -m pytest benchmarks/bench_federated.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import pytest

if not __package__:  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch = pytest.importorskip("torch")

import aggkit as ak  # noqa: E402
from aggkit_torch.client_data import partition_dataset  # noqa: E402
from aggkit_torch.data import find_mnist_root, load_mnist, partition_iid  # noqa: E402
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer  # noqa: E402
from aggkit_torch.local_training import configure_threads  # noqa: E402
from aggkit_torch.models import MnistCNN  # noqa: E402
from benchmarks.bench_torch_plain import (  # noqa: E402
    FULL,
    dataloader_pass,
    plain_pass,
    tutorial_dataset,
)
from benchmarks.conftest import record  # noqa: E402

PRESETS = {
    "mean": lambda: ak.mean(),
    "robust": lambda: ak.robust_aggregator(),
    "dp": lambda: ak.dp_aggregator(0.1, 10),
    "compression": lambda: ak.compression_aggregator(),
    "secure": lambda: ak.secure_aggregator(),
}


def federated_round(
    mnist,
    preset: str,
    *,
    clients: int,
    per_round: int,
    subset: int | None = None,
    seed: int = 0,
    dataset: torch.utils.data.Dataset | None = None,
):
    """A function running one timed federated round (no evaluation); returns samples trained.

    With ``dataset`` (MNIST as a torchvision dataset) the clients are its partitions, read
    through DataLoaders with its per-sample transforms, instead of the in-memory tensors.
    """
    images, labels = mnist.train_images, mnist.train_labels
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    parts = partition_iid(labels, clients, seed=seed)
    data = {"train_images": images, "train_labels": labels, "partitions": parts}
    if dataset is not None:
        data = {"clients": partition_dataset(dataset, parts)}
    torch.manual_seed(seed)
    trainer = FederatedTrainer(
        MnistCNN(),
        PRESETS[preset](),
        **data,
        config=FedAvgConfig(
            clients_per_round=per_round,
            seed=seed,
            channels_last=True,
            client_weighting="uniform" if preset == "dp" else "num_examples",
        ),
    )
    trainer.run_round()  # warm-up: kernels load, oneDNN builds its primitives

    def one_round() -> int:
        metrics = trainer.run_round()
        one_round.last = metrics
        return sum(len(parts[trainer.client_names.index(c)]) for c in metrics["clients"])

    one_round.last = None
    return one_round


def _interleave(passes: dict, budget: float, clock=time.perf_counter) -> dict[str, float]:
    """Run the passes in turn until ``budget`` wall seconds are spent; best samples per second
    of ``clock`` (wall time, or ``time.process_time``: CPU time, for a loaded machine)."""
    best = dict.fromkeys(passes, 0.0)
    deadline = time.perf_counter() + budget
    while True:
        for name, one_pass in passes.items():
            start = clock()
            samples = one_pass()
            best[name] = max(best[name], samples / (clock() - start))
        if time.perf_counter() > deadline:
            return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the comparison")
    parser.add_argument(
        "--preset-rounds", type=int, default=3, help="timed rounds per preset (0: no preset table)"
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the tables as Markdown")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time passes by wall clock or by this process's CPU time (use with --threads 1 on "
        "a machine busy with other jobs: CPU time does not count their share)",
    )
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    root = find_mnist_root()
    mnist = load_mnist(root)
    federated = federated_round(mnist, "robust", clients=args.clients, per_round=args.per_round)
    samples = federated()
    plain = plain_pass(
        mnist.train_images, mnist.train_labels, channels_last=True, num_samples=samples
    )
    dataset, kind = tutorial_dataset(root)
    tutorial = dataloader_pass(dataset, channels_last=True, num_samples=samples)
    passes = {
        "federated (robust)": federated,
        "plain PyTorch": plain,
        f"tutorial DataLoader ({kind})": tutorial,
    }
    if kind == "torchvision":  # both sides on the torchvision dataset and its transforms
        passes["federated (robust), torchvision dataset"] = federated_round(
            mnist, "robust", clients=args.clients, per_round=args.per_round, dataset=dataset
        )
    load_before = os.getloadavg()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    best = _interleave(passes, args.budget, clock)
    load_after = os.getloadavg()
    plain_rate = best["plain PyTorch"]
    lines = [
        f"### Federated training throughput ({args.clients} clients, {args.per_round} per round, "
        f"one local epoch, batch 64, channels_last, {torch.get_num_threads()} threads, "
        f"{args.clock} time)",
        "",
        "| loop | samples/s | time per sample vs plain PyTorch |",
        "|---|---:|---:|",
    ]
    for name, rate in best.items():
        lines.append(f"| {name} | {rate:,.0f} | {plain_rate / rate:.3f}x |")
    if kind == "torchvision":
        pair = (
            best[f"tutorial DataLoader ({kind})"] / best["federated (robust), torchvision dataset"]
        )
        lines += [
            "",
            f"Federated on the torchvision dataset vs the tutorial's DataLoader on it: {pair:.3f}x "
            "time per sample.",
        ]
    lines += [
        "",
        "Load average (1, 5, 15 min) before / after the comparison: "
        + " / ".join(", ".join(f"{x:.1f}" for x in load) for load in (load_before, load_after)),
    ]
    lines += [
        "",
        "### Share of a round spent aggregating",
        "",
        "| preset | round (s) | aggregation (s) | share |",
        "|---|---:|---:|---:|",
    ]
    for preset in PRESETS if args.preset_rounds > 0 else ():
        run = federated_round(mnist, preset, clients=args.clients, per_round=args.per_round)
        rounds = []
        for _ in range(args.preset_rounds):
            run()
            rounds.append(run.last)
        fastest = min(rounds, key=lambda m: m["round_seconds"])
        share = fastest["aggregate_seconds"] / fastest["round_seconds"]
        lines.append(
            f"| {preset} | {fastest['round_seconds']:.2f} | "
            f"{fastest['aggregate_seconds'] * 1e3:.1f} ms | {share:.2%} |"
        )
    command = f"python benchmarks/bench_federated.py --budget {args.budget:g}"
    if args.clock != "wall":
        command += f" --clock {args.clock}"
    lines += ["", f"Command: `{command}`", ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


# -- pytest-benchmark ----------------------------------------------------------------------------

CLIENTS, PER_ROUND, SUBSET = (100, 10, None) if FULL else (10, 2, 640)


@pytest.fixture(scope="module")
def mnist():
    try:
        return load_mnist(find_mnist_root())
    except FileNotFoundError as e:
        pytest.skip(f"real MNIST files not available: {e}")


def test_probe_plain_pytorch(benchmark, mnist):
    samples = 6000 if FULL else 128
    one_pass = plain_pass(
        mnist.train_images,
        mnist.train_labels,
        channels_last=True,
        num_samples=samples,
        warmup_batches=1,
    )
    record(benchmark, group="federated|throughput", items=samples, probe=True)
    benchmark.pedantic(one_pass, rounds=3 if FULL else 1, iterations=1)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_federated_round(benchmark, mnist, preset):
    one_round = federated_round(mnist, preset, clients=CLIENTS, per_round=PER_ROUND, subset=SUBSET)
    samples = one_round()
    record(benchmark, group="federated|throughput", items=samples)
    benchmark.pedantic(one_round, rounds=3 if FULL else 1, iterations=1)
    assert not math.isnan(one_round.last["aggregate_seconds"])


if __name__ == "__main__":
    main()
