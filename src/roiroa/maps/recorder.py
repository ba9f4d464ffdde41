"""Where an attack's gradients act, recorded from the outside, for any attack.

An L-infinity attack saturates |x_adv - x| at eps on most pixels, so the perturbation cannot rank positions;
the magnitude of the gradient the attack followed does. Rather than asking every attack to return it, the
model is wrapped in a :class:`GradientRecorder` while the attack runs: each forward pass on an input that
requires a gradient gets a tensor hook, and every gradient that reaches the input is added (L2 over channels)
to the map of the clean image that row belongs to. So an attack from ART, torchattacks or Foolbox, wrapped in
a few lines, gives the same kind of RoA as roiroa's own.

Rows are matched to clean images by position when the attack passes the whole batch (the usual case), else
(a subset of still-robust images, repeated EOT draws) by the nearest clean image in L2.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from roiroa.utils import batch_slices, model_device


class GradientRecorder(nn.Module):
    """f itself, that also sums |d(attack objective)/dx| per clean image while an attack runs through it.

    Args:
        model: the classifier f, logits (N, K) from (N, C, H, W) in [0, 1].
        x: (B, C, H, W), the clean images the attack is run on (on the model's device).

    Attributes:
        total: (B, H, W) >= 0, the summed gradient magnitude (L2 over channels) per clean image.
        calls: how many gradients reached the input.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.clean = x.detach()
        self.total = torch.zeros(len(x), *x.shape[2:], device=x.device, dtype=x.dtype)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, C, H, W) -> logits (M, K) of f(x); a hook records the gradient that later reaches x."""
        if torch.is_grad_enabled() and x.requires_grad:
            x.register_hook(partial(self._add, self._rows(x)))
        return self.model(x)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(M,) int64: the clean image each row of x belongs to."""
        if len(x) == len(self.clean):
            return torch.arange(len(x), device=x.device)
        distances = torch.cdist(x.detach().flatten(1).to(self.clean.dtype), self.clean.flatten(1))
        return distances.argmin(1)

    def _add(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        self.total.index_add_(0, rows, grad.detach().norm(dim=1).to(self.total.dtype))
        self.calls += 1


@dataclass(frozen=True)
class AttackTrace:
    """What an attack left behind on x: its images and where its gradients acted.

    Attributes:
        x_adv: (N, C, H, W) in [0, 1].
        gradient: (N, H, W) >= 0, the attack's input gradients (L2 over channels) summed over all its
            gradient computations; zero for a gradient-free attack.
        gradient_calls: how many gradients reached the input (0: a gradient-free attack).
    """

    x_adv: torch.Tensor
    gradient: torch.Tensor
    gradient_calls: int


def record_attack(
    attack: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 64,
    mask: torch.Tensor | None = None,
) -> AttackTrace:
    """Run ``attack(model, x, y[, mask])`` on batches of ``batch_size`` images and record its gradients.

    Args:
        attack: any callable ``attack(model, x, y, mask=None) -> x_adv``.
        model: f, logits (N, K); x: (N, C, H, W) in [0, 1]; y: (N,) labels.
        batch_size: images per call of the attack (one recorder each).
        mask: optional (N or 1, 1, H, W) in {0, 1}, where the attack may act (passed on to it).

    Returns:
        an :class:`AttackTrace` with tensors on x's device.
    """
    device = model_device(model)
    images, maps, calls = [], [], 0
    for s in batch_slices(len(x), batch_size):
        xb, yb = x[s].to(device), y[s].to(device)
        recorder = GradientRecorder(model, xb)
        where = None if mask is None else (mask if len(mask) == 1 else mask[s]).to(device)
        x_adv = attack(recorder, xb, yb) if where is None else attack(recorder, xb, yb, mask=where)
        images.append(x_adv.detach().to(x.device))
        maps.append(recorder.total.to(x.device))
        calls += recorder.calls
    return AttackTrace(torch.cat(images), torch.cat(maps), calls)
