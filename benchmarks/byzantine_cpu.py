"""The Byzantine-robust rules against Flower's functions per core: single-threaded CPU time.

``bench_byzantine.py`` times aggkit (both cores) against Flower's functions (single-threaded
NumPy) by the wall clock. On a machine shared with other jobs that ratio moves with how much of
the second core aggkit gets (at K=100 x 431,080, Krum measured 14x-35x Flower's speed from run to
run). This script pins both sides to one thread (set before NumPy and numba load) and times each
call by the process's CPU time, Flower's call and aggkit's round alternately, on the same matrix
and weights as ``bench_byzantine.py``: the ratio is then the work each does per core, which the
load barely moves. With both cores aggkit's kernels run up to 2x faster; Flower's do not.

    python benchmarks/byzantine_cpu.py [--rounds 5] [--rules krum,multi_krum,median,trimmed_mean]
        [--clients 100] [--values 431080]

Prints per rule: the best and median CPU time of each side and the median over rounds of
(Flower / aggkit).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Only when run as a script: pytest's --doctest-modules imports this file too, and a changed
    # NUMBA_NUM_THREADS in the test process makes numba refuse every later compile.
    for _name in (
        "NUMBA_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    ):
        os.environ[_name] = "1"

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aggkit as ak


def cases(k: int, f: int) -> dict:
    """``name -> (factory, Flower call)`` at ``bench_byzantine.py``'s parameters."""
    from flwr.server.strategy import aggregate as flower

    return {
        "median": (ak.median(), flower.aggregate_median),
        "trimmed_mean": (ak.trimmed_mean(0.1), lambda r: flower.aggregate_trimmed_avg(r, 0.1)),
        "krum": (ak.krum(f), lambda r: flower.aggregate_krum(r, f, 0)),
        "multi_krum": (ak.krum(f, k - f), lambda r: flower.aggregate_krum(r, f, k - f)),
    }


def cpu_time(fn, *args) -> float:
    """Seconds of this process's CPU time that ``fn(*args)`` takes."""
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rules", default="krum,multi_krum,median,trimmed_mean")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--values", type=int, default=431_080)
    args = parser.parse_args(argv)
    k, n = args.clients, args.values
    f = max(1, k // 10)
    # bench_byzantine.py's matrix, weights and two-tensor template.
    matrix = np.random.default_rng(k + n).standard_normal((k, n), dtype=np.float32)
    matrix *= np.float32(0.01)
    weights = np.random.default_rng(1).integers(50, 600, k).astype(np.float64)
    split = max(1, n - 1000)
    template = [ak.TensorSpec((split,), np.float32), ak.TensorSpec((n - split,), np.float32)]
    results = [([row[:split], row[split:]], int(w)) for row, w in zip(matrix, weights, strict=True)]
    known = cases(k, f)
    ratios = {}
    print(f"K={k} x n={n:,} float32, f={f}, one thread each, CPU time, {args.rounds} rounds")
    print(
        f"{'rule':<13} {'Flower best':>12} {'aggkit best':>12} {'Flower med':>11} "
        f"{'aggkit med':>11} {'ratio':>7}"
    )
    for name in args.rules.split(","):
        factory, call = known[name]
        process = factory.create(template)
        batch = ak.ClientBatch(matrix, process.layout)
        state = process.initialize()
        given = weights if process.is_weighted else None
        ours = process.next(state, batch, given).result  # compiles; same answer as Flower's
        for a, b in zip(ours, call(results), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        times: dict[str, list[float]] = {"flower": [], "aggkit": []}
        for _ in range(args.rounds):
            times["flower"].append(cpu_time(call, results))
            times["aggkit"].append(cpu_time(process.next, state, batch, given))
        theirs, mine = np.asarray(times["flower"]), np.asarray(times["aggkit"])
        ratios[name] = float(np.median(theirs / mine))
        print(
            f"{name:<13} {theirs.min() * 1e3:>10.0f}ms {mine.min() * 1e3:>10.1f}ms "
            f"{np.median(theirs) * 1e3:>9.0f}ms {np.median(mine) * 1e3:>9.1f}ms "
            f"{ratios[name]:>6.1f}x",
            flush=True,
        )
    return ratios


if __name__ == "__main__":
    main()
