"""Gradient saliency: |d logit_y / d x|, folded over channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from roiroa.maps.registry import register_estimator
from roiroa.utils import batch_slices, model_device
from roiroa.validation import check_choice, check_images, check_labels, check_model_output, check_number


@register_estimator("saliency")
@dataclass(kw_only=True)
class Saliency:
    """Gradient saliency (Simonyan et al. 2014): the absolute gradient of the true-class logit.

    Args:
        reduce: how channels fold into one value per position: 'max' (Captum's convention for
            images) or 'l2'. Default 'max'.
        batch_size: images per backward pass. Default 64.
    """

    reduce: Literal["max", "l2"] = "max"
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_choice("Saliency", "reduce", self.reduce, ("max", "l2"))
        check_number("Saliency", "batch_size", self.batch_size, low=1, integer=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Saliency (N, H, W) >= 0 of x: (N, C, H, W) in [0, 1] for classes y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        check_model_output(model, x, y)
        device = model_device(model)
        out = []
        for s in batch_slices(len(x), self.batch_size):
            with torch.enable_grad():
                xb = x[s].to(device).requires_grad_(True)
                logit = model(xb).gather(1, y[s].to(device)[:, None]).sum()
                (grad,) = torch.autograd.grad(logit, xb)
            g = grad.abs()
            out.append((g.amax(1) if self.reduce == "max" else g.norm(dim=1)).to(x.device))
        return torch.cat(out)
