"""Secure summation: the secure mean against the read-bandwidth probe and NumPy, in the same run.

Group ``secure|K=...``: the secure weighted mean ``ak.mean(value_sum=ak.secure_sum(bound),
weight_sum=ak.secure_sum(2**20 - 1, 0.0))`` on a ``ClientBatch`` (every client's weighted value
clipped, discretized to 32 bits and summed exactly; weights the same on a [K, 1] matrix), with a
constant bound and with a bound from an estimation process (which adds the statistics pass for
each client's max |x|); the whole ``ak.secure_aggregator()`` preset (zeroing and clipping on top,
every estimate through secure sums); the discretize kernel alone; and a NumPy implementation of
the secure mean's steps (row by row, memory O(n), as a straightforward implementation would do).

Full figures::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_secure.py --benchmark-enable \
        --benchmark-json=.benchmarks/secure.json
    python benchmarks/render.py .benchmarks/secure.json
"""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from aggkit import kernels
from aggkit.secure.secure_sum import MAX_CODE, FloatCode, secure_sum
from benchmarks.conftest import MATRIX_SHAPES, record, shape_id

BOUND = 10.0
WEIGHT_BOUND = float(2**20 - 1)


@pytest.fixture(params=MATRIX_SHAPES, ids=shape_id)
def shape(request):
    return request.param


def _setup(matrices, shape):
    matrix = matrices(shape)
    weights = np.random.default_rng(1).random(shape[0])
    return matrix, weights


def _group(shape) -> str:
    return f"secure|{shape_id(shape)}"


def test_probe_blas_weighted_sum(benchmark, matrices, shape):
    """The probe: one BLAS pass `w @ X` (float32 sgemv) over the client matrix."""
    matrix, weights = _setup(matrices, shape)
    w32 = weights.astype(np.float32)
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes, probe=True)
    benchmark(lambda: w32 @ matrix)


@pytest.mark.parametrize("bound", ["constant", "estimated"])
def test_secure_mean(benchmark, matrices, shape, bound):
    """The secure weighted mean (secure value sum + secure weight sum) on a ClientBatch."""
    matrix, weights = _setup(matrices, shape)
    value_bound = BOUND if bound == "constant" else ak.ConstantEstimate(BOUND)
    factory = ak.mean(value_sum=secure_sum(value_bound), weight_sum=secure_sum(WEIGHT_BOUND, 0.0))
    process = factory.create(ak.TensorSpec((shape[1],), np.float32))
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    out = benchmark(lambda: process.next(state, batch, weights))
    assert out.result.shape == (shape[1],)


def test_secure_aggregator(benchmark, matrices, shape):
    """The ``ak.secure_aggregator()`` preset (zeroing, clipping, secure mean, secure estimates)."""
    matrix, weights = _setup(matrices, shape)
    process = ak.secure_aggregator().create(ak.TensorSpec((shape[1],), np.float32))
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    out = benchmark(lambda: process.next(state, batch, weights))
    assert out.result.shape == (shape[1],)


def test_kernel_discretize_sum(benchmark, matrices, shape):
    """The discretize kernel alone (clip, discretize, sum, clip counts) with the weights."""
    matrix, weights = _setup(matrices, shape)
    code = FloatCode.of(-BOUND, BOUND, np.float32)
    out = np.zeros(shape[1], np.int64)

    def run():
        out[:] = 0
        kernels.discretize.discretize_sum(
            matrix, weights, code.lo, code.hi, code.scale, code.shift, out
        )

    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark(run)


def numpy_secure_mean(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The same steps in NumPy: per client, weight, clip, discretize, add; then decode."""
    values = FloatCode.of(-BOUND, BOUND, np.float32)
    total = np.zeros(matrix.shape[1], np.int64)
    above = below = 0
    for w, row in zip(weights, matrix, strict=True):
        v = w * row.astype(np.float64)
        above += bool((v > values.hi).any())
        below += bool((v < values.lo).any())
        codes = np.rint(np.clip(v, values.lo, values.hi) * values.scale) - values.shift
        total += np.minimum(codes, MAX_CODE).astype(np.int64)
    weight_code = FloatCode.of(0.0, WEIGHT_BOUND, np.float64)
    weight_total = weight_code.encode(weights).sum()
    n = len(weights)
    return values.decode(total, n) / weight_code.decode(np.array([weight_total]), n)[0]


def test_numpy_secure_mean(benchmark, matrices, shape):
    """The NumPy implementation of the same steps (for the ratio against it)."""
    matrix, weights = _setup(matrices, shape)
    process = ak.mean(value_sum=secure_sum(BOUND), weight_sum=secure_sum(WEIGHT_BOUND, 0.0)).create(
        ak.TensorSpec((shape[1],), np.float32)
    )
    expected = process.next(process.initialize(), ak.ClientBatch(matrix, process.layout), weights)
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    result = benchmark.pedantic(
        lambda: numpy_secure_mean(matrix, weights),
        rounds=3 if shape[0] * shape[1] > 1e8 else 5,
        iterations=1,
    )
    np.testing.assert_array_equal(result.astype(np.float32), expected.result)
