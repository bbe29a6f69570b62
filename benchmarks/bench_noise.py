"""Counter-based noise against NumPy's Generator, in the same run.

Groups ``noise|<dtype>|n=<size>``: the probe is NumPy's ``Generator.standard_normal(out=...)``
(PCG64 + ziggurat, one thread), so each row reads as a multiple of NumPy's speed. ``bytes`` is the
size of the noise produced, so the render script prints GB/s of noise. Groups
``uniform|...`` do the same for uniforms on [0, 1) and random signs against ``Generator.random``.

Full run::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_noise.py --benchmark-enable \
        --benchmark-json=.benchmarks/noise.json
    python benchmarks/render.py .benchmarks/noise.json
"""

from __future__ import annotations

import numpy as np
import pytest

from aggkit.kernels import counter_rng, gaussian_noise
from benchmarks.conftest import FULL, paired, record

#: The MNIST CNN's 431,080 parameters (one DP round's noise), and a large model.
SIZES = [431_080, 10_000_000] if FULL else [10_007]
DTYPES = [np.float32, np.float64]


@pytest.fixture(params=SIZES, ids=lambda n: f"n={n:,}")
def size(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


def _group(kind: str, dtype, size: int) -> str:
    return f"{kind}|{np.dtype(dtype).name}|n={size:,}"


def test_probe_numpy_standard_normal(benchmark, dtype, size):
    """NumPy's Generator.standard_normal into a preallocated buffer (no allocation)."""
    out = np.empty(size, dtype)
    gen = np.random.default_rng(0)
    record(benchmark, group=_group("noise", dtype, size), nbytes=out.nbytes, probe=True)
    benchmark(lambda: gen.standard_normal(out=out, dtype=dtype))


def test_numpy_add_noise(benchmark, dtype, size):
    """What DP code usually writes: ``x += sigma * rng.standard_normal(n)``."""
    x = np.zeros(size, dtype)
    gen = np.random.default_rng(0)
    record(benchmark, group=_group("noise", dtype, size), nbytes=x.nbytes)

    def run():
        np.add(x, dtype(0.5) * gen.standard_normal(size, dtype=dtype), out=x)

    benchmark(run)


def test_aggkit_add_gaussian_noise(benchmark, dtype, size):
    """aggkit: Philox4x32-10 + Box-Muller, added in place (reads and writes x), all threads."""
    x = np.zeros(size, dtype)
    key = counter_rng.seed_to_key(0)
    gaussian_noise.add_gaussian_noise(x, 0.5, key)  # compile outside the timing
    record(benchmark, group=_group("noise", dtype, size), nbytes=x.nbytes)
    benchmark(lambda: gaussian_noise.add_gaussian_noise(x, 0.5, key))


def test_paired_aggkit_noise_vs_numpy(benchmark, dtype, size):
    """aggkit's noise (added in place) against NumPy's normals (written), alternately.

    The goal is ``ratio >= 2``: aggkit at least twice as fast as NumPy's ``standard_normal``.
    """
    out, x = np.empty(size, dtype), np.zeros(size, dtype)
    gen = np.random.default_rng(0)
    key = counter_rng.seed_to_key(0)
    paired(
        benchmark,
        lambda: gen.standard_normal(out=out, dtype=dtype),
        lambda: gaussian_noise.add_gaussian_noise(x, 0.5, key),
        group=_group("noise-paired", dtype, size),
        rounds=40,
        nbytes=x.nbytes,
        reference_name="numpy standard_normal",
    )


def test_probe_numpy_random(benchmark, dtype, size):
    out = np.empty(size, dtype)
    gen = np.random.default_rng(0)
    record(benchmark, group=_group("uniform", dtype, size), nbytes=out.nbytes, probe=True)
    benchmark(lambda: gen.random(out=out, dtype=dtype))


def test_aggkit_fill_uniform01(benchmark, dtype, size):
    out = np.empty(size, dtype)
    counter_rng.fill_uniform01(out, 1)
    record(benchmark, group=_group("uniform", dtype, size), nbytes=out.nbytes)
    benchmark(lambda: counter_rng.fill_uniform01(out, 1))


def test_aggkit_fill_rademacher(benchmark, dtype, size):
    out = np.empty(size, dtype)
    counter_rng.fill_rademacher(out, 1)
    record(benchmark, group=_group("uniform", dtype, size), nbytes=out.nbytes)
    benchmark(lambda: counter_rng.fill_rademacher(out, 1))
