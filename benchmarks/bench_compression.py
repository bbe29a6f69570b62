"""Quantize-and-aggregate against the read-bandwidth probe and NumPy quantizers, in the same run.

Group ``compression|K=...``: the probe (BLAS ``w @ X``), the fused kernel alone, a whole
``ak.mean(ak.quantized_sum())`` round (statistics pass + fused kernel, random numbers included;
the target is >= 0.2x the probe), the same round behind a Hadamard rotation, one client's
payload encoding, and two NumPy implementations of the same quantizer: the kernel's bit-exact
twin (SplitMix64 in NumPy) and the straightforward one with NumPy's own generator.

Full run::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_compression.py --benchmark-enable \
        --benchmark-json=.benchmarks/compression.json
    python benchmarks/render.py .benchmarks/compression.json
"""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from aggkit import kernels
from aggkit.compression import quantized_sum
from aggkit.hadamard import hadamard
from benchmarks.conftest import MATRIX_SHAPES, paired_round, record, shape_id

BITS = 8


@pytest.fixture(params=MATRIX_SHAPES, ids=shape_id)
def shape(request):
    return request.param


def _group(shape) -> str:
    return f"compression|{shape_id(shape)}"


def _setup(matrices, shape):
    matrix = matrices(shape)
    weights = np.random.default_rng(1).random(shape[0])
    return matrix, weights


def _ranges(matrix, weights):
    """The per-client range of ``w * x`` (one tensor), its scale and step (float64 [K, 1])."""
    lo = (weights * matrix.min(axis=1))[:, None].astype(np.float64)
    hi = (weights * matrix.max(axis=1))[:, None].astype(np.float64)
    top = 2.0**BITS - 1
    return lo, top / (hi - lo), (hi - lo) / top


def _rounds(shape) -> int:
    return 1 if shape[0] * shape[1] > 1e8 else 3


def test_probe_blas_weighted_sum(benchmark, matrices, shape):
    """The probe: one BLAS pass `w @ X` (float32 sgemv) over the client matrix."""
    matrix, weights = _setup(matrices, shape)
    w32 = weights.astype(np.float32)
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes, probe=True)
    benchmark(lambda: w32 @ matrix)


def test_kernel_quantized_row_sum(benchmark, matrices, shape):
    """The fused encode/decode/sum kernel alone (ranges given)."""
    matrix, weights = _setup(matrices, shape)
    lo, scale, step = _ranges(matrix, weights)
    offsets = np.array([0, shape[1]])
    quantize = np.array([True])
    tasks = kernels.quantize.stream_tasks(offsets)
    acc = np.zeros(shape[1])

    def run():
        acc[:] = 0.0
        kernels.quantize.quantized_row_sum(
            matrix, weights, offsets, quantize, lo, scale, step, BITS, 7, 0, acc, tasks=tasks
        )

    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark(run)


def test_mean_quantized_sum_round(benchmark, matrices, shape):
    """A whole `ak.mean(ak.quantized_sum())` round on a ClientBatch: the goal is >= 0.2x."""
    matrix, weights = _setup(matrices, shape)
    process = ak.mean(quantized_sum(BITS, threshold=0, seed=0)).create(
        ak.TensorSpec((shape[1],), np.float32)
    )
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    out = process.next(state, batch, weights)
    ratio = out.measurements["mean_value"]["compression_ratio"]
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes, compression_ratio=ratio)
    benchmark(lambda: process.next(state, batch, weights))


def test_compression_aggregator_round(benchmark, matrices, shape):
    """The preset `ak.compression_aggregator()` (zeroing, adaptive clipping, then the quantized
    mean above): the target is >= 0.2x the probe."""
    matrix, weights = _setup(matrices, shape)
    process = ak.compression_aggregator().create(ak.TensorSpec((shape[1],), np.float32))
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    process.next(state, batch, weights)
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark(lambda: process.next(state, batch, weights))


def test_compression_aggregator_vs_probe_paired(benchmark, matrices, shape):
    """`ak.compression_aggregator()` and the probe timed alternately (target: >= 0.2x)."""
    matrix, weights = _setup(matrices, shape)
    template = ak.TensorSpec((shape[1],), np.float32)
    group = f"compression-paired|{shape_id(shape)}"
    paired_round(benchmark, ak.compression_aggregator(), template, matrix, weights, group=group)


def test_mean_hadamard_quantized_sum_round(benchmark, matrices, shape):
    """`ak.mean(ak.hadamard(ak.quantized_sum()))`: rotation of every client row, then the same."""
    matrix, weights = _setup(matrices, shape)
    process = ak.mean(hadamard(quantized_sum(BITS, threshold=0, seed=0), seed=1)).create(
        ak.TensorSpec((shape[1],), np.float32)
    )
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    process.next(state, batch, weights)
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark.pedantic(
        lambda: process.next(state, batch, weights), rounds=_rounds(shape), iterations=1
    )


def test_client_payload_one_client(benchmark, matrices, shape):
    """One client's upload: levels, bit-packing and bytes (bytes = that client's row)."""
    matrix, weights = _setup(matrices, shape)
    process = quantized_sum(BITS, threshold=0, seed=0).create(
        ak.TensorSpec((shape[1],), np.float32)
    )
    state = process.initialize()
    row = matrix[0]
    record(benchmark, group=_group(shape), nbytes=row.nbytes)
    benchmark(lambda: process.client_payload(state, row, coef=float(weights[0])))


def _numpy_generator_round(matrix, weights, rng):
    """The same quantizer written plainly in NumPy, with NumPy's generator for the rounding."""
    top = 2.0**BITS - 1
    acc = np.zeros(matrix.shape[1])
    for i in np.flatnonzero(weights):
        v = weights[i] * matrix[i].astype(np.float64)
        lo, hi = v.min(), v.max()
        scale = top / (hi - lo) if hi > lo else 0.0
        q = np.minimum(np.floor((v - lo) * scale + rng.random(v.size)), top)
        acc += lo + q * ((hi - lo) / top)
    return acc / weights.sum()


def test_numpy_generator_quantizer(benchmark, matrices, shape):
    matrix, weights = _setup(matrices, shape)
    rng = np.random.default_rng(0)
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark.pedantic(
        lambda: _numpy_generator_round(matrix, weights, rng), rounds=_rounds(shape), iterations=1
    )


def test_numpy_twin_quantizer(benchmark, matrices, shape):
    """The kernel's bit-exact NumPy twin (SplitMix64 in NumPy): skipped above 5e7 elements."""
    if shape[0] * shape[1] > 5e7:
        pytest.skip("the twin takes minutes on this shape")
    matrix, weights = _setup(matrices, shape)
    lo, scale, step = _ranges(matrix, weights)
    offsets = np.array([0, shape[1]])
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark.pedantic(
        lambda: kernels.quantize.quantized_row_sum_numpy(
            matrix,
            weights,
            offsets,
            np.array([True]),
            lo,
            scale,
            step,
            BITS,
            7,
            0,
            np.zeros(shape[1]),
        ),
        rounds=1,
        iterations=1,
    )
