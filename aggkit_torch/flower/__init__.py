"""aggkit on Flower: a Flower strategy that aggregates with any aggkit aggregator.

When one machine is not enough, the federated MNIST job runs on Flower
(https://flower.ai), which carries the messages between a SuperLink (the server) and
SuperNodes (the clients); aggkit stays the aggregation layer:

- :mod:`aggkit_torch.flower.strategy`: :class:`AggkitStrategy`, a message-API Flower
  strategy (``flwr.serverapp.strategy``) whose aggregation is an aggkit process, applied with
  a server optimizer exactly like :class:`~aggkit_torch.federated.FederatedTrainer`;
- :mod:`aggkit_torch.flower.client_app` and :mod:`aggkit_torch.flower.server_app`: the
  Flower apps of the MNIST CNN, built from aggkit_torch's model, partitions and training step;
- :mod:`aggkit_torch.flower.run_config`: the app's run configuration, which mirrors the
  options of ``python -m aggkit_torch.mnist``;
- :mod:`aggkit_torch.flower.app`: writes the Flower app directory that ``flwr run`` takes
  (``python -m aggkit_torch.flower.app DIR``).

Nothing here imports Flower until it is used, so ``import aggkit_torch`` never needs it; the
modules that do need it raise an ImportError that says ``pip install 'aggkit[flower]'``.
See ``docs/flower.md`` for the commands, from one laptop to a deployment.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__all__ = ["PARTITION_QUERY", "AggkitStrategy", "write_app"]

_LAZY = {
    "AggkitStrategy": "aggkit_torch.flower.strategy",
    "PARTITION_QUERY": "aggkit_torch.flower.strategy",
    "write_app": "aggkit_torch.flower.app",
}


def require_flwr() -> None:
    """Raise an ImportError with the install command when Flower is missing."""
    if importlib.util.find_spec("flwr") is None:
        raise ImportError(
            "aggkit_torch.flower needs Flower (flwr >= 1.41): pip install 'aggkit[flower]'"
        )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
