"""The two example scripts: the federated script is the plain one changed in at most ten lines.

That both run and learn is checked by ``tests/test_docs.py`` (the federated MNIST tutorial runs
them for its transcript), so the suite trains each only once."""

from __future__ import annotations

import difflib
from pathlib import Path

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
