"""Gaussian DP rounds against the read-bandwidth probe and NumPy, in the same run.

Full run::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_dp.py --benchmark-enable \
        --benchmark-json=.benchmarks/dp.json
    python benchmarks/render.py .benchmarks/dp.json

A DP round reads the client matrix twice (the statistics pass and the clipped sum) and then adds
noise to the length-n sum: one Gaussian per coordinate (benchmarked alone in ``bench_noise.py``).
``bytes`` is the client matrix, so GB/s and the fraction of the probe compare with ``w @ X``.
"""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from aggkit.dp import adaptive_clip_noise_params
from benchmarks.conftest import MATRIX_SHAPES, paired, paired_rounds, record, shape_id

CLIP = 0.1  # gaussian_adaptive's first clip


def _noise_multiplier(clients: int) -> float:
    """1.0, or less for the smoke run's few clients (it must stay below 0.1 * clients)."""
    return min(1.0, 0.05 * clients)


@pytest.fixture(params=MATRIX_SHAPES, ids=shape_id)
def case(request, matrices):
    shape = request.param
    # Update norms around the first clip (about half clipped), and one client to be zeroed.
    matrix = matrices(shape) * np.float32(CLIP / np.sqrt(shape[1]))
    matrix[1] *= 1e6
    return shape, matrix


def _group(shape) -> str:
    return f"dp|{shape_id(shape)}"


def test_probe_blas_weighted_sum(benchmark, case):
    shape, matrix = case
    w32 = np.random.default_rng(1).random(shape[0]).astype(np.float32)
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes, probe=True)
    benchmark(lambda: w32 @ matrix)


def _process_round(benchmark, factory, shape, matrix):
    process = factory.create(ak.TensorSpec((shape[1],), np.float32))
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    out = process.next(state, batch)  # compile and warm up
    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark(lambda: process.next(state, batch))
    return out


def test_aggkit_dp_aggregator(benchmark, case):
    """``ak.dp_aggregator``: zeroing (L-inf), adaptive clip, sum, noise, clip update."""
    shape, matrix = case
    factory = ak.dp_aggregator(_noise_multiplier(shape[0]), shape[0], seed=0)
    out = _process_round(benchmark, factory, shape, matrix)
    assert out.measurements["zeroed_count"] == 1


def test_aggkit_dp_aggregator_with_accounting(benchmark, case):
    """The same with the running epsilon (population 100x the clients; cached RDP)."""
    shape, matrix = case
    clients = shape[0]
    factory = ak.dp_aggregator(
        _noise_multiplier(clients), clients, population=100 * clients, seed=0
    )
    out = _process_round(benchmark, factory, shape, matrix)
    assert out.measurements["zeroing"]["privacy"]["epsilon"] > 0


def test_aggkit_gaussian_fixed(benchmark, case):
    shape, matrix = case
    factory = ak.gaussian_fixed(_noise_multiplier(shape[0]), shape[0], CLIP, seed=0)
    _process_round(benchmark, factory, shape, matrix)


def test_numpy_vectorized(benchmark, case):
    """The same steps as dp_aggregator's first round in whole-matrix NumPy calls (zero, clip,
    one BLAS pass, NumPy Generator noise), without the threshold updates."""
    shape, matrix = case
    rng = np.random.default_rng(0)
    clients = shape[0]
    sigma = adaptive_clip_noise_params(_noise_multiplier(clients), clients)[0] * CLIP

    def run():
        linf = np.abs(matrix).max(axis=1)
        keep = np.isfinite(linf) & (linf <= 21.0)
        norms = np.where(keep, np.linalg.norm(matrix, axis=1).astype(np.float64), 0.0)
        scale = np.where(norms > CLIP, CLIP / np.maximum(norms, 1e-300), 1.0)
        total = (keep * scale).astype(np.float32) @ matrix
        noise = rng.standard_normal(shape[1]) * sigma
        return (total + noise) / clients

    record(benchmark, group=_group(shape), nbytes=matrix.nbytes)
    benchmark(run)


@pytest.mark.parametrize("efficient", [True, False], ids=["efficient", "plain"])
def test_paired_tree_aggregation_vs_gaussian_fixed(benchmark, case, efficient):
    """``ak.tree_aggregation`` rounds against ``ak.gaussian_fixed`` rounds, alternately.

    The tree's state advances every call, so the timing averages over the rounds that close
    tree nodes (the efficient tree draws about two noise vectors per round, one per node).
    Goal: ``ratio >= 1 / 1.2`` (the tree within 1.2x of gaussian_fixed).
    """
    shape, matrix = case
    template = ak.TensorSpec((shape[1],), np.float32)
    z = _noise_multiplier(shape[0])
    fixed = ak.gaussian_fixed(z, shape[0], CLIP, seed=0).create(template)
    tree = ak.tree_aggregation(z, shape[0], CLIP, efficient=efficient, seed=0).create(template)
    batch = ak.ClientBatch(matrix, fixed.layout)
    fixed_state = fixed.initialize()
    tree_state = [tree.initialize()]

    def tree_round():
        tree_state[0] = tree.next(tree_state[0], batch).state

    paired(
        benchmark,
        lambda: fixed.next(fixed_state, batch),
        tree_round,
        group=f"dp-tree|{shape_id(shape)}",
        rounds=paired_rounds(shape),
        nbytes=matrix.nbytes,
        reference_name="gaussian_fixed",
    )


@pytest.mark.parametrize("mechanism", ["distributed_skellam", "distributed_dgauss"])
def test_paired_distributed_dp_vs_probe(benchmark, case, mechanism):
    """``ak.distributed_dp`` rounds (every client rotates, rounds and samples its own noise share)
    against the probe, alternately. Goal: ``ratio >= 0.15``. Few rounds: a round is slow."""
    shape, matrix = case
    factory = ak.distributed_dp(
        _noise_multiplier(shape[0]), shape[0], bits=20, clip=CLIP, mechanism=mechanism, seed=0
    )
    process = factory.create(ak.TensorSpec((shape[1],), np.float32))
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    w32 = np.ones(shape[0], np.float32)
    paired(
        benchmark,
        lambda: w32 @ matrix,
        lambda: process.next(state, batch),
        group=f"dp-distributed|{shape_id(shape)}",
        rounds=3,
        nbytes=matrix.nbytes,
    )
