"""Client data beyond in-memory tensors: ``Dataset`` s, index partitions of one, ``DataLoader`` s.

:class:`~aggkit_torch.federated.FederatedTrainer` takes client data in one of four forms:

- **tensors** (the fast path, the default): ``train_images``, ``train_labels`` and index
  ``partitions``; batches are gathered with ``index_select``, no ``DataLoader``;
- **one Dataset per client**: ``clients=[ds0, ds1, ...]`` or ``clients={"bob": ds, ...}`` (any
  map-style ``torch.utils.data.Dataset``, e.g. a ``torchvision.datasets`` object with its
  transforms, applied per sample as usual);
- **one Dataset and index partitions**: ``clients=partition_dataset(dataset, partitions)``
  (:class:`torch.utils.data.Subset` s, named when ``partitions`` is a mapping);
- **a DataLoader factory**: ``clients=LoaderClients(factory, names)``, where
  ``factory(client, generator)`` returns an iterable of ``(inputs, targets)`` batches for one
  pass over that client's data (a ``DataLoader`` the user builds: sampler, workers, collate).

Datasets are read through a ``DataLoader`` with ``batch_size`` from the configuration, in the
order of a permutation drawn per pass from the generator seeded per (seed, round, client)
exactly as the tensor path draws it: a ``Subset`` of a ``TensorDataset`` trains the very model
the tensor path trains. ``num_workers`` as given to :class:`DatasetClients` (0 by default:
workers cost a process start per pass). Every batch is moved to the trainer's device. A pass
that is not complete at the step budget stops there, as on the tensor path, so
``examples_per_round`` is the trusted count for datasets too.

Examples
--------
>>> import torch
>>> from torch.utils.data import TensorDataset
>>> data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
>>> clients = partition_dataset(data, {"a": range(0, 4), "b": range(4, 10)})
>>> clients.names, clients.sizes
(['a', 'b'], [4, 6])
>>> [len(x) for x, _ in clients.batches(1, batch_size=4, generator=torch.Generator())]
[4, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["ClientData", "DatasetClients", "LoaderClients", "as_client_data", "partition_dataset"]

Batch = tuple[torch.Tensor, torch.Tensor]


class ClientData:
    """Clients' training data, one pass of batches at a time (the trainer's interface).

    Attributes
    ----------
    names : list of str
        The clients' names (their order is their index).
    sizes : list of int or None
        Each client's number of examples where known (None: unknown, no trusted count).
    """

    names: list[str]
    sizes: list[int | None]

    def batches(self, client: int, *, batch_size: int, generator: torch.Generator) -> Iterable:
        """One pass over ``client``'s data as ``(inputs, targets)`` batches."""
        raise NotImplementedError

    def local_data(self, client: int) -> Any:
        """What a custom ``local_update`` receives as the client's data."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)


def _names_and_values(items: Sequence[Any] | Mapping[Any, Any]) -> tuple[list[str], list[Any]]:
    if isinstance(items, Mapping):
        return [str(k) for k in items], list(items.values())
    values = list(items)
    return [str(i) for i in range(len(values))], values


class DatasetClients(ClientData):
    """One map-style ``Dataset`` per client (a sequence, or a mapping of names to datasets).

    Parameters
    ----------
    datasets : sequence or mapping of torch.utils.data.Dataset
        Each must have a length (``len``) of at least 1 and yield ``(input, target)``.
    num_workers : int, default 0
        ``DataLoader`` workers per pass.
    collate_fn : callable, optional
        The ``DataLoader``'s ``collate_fn``.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset] | Mapping[Any, Dataset],
        *,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ):
        self.names, self.datasets = _names_and_values(datasets)
        if not self.datasets:
            raise ValueError("clients must hold at least one dataset")
        self.sizes = []
        for name, dataset in zip(self.names, self.datasets, strict=True):
            if isinstance(dataset, torch.Tensor) or not hasattr(dataset, "__getitem__"):
                raise TypeError(f"client {name}: expected a map-style Dataset, got {dataset!r}")
            try:
                size = len(dataset)
            except TypeError:
                raise TypeError(f"client {name}: its dataset has no length") from None
            if size < 1:
                raise ValueError(f"client {name}: its dataset is empty")
            self.sizes.append(size)
        self.num_workers = int(num_workers)
        self.collate_fn = collate_fn

    def batches(self, client: int, *, batch_size: int, generator: torch.Generator) -> Iterable:
        order = torch.randperm(self.sizes[client], generator=generator).tolist()
        return DataLoader(
            self.datasets[client],
            batch_size=batch_size,
            sampler=order,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
        )

    def local_data(self, client: int) -> Dataset:
        return self.datasets[client]


