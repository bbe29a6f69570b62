"""AggkitStrategy in-process: aggregation, weighting, bad replies, sampling, and the MNIST apps.

The Grid here hands messages straight to a ClientApp (``local_grid.py``); the same strategy
and apps run over a real SuperLink and in Flower's simulation engine in ``test_real_runs.py``.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

import aggkit as ak
from aggkit_torch.federated import FedAvgConfig, flatten_measurements
from aggkit_torch.flower.strategy import PARTITION_QUERY, AggkitStrategy
from tests.flower import reference
from tests.flower.local_grid import LocalGrid

pytestmark = pytest.mark.usefixtures("task_identity")

GLOBAL = {"w": np.array([1.0, -2.0, 0.5], np.float32), "b": np.array([[0.25, 4.0]], np.float32)}


def _arrays(structure) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in structure.items()})


def _update(partition: int) -> dict[str, np.ndarray]:
    """Client ``partition``'s update (global - trained), distinct per client."""
    return {
        "w": np.array([partition, 1.0 - partition, 0.5 * partition], np.float32),
        "b": np.array([[0.125 * partition, -1.0]], np.float32),
    }


def _answering_partition_queries() -> ClientApp:
    """A ClientApp that answers the partition query from its node config (add ``train``)."""
    app = ClientApp()

    @app.query("partition")
    def query(message: Message, context) -> Message:
        config = context.node_config
        record = MetricRecord(
            {"partition-id": config["partition-id"], "num-partitions": config["num-partitions"]}
        )
        return Message(RecordDict({"partition": record}), reply_to=message)

    return app


