"""The Byzantine-robust rules against Flower's functions for the same rules and against the
read-bandwidth probe (BLAS ``w @ X`` over the same matrix), timed alternately in the same run.

Full run::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_byzantine.py --benchmark-enable \
        --benchmark-json=.benchmarks/byzantine.json
    python benchmarks/render.py .benchmarks/byzantine.json

Every contender reads the same float32 client matrix: aggkit as a ClientBatch, Flower as per-layer
arrays that are views into its rows (Flower's functions stack them themselves). Flower's Bulyan runs
``K - 2f`` Krum selections, each computing all pairwise distances again, so at the full shapes it
is left out here (minutes a call); ``benchmarks/bulyan_flower.py`` times it on its own.

The rules' ratios: ``ratio`` is the median over rounds of (reference time / aggkit time). For the
geometric median and centered clipping the probe pairing gives ``probe passes per iteration``:
aggkit's time over the probe's, divided by the iterations (the initial weighted mean and distances
count as one; the tolerance is 0 so every iteration runs).
"""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from benchmarks.conftest import FULL, MATRIX_SHAPES, paired, paired_rounds, record, shape_id

flower = pytest.importorskip("flwr.server.strategy.aggregate")

#: Flower's functions are slow (seconds to minutes a call at the full shapes): fewer rounds.
FLOWER_ROUNDS = 5
GM_ITERATIONS = 3


@pytest.fixture(params=MATRIX_SHAPES, ids=shape_id)
def case(request, matrices):
    shape = request.param
    matrix = matrices(shape) * np.float32(0.01)
    k = shape[0]
    f = max(1, k // 10)
    weights = np.random.default_rng(1).integers(50, 600, k).astype(np.float64)
    template = [ak.TensorSpec((shape[1] - 1000,), np.float32), ak.TensorSpec((1000,), np.float32)]
    split = shape[1] - 1000
    results = [([row[:split], row[split:]], int(w)) for row, w in zip(matrix, weights, strict=True)]
    return shape, matrix, weights, template, results, f


def _rules(k: int, f: int) -> dict:
    """``name -> (factory, Flower call)``; None where Flower has no such rule."""
    return {
        "median": (ak.median(), lambda r: flower.aggregate_median(r)),
        "trimmed_mean": (ak.trimmed_mean(0.1), lambda r: flower.aggregate_trimmed_avg(r, 0.1)),
        "krum": (ak.krum(f), lambda r: flower.aggregate_krum(r, f, 0)),
        "multi_krum": (ak.krum(f, k - f), lambda r: flower.aggregate_krum(r, f, k - f)),
        "bulyan": (
            ak.bulyan(f),
            None
            if FULL
            else lambda r: flower.aggregate_bulyan(list(r), f, flower.aggregate_krum, to_keep=0),
        ),
        "geometric_median": (ak.geometric_median(GM_ITERATIONS, tolerance=0.0), None),
        "centered_clipping": (ak.centered_clipping(1.0), None),
    }


RULE_NAMES = list(_rules(10, 1))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_rule_vs_probe_paired(benchmark, case, rule):
    shape, matrix, weights, template, _, f = case
    factory, _ = _rules(shape[0], f)[rule]
    process = factory.create(template)
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    given = weights if process.is_weighted else None
    w32 = weights.astype(np.float32)
    paired(
        benchmark,
        lambda: w32 @ matrix,
        lambda: process.next(state, batch, given),
        group=f"byzantine-probe|{shape_id(shape)}",
        rounds=paired_rounds(shape),
        nbytes=matrix.nbytes,
    )
    benchmark.extra_info["rule"] = rule
    if rule == "geometric_median":
        benchmark.extra_info["probe_passes_per_iteration"] = (
            1.0 / benchmark.extra_info["ratio"] / (GM_ITERATIONS + 1)
        )
    if rule == "centered_clipping":
        benchmark.extra_info["probe_passes_per_iteration"] = 1.0 / benchmark.extra_info["ratio"]


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum", "multi_krum", "bulyan"])
def test_rule_vs_flower_paired(benchmark, case, rule):
    shape, matrix, weights, template, results, f = case
    factory, call = _rules(shape[0], f)[rule]
    if call is None:
        pytest.skip("Flower's Bulyan takes minutes a call at this shape (see the docstring)")
    process = factory.create(template)
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    # Same answer first (Flower's float32 sums aside).
    ours = process.next(state, batch, weights if process.is_weighted else None).result
    theirs = call(results)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    paired(
        benchmark,
        lambda: call(results),
        lambda: process.next(state, batch, weights if process.is_weighted else None),
        group=f"byzantine-flower|{shape_id(shape)}",
        rounds=FLOWER_ROUNDS,
        nbytes=matrix.nbytes,
        reference_name=f"flower {rule}",
    )
    benchmark.extra_info["rule"] = rule


def test_probe_blas_weighted_sum(benchmark, case):
    shape, matrix, weights, _, _, _ = case
    w32 = weights.astype(np.float32)
    record(benchmark, group=f"byzantine|{shape_id(shape)}", nbytes=matrix.nbytes, probe=True)
    benchmark(lambda: w32 @ matrix)
