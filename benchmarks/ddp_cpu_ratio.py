"""CPU time of ``ak.distributed_dp`` rounds against the BLAS probe, one thread, K=100 x 431,080.

Where wall times are hopeless (a shared, loaded machine), CPU time of one thread still compares
work: the probe (``ones(K) @ matrix``, float32) 20 times, then one round of each variant, twice,
interleaved; medians. The variants: Skellam in process (the simulation draws the round's noise
once, as the exact sum of the clients' shares), Skellam through a backend that takes every
client's vector (as MaskingBackend and deployments do), and the discrete Gaussian (always per
client).

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/ddp_cpu_ratio.py
"""

from __future__ import annotations

import os
import time

import numpy as np

import aggkit as ak
from aggkit.channels import InProcessBackend, using_backend


class _PerClientBackend(InProcessBackend):
    """In-process sums that take every client's vector (not fused)."""

    fused = False


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main(clients: int = 100, size: int = 431_080) -> str:
    rng = np.random.default_rng(0)
    matrix = (rng.standard_normal((clients, size)) * 0.01).astype(np.float32)
    spec = ak.TensorSpec((size,), np.float32)
    batch = ak.ClientBatch(matrix, ak.Layout(spec))
    ones = np.ones(clients, np.float32)
    processes = {
        m: ak.distributed_dp(0.7, clients, 20, 0.12, mechanism=m, seed=0).create(spec)
        for m in ("distributed_skellam", "distributed_dgauss")
    }
    states = {m: p.initialize() for m, p in processes.items()}
    warm = ak.ClientBatch(matrix[:2], batch.layout)
    for m, p in processes.items():  # compile
        p.next(states[m], warm)

    def per_client():
        with using_backend(_PerClientBackend()):
            processes["distributed_skellam"].next(states["distributed_skellam"], batch)

    times: dict[str, list[float]] = {
        "probe": [],
        "skellam, in process (noise drawn once)": [],
        "skellam, every client's vector": [],
        "discrete Gaussian": [],
    }
    skellam, dgauss = processes["distributed_skellam"], processes["distributed_dgauss"]
    for _ in range(2):
        times["probe"] += [_cpu(lambda: ones @ matrix) for _ in range(20)]
        times["skellam, in process (noise drawn once)"].append(
            _cpu(lambda: skellam.next(states["distributed_skellam"], batch))
        )
        times["skellam, every client's vector"].append(_cpu(per_client))
        times["discrete Gaussian"].append(
            _cpu(lambda: dgauss.next(states["distributed_dgauss"], batch))
        )
    probe = float(np.median(times["probe"]))
    lines = [
        f"K={clients} x n={size:,}, one thread, load average {os.getloadavg()[0]:.0f}",
        "",
        "| round | CPU seconds (median) | ratio to the probe |",
        "|---|---:|---:|",
    ]
    for name, values in times.items():
        median = float(np.median(values))
        lines.append(f"| {name} | {median:.4f} | {probe / median:.4f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
