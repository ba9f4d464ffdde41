"""Occlusion importance: the drop of the true-class probability when a region is set to a baseline."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from roiroa.maps.baselines import Baseline, baseline_images, check_baseline
from roiroa.maps.registry import register_estimator
from roiroa.regions.partition import grid_regions, regions_to_pixels
from roiroa.regions.superpixels import label_regions, slic_labels
from roiroa.utils import batch_slices, model_device, progress
from roiroa.validation import check_choice, check_images, check_labels, check_model_output, check_number

Output = Literal["probability", "logit"]
OUTPUTS = ("probability", "logit")
RegionKind = Literal["grid", "superpixels"]


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: Output) -> torch.Tensor:
    """The true-class probability (softmax) or logit of x: (B, C, H, W) for classes y: (B,) -> (B,)."""
    logits = model(x)
    return (logits.softmax(1) if output == "probability" else logits).gather(1, y[:, None])[:, 0]


@contextmanager
def channels_last(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with channels-last (NHWC) weights inside the block, restoring its layout after.

    On CPU the convolutions of NHWC tensors are faster (oneDNN's native layout); the results agree
    with NCHW to float rounding (about 1e-6 here, see tests). Used for many forward passes of
    occluded images.
    """
    formats = {p: p.is_contiguous() for p in model.parameters() if p.dim() == 4}
    if not formats:
        yield
        return
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    try:
        yield
    finally:
        for param, was_contiguous in formats.items():
            if was_contiguous:
                param.data = param.data.contiguous()


@torch.no_grad()
def occlusion_drops(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    regions: torch.Tensor,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 256,
    skip_unchanged: bool = True,
    output: Output = "probability",
    fast_layout: bool = True,
) -> torch.Tensor:
    """s_y(x) - s_y(x with region r set to the baseline), for every image and region, where s is the
    softmax probability (``output='probability'``) or the logit (``'logit'``).

    All (image, region) pairs are forwarded in batches of ``batch_size``. A pair whose region
    already equals the baseline in x (for example an all-black window of an MNIST digit) is not
    forwarded: the occluded image is x itself, so its drop is exactly 0 (``skip_unchanged=False``
    forwards it anyway; benchmarks/spine.py measures the difference).

    Args:
        model: logits (N, K).
        x: (N, C, H, W) in [0, 1].
        y: (N,) int64 classes whose score is read.
        regions: (R, H, W) bool region masks shared by all images (may overlap), or (N, R, H, W)
            per image (superpixels; empty regions have drop 0).
        baseline: the fill of an occluded region: a number, or baseline images (N, C, H, W).
        fast_layout: forward in channels-last layout (the model's own layout is restored after).

    Returns:
        (N, R) float32 on x's device.
    """
    with channels_last(model) if fast_layout else nullcontext():
        device = model_device(model)
        xd, yd, reg = x.to(device), y.to(device), regions.to(device)
        is_tensor = isinstance(baseline, torch.Tensor)
        base = baseline.to(device, xd.dtype) if is_tensor else torch.full_like(xd[:1], baseline)  # type: ignore[union-attr,arg-type]
        per_image = reg.dim() == 4
        s_clean = torch.cat([_score(model, xd[s], yd[s], output) for s in batch_slices(len(xd), batch_size)])
        differs = (xd != base).any(dim=1).flatten(1).float()  # (N, P)
        if per_image:
            active = torch.einsum("np,nrp->nr", differs, reg.flatten(2).float()) > 0  # (N, R)
        else:
            active = (differs @ reg.flatten(1).float().T) > 0  # (N, R)
        if not skip_unchanged:
            active = torch.ones_like(active)
        img_idx, reg_idx = active.nonzero(as_tuple=True)
        n_regions = reg.shape[1] if per_image else reg.shape[0]
        drops = torch.zeros(len(xd), n_regions, device=device)
        for s in progress(batch_slices(len(img_idx), batch_size), "occlusion"):
            i, r = img_idx[s], reg_idx[s]
            m = (reg[i, r] if per_image else reg[r]).unsqueeze(1).to(xd.dtype)  # (B, 1, H, W)
            occluded = xd[i] * (1 - m) + (base[i] if len(base) > 1 else base) * m
            if fast_layout:
                occluded = occluded.contiguous(memory_format=torch.channels_last)
            drops[i, r] = s_clean[i] - _score(model, occluded, yd[i], output)
    return drops.to(x.device)


@register_estimator("occlusion")
@dataclass(kw_only=True)
class Occlusion:
    """Occlusion importance (Zeiler & Fergus 2014) on a grid of windows or on superpixels.

    For each region r: I(r) = s_y(x) - s_y(x with r set to the baseline), with s the softmax
    probability (default) or the logit; a pixel gets the mean of I over the regions that cover
    it. Equals Captum's ``Occlusion`` (grid) and ``FeatureAblation`` (superpixels) on the same
    outputs where the windows tile the image; where they do not, one more window flush with the
    border is added so that every pixel is covered.

    Args:
        window: side k of the k x k windows. Default 4.
        stride: step s between windows (s < k overlaps). Default 2.
        baseline: fill of an occluded pixel: a number in [0, 1], 'zero', 'mean' (the image's
            per-channel mean) or 'blur' (the image blurred, std ``blur_sigma``). Default 0.0.
        output: 'probability' (softmax drop, default) or 'logit' (logit drop).
        regions: 'grid' (windows) or 'superpixels' (SLIC; ``n_segments``, ``compactness``).
        batch_size: occluded images per forward pass. Default 256.

    Example:
        >>> importance = Occlusion(window=4, stride=2)(model, x, y)  # (N, H, W)
    """

    window: int = 4
    stride: int = 2
    baseline: Baseline = 0.0
    batch_size: int = 256
    output: Output = "probability"
    regions: RegionKind = "grid"
    n_segments: int = 49
    compactness: float = 0.1
    blur_sigma: float = 2.0

    def __post_init__(self) -> None:
        check_number("Occlusion", "window", self.window, low=1, integer=True)
        check_number("Occlusion", "stride", self.stride, low=1, integer=True)
        check_baseline("Occlusion", self.baseline, self.blur_sigma)
        check_number("Occlusion", "batch_size", self.batch_size, low=1, integer=True)
        check_choice("Occlusion", "output", self.output, OUTPUTS)
        check_choice("Occlusion", "regions", self.regions, ("grid", "superpixels"))
        check_number("Occlusion", "n_segments", self.n_segments, low=1, integer=True)
        check_number("Occlusion", "compactness", self.compactness, low=0.0, low_open=True)

    def region_masks(self, x: torch.Tensor) -> torch.Tensor:
        """The regions of x: (R, H, W) bool grid windows, or (N, R, H, W) superpixels of each image."""
        if self.regions == "superpixels":
            return label_regions(slic_labels(x, self.n_segments, self.compactness))
        return grid_regions(x.shape[2], x.shape[3], self.window, self.stride).to(x.device)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Importance (N, H, W) of x: (N, C, H, W) in [0, 1] for classes y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        check_model_output(model, x, y)
        regions = self.region_masks(x)
        base = (
            float(self.baseline)
            if not isinstance(self.baseline, str) or self.baseline == "zero"
            else baseline_images(x, self.baseline, self.blur_sigma)
        )
        drops = occlusion_drops(model, x, y, regions, base, self.batch_size, output=self.output)
        return regions_to_pixels(drops, regions)
