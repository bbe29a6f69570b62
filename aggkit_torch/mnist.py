"""The main job: federated training of the MNIST CNN with an aggkit aggregator.

    python -m aggkit_torch.mnist --aggregator robust

``--dataset fashion_mnist``, ``emnist`` (the balanced split, 47 classes) or ``cifar10`` trains on
that dataset through torchvision instead (``pip install -e ".[vision]"``; downloaded by
torchvision into the data directory unless ``--no-download``): the MNIST CNN for the 28x28
ones, :class:`~aggkit_torch.models.CifarResNet` (BatchNorm) for CIFAR-10. The transforms
(``ToTensor`` and ``Normalize``) are applied once and the examples held in memory, so every
dataset trains on the fast path. ``--device`` picks where clients train (``cpu``, ``cuda``,
``mps`` or ``auto``).

Reads MNIST from ``--data``, else ``$AGGKIT_DATA``, else the per-user cache ``~/.cache/aggkit``,
downloading it once into the cache when none has it (``--no-download`` refuses), splits the
training set over ``--clients`` clients (IID, Dirichlet label skew or shards), and runs federated
averaging. Shows a progress bar per round and one line of accuracy and aggregator measurements per
round; writes ``metrics.json`` and ``accuracy.png`` into ``--out``; its last line reads
``test accuracy: 0.9876``.

``--aggregator dp`` trains with differential privacy under its own defaults (:data:`DP_DEFAULTS`:
1,000 simulated clients, 100 per round on average by Poisson sampling, noise multiplier 0.7, two
local epochs of batch 20 at learning rate 0.05, server learning rate 2 with momentum 0.9, 5
rounds), prints the run's epsilon at ``--delta`` on every round line, writes it into
``metrics.json`` and plots accuracy against epsilon. ``--target-epsilon E`` picks the noise
multiplier that spends at most ``E`` over ``--rounds`` rounds
(:func:`aggkit.privacy.noise_multiplier`).

The same defaults serve the two other private aggregators, with a fixed clip ``--clip``:
``--aggregator dp-ftrl`` is DP-FTRL (:func:`aggkit.tree_aggregation`, restarted every epoch, with
``"epochs"`` sampling: every client once per epoch of ``clients / clients-per-round`` rounds; the
server momentum makes it the paper's DP-FTRLM; ``--target-epsilon`` through
:func:`aggkit.tree.tree_noise_multiplier`), and ``--aggregator distributed-dp`` is distributed
DP (:func:`aggkit.distributed_dp`, Skellam noise added by the clients, a secure sum modulo
``2**20``; ``--target-epsilon`` by the papers' bound, :func:`ddp_noise_multiplier`).
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

AGGREGATORS = (
    "mean",
    "robust",
    "dp",
    "dp-ftrl",
    "distributed-dp",
    "compression",
    "secure",
    *RULES,
)
#: The aggregators with differential privacy: they share :data:`DP_DEFAULTS`.
PRIVATE = ("dp", "dp-ftrl", "distributed-dp")

#: Defaults of the options left unset, for every aggregator but dp.
DEFAULTS: dict[str, Any] = {
    "clients": 10,
    "clients_per_round": None,  # all clients, at most 10
    "rounds": 3,
    "local_epochs": 1,
    "batch_size": 64,
    "lr": 0.01,
    "server_lr": None,  # the server optimizer's (FedAvgConfig.server_lr)
    "server_momentum": 0.0,
    "sampling": "fixed_size",
    "weighting": "capped",
}

#: Defaults for ``--aggregator dp``. DP federated learning needs many clients per round (the noise
#: is divided by their number) drawn from a larger population (amplification by sampling), and
#: server momentum to carry the small clipped steps across rounds. docs/guide/dp.md has the runs
#: behind them.
DP_DEFAULTS: dict[str, Any] = {
    "clients": 1000,
    "clients_per_round": 100,
    "rounds": 5,
    "local_epochs": 2,
    "batch_size": 20,
    "lr": 0.05,
    "server_lr": 2.0,
    "server_momentum": 0.9,
    "sampling": "poisson",
    "weighting": "uniform",
}

#: The noise multiplier of ``--aggregator dp`` unless ``--noise-multiplier`` or
#: ``--target-epsilon`` says otherwise (the other aggregators add no noise): epsilon 6.0 at delta
#: 1e-5 after the default 5 rounds (docs/guide/dp.md has the accuracy it reaches).
NOISE_MULTIPLIER = 0.7

#: Each private aggregator's default noise multiplier, all spending epsilon 6.0 at delta 1e-5
#: over the default 5 rounds: dp-ftrl's tree has no amplification by sampling, so it needs about
#: twice the noise; distributed-dp's papers' bound (rounding inflates the sensitivity, and Zhu and
#: Wang's subsampling bound is looser than dp-accounting's for the Gaussian) needs 0.77 where
#: the central Gaussian needs 0.7.
NOISE_MULTIPLIERS = {"dp": NOISE_MULTIPLIER, "dp-ftrl": 1.41, "distributed-dp": 0.77}

#: The fixed L2 clip of dp-ftrl and distributed-dp (dp's clip is adaptive, from 0.1 up by at most
#: 10% a round: 0.1 to about 0.16 over its 5 rounds, with every update clipped).
CLIP = 0.12

#: Bit width of distributed-dp's secure modular sum (TFF's experiments use 16 to 20).
DDP_BITS = 20


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
    if name == "dp":
        return ak.dp_aggregator(args.noise_multiplier, args.clients_per_round)
    if name == "dp-ftrl":
        return ak.tree_aggregation(
            args.noise_multiplier,
            args.clients_per_round,
            args.clip,
            restart_rounds=args.clients // args.clients_per_round,  # a tree per epoch
        )
    if name == "distributed-dp":
        return ak.distributed_dp(
            args.noise_multiplier,
            args.clients_per_round,
            DDP_BITS,
            args.clip,
            population=args.clients,
            delta=args.delta,
        )
    if name == "secure":
        return ak.secure_aggregator(code_bits=args.code_bits)
    return {"compression": ak.compression_aggregator}[name]()


def _default(name: str, text: str) -> str:
    """``text`` with the option's defaults, for every aggregator and for dp when they differ."""
    plain, dp = DEFAULTS[name], DP_DEFAULTS[name]
    shown = {
        "clients_per_round": "all clients, at most 10",
        "server_lr": "1.0 for sgd and adam, Flower's 0.1 for adagrad and 0.01 for yogi",
    }.get(name, plain)
    if name == "sampling":
        return f"{text} (default: {shown}; with dp or distributed-dp: {dp}; with dp-ftrl: epochs)"
    if plain == dp:
        return f"{text} (default: {shown})"
    return f"{text} (default: {shown}; with a private aggregator: {dp})"


