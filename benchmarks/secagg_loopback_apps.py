"""The Flower apps that ``benchmarks/secagg_loopback.py`` runs on a real loopback federation.

Two pairs of apps, each doing one thing: a round of secure aggregation of the MNIST CNN's
arrays (431,080 float32 values), with no training (a node's "trained" model is the global model
plus a fixed noise drawn from its partition id), so that a round is the aggregation alone.

- ``aggkit_server`` / ``aggkit_client``: :class:`~aggkit_torch.flower.secure.SecureAggkitStrategy`
  with ``ak.secure_aggregator()`` on Flower's message API; the client answers with
  :func:`aggkit_torch.flower.secure_apps.answer_train` and ``secure_apps.secagg``, as the MNIST
  secure apps do. ``secagg-mode`` chooses honest-but-curious or authenticated.
- ``flower_server`` / ``flower_client``: Flower's own SecAgg+ (``SecAggPlusWorkflow`` in a
  legacy ``DefaultWorkflow`` with ``FedAvg``, the nodes' legacy ``ClientApp`` with
  ``secaggplus_mod``), with the same number of share holders and the same threshold as aggkit's
  default SecAgg+ graph.

Each server waits until all ``nodes`` SuperNodes are connected, then times its whole run
(``rounds`` rounds): wall time and the server process's CPU time (all its threads: gRPC
included), and counts the bytes of every message it sends and receives (Flower's serialization,
``deflate()`` of every object of a message; the counting's own CPU time is subtracted). It writes
them as JSON to ``<out>/<label>.json``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

#: Standard deviation of the fixed "training" noise a node adds to the global model.
NOISE = 0.01


def neighbourhood(k: int) -> tuple[int, int]:
    """(closed neighbourhood, threshold) of aggkit's default SecAgg+ graph at ``k`` nodes."""
    holders = min(k, 2 * math.ceil(math.log2(k)) + 1)
    return holders, holders // 2 + 1


def trained(arrays: dict[str, np.ndarray], partition: int) -> dict[str, np.ndarray]:
    """The node's fixed stand-in for a trained model: global + N(0, NOISE) from its partition."""
    rng = np.random.default_rng(1000 + partition)
    return {k: (v + rng.normal(0, NOISE, v.shape)).astype(v.dtype) for k, v in arrays.items()}


def initial_model() -> dict[str, np.ndarray]:
    """The MNIST CNN's initial arrays (seed 0)."""
    import torch

    from aggkit_torch.models import MnistCNN

    torch.manual_seed(0)
    return {k: v.detach().numpy().copy() for k, v in MnistCNN().state_dict().items()}


def message_bytes(message: Message) -> int:
    """Bytes of a message's content as Flower serializes it."""
    if message.has_error():
        return 0
    return sum(len(o.deflate()) for o in get_all_nested_objects(message.content).values())


