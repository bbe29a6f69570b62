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
    """The directory holding MNIST/raw/, given explicitly by ``$AGGKIT_DATA``, or skip.

    Tests never download and never guess a location: without the variable they skip; with it
    set to a directory that lacks the files they fail (a misconfigured run must not pass).
    """
    import os

    from aggkit_torch.data import ENV_VAR, find_mnist_root

    location = os.environ.get(ENV_VAR)
    if not location:
        pytest.skip(
            f"needs the real MNIST files: set {ENV_VAR} to the directory holding MNIST/raw/"
        )
    try:
        return find_mnist_root(location)
    except FileNotFoundError as e:
        pytest.fail(f"{ENV_VAR}={location} does not hold MNIST: {e}")


@pytest.fixture(scope="session")
def mnist(mnist_root):
    """The real MNIST, loaded once for the session."""
    from aggkit_torch.data import load_mnist

    return load_mnist(mnist_root)
