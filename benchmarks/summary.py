"""The summary at the top of ``docs/benchmarks.md``: aggkit beside what a user runs today.

For each workload (one federated round's aggregation of 100 clients x 431,080 float32 values,
the MNIST CNN's update), every implementation is timed in the same process, interleaved round
after round with an idle pause before each call (so they meet the same load), after one warm-up
call each (aggkit's kernels compiled or loaded). The contenders:

- aggkit: the composition or rule, on a ``ClientBatch``;
- Flower: the function its strategy calls (``flwr.server.strategy.aggregate``: ``aggregate``,
  ``aggregate_median``, ``aggregate_trimmed_avg``, ``aggregate_krum``) on per-layer arrays that
  are views into the same rows, or, for the message-API rows, the strategy's whole
  ``aggregate_train`` (:mod:`benchmarks.bench_flower_strategy`);
- NumPy: what a NumPy user writes for the same steps (whole-matrix calls where they exist);
- the BLAS probe ``w @ X`` (one read of the matrix), the yardstick of the raw groups below it.

TensorFlow Federated cannot be measured here: it needs TensorFlow, which this environment does
not install, and TFF publishes no per-round timings of these ``tff.aggregators`` compositions to
cite; the page says so rather than print a number without a source.

Each workload's table gives the median and best time of every contender and its time relative to
aggkit's *in the same rounds* (the median over rounds of ``its time / aggkit's time``: 2.0x means
aggkit took half as long). ``--render`` writes the section into ``docs/benchmarks.md`` between
the ``summary`` markers (the raw groups that ``render.py`` writes stay below) and one chart per
workload into ``docs/img/``::

    python benchmarks/coldstart.py --json .benchmarks/coldstart.json
    python benchmarks/coldstart.py --warm --json .benchmarks/coldstart-warm.json
    python -m benchmarks.summary --probe-ratios --json .benchmarks/summary.json \
        --coldstart .benchmarks/coldstart.json --coldstart-warm .benchmarks/coldstart-warm.json
    python -m benchmarks.summary --from-json .benchmarks/summary.json --render \
        --coldstart .benchmarks/coldstart.json --coldstart-warm .benchmarks/coldstart-warm.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import aggkit as ak
from benchmarks.conftest import PAUSE

K, N = 100, 431_080
START, END = "<!-- summary:start -->", "<!-- summary:end -->"


#: Each workload's heading and what it computes.
TEXTS = {
    "mean": ("Weighted mean (FedAvg)", "Each client's update weighted by its example count."),
    "robust": (
        "Robust aggregation: zeroing, clipping, weighted mean",
        "`robust_aggregator()`: updates with a huge value are zeroed, the rest clipped to an "
        "adaptive L2 norm, then the weighted mean (Flower has no such function; its plain FedAvg "
        "mean is shown for scale).",
    ),
    "median": (
        "Coordinate-wise median",
        "The median of every coordinate over the clients (Flower's FedMedian).",
    ),
    "trimmed_mean": (
        "Trimmed mean (10% from each end)",
        "Per coordinate, the mean of the clients' values without the lowest and highest 10%.",
    ),
    "krum": (
        "Krum (10 Byzantine clients assumed)",
        "The client whose update is closest to its K - f - 2 nearest neighbours.",
    ),
    "dp": (
        "Differentially private mean (Gaussian, 100 clients a round)",
        "`dp_aggregator(1.0, 100)`: adaptive clipping, Gaussian noise, unweighted mean; NumPy "
        "clips to a fixed norm and draws the noise with NumPy's generator.",
    ),
    "compression": (
        "Compressed mean (8-bit stochastic quantization)",
        "`compression_aggregator()`: zeroing, clipping, and every client's update rounded "
        "stochastically to 8 bits per value before the mean; NumPy quantizes client by client "
        "with its own generator.",
    ),
    "secure": (
        "Secure mean (bounded 32-bit codes for secure summation)",
        "`secure_aggregator()`: the round as the server computes it in process; NumPy does the "
        "steps of a plain secure mean (weight, clip, discretize, add, decode) client by client.",
    ),
}
#: Interleaved rounds per workload (fewer where Flower's or NumPy's call takes seconds).
ROUNDS = {"robust": 6, "median": 4, "trimmed_mean": 4, "krum": 3, "compression": 5, "secure": 5}


@dataclass
class Workload:
    key: str
    title: str
    what: str
    contenders: list[tuple[str, Callable[[], object]]]
    rounds: int = 10


def _data(k: int = K, n: int = N):
    """The client matrix (small updates; client 1 far out, so zeroing acts), weights, layers."""
    from benchmarks.bench_robust import layer_shapes

    rng = np.random.default_rng(k + n)
    matrix = rng.standard_normal((k, n), dtype=np.float32) * np.float32(0.01 / np.sqrt(n / 1e4))
    matrix[1] *= 1e5
    weights = np.random.default_rng(1).integers(50, 600, k).astype(np.float64)
    shapes = layer_shapes(n)
    bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    layers = [
        [row[bounds[i] : bounds[i + 1]].reshape(s) for i, s in enumerate(shapes)] for row in matrix
    ]
    template = [ak.TensorSpec(s, np.float32) for s in shapes]
    return matrix, weights, layers, template


def _round(factory, template, matrix, weights) -> Callable[[], object]:
    process = factory.create(template)
    batch = ak.ClientBatch(matrix, process.layout)
    state = process.initialize()
    if factory.is_weighted:
        return lambda: process.next(state, batch, weights)
    return lambda: process.next(state, batch)


def _numpy_krum(matrix: np.ndarray, f: int) -> np.ndarray:
    """Krum with whole-matrix NumPy: squared distances from one float32 Gram matrix (BLAS)."""
    sq = np.einsum("ij,ij->i", matrix, matrix)
    d = sq[:, None] + sq[None, :] - 2.0 * (matrix @ matrix.T)  # float32, as Flower's Krum
    k = matrix.shape[0]
    scores = np.sort(d, axis=1)[:, 1 : k - f - 1].sum(axis=1)
    return matrix[int(np.argmin(scores))]


def _numpy_dp(matrix, clip: float, sigma: float, rng) -> np.ndarray:
    """Clip every update to L2 norm ``clip``, sum, add N(0, (sigma clip)^2), divide by K."""
    norms = np.linalg.norm(matrix, axis=1).astype(np.float64)
    coef = np.minimum(1.0, clip / np.maximum(norms, 1e-300)).astype(np.float32)
    total = (coef @ matrix).astype(np.float64)
    total += rng.normal(0.0, sigma * clip, total.size)
    return (total / matrix.shape[0]).astype(np.float32)


def workloads() -> list[Workload]:
    from flwr.server.strategy import aggregate as flower
    from scipy import stats

    from benchmarks.bench_compression import _numpy_generator_round
    from benchmarks.bench_robust import numpy_straightforward, numpy_vectorized
    from benchmarks.bench_secure import numpy_secure_mean

    matrix, weights, layers, template = _data()
    results = [(client, int(w)) for client, w in zip(layers, weights, strict=True)]
    w32 = weights.astype(np.float32)
    rng = np.random.default_rng(0)
    f = K // 10

    def probe():
        return w32 @ matrix

    def agg(factory, call: str):
        return (f"aggkit `{call}`", _round(factory, template, matrix, weights))

    contenders = {
        "mean": [
            agg(ak.mean(), "ak.mean()"),
            ("Flower `aggregate` (FedAvg)", lambda: flower.aggregate(results)),
            ("NumPy `(w @ X) / w.sum()` (BLAS)", lambda: probe() / np.float32(weights.sum())),
        ],
        "robust": [
            agg(ak.robust_aggregator(), "robust_aggregator()"),
            ("NumPy, whole-matrix calls", lambda: numpy_vectorized(matrix, weights)),
            ("NumPy, client by client", lambda: numpy_straightforward(layers, weights)),
            ("Flower `aggregate` (no zeroing or clipping)", lambda: flower.aggregate(results)),
        ],
        "median": [
            agg(ak.median(), "ak.median()"),
            ("Flower `aggregate_median`", lambda: flower.aggregate_median(results)),
            ("NumPy `np.median(X, axis=0)`", lambda: np.median(matrix, axis=0)),
        ],
        "trimmed_mean": [
            agg(ak.trimmed_mean(0.1), "ak.trimmed_mean(0.1)"),
            ("Flower `aggregate_trimmed_avg`", lambda: flower.aggregate_trimmed_avg(results, 0.1)),
            ("SciPy `stats.trim_mean`", lambda: stats.trim_mean(matrix, 0.1, axis=0)),
        ],
        "krum": [
            agg(ak.krum(f), f"ak.krum({f})"),
            ("Flower `aggregate_krum`", lambda: flower.aggregate_krum(results, f, 0)),
            ("NumPy, distances from one Gram matrix", lambda: _numpy_krum(matrix, f)),
        ],
        "dp": [
            agg(ak.dp_aggregator(1.0, K), f"dp_aggregator(1.0, {K})"),
            ("NumPy (fixed clip, `Generator.normal`)", lambda: _numpy_dp(matrix, 0.1, 1.0, rng)),
        ],
        "compression": [
            agg(ak.compression_aggregator(), "compression_aggregator()"),
            ("NumPy, client by client", lambda: _numpy_generator_round(matrix, weights, rng)),
        ],
        "secure": [
            agg(ak.secure_aggregator(), "secure_aggregator()"),
            ("NumPy, client by client", lambda: numpy_secure_mean(matrix, weights)),
        ],
    }
    return [
        Workload(key, *TEXTS[key], entries, ROUNDS.get(key, 10))
        for key, entries in contenders.items()
    ]


def probe_ratios(rounds: int = 12, only: list[str] | None = None) -> dict:
    """Each preset's round against the BLAS probe ``w @ X``, paired round by round (the issue
    tracker's "x probe" figures): ``{name: {"ratio": median probe/round, "best_ratio", ms}}``;
    ``only`` names some of them (``--probe-ratios-only``, to re-measure a few rows)."""
    matrix, weights, _, template = _data()
    w32 = weights.astype(np.float32)
    cases = {
        "mean": ak.mean(),
        "robust_aggregator": ak.robust_aggregator(),
        "dp_aggregator(1.0, 100)": ak.dp_aggregator(1.0, K),
        "compression_aggregator": ak.compression_aggregator(),
        "secure_aggregator": ak.secure_aggregator(),
        "mean(hadamard(sum))": ak.mean(ak.hadamard(ak.sum(), seed=1)),
        "mean(hadamard(quantized_sum))": ak.mean(ak.hadamard(ak.quantized_sum(), seed=1)),
    }
    return {
        name: _against_probe(name, w32, matrix, _round(factory, template, matrix, weights), rounds)
        for name, factory in cases.items()
        if not only or name in only
    }


def _against_probe(name: str, w32, matrix, run, rounds: int) -> dict:
    """``run`` and the probe ``w32 @ matrix`` interleaved: the ratios and both best times."""
    times = _interleave([("probe", lambda: w32 @ matrix), (name, run)], rounds)
    probe, mine = times["probe"], times[name]
    result = {
        "ratio": float(np.median(probe / mine)),
        "best_ratio": float(probe.min() / mine.min()),
        "probe_ms": float(probe.min()) * 1e3,
        "round_ms": float(mine.min()) * 1e3,
    }
    print(f"{name}: {result['ratio']:.2f}x probe (best {result['best_ratio']:.2f}x)", flush=True)
    return result


def large_robust_ratio(rounds: int = 6) -> dict:
    """robust_aggregator against the probe at 32 clients x 10,000,000 values (1.28 GB)."""
    k, n = 32, 10_000_000
    matrix = np.random.default_rng(k + n).standard_normal((k, n), dtype=np.float32)
    matrix *= np.float32(0.01 / np.sqrt(n / 1e4))
    weights = np.random.default_rng(1).integers(50, 600, k).astype(np.float64)
    w32 = weights.astype(np.float32)
    spec = [ak.TensorSpec((n - 1000,), np.float32), ak.TensorSpec((1000,), np.float32)]
    run = _round(ak.robust_aggregator(), spec, matrix, weights)
    return _against_probe("robust_aggregator K=32 x 10,000,000", w32, matrix, run, rounds)


def _interleave(contenders, rounds: int) -> dict[str, np.ndarray]:
    for _, fn in contenders:  # warm-up: kernels compiled or loaded, buffers allocated
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for name, fn in order:
            time.sleep(PAUSE)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def _entries(times: dict[str, np.ndarray]) -> list[dict]:
    first = next(iter(times))
    base = times[first]
    return [
        {
            "name": name,
            "median_ms": float(np.median(t)) * 1e3,
            "best_ms": float(t.min()) * 1e3,
            "vs_aggkit": float(np.median(t / base)),
        }
        for name, t in times.items()
    ]


def measure(only: list[str] | None = None, with_flower_strategy: bool = True) -> dict:
    """Every workload's interleaved rounds; the result JSON."""
    load_before = os.getloadavg()
    out = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "workloads": []}
    for w in workloads():
        if only and w.key not in only:
            continue
        entries = _entries(_interleave(w.contenders, w.rounds))
        out["workloads"].append(
            {"key": w.key, "title": w.title, "what": w.what, "rounds": w.rounds, "rows": entries}
        )
        print(w.title, [(e["name"], round(e["median_ms"], 1)) for e in entries], flush=True)
    if with_flower_strategy and (not only or "flower" in only):
        out["workloads"].append(_flower_strategy())
    out["load_before"], out["load_after"] = load_before, os.getloadavg()
    return out


