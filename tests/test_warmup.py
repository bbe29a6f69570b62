"""``python -m aggkit warmup`` fills the kernel disk cache; ``benchmarks/coldstart.py`` measures
the first round without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A mean round in a fresh process: which aggkit kernels compiled, and how many loaded from disk.
_ROUND = """
import json, numpy as np, aggkit as ak
from numba.core import event
compiled = []

class Listener(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        func = getattr(ev.data["dispatcher"], "py_func", None)
        if func is not None and func.__module__.startswith("aggkit."):
            compiled.append(func.__qualname__)

event.register("numba:compile", Listener())
process = ak.mean().create(ak.TensorSpec((3000,), np.float32))
values = np.random.default_rng(1).normal(size=(7, 3000)).astype(np.float32)
process.next(process.initialize(), values, np.arange(1.0, 8.0))
hits = 0
from aggkit import kernels
from numba.core.dispatcher import Dispatcher
for module in list(vars(kernels).values()):
    if getattr(module, "__name__", "").startswith("aggkit.kernels."):
        for obj in list(vars(module).values()):
            if isinstance(obj, Dispatcher):
                hits += sum(obj.stats.cache_hits.values())
print(json.dumps({"compiled": compiled, "cache_hits": hits}))
"""


def _env(cache_dir: Path) -> dict[str, str]:
    return dict(
        os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(cache_dir), AGGKIT_NUMBA_CACHE="1"
    )


@pytest.mark.slow
def test_warmup_fills_the_cache_so_that_a_new_process_compiles_nothing(tmp_path):
    cache = tmp_path / "numba-cache"
    env = _env(cache)
    cold = json.loads(
        subprocess.run(
            [sys.executable, "-c", _ROUND],
            env=_env(tmp_path / "empty"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert cold["compiled"] and cold["cache_hits"] == 0  # the probe can see compilation

    done = subprocess.run(
        [sys.executable, "-m", "aggkit", "warmup", "--presets", "mean"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "warmed mean" in done.stdout
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))

    warm = json.loads(
        subprocess.run(
            [sys.executable, "-c", _ROUND],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert warm["compiled"] == []
    assert warm["cache_hits"] > 0


def test_warmup_rejects_an_unknown_preset():
    from aggkit.warmup import warmup

    with pytest.raises(ValueError, match="unknown preset 'median'"):
        warmup(["mean", "median"])


@pytest.mark.slow
def test_coldstart_script_reports_a_tiny_first_round(tmp_path, capsys):
    from benchmarks import coldstart

    out_file = tmp_path / "out.json"
    coldstart.main(
        ["--presets", "mean", "--clients", "3", "--size", "100", "--json", str(out_file)]
    )
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["preset", "round", "wall"]
    (result,) = json.loads(out_file.read_text())
    assert result["preset"] == "mean"
    assert result["compiles"], "an empty cache must compile the mean's kernels"
    assert 0 < result["compile total"] <= result["first round wall"]
    assert result["process cpu"] > 0
