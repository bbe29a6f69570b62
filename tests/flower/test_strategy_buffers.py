"""AggkitStrategy with a BatchNorm model's state: buffers, FedBN, integer and mixed dtypes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import aggkit as ak
from aggkit_torch.federated import FedAvgConfig
from aggkit_torch.flower.strategy import AggkitStrategy
from tests.flower.test_strategy import (
    _answering_partition_queries,
    _arrays,
    _grid,
    _numpy,
    _run_round,
)

pytestmark = pytest.mark.usefixtures("task_identity")

STATE = {
    "fc.weight": np.array([1.0, -2.0, 0.5], np.float32),
    "bn.weight": np.array([1.0, 1.0], np.float16),
    "bn.running_mean": np.array([0.0, 0.0], np.float32),
    "bn.running_var": np.array([1.0, 1.0], np.float64),
    "bn.num_batches_tracked": np.array(0, np.int64),
}
EXAMPLES = {p: 10 * (p + 1) for p in range(4)}  # weights 1 : 2 : 3 : 4


def _trained(partition: int, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What partition p sends back: distinct statistics and a larger batch count."""
    received = {k: np.asarray(v) for k, v in received.items()}
    p = float(partition)
    trained = {
        "fc.weight": received["fc.weight"] + np.array([p, -p, 1.0], np.float32),
        "bn.weight": received["bn.weight"] + np.float16(0.25 * p),
        "bn.running_mean": np.array([3.0 + p, -p], np.float32),
        "bn.running_var": np.array([2.0 + p * p, 0.5], np.float64),
        "bn.num_batches_tracked": received["bn.num_batches_tracked"] + 7 + partition,
    }
    return {k: v.astype(received[k].dtype) for k, v in trained.items()}  # the received dtypes


def _app(drop_key: str | None = None) -> ClientApp:
    app = _answering_partition_queries()

    @app.train()
    def train(message: Message, context) -> Message:
        partition = context.node_config["partition-id"]
        received = {k: a.numpy() for k, a in message.content["arrays"].items()}
        trained = _trained(partition, received)
        if drop_key is not None and partition == 1:
            del trained[drop_key]
        metrics = MetricRecord({"num-examples": EXAMPLES[partition]})
        return Message(
            RecordDict({"arrays": _arrays(trained), "metrics": metrics}), reply_to=message
        )

    return app


def _mean(key: str, received: dict[str, np.ndarray]) -> np.ndarray:
    weights = np.array([EXAMPLES[p] for p in range(4)], np.float64)
    values = np.stack([_trained(p, received)[key].astype(np.float64) for p in range(4)])
    return np.tensordot(weights / weights.sum(), values, axes=1)


def _strategy(**config) -> AggkitStrategy:
    settings = {"clients_per_round": 4, "seed": 3, "client_weighting": "num_examples", **config}
    return AggkitStrategy(ak.mean(), FedAvgConfig(**settings), fraction_evaluate=0.0)


def test_buffers_are_the_weighted_mean_counters_the_servers_dtypes_kept():
    strategy = _strategy(server_momentum=0.9)
    grid = _grid(_app())
    arrays = _arrays(STATE)
    for server_round in (1, 2):
        received = _numpy(arrays)
        arrays, metrics = _run_round(strategy, grid, server_round, arrays)
        assert metrics["committed"] == 1 and metrics["dropped-clients"] == 0
        out = _numpy(arrays)
        assert list(out) == list(STATE)  # the record's order and every dtype are the global's
        assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in STATE.items()}
        # Buffers: the clients' weighted mean each round, whatever the server momentum does.
        np.testing.assert_allclose(
            out["bn.running_mean"], _mean("bn.running_mean", received), rtol=1e-6
        )
        np.testing.assert_allclose(
            out["bn.running_var"], _mean("bn.running_var", received), rtol=1e-12
        )
        # The batch counter stays the server's own, whatever the clients report.
        assert out["bn.num_batches_tracked"] == 0
    # Parameters took the momentum step: round 2 moved by 0.9 * u1 + u2, not by u2 alone.
    u = -np.array([2.0, -2.0, 1.0])  # the weighted mean update of fc.weight: global - trained
    np.testing.assert_allclose(out["fc.weight"], STATE["fc.weight"] - u - (0.9 * u + u), rtol=1e-6)
    np.testing.assert_allclose(
        out["bn.weight"].astype(np.float64), 1.0 + 0.25 * 2.0 * (1 + 1.9), rtol=2**-10
    )


def test_fedbn_leaves_the_servers_buffers_untouched():
    strategy = _strategy(buffers="local")
    arrays, metrics = _run_round(strategy, _grid(_app()), 1, _arrays(STATE))
    out = _numpy(arrays)
    assert metrics["committed"] == 1
    for key in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        np.testing.assert_array_equal(out[key], STATE[key])
        assert out[key].dtype == STATE[key].dtype
    np.testing.assert_allclose(out["fc.weight"], _mean("fc.weight", STATE), rtol=1e-6)
    assert strategy.layout.paths == ("['fc.weight']", "['bn.weight']")


def test_explicit_buffer_keys():
    strategy = AggkitStrategy(
        ak.mean(),
        FedAvgConfig(clients_per_round=4, buffers="local", client_weighting="num_examples"),
        fraction_evaluate=0.0,
        buffer_keys=["bn.running_mean"],
    )
    arrays, _ = _run_round(strategy, _grid(_app()), 1, _arrays(STATE))
    out = _numpy(arrays)
    np.testing.assert_array_equal(out["bn.running_mean"], STATE["bn.running_mean"])
    np.testing.assert_allclose(out["bn.running_var"], _mean("bn.running_var", STATE), rtol=1e-12)


def test_a_reply_without_the_counter_is_dropped():
    strategy = _strategy()
    arrays, metrics = _run_round(strategy, _grid(_app("bn.num_batches_tracked")), 1, _arrays(STATE))
    assert metrics["dropped-clients"] == 1 and metrics["committed"] == 1
    [dropped] = strategy.history[0]["dropped"]
    assert dropped["client"] == 1 and "keys" in dropped["reason"]
    assert isinstance(arrays, ArrayRecord)


def test_replies_of_a_float32_model_with_a_counter_are_decoded_in_place(monkeypatch):
    """A BatchNorm model's record (float32 arrays and an int64 counter): the kept counter does
    not send the replies down the general decoding path (Array.numpy per array)."""
    from flwr.app import Array

    state = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in STATE.items()}
    strategy = _strategy()
    grid = _grid(_app())
    messages = list(strategy.configure_train(1, _arrays(state), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    decoded = []
    original = Array.numpy

    def counting(self):
        decoded.append(1)
        return original(self)

    monkeypatch.setattr(Array, "numpy", counting)
    arrays, metrics = strategy.aggregate_train(1, replies)
    monkeypatch.undo()
    assert metrics["committed"] == 1 and decoded == []
    out = _numpy(arrays)
    np.testing.assert_allclose(out["bn.running_var"], _mean("bn.running_var", state), rtol=1e-6)
    assert out["bn.num_batches_tracked"] == 0
