"""Models of the federated main job.

The CNN of the federated MNIST job is the classic MNIST network of the PyTorch examples and of the
PySyft tutorial it comes from; :class:`MnistCNN` reproduces it layer for layer (and serves the
other 1-channel 28x28 datasets, Fashion-MNIST and EMNIST, with ``num_classes``).
:class:`CifarResNet` is a small ResNet with BatchNorm for 3-channel 32x32 images (CIFAR-10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet", "MnistCNN", "count_parameters"]


class MnistCNN(nn.Module):
    """The classic MNIST CNN (431,080 parameters).

    ``conv(1->20, k5) - relu - maxpool 2 - conv(20->50, k5) - relu - maxpool 2 - flatten -
    fc(800->500) - relu - fc(500->10) - log_softmax``. Input ``[N, 1, 28, 28]``, output
    ``[N, num_classes]`` log-probabilities (pair it with :func:`torch.nn.functional.nll_loss`).

    Examples
    --------
    >>> import torch
    >>> model = MnistCNN()
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> count_parameters(model)
    431080
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, num_classes)

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


class _BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with BatchNorm, and a shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A small ResNet with BatchNorm for 3-channel 32x32 images (CIFAR-10), He et al. 2016.

    The CIFAR variant of ResNet: a 3x3 stem, three stages of ``blocks`` basic blocks of widths
    ``widths`` (the 2nd and 3rd halve the resolution), global average pooling and a linear
    layer, ``log_softmax`` output (pair it with :func:`torch.nn.functional.nll_loss`). The
    defaults (one block per stage, widths 16/32/64) are ResNet-8: 78,042 parameters and 9
    BatchNorm layers, small enough to train federated on a CPU; ``blocks=3`` is ResNet-20.

    Examples
    --------
    >>> import torch
    >>> model = CifarResNet()
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> count_parameters(model)
    78042
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        blocks: int = 1,
        widths: tuple[int, int, int] = (16, 32, 64),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        inputs = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(inputs, width, stride))
                inputs = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.layers(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.log_softmax(self.fc(x), dim=1)
