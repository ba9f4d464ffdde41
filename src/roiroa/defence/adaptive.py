"""Tools of the adaptive attacker: BPDA for steps without a useful gradient, EOT for random defences.

- :func:`bpda` (Athalye et al. 2018): the forward pass applies the real transform T; the backward pass uses the
  gradient of a differentiable surrogate g (the identity by default): ``g(x) + (T(x) - g(x)).detach()``.
- :class:`EOT`: the expectation over the defence's randomness (e.g. a noise fill), estimated by ``draws``
  forward passes in one batch; its logits are the mean of the draws' logits, so its gradient is the mean of
  the draws' gradients (EOT on the logits, as in Tramèr et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from roiroa.validation import check_number

Transform = Callable[[torch.Tensor], torch.Tensor]


def bpda(x: torch.Tensor, transform: Transform, surrogate: Transform | None = None) -> torch.Tensor:
    """T(x) in the forward pass, the gradient of ``surrogate`` (identity if None) in the backward pass.

    Args:
        x: (N, C, H, W).
        transform: the real, possibly non-differentiable step T (evaluated without gradient).
        surrogate: a differentiable approximation g of T; None means g(x) = x.
    """
    with torch.no_grad():
        out = transform(x.detach())
    approx = x if surrogate is None else surrogate(x)
    return approx + (out - approx).detach()


class EOT(nn.Module):
    """Expectation over transformation: the mean logits of ``draws`` passes of a randomized model.

    Args:
        model: a model whose forward pass is random (e.g. a ScopedNeutralizer with a noise fill).
        draws: passes per input, run as one batch of draws * N. Default 8.
    """

    def __init__(self, model: nn.Module, draws: int = 8) -> None:
        super().__init__()
        check_number("EOT", "draws", draws, low=1, integer=True)
        self.model, self.draws = model, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, K), the mean over draws of the logits (draw d is rows d*N..(d+1)*N-1)."""
        logits = self.model(x.repeat(self.draws, 1, 1, 1))
        return logits.view(self.draws, len(x), -1).mean(0)


class StraightThrough(nn.Module):
    """A neutralized model f o N attacked straight through its neutralization: the forward pass is the defence's
    (the mask recomputed for the current x, then filled); the backward pass treats N as the identity, so the
    gradient also reaches the blocked positions (where the exact gradient of the blend is zero).

    Args:
        defended: a model with ``model`` (f), ``masks(x) -> (N, H, W) bool`` and ``fill(x, mask)`` (a
            :class:`~roiroa.defence.neutralizer.Neutralized`).
    """

    def __init__(self, defended: nn.Module) -> None:
        super().__init__()
        self.defended = defended

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, K) of f(N(x)), with d N(x) / dx taken as the identity."""
        d = self.defended
        with torch.no_grad():
            m = d.masks(x)[:, None].to(x.dtype)  # type: ignore[operator]
            blocked = torch.where(m > 0, d.fill(x, m).expand_as(x), x)  # type: ignore[operator]
        return d.model(x + (blocked - x).detach())  # type: ignore[operator]

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) the defence's differentiable anomaly surrogate (a fragment detector's), for adaptive patch attacks."""
        return self.defended.penalty(x)  # type: ignore[operator]


def soft_bit_depth(x: torch.Tensor, bits: int, temperature: float = 0.05) -> torch.Tensor:
    """A smooth surrogate of rounding to 2**bits levels: a sum of sigmoid steps at the rounding thresholds.

    Args:
        x: (N, C, H, W) in [0, 1]; bits: 1 to 16; temperature: the steps' width in units of one level (-> 0
            gives the rounding itself). Default 0.05.

    Returns:
        (N, C, H, W) in [0, 1], increasing in x, with a gradient that peaks where rounding jumps.
    """
    check_number("soft_bit_depth", "temperature", temperature, low=0.0, low_open=True)
    levels = 2**bits - 1
    thresholds = (torch.arange(levels, dtype=x.dtype, device=x.device) + 0.5).view(1, 1, 1, 1, -1)
    return torch.sigmoid((x[..., None] * levels - thresholds) / temperature).sum(-1) / levels


def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """The mean over a size x size window of each channel (reflect padding): a smooth surrogate of the median.

    Args:
        x: (N, C, H, W); size: odd or even window side >= 1. Returns: (N, C, H, W).
    """
    check_number("box_mean", "size", size, low=1, integer=True)
    low, high = (size - 1) // 2, size // 2
    padded = torch.nn.functional.pad(x, (low, high, low, high), mode="reflect" if size > 1 else "constant")
    return torch.nn.functional.avg_pool2d(padded, size, stride=1)
