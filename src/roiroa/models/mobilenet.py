"""MobileNetV1 (Howard et al. 2017) for ImageNet, width 0.25, as in the RetinaFace code family.

The layout and parameter names follow biubug6/Pytorch_Retinaface's ``MobileNetV1`` (``stage1.0.0.weight``,
``stage1.0.1.running_mean``, ... ``fc.weight``), so its ImageNet-pretrained checkpoint
(``mobilenetV1X0.25_pretrain.tar``: a training checkpoint holding a ``module.``-prefixed ``state_dict``) loads
with ``strict=True`` through :func:`roiroa.models.loading.read_state_dict`. Every convolution is followed by
batch norm and LeakyReLU(0.1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from roiroa.models.registry import MODELS

NEGATIVE_SLOPE = 0.1


def conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias), batch norm, LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    )


def conv_dw(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv + BN + LeakyReLU, then 1x1 conv + BN + LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 x0.25: three stages (8..64, 128, 256 channels; overall stride 32), pooling, ``fc``.

    Args:
        in_channels: C of the input (N, C, H, W), normalized as in training (ImageNet mean/std; wrap the model
            in :class:`roiroa.models.Normalized` to feed [0, 1] pixels).
        num_classes: K (1000 for ImageNet).
        image_size: accepted for the registry's uniform signature; any H, W >= 32 works (global pooling).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, image_size: int = 224) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(in_channels, 8, 2),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *(conv_dw(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W), normalized -> logits (N, K)."""
        out = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("mobilenet_v1_025")
def mobilenet_v1_025(in_channels: int = 3, num_classes: int = 1000, image_size: int = 224) -> MobileNetV1:
    """MobileNetV1 x0.25 for ImageNet (0.47 M parameters), LeakyReLU(0.1) activations."""
    return MobileNetV1(in_channels, num_classes, image_size)
