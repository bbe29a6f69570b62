"""The two example scripts: the federated script is the plain one changed in at most ten lines, and
both run."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _changed_lines(a: Path, b: Path) -> int:
    """Lines of ``b`` that are new or different compared with ``a``, plus lines only in ``a``."""
    old, new = a.read_text().splitlines(), b.read_text().splitlines()
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    changed = 0
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            changed += max(i2 - i1, j2 - j1)
    return changed


def test_federated_script_changes_at_most_ten_lines():
    changed = _changed_lines(EXAMPLES / "mnist_plain.py", EXAMPLES / "mnist_federated.py")
    assert 0 < changed <= 10


@pytest.mark.mnist
@pytest.mark.parametrize("script", ["mnist_plain.py", "mnist_federated.py"])
def test_example_runs_and_learns(script, mnist_root):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--epochs", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env={**os.environ, "AGGKIT_DATA": str(mnist_root)},
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("epoch 2: test accuracy")
    assert float(last.rsplit(" ", 1)[1]) > 0.5
