"""DeepFool (Moosavi-Dezfooli et al. 2016), batched and masked.

Own implementation because ART's ``DeepFool`` has no mask; the steps follow ART's step for step
(linearised distance to the nearest other class, clip to [0, 1] every step, overshoot applied
once at the end), so both reach the same success rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from roiroa.attacks.base import AttackCalls, Norm, register_attack
from roiroa.validation import check_number

_TOL = 1e-7  # ART's guard against division by zero


def class_gradients(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) of x: (N, C, H, W) and the gradient of every logit w.r.t. x: (N, K, C, H, W).

    One forward pass and K backward passes (the batch is shared; images do not interact in eval mode).
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        grads = [
            torch.autograd.grad(logits[:, k].sum(), xg, retain_graph=k < logits.shape[1] - 1)[0]
            for k in range(logits.shape[1])
        ]
    return logits.detach(), torch.stack(grads, 1)


@register_attack("deepfool")
@dataclass(kw_only=True)
class DeepFool(AttackCalls):
    """DeepFool: repeatedly step to the linearised boundary of the nearest other class (L2).

    Unbounded: it stops per image as soon as the label changes (or after ``steps``), then scales
    the total perturbation by 1 + overshoot.

    Args:
        steps: the most iterations. Default 50.
        overshoot: relative overshoot of the final perturbation (ART's ``epsilon``). Default 0.02.
        batch_size: images per chunk. Default 64.
    """

    name: ClassVar[str] = "deepfool"
    norm: ClassVar[Norm] = "l2"
    steps: int = 50
    overshoot: float = 0.02
    batch_size: int = 64

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_number(owner, "steps", self.steps, low=1, integer=True)
        check_number(owner, "overshoot", self.overshoot, low=0.0)
        check_number(owner, "batch_size", self.batch_size, low=1, integer=True)

    def _attack_chunk(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        n = len(x)
        rows = torch.arange(n, device=x.device)
        x_adv = x.clone()
        logits, grads = class_gradients(model, x_adv)
        active = logits.argmax(1) == y
        for _ in range(self.steps):
            if not active.any():
                break
            if mask is not None:
                grads = grads * mask.unsqueeze(1)  # the step may act inside the mask only
            grad_diff = grads - grads[rows, y].unsqueeze(1)  # (N, K, C, H, W)
            f_diff = logits - logits[rows, y].unsqueeze(1)  # (N, K)
            dist = f_diff.abs() / (grad_diff.flatten(2).norm(dim=2) + _TOL)
            dist[rows, y] = float("inf")
            nearest = dist.argmin(1)
            w = grad_diff[rows, nearest]  # (N, C, H, W)
            r = (f_diff[rows, nearest].abs() / (w.flatten(1).norm(dim=1) ** 2 + _TOL)).view(-1, 1, 1, 1) * w
            r = r * active.view(-1, 1, 1, 1).to(x.dtype)
            x_adv = (x_adv + r).clamp(0.0, 1.0)
            logits, grads = class_gradients(model, x_adv)
            active &= logits.argmax(1) == y
        x_adv = (x + (1 + self.overshoot) * (x_adv - x)).clamp(0.0, 1.0)
        return x_adv.detach()
