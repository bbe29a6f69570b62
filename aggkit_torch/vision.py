"""torchvision datasets for the main job: MNIST, Fashion-MNIST, EMNIST and CIFAR-10.

Needs torchvision (``pip install -e ".[vision]"``, whose torchvision must match the installed
torch; ``constraints.txt`` pins a pair that does). MNIST itself does not: the main job reads its
IDX files with :func:`aggkit_torch.data.load_mnist` unless told otherwise, and both give the same
tensors (``tests/torch/test_vision.py``).

Each dataset comes with the transforms of the seed tutorial: ``ToTensor()`` and ``Normalize``
with the training set's per-channel mean and standard deviation (:data:`STATS`). With no random
augmentation those transforms are deterministic, so the main job applies them once
(:func:`to_tensors`) and trains on the in-memory fast path; a ``torchvision.datasets`` object can
equally be given to :class:`~aggkit_torch.federated.FederatedTrainer` as it is
(``clients=partition_dataset(dataset, parts)``), transforms and augmentation applied per sample.

Examples
--------
>>> import torchvision  # doctest: +SKIP
>>> train = load("cifar10", "~/data", train=True, download=True)  # doctest: +SKIP
>>> images, labels = to_tensors(train)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = [
    "DATASETS",
    "NUM_CLASSES",
    "STATS",
    "load",
    "require_torchvision",
    "to_tensors",
    "transform",
]

#: The ``--dataset`` choices of the main job.
DATASETS = ("mnist", "fashion_mnist", "emnist", "cifar10")

#: Per-channel (mean, std) of each training set, for ``Normalize``.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "emnist": ((0.1751,), (0.3332,)),  # the "balanced" split
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

#: Classes per dataset (EMNIST: the "balanced" split, 47 classes).
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "emnist": 47, "cifar10": 10}

_CLASSES = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "emnist": "EMNIST",
    "cifar10": "CIFAR10",
}


def require_torchvision() -> Any:
    """The ``torchvision`` module, or ImportError saying how to install a matching one."""
    try:
        import torchvision
    except ImportError as error:
        raise ImportError(
            "torchvision is needed for --dataset other than mnist and for torchvision datasets; "
            'install it with `pip install -c constraints.txt -e ".[vision]"` (a torchvision '
            f"built for torch {torch.__version__})"
        ) from error
    return torchvision


def transform(name: str) -> Any:
    """``Compose([ToTensor(), Normalize(mean, std)])`` for dataset ``name`` (:data:`STATS`)."""
    from torchvision import transforms

    mean, std = STATS[name]
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


def load(name: str, root: str | os.PathLike[str], *, train: bool, download: bool = False) -> Any:
    """The torchvision dataset ``name`` under ``root``, with :func:`transform` (EMNIST: the
    "balanced" split). ``download`` fetches it when absent (torchvision's own download)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    torchvision = require_torchvision()
    cls = getattr(torchvision.datasets, _CLASSES[name])
    options: dict[str, Any] = {"train": train, "download": download, "transform": transform(name)}
    if name == "emnist":
        options["split"] = "balanced"
    return cls(os.fspath(os.path.expanduser(root)), **options)


def to_tensors(dataset: Any, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a dataset's (transformed) examples as ``(images, labels)`` tensors (int64 labels),
    for the in-memory fast path. Only right for deterministic transforms: a random augmentation
    would be drawn once and frozen.

    >>> from torch.utils.data import TensorDataset
    >>> images, labels = to_tensors(TensorDataset(torch.ones(5, 2), torch.arange(5)), 2)
    >>> images.shape, labels.dtype
    (torch.Size([5, 2]), torch.int64)
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(torch.as_tensor(y))
    if not images:
        raise ValueError("the dataset is empty")
    return torch.cat(images), torch.cat(labels).to(torch.int64)
