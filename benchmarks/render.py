"""Render pytest-benchmark JSON results into ``docs/benchmarks.md``.

Usage::

    python benchmarks/render.py RESULTS.json [MORE.json ...] [--out docs/benchmarks.md] \
        [--include .benchmarks/federated.md ...]

For every benchmark group, one table: each row's best time (the minimum over rounds, the figure
least disturbed by other load), throughput (GB/s from ``extra_info["bytes"]`` or items/s from
``extra_info["items"]``) and, when the group has a probe (``extra_info["probe"]``), the row's speed
as a fraction of the probe measured in the same run. A bar chart of those fractions goes next to
the page (``img/benchmarks-vs-probe.png``, with matplotlib). ``--include`` appends Markdown written
by the script benchmarks (``bench_federated.py``, ``accuracy_mnist.py``), copying the images they
reference into ``img/`` (named ``<their folder>-<file>``). The page ends with the machine, the
versions and the commands, taken from the JSON (versions recorded by ``benchmarks/conftest.py``;
older JSON files fall back to the versions installed now).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path

#: Packages whose versions the page lists.
VERSIONED = ("aggkit", "numpy", "numba", "torch", "flwr", "cryptography", "dp-accounting")

PLOT_NAME = "img/benchmarks-vs-probe.png"


def installed_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _rows(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for data in results:
        for bench in data["benchmarks"]:
            groups[bench.get("group") or "ungrouped"].append(bench)
    return groups


def _base(bench: dict) -> str:
    return bench["name"].removeprefix("test_").split("[", 1)[0]


def _name(bench: dict) -> str:
    return _base(bench) + (f" [{bench['param']}]" if bench.get("param") else "")


def _is_probe(bench: dict) -> bool:
    return bool(bench.get("extra_info", {}).get("probe"))


def _probe(benches: list[dict]) -> dict | None:
    return next((b for b in benches if _is_probe(b)), None)


def _ratios(results: list[dict]) -> dict[str, tuple[str, list[tuple[str, float]]]]:
    """Per group with a probe: its probe's name and (row label, probe time / row time), fastest
    first."""
    out = {}
    for group, benches in sorted(_rows(results).items()):
        probe = _probe(benches)
        if probe is None:
            continue
        others = [b for b in benches if not _is_probe(b)]
        bases = [_base(b) for b in others]
        # The variant in brackets only where a name repeats within the group.
        rows = [
            (_name(b) if bases.count(base) > 1 else base, probe["stats"]["min"] / b["stats"]["min"])
            for b, base in zip(others, bases, strict=True)
        ]
        out[group] = (_base(probe), sorted(rows, key=lambda r: -r[1]))
    return out


def plot(results: list[dict], path: Path) -> bool:
    """Bar chart of each row's speed as a fraction of its probe; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return False
    ratios = _ratios(results)
    if not ratios:
        return False
    heights = [max(1, len(rows)) for _, rows in ratios.values()]
    fig, axes = plt.subplots(
        len(ratios),
        1,
        figsize=(9, 0.24 * sum(heights) + 0.75 * len(ratios)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (group, (probe, rows)) in zip(axes[:, 0], ratios.items(), strict=True):
        labels = [label for label, _ in rows]
        values = [value for _, value in rows]
        ax.barh(range(len(rows)), values, color="#4472c4")
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{group}   (probe: {probe})", fontsize=8, loc="left")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    axes[-1, 0].set_xlabel("speed as a fraction of the group's probe (log scale; 1 = probe)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def include(markdown: Path, out_dir: Path) -> str:
    """The text of ``markdown`` with its images copied to ``out_dir/img`` and relinked."""
    text = markdown.read_text()

    def relink(match: re.Match) -> str:
        source = markdown.parent / match.group(2)
        if not source.exists():
            return match.group(0)
        # Prefixed with the folder's name: two result folders may both hold an accuracy.png.
        name = f"{markdown.parent.name}-{source.name}"
        target = out_dir / "img" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return f"![{match.group(1)}](img/{name})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", relink, text).rstrip() + "\n"


#: Human names of the benchmark groups' keys (the part before the first ``|``).
GROUP_NAMES = {
    "core": "Weighted mean",
    "robust": "Robust aggregation (zeroing, clipping, weighted mean)",
    "dp": "Differentially private mean",
    "dp-distributed": "Distributed DP (discrete noise, modular sum)",
    "dp-tree": "DP-FTRL tree aggregation",
    "noise": "Gaussian noise",
    "uniform": "Uniform random numbers",
    "compression": "Compressed mean (stochastic quantization)",
    "secure": "Secure mean (discretized sums)",
    "secagg-aggregator": "SecAgg+ in the aggregator",
    "secagg-authenticated": "SecAgg+, authenticated mode",
    "secagg-flower": "SecAgg+ on Flower",
    "secagg-mask": "SecAgg+ masks",
    "secagg-round": "SecAgg+ round",
    "secagg-scaling": "SecAgg+ scaling with the number of clients",
    "byzantine": "Byzantine-robust rules",
    "byzantine-flower": "Byzantine-robust rules against Flower's functions",
    "byzantine-probe": "Byzantine-robust rules against the probe",
    "flower-strategy": "Flower strategies' aggregate_train",
    "federated": "Federated training",
}


def heading(group: str) -> str:
    """A group key as a heading.

    >>> heading("robust-paired|K=100xn=431,080")
    'Robust aggregation (zeroing, clipping, weighted mean), 100 clients, 431,080 values, paired'
    """
    kind, *parts = group.split("|")
    paired = kind.endswith("-paired")
    kind = kind.removesuffix("-paired")
    units = {"K": "clients", "n": "values", "xn": "values", "m": "values", "masks": "masks"}
    words = []
    for part in parts:
        pairs = re.findall(r"(\w+)=([\d,]+)", part)
        if not pairs:
            words.append(part)
        for key, value in pairs:
            value = value.strip(",")
            words.append(f"{value} {units[key]}" if key in units else f"{key} {value}")
    return ", ".join([GROUP_NAMES.get(kind, kind), *words] + (["paired"] if paired else []))


def _paired_table(group: str, benches: list[dict]) -> list[str]:
    """A paired group: each row's reference, both best times and the two ratios."""
    lines = [
        f"## {heading(group)}",
        "",
        f"Group `{group}`.",
        "",
        "| benchmark | reference | reference best | contender best | best ratio | median ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for bench in sorted(benches, key=_name):
        extra = bench["extra_info"]
        lines.append(
            f"| {_name(bench)} | {extra['paired']} | {extra['reference_ms']:.2f} ms | "
            f"{extra['contender_ms']:.2f} ms | {extra['best_ratio']:.2f}x | {extra['ratio']:.2f}x |"
        )
    return [*lines, ""]


def render(
    results: list[dict],
    *,
    with_plot: bool = False,
    includes: tuple[str, ...] = (),
    rendered_by: str = "python benchmarks/render.py RESULTS.json",
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/render.py` from pytest-benchmark results; do not edit by hand.",
        "Times are the best of the measured rounds. *vs probe* is the probe's time divided by the",
        "row's time, both measured in the same run: 1.0 = as fast as the probe, which is one",
        "BLAS pass `w @ X` over the same client matrix for the aggregation groups, NumPy's own",
        "generator for the noise and uniform groups, the raw AES-CTR keystream for masking, and",
        "the in-process round for the masked secure_aggregator round. This machine is shared:",
        "minima of one probe varied by 10-40% between runs, so compare rows within a group.",
        "*Paired* groups time a reference (the probe, or Flower) and a contender alternately,",
        "round after round, after an idle pause each, so both meet the same load: *best ratio*",
        "divides their best times, *median ratio* is the median of the per-round ratios.",
        "The one-off measurements behind the kernels' design are on the",
        "[history page](benchmarks-history.md).",
        "",
    ]
    if with_plot:
        lines += [f"![Speed of each benchmark as a fraction of its probe]({PLOT_NAME})", ""]
    for group, benches in sorted(_rows(results).items()):
        if all("paired" in b.get("extra_info", {}) for b in benches):
            lines += _paired_table(group, benches)
            continue
        probe = _probe(benches)
        lines += [
            f"## {heading(group)}",
            "",
            f"Group `{group}`.",
            "",
            "| benchmark | best time | throughput | vs probe |",
            "|---|---:|---:|---:|",
        ]
        for bench in sorted(benches, key=lambda b: b["stats"]["min"]):
            best = bench["stats"]["min"]
            extra = bench.get("extra_info", {})
            if "bytes" in extra:
                throughput = f"{extra['bytes'] / best / 1e9:.1f} GB/s"
            elif "items" in extra:
                throughput = f"{extra['items'] / best:,.0f} /s"
            else:
                throughput = ""
            ratio = f"{probe['stats']['min'] / best:.2f}x" if probe else ""
            label = _name(bench) + (" (probe)" if _is_probe(bench) else "")
            lines.append(f"| {label} | {best * 1e3:.2f} ms | {throughput} | {ratio} |")
        lines.append("")
    for text in includes:
        lines += [text, ""]
    first = results[0]
    machine = first.get("machine_info", {})
    versions = machine.get("aggkit_versions") or installed_versions()
    commit = first.get("commit_info", {})
    cpu = machine.get("cpu", {})
    lines += [
        "## Machine and command",
        "",
        f"- CPU: {cpu.get('brand_raw', machine.get('processor', '?'))}, "
        f"{cpu.get('count', '?')} logical cores",
        f"- Python {machine.get('python_version', '?')}; "
        + ", ".join(f"{name} {version}" for name, version in versions.items()),
        f"- Commit: {commit.get('id', '?')[:12]} ({'dirty' if commit.get('dirty') else 'clean'})",
        f"- Date: {first.get('datetime', '?')}",
        "- Benchmarks: `AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_SUITE.py "
        "--benchmark-enable --benchmark-json=.benchmarks/SUITE.json` for each suite (or all of "
        "`benchmarks` into one file); the script benchmarks as their own tables say",
        f"- Page: `{rendered_by}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # run as a script (`python benchmarks/render.py`), as the docs say
        sys.path.insert(0, root)
    from benchmarks.summary import kept

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--include", type=Path, action="append", default=[], help="Markdown to append"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the bar chart")
    args = parser.parse_args()
    results = [json.loads(path.read_text()) for path in args.results]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plotted = not args.no_plot and plot(results, args.out.parent / PLOT_NAME)
    texts = tuple(include(path, args.out.parent) for path in args.include)
    rendered_by = " ".join(["python benchmarks/render.py", *sys.argv[1:]])
    page = render(results, with_plot=plotted, includes=texts, rendered_by=rendered_by)
    summary = kept(args.out)  # benchmarks/summary.py's section stays on top
    if summary is not None:
        title, _, body = page.partition("\n\n")
        page = f"{title}\n\n{summary}\n\n{body}"
    args.out.write_text(page)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
