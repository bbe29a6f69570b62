"""Bulyan: aggkit against Flower's ``aggregate_bulyan`` (with its Krum), paired, at K=100 x 431,080
float32 (f = 10).

Flower's Bulyan runs ``K - 2f`` Krum selections, each computing every pairwise distance again, so
one call takes minutes; ``benchmarks/bench_byzantine.py`` leaves it out at the full shapes and this
script times it on its own: each round times one Flower call and then aggkit's best of three,
after a short pause each, and prints the ratio with the load average. First both results are
checked to agree.

    python benchmarks/bulyan_flower.py [ROUNDS]    # default 2 rounds
"""

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from flwr.server.strategy import aggregate as flower

import aggkit as ak


def main(rounds: int = 2) -> None:
    k, n = 100, 431_080
    f = k // 10
    matrix = np.random.default_rng(k + n).standard_normal((k, n), dtype=np.float32) * np.float32(
        0.01
    )
    split = n - 1000
    template = [ak.TensorSpec((split,), np.float32), ak.TensorSpec((1000,), np.float32)]
    weights = np.random.default_rng(1).integers(50, 600, k)
    results = [([row[:split], row[split:]], int(w)) for row, w in zip(matrix, weights, strict=True)]
    process = ak.bulyan(f).create(template)
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    ours = process.next(state, batch).result
    print("load before", os.getloadavg(), flush=True)
    t = time.perf_counter()
    theirs = flower.aggregate_bulyan(list(results), f, flower.aggregate_krum, to_keep=0)
    first = time.perf_counter() - t
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print(f"same result; flower first call {first:.1f} s", flush=True)
    ratios = []
    for r in range(rounds):
        time.sleep(0.15)
        t = time.perf_counter()
        flower.aggregate_bulyan(list(results), f, flower.aggregate_krum, to_keep=0)
        ref = time.perf_counter() - t
        mine = []
        for _ in range(3):
            time.sleep(0.15)
            t = time.perf_counter()
            process.next(state, batch)
            mine.append(time.perf_counter() - t)
        ratios.append(ref / min(mine))
        print(
            f"round {r}: flower {ref:.2f} s, aggkit best of 3 {min(mine) * 1e3:.0f} ms, "
            f"ratio {ref / min(mine):.1f}x, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    print(
        f"median ratio {np.median(ratios):.1f}x over {rounds} rounds; load after {os.getloadavg()}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
