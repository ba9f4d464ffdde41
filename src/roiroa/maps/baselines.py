"""Baseline images for occlusion and integrated gradients: a constant, the image's mean, or its blur."""

from __future__ import annotations

import torch

from roiroa.filters import gaussian_blur
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
