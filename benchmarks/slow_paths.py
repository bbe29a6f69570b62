"""The slow paths a user meets first, each against its goal, measured in one sitting.

One command re-measures the whole table of goals for the paths a new user meets first (the
table of issue 26 in the project's tracker) so that every row shares the machine's state:

* the first round of each preset in a fresh process with an empty kernel cache (CPU time,
  ``--cold-runs`` runs each, through :mod:`benchmarks.coldstart`), and with a filled cache;
* rounds against the BLAS probe ``w @ X`` (:func:`benchmarks.summary.probe_ratios`, paired round
  by round), and ``robust_aggregator()`` at 32 clients x 10,000,000 values;
* ``AggkitStrategy`` against Flower's ``FedAvg`` through Flower's message API
  (:mod:`benchmarks.bench_flower_strategy`; needs ``torch`` and ``flwr``).

It prints one line per goal (measured, goal, met or not) and, with ``--json``, writes the raw
figures, the load average before and after each part and the share of CPU time the host stole
during it (a virtual machine's neighbours do not show in its load average): read both beside every
figure, as the ratio goals assume that nothing else runs beside the measurement
(docs/benchmarks.md has the figures).

Example::

    python -m benchmarks.slow_paths --json .benchmarks/slow_paths.json
    python -m benchmarks.slow_paths --skip flower large --cold-runs 2
    python -m benchmarks.slow_paths --markdown a.json b.json   # sittings side by side
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.coldstart import GOALS


@dataclass(frozen=True)
class Goal:
    """One row of the table: what is measured, the bound, and whether larger is better."""

    what: str
    key: str
    bound: float
    unit: str  # "s" (at most) or "x" (at least)

    def met(self, value: float) -> bool:
        return value <= self.bound if self.unit == "s" else value >= self.bound


#: First round with an empty cache, CPU seconds (the goals live with the script that measures them).
COLD = GOALS
PROBE_GOALS = {
    "mean(hadamard(sum))": 0.3,
    "mean(hadamard(quantized_sum))": 0.25,
    "compression_aggregator": 0.4,
    "secure_aggregator": 0.4,
}
#: AggkitStrategy's median speed against Flower FedAvg's in the same rounds (> 1: faster).
FLOWER_GOALS = {"aggkit mean": 1.0, "aggkit robust_aggregator": 1 / 1.15}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_jiffies() -> tuple[int, int] | None:
    """``(steal, total)`` clock ticks of all CPUs since boot from ``/proc/stat`` (Linux; None
    elsewhere). On a virtual machine, steal is the time the host gave this machine's CPUs to
    another guest: the load average cannot show it, and it slows every measurement here."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    return fields[7], sum(fields[:8])


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the CPUs' time stolen by the host between two :func:`cpu_jiffies` readings.

    >>> steal_percent((10, 1000), (30, 1200))
    10.0
    >>> steal_percent(None, (30, 1200)) is None
    True
    """
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def cold_start(runs: int) -> dict:
    """First-round CPU time per preset, empty cache, ``runs`` fresh processes each
    (presets interleaved run by run), and one filled-cache run each."""
    from benchmarks.coldstart import PRESETS, run_one

    cold: dict[str, list[float]] = {p: [] for p in PRESETS}
    for _ in range(runs):
        for preset in PRESETS:
            cold[preset].append(run_one(preset, 100, 431_080, warm=False)["first round cpu"])
            print(f"cold {preset}: {cold[preset][-1]:.2f} s CPU (load {_load()})", flush=True)
    warm = {p: run_one(p, 100, 431_080, warm=True)["first round wall"] for p in PRESETS}
    return {"cold_cpu_s": cold, "warm_wall_s": warm}


def probe_rows(rounds: int) -> dict:
    from benchmarks.summary import probe_ratios

    return probe_ratios(rounds, only=list(PROBE_GOALS))


def large_robust() -> dict:
    from benchmarks.summary import large_robust_ratio

    return large_robust_ratio()


def flower(rounds: int) -> dict:
    from benchmarks.bench_flower_strategy import _task_identity, measure

    _task_identity()
    return measure(rounds, full=True, only=["flower FedAvg", *FLOWER_GOALS])


def table(data: dict) -> list[tuple[Goal, float | None, str]]:
    """(goal, measured value, how it was summarized) for every goal the data covers."""
    rows: list[tuple[Goal, float | None, str]] = []
    if "cold" in data:
        for preset, bound in COLD.items():
            runs = data["cold"]["cold_cpu_s"][preset]
            # Met only when every run meets it (as on the page's cold-start table).
            within = sum(r <= bound for r in runs)
            span = (
                f"slowest of {len(runs)} runs, median {statistics.median(runs):.2f} s, "
                f"{within} of {len(runs)} within the goal"
            )
            rows.append(
                (Goal(f"first round, empty cache: {preset}", preset, bound, "s"), max(runs), span)
            )
        warm = data["cold"]["warm_wall_s"]
        worst = max(warm.values())
        rows.append(
            (Goal("first round, filled cache: slowest preset", "warm", 0.5, "s"), worst, "wall")
        )
    for name, bound in PROBE_GOALS.items():
        if name in data.get("probe", {}):
            rows.append(_ratio_row(Goal(f"{name} vs probe", name, bound, "x"), data["probe"][name]))
    if "large" in data:
        goal = Goal("robust_aggregator() K=32 x 10,000,000 vs probe", "large", 0.4, "x")
        rows.append(_ratio_row(goal, data["large"]))
    for name, bound in FLOWER_GOALS.items():
        if name in data.get("flower", {}):
            goal = Goal(f"AggkitStrategy({name.split()[1]}) vs Flower FedAvg", name, bound, "x")
            rows.append(_ratio_row(goal, data["flower"][name], "median speed ratio"))
    return rows


def _ratio_row(goal: Goal, entry: dict, what: str = "median") -> tuple[Goal, float, str]:
    """A ratio goal's row: the median same-run ratio, with the best times' ratio beside it."""
    return goal, entry["ratio"], f"{what} (best {entry['best_ratio']:.2f}x)"


def render(rows) -> str:
    lines = [f"{'what':<52}{'measured':>10}{'goal':>9}  met  how"]
    for goal, value, how in rows:
        sign = "<=" if goal.unit == "s" else ">="
        lines.append(
            f"{goal.what:<52}{value:>9.2f}{goal.unit}{sign:>4}{goal.bound:.2f}{goal.unit}"
            f"  {'yes' if goal.met(value) else 'NO ':<4} {how}"
        )
    return "\n".join(lines)


def markdown(rows, sittings: list[dict]) -> str:
    """The table as Markdown, one column per sitting (the page's section)."""
    head = "| goal | " + " | ".join(f"{d['started']}, load {_loads(d)}" for d in sittings) + " |"
    lines = [head, "|---|" + "---:|" * len(sittings)]
    for i, (goal, _, _) in enumerate(rows[0]):
        sign = "<=" if goal.unit == "s" else ">="
        cells = []
        for table_rows in rows:
            _, value, how = table_rows[i]
            mark = "" if goal.met(value) else " (not met)"
            extra = how if how.startswith("slowest of") else ""
            cells.append(f"{value:.2f}{goal.unit}{mark}" + (f" ({extra})" if extra else ""))
        lines.append(
            f"| {goal.what} {sign} {goal.bound:.2f}{goal.unit} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _loads(data: dict) -> str:
    values = [x for pair in data.get("load", {}).values() for x in pair]
    text = f"{min(values):.1f}-{max(values):.1f}" if values else "?"
    steal = [x for x in data.get("steal_percent", {}).values() if x is not None]
    return text + (f", host steal <= {max(steal):.1f}%" if steal else "")


PARTS = ("cold", "probe", "large", "flower")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-runs", type=int, default=4, help="fresh processes per preset")
    parser.add_argument("--rounds", type=int, default=12, help="paired rounds per probe row")
    parser.add_argument("--skip", nargs="*", choices=PARTS, default=[], help="parts to leave out")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--markdown", type=Path, nargs="+", help="print earlier --json sittings as one table"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        sittings = [json.loads(path.read_text()) for path in args.markdown]
        print(markdown([table(d) for d in sittings], sittings))
        return 0
    data: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": {},
        "steal_percent": {},
    }
    steps = {
        "cold": lambda: cold_start(args.cold_runs),
        "probe": lambda: probe_rows(args.rounds),
        "large": large_robust,
        "flower": lambda: flower(max(4, args.rounds // 2)),
    }
    for part in PARTS:
        if part in args.skip:
            continue
        before, jiffies = _load(), cpu_jiffies()
        data[part] = steps[part]()
        data["load"][part] = [before, _load()]
        data["steal_percent"][part] = steal_percent(jiffies, cpu_jiffies())
        if args.json:  # partial results survive an interrupted run
            args.json.write_text(json.dumps(data, indent=1))
    print(render(table(data)))
    print("load average (1 min) before/after each part:", data["load"])
    print("CPU time stolen by the host during each part (%):", data["steal_percent"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
