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
