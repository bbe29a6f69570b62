"""robust_aggregator against the read-bandwidth probe, NumPy and Flower, in the same run.

Full run::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_robust.py --benchmark-enable \
        --benchmark-json=.benchmarks/robust.json
    python benchmarks/render.py .benchmarks/robust.json

Every contender reads the same float32 client matrix: aggkit as a ClientBatch, the others as
per-layer arrays that are views into its rows (the MNIST CNN's layers at n=431,080).
"""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from benchmarks.conftest import MATRIX_SHAPES, paired_round, record, shape_id

CNN_LAYERS = [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]
ZERO_LIMIT, CLIP_LIMIT = 21.0, 1.0  # the first round of robust_aggregator's defaults


def layer_shapes(n: int) -> list[tuple[int, ...]]:
    if n == sum(int(np.prod(s)) for s in CNN_LAYERS):
        return CNN_LAYERS
    return [(n - 1000,), (1000,)]


@pytest.fixture(params=MATRIX_SHAPES, ids=shape_id)
def case(request, matrices):
    shape = request.param
    # Small updates (std 0.01) so that some clients are clipped and one is zeroed.
    matrix = matrices(shape) * np.float32(0.01 / np.sqrt(shape[1] / 1e4))
    matrix[1] *= 1e5  # L-inf far above the first zeroing norm (21) at every size
    weights = np.random.default_rng(1).integers(50, 600, shape[0]).astype(np.float64)
    shapes = layer_shapes(shape[1])
    template = [ak.TensorSpec(s, np.float32) for s in shapes]
    bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    clients = [
        [row[bounds[i] : bounds[i + 1]].reshape(s) for i, s in enumerate(shapes)] for row in matrix
    ]
    return shape, matrix, weights, template, clients


def test_probe_blas_weighted_sum(benchmark, case):
    shape, matrix, weights, _, _ = case
    w32 = weights.astype(np.float32)
    record(benchmark, group=f"robust|{shape_id(shape)}", nbytes=matrix.nbytes, probe=True)
    benchmark(lambda: w32 @ matrix)


def test_aggkit_robust_aggregator(benchmark, case):
    shape, matrix, weights, template, _ = case
    process = ak.robust_aggregator().create(template)
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    out = process.next(state, batch, weights)
    assert out.measurements["zeroed_count"] == 1
    record(benchmark, group=f"robust|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark(lambda: process.next(state, batch, weights))


def numpy_straightforward(clients, weights):
    """What a NumPy user writes: per client, zero or clip (new arrays), then a weighted mean."""
    processed = []
    for layers in clients:
        linf = max(float(np.abs(layer).max()) for layer in layers)
        if not np.isfinite(linf) or linf > ZERO_LIMIT:
            layers = [np.zeros_like(layer) for layer in layers]
        norm = np.sqrt(sum(float(np.vdot(layer, layer)) for layer in layers))
        if norm > CLIP_LIMIT:
            layers = [layer * np.float32(CLIP_LIMIT / norm) for layer in layers]
        processed.append(layers)
    total = weights.sum()
    return [
        sum(w * c[i] for w, c in zip(weights, processed, strict=True)) / total
        for i in range(len(processed[0]))
    ]


def test_numpy_straightforward(benchmark, case):
    shape, matrix, weights, _, clients = case
    record(benchmark, group=f"robust|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark.pedantic(lambda: numpy_straightforward(clients, weights), rounds=3, iterations=1)


def numpy_vectorized(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Zeroing, clipping and the weighted mean with whole-matrix NumPy calls (norms, then one
    BLAS pass)."""
    linf = np.abs(matrix).max(axis=1)
    keep = np.isfinite(linf) & (linf <= ZERO_LIMIT)
    norms = np.where(keep, np.linalg.norm(matrix, axis=1).astype(np.float64), 0.0)
    scale = np.where(norms > CLIP_LIMIT, CLIP_LIMIT / np.maximum(norms, 1e-300), 1.0)
    coef = (weights * keep * scale).astype(np.float32)
    return (coef @ matrix) / weights.sum()


def test_numpy_vectorized(benchmark, case):
    """The same steps written with whole-matrix NumPy calls (norms, then one BLAS pass)."""
    shape, matrix, weights, _, _ = case
    record(benchmark, group=f"robust|{shape_id(shape)}", nbytes=matrix.nbytes)
    benchmark(lambda: numpy_vectorized(matrix, weights))


def test_flower_aggregate(benchmark, case):
    """Flower's weighted `aggregate` (a plain weighted mean: no zeroing or clipping)."""
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate").aggregate
    shape, matrix, weights, _, clients = case
    results = [(layers, int(w)) for layers, w in zip(clients, weights, strict=True)]
    record(benchmark, group=f"robust|{shape_id(shape)}", nbytes=matrix.nbytes)
    # As many rounds as fit in a few seconds: a minimum over 3 noisy rounds flatters aggkit.
    rounds = 10 if shape[0] * shape[1] < 1e8 else 5
    benchmark.pedantic(lambda: aggregate(results), rounds=rounds, warmup_rounds=1, iterations=1)


def test_robust_vs_probe_paired(benchmark, case):
    """robust_aggregator and the probe timed alternately (target: >= 0.4x)."""
    shape, matrix, weights, template, _ = case
    group = f"robust-paired|{shape_id(shape)}"
    paired_round(benchmark, ak.robust_aggregator(), template, matrix, weights, group=group)


def test_robust_vs_flower_paired(benchmark, case):
    """robust_aggregator and Flower's `aggregate` timed alternately (target: >= 5x)."""
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate").aggregate
    shape, matrix, weights, template, clients = case
    results = [(layers, int(w)) for layers, w in zip(clients, weights, strict=True)]
    paired_round(
        benchmark,
        ak.robust_aggregator(),
        template,
        matrix,
        weights,
        group=f"robust-paired|{shape_id(shape)}",
        reference=lambda: aggregate(results),
        reference_name="flower aggregate",
    )
