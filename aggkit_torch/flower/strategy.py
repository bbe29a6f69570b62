"""A Flower strategy whose aggregation is an aggkit aggregator.

:class:`AggkitStrategy` is a strategy of Flower's message API (``flwr.serverapp.strategy``,
run by ``strategy.start(grid, arrays, num_rounds)`` in a ``ServerApp``). Clients reply to a
train message as with Flower's ``FedAvg``: their trained arrays (one ``ArrayRecord``) and a
``MetricRecord`` holding ``"num-examples"``. Each round the strategy

1. samples ``config.clients_per_round`` clients. By default it samples *partitions* exactly as
   :meth:`FederatedTrainer.sample_clients <aggkit_torch.federated.FederatedTrainer.sample_clients>`
   does, from ``(seed, round)``: it asks every new node once which partition it holds (a
   ``"query.partition"`` message, which :mod:`aggkit_torch.flower.client_app` answers from the
   node config's ``partition-id`` and ``num-partitions``) and sends the round to the nodes of
   the sampled partitions. With ``partition_sampling=False`` it samples connected nodes at
   random, as Flower's strategies do;
2. sends them the global arrays and the client-side half of the :class:`FedAvgConfig` (seed,
   local epochs or steps, batch size, client optimizer; :func:`~aggkit_torch.flower.run_config.
   client_train_config`);
3. writes each reply's update ``global - trained`` into its row of an :class:`aggkit.ClientBatch`,
   in sampling order. A reply whose structure, shapes or dtypes differ from the global model's
   raises :class:`aggkit.InvalidUpdateError` naming the node and its partition (the aggregator's
   state is unchanged); an update holding NaN or Inf is replaced by zeros with weight 0, as
   :class:`~aggkit_torch.federated.FederatedTrainer` does;
4. aggregates the batch with the aggkit process, whose state it keeps across rounds. Weighted
   processes get one weight per client (``"num-examples"`` or 1, per ``client_weighting``);
   unweighted ones get none;
5. applies the aggregate as a pseudo-gradient with the server optimizer (SGD with learning
   rate 1.0 is FedAvg; momentum is FedAvgM; Adam is FedAdam);
6. returns the new arrays and a ``MetricRecord``: the clients' metrics averaged as Flower does,
   the aggregator's measurements flattened under ``"aggregator/"`` (``aggregator/zeroing_norm``,
   ``aggregator/zeroing/clipping_norm``, ...), ``"clients"`` and ``"nonfinite-clients"``.

Given the same seeds, partitions and initial weights, a Flower run of the MNIST apps computes
the same global model as :class:`FederatedTrainer`: the same clients train with the same
generators, their updates land in the same rows, and the same process and server optimizer
apply them (``tests/flower`` checks it on a real SuperLink and SuperNodes).

Examples
--------
In a ``ServerApp``::

    strategy = AggkitStrategy(ak.robust_aggregator(), FedAvgConfig(clients_per_round=10))
    result = strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=3)
    result.train_metrics_clientapp[3]["aggregator/zeroing/clipping_norm"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch

import aggkit as ak
from aggkit_torch.federated import (
    FedAvgConfig,
    apply_update,
    flatten_measurements,
    make_server_optimizer,
    sample_clients,
)
from aggkit_torch.flower import require_flwr
from aggkit_torch.flower.run_config import client_train_config

require_flwr()

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import log  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.serverapp.strategy.strategy_utils import sample_nodes  # noqa: E402

__all__ = ["PARTITION_QUERY", "AggkitStrategy"]

#: The message type with which the strategy asks a node for its partition. The reply holds a
#: MetricRecord with ``"partition-id"`` and ``"num-partitions"``.
PARTITION_QUERY = f"{MessageType.QUERY}.partition"

#: Prefix of the aggregator's measurements among the round's metrics.
MEASUREMENT_PREFIX = "aggregator/"


class AggkitStrategy(FedAvg):
    """Federated averaging on Flower with an aggkit aggregator (see the module docstring).

    Parameters
    ----------
    aggregator : aggkit.Factory
        Weighted (given client weights) or unweighted (given none); created for the structure
        of the first global ``ArrayRecord`` (every array must be floating point).
    config : FedAvgConfig, optional
        Clients per round, client weighting, server optimizer, and the client-side training
        the strategy sends to clients (the same object drives :class:`FederatedTrainer`).
    partition_sampling : bool, default True
        Sample partitions like :class:`FederatedTrainer` (nodes answer ``"query.partition"``);
        False samples connected nodes at random.
    min_available_nodes : int, optional
        Nodes to wait for before the first round; default ``config.clients_per_round``.
    fraction_evaluate, min_evaluate_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As for :class:`flwr.serverapp.strategy.FedAvg` (federated evaluation is FedAvg's).
    query_timeout : float, default 600
        Seconds to wait for the nodes' answers to the partition query.

    Attributes
    ----------
    process : aggkit.AggregationProcess or None
        The aggregator's process (created at the first round).
    aggregator_state
        Its state, carried across rounds.
    history : list of dict
        One entry per aggregated round, with the keys of :meth:`FederatedTrainer.run_round
        <aggkit_torch.federated.FederatedTrainer.run_round>`'s metrics (``clients`` holds the
        partitions, or the node ids without partition sampling).
    """

    def __init__(
        self,
        aggregator: ak.Factory,
        config: FedAvgConfig | None = None,
        *,
        partition_sampling: bool = True,
        min_available_nodes: int | None = None,
        fraction_evaluate: float = 1.0,
        min_evaluate_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        query_timeout: float = 600.0,
    ):
        if not isinstance(aggregator, ak.Factory):
            raise TypeError(f"aggregator must be an aggkit factory, got {aggregator!r}")
        config = FedAvgConfig() if config is None else config
        if not isinstance(config, FedAvgConfig):
            raise TypeError(f"config must be a FedAvgConfig, got {config!r}")
        if min_available_nodes is None:
            min_available_nodes = config.clients_per_round
        if isinstance(min_available_nodes, bool) or not isinstance(min_available_nodes, int):
            raise TypeError(f"min_available_nodes must be an int, got {min_available_nodes!r}")
        if min_available_nodes < 0:
            raise ValueError(f"min_available_nodes must be >= 0, got {min_available_nodes}")
        if not query_timeout > 0:
            raise ValueError(f"query_timeout must be positive, got {query_timeout!r}")
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=config.clients_per_round,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.aggregator = aggregator
        self.config = config
        self.partition_sampling = bool(partition_sampling)
        self.query_timeout = float(query_timeout)
        self.layout: ak.Layout | None = None
        self.process: ak.AggregationProcess | None = None
        self.aggregator_state: Any = None
        self.history: list[dict[str, Any]] = []
        self._params: dict[str, torch.Tensor] = {}
        self._server_optimizer: torch.optim.Optimizer | None = None
        self._global: np.ndarray | None = None
        self._batch: ak.ClientBatch | None = None
        self._partition_of: dict[int, int | None] = {}  # node id -> partition (None: none)
        self._num_partitions: int | None = None
        self._sampled: dict[int, tuple[int, int | None]] = {}  # node id -> (row, partition)
        self._round_started = 0.0

    def summary(self) -> None:
        """Log the configuration (Flower calls it when the run starts)."""
        config = self.config
        log(INFO, "\t├──> aggkit aggregator: %r", self.aggregator)
        sampling = (
            f"partitions sampled from seed {config.seed}"
            if self.partition_sampling
            else "random nodes"
        )
        log(
            INFO,
            "\t├──> %d clients per round (%s), weighting: %s",
            config.clients_per_round,
            sampling,
            config.client_weighting,
        )
        log(
            INFO,
            "\t├──> server optimizer: %s (lr %g, momentum %g)",
            config.server_optimizer,
            config.server_lr,
            config.server_momentum,
        )
        super().summary()

    # -- the global model ------------------------------------------------------------------------

    def _set_global(self, arrays: ArrayRecord) -> None:
        """Take the round's global arrays (creating the process at the first round)."""
        structure = {key: array.numpy() for key, array in arrays.items()}
        if self.layout is None:
            self._start(structure)
        assert self.layout is not None
        self._global = self.layout.flatten(structure)
        with torch.no_grad():
            for key, p in self._params.items():
                p.copy_(torch.from_numpy(np.ascontiguousarray(structure[key])))

    def _start(self, structure: dict[str, np.ndarray]) -> None:
        for key, array in structure.items():
            if array.dtype.kind != "f":
                raise TypeError(
                    f"global array {key!r} is {array.dtype}; aggkit aggregates floating-point "
                    "arrays (keep integer buffers out of the ArrayRecord)"
                )
        layout = ak.Layout({k: ak.TensorSpec(a.shape, a.dtype) for k, a in structure.items()})
        process = self.aggregator.create(layout)
        state = process.initialize()
        params = {
            k: torch.nn.Parameter(torch.from_numpy(np.array(a, copy=True)))
            for k, a in structure.items()
        }
        optimizer = make_server_optimizer(params.values(), self.config)
        self.layout, self.process, self.aggregator_state = layout, process, state
        self._params, self._server_optimizer = params, optimizer

    def _apply(self, update: dict[str, np.ndarray]) -> ArrayRecord:
        """One server-optimizer step with ``update`` as the gradient; the new global arrays."""
        assert self._server_optimizer is not None
        apply_update(self._server_optimizer, self._params.items(), update)
        return ArrayRecord({k: Array(p.detach().numpy()) for k, p in self._params.items()})

    # -- sampling -------------------------------------------------------------------------------

    def sample_partitions(self, server_round: int, num_partitions: int) -> np.ndarray:
        """The partitions of ``server_round`` (1-based): those of the trainer's round
        ``server_round - 1``, from the same ``(seed, round)`` generator."""
        k = self.config.clients_per_round
        if k > num_partitions:
            raise ValueError(
                f"clients_per_round ({k}) exceeds the number of partitions ({num_partitions})"
            )
        return sample_clients(self.config.seed, server_round - 1, num_partitions, k)

    def _discover(self, nodes: Sequence[int], grid: Grid) -> None:
        """Ask ``nodes`` which partition they hold (once per node)."""
        messages = [
            Message(
                RecordDict({self.configrecord_key: ConfigRecord()}),
                dst_node_id=node,
                message_type=PARTITION_QUERY,
            )
            for node in nodes
        ]
        for reply in grid.send_and_receive(messages, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(
                    WARNING,
                    "node %d did not say which partition it holds (%s); it will not be sampled",
                    node,
                    reply.error.reason,
                )
                self._partition_of[node] = None
                continue
            partition, count = _partition_reply(reply, node)
            if self._num_partitions is None:
                self._num_partitions = count
            elif count != self._num_partitions:
                raise ValueError(
                    f"node {node} reports num-partitions={count}, other nodes "
                    f"{self._num_partitions}: every node must split the data the same way"
                )
            self._partition_of[node] = partition

    def _sample_partition_nodes(self, server_round: int, grid: Grid) -> list[tuple[int, int]]:
        _, connected = sample_nodes(grid, self.min_available_nodes, 0)  # waits for the nodes
        unknown = [node for node in connected if node not in self._partition_of]
        if unknown:
            self._discover(unknown, grid)
        holder: dict[int, int] = {}
        for node in connected:
            partition = self._partition_of.get(node)
            if partition is None:
                continue
            if partition in holder:
                raise ValueError(
                    f"nodes {holder[partition]} and {node} both hold partition {partition}"
                )
            holder[partition] = node
        if self._num_partitions is None:
            raise RuntimeError(
                "no node reported its partition; start the SuperNodes with --node-config "
                "'partition-id=<i> num-partitions=<n>', or use partition_sampling=False"
            )
        targets, missing = [], []
        for partition in self.sample_partitions(server_round, self._num_partitions):
            partition = int(partition)
            if partition in holder:
                targets.append((holder[partition], partition))
            else:
                missing.append(partition)
        if missing:
            log(WARNING, "round %d: no node holds sampled partitions %s", server_round, missing)
        return targets

    # -- the round ------------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the round's clients and send them the global arrays and training config."""
        self._round_started = time.perf_counter()
        self._set_global(arrays)
        if self.partition_sampling:
            targets = self._sample_partition_nodes(server_round, grid)
        else:
            nodes, _ = sample_nodes(grid, self.min_available_nodes, self.config.clients_per_round)
            targets = [(node, None) for node in nodes]
        self._sampled = {node: (row, part) for row, (node, part) in enumerate(targets)}
        log(
            INFO,
            "configure_train: %d clients%s",
            len(targets),
            f" (partitions {[p for _, p in targets]})" if self.partition_sampling else "",
        )
        config["server-round"] = server_round
        for key, value in client_train_config(self.config).items():
            config[key] = value
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, [node for node, _ in targets], MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies' updates with the aggkit process; apply the server optimizer.

        Raises
        ------
        aggkit.InvalidUpdateError
            A reply's arrays do not match the global model (names the node and partition),
            or its weight is missing, negative or not finite. The state is unchanged.
        """
        if self.process is None or self._global is None:
            raise RuntimeError("aggregate_train before configure_train: no global model yet")
        received = time.perf_counter()
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        rows = self._in_sampling_order(valid)
        if not rows:
            log(
                WARNING,
                "aggregate_train: no replies in round %d; the model is unchanged",
                server_round,
            )
            return None, None
        batch = self._batch_for(len(rows))
        weights = np.zeros(len(rows))
        finite: list[RecordDict] = []
        losses: list[float] = []
        nonfinite = 0
        for row, (reply, partition) in enumerate(rows):
            who = _describe(reply.metadata.src_node_id, partition)
            out = batch.matrix[row]
            structure = self._reply_arrays(reply, who)
            try:
                self.layout.flatten(structure, out=out, client=row)  # type: ignore[union-attr]
            except ak.InvalidUpdateError as error:
                raise _renamed(error, who) from error
            np.subtract(self._global, out, out=out)  # the update: global - trained
            if np.isfinite(out).all():
                weights[row] = self._weight(reply, who)
                finite.append(reply.content)
                loss = _metric(reply, "train_loss")
                if loss is not None:
                    losses.append(loss)
            else:  # a non-finite update is replaced by zeros, with weight 0
                out[:] = 0.0
                nonfinite += 1
                log(WARNING, "%s sent a non-finite update: zeroed, weight 0", who)
        started = time.perf_counter()
        if self.process.is_weighted:
            output = self.process.next(self.aggregator_state, batch, weights)
        else:
            output = self.process.next(self.aggregator_state, batch)
        aggregated = time.perf_counter()
        arrays = self._apply(output.result)
        self.aggregator_state = output.state
        measurements = flatten_measurements(output.measurements)

        metrics = self._client_metrics(finite)
        for key, value in measurements.items():
            metrics[MEASUREMENT_PREFIX + key] = value
        metrics["clients"] = len(rows)
        metrics["nonfinite-clients"] = nonfinite
        weighted_examples = self.config.client_weighting == "num_examples"
        self.history.append(
            {
                "round": server_round,
                "clients": [
                    part if part is not None else reply.metadata.src_node_id for reply, part in rows
                ],
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "nonfinite_clients": nonfinite,
                "examples": int(weights.sum()) if weighted_examples else None,
                "measurements": measurements,
                "train_seconds": received - self._round_started,
                "aggregate_seconds": aggregated - started,
                "round_seconds": time.perf_counter() - self._round_started,
            }
        )
        return arrays, metrics

    # -- helpers --------------------------------------------------------------------------------

    def _in_sampling_order(self, replies: list[Message]) -> list[tuple[Message, int | None]]:
        """Replies in the order their clients were sampled (unexpected nodes last, by id)."""
        known, unknown = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            if node in self._sampled:
                row, partition = self._sampled[node]
                known.append((row, reply, partition))
            else:
                unknown.append((node, reply, self._partition_of.get(node)))
        known.sort(key=lambda item: item[0])
        unknown.sort(key=lambda item: item[0])
        return [(reply, part) for _, reply, part in known + unknown]

    def _batch_for(self, count: int) -> ak.ClientBatch:
        """A ``[count, n]`` batch whose buffer is reused across rounds."""
        assert self.layout is not None
        if self._batch is None or self._batch.num_clients < count:
            self._batch = self.layout.empty_batch(max(count, self.config.clients_per_round))
        return ak.ClientBatch(self._batch.matrix[:count], self.layout)

    def _reply_arrays(self, reply: Message, who: str) -> dict[str, np.ndarray]:
        records = reply.content.array_records
        if self.arrayrecord_key in records:
            record = records[self.arrayrecord_key]
        elif len(records) == 1:
            record = next(iter(records.values()))
        else:
            raise ak.InvalidUpdateError(
                f"{who} replied with ArrayRecords {sorted(records)}; expected one, "
                f"{self.arrayrecord_key!r}"
            )
        return {key: array.numpy() for key, array in record.items()}

    def _weight(self, reply: Message, who: str) -> float:
        if self.config.client_weighting == "uniform":
            return 1.0
        value = _metric(reply, self.weighted_by_key)
        if value is None:
            raise ak.InvalidUpdateError(
                f"{who} replied without {self.weighted_by_key!r} in its MetricRecord, which "
                "weights its update (client_weighting='num_examples')"
            )
        if not (math.isfinite(value) and value >= 0):
            raise ak.InvalidUpdateError(
                f"{who} replied with {self.weighted_by_key}={value!r}; a weight must be finite "
                "and non-negative"
            )
        return value

    def _client_metrics(self, contents: list[RecordDict]) -> MetricRecord:
        """The clients' own metrics, averaged as Flower's FedAvg does (if they can be)."""
        usable = [
            c
            for c in contents
            if len(c.metric_records) == 1
            and self.weighted_by_key in next(iter(c.metric_records.values()))
        ]
        if not usable or len(usable) != len(contents):
            return MetricRecord()
        return self.train_metrics_aggr_fn(usable, self.weighted_by_key)


def _describe(node: int, partition: int | None) -> str:
    if partition is None:
        return f"node {node}"
    return f"node {node} (partition {partition})"


def _renamed(error: ak.InvalidUpdateError, who: str) -> ak.InvalidUpdateError:
    """``error`` restated for a Flower client (its node and partition, not a batch row)."""
    located = error.client is not None or error.path is not None
    detail = str(error).split(": ", 1)[-1] if located else str(error)
    if error.path is None:
        where = ""
    else:
        where = ", weight" if error.path == "weight" else f", tensor {error.path}"
    renamed = ak.InvalidUpdateError(f"{who}{where}: {detail}")
    renamed.client, renamed.path = error.client, error.path
    return renamed


def _metric(reply: Message, key: str) -> float | None:
    """A number from the reply's (first) MetricRecord, or None."""
    for record in reply.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _partition_reply(reply: Message, node: int) -> tuple[int, int]:
    values = {}
    for record in reply.content.metric_records.values():
        values.update(record)
    try:
        partition, count = int(values["partition-id"]), int(values["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"node {node} answered the partition query without integer 'partition-id' and "
            f"'num-partitions' (got {sorted(values)})"
        ) from None
    if not 0 <= partition < count:
        raise ValueError(f"node {node} reports partition-id {partition} of {count} partitions")
    return partition, count
