"""Baseline images for occlusion and integrated gradients: a constant, the image's mean, or its blur."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from roiroa.validation import check_choice, check_number

BASELINES = ("zero", "mean", "blur")
Baseline = float | str


def check_baseline(owner: str, baseline: Baseline, blur_sigma: float) -> None:
    """Raise unless ``baseline`` is a number in [0, 1] or one of 'zero', 'mean', 'blur'."""
    if isinstance(baseline, str):
        check_choice(owner, "baseline", baseline, BASELINES)
    else:
        check_number(owner, "baseline", baseline, low=0.0, high=1.0)
    check_number(owner, "blur_sigma", blur_sigma, low=0.0, low_open=True)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of x: (N, C, H, W) convolved with a Gaussian of std ``sigma`` pixels (reflected borders).

    Plain torch (a separable kernel of radius ceil(3 sigma)) so that it runs on the model's device.
    """
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[2] - 1, x.shape[3] - 1) if min(x.shape[2:]) > 1 else 0
    if radius == 0:
        return x.clone()
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def baseline_images(x: torch.Tensor, baseline: Baseline, blur_sigma: float = 2.0) -> torch.Tensor:
    """The baseline image of each image of x: (N, C, H, W) in [0, 1], same shape.

    baseline: a number (every pixel that value), 'zero', 'mean' (each image's per-channel mean)
    or 'blur' (x blurred with a Gaussian of std ``blur_sigma``).
    """
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma)
    return torch.full_like(x, float(baseline))
