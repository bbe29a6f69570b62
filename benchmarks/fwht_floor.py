"""The Hadamard rotation's floor on the machine it runs on: peak vector adds, the FWHT's rate,
the arithmetic and the memory traffic.

Issue 26 asks ``ak.mean(ak.hadamard(ak.sum()))`` for 0.3x the BLAS probe ``w @ X`` (and 0.25x
around ``ak.quantized_sum()``). A rotation is compute, the probe is one read of the client matrix,
so the ratio has two ceilings: the CPU's vector adders and the bytes a round moves (a rotated row
that does not fit the L2 leaves the core and comes back). This script measures both:

* ``peak``: float32 512-bit vector operations per ns on one core (thread CPU time), as
  independent chains of ``v = v + c`` (the adders), of ``v = fma(v, m, c)`` (the multiply-add
  pipes), and both interleaved; then the same on two threads at once (does the second core add its
  share?). A butterfly stage is one add or subtract per element, so 16 element-stages per vector
  operation.
* ``fwht``: the FWHT's element-stages per ns on one core: in L1 (4,096 values, 12 stages), on a
  2**19 vector (the MNIST CNN's largest layer), and a whole rotation of a client row (signs,
  padding and the transform; rows streamed from memory).
* the arithmetic for the round (100 clients x the MNIST CNN's eight layers, padded): element-stages
  per round, the least CPU time at each rate, the probe's time measured in the same run, and the
  best ratio possible with perfect two-core scaling and nothing else in the round (no read of
  the client matrix, no sum).
* ``--passes``: one round of ``ak.mean(ak.hadamard(inner))`` split pass by pass (the rotation,
  the rotation plus the inner round's read of the rotated rows, the unrotation, the signs), wall
  and process CPU time, at one and at two threads alternately, each round paired with the probe
  (a pause after the probe lets OpenBLAS's threads stop spinning).

Usage::

    python -m benchmarks.fwht_floor                  # peak, FWHT rates, the floor table
    python -m benchmarks.fwht_floor --passes sum --rounds 10

Run it alone (``flock`` the benchmark lock) and read ``uptime`` beside it: the peak figures are
thread CPU time, so a busy sibling core lowers them only through shared caches and clocks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import threading
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from aggkit.kernels.hadamard import _fma

#: Vector operations per call of a peak kernel: CHAINS independent chains, DEPTH deep.
CHAINS, DEPTH = 12, 64
LANES = 16  # float32 lanes of a 512-bit vector


def _peak(kind: str):
    """An intrinsic ``(x)``: CHAINS vectors loaded from ``x``, DEPTH rounds of ``kind`` on each
    (``add``: ``v + c``; ``fma``: ``fma(v, m, c)``; ``mix``: both, on 2 * CHAINS chains), the
    results stored back (so nothing is folded away; no fast-math, so no chain is reassociated)."""

    def peak(typingctx, x):  # pragma: no cover - compiled
        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            vector = ir.VectorType(ir.FloatType(), LANES)
            chains = 2 * CHAINS if kind == "mix" else CHAINS
            pointers = [
                builder.bitcast(
                    builder.gep(data, [ir.Constant(ir.IntType(64), k * LANES)]),
                    vector.as_pointer(),
                )
                for k in range(chains + 2)
            ]
            values = [builder.load(p, align=4) for p in pointers[:chains]]
            c, m = (builder.load(p, align=4) for p in pointers[chains:])
            for _ in range(DEPTH):
                for k, v in enumerate(values):
                    if kind == "add" or (kind == "mix" and k % 2 == 0):
                        values[k] = builder.fadd(v, c)
                    else:
                        values[k] = _fma(builder, v, m, c)  # the kernels' own llvm.fma
            for v, p in zip(values, pointers, strict=False):
                builder.store(v, p, align=4)
            return context.get_dummy_value()

        return types.void(x), codegen

    peak.__name__ = f"_peak_{kind}"
    return intrinsic(peak)


_PEAKS = {kind: _peak(kind) for kind in ("add", "fma", "mix")}


def _loop(kind: str):
    body = _PEAKS[kind]

    @njit(nogil=True)
    def loop(x, calls):
        for _ in range(calls):
            body(x)

    return loop


LOOPS = {kind: _loop(kind) for kind in _PEAKS}


def peak_rates(calls: int = 200_000) -> dict:
    """Vector operations per ns, one core and two cores at once (thread CPU time and wall)."""
    out = {}
    for kind, loop in LOOPS.items():
        ops = calls * DEPTH * (2 * CHAINS if kind == "mix" else CHAINS)
        x = np.full((2 * CHAINS + 2) * LANES, 1e-3, np.float32)
        x[-LANES:] = 1.0  # m = 1: the chains stay finite
        loop(x, 10)
        one = []
        for _ in range(5):
            start = time.thread_time()
            loop(x, calls)
            one.append(time.thread_time() - start)
        # Two threads at once, each on its own array: wall time of both against one.
        xs = [x.copy() for _ in range(2)]
        threads = [threading.Thread(target=loop, args=(xi, calls)) for xi in xs]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        both = time.perf_counter() - start
        out[kind] = {
            "vector_ops_per_ns_1core": ops / min(one) / 1e9,
            "vector_ops_per_ns_2threads": 2 * ops / both / 1e9,
        }
    return out


def _repeated(kernel):
    """``(x, count)``: ``count`` calls of ``kernel(x)`` in compiled code (a call from Python costs
    a good part of a 4,096-value transform)."""

    @njit(nogil=True)
    def repeat(x, count):
        for _ in range(count):
            kernel(x)

    return repeat


def fwht_rates(reps: int = 30) -> dict:
    """Element-stages per ns of the FWHT (one thread, thread CPU time)."""
    hk = importlib.import_module("aggkit.kernels.hadamard")

    def best(fn):
        fn()
        times = []
        for _ in range(reps):
            start = time.thread_time()
            fn()
            times.append(time.thread_time() - start)
        return min(times)

    small = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    large = np.random.default_rng(1).standard_normal(1 << 19).astype(np.float32)
    rows = np.random.default_rng(2).standard_normal((100, 431_080), dtype=np.float32)
    signs = np.where(np.random.default_rng(3).random(1 << 19) < 0.5, -1, 1).astype(np.int8)
    dst = np.empty(1 << 19, np.float32)
    inv = 1 / np.sqrt(2.0**19)
    counter = iter(range(10**9))

    def rotate():
        hk._rotate_once(rows[next(counter) % 100], dst, signs, inv, True)

    repeat = _repeated(hk._fwht_serial)
    l1 = best(lambda: repeat(small, 128))
    return {
        "l1_4096": 128 * 4096 * 12 / l1 / 1e9,
        "vector_2**19": (1 << 19) * 19 / best(lambda: hk._fwht_serial(large)) / 1e9,
        "rotation_2**19": (1 << 19) * 19 / best(rotate) / 1e9,
    }


def round_stages(n: int = 431_080, k: int = 100) -> int:
    """Element-stages of one round's rotations: every client's every padded layer."""
    from benchmarks.bench_robust import layer_shapes

    hk = importlib.import_module("aggkit.kernels.hadamard")
    total = 0
    for shape in layer_shapes(n):
        d = hk.padded_size(int(np.prod(shape)))
        total += d * max(0, d.bit_length() - 1)
    return k * total


def probe_ms(reps: int = 15) -> float:
    """The BLAS probe ``w @ X`` over 100 x 431,080 float32, best wall time (ms)."""
    from benchmarks.summary import _data

    matrix, weights, _, _ = _data()
    w32 = weights.astype(np.float32)
    times = []
    for _ in range(reps):
        time.sleep(0.15)
        start = time.perf_counter()
        w32 @ matrix
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def floor_table(peaks: dict, fwht: dict, probe: float) -> list[str]:
    stages = round_stages()
    lines = [
        f"element-stages per round (100 clients, MNIST CNN layers padded): {stages / 1e9:.3f} G",
        f"probe w @ X: {probe:.2f} ms (best)",
        "| rate | element-stages per ns, one core | least CPU per round | "
        "best ratio, 2 cores perfectly |",
        "|---|---:|---:|---:|",
    ]
    rates = {
        "peak float32 vector adds (16 per add)": peaks["add"]["vector_ops_per_ns_1core"] * LANES,
        "peak adds + FMAs (all FP pipes)": peaks["mix"]["vector_ops_per_ns_1core"] * LANES,
        "FWHT in L1 (4,096 values)": fwht["l1_4096"],
        "FWHT of a 2**19 vector": fwht["vector_2**19"],
        "rotation of a client row (2**19)": fwht["rotation_2**19"],
    }
    for name, rate in rates.items():
        cpu = stages / rate / 1e6  # ms
        lines.append(f"| {name} | {rate:.1f} | {cpu:.1f} ms | {probe / (cpu / 2):.2f}x |")
    # Memory: a padded float32 row of the largest layer (2 MiB) does not fit a 1 MiB L2, so each
    # rotated row goes out to the shared cache or memory and comes back once, at the least.
    client, rotated = round_bytes()
    share = rotated / client
    lines += [
        f"client matrix {client / 1e6:.1f} MB (one probe), rotated rows {rotated / 1e6:.1f} MB "
        f"({share:.2f} probes each way): reading the matrix and writing and reading the rotated "
        f"rows once moves {1 + 2 * share:.2f} probes of data, so a round is at most "
        f"{1 / (1 + 2 * share):.2f}x the probe with no arithmetic at all "
        f"({1 / (1 + 3 * share):.2f}x when a second pass reads the rotated rows, as the quantized "
        "sum's statistics do)",
    ]
    return lines


def round_bytes(n: int = 431_080, k: int = 100) -> tuple[int, int]:
    """Bytes of the float32 client matrix and of its rotated (padded) rows."""
    from benchmarks.bench_robust import layer_shapes

    hk = importlib.import_module("aggkit.kernels.hadamard")
    padded = sum(hk.padded_size(int(np.prod(shape))) for shape in layer_shapes(n))
    return 4 * k * n, 4 * k * padded


def passes(inner_name: str, rounds: int) -> list[str]:
    """One round split pass by pass at one and at two threads, alternately in one run, each round
    paired with the probe: best and median wall, median process CPU (ms)."""
    import numba

    import aggkit as ak
    from aggkit import kernels
    from benchmarks.summary import _data, _round

    hmod = importlib.import_module("aggkit.hadamard")
    matrix, weights, _, template = _data()
    w32 = weights.astype(np.float32)
    inner = ak.sum() if inner_name == "sum" else ak.quantized_sum()
    run = _round(ak.mean(ak.hadamard(inner, seed=1)), template, matrix, weights)
    spent: dict[str, list[float]] = {}

    def wrap(owner, name, key):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                entry = spent.setdefault(key, [0.0, 0.0])
                entry[0] += time.perf_counter() - wall
                entry[1] += time.process_time() - cpu

        setattr(owner, name, timed)
        return owner, name, original

    originals = [
        wrap(kernels.hadamard, "rotate_rows", "rotation (rotate_rows)"),
        wrap(hmod._HadamardRound, "add", "rotation + inner round (add)"),
        wrap(kernels.hadamard, "unrotate", "unrotation"),
        wrap(hmod._HadamardRound, "_get_signs", "signs"),
    ]
    counts = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]
    records: dict[int, list[dict]] = {t: [] for t in counts}
    try:
        for threads in counts:
            numba.set_num_threads(threads)
            run()
        for _ in range(rounds):
            for threads in counts:
                numba.set_num_threads(threads)
                time.sleep(0.15)  # OpenBLAS's threads spin about 45 ms after a call
                start = time.perf_counter()
                w32 @ matrix
                probe = time.perf_counter() - start
                time.sleep(0.15)
                spent.clear()
                wall, cpu = time.perf_counter(), time.process_time()
                run()
                record = {k: tuple(v) for k, v in spent.items()}
                record["whole round"] = (time.perf_counter() - wall, time.process_time() - cpu)
                record["probe"] = (probe, probe)
                records[threads].append(record)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    lines = []
    for threads, rows in records.items():
        ratio = statistics.median(r["probe"][0] / r["whole round"][0] for r in rows)
        lines += [
            f"{threads} thread(s), inner {inner_name}: {ratio:.3f}x probe (median of pairs)",
            "| pass | best wall ms | median wall ms | median process CPU ms |",
            "|---|---:|---:|---:|",
        ]
        for key in rows[0]:
            walls = [r[key][0] * 1e3 for r in rows]
            cpus = [r[key][1] * 1e3 for r in rows]
            lines.append(
                f"| {key} | {min(walls):.2f} | {statistics.median(walls):.2f} | "
                f"{statistics.median(cpus):.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", choices=["sum", "quantized_sum"], help="profile one round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--probe-ms", type=float, help="the probe's time to divide by (default: measured here)"
    )
    args = parser.parse_args()
    from benchmarks.slow_paths import cpu_jiffies, steal_percent

    jiffies = cpu_jiffies()
    print(f"load {os.getloadavg()}", flush=True)
    if args.passes:
        print("\n".join(passes(args.passes, args.rounds)))
    else:
        peaks = peak_rates()
        for kind, rates in peaks.items():
            print(
                f"peak {kind}: {rates['vector_ops_per_ns_1core']:.2f} vector ops/ns on one core, "
                f"{rates['vector_ops_per_ns_2threads']:.2f} on two threads at once",
                flush=True,
            )
        fwht = fwht_rates()
        print("FWHT element-stages per ns: " + ", ".join(f"{k} {v:.1f}" for k, v in fwht.items()))
        probe = args.probe_ms if args.probe_ms else probe_ms()
        print("\n".join(floor_table(peaks, fwht, probe)))
    print(f"load {os.getloadavg()}, host steal {steal_percent(jiffies, cpu_jiffies())}%")


if __name__ == "__main__":
    main()
