"""Every Python block of the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_readme_has_python_blocks():
    assert BLOCKS


def test_ci_runs_exactly_the_readme_test_command():
    """`.ci/run` runs the README's "Run the tests" command, character for character (an extra
    added to one and not the other once left CI without torchvision)."""
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    test_command = [c for c in commands if c.rstrip().endswith("-m pytest")]
    assert len(test_command) == 1, test_command
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert test_command[0].strip() in [line.strip() for line in ci]