def _scripted_app(replies=None, *, examples=lambda p: 10 * (p + 1)) -> ClientApp:
    """A ClientApp whose node with partition p trains to ``global - _update(p)``.

    ``replies`` maps a partition to a function building its reply's (arrays, metrics) instead.
    """
    app = _answering_partition_queries()

    @app.train()
    def train(message: Message, context) -> Message:
        partition = context.node_config["partition-id"]
        received = {k: a.numpy() for k, a in message.content["arrays"].items()}
        trained = {k: received[k] - v for k, v in _update(partition).items()}
        metrics = {"num-examples": examples(partition), "train_loss": float(partition)}
        if replies and partition in replies:
            trained, metrics = replies[partition](trained, metrics)
        content = RecordDict({"arrays": _arrays(trained), "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=message)

    return app


def _grid(app: ClientApp, partitions: int = 4) -> LocalGrid:
    nodes = {100 + 7 * p: {"partition-id": p, "num-partitions": partitions} for p in range(4)}
    return LocalGrid(app, {n: c for n, c in nodes.items() if c["partition-id"] < partitions})


def _strategy(aggregator=None, **config) -> AggkitStrategy:
    settings = {"clients_per_round": 4, "seed": 3, **config}
    return AggkitStrategy(
        aggregator if aggregator is not None else ak.mean(),
        FedAvgConfig(**settings),
        fraction_evaluate=0.0,
    )


def _run_round(strategy: AggkitStrategy, grid: LocalGrid, server_round: int = 1, arrays=None):
    arrays = arrays if arrays is not None else _arrays(GLOBAL)
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    return strategy.aggregate_train(server_round, grid.send_and_receive(messages))


def _context(grid: LocalGrid, node: int) -> Context:
    return Context(
        run_id=1,
        node_id=node,
        node_config=grid.node_configs[node],
        state=RecordDict(),
        run_config={},
    )


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


# -- aggregation --------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_weighted_mean_is_fedavg(weighting):
    strategy = _strategy(client_weighting=weighting)
    arrays, metrics = _run_round(strategy, _grid(_scripted_app()))
    weights = np.array([10.0 * (p + 1) for p in range(4)])
    if weighting == "uniform":
        weights = np.ones(4)
    for key in GLOBAL:
        mean = sum(w * _update(p)[key].astype(np.float64) for p, w in enumerate(weights))
        expected = GLOBAL[key] - (mean / weights.sum()).astype(np.float32)
        np.testing.assert_allclose(_numpy(arrays)[key], expected, rtol=1e-6, atol=1e-7)
    assert metrics["clients"] == 4 and metrics["nonfinite-clients"] == 0
    assert metrics["committed"] == 1 and metrics["dropped-nodes"] == []
    # Flower's own average of the clients' metrics, with the weights the round used.
    expected_loss = sum(p * w for p, w in enumerate(weights)) / weights.sum()
    assert metrics["train_loss"] == pytest.approx(expected_loss)
    assert sorted(strategy.history[0]["clients"]) == [0, 1, 2, 3]


def test_unweighted_process_gets_no_weights():
    # An unweighted process raises TypeError if given weights, so completing proves none came.
    strategy = _strategy(ak.unweighted_mean())
    arrays, _ = _run_round(strategy, _grid(_scripted_app()))
    mean_w = np.mean([_update(p)["w"] for p in range(4)], axis=0)
    np.testing.assert_allclose(_numpy(arrays)["w"], GLOBAL["w"] - mean_w, rtol=1e-6)


def test_server_optimizer_applies_the_aggregate_like_the_trainer():
    # SGD with lr 0.5 and momentum: two identical rounds move by u/2, then by (u + 0.9u)/2.
    strategy = _strategy(server_lr=0.5, server_momentum=0.9, client_weighting="uniform")
    grid = _grid(_scripted_app())
    arrays, _ = _run_round(strategy, grid)
    arrays, _ = _run_round(strategy, grid, 2, arrays)
    mean_w = np.mean([_update(p)["w"] for p in range(4)], axis=0)
    np.testing.assert_allclose(
        _numpy(arrays)["w"], GLOBAL["w"] - 0.5 * mean_w - 0.5 * 1.9 * mean_w, rtol=1e-5
    )


def test_measurements_are_flower_metrics_and_the_state_carries_over():
    strategy = _strategy(ak.robust_aggregator())
    grid = _grid(_scripted_app())
    process = ak.robust_aggregator().create(
        ak.Layout({k: ak.TensorSpec(v.shape, v.dtype) for k, v in GLOBAL.items()})
    )
    state = process.initialize()
    arrays = _arrays(GLOBAL)
    for server_round in (1, 2, 3):
        order = strategy.sample_partitions(server_round, 4)
        arrays, metrics = _run_round(strategy, grid, server_round, arrays)
        # The same process, fed the same rows in the same order, by hand:
        rows = [_update(int(p)) for p in order]
        weights = [10.0 * (int(p) + 1) for p in order]
        state, _, measurements = process.next(state, rows, weights)
        expected = {f"aggregator/{k}": v for k, v in flatten_measurements(measurements).items()}
        assert expected and {k: metrics[k] for k in expected} == pytest.approx(expected)
        assert list(strategy.history[-1]["clients"]) == [int(p) for p in order]
    # The clipping norm adapted across rounds (the state was kept, not re-initialized).
    norms = [h["measurements"]["zeroing/clipping_norm"] for h in strategy.history]
    assert len(set(norms)) == 3


# -- bad replies --------------------------------------------------------------------------------


def test_nonfinite_update_is_zeroed_with_weight_zero():
    def nan(trained, metrics):
        trained["w"][1] = np.nan
        return trained, metrics

    strategy = _strategy()
    arrays, metrics = _run_round(strategy, _grid(_scripted_app({2: nan})))
    weights = {0: 10.0, 1: 20.0, 3: 40.0}
    mean_w = sum(w * _update(p)["w"] for p, w in weights.items()) / sum(weights.values())
    np.testing.assert_allclose(_numpy(arrays)["w"], GLOBAL["w"] - mean_w, rtol=1e-6)
    assert metrics["nonfinite-clients"] == 1 and metrics["clients"] == 4
    assert strategy.history[0]["nonfinite_clients"] == 1
    assert math.isfinite(metrics["train_loss"])  # the zeroed client's metrics are left out


BAD_REPLIES = {
    "shape": (lambda t, m: ({**t, "w": t["w"][:2]}, m), r"tensor \['w'\]: shape \(2,\)"),
    "keys": (lambda t, m: ({"w": t["w"]}, m), r"keys"),
    "dtype": (lambda t, m: ({**t, "b": t["b"].astype(np.float64)}, m), r"tensor \['b'\]: dtype"),
    "no-weight": (lambda t, m: (t, {"train_loss": 0.0}), r"num-examples: no example count"),
    "negative": (lambda t, m: (t, {**m, "num-examples": -3}), r"-3 is not a finite non-neg"),
    "zero": (lambda t, m: (t, {**m, "num-examples": 0}), r"example count 0"),
    "nan": (lambda t, m: (t, {**m, "num-examples": math.nan}), r"nan is not a finite"),
    "huge": (lambda t, m: (t, {**m, "num-examples": 1e308}), r"exceeds 9007199254740992"),
    "list": (lambda t, m: (t, {**m, "num-examples": [3, 4]}), r"\[3, 4\] is not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_a_bad_reply_is_dropped_and_reported_and_the_others_aggregated(case):
    bad, reason = BAD_REPLIES[case]
    strategy = _strategy(ak.mean())
    arrays, metrics = _run_round(strategy, _grid(_scripted_app({1: bad})))
    # Partition 1 (node 107) is left out; the round is the weighted mean of the three others.
    assert metrics["dropped-nodes"] == [107] and metrics["dropped-clients"] == 1
    assert metrics["committed"] == 1 and metrics["clients"] == 3
    [dropped] = strategy.history[0]["dropped"]
    assert (dropped["client"], dropped["node"]) == (1, 107)
    assert re.search(reason, dropped["reason"]), dropped["reason"]
    weights = {0: 10.0, 2: 30.0, 3: 40.0}
    for key in GLOBAL:
        mean = sum(w * _update(p)[key].astype(np.float64) for p, w in weights.items())
        expected = GLOBAL[key] - (mean / sum(weights.values())).astype(np.float32)
        np.testing.assert_allclose(_numpy(arrays)[key], expected, rtol=1e-6, atol=1e-7)


def _optimizer_state(strategy: AggkitStrategy) -> list[torch.Tensor]:
    return [
        value.clone()
        for state in strategy.server_optimizer.state_dict()["state"].values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]


@pytest.mark.parametrize(
    "examples",
    [lambda p: 0, lambda p: 1e308 if p < 2 else 0, lambda p: math.inf],
    ids=["all-zero", "two-at-1e308-rest-zero", "all-inf"],
)
def test_a_round_without_usable_replies_changes_nothing_and_says_so(examples):
    # Before: all-zero counts wrote NaN into the model and the momentum buffer and advanced the
    # aggregator state, then raised ZeroDivisionError; two nodes at 1e308 raised OverflowError.
    strategy = _strategy(ak.robust_aggregator(), server_momentum=0.9)
    good = _grid(_scripted_app())
    arrays, _ = _run_round(strategy, good)  # round 1 commits: the momentum buffer exists
    state, momentum = strategy.aggregator_state, _optimizer_state(strategy)
    assert momentum
    bad = _grid(_scripted_app(examples=examples))
    unchanged, metrics = _run_round(strategy, bad, 2, arrays)
    assert unchanged is None  # Flower keeps the previous global arrays
    assert metrics["committed"] == 0 and metrics["dropped-clients"] == 4
    assert strategy.aggregator_state is state
    assert all(torch.equal(a, b) for a, b in zip(momentum, _optimizer_state(strategy), strict=True))
    assert strategy.history[-1]["failure"] == "no usable client update"
    assert not any(k.startswith("aggregator/") for k in metrics)
    # Round 3 continues from round 1's model exactly as if round 2 had not happened.
    after, _ = _run_round(strategy, good, 3, arrays)
    reference = _strategy(ak.robust_aggregator(), server_momentum=0.9)
    _run_round(reference, good, 1)
    expected, _ = _run_round(reference, good, 3, arrays)
    for key in GLOBAL:
        np.testing.assert_array_equal(_numpy(after)[key], _numpy(expected)[key])


def test_one_node_cannot_take_over_through_its_num_examples():
    def takeover(trained, metrics):
        return trained, {**metrics, "num-examples": 1e12}

    grid = _grid(_scripted_app({1: takeover}))
    honest = {0: 10.0, 1: 20.0, 2: 30.0, 3: 40.0}

    def mean_step(weights):
        total = sum(weights.values())
        return sum(w * _update(p)["w"].astype(np.float64) for p, w in weights.items()) / total

    # Trusting the counts, the global step is partition 1's own update: the attack.
    trusting = _strategy(ak.mean(), client_weighting="num_examples")
    arrays, _ = _run_round(trusting, grid)
    np.testing.assert_allclose(GLOBAL["w"] - _numpy(arrays)["w"], _update(1)["w"], atol=1e-6)
    # The default caps it at 4 x the round's median count (median of 10, 30, 40, 1e12 = 35).
    default = _strategy(ak.mean())
    arrays, metrics = _run_round(default, grid)
    expected = mean_step({**honest, 1: 4 * 35.0})
    np.testing.assert_allclose(GLOBAL["w"] - _numpy(arrays)["w"], expected, rtol=1e-6)
    assert metrics["capped-clients"] == 1 and default.history[0]["examples"] == 220
    # Knowing the partition sizes, the server caps each one at its own count: honest FedAvg.
    sized = AggkitStrategy(
        ak.mean(),
        FedAvgConfig(clients_per_round=4, seed=3),
        fraction_evaluate=0.0,
        partition_sizes=[10, 20, 30, 40],
    )
    arrays, metrics = _run_round(sized, grid)
    np.testing.assert_allclose(GLOBAL["w"] - _numpy(arrays)["w"], mean_step(honest), rtol=1e-6)
    # With the robust preset, the step is the robust aggregate of the same rows with the
    # policy's weights: trusted, 1e12 makes it the attacker's (clipped) update alone.
    layout = ak.Layout({k: ak.TensorSpec(v.shape, v.dtype) for k, v in GLOBAL.items()})
    process = ak.robust_aggregator().create(layout)
    order = [int(p) for p in default.sample_partitions(1, 4)]
    rows = [_update(p) for p in order]
    alone = process.next(process.initialize(), [_update(1)], [1.0]).result["w"]
    for policy, weights in (("num_examples", {**honest, 1: 1e12}), ("capped", {**honest, 1: 140})):
        robust = _strategy(ak.robust_aggregator(), client_weighting=policy)
        arrays, _ = _run_round(robust, grid)
        step = GLOBAL["w"] - _numpy(arrays)["w"]
        by_hand = process.next(process.initialize(), rows, [weights[p] for p in order]).result
        np.testing.assert_allclose(step, by_hand["w"], rtol=1e-6, atol=1e-7)
        assert np.allclose(step, alone, atol=1e-6) == (policy == "num_examples")


def test_a_reply_from_a_node_not_sampled_or_twice_is_dropped():
    strategy = _strategy(ak.mean(), clients_per_round=2)
    grid = _grid(_scripted_app())
    messages = list(strategy.configure_train(1, _arrays(GLOBAL), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    sampled = {m.metadata.dst_node_id for m in messages}
    stranger = next(n for n in grid.node_configs if n not in sampled)
    extra = Message(
        RecordDict({"arrays": _arrays(GLOBAL), "metrics": MetricRecord({"num-examples": 10})}),
        dst_node_id=stranger,
        message_type="train",
    )
    forged = grid.client_app(extra, _context(grid, stranger))
    _, metrics = strategy.aggregate_train(1, [*replies, replies[0], forged])
    assert metrics["clients"] == 2 and metrics["committed"] == 1
    reasons = {d["reason"] for d in strategy.history[0]["dropped"]}
    assert reasons == {"replied more than once", "was not sampled this round"}


def test_complex_global_arrays_are_refused():
    strategy = _strategy()
    arrays = _arrays({**GLOBAL, "z": np.array([1j], np.complex64)})
    with pytest.raises(TypeError, match="'z' is complex64"):
        strategy.configure_train(1, arrays, ConfigRecord(), _grid(_scripted_app()))


# -- sampling -----------------------------------------------------------------------------------


def test_partition_sampling_matches_the_trainer():
    import torch

    from aggkit_torch.federated import FederatedTrainer
    from aggkit_torch.models import MnistCNN

    config = FedAvgConfig(clients_per_round=3, seed=11)
    trainer = FederatedTrainer(
        MnistCNN(),
        ak.mean(),
        torch.zeros(8, 1, 28, 28),
        torch.zeros(8, dtype=torch.int64),
        [[i] for i in range(8)],
        config=config,
    )
    strategy = AggkitStrategy(ak.mean(), config)
    for server_round in (1, 2, 5):
        expected = trainer.sample_clients(server_round - 1)
        np.testing.assert_array_equal(strategy.sample_partitions(server_round, 8), expected)


def test_messages_go_to_the_sampled_partitions_with_the_training_config():
    strategy = _strategy(clients_per_round=2, seed=5, local_steps=7, client_lr=0.03)
    grid = _grid(_scripted_app())
    messages = list(strategy.configure_train(4, _arrays(GLOBAL), ConfigRecord(), grid))
    holder = {c["partition-id"]: node for node, c in grid.node_configs.items()}
    expected = [holder[int(p)] for p in strategy.sample_partitions(4, 4)]
    assert [m.metadata.dst_node_id for m in messages] == expected
    config = messages[0].content["config"]
    assert (config["server-round"], config["seed"], config["local-steps"]) == (4, 5, 7)
    assert config["client-lr"] == 0.03
    # Nodes were asked once for their partition, and not again in the next round.
    queries = [m for m in grid.sent if m.metadata.message_type == PARTITION_QUERY]
    strategy.configure_train(5, _arrays(GLOBAL), ConfigRecord(), grid)
    assert len(queries) == 4
    assert len([m for m in grid.sent if m.metadata.message_type == PARTITION_QUERY]) == 4


def test_replies_are_rows_in_sampling_order():
    strategy = _strategy(ak.robust_aggregator(), seed=9)
    grid = _grid(_scripted_app())
    messages = list(strategy.configure_train(1, _arrays(GLOBAL), ConfigRecord(), grid))
    strategy.aggregate_train(1, list(reversed(grid.send_and_receive(messages))))
    assert strategy.history[0]["clients"] == [int(p) for p in strategy.sample_partitions(1, 4)]


def test_dropouts_and_nodes_without_partition():
    app = _scripted_app()
    grid = _grid(app)
    node_without = 999
    grid.node_configs[node_without] = {}  # answers the query with an error
    grid.states[node_without] = RecordDict()
    offline = next(n for n, c in grid.node_configs.items() if c.get("partition-id") == 0)
    grid.offline.add(offline)
    strategy = _strategy(clients_per_round=4)
    arrays, metrics = _run_round(strategy, grid)
    # Partition 0's node never answered: the round goes on with the other three.
    assert metrics["clients"] == 3 and sorted(strategy.history[0]["clients"]) == [1, 2, 3]
    assert strategy._partition_of[node_without] is None
    grid.offline.clear()
    _run_round(strategy, grid, 2, arrays)  # the node is asked again once it is back
    assert sorted(strategy.history[1]["clients"]) == [0, 1, 2, 3]


def test_inconsistent_partition_answers_exclude_those_nodes_not_the_run():
    # A node whose num-partitions disagrees with the others' is left out (before: ValueError).
    grid = _grid(_scripted_app())
    first = next(iter(grid.node_configs))
    grid.node_configs[first]["num-partitions"] = 5
    strategy = _strategy(clients_per_round=3)
    _, metrics = _run_round(strategy, grid)
    assert metrics["excluded-nodes"] == [first]
    assert "num-partitions=5, but there are 4" in strategy.history[0]["excluded"][0]["reason"]
    assert 0 not in strategy.history[0]["clients"]
    # Two nodes claiming one partition: neither serves it (before: ValueError).
    grid = _grid(_scripted_app())
    nodes = list(grid.node_configs)
    grid.node_configs[nodes[1]]["partition-id"] = grid.node_configs[nodes[0]]["partition-id"]
    strategy = _strategy(clients_per_round=4)
    _, metrics = _run_round(strategy, grid)
    assert sorted(metrics["excluded-nodes"]) == sorted(nodes[:2])
    assert sorted(strategy.history[0]["clients"]) == [2, 3] and metrics["committed"] == 1
    # A malformed answer (partition-id outside [0, num-partitions)) excludes its node only.
    grid = _grid(_scripted_app())
    grid.node_configs[nodes[3]]["partition-id"] = 7
    strategy = _strategy(clients_per_round=3)
    _, metrics = _run_round(strategy, grid)
    assert metrics["excluded-nodes"] == [nodes[3]]
    assert "partition-id 7 of 4" in strategy.history[0]["excluded"][0]["reason"]


def test_too_few_partitions_for_the_round_leave_it_uncommitted():
    # Every node says num-partitions=2 but 4 clients are asked for (before: ValueError).
    grid = _grid(_scripted_app(), partitions=2)
    strategy = AggkitStrategy(
        ak.mean(), FedAvgConfig(clients_per_round=4), min_available_nodes=2, fraction_evaluate=0
    )
    arrays, metrics = _run_round(strategy, grid)
    assert arrays is None and metrics["committed"] == 0
    assert "exceeds the number of partitions (2)" in strategy.history[0]["failure"]


def test_random_node_sampling_without_partitions():
    app = _scripted_app()
    grid = _grid(app)
    strategy = AggkitStrategy(
        ak.mean(), FedAvgConfig(clients_per_round=3), partition_sampling=False
    )
    _, metrics = _run_round(strategy, grid)
    assert metrics["clients"] == 3
    assert not [m for m in grid.sent if m.metadata.message_type == PARTITION_QUERY]
    assert set(strategy.history[0]["clients"]) <= set(grid.node_configs)


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="aggregator must be an aggkit factory"):
        AggkitStrategy(object())
    with pytest.raises(TypeError, match="config must be a FedAvgConfig"):
        AggkitStrategy(ak.mean(), {"clients_per_round": 3})
    with pytest.raises(ValueError, match="min_available_nodes"):
        AggkitStrategy(ak.mean(), min_available_nodes=-1)
    with pytest.raises(ValueError, match="exceeds the number of partitions"):
        AggkitStrategy(ak.mean(), FedAvgConfig(clients_per_round=5)).sample_partitions(1, 4)


# -- the MNIST apps, in-process -----------------------------------------------------------------


@pytest.mark.mnist
def test_mnist_apps_in_process_equal_the_trainer(mnist, mnist_root, tmp_path):
    import torch

    from aggkit_torch.flower import client_app, server_app
    from aggkit_torch.local_training import evaluate
    from aggkit_torch.models import MnistCNN

    config = reference.run_config(
        12,
        10,
        data=str(mnist_root),
        out=str(tmp_path),
        **{"server-eval": True, "eval-every": 2, "fraction-evaluate": 0.25},
    )
    nodes = {1000 + 3 * i: {"partition-id": i, "num-partitions": 12} for i in range(12)}
    summary = server_app.run(LocalGrid(client_app.app, nodes, config), config)
    arrays = dict(np.load(tmp_path / "model.npz"))
    params, history = reference.trainer_run(mnist, 12, 10)
    reference.assert_same_run(arrays, summary["history"], (params, history))
    assert summary["train_metrics"][2]["aggregator/zeroing_norm"] > 0
    # The server's test accuracy is the trainer model's; 3 nodes evaluated their test shares.
    model = MnistCNN()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    accuracy, _ = evaluate(model, mnist.test_images, mnist.test_labels)
    assert summary["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert "test_accuracy" not in summary["history"][0]  # eval-every 2
    assert 0 <= summary["evaluate_metrics"][2]["test_accuracy"] <= 1
