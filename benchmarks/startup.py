"""Start-up cost: ``import aggkit`` and the first ``ak.mean()`` call, each in a fresh process.

The targets are ``import aggkit`` under 0.3 s (compiling nothing) and a first call
with a warm disk cache under 0.5 s. Each run starts a new interpreter, so the kernels load from
numba's disk cache (the first run fills it if it is cold). The table also shows how much of the
first call is ``import numba`` alone; most of the rest is numba's target context, which its first
dispatch loads (and which imports SciPy's linear algebra when SciPy is installed)::

    python benchmarks/startup.py --runs 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]

# Runs in the fresh process; prints one JSON line of seconds.
_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import aggkit as ak
t2 = time.perf_counter()
process = ak.mean().create(ak.TensorSpec((1000,), np.float32))
state = process.initialize()
values = np.ones((4, 1000), np.float32)
t3 = time.perf_counter()
import numba
t4 = time.perf_counter()
process.next(state, values, np.ones(4))
t5 = time.perf_counter()
process.next(state, values, np.ones(4))
t6 = time.perf_counter()
print(json.dumps({
    "import numpy": t1 - t0,
    "import aggkit": t2 - t1,
    "first call": t5 - t3,
    "  of which import numba": t4 - t3,
    "second call": t6 - t5,
    "scipy loaded": "scipy" in sys.modules,
}))
"""


def measure(runs: int) -> dict[str, list]:
    """Per-run timings of :data:`_PROBE`, each in a new interpreter (after one warm-up run)."""
    results: dict[str, list] = {}
    for run in range(runs + 1):
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, cwd=_ROOT
        )
        if run == 0:
            continue  # fills numba's disk cache if it is cold
        for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
            results.setdefault(key, []).append(value)
    return results


def table(results: dict[str, list]) -> str:
    lines = ["| step | median (s) | min (s) |", "|---|---:|---:|"]
    for key, values in results.items():
        if key == "scipy loaded":
            continue
        lines.append(f"| {key.strip()} | {statistics.median(values):.3f} | {min(values):.3f} |")
    lines.append(f"\nSciPy installed and loaded by numba: {all(results['scipy loaded'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes to time (default 7)")
    args = parser.parse_args(argv)
    print(table(measure(args.runs)))


if __name__ == "__main__":
    main()
