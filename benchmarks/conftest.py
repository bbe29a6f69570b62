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

import numpy as np
import pytest

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
