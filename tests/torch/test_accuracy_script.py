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
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
