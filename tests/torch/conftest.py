"""Shared fixtures for the aggkit_torch tests; the folder is skipped without PyTorch."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("torch") is None:  # pragma: no cover - depends on the install
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/torch/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.torch)


@pytest.fixture(scope="session")
def mnist_root():
    """The directory holding MNIST/raw/ (see aggkit_torch.data.find_mnist_root), or skip."""
    from aggkit_torch.data import find_mnist_root

    try:
        return find_mnist_root()
    except FileNotFoundError as e:
        pytest.skip(f"real MNIST files not available: {e}")


@pytest.fixture(scope="session")
def mnist(mnist_root):
    """The real MNIST, loaded once for the session."""
    from aggkit_torch.data import load_mnist

    return load_mnist(mnist_root)
