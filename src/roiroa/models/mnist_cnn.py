"""The small reference CNN for 28x28 digits."""

from __future__ import annotations

import torch
from torch import nn

from roiroa.models.registry import MODELS


@MODELS.register("mnist-cnn")
class MnistCNN(nn.Module):
    """Two 3x3 conv layers (16 and 32 channels, ReLU, 2x2 max-pool), a 64-unit hidden layer, K logits.

    Small on purpose: every map costs hundreds of forward passes per image, and this net reaches
    about 98% on the bundled MNIST test split after 12 epochs (a few seconds on a CPU).

    Args:
        in_channels: C of the input (N, C, 28, 28) in [0, 1].
        num_classes: K.
        image_size: H = W of the input (a multiple of 4).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * (image_size // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, K)."""
        return self.classifier(self.features(x))
