"""Secure aggregation on Flower: aggkit's SecAgg+ (message API) against Flower's own SecAgg+.

Two groups:

* ``secagg-flower``: one round of secure aggregation of the MNIST CNN (431,080 values) over K=20
  nodes (full mode), the same round three ways, alternately, in the same run:

  - Flower's ``SecAggPlusWorkflow`` in a legacy ``DefaultWorkflow`` with FedAvg, the nodes
    running a legacy ``ClientApp`` with ``secaggplus_mod`` (Flower's own SecAgg+, the reference);
  - aggkit's :class:`~aggkit_torch.flower.secure.SecureAggkitStrategy` with
    ``ak.secure_aggregator()`` (adaptive zeroing and clipping on top of the sum: 14 secure sums
    packed in one protocol run), the nodes running :mod:`aggkit_torch.flower.secure_apps`'s
    handlers, honest-but-curious mode (Flower's SecAgg+ has no identities);
  - the same in the authenticated mode (Ed25519 identities, signatures, consistency check).

  Both sides run on the same in-process grid: each message is handed to the node's ClientApp in
  this process, and the grid adds up the time spent inside the ClientApps and the bytes of
  every message (Flower's own serialization, ``deflate()`` of every object of the message).
  Server time = the round's wall time minus the clients' time and the transport (each
  message's content goes through Flower's protobuf serialization on its way): the server's own
  work, message building included. The nodes do not train (every node's "trained"
  model is fixed), so the round is the aggregation alone. Same neighbourhoods on both sides:
  ``num_shares`` = the aggkit graph's closed neighbourhood (``2 ceil(log2 K) + 1``, 11 at K=20)
  and the same threshold (a majority of it, 6).
* ``secagg-authenticated``: a simulated SecAgg+ round (:func:`~aggkit.secure.simulation.
  simulate_round`, 1,000 values, no dropouts) in the honest-but-curious mode (the reference)
  and the authenticated one, alternately, at K = 10, 100 and 1,000 (full mode):
  the extra cost of the signatures and the consistency round, for all parties together.

The machine is shared: only the ratios measured in the same run mean something. Full figures::

    AGGKIT_BENCH_FULL=1 python -m pytest benchmarks/bench_secagg_flower.py --benchmark-enable \
        --benchmark-json=.benchmarks/secagg-flower.json -s
"""

from __future__ import annotations

import time
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cryptography")
pytest.importorskip("torch")
pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

import aggkit as ak
from aggkit.secure.identity import IdentityRegistry, SigningIdentity
from aggkit.secure.simulation import simulate_round
from benchmarks.conftest import FULL, record
from benchmarks.secagg_loopback_apps import message_bytes, neighbourhood
from benchmarks.secagg_loopback_apps import trained as _trained

K_FLOWER = 20 if FULL else 5
FLOWER_ROUNDS = 3 if FULL else 1
K_AUTH = [10, 100, 1000] if FULL else [10]
AUTH_ROUNDS = 3 if FULL else 1
AUTH_M = 1_000


def _model() -> dict[str, np.ndarray]:
    """The MNIST CNN's initial arrays (full mode) or a small stand-in (smoke)."""
    if not FULL:
        rng = np.random.default_rng(0)
        return {"w": rng.normal(size=(40, 25)).astype(np.float32), "b": np.zeros(7, np.float32)}
    import torch

    from aggkit_torch.models import MnistCNN

    torch.manual_seed(0)
    return {k: v.detach().numpy().copy() for k, v in MnistCNN().state_dict().items()}


