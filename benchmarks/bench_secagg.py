"""The secure aggregation protocol: masking speed, full rounds with dropouts, SecAgg vs SecAgg+.

Three groups:

* ``secagg-mask``: a client's masking work (its self mask and one pairwise mask per neighbour,
  AES-256-CTR keystream added mod R into the vector) against the probe, the raw AES-256-CTR
  keystream for the same number of bytes, measured in the same run. Goal: >= 0.70x the probe.
  ``client masked_input stage`` is the whole stage for one client (share decryption, X25519 per
  neighbour, HKDF, masking).
* ``secagg-round``: a whole simulated round (all clients and the server, every message through
  bytes) for K=100 clients of 431,080 values mod 2**32, with 0 %, 10 % and 30 % of the clients
  dropping before they send their masked input (the case that makes the server reconstruct keys
  and regenerate pairwise masks). ``extra_info`` keeps the per-stage costs.
* ``secagg-scaling``: rounds with small vectors (1,000 values) as K grows, complete graph
  (SecAgg) against a Harary graph with 2 * ceil(log2 K) neighbours (SecAgg+).
* ``secagg-aggregator``: one ``ak.secure_aggregator()`` round (weighted, zeroing and clipping with
  secure estimation: 14 secure channel sums) through :class:`~aggkit.secure.backend.MaskingBackend`
  (SecAgg+, one protocol run per sum; 0 % and 10 % of the clients dropping before their masked
  input) against the default in-process backend, the group's probe. K=20 x 10,000 and K=100 x
  431,080 in full mode. ``extra_info`` keeps the protocol's share of the time and the bytes.

Smoke mode (default) runs small sizes once. Full figures::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_secagg.py --benchmark-enable \
        --benchmark-json=.benchmarks/secagg.json
    python benchmarks/render.py .benchmarks/secagg.json
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

pytest.importorskip("cryptography")

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import aggkit as ak
from aggkit.secure.backend import MaskingBackend
from aggkit.secure.crypto import CHUNK_BYTES, MaskGenerator
from aggkit.secure.graph import default_degree
from aggkit.secure.simulation import simulate_round
from benchmarks.conftest import FULL, paired, record, shape_id
from tests.secure.protocol_helpers import up_to_masked_input

MODULUS = 2**32
MNIST_VALUES = 431_080

#: (values per client, masks per client): SecAgg+ at K=100 (14 neighbours + self mask) and the
#: complete graph at K=100 (99 + 1).
MASK_CASES = [(MNIST_VALUES, 15), (MNIST_VALUES, 100)] if FULL else [(10_007, 3)]
ROUND_K, ROUND_M = (100, MNIST_VALUES) if FULL else (8, 1_001)
SCALING_K = [10, 30, 100, 300, 1000] if FULL else [10, 20]
SCALING_M = 1_000
AGGREGATOR_SHAPES = [(20, 10_000), (100, MNIST_VALUES)] if FULL else [(6, 1_001)]


def _seeds(count: int) -> list[bytes]:
    rng = np.random.default_rng(count)
    return [rng.bytes(32) for _ in range(count)]


def _keystream_run(seeds, nbytes, chunk):
    zeros = memoryview(bytes(chunk))
    out = bytearray(chunk + 16)

    def run():
        for seed in seeds:
            stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
            for start in range(0, nbytes, chunk):
                stream.update_into(zeros[: min(chunk, nbytes - start)], out)

    return run


@pytest.mark.parametrize(("m", "masks"), MASK_CASES, ids=lambda v: f"{v:,}")
def test_probe_raw_keystream(benchmark, m, masks):
    """The probe: AES-256-CTR keystream for the same bytes in 128 KiB calls, no arithmetic."""
    record(benchmark, group=f"secagg-mask|m={m:,},masks={masks}", nbytes=4 * m * masks, probe=True)
    benchmark(_keystream_run(_seeds(masks), 4 * m, CHUNK_BYTES))


@pytest.mark.parametrize(("m", "masks"), MASK_CASES, ids=lambda v: f"{v:,}")
def test_raw_keystream_one_call_per_mask(benchmark, m, masks):
    """The same keystream in one call per mask (the output no longer fits L2: slower here)."""
    record(benchmark, group=f"secagg-mask|m={m:,},masks={masks}", nbytes=4 * m * masks)
    benchmark(_keystream_run(_seeds(masks), 4 * m, 4 * m))


@pytest.mark.parametrize(("m", "masks"), MASK_CASES, ids=lambda v: f"{v:,}")
def test_client_masking(benchmark, m, masks):
    """Self mask plus pairwise masks (half added, half subtracted) into one uint32 vector."""
    seeds = _seeds(masks)
    generator = MaskGenerator(MODULUS)
    acc = np.random.default_rng(0).integers(0, MODULUS, m, dtype=np.uint32)
    generator.apply(acc[:10], seeds[0])  # compile the kernel outside the timing

    pairs = [(seed, i % 2 == 1) for i, seed in enumerate(seeds)]

    def run():
        generator.apply_many(acc, pairs)

    record(benchmark, group=f"secagg-mask|m={m:,},masks={masks}", nbytes=4 * m * masks)
    benchmark(run)


@pytest.mark.parametrize(("m", "masks"), MASK_CASES, ids=lambda v: f"{v:,}")
def test_masking_vs_keystream_paired(benchmark, m, masks):
    """Probe and masking alternately, round after round: their ratio survives changing load.

    Other jobs may share the cores, so a probe timed a minute before the masking can see a
    different machine. ``extra_info["ratio"]`` is the median over rounds of probe time /
    masking time within the round (adjacent in time, so under the same load); ``best_ratio``
    divides the best times (target: >= 0.70). See ``benchmarks.conftest.paired``.
    """
    seeds = _seeds(masks)
    generator = MaskGenerator(MODULUS)
    acc = np.random.default_rng(0).integers(0, MODULUS, m, dtype=np.uint32)
    pairs = [(seed, i % 2 == 1) for i, seed in enumerate(seeds)]
    paired(
        benchmark,
        _keystream_run(seeds, 4 * m, CHUNK_BYTES),
        lambda: generator.apply_many(acc, pairs),
        group=f"secagg-mask-paired|m={m:,},masks={masks}",
        nbytes=4 * m * masks,
        rounds=40,
        reference_name="raw AES-CTR keystream",
    )


@pytest.mark.parametrize(("m", "masks"), MASK_CASES, ids=lambda v: f"{v:,}")
def test_client_masked_input_stage(benchmark, m, masks):
    """One client's whole masked_input stage, with ``masks - 1`` neighbours (complete graph)."""
    n = masks  # the client and masks - 1 neighbours
    _, clients, requests = up_to_masked_input(
        n, modulus=MODULUS, vector_length=m, threshold=n // 2 + 1
    )
    x = np.random.default_rng(1).integers(0, MODULUS, m, dtype=np.uint32)
    client, request = clients[0], requests[0]
    state = dict(client.__dict__)

    def run():
        client.__dict__.update(state)  # replay the same request on the same client state
        client.handle(request, x)

    record(benchmark, group=f"secagg-mask|m={m:,},masks={masks}", nbytes=4 * m * masks)
    benchmark.pedantic(run, rounds=5 if FULL else 1, iterations=1)


