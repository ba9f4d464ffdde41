"""Neutralization N(x) = x * (1 - M) + v * M, and the defended model f o N: the one neutralized-model class.

Which positions M blocks comes from a mask scope (:mod:`roiroa.defence.scopes`: global, per class, per
input, fragments, the random controls), the value v from a fill (:mod:`roiroa.defence.fills`).
"""

from __future__ import annotations

import torch
from torch import nn

from roiroa.defence.fills import Fill, ZeroFill, is_random
from roiroa.defence.scopes import MaskScope, dilate
from roiroa.errors import InputError
from roiroa.validation import check_number


def as_mask4d(mask: torch.Tensor) -> torch.Tensor:
    """A mask (H, W), (N, H, W) or (N, 1, H, W) as float (N or 1, 1, H, W)."""
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise InputError(f"a neutralization mask must be (H, W), (N, H, W) or (N, 1, H, W); got {tuple(mask.shape)}.")
    return mask.float()


def neutralize(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """x * (1 - M) + v * M.

    Args:
        x: (N, C, H, W) in [0, 1].
        mask: (H, W), (N, H, W) or (N or 1, 1, H, W) in {0, 1}: the positions to block.
        fill: v, a float or a tensor broadcastable to x (e.g. (1, C, 1, 1) or (N, C, H, W)), in [0, 1].

    Returns:
        (N, C, H, W) in [0, 1]; equal to x outside the mask. The gradient w.r.t. x is 1 outside the mask
        and flows into v inside it.
    """
    m = as_mask4d(mask).to(x.device, x.dtype)
    return torch.where(m > 0, torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand_as(x), x)


class Neutralized(nn.Module):
    """The defended model f o N: block each input's mask, fill it, classify. An nn.Module to attack end to end.

    The mask is chosen without gradient (held fixed in the backward pass: BPDA with the identity for the
    choice); the gradient through the blend x (1 - M) + v M, and through a blur fill, is exact.

    Args:
        model: f, logits (N, K) from (N, C, H, W) in [0, 1].
        scope: a :class:`~roiroa.defence.scopes.MaskScope` (fitted where it needs fitting).
        fill: a :class:`~roiroa.defence.fills.Fill`. Default zero.
        dilation: grow every mask by this many pixels. Default 0.

    Example:
        >>> defended = Neutralized(model, FixedMask(mask), make_fill("mean", x_fit))
        >>> logits = defended(x)
    """

    def __init__(self, model: nn.Module, scope: MaskScope, fill: Fill | None = None, dilation: int = 0) -> None:
        super().__init__()
        check_number("Neutralized", "dilation", dilation, low=0, integer=True)
        self.model, self.scope, self.fill, self.dilation = model, scope, fill or ZeroFill(), dilation

    @property
    def random(self) -> bool:
        """True when the fill draws anew at every call (attack it with EOT)."""
        return is_random(self.fill)

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocked positions (N, H, W) bool for x: (N, C, H, W) in [0, 1]."""
        with torch.no_grad():
            return dilate(self.scope.masks(self.model, x.detach()).to(x.device), self.dilation)

    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, K) of f(N(x)), the masks (N, H, W) bool it blocked) for x: (N, C, H, W) in [0, 1]."""
        masks = self.masks(x)
        m = masks[:, None].to(x.dtype)
        return self.model(neutralize(x, m, self.fill(x, m))), masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, K) of f(N(x))."""
        return self.decide(x)[0]

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) the scope's differentiable anomaly surrogate (fragment detectors), for adaptive patch attacks."""
        penalty = getattr(self.scope, "penalty", None)
        if not callable(penalty):
            raise InputError(f"the {type(self.scope).__name__} scope has no penalty(x): use penalty_weight = 0.")
        return penalty(x)
