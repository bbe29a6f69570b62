"""Secure aggregation on a real loopback Flower deployment: aggkit's SecAgg+ against Flower's.

A SuperLink and ``--nodes`` SuperNodes run as separate processes on 127.0.0.1 (the federation of
the deployment tests, ``tests/flower/federation.py``). On that one federation, in the same run and
alternately, ``flwr run`` submits:

- ``flower``: Flower's own SecAgg+ (``SecAggPlusWorkflow`` on its legacy API, FedAvg);
- ``aggkit``: aggkit's SecAgg+ on Flower's message API (``SecureAggkitStrategy`` with
  ``ak.secure_aggregator()``: adaptive zeroing and clipping, 14 secure sums packed in one
  protocol run), honest-but-curious mode, as Flower's has no identities;
- ``aggkit-auth``: the same in the authenticated mode (Ed25519 identities, signed keys, the
  consistency round);
- ``aggkit-22``: ``aggkit`` with ``ak.secure_aggregator(code_bits=22)``, Flower's precision
  (its SecAgg+ quantizes to ``2**22`` levels): 22-bit codes instead of 32, so that a sum of 20
  clients fits 27 bits and travels in 4-byte words instead of 5. Not a default variant: the
  default ``aggkit`` keeps aggkit's default (and finer) 32-bit codes.

Masked words travel in the fewest bytes their modulus needs (``aggkit.secure.messages``, wire
format version 3): 5 bytes for the 37-bit sums of 32-bit codes over 20 clients, 4 for 22-bit.

The model is the MNIST CNN (431,080 float32 values); the nodes do not train (see
``benchmarks/secagg_loopback_apps.py``, and ``secagg_loopback_servers.py`` for the servers), so a
round is the aggregation. Same share holders and threshold on both sides (aggkit's default
SecAgg+ graph: 11 holders and threshold 6 at 20 nodes).

What is counted, the same way for both servers (``benchmarks/secagg_loopback_servers.py``): the
CPU time of the ``flwr-serverapp`` process that runs the strategy or workflow, all its threads
(its own work, Flower's transport and Flower's background threads), from the start of a round
to the start of the next; not the SuperLink's, the SuperNodes' or the ClientApps' (the /proc
monitor reports those beside it). Left out: only the main-thread CPU time of the benchmark's
own byte counting. Each round is split into the strategy's or workflow's work (main thread
outside push and pull), Flower's push and pull (all threads), and the other threads (Flower's
heartbeat, log upload and parent monitor, which run while the server waits for replies); each
push and pull is logged (CPU time, messages, objects, bytes) in the JSON. Also reported: the
round's wall time (dominated by the nodes: every message a node answers starts a fresh
``flwr-clientapp`` process) and the bytes sent to and received from each node. The per-round
figure is the median round after the first, which also pays one-off costs. Variants alternate,
in reverse order every other repeat. A /proc monitor counts the ``flwr-clientapp`` starts,
their CPU and how many ran at once, and stops a run whose ClientApps cascade
(``--max-clientapps``).

The figures, with their load and commands, are in docs/benchmarks.md ("Secure aggregation on
Flower").

Run::

    python benchmarks/secagg_loopback.py --nodes 20 --rounds 3 --repeats 1 \
        --json .benchmarks/secagg-loopback-20.json
    python benchmarks/secagg_loopback.py --nodes 5 --rounds 3 --repeats 1 \
        --json .benchmarks/secagg-loopback-5.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from aggkit_torch.flower.app import RUN_CONFIG, _toml_value, write_app  # noqa: E402
from tests.flower.federation import Federation  # noqa: E402

#: The federation's processes by kind (the name in their command line).
KINDS = (
    "flwr-clientapp",
    "flwr-serverapp",
    "flower-superexec",
    "flower-supernode",
    "flower-superlink",
)
_TICK = os.sysconf("SC_CLK_TCK")


class ProcessMonitor:
    """Samples a federation's process tree from /proc (every ``period`` seconds, in a thread):
    CPU time by kind of process, how many ``flwr-clientapp`` processes were started and how many
    ran at once. A process's CPU is what it used while the monitor ran (all of it for a process
    started meanwhile) up to its last sample (a short-lived one may use a little more)."""

    def __init__(
        self,
        roots: list[int],
        period: float = 0.5,
        limit: int | None = None,
        on_excess: Any = None,
    ):
        self.roots, self.period = roots, period
        self.limit, self.on_excess = limit, on_excess
        self.exceeded = 0  # ClientApps running at once when the limit was passed (0: never)
        self.cpu: dict[tuple[int, int], tuple[str, float, float]] = {}  # key -> kind, first, last
        self.most_clientapps = 0
        self._before: set[tuple[int, int]] | None = None  # processes already running at the start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessMonitor:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def _sample(self) -> None:
        stats, children = {}, {}
        for entry in Path("/proc").iterdir():  # one pass over /proc: pid -> stat fields
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                stats[int(entry.name)] = fields
                children.setdefault(int(fields[1]), []).append(int(entry.name))
        family, todo = [], list(self.roots)
        while todo:
            pid = todo.pop()
            family.append(pid)
            todo.extend(children.get(pid, []))
        running = 0
        for pid in family:
            stat = stats.get(pid)
            if stat is None:
                continue
            key = (pid, int(stat[19]))
            kind = self.cpu.get(key, (None,))[0]
            if kind is None:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                kind = next((k for k in KINDS if k.encode() in cmdline), None)
                if kind is None:
                    continue
            seconds = (int(stat[11]) + int(stat[12])) / _TICK
            old = self._before is None or key in self._before
            first = self.cpu.get(key, (kind, seconds if old else 0.0, 0.0))[1]
            self.cpu[key] = (kind, first, seconds)
            running += kind == "flwr-clientapp" and stat[0] != "Z"
        self.most_clientapps = max(self.most_clientapps, running)
        if self.limit is not None and running > self.limit and not self.exceeded:
            self.exceeded = running
            if self.on_excess is not None:
                self.on_excess()
        if self._before is None:
            self._before = set(self.cpu)

    def figures(self) -> dict[str, float]:
        out: dict[str, float] = {"most_clientapps_at_once": self.most_clientapps}
        for kind in KINDS:
            spans = [last - first for k, first, last in self.cpu.values() if k == kind]
            out[f"{kind}_cpu_s"] = sum(spans)
            out[f"{kind}_processes"] = len(spans)
        starts = out["flwr-clientapp_processes"]
        out["cpu_s_per_clientapp"] = out["flwr-clientapp_cpu_s"] / starts if starts else 0.0
        return out


APPS = "benchmarks.secagg_loopback_apps"  # the ClientApps
SERVERS = "benchmarks.secagg_loopback_servers"  # the ServerApps
VARIANTS = {
    "flower": ("flower_server", "flower_client", "flower-secaggplus", {}),
    "aggkit": (
        "aggkit_server",
        "aggkit_client",
        "aggkit-honest-but-curious",
        {"secagg-mode": "honest-but-curious"},
    ),
    "aggkit-auth": (
        "aggkit_server",
        "aggkit_client",
        "aggkit-authenticated",
        {"secagg-mode": "authenticated"},
    ),
    "aggkit-22": (
        "aggkit_server",
        "aggkit_client",
        "aggkit-honest-but-curious-22-bit",
        {"secagg-mode": "honest-but-curious", "code-bits": 22},
    ),
}


def write_variant_app(
    directory: Path,
    variant: str,
    nodes: int,
    rounds: int,
    out: Path,
    registry: Path,
    *,
    profile: bool = False,
    warm_up: str = "local",
):
    """The app directory of one variant: its components and run config."""
    server, client, _, extra = VARIANTS[variant]
    app_keys = {k.replace("-", "_"): v for k, v in extra.items() if k in RUN_CONFIG}
    path = write_app(
        directory,
        name=f"secagg-loopback-{variant}",
        aggregator="secure",
        clients=nodes,
        clients_per_round=nodes,
        rounds=rounds,
        out=str(out),
        **app_keys,
    )
    text = path.read_text()
    text = text.replace("aggkit_torch.flower.server_app:app", f"{SERVERS}:{server}")
    text = text.replace("aggkit_torch.flower.client_app:app", f"{APPS}:{client}")
    keys = {
        "nodes": nodes,
        "profile": int(profile),
        "warm-up": warm_up,
        "secagg-registry": str(registry),
        "secagg-mode": "",
        **{k: v for k, v in extra.items() if k not in RUN_CONFIG},
    }
    text += "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items())
    path.write_text(text)
    return directory


def identities(directory: Path, nodes: int) -> tuple[Path, dict[int, str]]:
    """A registry file and one identity file per partition."""
    from aggkit.secure.identity import IdentityRegistry, SigningIdentity

    keys = {p: SigningIdentity.generate() for p in range(nodes)}
    paths = {}
    for p, key in keys.items():
        paths[p] = str(directory / f"node{p}.key")
        key.save(paths[p])
    registry = directory / "registry.json"
    IdentityRegistry.of(keys).save(registry)
    return registry, paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="SuperNodes (default: 20)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds per run (default: 3; the per-round figure is the median round after the "
        "first, which also pays one-off costs)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed runs of each variant, alternating (default: 2)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["flower", "aggkit", "aggkit-auth"],
        choices=list(VARIANTS),
        help="what to run (default: flower aggkit aggkit-auth)",
    )
    parser.add_argument(
        "--warm-up",
        choices=["local", "round", "none"],
        default="local",
        help="how each server process warms up before its timed rounds: 'local' (the same "
        "imports and kernels without the nodes; default), 'round' (one real untimed round), "
        "'none'",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--profile", type=Path, help="save each server's cProfile stats in this directory"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per flwr run")
    parser.add_argument(
        "--max-clientapps",
        type=int,
        help="stop the federation when more flwr-clientapp processes than this run at once "
        "(default: 3 per node): a SuperNode relaunches a task whose ClientApp has not started "
        "within 30 s, and on an overloaded machine that cascades",
    )
    args = parser.parse_args(argv)

    # The SuperNodes' ClientApps import this repository's benchmarks package.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registry, keys = identities(tmp, args.nodes)
        node_config = {p: f'secagg-key="{keys[p]}"' for p in range(args.nodes)}
        with Federation(tmp / "flwr", args.nodes, node_config=node_config) as federation:
            # Alternating, and in reverse order every other repeat (A B, B A, ...), so that a
            # drift of the machine's load over the run does not favour one variant.
            schedule = [
                (r, v)
                for r in range(args.repeats)
                for v in (args.variants if r % 2 == 0 else args.variants[::-1])
            ]
            for repeat, variant in schedule:
                out = tmp / f"out-{repeat}-{variant}"
                app = write_variant_app(
                    tmp / f"app-{variant}",
                    variant,
                    args.nodes,
                    args.rounds,
                    out,
                    registry,
                    profile=args.profile is not None,
                    warm_up=args.warm_up,
                )
                start, load_start = time.perf_counter(), os.getloadavg()[0]
                roots = [process.pid for process in federation.processes]
                limit = args.max_clientapps or 3 * args.nodes
                with ProcessMonitor(roots, limit=limit, on_excess=federation.stop) as monitor:
                    done = federation.run(app, f"nodes={args.nodes}", timeout=args.timeout)
                result = out / f"{VARIANTS[variant][2]}.json"
                if monitor.exceeded or done.returncode != 0 or not result.exists():
                    seen = json.dumps(monitor.figures(), indent=1)
                    why = (
                        f"{monitor.exceeded} flwr-clientapp processes at once (limit {limit}): "
                        "the federation was stopped"
                        if monitor.exceeded
                        else (done.stdout + done.stderr)[-4000:]
                    )
                    raise RuntimeError(
                        f"{variant} failed after {time.perf_counter() - start:.0f} s at load "
                        f"{os.getloadavg()[0]:.1f}: {why}\nprocesses: {seen}\n" + federation.tail()
                    )
                figures = json.loads(result.read_text())
                figures["load_average"] = os.getloadavg()[0]
                figures["load_average_start"] = load_start
                figures.update({f"processes.{k}": v for k, v in monitor.figures().items()})
                print(
                    f"{repeat} {variant}: server CPU {figures['server_cpu_s_per_round']:.3f} s "
                    f"per round after the first (rounds: "
                    + ", ".join(f"{c:.3f}" for c in figures["round_cpu_s"])
                    + f"; push {figures['push_cpu_s_per_round']:.3f} s, pull "
                    f"{figures['pull_cpu_s_per_round']:.3f} s in {figures['pulls_per_round']:.1f} "
                    f"pulls per round), wall {figures['wall_s_per_round']:.1f} s per round "
                    f"({time.perf_counter() - start:.0f} s run, "
                    f"load {load_start:.1f} -> {figures['load_average']:.1f}); after the "
                    f"first round: strategy {figures['strategy_cpu_s_after_first']:.3f} s, push "
                    f"{figures['push_cpu_s_after_first']:.3f} s, pull "
                    f"{figures['pull_cpu_s_after_first']:.3f} s in "
                    f"{figures['pulls_after_first']:.0f} pulls, other threads "
                    f"{figures['other_threads_cpu_s_after_first']:.3f} s; threads "
                    + json.dumps({k: round(v, 2) for k, v in figures["thread_cpu_s"].items()}),
                    flush=True,
                )
                print(
                    f"{repeat} {variant} processes: "
                    + json.dumps({k[10:]: v for k, v in figures.items() if k[:10] == "processes."}),
                    flush=True,
                )
                results[variant].append(figures)
                if args.json:  # what is done so far, should a later variant fail
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.with_suffix(".partial.json").write_text(json.dumps(results))
                if args.profile is not None and (out / f"{VARIANTS[variant][2]}.prof").exists():
                    args.profile.mkdir(parents=True, exist_ok=True)
                    (out / f"{VARIANTS[variant][2]}.prof").replace(
                        args.profile / f"{repeat}-{variant}.prof"
                    )

    summary = {"nodes": args.nodes, "rounds": args.rounds, "repeats": args.repeats, "variants": {}}
    for variant, runs in results.items():
        summary["variants"][variant] = {
            key: statistics.median(r[key] for r in runs)
            for key in runs[0]
            if isinstance(runs[0][key], (int, float))
        }
    for variant, runs in results.items():
        # Every round after the first, of every repeat: the spread behind the median.
        steady = sorted(c for r in runs for c in r["round_cpu_s"][1:])
        summary["variants"][variant]["steady_round_cpu_s"] = steady
        summary["variants"][variant]["each_run_server_cpu_s"] = [
            r["server_cpu_s_per_round"] for r in runs
        ]
    if "flower" in results:
        for key, name in [
            ("server_cpu_s_per_round", "flower_over_this_server_cpu"),
            ("mean_cpu_s_per_round", "flower_over_this_mean_cpu"),
        ]:
            flower = [r[key] for r in results["flower"]]
            for variant in set(results) - {"flower"}:
                ours = [r[key] for r in results[variant]]
                ratios = [f / o for f, o in zip(flower, ours, strict=True)]  # paired by repeat
                summary["variants"][variant][name] = statistics.median(ratios)
                summary["variants"][variant][f"{name}_each_repeat"] = ratios
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
