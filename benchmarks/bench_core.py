"""The foundation's kernels and ak.mean against the read-bandwidth probe, in the same run.

Full run (figures for the docs)::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_core.py --benchmark-enable \
        --benchmark-json=.benchmarks/core.json
    python benchmarks/render.py .benchmarks/core.json
"""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from aggkit import kernels
from benchmarks.conftest import MATRIX_SHAPES, paired_round, record, shape_id


@pytest.fixture(params=MATRIX_SHAPES, ids=shape_id)
def shape(request):
    return request.param


def _setup(matrices, shape):
    matrix = matrices(shape)
    weights = np.random.default_rng(1).random(shape[0])
    return matrix, weights


def test_probe_blas_weighted_sum(benchmark, matrices, shape):
    """The probe: one BLAS pass `w @ X` (float32 sgemv) over the client matrix."""
    matrix, weights = _setup(matrices, shape)
    w32 = weights.astype(np.float32)
    record(benchmark, group=f"core|{shape_id(shape)}", nbytes=matrix.nbytes, probe=True)
    benchmark(lambda: w32 @ matrix)


def test_numpy_column_sum(benchmark, matrices, shape):
    """`X.sum(axis=0)` for reference (NumPy's own pairwise reduction)."""
    matrix, _ = _setup(matrices, shape)
    record(benchmark, group=f"core|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark(lambda: matrix.sum(axis=0))


def test_kernel_weighted_row_sum(benchmark, matrices, shape):
    matrix, weights = _setup(matrices, shape)
    acc = np.zeros(shape[1])

    def run():
        acc[:] = 0.0
        kernels.weighted_sum.weighted_row_sum(matrix, weights, acc)

    record(benchmark, group=f"core|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark(run)


def test_twin_weighted_row_sum(benchmark, matrices, shape):
    """The NumPy twin (row by row in float64): what a straightforward implementation costs."""
    matrix, weights = _setup(matrices, shape)
    record(benchmark, group=f"core|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark.pedantic(
        lambda: kernels.weighted_sum.weighted_row_sum_numpy(matrix, weights, np.zeros(shape[1])),
        rounds=3 if shape[0] * shape[1] > 1e8 else 5,
        iterations=1,
    )


@pytest.mark.parametrize("variant", ["l2+linf", "l1+l2+linf", "all+minmax"])
def test_kernel_row_stats(benchmark, matrices, shape, variant):
    matrix, _ = _setup(matrices, shape)
    offsets = np.array([0, 500, shape[1] // 2, shape[1] - 10, shape[1]], dtype=np.int64)
    options = {"with_l1": "l1" in variant, "with_minmax": "minmax" in variant}
    record(benchmark, group=f"core|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark(lambda: kernels.row_stats.row_stats(matrix, offsets, **options))


def test_mean_client_batch(benchmark, matrices, shape):
    """`ak.mean()` with a ClientBatch: the target is >= 0.7x the probe."""
    matrix, weights = _setup(matrices, shape)
    process = ak.mean().create(ak.TensorSpec((shape[1],), np.float32))
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    record(benchmark, group=f"core|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark(lambda: process.next(state, batch, weights))


def test_mean_vs_probe_paired(benchmark, matrices, shape):
    """`ak.mean()` and the probe timed alternately (target: >= 0.7x, under the same load)."""
    matrix, weights = _setup(matrices, shape)
    template = ak.TensorSpec((shape[1],), np.float32)
    paired_round(
        benchmark, ak.mean(), template, matrix, weights, group=f"core-paired|{shape_id(shape)}"
    )
