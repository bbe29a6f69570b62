"""The servers' side of ``benchmarks/secagg_loopback.py`` (the nodes' side and the shared
helpers: ``benchmarks/secagg_loopback_apps.py``).

- ``aggkit_server``: :class:`~aggkit_torch.flower.secure.SecureAggkitStrategy` with
  ``ak.secure_aggregator()`` on Flower's message API; ``secagg-mode`` chooses honest-but-curious
  or authenticated.
- ``flower_server``: Flower's own SecAgg+ (``SecAggPlusWorkflow`` in a legacy
  ``DefaultWorkflow`` with ``FedAvg``), with the same number of share holders and the same
  threshold as aggkit's default SecAgg+ graph.

Each server waits until all ``nodes`` SuperNodes are connected, warms up (run config
``warm-up``), then times its whole run (``rounds`` rounds) on a :class:`CountingGrid`: wall time,
the server process's CPU time (all its threads: the HTTP transport included) per round, the CPU
time spent pushing and pulling messages and the number of pulls, and the bytes of every message
it sends and receives (Flower's serialization, ``deflate()`` of every object of a message; the
counting's own CPU time is subtracted). It writes them as JSON to ``<out>/<label>.json``.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from aggkit_torch.flower.secure import GridWrapper
from benchmarks.secagg_loopback_apps import (
    initial_model,
    legacy,
    message_bytes,
    neighbourhood,
    trained,
)


class CountingGrid(GridWrapper):
    """The run's grid, counting the bytes of every message sent and received, and the process
    CPU time spent pushing and pulling messages (Flower's transport), with the number of pulls
    (``send_and_receive`` pulls every 3 s until every reply is in). It polls for replies, so
    :class:`~aggkit_torch.flower.secure.SecureAggkitStrategy` waits on it as on Flower's own
    deployment grid."""

    polls_for_replies = True

    def __init__(self, grid: Grid):
        super().__init__(grid)
        self.sent = 0
        self.received = 0
        self.counting_cpu = 0.0
        self.push_cpu = 0.0
        self.pull_cpu = 0.0
        self.pulls = 0
        self.exchanges = 0
        self.marks: list[float] = []  # process CPU time at the start of each round after the first

    def _count(self, messages: Iterable[Message], attribute: str) -> list[Message]:
        messages = list(messages)
        start = time.process_time()
        setattr(self, attribute, getattr(self, attribute) + sum(map(message_bytes, messages)))
        self.counting_cpu += time.process_time() - start
        return messages

    def mark_round(self) -> None:
        """Note the process CPU time: a round (after the first) starts now."""
        self.marks.append(time.process_time() - self.counting_cpu)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = self._count(messages, "sent")
        self.exchanges += bool(messages)
        start = time.process_time()
        try:
            return self.grid.push_messages(messages)
        finally:
            self.push_cpu += time.process_time() - start

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        start = time.process_time()
        try:
            replies = self.grid.pull_messages(message_ids)
        finally:
            self.pull_cpu += time.process_time() - start
            self.pulls += 1
        return self._count(replies, "received")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        """Flower's own loop (``Grid.send_and_receive``: push, then pull every 3 s), through
        this grid's counting push and pull."""
        messages = list(messages)
        waiting = set(self.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            time.sleep(3)
        return replies


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
    wall, end = time.perf_counter() - wall, time.process_time() - counting.counting_cpu
    if len(counting.marks) != rounds - 1:
        raise RuntimeError(f"{len(counting.marks)} round marks in {rounds} rounds")
    bounds = [cpu, *counting.marks, end]
    per_round = [b - a for a, b in itertools.pairwise(bounds)]
    result = {
        "label": label,
        "nodes": nodes,
        "rounds": rounds,
        "wall_s_per_round": wall / rounds,
        # Steady state: the median round after the first (the first also pays one-off costs:
        # aggkit's partition query, first kernel and optimizer calls).
        "server_cpu_s_per_round": float(np.median(per_round[1:] or per_round)),
        "first_round_cpu_s": per_round[0],
        "mean_cpu_s_per_round": (end - cpu) / rounds,
        "round_cpu_s": per_round,
        "push_cpu_s_per_round": counting.push_cpu / rounds,
        "pull_cpu_s_per_round": counting.pull_cpu / rounds,
        "pulls_per_round": counting.pulls / rounds,
        "exchanges_per_round": counting.exchanges / rounds,
        "bytes_to_each_node_per_round": counting.sent / nodes / rounds,
        "bytes_from_each_node_per_round": counting.received / nodes / rounds,
    }
    out = Path(str(config["out"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(result))
    if profile is not None:
        profile.dump_stats(str(out / f"{label}.prof"))


# -- aggkit ---------------------------------------------------------------------------------------

aggkit_server = ServerApp()


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
        class Marked(SecureAggkitStrategy):
            # The strategy sees the grid it waits through (a PatientGrid around ``grid``).
            def configure_train(self, server_round, arrays, config, through):
                if server_round > 1 and isinstance(grid, CountingGrid):
                    grid.mark_round()
                return super().configure_train(server_round, arrays, config, through)

        strategy = Marked(
            ak.secure_aggregator(code_bits=int(config["code-bits"])),
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
        """The secure preset's kernels, a small protocol round in this mode and the server
        optimizer's first construction (torch imports torch._dynamo then: 1.6 s of CPU)."""
        import torch

        from aggkit.secure.simulation import simulate_round
        from aggkit.warmup import warmup
        from aggkit_torch.federated import make_server_optimizer

        make_server_optimizer([torch.nn.Parameter(torch.zeros(1))], FedAvgConfig())
        warmup(["secure"])
        inputs = np.random.default_rng(0).integers(0, 2**16, size=(nodes, 1000))
        simulate_round(inputs, modulus=2**32, seed=0, authenticated=authenticated)

    label = "aggkit-authenticated" if authenticated else "aggkit-honest-but-curious"
    if int(config["code-bits"]) != 32:
        label += f"-{int(config['code-bits'])}-bit"
    _timed(label, grid, context, body, warm)


# -- Flower's SecAgg+ -----------------------------------------------------------------------------

flower_server = ServerApp()


@flower_server.main()
def _flower_main(grid: Grid, context: Context) -> None:
    flwr = legacy()
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
        secaggplus = flwr.server.workflow.SecAggPlusWorkflow(
            num_shares=holders, reconstruction_threshold=threshold
        )
        calls = []

        def fit_workflow(grid: Grid, context: Context) -> None:
            calls.append(1)
            if len(calls) > 1 and isinstance(grid, CountingGrid):
                grid.mark_round()
            secaggplus(grid, context)

        workflow = flwr.server.workflow.DefaultWorkflow(fit_workflow=fit_workflow)
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
