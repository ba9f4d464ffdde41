"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56 with the option-A shortcut.

The layout and parameter names follow akamaster/pytorch_resnet_cifar10, so its published
checkpoints load with ``strict=True`` once the ``module.`` prefix is stripped
(see :func:`roiroa.models.loading.load_weights`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from roiroa.models.registry import MODELS


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn plus the shortcut, then ReLU.

    Where the shape changes (stride 2 or more channels) the shortcut has no parameters: it keeps
    every second row and column and pads the new channels with zeros (option A).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad_channels = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """x itself, or x subsampled by the stride with zero channels split before and after."""
        if self.stride == 1 and self.pad_channels == 0:
            return x
        before = self.pad_channels // 2
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, before, self.pad_channels - before))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A 6n+2-layer ResNet: conv 16, three stages of n blocks (16, 32, 64 channels), pooling, linear.

    Args:
        depth: 6n + 2 layers (20, 32, 44, 56, ...).
        in_channels: C of the input (N, C, H, W); the network expects the input normalized as it was
            in training (wrap it in :class:`roiroa.models.Normalized` to feed [0, 1] pixels).
        num_classes: K.
        image_size: accepted for the registry's uniform signature; any H, W >= 4 works
            (global average pooling).
    """

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}.")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W), normalized -> logits (N, K)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-20 for CIFAR-10 (0.27 M parameters)."""
    return CifarResNet(20, in_channels, num_classes, image_size)


@MODELS.register("resnet32")
def resnet32(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-32 for CIFAR-10 (0.46 M parameters)."""
    return CifarResNet(32, in_channels, num_classes, image_size)


@MODELS.register("resnet44")
def resnet44(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-44 for CIFAR-10 (0.66 M parameters)."""
    return CifarResNet(44, in_channels, num_classes, image_size)


@MODELS.register("resnet56")
def resnet56(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-56 for CIFAR-10 (0.85 M parameters)."""
    return CifarResNet(56, in_channels, num_classes, image_size)
