"""The Flower ClientApp of federated MNIST: aggkit_torch's model, partitions and training step.

A SuperNode holds one partition of the MNIST training set, named by its node config
(``--node-config 'partition-id=3 num-partitions=10'``; Flower's simulation sets both). The
partitions are the main job's (:func:`~aggkit_torch.flower.run_config.partitions` from the run
config's ``partition``, ``seed`` and ``train-subset``), so node ``i`` trains on exactly the
examples :class:`~aggkit_torch.federated.FederatedTrainer` gives client ``i``. The app answers
three messages:

- ``query.partition``: the node's ``partition-id`` and ``num-partitions`` (how
  :class:`~aggkit_torch.flower.strategy.AggkitStrategy` samples partitions);
- ``train``: load the global arrays into the MNIST CNN, train with
  :func:`~aggkit_torch.local_training.train_local` as the trainer does (a fresh SGD optimizer,
  a generator seeded from ``(seed, round - 1, partition)``), reply with the trained arrays,
  ``num-examples`` and ``train_loss``;
- ``evaluate``: accuracy and loss of the global model on the node's share of the test set.

The node config may also set ``data`` (the directory holding ``MNIST/raw``) when nodes keep
their data in different places; otherwise the run config's ``data`` is used.
"""

from __future__ import annotations

import functools
from typing import Any

from aggkit_torch.flower import require_flwr

require_flwr()

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from aggkit_torch.flower.run_config import (  # noqa: E402
    client_train_settings,
    mnist_args,
    partitions,
)

__all__ = ["app", "node_partition"]

app = ClientApp()


def node_partition(context: Context) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the node config (ValueError if unusable)."""
    config = context.node_config
    try:
        partition, count = int(config["partition-id"]), int(config["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            "this SuperNode has no partition: start it with --node-config "
            "'partition-id=<i> num-partitions=<n>'"
        ) from None
    if not 0 <= partition < count:
        raise ValueError(f"partition-id {partition} is not in [0, num-partitions={count})")
    return partition, count


@app.query("partition")
def query_partition(message: Message, context: Context) -> Message:
    """Tell the strategy which partition this node holds."""
    partition, count = node_partition(context)
    record = MetricRecord({"partition-id": partition, "num-partitions": count})
    return Message(RecordDict({"partition": record}), reply_to=message)


@functools.lru_cache(maxsize=2)
def _mnist(root: str | None, train_subset: int | None) -> Any:
    """MNIST in memory (once per process: a simulation reuses its workers)."""
    from aggkit_torch.data import load_mnist

    mnist = load_mnist(root)
    if train_subset is not None:
        mnist = mnist._replace(
            train_images=mnist.train_images[:train_subset].clone(),
            train_labels=mnist.train_labels[:train_subset].clone(),
        )
    return mnist


def _setup(context: Context) -> tuple[Any, Any, int, int]:
    """The run's arguments, this node's MNIST, partition and partition count."""
    from aggkit_torch.local_training import configure_threads

    args = mnist_args(context.run_config)
    partition, count = node_partition(context)
    if count != args.clients:
        raise ValueError(
            f"the node config says num-partitions={count} but the run config says "
            f"clients={args.clients}; they must agree"
        )
    if args.threads is not None:
        configure_threads(args.threads)
    root = context.node_config.get("data") or args.data or None
    return args, _mnist(root, args.train_subset), partition, count


def _global_model(message: Message, channels_last: bool | None) -> Any:
    """The MNIST CNN holding the message's global arrays."""
    from aggkit_torch.local_training import prepare_model
    from aggkit_torch.models import MnistCNN

    records = message.content.array_records
    record = records["arrays"] if "arrays" in records else next(iter(records.values()))
    model = prepare_model(MnistCNN(), channels_last=channels_last)
    model.load_state_dict(record.to_torch_state_dict())
    return model


def _train_config(message: Message) -> dict[str, Any]:
    records = message.content.config_records
    record = records["config"] if "config" in records else next(iter(records.values()))
    settings = client_train_settings(record)
    settings["round"] = int(record["server-round"])
    return settings


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the global model on this node's partition, as FederatedTrainer trains a client."""
    import torch

    from aggkit_torch.federated import seed_of
    from aggkit_torch.local_training import proximal_term, train_local

    args, mnist, partition, _ = _setup(context)
    settings = _train_config(message)
    indices = partitions(args, mnist.train_labels)[partition]
    model = _global_model(message, settings["channels_last"])
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings["lr"], momentum=settings["momentum"]
    )
    generator = torch.Generator().manual_seed(
        seed_of(settings["seed"], settings["round"] - 1, partition)
    )
    with proximal_term(model, settings["proximal_mu"]):  # FedProx; mu 0: nothing
        result = train_local(
            model,
            optimizer,
            mnist.train_images,
            mnist.train_labels,
            indices,
            epochs=settings["epochs"],
            steps=settings["steps"],
            batch_size=settings["batch_size"],
            generator=generator,
        )
    metrics = MetricRecord({"num-examples": result.num_examples, "train_loss": result.mean_loss})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Accuracy and loss of the global model on this node's share of the test set."""
    import torch

    from aggkit_torch.data import partition_iid
    from aggkit_torch.local_training import evaluate as evaluate_model

    args, mnist, partition, count = _setup(context)
    share = partition_iid(mnist.test_labels, count, seed=args.seed)[partition]
    model = _global_model(message, channels_last=None)
    index = torch.from_numpy(share)
    accuracy, loss = evaluate_model(
        model, mnist.test_images.index_select(0, index), mnist.test_labels.index_select(0, index)
    )
    metrics = MetricRecord(
        {"num-examples": len(share), "test_accuracy": accuracy, "test_loss": loss}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=message)
