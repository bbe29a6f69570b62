"""The Byzantine-robust rules behind AggkitStrategy: the global model moves by the rule's result."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

import aggkit as ak
from tests.flower.test_strategy import GLOBAL, _grid, _numpy, _run_round, _scripted_app, _strategy
from tests.flower.test_strategy import _update as update

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.mark.parametrize(
    "factory, reduce",
    [
        (ak.median(), lambda u: np.median(u, axis=0)),
        (ak.trimmed_mean(0.25), lambda u: np.sort(u, axis=0)[1:3].mean(axis=0)),
        (ak.centered_clipping(100.0), lambda u: u.mean(axis=0)),  # nothing clipped
    ],
)
def test_rules_drive_the_strategy(factory, reduce):
    strategy = _strategy(factory, client_weighting="uniform")
    arrays, metrics = _run_round(strategy, _grid(_scripted_app()))
    assert metrics["clients"] == 4
    for key in GLOBAL:
        updates = np.stack([update(p)[key].astype(np.float64) for p in range(4)])
        expected = GLOBAL[key] - reduce(updates).astype(np.float32)
        np.testing.assert_allclose(_numpy(arrays)[key], expected, rtol=1e-6, atol=1e-7)


def test_krum_selects_one_clients_update():
    strategy = _strategy(ak.krum(0))
    arrays, _ = _run_round(strategy, _grid(_scripted_app()))
    moved = {k: GLOBAL[k] - _numpy(arrays)[k] for k in GLOBAL}
    assert any(all(np.array_equal(moved[k], update(p)[k]) for k in GLOBAL) for p in range(4))
