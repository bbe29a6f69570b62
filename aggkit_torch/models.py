"""Models used by the federated MNIST examples.

The CNN of the federated MNIST job is the classic MNIST network of the PyTorch examples and of the
PySyft tutorial it comes from; :class:`MnistCNN` reproduces it layer for layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MnistCNN", "count_parameters"]


class MnistCNN(nn.Module):
    """The classic MNIST CNN (431,080 parameters).

    ``conv(1->20, k5) - relu - maxpool 2 - conv(20->50, k5) - relu - maxpool 2 - flatten -
    fc(800->500) - relu - fc(500->10) - log_softmax``. Input ``[N, 1, 28, 28]``, output
    ``[N, 10]`` log-probabilities (pair it with :func:`torch.nn.functional.nll_loss`).

    Examples
    --------
    >>> import torch
    >>> model = MnistCNN()
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> count_parameters(model)
    431080
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module.
    trainable_only : bool, default False
        Count only parameters with ``requires_grad``.

    Examples
    --------
    >>> from torch import nn
    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