def _flower_strategy() -> dict:
    """The message-API rows: every strategy's aggregate_train on fresh replies, interleaved."""
    from benchmarks.bench_flower_strategy import _task_identity, measure

    _task_identity()
    table = measure(8, full=True)
    rows = []
    for name, entry in table.items():
        peer = entry.get("peer")
        rows.append(
            {
                "name": name,
                "median_ms": entry["median_ms"],
                "best_ms": entry["best_ms"],
                # Flower's strategy time / aggkit's (> 1: aggkit faster), per same round.
                "vs_peer": entry.get("ratio"),
                "peer": peer,
            }
        )
    return {
        "key": "flower",
        "title": "A Flower server round: the strategy's `aggregate_train`",
        "what": "100 reply messages of the MNIST CNN (431,080 values), freshly serialized through "
        "Flower's protobuf for every call, through Flower's message API (flwr 1.42): decoding, "
        "validation, aggregation and, for aggkit, the server optimizer's step.",
        "rounds": 8,
        "rows": rows,
    }


# -- rendering ------------------------------------------------------------------------------------


def _chart(workload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = workload["rows"]
    names = [r["name"].replace("`", "") for r in rows]
    values = [r["median_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 0.9))
    colors = ["#2b7bba" if n.startswith("aggkit") else "#9a9a9a" for n in names]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 2, max(values) * 2.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("median time per round (ms, log scale; shorter is faster)", fontsize=8)
    ax.set_title(workload["title"].replace("`", ""), fontsize=9, loc="left")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(data: dict, img_dir: Path | None = None, img_prefix: str = "img") -> str:
    """The summary as Markdown (charts written into ``img_dir`` if given)."""
    lb, la = data["load_before"], data["load_after"]
    lines = [
        START,
        "## Summary: aggkit beside Flower and NumPy",
        "",
        "One federated round's aggregation of **100 clients x 431,080 float32 values** (the MNIST "
        "CNN's update), every implementation timed in the same process, interleaved round after "
        "round after an idle pause each, so that all meet the same load. *Relative to aggkit* is "
        "the median over those rounds of the contender's time divided by aggkit's in the same "
        "round (2.0x: aggkit took half as long). This machine is shared (2 cores, load average "
        f"{lb[0]:.1f} when the run started and {la[0]:.1f} when it ended, {data['started']}): "
        "absolute times move by tens of percent between runs, the same-round ratios much less. "
        "BLAS calls (the probe, NumPy's matrix products) run on OpenBLAS's own threads, which "
        "suffer most from a loaded machine: read their rows as what they took here, not as "
        "their best.",
        "",
        "**TensorFlow Federated** is not in these tables: it needs TensorFlow, which this "
        "environment cannot install, and TFF publishes no per-round timings of its "
        "`tff.aggregators` compositions to quote. aggkit follows TFF's compositions and "
        "formulas ([design](design.md#tff)).",
        "",
        "Commands: `python benchmarks/coldstart.py --json .benchmarks/coldstart.json`, the "
        "same with `--warm` into `coldstart-warm.json`, then `python -m benchmarks.summary "
        "--probe-ratios --json .benchmarks/summary.json --coldstart .benchmarks/coldstart.json "
        "--coldstart-warm .benchmarks/coldstart-warm.json --render`.",
        "",
    ]
    reruns = {r["key"]: r for r in data.get("reruns", [])}
    for w in data["workloads"]:
        lines += [f"### {w['title']}", "", w["what"], ""]
        if w["key"] in reruns:
            r = reruns[w["key"]]
            lines += [
                f"Re-run on its own at {r['started']} (load average {r['load_before'][0]:.1f} "
                f"to {r['load_after'][0]:.1f}).",
                "",
            ]
        if w["key"] == "flower":
            lines += [
                "| strategy | median | best | Flower's time / aggkit's (same rounds) |",
                "|---|---:|---:|---:|",
            ]
            for r in w["rows"]:
                ratio = f"{r['vs_peer']:.2f}x vs {r['peer']}" if r.get("vs_peer") else ""
                lines.append(
                    f"| {r['name']} | {r['median_ms']:,.1f} ms | {r['best_ms']:,.1f} ms | {ratio} |"
                )
        else:
            lines += [
                "| implementation | median | best | relative to aggkit |",
                "|---|---:|---:|---:|",
            ]
            for r in w["rows"]:
                rel = "1.00x" if r["name"].startswith("aggkit") else f"{r['vs_aggkit']:.2f}x"
                lines.append(
                    f"| {r['name']} | {r['median_ms']:,.1f} ms | {r['best_ms']:,.1f} ms | {rel} |"
                )
        if img_dir is not None:
            name = f"summary-{w['key']}.png"
            _chart(w, img_dir / name)
            lines += ["", f"![{w['title'].replace('`', '')}]({img_prefix}/{name})"]
        lines.append("")
    lines += _probe_lines(data)
    lines += _coldstart_lines(data)
    lines += [
        "## Every benchmark group",
        "",
        "The raw groups of the pytest suites follow: every kernel and round, per workload and "
        "shape, against the probe of its group or paired with its reference.",
        "",
        END,
    ]
    return "\n".join(lines)


def _probe_lines(data: dict) -> list[str]:
    """Each preset's round against one BLAS read of the same matrix (``--probe-ratios``)."""
    ratios = data.get("probe_ratios")
    if not ratios:
        return []
    lines = [
        "### Each round against one read of the client matrix",
        "",
        "The BLAS probe `w @ X` reads the client matrix once; a round that reads it twice (its "
        "statistics, then its sum) can reach at most about 0.5x. Same-run pairs, probe and round "
        "alternately; 100 clients x 431,080 values unless said.",
        "",
        "| round | median ratio | best ratio | probe best | round best |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in ratios.items():
        lines.append(
            f"| `{name}` | {r['ratio']:.2f}x | {r['best_ratio']:.2f}x | {r['probe_ms']:.1f} ms | "
            f"{r['round_ms']:.1f} ms |"
        )
    return [*lines, ""]


def _runs(results) -> list[list[dict]]:
    """``coldstart.py --json`` results as a list of runs (one file is one run; older summary
    JSON holds a single run's list)."""
    if not results:
        return []
    return [results] if isinstance(results[0], dict) else list(results)


def _span(values: list[float], unit: str = " s", digits: int = 2) -> str:
    low, high = min(values), max(values)
    if round(low, digits) == round(high, digits):
        return f"{low:.{digits}f}{unit}"
    return f"{low:.{digits}f}-{high:.{digits}f}{unit}"


def _by_preset(runs: list[list[dict]]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for run in runs:
        for r in run:
            found.setdefault(r["preset"], []).append(r)
    return found


def _kernel_self_times(results: list[dict]) -> dict[str, float]:
    """Median over runs of each kernel's compile CPU self time (summed over its signatures)."""
    per_run = []
    for r in results:
        times: dict[str, float] = {}
        for c in r.get("compiles", []):
            times[c["kernel"]] = times.get(c["kernel"], 0.0) + c["cpu self"]
        per_run.append(times)
    names = {name for times in per_run for name in times}
    return {name: float(np.median([t.get(name, 0.0) for t in per_run])) for name in names}


def _sitting(runs: list[list[dict]]) -> str:
    """When, at which load, and on which tree the runs were taken."""
    results = [r for run in runs for r in run]
    loads = [x for r in results for x in r.get("load", [])]
    started = sorted(r["started"] for r in results if "started" in r)
    revisions = sorted({r.get("revision", "?") for r in results})
    when = f"{started[0]} to {started[-1][-9:]}" if started else "date not recorded"
    load = f"load average {_span(loads, '', 1)}" if loads else "load not recorded"
    return f"{len(runs)} run{'s' * (len(runs) != 1)} of {', '.join(revisions)}, {when}, {load}"


def _coldstart_lines(data: dict) -> list[str]:
    """The first round in a fresh process, cache empty and filled (``benchmarks/coldstart.py``
    results given with ``--coldstart``: one JSON file per run; ``--coldstart-before``: runs of
    an earlier tree taken in the same sitting, shown beside them)."""
    from benchmarks.coldstart import GOALS

    runs, before = _runs(data.get("coldstart")), _runs(data.get("coldstart_before"))
    if not runs:
        return []
    cold, old = _by_preset(runs), _by_preset(before)
    warm_runs = _runs(data.get("coldstart_warm"))
    warm_by = {r["preset"]: r for r in (warm_runs[-1] if warm_runs else [])}
    lines = [
        "### The first round in a fresh process",
        "",
        "What a new user, a CI job or a container meets: the first round of each preset at 100 "
        "clients x 431,080 values in a new interpreter, with numba's kernel cache empty "
        "(`AGGKIT_NUMBA_CACHE=0`: every kernel the composition uses is compiled) and, after "
        "`python -m aggkit warmup`, filled. CPU time counts every thread; on this shared machine "
        "it is the steadier figure. A goal is met when every run meets it.",
        "",
    ]
    before_head = " before: round CPU |" if old else ""
    lines += [
        f"| preset |{before_head} empty cache: round CPU | of which compiling | round wall | "
        "goal | filled cache: round wall | later rounds |",
        "|---|" + "---:|" * (6 + bool(old)),
    ]
    for preset, results in cold.items():
        cpu = [r["first round cpu"] for r in results]
        goal = GOALS.get(preset)
        verdict = ""
        if goal is not None:
            meeting = sum(c <= goal for c in cpu)
            verdict = (
                "met"
                if meeting == len(cpu)
                else f"met in {meeting} of {len(cpu)}"
                if meeting
                else "not met"
            )
            verdict = f"{goal:g} s: {verdict}"
        w = warm_by.get(preset)
        earlier = (
            f" {_span([r['first round cpu'] for r in old[preset]])} |"
            if old and preset in old
            else " |"
            if old
            else ""
        )
        lines.append(
            f"| {preset} |{earlier} {_span(cpu)} | "
            f"{_span([r['compile cpu'] for r in results])} | "
            f"{_span([r['first round wall'] for r in results])} | {verdict} | "
            + (f"{w['first round wall']:.2f} s" if w else "")
            + f" | {np.median([r['second round wall'] for r in results]) * 1e3:.0f} ms |"
        )
    lines += ["", f"Measured: {_sitting(runs)}."]
    if old:
        lines[-1] += f" Before: {_sitting(before)}, alternating with them."
    lines[-1] += (
        " The same tree's figures move by tens of percent from one sitting to the next; other "
        "sittings, instruction counts and what changed are on the "
        "[history page](benchmarks-history.md#cold-start)."
    )
    lines += [
        "",
        "With an empty cache the first kernel compiled also pays numba's one-time set-up (about "
        "0.3-0.4 s of CPU: its typing and lowering registries and, with SciPy installed, "
        "`import scipy.linalg`, which numba runs for its BLAS bindings whatever the kernel).",
        "",
        "Compile CPU time per kernel (self time: without the helpers it compiled; summed over "
        "its signatures; median over the runs; kernels above 0.04 s). The first kernel of each "
        "preset includes numba's set-up.",
        "",
        "| preset | kernel |" + (" before | after |" if old else " compile CPU |"),
        "|---|---|" + ("---:|" if old else "") + "---:|",
    ]
    for preset, results in cold.items():
        now = _kernel_self_times(results)
        then = _kernel_self_times(old.get(preset, []))
        names = sorted(set(now) | set(then), key=lambda n: -max(now.get(n, 0), then.get(n, 0)))
        for name in names:
            if max(now.get(name, 0.0), then.get(name, 0.0)) < 0.04:
                continue
            cells = [f"{d[name]:.2f} s" if name in d else "-" for d in ([then] if old else [])]
            cells.append(f"{now[name]:.2f} s" if name in now else "-")
            shown = name.replace(".<locals>.impl", "")  # numba's overloads: builtins.ol_max
            lines.append(f"| {preset} | `{shown}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Command: `python benchmarks/coldstart.py --json .benchmarks/coldstart-1.json` (one "
        "file per run; `--warm --json .benchmarks/coldstart-warm.json` for the filled cache), "
        "then `python -m benchmarks.summary ... --coldstart .benchmarks/coldstart-*.json "
        "--coldstart-warm .benchmarks/coldstart-warm.json` (`--coldstart-before` with runs of "
        "an earlier tree).",
        "",
    ]
    return lines


def write_into(page: Path, text: str) -> None:
    """Replace the summary between the markers, or put it right under the page's title."""
    content = page.read_text()
    if START in content and END in content:
        head, rest = content.split(START, 1)
        tail = rest.split(END, 1)[1]
        page.write_text(head + text + tail)
        return
    title, _, body = content.partition("\n\n")
    page.write_text(f"{title}\n\n{text}\n\n{body}")


def kept(page: Path) -> str | None:
    """The summary section of ``page`` as it is (``render.py`` keeps it when it rewrites the
    raw groups below), or None."""
    if not page.exists():
        return None
    content = page.read_text()
    if START not in content or END not in content:
        return None
    return START + content.split(START, 1)[1].split(END, 1)[0] + END


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="workload keys (mean, robust, ..., flower)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--from-json", type=Path, help="render earlier measurements")
    parser.add_argument("--render", action="store_true", help="write into docs/benchmarks.md")
    parser.add_argument(
        "--probe-ratios", action="store_true", help="also each preset's round against the probe"
    )
    parser.add_argument(
        "--probe-ratios-only",
        nargs="+",
        metavar="NAME",
        help="only these rows of the probe table (e.g. 'secure_aggregator'), printed as JSON",
    )
    parser.add_argument(
        "--coldstart", type=Path, nargs="+", help="coldstart.py --json results (a file per run)"
    )
    parser.add_argument(
        "--coldstart-before", type=Path, nargs="+", help="the same for an earlier tree"
    )
    parser.add_argument("--coldstart-warm", type=Path, help="the same with --warm")
    parser.add_argument("--page", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.probe_ratios_only:
        load_before = os.getloadavg()
        ratios = probe_ratios(only=args.probe_ratios_only)
        print(json.dumps({"load": [load_before[0], os.getloadavg()[0]], "probe_ratios": ratios}))
        return 0
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        data = measure(args.only)
        if args.probe_ratios:
            data["probe_ratios"] = probe_ratios()
            data["probe_ratios"]["robust_aggregator K=32x10,000,000"] = large_robust_ratio()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(data, indent=1))
    if args.coldstart:
        data["coldstart"] = [json.loads(path.read_text()) for path in args.coldstart]
    if args.coldstart_before:
        data["coldstart_before"] = [json.loads(path.read_text()) for path in args.coldstart_before]
    if args.coldstart_warm:
        data["coldstart_warm"] = json.loads(args.coldstart_warm.read_text())
    if args.render:
        (args.page.parent / "img").mkdir(parents=True, exist_ok=True)
        write_into(args.page, section(data, img_dir=args.page.parent / "img"))
        print(f"wrote the summary into {args.page}")
    else:
        print(section(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
