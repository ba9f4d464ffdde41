"""The Square attack (Andriushchenko et al. 2020), L-infinity: score-based, no gradients.

Random search over square-shaped updates: each iteration proposes, for every image not yet fooled, a random
square whose pixels move to x +- eps (a random sign per channel), and keeps it if the margin loss
``logit_y - max_{k != y} logit_k`` falls. The square side shrinks on the schedule of the paper (and of ART's
``SquareAttack``, whose initialization with vertical stripes and acceptance rule this follows). With a mask,
only masked positions move. It queries the model's outputs only, so it is a check for gradient masking.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from roiroa.attacks.base import ATTACKS, AttackCalls, GradientAttack, Norm
from roiroa.validation import check_number

_INTERVALS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
_RATIOS = (1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256, 1 / 512)


@torch.no_grad()
def margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) logit of y minus the highest other logit (negative: the model does not predict y)."""
    logits = model(x)
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


@dataclass(kw_only=True)
class SquareAttack(AttackCalls):
    """Square attack, L-infinity (Andriushchenko et al. 2020).

    Args:
        eps: L-inf budget in (0, 1]. Default 0.15.
        queries: iterations, one model query per image still correctly classified (plus one for the
            initialization). Default 1000.
        p_init: initial fraction of pixels in the square. Default 0.8.
        restarts: restarts from the clean image for the images not yet fooled. Default 1.
        batch_size: images per chunk. Default 64.

    Uses torch's global generator (seed it for reproducible runs).

    Example:
        >>> x_adv = SquareAttack(eps=0.1, queries=500)(model, x, y)
    """

    name: ClassVar[str] = "square"
    norm: ClassVar[Norm] = "linf"
    gradient_free: ClassVar[bool] = True  # queries outputs only: evaluated on a defence as it is
    eps: float = 0.15
    queries: int = 1000
    p_init: float = 0.8
    restarts: int = 1
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_number("SquareAttack", "eps", self.eps, low=0.0, low_open=True, high=1.0)
        check_number("SquareAttack", "queries", self.queries, low=1, integer=True)
        check_number("SquareAttack", "p_init", self.p_init, low=0.0, low_open=True, high=1.0)
        check_number("SquareAttack", "restarts", self.restarts, low=1, integer=True)
        check_number("SquareAttack", "batch_size", self.batch_size, low=1, integer=True)

    def _p(self, i: int) -> float:
        """The fraction of pixels in the square at iteration i (ART's schedule)."""
        return self.p_init * _RATIOS[bisect.bisect_left(_INTERVALS, i / self.queries)]

    def _attack_chunk(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        n, c, h, w = x.shape
        keep = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype) if mask is None else mask
        x_adv = x.clone()
        for _ in range(self.restarts):
            active = (margin(model, x_adv, y) > 0).nonzero()[:, 0]
            if len(active) == 0:
                break
            # initialization: vertical stripes of +-eps from the clean image, kept where they lower the margin
            xa, ya, ka = x[active], y[active], keep if len(keep) == 1 else keep[active]
            stripes = torch.randint(0, 2, (len(active), c, 1, w), device=x.device).to(x.dtype) * 2 - 1
            x_new = (xa + self.eps * stripes * ka).clamp(0.0, 1.0)
            better = margin(model, x_new, ya) < margin(model, xa, ya)
            x_adv[active] = torch.where(better.view(-1, 1, 1, 1), x_new, xa)
            rows = torch.arange(h, device=x.device)
            cols = torch.arange(w, device=x.device)
            loss = margin(model, x_adv, y)
            for i in range(self.queries):
                active = (loss > 0).nonzero()[:, 0]
                if len(active) == 0:
                    break
                k = len(active)
                side = max(int(round(math.sqrt(self._p(i) * h * w))), 1)
                top = torch.randint(0, max(h - side, 1), (k, 1, 1), device=x.device)
                left = torch.randint(0, max(w - side, 1), (k, 1, 1), device=x.device)
                square = (
                    (rows.view(1, -1, 1) >= top)
                    & (rows.view(1, -1, 1) < top + side)
                    & (cols.view(1, 1, -1) >= left)
                    & (cols.view(1, 1, -1) < left + side)
                )[:, None]
                ka = keep if len(keep) == 1 else keep[active]
                sign = torch.randint(0, 2, (k, c, 1, 1), device=x.device).to(x.dtype) * 2 - 1
                xa, xc = x[active], x_adv[active]
                target = (xa + self.eps * sign).clamp(0.0, 1.0)
                x_new = torch.where(square & (ka > 0), target, xc)
                new_loss = margin(model, x_new, y[active])
                better = new_loss < loss[active]
                x_adv[active] = torch.where(better.view(-1, 1, 1, 1), x_new, xc)
                loss[active] = torch.where(better, new_loss, loss[active])
        return x_adv


ATTACKS.register("square")(cast(type[GradientAttack], SquareAttack))
