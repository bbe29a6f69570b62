"""Federated MNIST test accuracy against epsilon: the dp main job at several privacy budgets.

Runs ``python -m aggkit_torch.mnist`` once per row of :data:`ROWS` (the dp job's defaults: 1,000
IID clients, 100 per round on average by Poisson sampling, 5 rounds; epsilon at delta 1e-5),
one after the other, each into ``--out/<row>/``; a row whose ``metrics.json`` exists is not run
again, so an interrupted table resumes. Then writes ``--out/table.md`` (the table, with each
row's exact command) and ``--out/accuracy_epsilon.png`` (test accuracy against the epsilon spent
so far, round by round, for every DP row; the runs without a guarantee as horizontal lines).

    .venv/bin/python benchmarks/dp_epsilon_table.py --out .benchmarks/dp-table
    .venv/bin/python benchmarks/dp_epsilon_table.py --out .benchmarks/dp-table --render-only

The rows of :data:`MATCHED` also go into ``--out/matched.md``: central DP, DP-FTRL and
distributed DP at the dp job's default epsilon (6.0 over 5 rounds), and distributed DP at the
central run's noise multiplier.

Each row costs 5 rounds of 100 clients (about 40 s of CPU time with one thread: on a loaded
machine run it with ``NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` beside
``--threads 1``, since idle worker threads of the other libraries burned four times the CPU
time under load). ``--rows`` picks rows; ``--extra`` appends options to every command (e.g. a
smaller configuration for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

#: The robust preset with the dp job's training configuration (the same clients and sampling).
_SAME_TRAINING = (
    "--clients 1000 --clients-per-round 100 --rounds 5 --local-epochs 2 --batch-size 20 "
    "--lr 0.05 --server-momentum 0.9 --sampling poisson"
)

#: The rows of the matched-epsilon comparison (``matched.md``): central DP, DP-FTRL and
#: distributed DP at the dp job's default epsilon (6.0 over 5 rounds).
MATCHED = ("default", "ftrl", "ddp", "ddp07")

#: (row name, what it is, options of ``python -m aggkit_torch.mnist``).
ROWS: list[tuple[str, str, str]] = [
    ("eps1", "dp, target epsilon 1", "--aggregator dp --target-epsilon 1"),
    ("eps2", "dp, target epsilon 2", "--aggregator dp --target-epsilon 2"),
    ("eps4", "dp, target epsilon 4", "--aggregator dp --target-epsilon 4"),
    ("default", "dp, defaults (noise multiplier 0.7)", "--aggregator dp"),
    ("eps8", "dp, target epsilon 8", "--aggregator dp --target-epsilon 8"),
    (
        "nonoise",
        "dp pipeline without noise (clipping only)",
        "--aggregator dp --noise-multiplier 0",
    ),
    (
        "robust",
        "robust preset, same clients and local training, server lr 1",
        f"--aggregator robust {_SAME_TRAINING}",
    ),
    ("ftrl", "dp-ftrl, defaults (tree noise multiplier 1.41)", "--aggregator dp-ftrl"),
    (
        "ddp",
        "distributed-dp, defaults (Skellam, noise multiplier 0.77)",
        "--aggregator distributed-dp",
    ),
    (
        "ddp07",
        "distributed-dp at the central default's noise multiplier 0.7",
        "--aggregator distributed-dp --noise-multiplier 0.7",
    ),
]


def command(options: str, out: Path, extra: str = "") -> list[str]:
    """The main job's command line of a row."""
    return [
        sys.executable,
        "-m",
        "aggkit_torch.mnist",
        *shlex.split(options),
        *shlex.split(extra),
        "--no-progress",
        "--out",
        str(out),
    ]


def run_rows(out: Path, names: list[str], extra: str) -> None:
    """Run the rows that have no ``metrics.json`` yet, one at a time."""
    for name, _, options in ROWS:
        if name not in names or (out / name / "metrics.json").exists():
            continue
        argv = command(options, out / name, extra)
        print(f"--- {name}: {' '.join(argv[1:])}", flush=True)
        subprocess.run(argv, check=True)


def _table(rows: list, extra: str) -> str:
    """The markdown table of ``rows`` (``(name, what, options, metrics)``)."""
    lines = [
        "| run | noise multiplier | epsilon (delta 1e-5) | test accuracy after 5 rounds | "
        "command |",
        "|---|---:|---:|---:|---|",
    ]
    for _, what, options, metrics in rows:
        args = metrics["args"]
        private = args["aggregator"] in ("dp", "dp-ftrl", "distributed-dp")
        z = f"{args['noise_multiplier']:.3f}" if private else "-"
        epsilon = metrics.get("epsilon")
        eps = "-" if not private else ("inf" if not math.isfinite(epsilon) else f"{epsilon:.2f}")
        shown = f"python -m aggkit_torch.mnist {options} {extra}".strip()
        lines.append(f"| {what} | {z} | {eps} | {metrics['test_accuracy']:.4f} | `{shown}` |")
    return "\n".join(lines) + "\n"


def render(out: Path, extra: str = "") -> str:
    """``table.md`` and ``accuracy_epsilon.png`` from the rows' ``metrics.json`` files."""
    rows = []
    for name, what, options in ROWS:
        path = out / name / "metrics.json"
        if path.exists():
            rows.append((name, what, options, json.loads(path.read_text())))
    table = _table(rows, extra)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "matched.md").write_text(_table([r for r in rows if r[0] in MATCHED], extra))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, what, _, metrics in rows:
        history = [m for m in metrics["history"] if "test_accuracy" in m]
        curve = [(m["epsilon"], m["test_accuracy"]) for m in history if "epsilon" in m]
        if curve and all(math.isfinite(e) for e, _ in curve):
            ax.plot(*zip(*curve, strict=True), marker="o", label=what)
        else:
            ax.axhline(metrics["test_accuracy"], ls="--", lw=1, color="grey" if curve else "k")
            ax.annotate(
                f"{what}: {metrics['test_accuracy']:.3f}",
                (0.01, metrics["test_accuracy"]),
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_xlabel("epsilon spent so far (delta 1e-5), one point per round")
    ax.set_ylabel("MNIST test accuracy")
    ax.set_title("Federated MNIST, 1,000 clients, 100 per round on average")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy_epsilon.png", dpi=120)
    plt.close(fig)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/dp-table"), help="runs dir")
    parser.add_argument(
        "--rows",
        default=",".join(name for name, _, _ in ROWS),
        help="comma-separated rows to run (default: all)",
    )
    parser.add_argument("--extra", default="", help="options appended to every command")
    parser.add_argument("--render-only", action="store_true", help="only write the table")
    args = parser.parse_args(argv)
    if not args.render_only:
        run_rows(args.out, args.rows.split(","), args.extra)
    print(render(args.out, args.extra))


if __name__ == "__main__":
    main()
