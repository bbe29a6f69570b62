"""A Flower strategy whose aggregation is an aggkit aggregator.

:class:`AggkitStrategy` is a strategy of Flower's message API (``flwr.serverapp.strategy``,
run by ``strategy.start(grid, arrays, num_rounds)`` in a ``ServerApp``). Clients reply to a
train message as with Flower's ``FedAvg``: their trained arrays (one ``ArrayRecord``) and a
``MetricRecord`` holding ``"num-examples"``. Each round the strategy

1. samples the round's clients (``config.clients_per_round`` of them, or that many on average
   with ``config.sampling="poisson"``). By default it samples *partitions* exactly as
   :meth:`FederatedTrainer.sample_clients <aggkit_torch.federated.FederatedTrainer.sample_clients>`
   does, from ``(seed, round)``: it asks every new node once which partition it holds (a
   ``"query.partition"`` message, which :mod:`aggkit_torch.flower.client_app` answers from the
   node config's ``partition-id`` and ``num-partitions``) and sends the round to the nodes of
   the sampled partitions. With ``partition_sampling=False`` it samples connected nodes at
   random, as Flower's strategies do;
2. sends them the global arrays and the client-side half of the :class:`FedAvgConfig` (seed,
   local epochs or steps, batch size, client optimizer; :func:`~aggkit_torch.flower.run_config.
   client_train_config`);
3. validates every reply first and writes each usable one's update ``global - trained`` into its
   row of an :class:`aggkit.ClientBatch`, in sampling order. A reply is *dropped*, logged and
   reported (node id and reason) when it is an error, comes from a node that was not sampled or
   answers twice, its arrays differ from the global model's (keys, shapes, dtypes), or its
   ``"num-examples"`` is missing, not a number, negative, zero, not finite or above 2**53 (when
   the weighting reads it). An update holding NaN or Inf is replaced by zeros with weight 0, as
   :class:`~aggkit_torch.federated.FederatedTrainer` does;
4. aggregates the rows with the aggkit process, whose state it keeps across rounds. Weighted
   processes get one weight per client from the weighting policy (``config.client_weighting``;
   by default ``"capped"``: ``"num-examples"`` bounded by the count the server knows for the
   partition, from ``partition_sizes``, else by ``config.weight_cap`` times the round's median);
   unweighted ones get none;
5. applies the aggregate as a pseudo-gradient with the server optimizer (SGD with learning
   rate 1.0 is FedAvg; momentum is FedAvgM; Adam is FedAdam);
6. returns the new arrays and a ``MetricRecord``: the clients' metrics averaged with the weights
   the round used, the aggregator's measurements flattened under ``"aggregator/"``
   (``aggregator/zeroing_norm``, ``aggregator/zeroing/clipping_norm``, ...), ``"clients"``,
   ``"nonfinite-clients"``,
   ``"capped-clients"``, ``"dropped-clients"`` and ``"dropped-nodes"`` (their node ids; the
   reasons are in the log and in :attr:`AggkitStrategy.history`), and ``"committed"`` (1 or 0);
   with a DP aggregator also the run's ``"epsilon"`` at ``config.delta``, accounted for the
   sampling the strategy did (:class:`~aggkit_torch.accounting.RunAccountant`; without
   partition sampling the population is unknown and no amplification by sampling is claimed).

Steps 3 to 5 are :mod:`aggkit_torch.rounds`, the round core :class:`FederatedTrainer` runs too. A
round is a transaction: the global arrays, the server optimizer and the aggregator state change
only when it succeeded. A round left with no usable reply (or whose aggregate or server step
would not be finite) returns no arrays, so Flower keeps the previous ones, reports
``committed=0`` and logs why. No reply, however malformed, raises out of ``configure_train`` or
``aggregate_train``: a bad node is dropped, never the run. Nodes that answer the partition query
inconsistently (a ``num-partitions`` other than the majority's or ``partition_sizes``', a
partition another node also claims, a malformed answer) are left out of sampling and reported in
every round's metrics (``"excluded-nodes"``).

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
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch

import aggkit as ak
from aggkit_torch.accounting import RunAccountant
from aggkit_torch.federated import FedAvgConfig, make_server_optimizer, sample_clients
from aggkit_torch.flower import require_flwr
from aggkit_torch.flower.rows import RowDecoder
from aggkit_torch.flower.run_config import client_train_config
from aggkit_torch.local_training import examples_per_round
from aggkit_torch.rounds import Round, RoundCore, server_step

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
        Weighted (given client weights) or unweighted (given none); created for the floating
        arrays of the first global ``ArrayRecord`` (float16, float32 or float64). Integer arrays
        (``num_batches_tracked``) are never aggregated: the server keeps its own value, as
        :class:`~aggkit_torch.federated.FederatedTrainer` does.
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
    buffer_keys : collection of str, optional
        The keys of the global ``ArrayRecord`` that are buffers, not parameters (default: those
        ending in ``running_mean`` or ``running_var``, BatchNorm's statistics;
        :func:`aggkit_torch.params.buffer_names` lists a model's). With ``config.buffers=
        "aggregate"`` they are aggregated and set to ``buffer - update`` (no server optimizer
        step); with ``"local"`` (FedBN) they are not aggregated and the server's stay as they
        are (the clients' values are ignored).
    partition_sizes : sequence of int, optional
        The number of training examples of each partition, if the server knows them (index:
        partition id). They fix ``num-partitions`` and, under ``client_weighting="capped"``,
        bound each partition's weight by what an honest client processes on it
        (:func:`~aggkit_torch.local_training.examples_per_round`); without them the cap is
        ``config.weight_cap`` times the round's median count.

    Attributes
    ----------
    process : aggkit.AggregationProcess or None
        The aggregator's process (created at the first round).
    aggregator_state
        Its state, carried across rounds (replaced only by a committed round).
    server_optimizer : torch.optim.Optimizer or None
        The server optimizer over the global arrays (created at the first round).
    trusted_examples : list of int or None
        The example count trusted for each partition (from ``partition_sizes``).
    history : list of dict
        One entry per round, with the keys of :meth:`FederatedTrainer.run_round
        <aggkit_torch.federated.FederatedTrainer.run_round>`'s metrics (``clients`` holds the
        partitions, or the node ids without partition sampling; each ``dropped`` entry also
        has the ``node``), plus ``excluded``: the connected nodes left out of sampling, with
        the reason.
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
        partition_sizes: Sequence[int] | None = None,
        buffer_keys: Iterable[str] | None = None,
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
        if config.sampling == "epochs":
            raise ValueError(
                "sampling='epochs' (DP-FTRL's every client once per epoch) is a FederatedTrainer "
                "scheme; the strategy samples 'fixed_size' or 'poisson'"
            )
        if config.sampling == "poisson" and not partition_sampling:
            raise ValueError(
                "sampling='poisson' needs partition_sampling=True: each partition joins a round "
                "with probability clients_per_round / num-partitions"
            )
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
        self.trusted_examples: list[int] | None = None
        if partition_sizes is not None:
            self.trusted_examples = [
                examples_per_round(
                    int(size),
                    epochs=config.local_epochs,
                    steps=config.local_steps,
                    batch_size=config.batch_size,
                )
                for size in partition_sizes
            ]
            if not self.trusted_examples:
                raise ValueError("partition_sizes must not be empty")
        self.buffer_keys = None if buffer_keys is None else frozenset(map(str, buffer_keys))
        self.layout: ak.Layout | None = None
        self._keys: list[str] = []  # the global ArrayRecord's keys, in order
        self._kept: dict[str, np.ndarray] = {}  # arrays the server keeps (not aggregated)
        self._aggregated: list[str] = []  # the keys aggkit aggregates, in order
        self._buffers: dict[str, torch.Tensor] = {}  # aggregated buffers (no optimizer step)
        self.process: ak.AggregationProcess | None = None
        self.aggregator_state: Any = None
        self.history: list[dict[str, Any]] = []
        self.accountant: RunAccountant | None = None  # created once the population is known
        self._core: RoundCore | None = None
        self._decoder: RowDecoder | None = None
        self._params: dict[str, torch.Tensor] = {}
        self.server_optimizer: torch.optim.Optimizer | None = None
        self._global: np.ndarray | None = None
        # node id -> (partition, num-partitions) as the node answered; None: no usable answer.
        self._answers: dict[int, tuple[int, int] | None] = {}
        self._partition_of: dict[int, int | None] = {}  # node id -> partition (None: excluded)
        self._num_partitions: int | None = (
            len(self.trusted_examples) if self.trusted_examples is not None else None
        )
        self._sampled: dict[int, tuple[int, int | None]] = {}  # node id -> (row, partition)
        self._exclusions: dict[int, str] = {}  # node id -> why it is left out of sampling
        self._excluded: list[dict[str, Any]] = []  # the connected ones, this round
        self._no_targets: str | None = None  # why this round has no clients (if so)
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
        if list(structure) != self._keys:
            raise ValueError(
                f"the global arrays' keys changed: {list(structure)}, first {self._keys}"
            )
        self._global = self.layout.flatten({key: structure[key] for key in self._aggregated})
        with torch.no_grad():
            for tensors in (self._params, self._buffers):
                for key, t in tensors.items():
                    t.copy_(torch.from_numpy(np.ascontiguousarray(structure[key])))
        self._kept = {key: structure[key] for key in self._kept}

    def _is_buffer(self, key: str) -> bool:
        if self.buffer_keys is not None:
            return key in self.buffer_keys
        return key.endswith(("running_mean", "running_var"))

    def _start(self, structure: dict[str, np.ndarray]) -> None:
        aggregated, kept = {}, {}
        for key, array in structure.items():
            if array.dtype.kind not in "fiub":
                raise TypeError(
                    f"global array {key!r} is {array.dtype}; aggkit aggregates float16, float32 "
                    "and float64 arrays (integer ones stay the server's)"
                )
            local = self.config.buffers == "local" and self._is_buffer(key)
            (kept if array.dtype.kind != "f" or local else aggregated)[key] = array
        if not aggregated:
            raise TypeError("the global ArrayRecord has no floating-point array to aggregate")
        layout = ak.Layout({k: ak.TensorSpec(a.shape, a.dtype) for k, a in aggregated.items()})
        process = self.aggregator.create(layout)
        state = process.initialize()
        tensors = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in aggregated.items()}
        params = {k: torch.nn.Parameter(t) for k, t in tensors.items() if not self._is_buffer(k)}
        self._buffers = {k: t for k, t in tensors.items() if self._is_buffer(k)}
        self._keys, self._kept, self._aggregated = list(structure), kept, list(aggregated)
        optimizer = make_server_optimizer(params.values(), self.config)
        core = RoundCore(
            process, weighting=self.config.client_weighting, weight_cap=self.config.weight_cap
        )
        self.layout, self.process, self.aggregator_state = layout, process, state
        self._decoder = RowDecoder(list(aggregated), layout)
        self._params, self.server_optimizer, self._core = params, optimizer, core

    def _apply(self, update: dict[str, np.ndarray]) -> ArrayRecord | None:
        """One server-optimizer step with ``update`` as the gradient: the new global arrays, or
        None (and nothing changed) if the step would make them non-finite."""
        assert self.server_optimizer is not None
        if not server_step(
            self.server_optimizer, self._params.items(), update, self._buffers.items()
        ):
            return None
        # Array serializes at once (np.save into its bytes): no copy of the tensors first.
        values = {**self._params, **self._buffers}
        return ArrayRecord(
            {
                k: Array(values[k].detach().numpy() if k in values else self._kept[k])
                for k in self._keys
            }
        )

    # -- sampling -------------------------------------------------------------------------------

    def sample_partitions(self, server_round: int, num_partitions: int) -> np.ndarray:
        """The partitions of ``server_round`` (1-based): those of the trainer's round
        ``server_round - 1``, from the same ``(seed, round)`` generator."""
        k = self.config.clients_per_round
        if k > num_partitions:
            raise ValueError(
                f"clients_per_round ({k}) exceeds the number of partitions ({num_partitions})"
            )
        return sample_clients(
            self.config.seed, server_round - 1, num_partitions, k, self.config.sampling
        )

    def _discover(self, nodes: Sequence[int], grid: Grid) -> None:
        """Ask ``nodes`` which partition they hold (once per node that answers)."""
        messages = [
            Message(
                RecordDict({self.configrecord_key: ConfigRecord()}),
                dst_node_id=node,
                message_type=PARTITION_QUERY,
            )
            for node in nodes
        ]
        asked = set(nodes)
        for reply in grid.send_and_receive(messages, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            if node not in asked or node in self._answers:
                continue  # not asked, or a second answer: the first one stands
            if reply.has_error():
                self._answers[node] = None
                self._exclusions[node] = (
                    f"did not say which partition it holds ({reply.error.reason})"
                )
                continue
            answer = _partition_reply(reply)
            if isinstance(answer, str):
                self._answers[node] = None
                self._exclusions[node] = answer
            else:
                self._answers[node] = answer

    def _assign(self) -> None:
        """Partitions of the nodes that answered consistently; the others are excluded.

        ``num-partitions`` is ``partition_sizes``' length when given, else the value most nodes
        report (ties: the smallest); a node reporting another value is excluded. A partition
        claimed by two or more nodes is served by none of them: the server cannot tell which one
        holds it, and taking the first would let any node take over a partition.
        """
        answers = {node: a for node, a in self._answers.items() if a is not None}
        count = self._num_partitions if self.trusted_examples is not None else None
        if count is None and answers:
            votes = Counter(c for _, c in answers.values())
            count = min(votes, key=lambda c: (-votes[c], c))
        self._num_partitions = count
        claims: dict[int, list[int]] = {}
        for node, (partition, reported) in answers.items():
            if reported == count:
                claims.setdefault(partition, []).append(node)
        for node, answer in self._answers.items():
            if answer is None:
                self._partition_of[node] = None
                continue
            partition, reported = answer
            if reported != count:
                reason = f"reports num-partitions={reported}, but there are {count}"
            elif len(claims[partition]) > 1:
                others = sorted(n for n in claims[partition] if n != node)
                reason = f"claims partition {partition}, as do nodes {others}: none is used"
            else:
                self._partition_of[node] = partition
                self._exclusions.pop(node, None)
                continue
            self._partition_of[node] = None
            if self._exclusions.get(node) != reason:
                log(WARNING, "node %d is left out of sampling: it %s", node, reason)
            self._exclusions[node] = reason

    def _sample_partition_nodes(
        self, server_round: int, grid: Grid
    ) -> tuple[list[tuple[int, int]], str | None]:
        """The round's ``(node, partition)`` targets, and why there are none (if so)."""
        _, connected = sample_nodes(grid, self.min_available_nodes, 0)  # waits for the nodes
        unknown = [node for node in connected if node not in self._answers]
        if unknown:
            self._discover(unknown, grid)
        self._assign()
        online = set(connected)
        self._excluded = [
            {"client": node, "node": node, "reason": reason}
            for node, reason in sorted(self._exclusions.items())
            if node in online
        ]
        if self._num_partitions is None:
            return [], (
                "no node reported its partition; start the SuperNodes with --node-config "
                "'partition-id=<i> num-partitions=<n>', or use partition_sampling=False"
            )
        if self.config.clients_per_round > self._num_partitions:
            return [], (
                f"clients_per_round ({self.config.clients_per_round}) exceeds the number of "
                f"partitions ({self._num_partitions})"
            )
        holder = {
            part: node
            for node, part in self._partition_of.items()
            if part is not None and node in online
        }
        targets, missing = [], []
        for partition in self.sample_partitions(server_round, self._num_partitions):
            partition = int(partition)
            if partition in holder:
                targets.append((holder[partition], partition))
            else:
                missing.append(partition)
        if missing:
            log(WARNING, "round %d: no node holds sampled partitions %s", server_round, missing)
        return targets, None

    # -- the round ------------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the round's clients and send them the global arrays and training config."""
        self._round_started = time.perf_counter()
        self._set_global(arrays)
        self._excluded, self._no_targets = [], None
        if self.partition_sampling:
            targets, self._no_targets = self._sample_partition_nodes(server_round, grid)
            if self._no_targets is not None:
                log(
                    WARNING,
                    "configure_train: no clients in round %d: %s",
                    server_round,
                    self._no_targets,
                )
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
        """Validate the replies, aggregate the usable ones, and commit only a successful round.

        Returns the new global arrays (None when the round was not committed: Flower keeps the
        previous ones) and the round's metrics. A bad reply never raises: it is dropped and
        reported (module docstring).
        """
        if self.process is None or self._global is None or self._core is None:
            raise RuntimeError("aggregate_train before configure_train: no global model yet")
        received = time.perf_counter()
        rnd = self._core.begin(max(len(self._sampled), 1))
        admitted: list[RecordDict] = []
        losses: list[float] = []
        ordered, refused = self.sampled_replies(replies)
        for node, partition, reason in refused:
            self._drop(rnd, node if partition is None else partition, node, partition, reason)
        for node, partition, reply in ordered:
            if self._admit(rnd, reply, node, partition):
                admitted.append(reply.content)
                loss = _metric(reply, "train_loss")
                if loss is not None and math.isfinite(loss):
                    losses.append(loss)
        started = time.perf_counter()
        outcome = rnd.aggregate(self.aggregator_state)
        if self._no_targets is not None and not outcome.ok:
            rnd.fail(self._no_targets)
        aggregated = time.perf_counter()
        arrays = None
        spent = None
        if outcome.ok:
            if self.accountant is None:
                self.accountant = RunAccountant(
                    self.config.sampling,
                    clients_per_round=self.config.clients_per_round,
                    population=self._num_partitions if self.partition_sampling else None,
                    delta=self.config.delta,
                )
            # An aggregator's epsilon for another sampling scheme is refused before any change;
            # a round that was aggregated is accounted even if its step is not applied below.
            self.accountant.check(outcome.measurements)
            spent = self.accountant.record(outcome.state, outcome.measurements)
            arrays = self._apply(outcome.result)  # type: ignore[arg-type]
            if arrays is None:
                rnd.fail("the server step would make the global model non-finite")
            else:
                self.aggregator_state = outcome.state
                rnd.committed = True
        if not rnd.committed:
            log(
                WARNING,
                "round %d not committed (%s): the global model, server optimizer and "
                "aggregator state are unchanged",
                server_round,
                rnd.failure,
            )
        report = rnd.metrics()
        metrics = self._client_metrics(admitted, rnd)
        for key, value in outcome.measurements.items():
            metrics[MEASUREMENT_PREFIX + key] = value
        metrics["clients"] = rnd.count
        metrics["nonfinite-clients"] = report["nonfinite_clients"]
        metrics["capped-clients"] = report["capped_clients"]
        metrics["dropped-clients"] = len(report["dropped"])
        metrics["dropped-nodes"] = [int(item["node"]) for item in report["dropped"]]
        metrics["excluded-nodes"] = [int(item["node"]) for item in self._excluded]
        metrics["committed"] = int(rnd.committed)
        privacy_spent = {}
        if spent is not None:
            privacy_spent = {"epsilon": spent["epsilon"], "delta": spent["delta"]}
            metrics["epsilon"], metrics["delta"] = spent["epsilon"], spent["delta"]
        self.history.append(
            {
                "round": server_round,
                **report,
                "excluded": [dict(item) for item in self._excluded],
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "measurements": outcome.measurements,
                "train_seconds": received - self._round_started,
                "aggregate_seconds": aggregated - started,
                "round_seconds": time.perf_counter() - self._round_started,
                "sampling": self.config.sampling,
                **privacy_spent,
            }
        )
        return arrays, metrics

    # -- helpers --------------------------------------------------------------------------------

    def sampled_replies(
        self, replies: Iterable[Message]
    ) -> tuple[list[tuple[int, int | None, Message]], list[tuple[int, int | None, str]]]:
        """This round's replies sorted out: ``(ordered, refused)``.

        ``ordered`` holds ``(node, partition, reply)`` for the sampled nodes' first replies that
        are not errors, in sampling order (the order of the round's rows); ``refused`` holds
        ``(node, partition, reason)`` for error replies, replies from nodes not sampled this
        round and second replies (``partition`` None where the node has none).
        """
        known: dict[int, tuple[int, int | None, Message]] = {}
        refused: list[tuple[int, int | None, str]] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in self._sampled:
                refused.append((node, None, "was not sampled this round"))
                continue
            row, partition = self._sampled[node]
            if node in known:
                refused.append((node, partition, "replied more than once"))
            elif reply.has_error():
                refused.append((node, partition, f"replied with an error ({reply.error.reason})"))
            else:
                known[node] = (row, partition, reply)
        ordered = [
            (node, part, reply)
            for node, (_, part, reply) in sorted(known.items(), key=lambda item: item[1][0])
        ]
        return ordered, refused

    def _drop(self, rnd: Round, label: Any, node: int, partition: int | None, reason: str) -> bool:
        log(WARNING, "%s: dropped from the round: %s", _describe(node, partition), reason)
        rnd.drop(label, reason, node=node)
        return False

    def _admit(self, rnd: Round, reply: Message, node: int, partition: int | None) -> bool:
        """Validate ``reply`` and write its update into the round; True if it counts."""
        label = partition if partition is not None else node
        reported = _raw_metric(reply, self.weighted_by_key)
        problem = rnd.count_problem(reported)
        if problem is not None:
            return self._drop(rnd, label, node, partition, f"{self.weighted_by_key}: {problem}")
        row = rnd.next_row()
        try:
            record = self._aggregated_arrays(self._reply_record(reply))
            # The update global - trained, decoded in place when the reply has the global
            # model's .npy form (the usual case), else through Array.numpy() and the layout.
            finite = self._decoder.update_into(record, self._global, row)  # type: ignore
            if finite is None:
                arrays = {key: array.numpy() for key, array in record.items()}
                self.layout.flatten(arrays, out=row)  # type: ignore[union-attr]
                np.subtract(self._global, row, out=row)
        except ak.InvalidUpdateError as error:
            return self._drop(rnd, label, node, partition, _reason(error))
        except (ValueError, TypeError) as error:  # an Array whose bytes do not decode
            return self._drop(rnd, label, node, partition, f"unreadable arrays ({error})")
        known = None
        if self.trusted_examples is not None and partition is not None:
            known = self.trusted_examples[partition]
        if rnd.add(label, reported=reported, known=known, finite=finite, node=node):
            return True
        log(WARNING, "%s sent a non-finite update: zeroed, weight 0", _describe(node, partition))
        return False

    def _reply_record(self, reply: Message) -> ArrayRecord:
        records = reply.content.array_records
        if self.arrayrecord_key in records:
            record = records[self.arrayrecord_key]
        elif len(records) == 1:
            record = next(iter(records.values()))
        else:
            raise ak.InvalidUpdateError(
                f"replied with ArrayRecords {sorted(records)}; expected one, "
                f"{self.arrayrecord_key!r}"
            )
        return record

    def _aggregated_arrays(self, record: ArrayRecord) -> ArrayRecord | dict[str, Array]:
        """The reply's arrays that aggkit aggregates (all of them unless the server keeps some:
        those must be there too, and are never read)."""
        if not self._kept:
            return record
        if set(record) != set(self._keys):
            raise ak.InvalidUpdateError(
                f"replied with array keys {sorted(record)}; expected {sorted(self._keys)}"
            )
        return {key: record[key] for key in self._aggregated}

    def _client_metrics(self, contents: list[RecordDict], rnd: Round) -> MetricRecord:
        """The admitted clients' own metrics, averaged with the weights the round used.

        Each finite client's ``weighted_by_key`` is replaced by its weight in the round (capped,
        or 1 for uniform or unweighted rounds), so a client cannot dominate the reported metrics
        either. Empty when the clients' records cannot be averaged.
        """
        weights = [float(w) for w in rnd.weights()[rnd.finite_rows()]]
        if not contents or len(weights) != len(contents):
            return MetricRecord()
        usable = []
        for content, weight in zip(contents, weights, strict=True):
            records = _metric_records(content)
            if len(records) != 1:
                return MetricRecord()
            record = MetricRecord(dict(records[0]))
            record[self.weighted_by_key] = weight
            usable.append(RecordDict({"metrics": record}))
        try:
            return self.train_metrics_aggr_fn(usable, self.weighted_by_key)
        except (ArithmeticError, KeyError, TypeError, ValueError) as error:
            log(WARNING, "the clients' metrics could not be averaged: %r", error)
            return MetricRecord()


