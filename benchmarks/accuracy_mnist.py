"""Federated MNIST accuracy per preset: rounds to reach 98% and 99% test accuracy.

The MNIST CNN on real MNIST over 100 IID clients, 10 sampled per round; each preset runs until it
reaches 99% test accuracy or ``--max-rounds``. DP runs report the trainer's epsilon (RDP, delta
1e-5) for the sampling it does: exactly ``--per-round`` of ``--clients`` without replacement,
accounted under replace-one neighbours (:mod:`aggkit.privacy`).

    .venv/bin/python benchmarks/accuracy_mnist.py --max-rounds 60 --out .benchmarks/accuracy

writes ``accuracy.md`` (the table) and ``accuracy.png`` (test accuracy per round, one line per
preset) into ``--out``. ``--quick`` runs a tiny version (CI smoke).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import aggkit as ak


def make_presets(per_round: int, clients: int, noise: float) -> dict:
    return {
        "mean": ak.mean(),
        "robust": ak.robust_aggregator(),
        "compression": ak.compression_aggregator(),
        "secure": ak.secure_aggregator(),
        "dp": ak.dp_aggregator(noise, per_round),  # the trainer accounts for its sampling
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    from aggkit_torch.data import find_mnist_root, load_mnist, partition_iid
    from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
    from aggkit_torch.local_training import configure_threads
    from aggkit_torch.models import MnistCNN

    configure_threads(args.threads)
    mnist = load_mnist(find_mnist_root(args.data))
    images, labels = mnist.train_images, mnist.train_labels
    test_images, test_labels = mnist.test_images, mnist.test_labels
    if args.quick:
        images, labels = images[:2000], labels[:2000]
        test_images, test_labels = test_images[:1000], test_labels[:1000]
    parts = partition_iid(labels, args.clients, seed=0)
    results = {}
    wanted = args.presets.split(",")
    for name, factory in make_presets(args.per_round, args.clients, args.noise).items():
        if name not in wanted:
            continue
        torch.manual_seed(0)
        config = FedAvgConfig(
            clients_per_round=args.per_round,
            local_epochs=args.local_epochs,
            client_lr=args.lr,
            client_momentum=args.momentum,
            client_weighting="uniform" if name == "dp" else "num_examples",
            seed=0,
        )
        trainer = FederatedTrainer(
            MnistCNN(), factory, images, labels, parts, test_images, test_labels, config=config
        )
        started = time.perf_counter()
        curve, reached = [], {}
        for _ in range(args.max_rounds):
            metrics = trainer.run_round()
            accuracy = metrics["test_accuracy"]
            curve.append(accuracy)
            for target in (0.98, 0.99):
                if accuracy >= target and target not in reached:
                    reached[target] = metrics["round"]
            print(f"{name} round {metrics['round']}: test accuracy {accuracy:.4f}", flush=True)
            if 0.99 in reached:
                break
        epsilon = metrics.get("epsilon")
        results[name] = {
            "curve": curve,
            "rounds_to_98": reached.get(0.98),
            "rounds_to_99": reached.get(0.99),
            "final": curve[-1],
            "best": max(curve),
            "epsilon": epsilon,
            "seconds": time.perf_counter() - started,
        }
    return results


def _options(args: argparse.Namespace) -> str:
    """The options that reproduce this run (those that differ from the defaults)."""
    defaults = vars(_parser().parse_args([]))
    return " ".join(
        f"--{name.replace('_', '-')} {value}"
        for name, value in vars(args).items()
        if name not in ("out", "data", "threads", "quick") and value != defaults[name]
    )


def write(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"### Federated MNIST: rounds to 98% and 99% test accuracy ({args.clients} IID clients, "
        f"{args.per_round} per round, {args.local_epochs} local epoch(s), client SGD lr {args.lr} "
        f"momentum {args.momentum}, at most {args.max_rounds} rounds)",
        "",
        "| preset | rounds to 98% | rounds to 99% | best accuracy | epsilon | minutes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        eps = f"{r['epsilon']:.2f} (z={args.noise})" if r["epsilon"] is not None else ""
        lines.append(
            f"| {name} | {r['rounds_to_98'] or '-'} | {r['rounds_to_99'] or '-'} | "
            f"{r['best']:.4f} | {eps} | {r['seconds'] / 60:.1f} |"
        )
    lines += [
        "",
        "![Test accuracy per round, one line per preset](accuracy.png)",
        "",
        f"Command: `{f'python benchmarks/accuracy_mnist.py {_options(args)}'.strip()}`",
        "",
    ]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.md").write_text(text)
    (args.out / "accuracy.json").write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=name)
    ax.axhline(0.99, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0.9, 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("Federated MNIST, 100 clients, 10 per round")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "accuracy.png", dpi=120)
    plt.close(fig)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-rounds", type=int, default=60)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--noise", type=float, default=0.3, help="dp noise multiplier")
    parser.add_argument("--presets", default="mean,robust,compression,secure,dp")
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/accuracy"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.quick:
        args.max_rounds, args.clients, args.per_round = 2, 10, 2
        # With 2 clients a round the clipped-count noise alone allows z < 2 * 0.05 * 2 = 0.2.
        args.noise = min(args.noise, 0.1)
    print(write(run(args), args))


if __name__ == "__main__":
    main()
