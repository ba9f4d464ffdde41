"""The LeNet-style MNIST CNN of advertorch (its ``LeNet5``), with the same parameter names."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from roiroa.models.registry import MODELS


@MODELS.register("lenet5")
class LeNet5(nn.Module):
    """conv 32 (3x3) - ReLU - pool 2 - conv 64 (3x3) - ReLU - pool 2 - linear 200 - ReLU - linear K.

    The names (``conv1``, ``conv2``, ``linear1``, ``linear2``) match advertorch's checkpoints such
    as ``mnist_lenet5_clntrained.pt``, which take (N, 1, 28, 28) in [0, 1] without normalization.

    Args:
        in_channels: C of the input (N, C, H, W) in [0, 1].
        num_classes: K.
        image_size: H = W of the input (a multiple of 4).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.linear1 = nn.Linear(64 * (image_size // 4) ** 2, 200)
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, K)."""
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        out = F.relu(self.linear1(out.flatten(1)))
        return self.linear2(out)
