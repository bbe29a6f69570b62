"""``benchmarks/ab_revisions.py`` runs two source trees side by side and reports their ratio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ab_revisions_times_both_trees_and_cleans_up():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ab_revisions.py"),
            "--base",
            "HEAD",
            "--rounds",
            "2",
            "--presets",
            "probe,mean",
            "--clients",
            "4",
            "--values",
            "1000",
            "--pause",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Each worker imported its own tree: the base from the temporary worktree, the current here.
    assert "base/aggkit/__init__.py" in lines[0]
    assert str(ROOT / "aggkit" / "__init__.py") in lines[1]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("probe", "mean"))}
    assert set(rows) == {"probe", "mean"}
    assert float(rows["mean"][-1]) > 0
    worktrees = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "/base " not in worktrees


def test_ab_revisions_rejects_unknown_presets():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ab_revisions.py"),
            "--base",
            "HEAD",
            "--presets",
            "mean,nope",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "unknown presets ['nope']" in done.stderr