def _describe(node: int, partition: int | None) -> str:
    if partition is None:
        return f"node {node}"
    return f"node {node} (partition {partition})"


def _reason(error: ak.InvalidUpdateError) -> str:
    """What is wrong with a reply, from the error's structured fields (its tensor, if any)."""
    if error.path is None:
        return error.detail
    where = "weight" if error.path == "weight" else f"tensor {error.path}"
    return f"{where}: {error.detail}"


def _metric_records(content: RecordDict) -> list[MetricRecord]:
    """``content.metric_records.values()`` without building that typed view (6 us a reply,
    taken three times per reply and round)."""
    return [record for record in content.values() if isinstance(record, MetricRecord)]


def _raw_metric(reply: Message, key: str) -> Any:
    """The value of ``key`` in the reply's MetricRecords as sent (None if absent)."""
    for record in _metric_records(reply.content):
        if key in record:
            return record[key]
    return None


def _metric(reply: Message, key: str) -> float | None:
    """A number from the reply's (first) MetricRecord, or None."""
    for record in _metric_records(reply.content):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _partition_reply(reply: Message) -> tuple[int, int] | str:
    """``(partition-id, num-partitions)`` from a node's answer, or why it is unusable."""
    values: dict[str, Any] = {}
    for record in reply.content.metric_records.values():
        values.update(record)
    partition, count = values.get("partition-id"), values.get("num-partitions")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (partition, count)):
        return (
            "answered the partition query without integer 'partition-id' and 'num-partitions' "
            f"(got {sorted(values)})"
        )
    if not 0 <= partition < count:  # type: ignore[operator]
        return f"reports partition-id {partition} of {count} partitions"
    return int(partition), int(count)  # type: ignore[arg-type]
