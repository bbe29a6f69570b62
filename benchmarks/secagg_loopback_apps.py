"""The nodes' side of ``benchmarks/secagg_loopback.py``: ClientApps and shared helpers.

Two ClientApps, each doing one thing: a round of secure aggregation of the MNIST CNN's arrays
(431,080 float32 values), with no training (a node's "trained" model is the global model plus a
fixed noise drawn from its partition id), so that a round is the aggregation alone.

- ``aggkit_client``: answers with :func:`aggkit_torch.flower.secure_apps.answer_train` and
  ``secure_apps.secagg``, as the MNIST secure apps do (the server side:
  ``benchmarks/secagg_loopback_servers.py``, ``aggkit_server``).
- ``flower_client``: Flower's legacy ``ClientApp`` with ``secaggplus_mod`` (the server side:
  ``flower_server``, Flower's ``SecAggPlusWorkflow``).

A node starts a fresh ``flwr-clientapp`` process for every message, which imports this module:
it imports nothing of the server side (aggkit's server classes import torch).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
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


def message_objects(message: Message) -> int:
    """Objects of a message (each its own request to the SuperLink), the message included."""
    if message.has_error():
        return 1
    return 1 + len(get_all_nested_objects(message.content))


# -- aggkit ---------------------------------------------------------------------------------------

aggkit_client = ClientApp()


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


# -- Flower's SecAgg+ -----------------------------------------------------------------------------


def legacy() -> Any:
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
    flwr = legacy()
    partition = int(context.node_config["partition-id"])

    class Fixed(flwr.client.NumPyClient):
        def fit(self, parameters: list[np.ndarray], config: Any) -> Any:
            arrays = dict(enumerate(parameters))
            out = trained({str(i): a for i, a in arrays.items()}, partition)
            return [out[str(i)] for i in range(len(parameters))], 100, {}

    return Fixed().to_client()


def _make_flower_client() -> Any:
    flwr = legacy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flwr.client.ClientApp(client_fn=_client_fn, mods=[flwr.client.mod.secaggplus_mod])


flower_client = _make_flower_client()
