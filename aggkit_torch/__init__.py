"""aggkit_torch: federated training of PyTorch models with aggkit aggregators.

Submodules load on first use, so ``import aggkit_torch`` does not import torch:

- :mod:`aggkit_torch.data`: MNIST from its IDX files, client partitions;
- :mod:`aggkit_torch.client_data`: clients as Datasets, partitions of one, DataLoader factories;
- :mod:`aggkit_torch.vision`: torchvision's MNIST, Fashion-MNIST, EMNIST and CIFAR-10;
- :mod:`aggkit_torch.models`: the MNIST CNN and a small ResNet with BatchNorm;
- :mod:`aggkit_torch.local_training`: the fast client step and evaluation;
- :mod:`aggkit_torch.params`: views between model parameters and aggkit structures;
- :mod:`aggkit_torch.federated`: the federated-averaging trainer;
- :mod:`aggkit_torch.rounds`: the server side of a round, shared by the trainer and the Flower
  strategy (client weighting, dropped clients, transactional commits);
- :mod:`aggkit_torch.checkpoint`: checkpoint files that cannot run code when loaded;
- :mod:`aggkit_torch.mnist`: the federated MNIST command line (``python -m aggkit_torch.mnist``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "checkpoint",
    "client_data",
    "data",
    "federated",
    "local_training",
    "mnist",
    "models",
    "params",
    "rounds",
    "vision",
]

_SUBMODULES = frozenset(__all__)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
