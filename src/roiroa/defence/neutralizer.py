"""Neutralization N(x) = x * (1 - M) + v * M, the defended model f o N, and the global mask fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from roiroa.errors import InputError
from roiroa.maps.vulnerability import unit_mean
from roiroa.regions.thresholds import ThresholdMethod, isolate
from roiroa.validation import check_choice, check_number

FillName = Literal["zero", "mean"]
FILLS = ("zero", "mean")


def fill_value(name: FillName, x_fit: torch.Tensor) -> torch.Tensor:
    """The fill v as (1, C, 1, 1): 'zero', or 'mean' (per-channel mean of x_fit: (N, C, H, W))."""
    check_choice("fill_value", "name", name, FILLS)
    if name == "zero":
        return torch.zeros(1, x_fit.shape[1], 1, 1, dtype=x_fit.dtype, device=x_fit.device)
    return x_fit.mean(dim=(0, 2, 3), keepdim=True)


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
        fill: v, a float or a tensor broadcastable to x (e.g. (1, C, 1, 1)), in [0, 1].

    Returns:
        (N, C, H, W) in [0, 1]; equal to x outside the mask.
    """
    m = as_mask4d(mask).to(x.device, x.dtype)
    return torch.where(m > 0, torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand_as(x), x)


class Neutralizer(nn.Module):
    """The defended model f o N: blocks the masked positions, then classifies.

    Differentiable in x (the gradient is zero on masked positions), so every attack can be run
    through it end to end (the adaptive attack).

    Args:
        model: the classifier f, logits (N, K) from (N, C, H, W) in [0, 1].
        mask: (H, W) or (1, 1, H, W) bool/float, the positions to block (the same for every input).
        fill: the value v of blocked positions, a float or (1, C, 1, 1). Default 0.0.
    """

    mask: torch.Tensor
    fill: torch.Tensor

    def __init__(self, model: nn.Module, mask: torch.Tensor, fill: torch.Tensor | float = 0.0) -> None:
        super().__init__()
        self.model = model
        m = as_mask4d(mask)
        if m.shape[0] != 1:
            raise InputError("Neutralizer takes one mask for all inputs, (H, W) or (1, 1, H, W).")
        self.register_buffer("mask", m)
        self.register_buffer("fill", torch.as_tensor(fill, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, K) of f(N(x))."""
        return self.model(neutralize(x, self.mask, self.fill))


@dataclass
class GlobalMask:
    """One neutralization mask for every input, fitted on maps of a fitting set (scikit-learn style).

    The maps of the fitting images are scaled to unit mean absolute value per image and averaged; RoI and RoA
    are isolated on the averaged maps and the mask is S_A = RoA minus RoI.

    Args:
        q_roi: fraction of positions in the RoI (for method 'top_q'). Default 0.2.
        q_roa: fraction of positions in the RoA (for method 'top_q'). Default 0.2.
        method: 'top_q' or 'otsu'. Default 'top_q'.

    Attributes (after ``fit``):
        importance_: (H, W) the mean importance map.
        vulnerability_: (H, W) the mean vulnerability map.
        roi_, roa_, mask_: (H, W) bool.
        area_: |mask_| / (H W).
    """

    q_roi: float = 0.2
    q_roa: float = 0.2
    method: ThresholdMethod = "top_q"
    importance_: torch.Tensor = field(init=False, repr=False)
    vulnerability_: torch.Tensor = field(init=False, repr=False)
    roi_: torch.Tensor = field(init=False, repr=False)
    roa_: torch.Tensor = field(init=False, repr=False)
    mask_: torch.Tensor = field(init=False, repr=False)
    area_: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_number("GlobalMask", "q_roi", self.q_roi, low=0.0, low_open=True, high=1.0)
        check_number("GlobalMask", "q_roa", self.q_roa, low=0.0, low_open=True, high=1.0)
        check_choice("GlobalMask", "method", self.method, ("top_q", "otsu"))

    def fit(self, importance: torch.Tensor, vulnerability: torch.Tensor) -> GlobalMask:
        """Fit on importance and vulnerability maps (N, H, W) of the fitting images; returns self."""
        if importance.shape != vulnerability.shape or importance.dim() != 3:
            raise InputError(
                f"importance and vulnerability maps must both be (N, H, W); got {tuple(importance.shape)} "
                f"and {tuple(vulnerability.shape)}."
            )
        self.importance_ = unit_mean(importance).mean(0)
        self.vulnerability_ = unit_mean(vulnerability).mean(0)
        self.roi_ = isolate(self.importance_[None], self.method, self.q_roi)[0]
        self.roa_ = isolate(self.vulnerability_[None], self.method, self.q_roa)[0]
        self.mask_ = self.roa_ & ~self.roi_
        self.area_ = float(self.mask_.float().mean())
        return self

    def wrap(self, model: nn.Module, fill: torch.Tensor | float = 0.0) -> Neutralizer:
        """The defended model f o N with the fitted mask."""
        if not hasattr(self, "mask_"):
            raise InputError("GlobalMask is not fitted yet: call fit(importance, vulnerability) first.")
        return Neutralizer(model, self.mask_, fill)


def random_mask_like(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random masks with as many positions as ``mask``, drawn uniformly (the equal-area control).

    Args:
        mask: (H, W) or (N, H, W) bool; each (H, W) mask gets its own random mask of equal count.
        generator: a CPU generator (seeded by the caller).

    Returns:
        bool tensor shaped like ``mask``, on its device.
    """
    flat = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).cpu()
    ranks = torch.rand(flat.shape, generator=generator).argsort(dim=1).argsort(dim=1)
    out = ranks < flat.sum(dim=1, keepdim=True)
    return out.view(mask.shape).to(mask.device)