def _round(benchmark, *, k, m, graph, dropout, rounds, threshold=None):
    x = np.random.default_rng(k).integers(0, MODULUS, (k, m), dtype=np.uint32)
    dropouts = {"masked_input": dropout} if dropout else None
    last = {}

    def run():
        last["out"] = simulate_round(
            x, modulus=MODULUS, graph=graph, dropouts=dropouts, threshold=threshold, seed=0
        )

    benchmark.pedantic(run, rounds=rounds, iterations=1)
    out = last["out"]
    expected = x[list(out.included)].astype(np.uint64).sum(axis=0) % MODULUS
    assert np.array_equal(out.sum, expected)
    degree = len(next(iter(out.graph.values())))
    benchmark.extra_info.update(
        included=len(out.included),
        degree=degree,
        threshold=out.threshold,
        costs={s: dataclasses.asdict(c) for s, c in out.costs.items()},
        client_mb_sent=sum(c.bytes_to_server for c in out.costs.values()) / k / 1e6,
    )


@pytest.mark.parametrize("graph", ["secagg+", "secagg"])
@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3], ids=lambda d: f"drop={d:.0%}")
def test_full_round(benchmark, graph, dropout):
    """K clients x m values mod 2**32: every client, the server, every message through bytes.

    Thresholds: a majority of the holders for SecAgg (51 of 100); a third for SecAgg+ (5 of the
    15 holders at K=100), because with the default 14 neighbours a majority threshold does not
    survive 30 % dropouts: some client keeps fewer than 8 live holders and the round aborts.
    """
    record(
        benchmark,
        group=f"secagg-round|K={ROUND_K},m={ROUND_M:,}",
        nbytes=4 * ROUND_K * ROUND_M,
        graph=graph,
        dropout=dropout,
    )
    _round(
        benchmark,
        k=ROUND_K,
        m=ROUND_M,
        graph=graph,
        dropout=dropout,
        rounds=2 if FULL else 1,
        threshold=1 / 3 if graph == "secagg+" else None,
    )


