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
the server process's CPU time (all its threads: the HTTP transport included) per round and its
split (strategy, push, pull, other threads), the number of pulls, each push and pull, and the
bytes of every message it sends and receives (Flower's serialization, ``deflate()`` of every
object of a message; the counting's own main-thread CPU time is subtracted). It writes them as
JSON to ``<out>/<label>.json``.
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
    message_objects,
    neighbourhood,
    trained,
)


class CountingGrid(GridWrapper):
    """The run's grid, counting the bytes of every message sent and received, and the process
    CPU time spent pushing and pulling messages (Flower's transport), with the number of pulls
    (``send_and_receive`` pulls every 3 s until every reply is in). It polls for replies, so
    :class:`~aggkit_torch.flower.secure.SecureAggkitStrategy` waits on it as on Flower's own
    deployment grid.

    The counting itself runs on the main thread (it serializes every message once more); its
    main-thread CPU time is left out of every figure. ``calls`` records each push and pull:
    round, process and main-thread CPU time, messages, objects and bytes."""

    polls_for_replies = True

    def __init__(self, grid: Grid):
        super().__init__(grid)
        self.sent = 0
        self.received = 0
        self.counting_cpu = 0.0  # main-thread CPU time spent counting bytes
        self.push_cpu = 0.0
        self.pull_cpu = 0.0
        self.pulls = 0
        self.exchanges = 0
        # At the start of each round after the first: process CPU time, main-thread CPU time.
        self.marks: list[float] = []
        self.thread_marks: list[float] = []
        # Per round (one entry per round started so far): push and pull CPU time of the
        # process, and the main thread's share of it.
        self.rounds: list[dict[str, float]] = [_phases()]
        self.calls: list[dict[str, float]] = []
        self._last = (0.0, 0.0)

    def _count(self, messages: list[Message], attribute: str) -> tuple[int, int]:
        """Add the messages' bytes to ``attribute``; returns (bytes, objects)."""
        start = time.thread_time()
        size = objects = 0
        for message in messages:
            size += message_bytes(message)
            objects += message_objects(message)
        setattr(self, attribute, getattr(self, attribute) + size)
        self.counting_cpu += time.thread_time() - start
        return size, objects

    def cpu(self) -> tuple[float, float]:
        """(process, main-thread) CPU time now, less the counting's."""
        return time.process_time() - self.counting_cpu, time.thread_time() - self.counting_cpu

    def mark_round(self) -> None:
        """Note the CPU times: a round (after the first) starts now."""
        process, main = self.cpu()
        self.marks.append(process)
        self.thread_marks.append(main)
        self.rounds.append(_phases())

    def _timed_call(self, phase: str, call: Any, arg: Any) -> list[Any]:
        """``list(call(arg))``; its process and main-thread CPU time go to the phase's, and to
        ``_last`` for :meth:`_log`."""
        start, thread = time.process_time(), time.thread_time()
        try:
            return list(call(arg))
        finally:
            spent, spent_here = time.process_time() - start, time.thread_time() - thread
            setattr(self, f"{phase}_cpu", getattr(self, f"{phase}_cpu") + spent)
            self.rounds[-1][phase] += spent
            self.rounds[-1][f"{phase}_main"] += spent_here
            self._last = (spent, spent_here)

    def _log(self, phase: str, messages: list[Message]) -> None:
        size, objects = self._count(messages, "sent" if phase == "push" else "received")
        spent, spent_here = self._last
        self.calls.append(
            {
                "phase": phase,
                "round": len(self.rounds),
                "cpu": spent,
                "main": spent_here,
                "messages": len(messages),
                "objects": objects,
                "bytes": size,
            }
        )

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.exchanges += bool(messages)
        ids = self._timed_call("push", self.grid.push_messages, messages)
        self._log("push", messages)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        self.rounds[-1]["pulls"] += 1
        replies = self._timed_call("pull", self.grid.pull_messages, message_ids)
        self._log("pull", replies)
        return replies

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


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name (``native-<tid>`` for
    threads Python did not start: numba's, torch's, OpenMP's)."""
    import os
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        name = names.get(int(task.name), f"native-{task.name}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _phases() -> dict[str, float]:
    return dict.fromkeys(("push", "push_main", "pull", "pull_main", "pulls"), 0.0)


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
    threads_before = _thread_cpu()
    wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
    body(counting, rounds)
    if profile is not None:
        profile.disable()
    wall = time.perf_counter() - wall
    end, thread_end = counting.cpu()
    threads_after = _thread_cpu()
    if len(counting.marks) != rounds - 1:
        raise RuntimeError(f"{len(counting.marks)} round marks in {rounds} rounds")
    bounds = [cpu, *counting.marks, end]
    per_round = [b - a for a, b in itertools.pairwise(bounds)]
    main = [b - a for a, b in itertools.pairwise([thread, *counting.thread_marks, thread_end])]
    phases = counting.rounds
    # Where a round's process CPU time went: the main thread's work outside push and pull (the
    # strategy or workflow, building and reading messages), push and pull (Flower's transport:
    # the main thread's part plus the threads it starts), and the other threads' CPU outside
    # push and pull (Flower's heartbeat and log threads, thread pools), which accrue while the
    # server waits for replies.
    split = {
        "strategy": [
            m - p["push_main"] - p["pull_main"] for m, p in zip(main, phases, strict=True)
        ],
        "push": [p["push"] for p in phases],
        "pull": [p["pull"] for p in phases],
        "pulls": [p["pulls"] for p in phases],
        "other_threads": [
            c - m - (p["push"] - p["push_main"]) - (p["pull"] - p["pull_main"])
            for c, m, p in zip(per_round, main, phases, strict=True)
        ],
    }
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
        **{f"round_{k}_cpu_s" if k != "pulls" else "round_pulls": v for k, v in split.items()},
        **{
            f"{k}_cpu_s_after_first" if k != "pulls" else "pulls_after_first": float(
                np.median(v[1:] or v)
            )
            for k, v in split.items()
        },
        "calls": counting.calls,
        "thread_cpu_s": {
            name: threads_after[name] - threads_before.get(name, 0.0)
            for name in threads_after
            if threads_after[name] - threads_before.get(name, 0.0) > 0.005
        },
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
