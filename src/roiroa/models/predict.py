"""Batched predictions and accuracy of any classifier."""

from __future__ import annotations

import torch
from torch import nn

from roiroa.utils import batch_slices, model_device


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits (N, K) on x's device for x: (N, C, H, W) in [0, 1], in chunks on the model's device."""
    device = model_device(model)
    return torch.cat([model(x[s].to(device)).to(x.device) for s in batch_slices(len(x), batch_size)])


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels (N,) int64 for x: (N, C, H, W) in [0, 1]."""
    return predict_logits(model, x, batch_size).argmax(dim=1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of x: (N, C, H, W) classified as y: (N,)."""
    return float((predict(model, x, batch_size) == y.to(x.device)).double().mean())
