"""The per-image objectives a gradient attack raises: cross-entropy, the CW margin and DLR.

Each maps logits (N, K) and labels y (N,) to a loss (N,) that is larger where the model is further from
predicting y. The margin (Carlini & Wagner 2017) and DLR (Croce & Hein 2020) losses are positive exactly
where the model is fooled, and do not saturate on confident models as cross-entropy's gradient can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.nn import functional as F

from roiroa.errors import InputError

Loss = Literal["ce", "margin", "dlr"]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) cross-entropy of logits (N, K) against y (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) the highest logit of a class other than y."""
    return logits.scatter(1, y[:, None], float("-inf")).amax(1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) the CW margin max_{k != y} z_k - z_y: positive exactly where the model does not predict y."""
    return _other_max(logits, y) - logits.gather(1, y[:, None])[:, 0]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) the difference of logits ratio -(z_y - max_{k != y} z_k) / (z_(1) - z_(3) + 1e-12), where z_(i) is
    the i-th largest logit: the margin made invariant to shifting and scaling the logits (needs K >= 3)."""
    if logits.shape[1] < 3:
        raise InputError(f"the DLR loss needs at least 3 classes; got {logits.shape[1]}. Use loss='margin'.")
    top = logits.sort(dim=1, descending=True).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": cross_entropy,
    "margin": margin_loss,
    "dlr": dlr_loss,
}


def check_loss(owner: str, loss: str) -> None:
    """Raise InputError unless ``loss`` names one of :data:`LOSSES`."""
    if loss not in LOSSES:
        raise InputError(f"The 'loss' parameter of {owner} must be one of {', '.join(LOSSES)}. Got {loss!r} instead.")


def loss_and_gradient(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, K), per-image loss (N,), gradient of the summed loss w.r.t. x (N, C, H, W)), all detached.

    The sum (not the mean) keeps each image's gradient independent of the batch size; the model's parameter
    gradients are left untouched.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        values = LOSSES[loss](logits, y)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return logits.detach(), values.detach(), grad