class LoaderClients(ClientData):
    """Clients whose batches a user factory builds: ``factory(client, generator)`` returns one
    pass over client ``client`` (its index) as an iterable of ``(inputs, targets)``.

    Parameters
    ----------
    factory : callable
        ``factory(client: int, generator: torch.Generator) -> Iterable[(inputs, targets)]``.
        The generator is seeded per (seed, round, client); use it for shuffling to keep runs
        reproducible. The batch size is the factory's.
    names : int or sequence of str
        The number of clients, or their names.
    sizes : sequence of int, optional
        Each client's example count, if known: the trusted count of ``client_weighting=
        "capped"`` (without it a client's weight is capped at ``weight_cap`` times the round's
        median).

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> shards = [TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))] * 2
    >>> clients = LoaderClients(
    ...     lambda c, g: DataLoader(shards[c], batch_size=3, shuffle=True, generator=g), 2)
    >>> [len(y) for _, y in clients.batches(0, batch_size=0, generator=torch.Generator())]
    [3, 3, 2]
    """

    def __init__(
        self,
        factory: Callable[[int, torch.Generator], Iterable[Batch]],
        names: int | Sequence[str],
        sizes: Sequence[int] | None = None,
    ):
        if not callable(factory):
            raise TypeError(f"factory must be callable, got {factory!r}")
        self.factory = factory
        if isinstance(names, int):
            names = [str(i) for i in range(names)]
        self.names = [str(n) for n in names]
        if not self.names:
            raise ValueError("there must be at least one client")
        if sizes is None:
            self.sizes = [None] * len(self.names)
        else:
            self.sizes = [int(s) for s in sizes]
            if len(self.sizes) != len(self.names) or min(self.sizes) < 1:
                raise ValueError("sizes must hold one positive count per client")

    def batches(self, client: int, *, batch_size: int, generator: torch.Generator) -> Iterable:
        return self.factory(client, generator)

    def local_data(self, client: int) -> Iterable[Batch]:
        return self.factory(client, torch.Generator())


def partition_dataset(
    dataset: Dataset, partitions: Sequence[Any] | Mapping[Any, Any], **options: Any
) -> DatasetClients:
    """One dataset split by index partitions (``data.partition_*``): a :class:`DatasetClients`
    of :class:`torch.utils.data.Subset` s, named when ``partitions`` is a mapping. ``options``
    go to :class:`DatasetClients`."""
    names, parts = _names_and_values(partitions)
    subsets = {
        name: Subset(dataset, np.asarray(part, dtype=np.int64).tolist())
        for name, part in zip(names, parts, strict=True)
    }
    return DatasetClients(
        subsets if isinstance(partitions, Mapping) else list(subsets.values()), **options
    )


def as_client_data(clients: Any) -> ClientData:
    """``clients`` as a :class:`ClientData`: itself, or a sequence or mapping of datasets."""
    if isinstance(clients, ClientData):
        return clients
    if isinstance(clients, (Sequence, Mapping)) and not isinstance(clients, (str, bytes)):
        return DatasetClients(clients)
    raise TypeError(
        "clients must be a ClientData (DatasetClients, LoaderClients, partition_dataset(...)) "
        f"or a sequence or mapping of Datasets, got {type(clients).__name__}"
    )


def passes(
    data: ClientData,
    client: int,
    *,
    batch_size: int,
    epochs: int,
    steps: int | None,
    generator: torch.Generator,
) -> Iterator[Batch]:
    """The batches of one round: ``steps`` batches (passes wrap around) or ``epochs`` passes."""
    done = 0
    for epoch in range(epochs if steps is None else 2**62):
        produced = False
        for batch in data.batches(client, batch_size=batch_size, generator=generator):
            if steps is not None and done == steps:
                return
            produced = True
            yield batch
            done += 1
        if not produced:
            raise ValueError(f"client {data.names[client]}: a pass yielded no batch")
        if steps is not None and done == steps:
            return
        del epoch
