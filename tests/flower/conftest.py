"""Shared fixtures for the Flower tests: MNIST (tests/torch's fixtures) and message identity."""

from __future__ import annotations

import pytest

from tests.torch.conftest import mnist, mnist_root  # noqa: F401  (fixtures)

# Helpers, not tests; local_grid.py needs flwr, and --doctest-modules would import it even where
# the tests that use it are skipped.
collect_ignore = ["local_grid.py", "secure_crash_app.py", "secure_reference.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/flower/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.torch)


@pytest.fixture
def task_identity():
    """Let this process create Flower messages, as a ServerApp process can."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