def _through_bytes(content: RecordDict) -> RecordDict:
    """``content`` serialized and parsed back, as a transport would deliver it."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    data = recorddict_to_proto(content).SerializeToString()
    return recorddict_from_proto(ProtoRecordDict.FromString(data))


class TimedGrid(Grid):
    """An in-process Grid that times the ClientApps and counts every message's bytes."""

    def __init__(self, app: ClientApp, node_configs: dict[int, dict], run_config: dict):
        self.app = app
        self.node_configs = node_configs
        self.run_config = run_config
        self.states = {node: RecordDict() for node in node_configs}
        self.client_seconds = 0.0
        self.transport_seconds = 0.0
        self.bytes_to_nodes = 0
        self.bytes_to_server = 0
        self._outbox: dict[str, Message] = {}
        self._count = 0
        self._run = SimpleNamespace(run_id=1)

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self):
        return list(self.node_configs)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            self._count += 1
            start = time.perf_counter()
            self.bytes_to_nodes += message_bytes(message)
            self.transport_seconds += time.perf_counter() - start
            self._outbox[str(self._count)] = self._carried(message)
            ids.append(str(self._count))
        return ids

    def _carried(self, message: Message, reply_to: Message | None = None) -> Message:
        """What the receiver gets: the content through Flower's protobuf serialization (a
        network shares no objects, and Flower's mods change what they receive). ``reply_to``:
        the message a reply answers."""
        start = time.perf_counter()
        if reply_to is not None:
            if message.has_error():
                carried = Message(message.error, reply_to=reply_to)
            else:
                carried = Message(_through_bytes(message.content), reply_to=reply_to)
        else:
            carried = Message(
                _through_bytes(message.content),
                dst_node_id=message.metadata.dst_node_id,
                message_type=message.metadata.message_type,
            )
        self.transport_seconds += time.perf_counter() - start
        return carried

    def pull_messages(self, message_ids):
        replies = []
        for key in message_ids:
            message = self._outbox.pop(key)
            node = message.metadata.dst_node_id
            context = Context(
                run_id=1,
                node_id=node,
                node_config=self.node_configs[node],
                state=self.states[node],
                run_config=self.run_config,
            )
            start = time.perf_counter()
            reply = self.app(message, context)
            self.client_seconds += time.perf_counter() - start
            start = time.perf_counter()
            if not reply.has_error():
                self.bytes_to_server += message_bytes(reply)
            self.transport_seconds += time.perf_counter() - start
            replies.append(self._carried(reply, reply_to=message))
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def _task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


# -- aggkit ---------------------------------------------------------------------------------------


def aggkit_round(k: int, model, *, authenticated: bool, tmp) -> dict[str, float]:
    """One round of SecureAggkitStrategy on a TimedGrid; server seconds and bytes per node."""
    from aggkit_torch.federated import FedAvgConfig
    from aggkit_torch.flower import client_app as plain
    from aggkit_torch.flower import secure_apps
    from aggkit_torch.flower.secure import SecureAggkitStrategy

    app = ClientApp()
    app.query("partition")(plain.query_partition)
    app.query("secagg")(secure_apps.secagg)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        trained = ArrayRecord({n: Array(v) for n, v in _trained(model, partition).items()})
        metrics = MetricRecord({"num-examples": 100, "train_loss": 0.0})
        return secure_apps.answer_train(message, context, trained, metrics)

    run_config: dict[str, Any] = {
        "aggregator": "secure",
        "clients": k,
        "clients-per-round": k,
        "secagg-mode": "authenticated" if authenticated else "honest-but-curious",
    }
    nodes = {100 + p: {"partition-id": p, "num-partitions": k} for p in range(k)}
    mode: dict[str, Any] = {"honest_but_curious": True}
    if authenticated:
        registry_path = tmp / f"registry{k}.json"
        if not registry_path.exists():  # one set of identities per K (the apps cache files)
            keys = {p: SigningIdentity.generate() for p in range(k)}
            for p in range(k):
                keys[p].save(tmp / f"node{k}-{p}.key")
            IdentityRegistry.of(keys).save(registry_path)
        registry = IdentityRegistry.load(registry_path)
        run_config["secagg-registry"] = str(registry_path)
        for p in range(k):
            nodes[100 + p]["secagg-key"] = str(tmp / f"node{k}-{p}.key")
        mode = {"registry": registry}
    grid = TimedGrid(app, nodes, run_config)
    strategy = SecureAggkitStrategy(
        ak.secure_aggregator(),
        FedAvgConfig(clients_per_round=k),
        fraction_evaluate=0.0,
        min_evaluate_nodes=0,
        **mode,
    )
    arrays = ArrayRecord({n: Array(v) for n, v in model.items()})
    start = time.perf_counter()
    strategy.start(grid, arrays, num_rounds=1, timeout=3600)
    wall = time.perf_counter() - start
    assert strategy.secagg_history[-1]["included"] == list(range(k))
    return {
        "server_seconds": wall - grid.client_seconds - grid.transport_seconds,
        "protocol_seconds": strategy.secagg_history[-1]["server_seconds"],
        "client_seconds": grid.client_seconds / k,
        "bytes_per_node_up": grid.bytes_to_server / k,
        "bytes_per_node_down": grid.bytes_to_nodes / k,
    }


# -- Flower's SecAgg+ -----------------------------------------------------------------------------


