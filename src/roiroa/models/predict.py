"""Batched predictions and accuracy of any classifier."""

from __future__ import annotations

import torch
from torch import nn

from roiroa.errors import InputError
from roiroa.utils import batch_slices, model_device


def check_finite_logits(logits: torch.Tensor, where: str) -> None:
    """Raise one InputError line naming ``where`` if ``logits`` (N, K) hold a NaN or an infinity.

    Costs one reduction and one device synchronisation (call it once per chunk, not per batch);
    counts the bad images only when there are some.

    Args:
        logits: (N, K) model outputs, any float dtype, on any device.
        where: what produced them, for the message (e.g. ``'clean images 0-255'``, ``'fgsm eps=0.1'``).
    """
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    rows = (~finite).reshape(len(finite), -1).any(dim=1) if logits.dim() else ~finite.reshape(1)
    raise InputError(
        f"{where}: the model output NaN or inf logits for {int(rows.sum())} of {len(rows)} images, so no number "
        "from them can be trusted; check the weights (a corrupt or diverged checkpoint), the normalization "
        "(--normalization, --mean/--std) and the model's code for overflow."
    )


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
