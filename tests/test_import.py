"""`import aggkit` stays cheap: NumPy only, no numba, nothing compiled."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_import_does_not_load_numba_or_optional_dependencies():
    heavy = ("numba", "llvmlite", "dp_accounting", "torch", "scipy", "cryptography")
    code = f"import sys, aggkit; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    assert _python(code) == ""


def test_kernels_load_on_first_use():
    code = (
        "import sys, numpy as np, aggkit as ak; "
        "p = ak.sum().create(ak.TensorSpec((2,), np.float32)); "
        "before = 'numba' in sys.modules; "
        "p.next((), [np.ones(2, np.float32)]); "
        "print(before, 'numba' in sys.modules)"
    )
    assert _python(code) == "False True"


def test_startup_benchmark_reports_each_step(capsys):
    """``python benchmarks/startup.py`` times fresh processes; one run here, for the table."""
    from benchmarks import startup

    startup.main(["--runs", "1"])
    out = capsys.readouterr().out
    for step in ("import aggkit", "first call", "of which import numba", "second call"):
        assert f"| {step} |" in out
