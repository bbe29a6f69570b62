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

# Records the names of the aggkit kernels that compile.
_LISTENER = """
from numba.core import event
compiled = []
internal = []  # numba's own implementations compiled on the way (np.empty's, say)

class Listener(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        func = getattr(ev.data["dispatcher"], "py_func", None)
        if func is not None and func.__module__.startswith("aggkit."):
            compiled.append(func.__qualname__.rsplit(".", 1)[-1])
        elif func is not None:
            internal.append(func.__module__ + "." + func.__qualname__)

event.register("numba:compile", Listener())
"""

# A mean round in a fresh process: which aggkit kernels compiled, and how many loaded from disk.
_ROUND = (
    """
import json, numpy as np, aggkit as ak
"""
    + _LISTENER
    + """
process = ak.mean().create(ak.TensorSpec((3000,), np.float32))
values = np.random.default_rng(1).normal(size=(7, 3000)).astype(np.float32)
process.next(process.initialize(), values, np.arange(1.0, 8.0))
import gc
from numba.core.dispatcher import Dispatcher
hits = 0  # every aggkit kernel, module-level or made by a factory (a case of a closure)
for obj in gc.get_objects():
    if isinstance(obj, Dispatcher) and obj.py_func.__module__.startswith("aggkit.kernels."):
        hits += sum(obj.stats.cache_hits.values())
print(json.dumps({"compiled": compiled, "cache_hits": hits}))
"""
)


def _env(cache_dir: Path) -> dict[str, str]:
    return dict(
        os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(cache_dir), AGGKIT_NUMBA_CACHE="1"
    )


def _json_of(script: str, env: dict[str, str]):
    """What ``script`` prints as JSON, run in a fresh interpreter with ``env``."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.slow
def test_warmup_fills_the_cache_so_that_a_new_process_compiles_nothing(tmp_path):
    cache = tmp_path / "numba-cache"
    env = _env(cache)
    cold = _json_of(_ROUND, _env(tmp_path / "empty"))
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

    warm = _json_of(_ROUND, env)
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


# Rounds of compression_aggregator() and secure_aggregator() in a fresh process with an empty
# cache: which aggkit kernels compiled, first for 8 clients and one quantized tensor, then for 7
# clients and a small tensor beside it.
_PATHS = (
    """
import json, numpy as np, aggkit as ak
"""
    + _LISTENER
    + """
rng = np.random.default_rng(2)
found = []
for clients, sizes in ((8, (30000,)), (7, (30000, 10))):
    for factory in (ak.compression_aggregator(), ak.secure_aggregator()):
        process = factory.create([ak.TensorSpec((s,), np.float32) for s in sizes])
        values = [
            [rng.normal(0, 1e-3, s).astype(np.float32) for s in sizes] for _ in range(clients)
        ]
        weights = np.ones(clients) if factory.is_weighted else None
        process.next(process.initialize(), values, weights)
    found.append(compiled[:])
    compiled.clear()
from aggkit.kernels import discretize, quantize
helpers = (discretize._code_fast, discretize._code_general)
codes = [h.py_func.__qualname__ for h in helpers for _ in h.signatures]
helpers = (quantize._chunk_words16, quantize._chunk_words32)
words = [h.py_func.__qualname__ for h in helpers for _ in h.signatures]
print(json.dumps([found, codes, words, internal]))
"""
)


@pytest.mark.slow
def test_a_round_compiles_only_the_kernel_paths_it_takes():
    env = dict(os.environ, PYTHONPATH=str(ROOT), AGGKIT_NUMBA_CACHE="0")
    (first, second), codes, words, internal = _json_of(_PATHS, env)
    # Four active rows at a time, every tensor quantized with 16-bit uniforms, the fast code.
    assert "_quantized_row_sum_u16" in first and "_discretize_float" in first
    for unused in ("_accumulate_levels", "_accumulate_exact", "_chunk_words32", "_code_general"):
        assert unused not in first
    # One form of the secure sum's code and the random-word helper of the one uniform width
    # used, each from its closure factory (not a helper taking a flag, whose branches numba
    # would type and lower both).
    assert codes == ["_code_fast"] and first.count("_code_fast") == 1
    assert words == ["_chunk_words16"]
    # The kernels allocate nothing (their scratch comes from run_tasks): no np.empty or
    # np.zeros implementation of numba's compiles, nor anything else of numba's own.
    assert internal == []
    # Three rows left over and a tensor summed exactly: the kernels with those paths.
    assert "_quantized_row_sum_u16_rem_exact" in second and "_discretize_float_rem" in second
    assert "_accumulate_levels" in second and "_accumulate_exact" in second
