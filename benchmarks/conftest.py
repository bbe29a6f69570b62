"""Benchmark configuration shared by every suite in this folder.

Benchmarks run in two modes:

* smoke (default, what CI runs): pytest-benchmark is disabled by ``addopts``, every benchmark runs
  once on small shapes, so the suite checks that the benchmarks work, not how fast they are;
* full: ``AGGKIT_BENCH_FULL=1 python -m pytest benchmarks --benchmark-enable
  --benchmark-json=.benchmarks/results.json`` on the real shapes, then
  ``python benchmarks/render.py .benchmarks/results.json`` writes ``docs/benchmarks.md``.

Every benchmark records in ``benchmark.extra_info``: ``bytes`` (client-matrix bytes it reads; the
render script turns times into GB/s) or ``items`` (things it processes, for items/s), and
``probe=True`` on the read-bandwidth probe of its group (BLAS ``w @ X`` over the same matrix), so
each row is reported as a fraction of the probe measured in the same run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import pytest

import aggkit as ak

FULL = os.environ.get("AGGKIT_BENCH_FULL", "0") == "1"

#: (clients, values) of the client matrices: the MNIST CNN (431,080 parameters) at 100 clients,
#: and a large model at 32 clients.
MATRIX_SHAPES = [(100, 431_080), (32, 10_000_000)] if FULL else [(8, 10_007)]


@pytest.fixture(scope="session")
def matrices():
    """A cache of random float32 client matrices by shape (generation is not benchmarked)."""
    cache: dict[tuple[int, int], np.ndarray] = {}

    def get(shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
        key = (shape, np.dtype(dtype).str)
        if key not in cache:
            rng = np.random.default_rng(sum(shape))
            cache[key] = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        return cache[key]

    return get


def paired_rounds(shape: tuple[int, int]) -> int:
    """Rounds of a paired benchmark on a client matrix of ``shape``: about 10 s each."""
    return 30 if shape[0] * shape[1] < 1e8 else 12


def shape_id(shape: tuple[int, int]) -> str:
    return f"K={shape[0]}xn={shape[1]:,}"


def record(
    benchmark,
    *,
    group: str,
    nbytes: int | None = None,
    items: int | None = None,
    probe: bool = False,
    **extra,
) -> None:
    """Tag a benchmark with its group, its work size and whether it is the group's probe."""
    benchmark.group = group
    if nbytes is not None:
        benchmark.extra_info["bytes"] = int(nbytes)
    if items is not None:
        benchmark.extra_info["items"] = int(items)
    benchmark.extra_info["probe"] = probe
    benchmark.extra_info.update(extra)


#: Seconds of idle time before each call of a paired benchmark. After a BLAS call, OpenBLAS's
#: worker threads spin for about 0.1 s, and a numba kernel started meanwhile ran 1.7-2.7x slower
#: (K=100 x 431,080 weighted sum: 9-14 ms right after `w @ X`, 5.2 ms after a 0.12 s pause;
#: December 2026).
PAUSE = 0.15


def paired(
    benchmark,
    reference: Callable[[], object],
    contender: Callable[[], object],
    *,
    group: str,
    rounds: int,
    nbytes: int | None = None,
    reference_name: str = "probe",
) -> None:
    """Time ``reference`` and ``contender`` alternately, round after round, after a pause each.

    Other VMs share this machine's memory bandwidth, and their load changes within seconds, so a
    probe timed in one test and a kernel timed a minute later in another can meet different
    machines. Here each round times the two back to back under the same load. ``extra_info``
    gets ``paired`` (the reference's name), ``reference_ms`` and ``contender_ms`` (best times),
    ``best_ratio`` (reference best / contender best) and ``ratio`` (the median over rounds of
    reference time / contender time): 1.0 = as fast as the reference.
    """
    reference()
    contender()
    times: dict[str, list[float]] = {"reference": [], "contender": []}

    def run():
        for name, fn in (("reference", reference), ("contender", contender)):
            time.sleep(PAUSE)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    record(benchmark, group=group, nbytes=nbytes, paired=reference_name)
    benchmark.pedantic(run, rounds=rounds if FULL else 1, iterations=1)
    ref, con = np.asarray(times["reference"]), np.asarray(times["contender"])
    benchmark.extra_info["reference_ms"] = float(ref.min() * 1e3)
    benchmark.extra_info["contender_ms"] = float(con.min() * 1e3)
    benchmark.extra_info["best_ratio"] = float(ref.min() / con.min())
    benchmark.extra_info["ratio"] = float(np.median(ref / con))


def paired_round(
    benchmark,
    factory,
    template,
    matrix: np.ndarray,
    weights: np.ndarray,
    *,
    group: str,
    reference: Callable[[], object] | None = None,
    reference_name: str = "probe",
) -> None:
    """:func:`paired` for one round of ``factory``'s process on ``matrix`` as a ClientBatch,
    against the probe (BLAS ``w @ X`` over the same matrix) unless ``reference`` is given."""
    process = factory.create(template)
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    if reference is None:
        w32 = weights.astype(np.float32)

        def reference():
            return w32 @ matrix

    paired(
        benchmark,
        reference,
        lambda: process.next(state, batch, weights),
        group=group,
        nbytes=matrix.nbytes,
        rounds=paired_rounds(matrix.shape),
        reference_name=reference_name,
    )


#: Warm-up calls before pytest-benchmark calibrates. Without them, the calibration times the first
#: call, which loads or compiles the numba kernels (0.1-1 s). It then chose 5 rounds for a 7 ms
#: kernel while the probe beside it got 85, and a minimum of 5 noisy rounds was set against one
#: of 85 (bench_core, December 2026).
WARMUP_ITERATIONS = 3


def pytest_collection_modifyitems(config, items):
    """Give every benchmark in this folder warm-up calls, unless it sets its own."""
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if not str(item.path).startswith(here + os.sep):
            continue
        if item.get_closest_marker("benchmark") is None:
            item.add_marker(pytest.mark.benchmark(warmup=True, warmup_iterations=WARMUP_ITERATIONS))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the versions that decide the figures, for ``render.py``'s page."""
    from benchmarks.render import installed_versions

    machine_info["aggkit_versions"] = installed_versions()
