"""Secure aggregation over Flower: the secure apps against AggkitStrategy + MaskingBackend.

In-process (the grid hands messages to the ClientApp, nodes die at chosen protocol stages) and
between real processes (a SuperLink and SuperNodes on 127.0.0.1; two SuperNodes are killed in
round 1, one before it sends its masked input, one after). Both must end with the model of the
in-process reference run with the same seeds and dropouts.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")
pytest.importorskip("cryptography")

from aggkit.secure.identity import IdentityRegistry, SigningIdentity
from tests.flower import reference
from tests.flower.secure_reference import DyingGrid, masked_reference_run

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = 6
#: Partition 1 dies before sending its masked input, partition 4 after (round 1 of 2).
DEATHS = {1: (1, "masked_input"), 4: (1, "consistency_check")}


def identities(tmp_path, count: int) -> tuple[dict[int, str], str]:
    """An identity file per partition and the registry file."""
    keys, paths = {}, {}
    for p in range(count):
        keys[p] = SigningIdentity.generate()
        paths[p] = str(tmp_path / f"node{p}.key")
        keys[p].save(paths[p])
    registry = tmp_path / "registry.json"
    IdentityRegistry.of(keys).save(registry)
    return paths, str(registry)


def secure_config(mnist_root, tmp_path, registry: str, rounds: int = 2):
    return reference.run_config(
        NODES,
        NODES,
        rounds=rounds,
        threads=1,
        data=str(mnist_root),
        out=str(tmp_path / "out"),
        aggregator="secure",
        **{"fraction-evaluate": 0.0, "secagg-registry": registry, "secagg-stage-timeout": 120.0},
    )


def assert_same_model(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> float:
    assert sorted(ours) == sorted(theirs)
    worst = 0.0
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        worst = max(worst, float(np.abs(ours[name] - value).max()))
    return worst


@pytest.mark.mnist
def test_secure_apps_in_process_equal_masking_backend_with_dropouts(mnist_root, tmp_path):
    from aggkit_torch.flower import secure_apps, server_app

    keys, registry = identities(tmp_path, NODES)
    config = secure_config(mnist_root, tmp_path, registry)
    nodes = {100 + i: {"partition-id": i, "num-partitions": NODES} for i in range(NODES)}
    secure_nodes = {n: {**c, "secagg-key": keys[c["partition-id"]]} for n, c in nodes.items()}
    grid = DyingGrid(secure_apps.client_app, secure_nodes, config, DEATHS)
    summary = server_app.run(grid, config, strategy_class=secure_apps.secure_strategy(config))
    ours = dict(np.load(tmp_path / "out" / "model.npz"))
    assert [h["clients"] for h in summary["history"]] == [[0, 2, 3, 4, 5], [0, 2, 3, 5]]

    config["out"] = str(tmp_path / "reference")
    expected = masked_reference_run(nodes, config, DEATHS)
    theirs = dict(np.load(tmp_path / "reference" / "model.npz"))
    assert [sorted(h["clients"]) for h in expected["history"]] == [
        [0, 1, 2, 3, 4, 5],
        [0, 2, 3, 5],
    ]
    for a, b in zip(summary["history"], expected["history"], strict=True):
        assert a["measurements"] == b["measurements"]
    assert assert_same_model(ours, theirs) == 0.0  # same process, same bits
