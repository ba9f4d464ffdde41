"""Localized attack success: the attack restricted to one window at a time, all windows in one batch.

For every region r (grid window or superpixel) the attack runs with its perturbation masked to r
and the same budget; the map is the drop of the true-class margin Z_y - max_{k!=y} Z_k that the
restricted attack achieves, per pixel the mean over the regions covering it. This is the direct
reading of "the region the attacker looks at".

Every (image, region) pair is one row of a single batch of masked attacks (the image repeated R
times with R masks), not a loop over windows: benchmarks/estimators.py measures the difference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from roiroa.attacks.base import Attack, resolve_attack
from roiroa.attacks.carlini_wagner import margin
from roiroa.geometry import grid_regions, label_regions, regions_to_pixels, slic_labels
from roiroa.maps.registry import register_estimator
from roiroa.utils import batch_slices, model_device, progress
from roiroa.validation import check_choice, check_images, check_labels, check_number


def _default_attack() -> dict[str, Any]:
    return {"name": "pgd-linf", "eps": 0.3, "steps": 10}


@dataclass(frozen=True)
class LocalizedResult:
    """The localized attack on N images over R regions.

    Attributes:
        maps: (N, H, W) mean margin drop of the regions covering each pixel.
        success_map: (N, H, W) in [0, 1], the share of the covering regions whose attack succeeded.
        success_rate: (N,) in [0, 1], the share of all regions whose attack succeeded.
        region_drops: (N, R) margin drop per region (0 for empty superpixel slots).
        region_success: (N, R) bool, the restricted attack changed the prediction away from y.
    """

    maps: torch.Tensor
    success_map: torch.Tensor
    success_rate: torch.Tensor
    region_drops: torch.Tensor
    region_success: torch.Tensor


@register_estimator("localized")
@dataclass(kw_only=True)
class LocalizedAttack:
    """Vulnerability as the success of the attack restricted to each window (or superpixel).

    Args:
        attack: an attack instance, a registered name, or {'name': ..., hyperparameters}.
            Default PGD L-infinity, eps 0.3, 10 steps.
        window, stride: the grid of windows (``regions='grid'``). Default 4 and 2.
        regions: 'grid' or 'superpixels' (SLIC with ``n_segments``, ``compactness``).
        batch_size: (image, region) pairs per batch of masked attacks. Default 512.

    Example:
        >>> result = LocalizedAttack(attack={'name': 'pgd-linf', 'eps': 0.3}).attribute(model, x, y)
        >>> result.maps.shape, result.success_rate  # (N, H, W), (N,)
    """

    kind: ClassVar[str] = "vulnerability"

    attack: Any = field(default_factory=_default_attack)
    window: int = 4
    stride: int = 2
    regions: Literal["grid", "superpixels"] = "grid"
    n_segments: int = 49
    compactness: float = 0.1
    batch_size: int = 512

    def __post_init__(self) -> None:
        owner = "LocalizedAttack"
        check_number(owner, "window", self.window, low=1, integer=True)
        check_number(owner, "stride", self.stride, low=1, integer=True)
        check_choice(owner, "regions", self.regions, ("grid", "superpixels"))
        check_number(owner, "n_segments", self.n_segments, low=1, integer=True)
        check_number(owner, "batch_size", self.batch_size, low=1, integer=True)
        self.attack_: Attack = resolve_attack(self.attack)
        # One batch of masked attacks: the attack chunks by our batch size, not its own.
        if dataclasses.is_dataclass(self.attack_) and "batch_size" in {
            f.name for f in dataclasses.fields(self.attack_)
        }:
            self.attack_ = dataclasses.replace(self.attack_, batch_size=self.batch_size)  # type: ignore[type-var]
        self.success_rate_: torch.Tensor | None = None

    def region_masks(self, x: torch.Tensor) -> torch.Tensor:
        """(R, H, W) grid windows or (N, R, H, W) superpixels of x: (N, C, H, W)."""
        if self.regions == "superpixels":
            return label_regions(slic_labels(x, self.n_segments, self.compactness))
        return grid_regions(x.shape[2], x.shape[3], self.window, self.stride).to(x.device)

    def attribute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LocalizedResult:
        """The localized attack's maps and success rates for x: (N, C, H, W) in [0, 1], labels y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        device = model_device(model)
        regions = self.region_masks(x).to(device)
        per_image = regions.dim() == 4
        xd, yd = x.to(device), y.to(device)
        n, r = len(xd), regions.shape[1] if per_image else regions.shape[0]
        with torch.no_grad():
            clean_margin = margin(model(xd), yd)
        img = torch.arange(n, device=device).repeat_interleave(r)
        reg = torch.arange(r, device=device).repeat(n)
        drops = torch.zeros(n * r, device=device)
        success = torch.zeros(n * r, dtype=torch.bool, device=device)
        for s in progress(batch_slices(n * r, self.batch_size), "localized attack"):
            i = img[s]
            masks = (regions[i, reg[s]] if per_image else regions[reg[s]]).unsqueeze(1).to(xd.dtype)
            x_adv = self.attack_(model, xd[i], yd[i], mask=masks)
            with torch.no_grad():
                logits = model(x_adv)
            drops[s] = clean_margin[i] - margin(logits, yd[i])
            success[s] = logits.argmax(1) != yd[i]
        if per_image:  # empty superpixel slots (images with fewer superpixels) count for nothing
            used = regions.flatten(2).any(2).flatten()
            drops, success = drops * used, success & used
        drops, success = drops.view(n, r), success.view(n, r)
        rate = (
            success.float().sum(1) / regions.flatten(2).any(2).float().sum(1) if per_image else success.float().mean(1)
        )
        return LocalizedResult(
            regions_to_pixels(drops, regions).to(x.device),
            regions_to_pixels(success.float(), regions).to(x.device),
            rate.to(x.device),
            drops.to(x.device),
            success.to(x.device),
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Vulnerability (N, H, W): the mean margin drop of the restricted attacks covering each pixel."""
        result = self.attribute(model, x, y)
        self.success_rate_ = result.success_rate
        return result.maps
