"""The main job: federated training of the MNIST CNN with an aggkit aggregator.

    python -m aggkit_torch.mnist --aggregator robust

Reads MNIST from ``--data``, else ``$AGGKIT_DATA``, else the per-user cache ``~/.cache/aggkit``,
downloading it once into the cache when none has it (``--no-download`` refuses), splits the
training set over ``--clients`` clients (IID, Dirichlet label skew or shards), and runs federated
averaging. Shows a progress bar per round and one line of accuracy and aggregator measurements per
round; writes ``metrics.json`` and ``accuracy.png`` into ``--out``; its last line reads
``test accuracy: 0.9876``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import aggkit as ak
from aggkit_torch.attacks import ATTACKS, RULES

AGGREGATORS = ("mean", "robust", "dp", "compression", "secure", *RULES)


def make_aggregator(name: str, args: argparse.Namespace) -> ak.Factory:
    """The aggkit factory for ``--aggregator name``."""
    if name == "mean":
        return ak.mean()
    if name == "robust":
        return ak.robust_aggregator()
    if name in RULES:
        from aggkit_torch.attacks import attacker_count, robust_rule

        f = args.num_byzantine
        if f is None:
            f = attacker_count(args.clients_per_round, args.malicious)
        return robust_rule(name, args.clients_per_round, f, trim_fraction=args.trim_fraction)
    preset = {
        "dp": "dp_aggregator",
        "compression": "compression_aggregator",
        "secure": "secure_aggregator",
    }[name]
    if name == "dp":
        return ak.dp_aggregator(args.noise_multiplier, args.clients_per_round)
    return getattr(ak, preset)()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aggkit_torch.mnist",
        description="Federated MNIST (the MNIST CNN) with an aggkit aggregator.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--aggregator", choices=AGGREGATORS, default="robust")
    parser.add_argument("--clients", type=int, default=10, help="number of clients")
    parser.add_argument(
        "--clients-per-round",
        type=int,
        default=None,
        help="clients sampled per round (default: all, at most 10)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--local-steps",
        type=int,
        default=None,
        help="exact local steps per round instead of epochs",
    )
    parser.add_argument("--partition", choices=("iid", "dirichlet", "shards"), default="iid")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01, help="client learning rate")
    parser.add_argument("--momentum", type=float, default=0.5, help="client SGD momentum")
    parser.add_argument("--server-optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--server-momentum", type=float, default=0.0)
    parser.add_argument(
        "--weighting",
        choices=("capped", "num_examples", "uniform"),
        default=None,
        help="client weights: example counts capped by what each client can have processed, "
        "counts as reported, or 1 each (default: capped; uniform for dp)",
    )
    parser.add_argument(
        "--weight-cap",
        type=float,
        default=4.0,
        help="with --weighting capped, where the server knows no partition size: the largest "
        "weight as a multiple of the round's median example count",
    )
    parser.add_argument("--noise-multiplier", type=float, default=0.1, help="for --aggregator dp")
    parser.add_argument("--attack", choices=ATTACKS, default="none", help="client-side attack")
    parser.add_argument(
        "--malicious", type=float, default=0.0, help="fraction of each round's clients attacking"
    )
    parser.add_argument(
        "--num-byzantine",
        type=int,
        default=None,
        help="f of krum/bulyan (default: the attackers per round)",
    )
    parser.add_argument("--trim-fraction", type=float, default=None, help="for trimmed_mean")
    parser.add_argument("--data", type=str, default=None, help="directory holding MNIST/raw")
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading MNIST (into ~/.cache/aggkit) when it is not found",
    )
    parser.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="use only the first N training examples (quick runs)",
    )
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/mnist"),
        help="where metrics.json and accuracy.png go",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="save the run here after every round, and resume from it if present",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.clients_per_round is None:
        args.clients_per_round = min(args.clients, 10)
    if args.weighting is None:
        args.weighting = "uniform" if args.aggregator == "dp" else "capped"
    return args


def fedavg_config(args: argparse.Namespace):
    """The :class:`~aggkit_torch.federated.FedAvgConfig` of the command-line options."""
    from aggkit_torch.federated import FedAvgConfig

    return FedAvgConfig(
        clients_per_round=args.clients_per_round,
        local_epochs=args.local_epochs,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        client_lr=args.lr,
        client_momentum=args.momentum,
        server_optimizer=args.server_optimizer,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        client_weighting=args.weighting,
        weight_cap=args.weight_cap,
        seed=args.seed,
        eval_every=args.eval_every,
    )


def partitions(args: argparse.Namespace, labels: Any, num_clients: int | None = None) -> list:
    """The split of the training examples over clients (``--partition``, ``--alpha``)."""
    from aggkit_torch import data

    count = args.clients if num_clients is None else num_clients
    if args.partition == "iid":
        return data.partition_iid(labels, count, seed=args.seed)
    if args.partition == "dirichlet":
        return data.partition_dirichlet(labels, count, args.alpha, seed=args.seed)
    return data.partition_shards(labels, count, seed=args.seed)


def plot_accuracy(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy per round as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(m["round"], m["test_accuracy"]) for m in history if "test_accuracy" in m]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r for r, _ in points], [a for _, a in points], marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    import torch

    from aggkit_torch import data
    from aggkit_torch.attacks import Attack
    from aggkit_torch.checkpoint import CheckpointError
    from aggkit_torch.federated import FederatedTrainer
    from aggkit_torch.local_training import configure_threads
    from aggkit_torch.models import MnistCNN

    configure_threads(args.threads)
    torch.manual_seed(args.seed)
    mnist = data.load_mnist(args.data, download=not args.no_download)
    train_images, train_labels = mnist.train_images, mnist.train_labels
    if args.train_subset is not None:
        train_images = train_images[: args.train_subset]
        train_labels = train_labels[: args.train_subset]
    parts = partitions(args, train_labels)
    config = fedavg_config(args)
    attack = Attack(args.attack, args.malicious, seed=args.seed)
    trainer = FederatedTrainer(
        MnistCNN(),
        make_aggregator(args.aggregator, args),
        train_images,
        train_labels,
        parts,
        mnist.test_images,
        mnist.test_labels,
        config=config,
        update_transform=None if args.attack == "none" else attack,
    )
    if args.checkpoint is not None and args.checkpoint.exists():
        try:
            trainer.load(args.checkpoint)
        except CheckpointError as error:  # refused without running anything from the file
            raise SystemExit(f"--checkpoint: {error}") from None
        print(f"resumed from {args.checkpoint} after round {trainer.round}")
    print(
        f"federated MNIST: {args.aggregator} aggregator, {args.clients} clients "
        f"({args.partition}), {args.clients_per_round} per round, {args.rounds} rounds"
    )
    started = time.perf_counter()
    while trainer.round < args.rounds:
        trainer.run(1, progress=not args.no_progress)
        if args.checkpoint is not None:
            trainer.save(args.checkpoint)
    if not trainer.history or "test_accuracy" not in trainer.history[-1]:
        accuracy, loss = trainer.evaluate()
        if trainer.history:
            trainer.history[-1].update(test_accuracy=accuracy, test_loss=loss)
    accuracy = trainer.history[-1]["test_accuracy"] if trainer.history else trainer.evaluate()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": time.perf_counter() - started,
        "test_accuracy": accuracy,
        "history": trainer.history,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=1))
    plot_accuracy(
        trainer.history, args.out / "accuracy.png", f"federated MNIST, {args.aggregator} aggregator"
    )
    print(f"metrics: {args.out / 'metrics.json'}, plot: {args.out / 'accuracy.png'}")
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    sys.exit(0 if main() >= 0 else 1)
