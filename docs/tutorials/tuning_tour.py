"""Tutorial: tuning aggkit's aggregators on real client updates from federated MNIST training.

    python docs/tutorials/tuning_tour.py            # the committed figures (~30 min, 2 cores)
    python docs/tutorials/tuning_tour.py --quick    # a minute; what tests/test_docs.py runs

1. Train the MNIST CNN with FedAvg and the plain mean over 100 label-skewed clients, keeping every
   round's client updates (the ``[K, n]`` matrix the aggregator saw) and the test accuracy.
2. Replay those real updates through each technique (quantile estimation, zeroing, clipping,
   Gaussian DP, compression, secure summation) and measure what it does to the aggregate.
3. Train again with the mean's sum quantized to 1..8 bits, with and without the Hadamard
   rotation, for accuracy against bits.

Writes into ``--out`` (default ``docs/tutorials/figures/tuning``) the PNG plots and Markdown
tables that the tuning tutorial and the user guide embed, plus ``run.md``.
"""

from __future__ import annotations

import argparse
import math
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


class Rounds:
    """The recorded rounds: client update matrices, weights and the test accuracy per round."""

    def __init__(self, layout: ak.Layout):
        self.layout = layout
        self.matrices: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.accuracy: list[float] = []

    def batches(self):
        for matrix, weights in zip(self.matrices, self.weights, strict=True):
            yield ak.ClientBatch(matrix, self.layout), weights

    def norms(self, order: float) -> np.ndarray:
        """``[rounds, clients]`` global norms of the updates (L2: ``order=2``; L-inf: inf)."""
        return np.array(
            [np.linalg.norm(m.astype(np.float64), ord=order, axis=1) for m in self.matrices]
        )


# --8<-- [start:collect]
def collect(settings: Settings) -> tuple[Rounds, object]:
    """Train with the plain weighted mean and keep each round's client updates."""
    import torch

    from aggkit_torch.data import partition_dirichlet
    from aggkit_torch.federated import FederatedTrainer
    from aggkit_torch.models import MnistCNN

    train_x, train_y, test_x, test_y = load_data(settings)
    parts = partition_dirichlet(train_y, settings.num_clients, alpha=0.3, seed=0)
    torch.manual_seed(0)
    trainer = FederatedTrainer(
        MnistCNN(),
        ak.mean(),
        train_x,
        train_y,
        parts,
        test_x,
        test_y,
        config=fedavg_config(settings),
    )
    rounds = Rounds(trainer.layout)
    for _ in range(settings.rounds):
        metrics = trainer.run_round()
        rounds.matrices.append(trainer.batch.matrix.copy())  # [clients, 431,080] float32
        rounds.weights.append(
            np.full(
                settings.clients_per_round, float(metrics["examples"]) / settings.clients_per_round
            )
        )
        rounds.accuracy.append(metrics["test_accuracy"])
        print(f"collect: round {metrics['round']}, test accuracy {metrics['test_accuracy']:.4f}")
    return rounds, (train_x, train_y, test_x, test_y, parts)


# --8<-- [end:collect]


def replay(factory: ak.Factory, rounds: Rounds, corrupt=None) -> list[ak.Output]:
    """Run ``factory``'s process over the recorded rounds, carrying its state."""
    process = factory.create(rounds.layout)
    state = process.initialize()
    outputs = []
    for index, (batch, weights) in enumerate(rounds.batches()):
        if corrupt is not None:
            batch = ak.ClientBatch(corrupt(index, batch.matrix.copy()), rounds.layout)
        out = process.next(state, batch, weights if process.is_weighted else None)
        state = out.state
        outputs.append(out)
    return outputs


def flat(rounds: Rounds, result) -> np.ndarray:
    return rounds.layout.flatten(result).astype(np.float64)


def exact_means(rounds: Rounds, weighted: bool = True) -> list[np.ndarray]:
    """The exact (float64) mean update of every round: the reference for relative errors."""
    means = []
    for matrix, weights in zip(rounds.matrices, rounds.weights, strict=True):
        w = weights if weighted else np.ones_like(weights)
        means.append(w @ matrix.astype(np.float64) / w.sum())
    return means


def relative_errors(rounds: Rounds, outputs, reference) -> np.ndarray:
    return np.array(
        [
            np.linalg.norm(flat(rounds, out.result) - ref) / np.linalg.norm(ref)
            for out, ref in zip(outputs, reference, strict=True)
        ]
    )


# -- 1. quantile estimation -------------------------------------------------------------------


