"""Time the presets of two aggkit source trees side by side, in one run, round after round.

A change that should not move the speed (a refactor) is checked here: one worker process per
source tree imports *that* tree's ``aggkit``, builds the same client matrix from the same seed and
times one round of a preset when asked. The driver asks the workers in turn, after an idle pause
each, so both trees meet the same machine load (the paired-round idea of ``conftest.paired``,
across processes because one interpreter cannot import two versions of a package). Each worker also
times the BLAS read-bandwidth probe (``w @ X``) so the figures read as fractions of it.

Usage (``BASE`` is any git revision; the current tree is the contender)::

    python benchmarks/ab_revisions.py --base BASE [--rounds 20] [--presets mean,robust,dp,...]

On a machine busy with other jobs, ``--clock cpu`` times each round by the worker's CPU time
instead of the wall clock; run it single-threaded then (``NUMBA_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1``: idle worker threads spin, and their spinning would count).

It checks ``BASE`` out into a temporary git worktree and removes it afterwards. It prints, per
preset, the best and median round time of each tree and the median over rounds of the per-round
ratio ``base / current`` (above 1.0: the current tree is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: name -> the expression building the factory, evaluated with ``ak`` in scope.
PRESETS = {
    "probe": None,
    "mean": "ak.mean()",
    "robust": "ak.robust_aggregator()",
    "dp": "ak.dp_aggregator(1.0, 100)",
    "compression": "ak.compression_aggregator()",
    "secure": "ak.secure_aggregator()",
    # The Hadamard rotation (issue 26's "x probe" rows), around a plain and a quantized sum.
    "hadamard_sum": "ak.mean(ak.hadamard(ak.sum(), seed=1))",
    "hadamard_quantized": "ak.mean(ak.hadamard(ak.quantized_sum(), seed=1))",
    # The Byzantine-robust rules at bench_byzantine.py's parameters for K=100 (f = K // 10).
    "median": "ak.median()",
    "trimmed_mean": "ak.trimmed_mean(0.1)",
    "krum": "ak.krum(10)",
    "multi_krum": "ak.krum(10, 90)",
    "bulyan": "ak.bulyan(10)",
}

_WORKER = r"""
import json, sys, time
import numpy as np
import aggkit as ak

K, N = int(sys.argv[1]), int(sys.argv[2])
clock = time.process_time if sys.argv[3] == "cpu" else time.perf_counter
rng = np.random.default_rng(K + N)
matrix = rng.standard_normal((K, N), dtype=np.float32) * np.float32(1 / np.sqrt(N))
weights = rng.random(K) + 0.5
w32 = weights.astype(np.float32)
template = ak.TensorSpec((N,), np.float32)
rounds = {}


def make(expr):
    if expr is None:
        return lambda: w32 @ matrix
    process = eval(expr, {"ak": ak})
    process = process.create(template)
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    round_weights = weights if process.is_weighted else None
    return lambda: process.next(state, batch, round_weights)

print(json.dumps({"aggkit": ak.__file__}), flush=True)
for line in sys.stdin:
    name, expr = json.loads(line)
    if name not in rounds:
        rounds[name] = make(expr)
        rounds[name]()  # compile or load the kernels; warm up
    start = clock()
    rounds[name]()
    print(json.dumps(clock() - start), flush=True)
"""


class _Worker:
    def __init__(self, tree: Path, shape: tuple[int, int], clock: str = "wall"):
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(shape[0]), str(shape[1]), clock],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tree,
        )
        self.origin = json.loads(self.proc.stdout.readline())["aggkit"]

    def time(self, name: str) -> float:
        self.proc.stdin.write(json.dumps([name, PRESETS[name]]) + "\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=20, help="paired rounds per preset")
    parser.add_argument(
        "--presets", default="probe,mean,robust,dp,compression,secure", help="comma-separated"
    )
    parser.add_argument("--clients", type=int, default=100, help="rows of the client matrix")
    parser.add_argument("--values", type=int, default=431_080, help="columns of the matrix")
    parser.add_argument("--pause", type=float, default=0.15, help="idle seconds before a round")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="time rounds by wall or CPU time"
    )
    args = parser.parse_args(argv)
    names = args.presets.split(",")
    unknown = sorted(set(names) - set(PRESETS))
    if unknown:
        parser.error(f"unknown presets {unknown}; choose from {sorted(PRESETS)}")

    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(here), "worktree", "add", "--detach", str(base_tree), args.base],
            check=True,
            capture_output=True,
        )
        try:
            shape = (args.clients, args.values)
            workers = {
                "base": _Worker(base_tree, shape, args.clock),
                "current": _Worker(here, shape, args.clock),
            }
            print(f"base    {args.base}: {workers['base'].origin}")
            print(f"current {here}: {workers['current'].origin}")
            print(
                f"K={shape[0]} x n={shape[1]:,} float32, {args.rounds} paired rounds, "
                f"{args.clock} clock\n"
            )
            print(
                f"{'preset':<12} {'base best':>10} {'cur best':>10} {'base med':>10} "
                f"{'cur med':>10} {'ratio b/c':>10}"
            )
            for name in names:
                times = {"base": [], "current": []}
                for round_index in range(args.rounds):
                    order = ("base", "current") if round_index % 2 == 0 else ("current", "base")
                    for side in order:
                        time.sleep(args.pause)
                        times[side].append(workers[side].time(name))
                base, cur = np.asarray(times["base"]), np.asarray(times["current"])
                print(
                    f"{name:<12} {base.min() * 1e3:>9.2f}ms {cur.min() * 1e3:>9.2f}ms "
                    f"{np.median(base) * 1e3:>9.2f}ms {np.median(cur) * 1e3:>9.2f}ms "
                    f"{np.median(base / cur):>10.3f}",
                    flush=True,
                )
            for worker in workers.values():
                worker.close()
        finally:
            subprocess.run(
                ["git", "-C", str(here), "worktree", "remove", "--force", str(base_tree)],
                check=False,
                capture_output=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