def flower_round(k: int, model) -> dict[str, float]:
    """One round of Flower's SecAggPlusWorkflow (legacy API) on a TimedGrid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from flwr.client import ClientApp as LegacyClientApp
        from flwr.client import NumPyClient
        from flwr.client.mod import secaggplus_mod
        from flwr.common import ndarrays_to_parameters
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.strategy import FedAvg
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    names = list(model)

    class Fixed(NumPyClient):
        def __init__(self, partition: int):
            self.partition = partition

        def fit(self, parameters, config):
            trained = _trained(model, self.partition)
            return [trained[n] for n in names], 100, {}

    def client_fn(context: Context):
        return Fixed(int(context.node_config["partition-id"])).to_client()

    app = LegacyClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    nodes = {100 + p: {"partition-id": p, "num-partitions": k} for p in range(k)}
    grid = TimedGrid(app, nodes, {})
    holders, threshold = neighbourhood(k)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=k,
        min_available_clients=k,
        initial_parameters=ndarrays_to_parameters([model[n] for n in names]),
    )
    context = LegacyContext(
        context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=1),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(num_shares=holders, reconstruction_threshold=threshold)
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow(grid, context)
    wall = time.perf_counter() - start
    return {
        "server_seconds": wall - grid.client_seconds - grid.transport_seconds,
        "client_seconds": grid.client_seconds / k,
        "bytes_per_node_up": grid.bytes_to_server / k,
        "bytes_per_node_down": grid.bytes_to_nodes / k,
    }


def test_aggkit_secaggplus_vs_flower_secaggplus(benchmark, tmp_path):
    """The three rounds alternately, ``FLOWER_ROUNDS`` times; ratios of the server times."""
    _task_identity()
    model = _model()
    runs: dict[str, list[dict[str, float]]] = {"flower": [], "aggkit": [], "aggkit-auth": []}

    def run():
        runs["flower"].append(flower_round(K_FLOWER, model))
        runs["aggkit"].append(aggkit_round(K_FLOWER, model, authenticated=False, tmp=tmp_path))
        runs["aggkit-auth"].append(aggkit_round(K_FLOWER, model, authenticated=True, tmp=tmp_path))

    record(benchmark, group=f"secagg-flower|K={K_FLOWER}", items=K_FLOWER)
    if FULL:
        run()  # warm-up: imports, compiled kernels, caches
        for rs in runs.values():
            rs.clear()
    benchmark.pedantic(run, rounds=FLOWER_ROUNDS, iterations=1)
    server = {name: np.array([r["server_seconds"] for r in rs]) for name, rs in runs.items()}
    for name, rs in runs.items():
        for key in rs[0]:
            benchmark.extra_info[f"{name}_{key}"] = float(np.median([r[key] for r in rs]))
    for name in ("aggkit", "aggkit-auth"):
        ratio = float(np.median(server["flower"] / server[name]))
        benchmark.extra_info[f"flower_over_{name}_server"] = ratio
    benchmark.extra_info["values"] = int(sum(v.size for v in model.values()))
    print(
        "\n"
        + "\n".join(
            f"{k}: {v:.4g}" for k, v in sorted(benchmark.extra_info.items()) if k != "probe"
        )
    )


@pytest.mark.parametrize("k", K_AUTH)
def test_authenticated_mode_extra_cost(benchmark, k):
    """Honest-but-curious and authenticated simulated rounds alternately (same inputs, seed)."""
    x = np.random.default_rng(k).integers(0, 2**16, size=(k, AUTH_M))
    times: dict[bool, list[float]] = {False: [], True: []}
    costs: dict[bool, Any] = {}

    def run():
        for authenticated in (False, True):
            start = time.perf_counter()
            out = simulate_round(x, modulus=2**32, seed=1, authenticated=authenticated)
            times[authenticated].append(time.perf_counter() - start)
            costs[authenticated] = out

    record(benchmark, group="secagg-authenticated", items=k, k=k)
    if FULL:
        run()  # warm-up
        times[False].clear()
        times[True].clear()
    benchmark.pedantic(run, rounds=AUTH_ROUNDS, iterations=1)
    hbc, auth = np.array(times[False]), np.array(times[True])
    benchmark.extra_info["hbc_s"] = float(np.median(hbc))
    benchmark.extra_info["auth_s"] = float(np.median(auth))
    benchmark.extra_info["auth_over_hbc"] = float(np.median(auth / hbc))
    for authenticated, name in ((False, "hbc"), (True, "auth")):
        out = costs[authenticated]
        up = sum(c.bytes_to_server for c in out.costs.values()) / k
        server = sum(c.server_seconds for c in out.costs.values())
        benchmark.extra_info[f"{name}_upload_bytes_per_client"] = float(up)
        benchmark.extra_info[f"{name}_server_s"] = float(server)
    np.testing.assert_array_equal(costs[True].sum, costs[False].sum)
    info = benchmark.extra_info
    print(
        f"\nK={k}: hbc {info['hbc_s']:.3f} s, auth {info['auth_s']:.3f} s, ratio "
        f"{info['auth_over_hbc']:.3f}, upload/client {info['hbc_upload_bytes_per_client']:.0f} "
        f"-> {info['auth_upload_bytes_per_client']:.0f} B, server {info['hbc_server_s']:.3f} "
        f"-> {info['auth_server_s']:.3f} s"
    )
