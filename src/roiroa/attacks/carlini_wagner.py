"""Carlini-Wagner L2 (Carlini & Wagner 2017), batched and masked.

Written here rather than wrapped from ART because ART's ``CarliniL2Method`` works image by image
in NumPy and has no mask: this one optimises a whole chunk (for the localized attack: one image
under many window masks) at once with Adam, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from roiroa.attacks.base import AttackCalls, Norm, register_attack
from roiroa.validation import check_number


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Z_y - max_{k != y} Z_k of logits (N, K) for labels y (N,): > 0 where y is predicted."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


@register_attack("cw-l2")
@dataclass(kw_only=True)
class CarliniWagnerL2(AttackCalls):
    """Carlini-Wagner L2: minimise ||delta||_2^2 + c * max(Z_y - max_{k!=y} Z_k, -confidence) in tanh
    space with Adam, with a binary search over c per image. Unbounded: it returns, per image, the
    smallest adversarial perturbation it found (x itself where none was found).

    Args:
        confidence: margin kappa the adversarial class must win by. Default 0.0.
        steps: Adam steps per value of c. Default 100.
        binary_search_steps: values of c tried per image. Default 5.
        initial_const: the first c. Default 1.0.
        learning_rate: Adam's step. Default 0.05.
        batch_size: images per chunk. Default 64.

    Example:
        >>> x_adv = CarliniWagnerL2(steps=50)(model, x, y, mask=window_masks)
    """

    name: ClassVar[str] = "cw-l2"
    norm: ClassVar[Norm] = "l2"
    confidence: float = 0.0
    steps: int = 100
    binary_search_steps: int = 5
    initial_const: float = 1.0
    learning_rate: float = 0.05
    batch_size: int = 64

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_number(owner, "confidence", self.confidence, low=0.0)
        check_number(owner, "steps", self.steps, low=1, integer=True)
        check_number(owner, "binary_search_steps", self.binary_search_steps, low=1, integer=True)
        check_number(owner, "initial_const", self.initial_const, low=0.0, low_open=True)
        check_number(owner, "learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_number(owner, "batch_size", self.batch_size, low=1, integer=True)

    def _attack_chunk(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        n = len(x)
        keep = torch.ones_like(x[:, :1]) if mask is None else mask.expand(n, 1, *x.shape[2:])
        # tanh space: image = (tanh(w) + 1) / 2; atanh of x pulled slightly inside (0, 1).
        w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, float("inf"))
        best_l2 = torch.full_like(const, float("inf"))
        best = x.clone()
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.learning_rate)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                with torch.enable_grad():
                    image = (torch.tanh(w) + 1) / 2
                    x_adv = x + keep * (image - x)
                    logits = model(x_adv)
                    l2 = (x_adv - x).flatten(1).pow(2).sum(1)
                    hinge = margin(logits, y).clamp(min=-self.confidence)
                    loss = (l2 + const * hinge).sum()
                    # autograd.grad, not backward: the model's parameter gradients stay untouched.
                    (w.grad,) = torch.autograd.grad(loss, [w])
                opt.step()
                with torch.no_grad():
                    success = margin(logits, y) < -self.confidence if self.confidence > 0 else logits.argmax(1) != y
                    better = success & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best = torch.where(better.view(-1, 1, 1, 1), x_adv.detach(), best)
                    found |= success
            # Binary search on c: smaller where an adversarial was found, larger where not.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return best.detach()
