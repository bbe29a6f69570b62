"""What a secure Flower run is compared with: the plain apps, AggkitStrategy and MaskingBackend.

The reference runs in this process: the plain MNIST ClientApp on an in-process grid, and
:class:`AggkitStrategy` whose aggregator's secure sums go through
:class:`aggkit.secure.backend.MaskingBackend` with the same dropouts as the secure run (a node
that dies at a protocol stage of round ``r`` is a dropout at that stage in round ``r`` and absent
afterwards). Also here: a grid that kills nodes at given (round, stage) points, for in-process
runs of the secure apps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Message

from aggkit.secure.backend import MaskingBackend
from aggkit.secure.messages import STAGES, decode
from aggkit_torch.flower.strategy import AggkitStrategy
from tests.flower.local_grid import LocalGrid

#: ``{partition: (round, stage)}``: the node dies when that stage's request reaches it.
Deaths = Mapping[int, tuple[int, str]]


def stage_of(message: Message) -> tuple[int | None, str]:
    """``(round or None, protocol stage)`` a message to a node belongs to."""
    records = message.content.config_records
    config = records.get("config")
    if config is not None and "server-round" in config:  # a train message: the round starts
        return int(config["server-round"]), STAGES[0]
    if "secagg" in records:
        return None, decode(records["secagg"]["msg"]).STAGE
    return None, ""


class DyingGrid(LocalGrid):
    """A LocalGrid whose nodes die (never answer again) at the given (round, stage) points."""

    def __init__(self, client_app, node_configs, run_config=None, deaths: Deaths | None = None):
        super().__init__(client_app, node_configs, run_config)
        self.deaths = dict(deaths or {})
        self.round: dict[int, int] = {}
        self.stages: list[str] = []  # the stage of every message pulled, in order

    def pull_messages(self, message_ids):
        ids = list(message_ids)
        for key in ids:
            message = self._outbox[key]
            node = message.metadata.dst_node_id
            partition = self.node_configs[node]["partition-id"]
            server_round, stage = stage_of(message)
            self.stages.append(stage)
            if server_round is not None:
                self.round[node] = server_round
            death = self.deaths.get(partition)
            if death is None:
                continue
            now = self.round.get(node, 0)
            dead_round, dead_stage = death
            if (now, STAGES.index(stage) if stage in STAGES else -1) >= (
                dead_round,
                STAGES.index(dead_stage),
            ) or now > dead_round:
                self.offline.add(node)
        return super().pull_messages(ids)


class MaskedReference(AggkitStrategy):
    """AggkitStrategy whose secure sums run through MaskingBackend with the given dropouts."""

    def __init__(self, *args: Any, deaths: Deaths | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deaths = dict(deaths or {})
        self.backend = MaskingBackend(seed=0)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        order = [p for _, p, _ in self.sampled_replies(replies)[0]]
        plan: dict[str, list[int]] = {}
        for partition, (dead_round, stage) in self.deaths.items():
            if dead_round == server_round and partition in order and stage != STAGES[0]:
                plan.setdefault(stage, []).append(order.index(partition))
        with self.backend.round(dropouts=plan):
            return super().aggregate_train(server_round, replies)


class AbsentAfterDeath(LocalGrid):
    """The reference's grid: a node that died in round ``r`` does not answer after round ``r``."""

    def __init__(self, client_app, node_configs, run_config=None, deaths: Deaths | None = None):
        super().__init__(client_app, node_configs, run_config)
        self.deaths = dict(deaths or {})

    def pull_messages(self, message_ids):
        ids = list(message_ids)
        for key in ids:
            message = self._outbox[key]
            node = message.metadata.dst_node_id
            partition = self.node_configs[node]["partition-id"]
            server_round, _ = stage_of(message)
            death = self.deaths.get(partition)
            if death is not None and server_round is not None and server_round > death[0]:
                self.offline.add(node)
        return super().pull_messages(ids)


def masked_reference_run(nodes, config: dict[str, Any], deaths: Deaths) -> dict[str, Any]:
    """The reference run's summary (``server_app.run``'s) for ``nodes`` (node id -> config)."""
    import functools

    from aggkit_torch.flower import client_app, server_app

    grid = AbsentAfterDeath(client_app.app, nodes, config, deaths)
    strategy = functools.partial(MaskedReference, deaths=deaths)
    return server_app.run(grid, config, strategy_class=strategy)
