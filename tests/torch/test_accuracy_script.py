"""The accuracy benchmark script runs end to end (quick mode) and writes its table and plot."""

from __future__ import annotations

import pytest


@pytest.mark.mnist
@pytest.mark.slow
def test_accuracy_script_quick(mnist_root, tmp_path):
    from benchmarks import accuracy_mnist

    accuracy_mnist.main(
        ["--quick", "--data", str(mnist_root), "--out", str(tmp_path), "--presets", "robust,dp"]
    )
    table = (tmp_path / "accuracy.md").read_text()
    assert "| robust |" in table and "| dp |" in table
    # The command line reproduces the run: quick mode's settings, and the presets asked for.
    assert "Command: `python benchmarks/accuracy_mnist.py --max-rounds 2 " in table
    assert "--presets robust,dp`" in table
    assert "](accuracy.png)" in table
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "script",
    ["accuracy_mnist.py", "bench_federated.py", "bench_torch_plain.py", "render.py", "startup.py"],
)
def test_benchmark_scripts_start_as_their_docstrings_run_them(script):
    """``python benchmarks/SCRIPT.py`` (not ``-m``): the way the docs tell people to run them."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / script
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