# --8<-- [start:quantile]
def quantile_tour(rounds: Rounds, out: Output) -> None:
    """How fast and how closely the estimator tracks the 0.8 quantile of the client L2 norms."""
    norms = rounds.norms(2)
    target = np.quantile(norms, 0.8, axis=1)  # the empirical 0.8 quantile, round by round
    variants = {
        "initial 1.0, lr 0.2 (default)": ak.quantile_estimator(1.0, 0.8, 0.2),
        "initial 1.0, lr 0.05": ak.quantile_estimator(1.0, 0.8, 0.05),
        "initial 1.0, lr 1.0": ak.quantile_estimator(1.0, 0.8, 1.0),
        "initial 0.01, lr 0.2": ak.quantile_estimator(0.01, 0.8, 0.2),
    }
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in range(norms.shape[0]):
        ax.scatter(np.full(norms.shape[1], r + 1), norms[r], s=6, color="0.75")
    ax.plot(np.arange(1, len(target) + 1), target, "k--", label="empirical 0.8 quantile")
    rows = []
    for label, estimator in variants.items():
        state = estimator.initialize()
        used = []
        for round_norms in norms:
            used.append(estimator.report(state))  # the estimate a round uses...
            state = estimator.next(state, round_norms)  # ...then it sees that round's norms
        used = np.array(used)
        ax.plot(np.arange(1, len(used) + 1), used, marker="o", markersize=3, label=label)
        ratio = used / target
        within = np.flatnonzero(np.abs(np.log(ratio)) < math.log(1.25))
        first = int(within[0]) + 1 if within.size else "never"
        tail = ratio[len(ratio) // 2 :]
        clipped = (norms > used[:, None]).mean(axis=1)[len(ratio) // 2 :]
        rows.append([label, first, float(np.median(tail)), float(np.mean(clipped))])
    ax.set_yscale("log")
    round_axis(ax)
    ax.set_ylabel("L2 norm of client updates")
    ax.set_title("Quantile estimation on real client norms (grey: one dot per client)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3, which="both")
    out.figure("quantile.png", fig)
    out.text(
        "quantile.md",
        markdown_table(
            [
                "estimator (target 0.8)",
                "first round within 25%",
                "estimate / true (2nd half)",
                "fraction above the estimate (2nd half)",
            ],
            rows,
        ),
    )


# --8<-- [end:quantile]


# -- 2. zeroing and clipping -----------------------------------------------------------------

DEFAULT_ZEROING = dict(
    initial_estimate=10.0,
    target_quantile=0.98,
    learning_rate=math.log(10),
    multiplier=2.0,
    increment=1.0,
)


# --8<-- [start:robust]
def robust_tour(rounds: Rounds, out: Output) -> None:
    """Zeroing and clipping on the real updates, clean and with one corrupted client."""
    clean = exact_means(rounds)
    factories = {
        "mean": ak.mean(),
        "zeroing": ak.zeroing(ak.quantile_estimator(**DEFAULT_ZEROING), ak.mean()),
        "clipping": ak.clipping(ak.quantile_estimator(1.0, 0.8, 0.2), ak.mean()),
        "robust_aggregator": ak.robust_aggregator(),
    }
    later = len(rounds.matrices) // 2  # corruption starts halfway, once thresholds adapted

    def scale_one_client(factor):
        def corrupt(index, matrix):
            if index >= later:
                matrix[0] *= factor  # client 0 of every round sends a scaled update
            return matrix

        return corrupt

    rows = []
    for label, corrupt in [
        ("none", None),
        ("one client x10", scale_one_client(10.0)),
        ("one client x1000", scale_one_client(1000.0)),
        ("one client x1e6", scale_one_client(1e6)),
    ]:
        row = [label]
        for factory in factories.values():
            errors = relative_errors(rounds, replay(factory, rounds, corrupt), clean)
            row.append(float(np.median(errors[later:])))
        rows.append(row)
    out.text(
        "robust.md",
        markdown_table(
            ["corruption (2nd half of the rounds)", *(f"`{n}`" for n in factories)], rows
        ),
    )

    robust = replay(ak.robust_aggregator(), rounds)
    linf, l2 = rounds.norms(np.inf), rounds.norms(2)
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(1, len(robust) + 1)
    left.plot(
        x,
        [o.measurements["zeroing_norm"] for o in robust],
        marker="o",
        markersize=3,
        label="zeroing norm (2 q0.98 + 1)",
    )
    left.plot(x, linf.max(axis=1), "k--", label="largest client L-inf norm")
    left.set_title("Zeroing threshold (L-inf)")
    right.plot(
        x,
        [o.measurements["zeroing"]["clipping_norm"] for o in robust],
        marker="o",
        markersize=3,
        label="clipping norm (q0.8)",
    )
    right.plot(x, np.median(l2, axis=1), "k--", label="median client L2 norm")
    right.plot(x, l2.max(axis=1), "k:", label="largest client L2 norm")
    right.set_title("Clipping norm (L2)")
    for ax in (left, right):
        ax.set_yscale("log")
        round_axis(ax)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8)
    out.figure("robust.png", fig)


# --8<-- [end:robust]


# -- 3. differential privacy ------------------------------------------------------------------


# --8<-- [start:dp]
def dp_tour(rounds: Rounds, out: Output, clients_per_round: int) -> None:
    """The adaptive DP clip and the error DP adds, on the real updates."""
    clean = exact_means(rounds, weighted=False)
    l2 = rounds.norms(2)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(1, len(rounds.matrices) + 1)
    rows = []
    for z, style in ((0.0, "-"), (0.1, "--"), (0.3, ":")):
        if z >= 0.1 * clients_per_round:  # z must stay below 2 * sigma_b = 0.1 * clients
            continue
        factory = ak.gaussian_adaptive(z, clients_per_round, seed=0)
        outputs = replay(factory, rounds)
        clips = [0.1] + [o.measurements["dp_query_metrics"]["clip"] for o in outputs[:-1]]
        ax.plot(x, clips, style, marker="o", markersize=3, label=f"clip used, noise multiplier {z}")
        errors = relative_errors(rounds, outputs, clean)
        rows.append(
            [
                z,
                float(np.median(clips[len(clips) // 2 :])),
                float(np.median(errors[len(errors) // 2 :])),
            ]
        )
    ax.plot(x, np.median(l2, axis=1), "k--", label="median client L2 norm")
    ax.set_yscale("log")
    round_axis(ax)
    ax.set_title(
        f"gaussian_adaptive: the clip tracks the median norm ({clients_per_round} clients/round)"
    )
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    out.figure("dp_clip.png", fig)
    out.text(
        "dp.md",
        markdown_table(
            [
                "noise multiplier",
                "clip (median, 2nd half)",
                "relative error of the mean (median, 2nd half)",
            ],
            rows,
        ),
    )


# --8<-- [end:dp]


# --8<-- [start:epsilon]
def epsilon_table(out: Output) -> None:
    """What privacy a deployment gets: epsilon at delta = 1e-6 for some population sizes."""
    rows = []
    for population, per_round, rounds in [
        (10_000, 100, 1000),
        (1_000_000, 1000, 2000),
        (1_000_000, 5000, 2000),
    ]:
        for z in (0.5, 1.0, 2.0):
            eps = ak.privacy.epsilon(
                z, clients_per_round=per_round, population=population, rounds=rounds, delta=1e-6
            )
            rows.append([f"{population:,}", f"{per_round:,}", f"{rounds:,}", z, eps, z / per_round])
    out.text(
        "epsilon.md",
        markdown_table(
            [
                "population",
                "clients per round",
                "rounds",
                "noise multiplier",
                "epsilon (delta 1e-6)",
                "noise std / clip in the mean",
            ],
            rows,
        ),
    )


# --8<-- [end:epsilon]


# -- 4. compression -------------------------------------------------------------------------

BITS_REPLAY = (1, 2, 3, 4, 6, 8, 12, 16)


def quantized_mean(bits: int, rotate: bool) -> ak.Factory:
    value_sum = ak.quantized_sum(bits=bits, seed=0)
    return ak.mean(ak.hadamard(value_sum, seed=0) if rotate else value_sum)


# --8<-- [start:compression]
def compression_tour(rounds: Rounds, out: Output, bits_replay=BITS_REPLAY) -> dict:
    """Error and upload size of the quantized mean against bits, with and without rotation."""
    clean = exact_means(rounds)
    rows, errors = [], {}
    for rotate in (False, True):
        for bits in bits_replay:
            outputs = replay(quantized_mean(bits, rotate), rounds)
            error = float(np.median(relative_errors(rounds, outputs, clean)))
            sizes = outputs[-1].measurements["mean_value"]
            if rotate:
                sizes = sizes["hd"]
            errors[rotate, bits] = error
            rows.append(
                [
                    "hadamard + quantized" if rotate else "quantized",
                    bits,
                    error,
                    f"{sizes['bytes_per_client']:,}",
                    sizes["compression_ratio"],
                ]
            )
    out.text(
        "compression.md",
        markdown_table(
            [
                "sum",
                "bits",
                "relative error of the mean (median)",
                "bytes per client",
                "smaller by",
            ],
            rows,
        ),
    )
    return errors


# --8<-- [end:compression]


# --8<-- [start:bits]
def accuracy_against_bits(settings: Settings, data, bits_list, rounds: int) -> dict:
    """Train again with the quantized mean; the test accuracy after ``rounds`` rounds."""
    import torch

    from aggkit_torch.federated import FederatedTrainer
    from aggkit_torch.models import MnistCNN

    train_x, train_y, test_x, test_y, parts = data
    accuracy = {}
    for rotate in (False, True):
        for bits in bits_list:
            torch.manual_seed(0)  # the same initial model as the collection run
            trainer = FederatedTrainer(
                MnistCNN(),
                quantized_mean(bits, rotate),
                train_x,
                train_y,
                parts,
                test_x,
                test_y,
                config=fedavg_config(settings, eval_every=rounds),
            )
            history = trainer.run(rounds, progress=False, log=None)
            accuracy[rotate, bits] = history[-1]["test_accuracy"]
            print(f"bits {bits}, hadamard {rotate}: test accuracy {accuracy[rotate, bits]:.4f}")
    return accuracy


# --8<-- [end:bits]


def plot_compression(out: Output, errors: dict, accuracy: dict, baseline: float, rounds: int):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for rotate, label in ((False, "quantized_sum"), (True, "hadamard(quantized_sum)")):
        bits = sorted(b for r, b in errors if r == rotate)
        left.plot(bits, [errors[rotate, b] for b in bits], marker="o", label=label)
        bits = sorted(b for r, b in accuracy if r == rotate)
        right.plot(bits, [accuracy[rotate, b] for b in bits], marker="o", label=label)
    right.axhline(baseline, color="k", linestyle="--", label="float32 mean")
    right.set_ylim(baseline - 0.05, baseline + 0.02)  # 7 points: a difference would show
    left.set_yscale("log")
    left.set_xlabel("bits")
    left.set_ylabel("relative error of the mean update")
    left.set_title("Error on the recorded updates")
    right.set_xlabel("bits")
    right.set_ylabel(f"test accuracy after {rounds} rounds")
    right.set_title("Training with the quantized mean")
    for ax in (left, right):
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8)
    out.figure("compression.png", fig)
    rows = [
        [b, accuracy.get((False, b), ""), accuracy.get((True, b), "")]
        for b in sorted({b for _, b in accuracy})
    ]
    rows.append(["32 (float32 mean)", baseline, ""])
    out.text(
        "bits.md",
        markdown_table(
            ["bits", f"accuracy after {rounds} rounds, quantized", "with Hadamard rotation"], rows
        ),
    )


# -- 5. secure summation --------------------------------------------------------------------


# --8<-- [start:secure]
def secure_tour(rounds: Rounds, out: Output) -> None:
    """secure_aggregator against robust_aggregator (same zeroing and clipping) on real updates."""
    from aggkit.testing import assert_only_secure

    secure = replay(ak.secure_aggregator(), rounds)
    plain = replay(ak.robust_aggregator(), rounds)
    rows = []
    for index, (s, p) in enumerate(zip(secure, plain, strict=True)):
        values = s.measurements["zeroing"]["clipping"]["mean_value"]
        difference = np.abs(flat(rounds, s.result) - flat(rounds, p.result)).max()
        rows.append(
            [
                index + 1,
                values["secure_upper_threshold"],
                values["secure_upper_clipped_count"],
                float(difference),
            ]
        )
    process = ak.secure_aggregator().create(rounds.layout)
    batch, weights = next(rounds.batches())
    assert_only_secure(process, process.initialize(), batch, weights)  # no plain sum anywhere
    step = len(rows) // 5 or 1
    out.text(
        "secure.md",
        markdown_table(
            [
                "round",
                "secure range (+-)",
                "clients clipped to the range",
                "max abs difference from robust_aggregator",
            ],
            rows[::step],
        ),
    )


# --8<-- [end:secure]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (the docs test)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the collection run")
    parser.add_argument(
        "--bits-rounds", type=int, default=40, help="rounds of each accuracy-against-bits run"
    )
    parser.add_argument("--out", type=Path, default=FIGURES / "tuning")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings.full(args.rounds)
    command = "python docs/tutorials/tuning_tour.py" + (" --quick" if args.quick else "")
    out = Output(args.out, settings, command)

    rounds, data = collect(settings)
    quantile_tour(rounds, out)
    robust_tour(rounds, out)
    dp_tour(rounds, out, settings.clients_per_round)
    epsilon_table(out)
    errors = compression_tour(rounds, out, (2, 8) if args.quick else BITS_REPLAY)
    secure_tour(rounds, out)

    bits_rounds = 1 if args.quick else min(args.bits_rounds, settings.rounds)
    accuracy = accuracy_against_bits(
        settings, data, (2,) if args.quick else (1, 2, 4, 8), bits_rounds
    )
    plot_compression(out, errors, accuracy, rounds.accuracy[bits_rounds - 1], bits_rounds)
    out.finish()


if __name__ == "__main__":
    main()
