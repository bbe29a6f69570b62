"""Federated MNIST under attack: test accuracy after a fixed number of rounds, per aggregation rule
and attack.

The MNIST CNN (or, with ``--model mlp``, a small MLP) on real MNIST over 100 clients (IID and
Dirichlet(0.5) label skew), a few sampled per round; every rule of the table (the plain mean,
``robust_aggregator`` and the Byzantine-robust rules) is run against every attack of
:mod:`aggkit_torch.attacks` with 10% and 20% of each round's clients malicious, and without
attack. Deliberately cheap (few rounds, a few local steps), so the
table ranks the rules rather than showing converged accuracies.

    AGGKIT_DATA=/work/shared/data python benchmarks/accuracy_attacks.py --out .benchmarks/attacks

writes ``results.jsonl`` (one line per run, appended as runs finish; an interrupted sweep resumes
where it stopped), ``accuracy_attacks.md`` (the tables, with the command) and
``accuracy_attacks.png`` (one heat map per partition) into ``--out``. ``--quick`` runs a tiny
version (CI smoke).

Parallel workers (say one per rule, or ``--no-baseline`` on all but one) may share one ``--out``:
each appends its runs to ``results.jsonl``, and the table and plot are always rendered from every
run in that file (the rules, partitions, attacks and fractions of all workers, in a fixed
order), under a lock, each file written whole and then renamed into place. So whichever worker
finishes last renders the complete sweep, and no worker's table overwrites another's with a
part of it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggkit_torch.attacks import RULES  # NumPy only; torch loads later

RULE_NAMES = ("mean", "robust_aggregator", *RULES)
ATTACK_NAMES = ("sign_flip", "gaussian", "scaled", "alie", "ipm", "label_flip")


def make_model(name: str):
    """The MNIST CNN (``cnn``, 431,080 parameters) or a small MLP (``mlp``: 784-100-10, 79,510
    parameters, about 30x less compute per example, for sweeps on a busy machine)."""
    from torch import nn

    from aggkit_torch.models import MnistCNN

    if name == "cnn":
        return MnistCNN()
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10), nn.LogSoftmax(dim=1)
    )


def make_rule(name: str, per_round: int, num_byzantine: int):
    import aggkit as ak
    from aggkit_torch.attacks import robust_rule

    if name == "mean":
        return ak.mean()
    if name == "robust_aggregator":
        return ak.robust_aggregator()
    return robust_rule(name, per_round, num_byzantine)


def scenarios(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """``(partition, attack, fraction)`` in the order they run: no attack first."""
    out = []
    for partition in args.partitions.split(","):
        if not args.no_baseline:
            out.append((partition, "none", 0.0))
        for fraction in (float(f) for f in args.fractions.split(",")):
            for attack in args.attacks.split(","):
                out.append((partition, attack, fraction))
    return out


def _key(run: dict) -> tuple:
    return (run["partition"], run["attack"], run["fraction"], run["rule"])


def load_results(out: Path) -> dict[tuple, dict]:
    """Every finished run in ``out/results.jsonl`` by key (a later line wins; a line another
    worker is still writing, cut short, is skipped)."""
    done = {}
    log = out / "results.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                run = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[_key(run)] = run
    return done


def sweep(args: argparse.Namespace) -> list[dict]:
    import torch

    from aggkit_torch.attacks import Attack, attacker_count
    from aggkit_torch.data import find_mnist_root, load_mnist, partition_dirichlet, partition_iid
    from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
    from aggkit_torch.local_training import configure_threads

    configure_threads(args.threads)
    mnist = load_mnist(find_mnist_root(args.data))
    images, labels = mnist.train_images, mnist.train_labels
    test_images = mnist.test_images[: args.test_examples]
    test_labels = mnist.test_labels[: args.test_examples]
    if args.quick:
        images, labels = images[:3000], labels[:3000]
    parts = {
        "iid": partition_iid(labels, args.clients, seed=0),
        "dirichlet": partition_dirichlet(labels, args.clients, 0.5, seed=0),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    done = load_results(args.out)
    todo = [(p, a, f, r) for p, a, f in scenarios(args) for r in args.rules.split(",")]
    if args.report_only:
        return [done[k] for k in todo if k in done]
    worst = max(float(x) for x in args.fractions.split(","))
    started = time.perf_counter()
    for index, (partition, attack, fraction, rule) in enumerate(todo, 1):
        key = (partition, attack, fraction, rule)
        if key in done:
            continue
        # Rules that take f are told the attackers' number (the largest one without attack).
        f = attacker_count(args.per_round, fraction if fraction else worst)
        torch.manual_seed(0)
        config = FedAvgConfig(
            clients_per_round=args.per_round,
            local_steps=args.local_steps,
            batch_size=args.batch_size,
            client_lr=args.lr,
            client_momentum=args.momentum,
            seed=0,
            eval_every=args.rounds,
        )
        trainer = FederatedTrainer(
            make_model(args.model),
            make_rule(rule, args.per_round, f),
            images,
            labels,
            parts[partition],
            test_images,
            test_labels,
            config=config,
            update_transform=None if attack == "none" else Attack(attack, fraction, seed=0),
        )
        t0 = time.perf_counter()
        try:
            trainer.run(args.rounds, progress=False)
            accuracy = float(trainer.history[-1]["test_accuracy"])
            error = None
        except Exception as exc:  # a diverged model or a refused round is a result too
            accuracy, error = float("nan"), f"{type(exc).__name__}: {exc}"
        run = {
            "partition": partition,
            "attack": attack,
            "fraction": fraction,
            "rule": rule,
            "num_byzantine": f,
            "accuracy": accuracy,
            "seconds": time.perf_counter() - t0,
            "error": error,
        }
        done[key] = run
        with log.open("a") as handle:
            handle.write(json.dumps(run) + "\n")
        elapsed = time.perf_counter() - started
        bar = "#" * int(30 * index / len(todo))
        print(
            f"[{bar:<30}] {index}/{len(todo)} {partition} {attack}@{fraction:.0%} {rule}: "
            f"{accuracy:.3f} ({run['seconds']:.0f}s, {elapsed / 60:.1f} min)",
            flush=True,
        )
    return [done[k] for k in map(tuple, todo) if k in done]


def command(args: argparse.Namespace) -> str:
    parts = [
        "python benchmarks/accuracy_attacks.py",
        f"--model {args.model}",
        f"--rounds {args.rounds}",
        f"--clients {args.clients}",
        f"--per-round {args.per_round}",
        f"--local-steps {args.local_steps}",
        f"--batch-size {args.batch_size}",
        f"--lr {args.lr}",
        f"--momentum {args.momentum}",
        f"--test-examples {args.test_examples}",
        f"--partitions {args.partitions}",
        f"--fractions {args.fractions}",
    ]
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)


def _ordered(known: tuple, *groups) -> list:
    """The union of ``groups`` (iterables), ``known``'s members first in ``known``'s order, then
    the others sorted."""
    seen = {x for group in groups for x in group}
    return [x for x in known if x in seen] + sorted(seen - set(known), key=str)


def merged(args: argparse.Namespace, results: dict[tuple, dict]) -> argparse.Namespace:
    """``args`` widened to every rule, partition, attack and fraction that this worker asked
    for or that ``results`` (all workers' runs) holds: what the rendered table covers."""
    runs = list(results.values())
    fractions = _ordered(
        (),
        (float(f) for f in args.fractions.split(",")),
        (r["fraction"] for r in runs if r["attack"] != "none"),
    )
    return argparse.Namespace(
        **{
            **vars(args),
            "rules": ",".join(
                _ordered(RULE_NAMES, args.rules.split(","), (r["rule"] for r in runs))
            ),
            "partitions": ",".join(
                _ordered(
                    ("iid", "dirichlet"), args.partitions.split(","), (r["partition"] for r in runs)
                )
            ),
            "attacks": ",".join(
                _ordered(
                    ATTACK_NAMES,
                    args.attacks.split(","),
                    (r["attack"] for r in runs if r["attack"] != "none"),
                )
            ),
            "fractions": ",".join(f"{f:g}" for f in fractions),
        }
    )


@contextlib.contextmanager
def _render_lock(out: Path):
    """An exclusive lock on ``out/.render.lock`` (workers sharing ``out`` render one at a time)."""
    with (out / ".render.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _replace(path: Path, write_to) -> None:
    """Write ``path`` whole through ``write_to(temporary path)``, then rename it into place."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    write_to(tmp)
    os.replace(tmp, path)


def render(args: argparse.Namespace) -> str:
    """Write ``accuracy_attacks.md`` and ``.png`` into ``args.out`` from every run in its
    ``results.jsonl`` (this worker's and any other's); returns the Markdown."""
    args.out.mkdir(parents=True, exist_ok=True)
    with _render_lock(args.out):
        results = load_results(args.out)
        return write(list(results.values()), merged(args, results))


def write(results: list[dict], args: argparse.Namespace) -> str:
    """The tables of ``results`` for ``args``' rules, partitions, attacks and fractions (use
    :func:`render`, which takes them from the results file, when workers share ``args.out``)."""
    columns = [("none", 0.0)] + [
        (a, float(f)) for f in args.fractions.split(",") for a in args.attacks.split(",")
    ]
    rules = args.rules.split(",")
    lines = [
        "# Federated MNIST under attack",
        "",
        f"Test accuracy of the {args.model.upper()} after {args.rounds} rounds "
        f"({args.per_round} of {args.clients} clients per "
        f"round, {args.local_steps} local steps of {args.batch_size}; "
        f"{args.test_examples} test images). Command: `{command(args)}`",
        "",
    ]
    by_key = {_key(r): r for r in results}
    for partition in args.partitions.split(","):
        header = ["rule"] + [
            "no attack" if a == "none" else f"{a} {round(f * 100)}%" for a, f in columns
        ]
        lines += [f"## {partition}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for rule in rules:
            cells = []
            for attack, fraction in columns:
                run = by_key.get((partition, attack, fraction, rule))
                cells.append("" if run is None else f"{run['accuracy']:.3f}")
            lines.append(f"| {rule} | " + " | ".join(cells) + " |")
        lines.append("")
    missing = sum(
        1
        for p in args.partitions.split(",")
        for a, f in columns
        for r in rules
        if (p, a, f, r) not in by_key
    )
    if missing:
        lines += [f"{missing} runs of the sweep are missing (empty cells).", ""]
    lines += ["![accuracy under attack](accuracy_attacks.png)", ""]
    text = "\n".join(lines)
    _replace(args.out / "accuracy_attacks.md", lambda path: path.write_text(text))
    plot(by_key, columns, rules, args)
    return text


def plot(by_key: dict, columns: list, rules: list, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    partitions = args.partitions.split(",")
    fig, axes = plt.subplots(
        1, len(partitions), figsize=(7 * len(partitions), 0.45 * len(rules) + 2.5), squeeze=False
    )
    for ax, partition in zip(axes[0], partitions, strict=True):
        grid = np.full((len(rules), len(columns)), np.nan)
        for i, rule in enumerate(rules):
            for j, (attack, fraction) in enumerate(columns):
                run = by_key.get((partition, attack, fraction, rule))
                if run is not None:
                    grid[i, j] = run["accuracy"]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(rules)), rules)
        labels = ["none" if a == "none" else f"{a} {round(f * 100)}%" for a, f in columns]
        ax.set_xticks(range(len(columns)), labels, rotation=60, ha="right")
        for i in range(len(rules)):
            for j in range(len(columns)):
                if np.isfinite(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black",
                    )
        ax.set_title(f"{partition}: test accuracy after {args.rounds} rounds")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    _replace(
        args.out / "accuracy_attacks.png",
        lambda path: fig.savefig(path, format="png", dpi=110, bbox_inches="tight"),
    )
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=11)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--partitions", default="iid,dirichlet")
    parser.add_argument("--fractions", default="0.1,0.2")
    parser.add_argument("--attacks", default=",".join(ATTACK_NAMES))
    parser.add_argument("--rules", default=",".join(RULE_NAMES))
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the runs without attack (another worker)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the table of the finished runs, run none"
    )
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/attacks"))
    return parser


def main(argv: list[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    if args.quick:
        args.rounds, args.clients, args.local_steps, args.test_examples = 1, 30, 1, 200
    sweep(args)
    text = render(args)
    print(text)
    return text


if __name__ == "__main__":
    main()
