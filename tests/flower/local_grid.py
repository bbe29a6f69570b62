"""An in-process Flower Grid: messages go straight to a ClientApp, one context per node.

It runs a strategy's rounds without a SuperLink, so the strategy and the client app can be
checked quickly and exactly; ``test_real_runs.py`` runs the same apps through Flower itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid


class LocalGrid(Grid):
    """Nodes ``node_configs`` (node id -> node config) that run ``client_app`` in-process.

    ``sent`` records every message pushed, in order. A node id in ``offline`` is listed but
    never answers (a dropout).
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, Mapping[str, Any]],
        run_config: Mapping[str, Any] | None = None,
    ):
        self.client_app = client_app
        self.node_configs = {node: dict(config) for node, config in node_configs.items()}
        self.run_config = dict(run_config or {})
        self.states = {node: RecordDict() for node in self.node_configs}
        self.sent: list[Message] = []
        self.offline: set[int] = set()
        self._outbox: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            key = str(len(self.sent))
            self.sent.append(message)
            self._outbox[key] = message
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        for key in message_ids:
            message = self._outbox.pop(key)
            node = message.metadata.dst_node_id
            if node in self.offline:
                continue
            context = Context(
                run_id=1,
                node_id=node,
                node_config=self.node_configs[node],
                state=self.states[node],
                run_config=self.run_config,
            )
            try:
                replies.append(self.client_app(message, context))
            except Exception as error:  # what a SuperNode sends back for a failed ClientApp
                replies.append(Message(Error(code=1, reason=repr(error)), reply_to=message))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