def _choice(parser: argparse.ArgumentParser):
    """``choice(flag, choices, text)``: an option whose default is its first choice."""

    def choice(flag: str, choices: tuple[str, ...], text: str) -> None:
        parser.add_argument(
            flag, choices=choices, default=choices[0], help=f"{text} (default: {choices[0]})"
        )

    return choice


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m aggkit_torch.mnist``; options whose default depends on the
    aggregator parse to None (:func:`parse_args` fills them in)."""
    parser = argparse.ArgumentParser(
        prog="python -m aggkit_torch.mnist",
        description="Federated MNIST (the MNIST CNN) with an aggkit aggregator.",
    )
    add = parser.add_argument
    add(
        "--aggregator",
        choices=AGGREGATORS,
        default="robust",
        help="how client updates are combined (default: robust)",
    )
    add("--clients", type=int, help=_default("clients", "number of simulated clients"))
    add(
        "--clients-per-round",
        type=int,
        help=_default("clients_per_round", "clients per round (the expected number with poisson)"),
    )
    add(
        "--sampling",
        choices=("fixed_size", "poisson", "epochs"),
        help=_default(
            "sampling",
            "how each round's clients are drawn: exactly --clients-per-round without replacement, "
            "each client independently with probability clients-per-round / clients, or every "
            "client once per epoch (what dp-ftrl needs)",
        ),
    )
    add("--rounds", type=int, help=_default("rounds", "federated rounds"))
    add("--local-epochs", type=int, help=_default("local_epochs", "passes over a client's data"))
    add(
        "--local-steps",
        type=int,
        default=None,
        help="exact local steps per round instead of epochs (default: use epochs)",
    )
    add(
        "--partition",
        choices=("iid", "dirichlet", "shards"),
        default="iid",
        help="how the training set is split over clients (default: iid)",
    )
    add("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: 0.5)")
    add("--batch-size", type=int, help=_default("batch_size", "local batch size"))
    add("--lr", type=float, help=_default("lr", "client learning rate"))
    add("--momentum", type=float, default=0.5, help="client SGD momentum (default: 0.5)")
    add(
        "--proximal-mu",
        type=float,
        default=0.0,
        help="FedProx: the clients' proximal term mu / 2 * ||w - w_global||^2 (default: 0, off)",
    )
    choice = _choice(parser)
    choice(
        "--buffers",
        ("aggregate", "local"),
        "floating buffers (BatchNorm statistics): aggregated with the parameters, or kept on "
        "the clients as FedBN does",
    )
    add(
        "--server-optimizer",
        choices=("sgd", "adam", "adagrad", "yogi"),
        default="sgd",
        help="how the aggregate updates the global model: sgd (FedAvg, with momentum FedAvgM), "
        "adam (FedAdam), Flower's FedAdagrad or FedYogi (default: sgd)",
    )
    add(
        "--server-lr",
        type=float,
        help=_default("server_lr", "server learning rate; 1.0 with sgd is FedAvg")
        + " (dp's 2.0 is for sgd)",
    )
    add("--server-momentum", type=float, help=_default("server_momentum", "server SGD momentum"))
    add(
        "--weighting",
        choices=("capped", "num_examples", "uniform"),
        help=_default(
            "weighting",
            "client weights: example counts capped by what each client can have processed, "
            "counts as reported, or 1 each",
        ),
    )
    add(
        "--weight-cap",
        type=float,
        default=4.0,
        help="with --weighting capped, where the server knows no partition size: the largest "
        "weight as a multiple of the round's median example count (default: 4.0)",
    )
    add(
        "--noise-multiplier",
        type=float,
        default=None,
        help="with a private aggregator: the noise standard deviation over the clip (default: "
        + ", ".join(f"{k} {v}" for k, v in NOISE_MULTIPLIERS.items())
        + ")",
    )
    add(
        "--clip",
        type=float,
        default=CLIP,
        help=f"the fixed L2 clip of dp-ftrl and distributed-dp (default: {CLIP})",
    )
    add(
        "--target-epsilon",
        type=float,
        default=None,
        help="with a private aggregator: use the smallest noise multiplier that spends at most "
        "this epsilon over --rounds rounds, instead of --noise-multiplier (default: not used)",
    )
    add(
        "--delta",
        type=float,
        default=1e-5,
        help="delta of the reported epsilon, below 1 / clients (default: 1e-05)",
    )
    add("--attack", choices=ATTACKS, default="none", help="client-side attack (default: none)")
    add(
        "--malicious",
        type=float,
        default=0.0,
        help="fraction of each round's clients attacking (default: 0.0)",
    )
    add(
        "--num-byzantine",
        type=int,
        default=None,
        help="f of krum/bulyan (default: the attackers per round)",
    )
    add(
        "--trim-fraction",
        type=float,
        default=None,
        help="for --aggregator trimmed_mean (default: the rule's default)",
    )
    add(
        "--code-bits",
        type=int,
        default=32,
        help="for --aggregator secure: bits per secure-sum code, 1 to 32 (default: 32)",
    )
    choice(
        "--dataset",
        ("mnist", "fashion_mnist", "emnist", "cifar10"),
        "training data: mnist from its IDX files, the others through torchvision",
    )
    choice(
        "--device",
        ("cpu", "cuda", "mps", "auto"),
        "where clients train: auto is cuda, else mps, else cpu",
    )
    add(
        "--data",
        type=str,
        default=None,
        help="directory holding MNIST/raw, or torchvision's files of --dataset "
        "(default: $AGGKIT_DATA, else ~/.cache/aggkit)",
    )
    add(
        "--no-download",
        action="store_true",
        help="fail instead of downloading the dataset (into ~/.cache/aggkit, or --data for "
        "torchvision's) when it is not found",
    )
    add(
        "--train-subset",
        type=int,
        default=None,
        help="use only the first N training examples, for quick runs (default: all)",
    )
    add(
        "--eval-every",
        type=int,
        default=1,
        help="evaluate every N rounds and after the last (default: 1)",
    )
    add("--seed", type=int, default=0, help="seeds data split, sampling, training (default: 0)")
    add("--threads", type=int, default=None, help="torch threads (default: cores)")
    add(
        "--out",
        type=Path,
        default=Path("runs/mnist"),
        help="where metrics.json and accuracy.png go (default: runs/mnist)",
    )
    add(
        "--checkpoint",
        type=Path,
        default=None,
        help="save the run here after every round, and resume from it if present",
    )
    add("--no-progress", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of ``python -m aggkit_torch.mnist``, defaults filled in per aggregator.

    With ``--target-epsilon`` the noise multiplier is the smallest whose epsilon over
    ``--rounds`` rounds, for the run's sampling, population and ``--delta``, is at most the
    target.

    >>> args = parse_args(["--aggregator", "dp"])
    >>> args.clients, args.clients_per_round, args.sampling, args.noise_multiplier
    (1000, 100, 'poisson', 0.7)
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    private = args.aggregator in PRIVATE
    defaults = DP_DEFAULTS if private else DEFAULTS
    if args.aggregator == "dp-ftrl":
        defaults = {**defaults, "sampling": "epochs"}
    for name, value in defaults.items():
        if name == "server_lr" and args.server_optimizer != "sgd":
            value = None  # dp's 2.0 is an SGD learning rate; others take their own default
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.clients_per_round is None:
        args.clients_per_round = min(args.clients, 10)
    if args.noise_multiplier is None:
        args.noise_multiplier = NOISE_MULTIPLIERS.get(args.aggregator, NOISE_MULTIPLIER)
    if args.aggregator == "dp-ftrl" and args.sampling != "epochs":
        parser.error("--aggregator dp-ftrl needs --sampling epochs (each client once per tree)")
    if args.target_epsilon is not None:
        if not private:
            parser.error(f"--target-epsilon needs a private aggregator: {', '.join(PRIVATE)}")
        if args.aggregator == "dp-ftrl":
            from aggkit.tree import tree_noise_multiplier

            args.noise_multiplier = tree_noise_multiplier(
                args.target_epsilon,
                delta=args.delta,
                rounds=args.rounds,
                restart_rounds=args.clients // args.clients_per_round,
            )
            return args
        if args.aggregator == "distributed-dp":
            args.noise_multiplier = ddp_noise_multiplier(args)
            return args
        args.noise_multiplier = ak.privacy.noise_multiplier(
            args.target_epsilon,
            delta=args.delta,
            clients_per_round=args.clients_per_round,
            population=args.clients,
            rounds=args.rounds,
            sampling=args.sampling,
        )
    return args


def ddp_noise_multiplier(args: argparse.Namespace) -> float:
    """The smallest noise multiplier whose distributed-dp run spends at most
    ``args.target_epsilon`` over ``args.rounds`` rounds, by the papers' bound as the run reports
    it (the MNIST CNN's layout, ``--clip``, :data:`DDP_BITS`); geometric bisection to 1e-4."""
    from aggkit_torch.models import MnistCNN
    from aggkit_torch.params import model_layout

    layout = model_layout(MnistCNN())

    def eps_of(z: float) -> float:
        factory = ak.distributed_dp(
            z,
            args.clients_per_round,
            DDP_BITS,
            args.clip,
            population=args.clients,
            delta=args.delta,
        )
        return factory.create(layout).epsilon(args.rounds)

    hi = 1.0
    while eps_of(hi) > args.target_epsilon:
        hi *= 2.0
    lo = hi / 2.0
    while eps_of(lo) <= args.target_epsilon:
        hi, lo = lo, lo / 2.0
    while hi / lo > 1.0 + 1e-4:
        mid = (lo * hi) ** 0.5
        if eps_of(mid) <= args.target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


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
        proximal_mu=args.proximal_mu,
        buffers=args.buffers,
        server_optimizer=args.server_optimizer,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        client_weighting=args.weighting,
        weight_cap=args.weight_cap,
        seed=args.seed,
        eval_every=args.eval_every,
        sampling=args.sampling,
        delta=args.delta,
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
    """Test accuracy per round as a PNG; beside it accuracy against epsilon for a DP run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    points = [m for m in history if "test_accuracy" in m]
    private = [m for m in points if "epsilon" in m]
    fig, axes = plt.subplots(1, 2 if private else 1, figsize=(11 if private else 6, 4))
    axes = list(axes) if private else [axes]
    ax = axes[0]
    ax.plot([m["round"] for m in points], [m["test_accuracy"] for m in points], marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole rounds only
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if private:
        ax = axes[1]
        ax.plot([m["epsilon"] for m in private], [m["test_accuracy"] for m in private], marker="o")
        ax.set_xlabel(f"epsilon (delta {private[-1]['delta']:g}, {private[-1]['sampling']})")
        ax.set_ylabel("test accuracy")
        ax.set_title("accuracy against privacy spent")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_data(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """``(train_images, train_labels, test_images, test_labels)`` of ``--dataset``: MNIST from
    its IDX files (:func:`aggkit_torch.data.load_mnist`), the others through torchvision, their
    transforms applied once (:func:`aggkit_torch.vision.to_tensors`)."""
    import os

    from aggkit_torch import data

    if args.dataset == "mnist":
        mnist = data.load_mnist(args.data, download=not args.no_download)
        return mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels
    from aggkit_torch import vision

    root = args.data or os.environ.get(data.ENV_VAR) or str(data.mnist_search_paths()[0])
    download = not args.no_download
    train = vision.to_tensors(vision.load(args.dataset, root, train=True, download=download))
    test = vision.to_tensors(vision.load(args.dataset, root, train=False, download=download))
    return (*train, *test)


def make_model(dataset: str) -> Any:
    """The model of ``--dataset``: the MNIST CNN, or a small ResNet for CIFAR-10."""
    from aggkit_torch.models import CifarResNet, MnistCNN
    from aggkit_torch.vision import NUM_CLASSES

    if dataset == "cifar10":
        return CifarResNet(NUM_CLASSES[dataset])
    return MnistCNN(NUM_CLASSES[dataset])


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    import torch

    from aggkit_torch.attacks import Attack
    from aggkit_torch.checkpoint import CheckpointError
    from aggkit_torch.federated import FederatedTrainer
    from aggkit_torch.local_training import configure_threads

    configure_threads(args.threads)
    torch.manual_seed(args.seed)
    train_images, train_labels, test_images, test_labels = load_data(args)
    if args.train_subset is not None:
        train_images = train_images[: args.train_subset]
        train_labels = train_labels[: args.train_subset]
    parts = partitions(args, train_labels)
    config = fedavg_config(args)
    attack = Attack(args.attack, args.malicious, seed=args.seed)
    trainer = FederatedTrainer(
        make_model(args.dataset),
        make_aggregator(args.aggregator, args),
        train_images,
        train_labels,
        parts,
        test_images,
        test_labels,
        config=config,
        update_transform=None if args.attack == "none" else attack,
        device=args.device,
    )
    if args.checkpoint is not None and args.checkpoint.exists():
        try:
            trainer.load(args.checkpoint)
        except CheckpointError as error:  # refused without running anything from the file
            raise SystemExit(f"--checkpoint: {error}") from None
        print(f"resumed from {args.checkpoint} after round {trainer.round}")
    per_round = {
        "poisson": "on average (poisson)",
        "fixed_size": "(fixed size)",
        "epochs": "(each client once per epoch)",
    }[args.sampling]
    print(
        f"federated {args.dataset}: {args.aggregator} aggregator, {args.clients} clients "
        f"({args.partition}), {args.clients_per_round} per round {per_round}, {args.rounds} rounds"
    )
    if args.aggregator in PRIVATE:
        print(
            f"differential privacy: noise multiplier {args.noise_multiplier:.4g}"
            + (f" (for epsilon {args.target_epsilon:g})" if args.target_epsilon else "")
            + f", epsilon reported at delta {args.delta:g}"
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
    if trainer.history and "epsilon" in trainer.history[-1]:
        last = trainer.history[-1]
        summary.update(epsilon=last["epsilon"], delta=last["delta"], sampling=last["sampling"])
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=1))
    plot_accuracy(
        trainer.history,
        args.out / "accuracy.png",
        f"federated {args.dataset}, {args.aggregator} aggregator",
    )
    print(f"metrics: {args.out / 'metrics.json'}, plot: {args.out / 'accuracy.png'}")
    if "epsilon" in summary:
        print(
            f"privacy: epsilon {summary['epsilon']:.3f} at delta {summary['delta']:g} "
            f"({summary['sampling']} sampling, noise multiplier {args.noise_multiplier:.4g})"
        )
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    sys.exit(0 if main() >= 0 else 1)