class CountingGrid(Grid):
    """The run's grid, counting the bytes of every message sent and received."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.sent = 0
        self.received = 0
        self.counting_cpu = 0.0

    def _count(self, messages: Iterable[Message], attribute: str) -> list[Message]:
        messages = list(messages)
        start = time.process_time()
        setattr(self, attribute, getattr(self, attribute) + sum(map(message_bytes, messages)))
        self.counting_cpu += time.process_time() - start
        return messages

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(self._count(messages, "sent"))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._count(self.grid.pull_messages(message_ids), "received")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        replies = self.grid.send_and_receive(self._count(messages, "sent"), timeout=timeout)
        return self._count(replies, "received")


def _wait_for_nodes(grid: Grid, count: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} SuperNodes connected after {timeout} s")
        time.sleep(0.5)


def _timed(label: str, grid: Grid, context: Context, body: Any, warm: Any = None) -> None:
    """Wait for the nodes, warm the process up, run ``body(counting_grid, rounds)`` timed and
    write ``<out>/<label>.json``.

    Warm-up (run config ``warm-up``): ``"round"`` runs ``body(grid, 1)`` first, untimed (a
    real round pays the process's imports, kernel loads and connections); ``"local"`` calls
    ``warm()`` instead (the same imports and kernels without the nodes: far cheaper with many
    nodes); ``"none"`` times the process's first rounds as they come.
    """
    config = context.run_config
    nodes, rounds = int(config["nodes"]), int(config["rounds"])
    _wait_for_nodes(grid, nodes)
    mode = str(config.get("warm-up", "local"))
    if mode == "round":
        body(grid, 1)
    elif mode == "local" and warm is not None:
        warm()
    elif mode not in ("local", "none"):
        raise ValueError(f"warm-up must be 'round', 'local' or 'none', not {mode!r}")
    counting = CountingGrid(grid)
    profile = None
    if int(config.get("profile", 0)):
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    body(counting, rounds)
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu - counting.counting_cpu
    result = {
        "label": label,
        "nodes": nodes,
        "rounds": rounds,
        "wall_s_per_round": wall / rounds,
        "server_cpu_s_per_round": cpu / rounds,
        "bytes_to_each_node_per_round": counting.sent / nodes / rounds,
        "bytes_from_each_node_per_round": counting.received / nodes / rounds,
    }
    out = Path(str(config["out"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(result))
    if profile is not None:
        profile.dump_stats(str(out / f"{label}.prof"))


# -- aggkit ---------------------------------------------------------------------------------------

aggkit_client = ClientApp()
aggkit_server = ServerApp()


@aggkit_client.query("partition")
def _partition(message: Message, context: Context) -> Message:
    from aggkit_torch.flower import client_app as plain

    return plain.query_partition(message, context)


@aggkit_client.query("secagg")
def _secagg(message: Message, context: Context) -> Message:
    from aggkit_torch.flower import secure_apps

    return secure_apps.secagg(message, context)


@aggkit_client.train()
def _aggkit_train(message: Message, context: Context) -> Message:
    from aggkit_torch.flower import secure_apps

    arrays = {k: a.numpy() for k, a in message.content.array_records["arrays"].items()}
    partition = int(context.node_config["partition-id"])
    record = ArrayRecord({k: Array(v) for k, v in trained(arrays, partition).items()})
    metrics = MetricRecord({"num-examples": 100, "train_loss": 0.0})
    return secure_apps.answer_train(message, context, record, metrics)


@aggkit_server.main()
def _aggkit_main(grid: Grid, context: Context) -> None:
    import aggkit as ak
    from aggkit.secure.identity import IdentityRegistry
    from aggkit_torch.federated import FedAvgConfig
    from aggkit_torch.flower.secure import SecureAggkitStrategy

    config = context.run_config
    nodes = int(config["nodes"])
    authenticated = config["secagg-mode"] == "authenticated"
    mode: dict[str, Any] = (
        {"registry": IdentityRegistry.load(str(config["secagg-registry"]))}
        if authenticated
        else {"honest_but_curious": True}
    )
    arrays = ArrayRecord({k: Array(v) for k, v in initial_model().items()})

    def body(grid: Grid, rounds: int) -> None:
        strategy = SecureAggkitStrategy(
            ak.secure_aggregator(),
            FedAvgConfig(clients_per_round=nodes),
            fraction_evaluate=0.0,
            min_evaluate_nodes=0,
            **mode,
        )
        strategy.start(grid, arrays, num_rounds=rounds, timeout=3600)
        assert len(strategy.secagg_history) == rounds
        for entry in strategy.secagg_history:
            assert entry["included"] == list(range(nodes)), entry

    def warm() -> None:
        """The secure preset's kernels and a small protocol round in this mode."""
        from aggkit.secure.simulation import simulate_round
        from aggkit.warmup import warmup

        warmup(["secure"])
        inputs = np.random.default_rng(0).integers(0, 2**16, size=(nodes, 1000))
        simulate_round(inputs, modulus=2**32, seed=0, authenticated=authenticated)

    label = "aggkit-authenticated" if authenticated else "aggkit-honest-but-curious"
    _timed(label, grid, context, body, warm)


# -- Flower's SecAgg+ -----------------------------------------------------------------------------


def _legacy() -> Any:
    """Flower's legacy API (it warns that it is deprecated on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import flwr.client
        import flwr.client.mod
        import flwr.common
        import flwr.server
        import flwr.server.strategy
        import flwr.server.workflow
    return flwr


def _client_fn(context: Context) -> Any:
    flwr = _legacy()
    partition = int(context.node_config["partition-id"])

    class Fixed(flwr.client.NumPyClient):
        def fit(self, parameters: list[np.ndarray], config: Any) -> Any:
            arrays = dict(enumerate(parameters))
            out = trained({str(i): a for i, a in arrays.items()}, partition)
            return [out[str(i)] for i in range(len(parameters))], 100, {}

    return Fixed().to_client()


def _make_flower_client() -> Any:
    flwr = _legacy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flwr.client.ClientApp(client_fn=_client_fn, mods=[flwr.client.mod.secaggplus_mod])


flower_client = _make_flower_client()
flower_server = ServerApp()


@flower_server.main()
def _flower_main(grid: Grid, context: Context) -> None:
    flwr = _legacy()
    nodes = int(context.run_config["nodes"])
    model = initial_model()
    holders, threshold = neighbourhood(nodes)

    def body(grid: Grid, rounds: int) -> None:
        strategy = flwr.server.strategy.FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=nodes,
            min_available_clients=nodes,
            initial_parameters=flwr.common.ndarrays_to_parameters(list(model.values())),
        )
        legacy = flwr.server.LegacyContext(
            context=context, config=flwr.server.ServerConfig(num_rounds=rounds), strategy=strategy
        )
        workflow = flwr.server.workflow.DefaultWorkflow(
            fit_workflow=flwr.server.workflow.SecAggPlusWorkflow(
                num_shares=holders, reconstruction_threshold=threshold
            )
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            workflow(grid, legacy)
        _check_flower_sum(legacy, model, nodes, rounds)

    _timed("flower-secaggplus", grid, context, body)


def _check_flower_sum(legacy: Any, model: dict[str, np.ndarray], nodes: int, rounds: int) -> None:
    """Every round summed every node: the model moved by ``rounds`` times the nodes' mean noise
    (within Flower's quantization error)."""
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    final = [a.numpy() for a in legacy.state.array_records[MAIN_PARAMS_RECORD].values()]
    names = list(model)
    noise = [trained({str(i): model[n] for i, n in enumerate(names)}, p) for p in range(nodes)]
    for i, name in enumerate(names):
        step = np.mean([noise[p][str(i)] - model[name] for p in range(nodes)], axis=0)
        np.testing.assert_allclose(final[i], model[name] + rounds * step, atol=1e-4, err_msg=name)
