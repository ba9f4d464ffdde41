"""Occlusion importance: the drop of the true-class probability when a region is set to a baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from roiroa.maps.registry import register_estimator
from roiroa.regions.partition import grid_regions, regions_to_pixels
from roiroa.utils import batch_slices, model_device, progress
from roiroa.validation import check_images, check_labels, check_model_output, check_number


@torch.no_grad()
def occlusion_drops(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    regions: torch.Tensor,
    baseline: float = 0.0,
    batch_size: int = 256,
    skip_unchanged: bool = True,
) -> torch.Tensor:
    """p_y(x) - p_y(x with region r set to ``baseline``), for every image and region.

    All (image, region) pairs are forwarded in batches of ``batch_size``. A pair whose region
    already equals the baseline in x (for example an all-black window of an MNIST digit) is not
    forwarded: the occluded image is x itself, so its drop is exactly 0 (``skip_unchanged=False``
    forwards it anyway; benchmarks/spine.py measures the difference).

    Args:
        model: logits (N, K); its softmax is the probability.
        x: (N, C, H, W) in [0, 1].
        y: (N,) int64 classes whose probability is read.
        regions: (R, H, W) bool region masks (may overlap).
        baseline: the fill value of an occluded region.

    Returns:
        (N, R) float32 on x's device.
    """
    device = model_device(model)
    xd, yd, reg = x.to(device), y.to(device), regions.to(device)
    p_clean = torch.cat(
        [model(xd[s]).softmax(1).gather(1, yd[s, None])[:, 0] for s in batch_slices(len(xd), batch_size)]
    )
    differs = (xd != baseline).any(dim=1).flatten(1).float()  # (N, P)
    active = (differs @ reg.flatten(1).float().T) > 0  # (N, R)
    if not skip_unchanged:
        active = torch.ones_like(active)
    img_idx, reg_idx = active.nonzero(as_tuple=True)
    drops = torch.zeros(len(xd), len(reg), device=device)
    for s in progress(batch_slices(len(img_idx), batch_size), "occlusion"):
        i, r = img_idx[s], reg_idx[s]
        m = reg[r].unsqueeze(1).to(xd.dtype)  # (B, 1, H, W)
        occluded = xd[i] * (1 - m) + baseline * m
        p = model(occluded).softmax(1).gather(1, yd[i, None])[:, 0]
        drops[i, r] = p_clean[i] - p
    return drops.to(x.device)


@register_estimator("occlusion")
@dataclass(kw_only=True)
class Occlusion:
    """Occlusion importance (Zeiler & Fergus 2014) on a grid of windows.

    For each window r: I(r) = p_y(x) - p_y(x with r set to the baseline); a pixel gets the mean of
    I over the windows that cover it. Equals Captum's ``Occlusion`` on softmax outputs where the
    windows tile the image; where they do not, one more window flush with the border is added
    so that every pixel is covered.

    Args:
        window: side k of the k x k windows. Default 4.
        stride: step s between windows (s < k overlaps). Default 2.
        baseline: value of an occluded pixel, in [0, 1]. Default 0.0.
        batch_size: occluded images per forward pass. Default 256.

    Example:
        >>> importance = Occlusion(window=4, stride=2)(model, x, y)  # (N, H, W)
    """

    window: int = 4
    stride: int = 2
    baseline: float = 0.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_number("Occlusion", "window", self.window, low=1, integer=True)
        check_number("Occlusion", "stride", self.stride, low=1, integer=True)
        check_number("Occlusion", "baseline", self.baseline, low=0.0, high=1.0)
        check_number("Occlusion", "batch_size", self.batch_size, low=1, integer=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Importance (N, H, W) of x: (N, C, H, W) in [0, 1] for classes y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        check_model_output(model, x, y)
        regions = grid_regions(x.shape[2], x.shape[3], self.window, self.stride)
        return regions_to_pixels(
            occlusion_drops(model, x, y, regions, self.baseline, self.batch_size), regions.to(x.device)
        )
