"""``benchmarks/byzantine_cpu.py`` times the Byzantine rules against Flower's, one thread each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_byzantine_cpu_checks_flower_agrees_and_prints_a_ratio_per_rule():
    pytest.importorskip("flwr")
    script = ROOT / "benchmarks" / "byzantine_cpu.py"
    argv = ["--rounds", "1", "--clients", "12", "--values", "3000", "--rules", "krum,median"]
    done = subprocess.run(
        [sys.executable, str(script), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"krum", "median"}
    assert all(float(row[-1].rstrip("x")) > 0 for row in rows.values())