@pytest.mark.parametrize("graph", ["secagg+", "secagg"])
@pytest.mark.parametrize("k", SCALING_K, ids=lambda k: f"K={k}")
def test_scaling(benchmark, graph, k):
    """Small vectors, growing K: SecAgg's O(K^2) key agreements and shares vs SecAgg+'s."""
    record(
        benchmark,
        group=f"secagg-scaling|m={SCALING_M:,}",
        items=k,
        graph=graph,
        k=k,
        default_degree=default_degree(k),
    )
    _round(benchmark, k=k, m=SCALING_M, graph=graph, dropout=0.1, rounds=1)


def _aggregator_case(shape):
    k, m = shape
    rng = np.random.default_rng(k + m)
    values = rng.normal(0.0, 0.01, (k, m)).astype(np.float32)
    weights = rng.uniform(1.0, 10.0, k)
    process = ak.secure_aggregator().create(ak.TensorSpec((m,), np.float32))
    return process, process.initialize(), values, weights


def _aggregator_rounds(k: int) -> int:
    return (5 if k <= 20 else 2) if FULL else 1


@pytest.mark.parametrize("shape", AGGREGATOR_SHAPES, ids=shape_id)
def test_aggregator_round_in_process(benchmark, shape):
    """The probe: the same round with the default backend (fused encode-and-sum kernels)."""
    process, state, values, weights = _aggregator_case(shape)
    process.next(state, values[:2], weights[:2])  # compile the kernels outside the timing
    record(benchmark, group=f"secagg-aggregator|{shape_id(shape)}", items=shape[0], probe=True)
    benchmark.pedantic(
        lambda: process.next(state, values, weights),
        rounds=10 if FULL else 1,
        iterations=1,
    )


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=lambda d: f"drop={d:.0%}")
@pytest.mark.parametrize("shape", AGGREGATOR_SHAPES, ids=shape_id)
def test_aggregator_round_masking(benchmark, shape, dropout):
    """Every secure channel sum of the round runs the protocol over the K clients."""
    k, _ = shape
    process, state, values, weights = _aggregator_case(shape)
    dropouts = {"masked_input": dropout} if dropout else None
    backend = MaskingBackend(seed=0, dropouts=dropouts)
    backend.run(process, state, values[:3], weights[:3], dropouts={})  # compile the kernels
    last = {}

    def run():
        start = time.perf_counter()
        last["out"] = backend.run(process, state, values, weights)
        last["seconds"] = time.perf_counter() - start

    record(
        benchmark,
        group=f"secagg-aggregator|{shape_id(shape)}",
        items=k,
        graph="secagg+",
        dropout=dropout,
    )
    benchmark.pedantic(run, rounds=_aggregator_rounds(k), iterations=1)
    report = backend.last_report
    survivors = list(report.included)
    expected = process.next(state, values[survivors], weights[survivors])
    assert np.array_equal(last["out"].result, expected.result)  # bit-identical to in-process
    biggest = max(report.sums, key=lambda run: run.length)
    benchmark.extra_info.update(
        sums=len(report.sums),
        included=len(survivors),
        protocol_seconds=report.seconds,
        outside_protocol_seconds=last["seconds"] - report.seconds,
        client_seconds=report.client_seconds,
        server_seconds=report.server_seconds,
        largest_sum_seconds=biggest.seconds,
        client_mb_sent=report.bytes_to_server / k / 1e6,
        client_mb_received=report.bytes_to_clients / k / 1e6,
    )
