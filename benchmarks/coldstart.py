"""Cold start: each preset's first round in a fresh process, with an empty kernel cache.

A new user, a CI job or a container meets aggkit with no compiled kernels on disk: the first round
compiles every kernel the composition uses. This script runs that first round for each preset in a
new interpreter with ``AGGKIT_NUMBA_CACHE=0`` (numba's disk cache off, so nothing is loaded and
nothing is written) and reports, per preset:

* the first round's wall time and CPU time (CPU time counts every thread of the process; on a
  machine shared with other work it is the steadier figure of the two),
* the whole process's wall and CPU time (interpreter start, imports, the round), and the CPU
  time of ``import numba`` (before the round, not part of it),
* the compile time of each kernel, from numba's own event API (``numba:compile`` events): the
  inclusive time of each dispatcher's compilation of one signature, and its self time (inclusive
  minus the kernels it compiled on the way, such as helpers it calls), as CPU time of the
  compiling thread and as wall time. The first kernel compiled also pays numba's one-time set-up
  (its typing and lowering registries, and with SciPy installed an ``import scipy.linalg`` for
  numba's BLAS bindings: about 0.4 s of CPU together), so its figure is not its own alone.

``--warm`` runs the same with the disk cache on (filled by a first, unreported run) instead: the
figure a user meets once ``python -m aggkit warmup`` has run.

The default shape is the one of the issue tracker's figures, 100 clients x 431,080 float32::

    python benchmarks/coldstart.py
    python benchmarks/coldstart.py --presets mean robust --clients 10 --size 10000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]

#: The presets a user meets first, by the name used on the command line (and by
#: ``python -m aggkit warmup``).
PRESETS = ("mean", "robust", "dp", "compression", "secure")

#: The issue tracker's goals for the first round's CPU time with an empty cache (seconds).
GOALS = {"mean": 1.5, "robust": 2.5, "dp": 2.5, "compression": 2.5, "secure": 2.5}

# Runs in the fresh process: argv = preset, clients, size. Prints one JSON line.
_PROBE = r"""
import json, sys, time
preset, clients, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wall0, cpu0 = time.perf_counter(), time.process_time()
import numpy as np
import aggkit as ak
from aggkit.warmup import preset_factory
factory = preset_factory(preset)
spec = ak.TensorSpec((size,), np.float32)
process = factory.create(spec)
state = process.initialize()
rng = np.random.default_rng(0)
values = rng.normal(0.0, 1e-3, (clients, size)).astype(np.float32)
weights = np.ones(clients) if factory.is_weighted else None
numba_cpu0 = time.process_time()
import numba  # noqa: E402 - after the data, so the compile listener sees every kernel
from numba.core import event
numba_cpu = time.process_time() - numba_cpu0

compiles = []
stack = []

class Listener(event.Listener):
    def on_start(self, ev):
        stack.append([time.perf_counter(), time.thread_time(), 0.0, 0.0])

    def on_end(self, ev):
        start, cpu_start, nested, nested_cpu = stack.pop()
        took = time.perf_counter() - start
        cpu = time.thread_time() - cpu_start
        if stack:
            stack[-1][2] += took
            stack[-1][3] += cpu
        dispatcher = ev.data["dispatcher"]
        name = getattr(dispatcher, "py_func", dispatcher).__qualname__
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "?")
        compiles.append({
            "kernel": f"{module.rsplit('.', 1)[-1]}.{name}",
            "signature": str(ev.data.get("args")),
            "inclusive": took,
            "self": took - nested,
            "cpu inclusive": cpu,
            "cpu self": cpu - nested_cpu,
            "depth": len(stack),
        })

event.register("numba:compile", Listener())
round_wall0, round_cpu0 = time.perf_counter(), time.process_time()
process.next(state, values, weights)
round_wall, round_cpu = time.perf_counter() - round_wall0, time.process_time() - round_cpu0
second0 = time.perf_counter()
process.next(state, values, weights)
second = time.perf_counter() - second0
print(json.dumps({
    "preset": preset,
    "first round wall": round_wall,
    "first round cpu": round_cpu,
    "second round wall": second,
    "compile total": sum(c["inclusive"] for c in compiles if c["depth"] == 0),
    "compile cpu": sum(c["cpu inclusive"] for c in compiles if c["depth"] == 0),
    "import numba cpu": numba_cpu,
    "compiles": compiles,
}))
"""


def _revision() -> str:
    """The source tree's short git revision (``+`` when ``aggkit/`` has uncommitted changes)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "aggkit"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return (rev or "?") + ("+" if dirty else "")


def run_one(preset: str, clients: int, size: int, warm: bool) -> dict:
    """Run :data:`_PROBE` for ``preset`` in a new interpreter; its result plus process totals."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    env["AGGKIT_NUMBA_CACHE"] = "1" if warm else "0"
    command = [sys.executable, "-c", _PROBE, preset, str(clients), str(size)]
    if warm:  # fill the disk cache first
        subprocess.run(command, env=env, capture_output=True, check=True, cwd=_ROOT)
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=_ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{preset}: the probe failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = [load, os.getloadavg()[0]]  # 1-minute load average before and after
    result["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() - wall))
    result["revision"] = _revision()
    result["process wall"] = wall
    result["process cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def report(results: list[dict], kernels: bool) -> str:
    """A plain-text table of the results (seconds), and per-kernel compile times if asked."""
    lines = [
        f"{'preset':<12}{'round wall':>11}{'round cpu':>10}{'compile':>9}{'compile cpu':>12}"
        f"{'process wall':>13}{'process cpu':>12}{'2nd round':>10}{'import numba cpu':>17}"
        f"{'load':>12}"
    ]
    for r in results:
        lines.append(
            f"{r['preset']:<12}{r['first round wall']:>11.2f}{r['first round cpu']:>10.2f}"
            f"{r['compile total']:>9.2f}{r['compile cpu']:>12.2f}"
            f"{r['process wall']:>13.2f}{r['process cpu']:>12.2f}"
            f"{r['second round wall']:>10.3f}{r.get('import numba cpu', float('nan')):>17.2f}"
            f"{'{:.1f}-{:.1f}'.format(*r['load']) if 'load' in r else '':>12}"
        )
    if kernels:
        for r in results:
            lines.append(
                f"\n{r['preset']}: kernel compile times (s; CPU of the compiling thread, and "
                "wall), largest CPU self time first"
            )
            for c in sorted(r["compiles"], key=lambda c: -c["cpu self"]):
                lines.append(
                    f"  cpu {c['cpu self']:5.2f} self {c['cpu inclusive']:5.2f} incl  "
                    f"wall {c['self']:6.2f} self {c['inclusive']:6.2f} incl  "
                    f"{c['kernel']}{c['signature']}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--clients", type=int, default=100, help="clients per round (K)")
    parser.add_argument("--size", type=int, default=431_080, help="float32 values per client")
    parser.add_argument("--warm", action="store_true", help="disk cache on and filled first")
    parser.add_argument("--no-kernels", action="store_true", help="omit per-kernel times")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    results = [run_one(p, args.clients, args.size, args.warm) for p in args.presets]
    print(report(results, kernels=not args.no_kernels))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
