"""Secure aggregation on Flower's message API: SecAgg / SecAgg+ between real SuperNodes.

:class:`SecureAggkitStrategy` is an :class:`~aggkit_torch.flower.strategy.AggkitStrategy` whose
server never sees a client's update. Each round it drives one round of aggkit's protocol
(:mod:`aggkit.secure.protocol`) as Flower messages, and the aggkit aggregator's secure sums are
the protocol's (:mod:`aggkit.secure.deployment`):

======================  =======================================  ================================
message                 server -> node                           node -> server
======================  =======================================  ================================
``train``               global arrays, training config, the      trains; packs the integer
                        aggregator's state (JSON), the           vectors its secure channels
                        ``advertise_keys`` request               would carry; its public keys
``query.secagg`` x 3-4  ``share_keys``, ``masked_input``,        the protocol's responses
                        ``consistency_check`` (authenticated
                        mode only), ``unmask``
======================  =======================================  ================================

then the server reconstructs the sum of the survivors' packed vectors, replays the aggregator's
``next`` with those sums, and applies the result with the server optimizer, as
:class:`AggkitStrategy` does. A node that fails or vanishes at any stage is a dropout: the round
goes on without it (its update is in the sum iff its masked input arrived) or, with too few
left, aborts with the model unchanged (``ProtocolAbort`` is logged; nothing was revealed).

The protocol client id of a node is its partition id. Authenticated mode (the default for a
deployment): each node has an Ed25519 identity file (node config ``secagg-key``) and every party
the registry file (run config ``secagg-registry``: partition id -> public key), see
:mod:`aggkit.secure.identity`; an empty ``secagg-registry`` selects the honest-but-curious mode.
The nodes' clients keep their default :class:`~aggkit.secure.protocol.ClientPolicy`.

Waiting for replies. Flower's deployment grid pulls the SuperLink every 3 s until every reply of
an exchange is in, and on a deployment those pulls are most of the server's CPU time (a round's
replies take tens of seconds when each node starts a ClientApp process per message). On such a
grid :meth:`SecureAggkitStrategy.start` waits through :class:`PatientGrid`, which pulls once at
once and then, for an exchange it has seen before, not before 80% of that exchange's last
duration, then every 3 s: the same replies, a fraction of the pulls.

The apps: :mod:`aggkit_torch.flower.secure_apps` (``client_app``, ``server_app``,
``write_secure_app``). ``docs/flower.md`` has the commands for several machines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

import aggkit as ak
from aggkit.secure.deployment import encode_state, plan_of, replay
from aggkit.secure.errors import ProtocolAbort, SecAggError
from aggkit.secure.graph import complete_graph, harary_graph
from aggkit.secure.messages import decode
from aggkit.secure.protocol import SecAggServer
from aggkit.secure.simulation import default_threshold
from aggkit_torch.federated import flatten_measurements
from aggkit_torch.flower.strategy import MEASUREMENT_PREFIX, AggkitStrategy

__all__ = ["SECAGG_QUERY", "GridWrapper", "PatientGrid", "SecureAggkitStrategy"]

#: The message type of the protocol's stages after the first.
SECAGG_QUERY = f"{MessageType.QUERY}.secagg"
#: Where a message carries a protocol message: ``content[SECAGG_KEY]["msg"]`` (bytes).
SECAGG_KEY = "secagg"


class GridWrapper(Grid):
    """A grid that hands every call to ``grid``: subclass it to change some of them.

    Examples
    --------
    >>> class Quiet(GridWrapper):
    ...     def get_node_ids(self):
    ...         return []
    >>> Quiet(None).grid is None
    True
    """

    def __init__(self, grid: Any):
        self.grid = grid

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
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class PatientGrid(GridWrapper):
    """A grid whose ``send_and_receive`` pulls the SuperLink fewer times than Flower's.

    Flower's deployment grid pulls right after pushing, then every ``interval`` (3 s) until every
    reply is in or the timeout passes. This one does the same, except that for an exchange it has
    seen before (same ``key``: the message type unless the caller names a protocol stage) it
    waits, after the first pull, until ``lead`` times that exchange's last duration has passed.
    The replies are the same; when an exchange takes about as long as it did the round before,
    it needs two or three pulls instead of one every 3 s. Everything else is the wrapped grid's.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The run's grid (Flower's ``HttpGrid`` on a deployment).
    interval : float
        Seconds between pulls otherwise (Flower's: 3).
    lead : float
        Fraction of the exchange's last duration to wait before the second pull.

    Attributes
    ----------
    durations : dict of str to float
        The last duration of each exchange (push to the pull that found its last reply).

    Examples
    --------
    >>> class Instant:  # a grid whose replies are there at once
    ...     def push_messages(self, messages):
    ...         return [str(i) for i, _ in enumerate(messages)]
    ...     def pull_messages(self, ids):
    ...         return []
    >>> grid = PatientGrid(Instant())
    >>> grid.send_and_receive([], timeout=1.0)
    []
    >>> sorted(grid.durations)
    ['']
    """

    def __init__(self, grid: Any, interval: float = 3.0, lead: float = 0.8):
        super().__init__(grid)
        self.interval = float(interval)
        self.lead = float(lead)
        self.durations: dict[str, float] = {}

    def send_and_receive(  # type: ignore[override]
        self, messages: Iterable[Message], *, timeout: float | None = None, key: str | None = None
    ) -> list[Message]:
        """Push ``messages``, pull their replies (see the class docstring) until all are in or
        ``timeout`` seconds have passed."""
        messages = list(messages)
        if key is None:
            key = messages[0].metadata.message_type if messages else ""
        started = time.monotonic()
        waiting = set(self.grid.push_messages(messages))
        end = started + (math.inf if timeout is None else float(timeout))
        expected = self.durations.get(key)
        replies: list[Message] = []
        pulls = 0
        while True:
            got = list(self.grid.pull_messages(waiting))
            pulls += 1
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            now = time.monotonic()
            if not waiting or now >= end:
                break
            wait = self.interval
            if pulls == 1 and expected is not None:
                wait = max(wait, self.lead * expected - (now - started))
            time.sleep(min(wait, end - now))
        if not waiting:
            self.durations[key] = time.monotonic() - started
        return replies


def _polls_for_replies(grid: Any) -> bool:
    """Whether ``grid`` finds replies by pulling a SuperLink (Flower's deployment grid, or a grid
    that says so with ``polls_for_replies = True``)."""
    if hasattr(grid, "polls_for_replies"):
        return bool(grid.polls_for_replies)
    from flwr.superlink.grid.http_grid import HttpGrid

    return isinstance(grid, HttpGrid)


class SecureAggkitStrategy(AggkitStrategy):
    """:class:`AggkitStrategy` with secure aggregation (see the module docstring).

    Parameters
    ----------
    aggregator : aggkit.Factory
        A fully secure aggregator (every sum on a secure bit-width channel), e.g.
        ``ak.secure_aggregator()``.
    config : FedAvgConfig, optional
        As for :class:`AggkitStrategy` (partition sampling is required: partition ids are the
        protocol's client ids).
    registry : IdentityRegistry, optional
        Authenticated mode: the nodes' identities, by partition id.
    honest_but_curious : bool
        ``True`` selects the mode without identities; one of the two must be chosen.
    graph : {"secagg+", "secagg"}
        SecAgg+ (Harary graph, ``degree`` neighbours; complete when the round is small) or
        SecAgg (complete graph).
    degree : int, optional
        Neighbours per node for SecAgg+ (default ``2 * ceil(log2 K)``).
    threshold : int, optional
        Shares needed; default a majority of the smallest closed neighbourhood (what the
        nodes' default policy accepts).
    stage_timeout : float
        Seconds each protocol stage waits for replies; a node that has not answered by then
        is a dropout.
    min_round_nodes : int
        After the first round, a round starts once this many nodes are connected (a node that
        died is not waited for).
    **kwargs
        As for :class:`AggkitStrategy`.

    Attributes
    ----------
    secagg_history : list of dict
        Per round: the protocol's included, dropped and bad-share nodes (partition ids), the
        server's seconds in the protocol and the bytes each direction.
    """

    def __init__(
        self,
        aggregator: ak.Factory,
        config: Any = None,
        *,
        registry: Any = None,
        honest_but_curious: bool = False,
        graph: str = "secagg+",
        degree: int | None = None,
        threshold: int | None = None,
        stage_timeout: float = 600.0,
        min_round_nodes: int = 4,
        **kwargs: Any,
    ):
        if kwargs.get("partition_sampling") is False:
            raise ValueError("secure aggregation needs partition sampling (partition = client id)")
        if (registry is None) != bool(honest_but_curious):
            raise TypeError("choose the mode: registry= (authenticated) or honest_but_curious=True")
        if graph not in ("secagg+", "secagg"):
            raise ValueError(f"graph must be 'secagg+' or 'secagg', got {graph!r}")
        super().__init__(aggregator, config, **kwargs)
        self.registry = registry
        self.graph = graph
        self.degree = degree
        self.threshold = threshold
        self.stage_timeout = float(stage_timeout)
        self.min_round_nodes = int(min_round_nodes)
        self.secagg_history: list[dict[str, Any]] = []
        self._grid: Grid | None = None
        self._plan = None
        self._server: SecAggServer | None = None
        self._node_of: dict[int, int] = {}

    def start(self, grid: Grid, *args: Any, **kwargs: Any) -> Any:
        """:meth:`flwr.serverapp.strategy.Strategy.start`, waiting for replies through a
        :class:`PatientGrid` on a deployment (see the module docstring)."""
        if not isinstance(grid, PatientGrid) and _polls_for_replies(grid):
            grid = PatientGrid(grid)
        return super().start(grid, *args, **kwargs)

    # -- round start: train + advertise_keys ---------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the round's nodes; send them the model, the state and the first request."""
        if server_round > 1:  # a node that died is not waited for
            self.min_available_nodes = min(self.min_available_nodes, self.min_round_nodes)
        self._grid = grid
        messages = list(super().configure_train(server_round, arrays, config, grid))
        started = time.perf_counter()
        if self._plan is None:
            self._plan = plan_of(self.process, self.aggregator_state)
        self._node_of = {part: node for node, (_, part) in self._sampled.items()}
        ids = sorted(self._node_of)
        if not ids:
            self._server = None
            return []
        self._server = self._new_server(ids)
        requests = self._server.start()
        state = encode_state(self.aggregator_state)
        weighting = self.config.client_weighting
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            partition = self._sampled[node][1]
            record = ConfigRecord(dict(message.content.config_records[self.configrecord_key]))
            record[SECAGG_KEY] = requests[partition].to_bytes()
            record["secagg-state"] = state
            record["secagg-weighting"] = weighting
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: record})
            out.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._stats = {"server_seconds": time.perf_counter() - started, "bytes_to_nodes": 0}
        self._stats["bytes_to_nodes"] += sum(len(r.to_bytes()) for r in requests.values())
        self._stats["bytes_to_server"] = 0
        return out

    def _new_server(self, ids: list[int]) -> SecAggServer:
        assert self._plan is not None
        if self.graph == "secagg" or len(ids) <= 3:
            graph = complete_graph(ids)
        else:
            graph = harary_graph(ids, self.degree)
        smallest = min(len(v) for v in graph.values()) + 1
        threshold = default_threshold(smallest) if self.threshold is None else self.threshold
        mode = (
            {"registry": self.registry}
            if self.registry is not None
            else {"honest_but_curious": True}
        )
        return SecAggServer(
            ids,
            modulus=self._plan.modulus(len(ids)),
            vector_length=self._plan.length,
            threshold=threshold,
            graph=graph,
            **mode,
        )

    # -- the protocol, then the aggregator ------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the protocol's other stages, replay the aggregator with its sums, apply."""
        if self.process is None:
            raise RuntimeError("aggregate_train before configure_train")
        if self._server is None:
            log(WARNING, "round %d: no node was sampled; the model is unchanged", server_round)
            return None, None
        received = time.perf_counter()
        server, stats = self._server, self._stats
        replies = list(replies)
        losses = [v for r in replies if not r.has_error() and (v := _loss(r)) is not None]
        self._take(server, replies)
        try:
            for _ in server.stages[1:]:
                started = time.perf_counter()
                requests = server.advance()
                messages = []
                for partition, request in requests.items():
                    data = request.to_bytes()
                    stats["bytes_to_nodes"] += len(data)
                    content = RecordDict({SECAGG_KEY: ConfigRecord({"msg": data})})
                    messages.append(
                        Message(
                            content,
                            dst_node_id=self._node_of[partition],
                            message_type=SECAGG_QUERY,
                        )
                    )
                stats["server_seconds"] += time.perf_counter() - started
                assert self._grid is not None
                named = {"key": server.stage} if isinstance(self._grid, PatientGrid) else {}
                answers = self._grid.send_and_receive(messages, timeout=self.stage_timeout, **named)
                self._take(server, answers)
            started = time.perf_counter()
            result = server.finish()
        except ProtocolAbort as abort:
            log(WARNING, "round %d: %s; the model is unchanged", server_round, abort)
            self.secagg_history.append({"round": server_round, "aborted": abort.stage, **stats})
            return None, None
        output = replay(
            self.process, self.aggregator_state, result.sum, self._plan, len(result.included)
        )
        aggregated = time.perf_counter()
        stats["server_seconds"] += aggregated - started
        arrays = self._apply(output.result)
        if arrays is None:  # the server step would make the model non-finite: commit nothing
            log(WARNING, "round %d: non-finite server step; the model is unchanged", server_round)
            return None, None
        self.aggregator_state = output.state
        measurements = flatten_measurements(output.measurements)
        metrics = MetricRecord({MEASUREMENT_PREFIX + k: v for k, v in measurements.items()})
        metrics["clients"] = len(result.included)
        self.secagg_history.append(
            {
                "round": server_round,
                "included": list(result.included),
                "dropped": {k: list(v) for k, v in result.dropped.items()},
                "bad_shares": list(result.bad_shares),
                **stats,
            }
        )
        self.history.append(
            {
                "round": server_round,
                "clients": list(result.included),
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "nonfinite_clients": 0,
                "examples": None,
                "measurements": measurements,
                "train_seconds": received - self._round_started,
                "aggregate_seconds": time.perf_counter() - received,
                "round_seconds": time.perf_counter() - self._round_started,
            }
        )
        log(
            INFO,
            "secure aggregation: %d of %d nodes in the sum, server %.2f s in the protocol",
            len(result.included),
            len(self._node_of),
            stats["server_seconds"],
        )
        return arrays, metrics

    def _take(self, server: SecAggServer, replies: Iterable[Message]) -> None:
        """Hand each reply's protocol message to the server; a bad or failed reply is a dropout."""
        started = time.perf_counter()
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "node %d dropped out: %s", node, reply.error.reason)
                continue
            try:
                data = reply.content.config_records[SECAGG_KEY]["msg"]
                self._stats["bytes_to_server"] += len(data)
                message = decode(data)
                if self._node_of.get(message.client_id) != node:
                    raise SecAggError(f"node {node} answered as client {message.client_id}")
                server.receive(message)
            except (KeyError, TypeError, SecAggError) as error:
                log(WARNING, "node %d: reply refused (%s)", node, error)
        self._stats["server_seconds"] += time.perf_counter() - started


def _loss(reply: Message) -> float | None:
    for record in reply.content.metric_records.values():
        value = record.get("train_loss")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
