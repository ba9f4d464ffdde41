"""Occlusion importance: the drop of the true-class probability when a region is set to a baseline."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from roiroa.geometry import grid_regions, label_regions, rectangle_boxes, regions_to_pixels, slic_labels
from roiroa.maps.baselines import Baseline, baseline_images, check_baseline
from roiroa.maps.incremental import (
    IncrementalModel,
    cached_folded_model,
    cached_incremental_model,
    forget_engine,
    remember_no_engine,
)
from roiroa.maps.registry import register_estimator
from roiroa.utils import batch_slices, model_device, progress
from roiroa.validation import check_choice, check_images, check_labels, check_model_output, check_number

Output = Literal["probability", "logit"]
OUTPUTS = ("probability", "logit")
RegionKind = Literal["grid", "superpixels"]

logger = logging.getLogger(__name__)
# Which fallbacks (to whole images, to the model's own layout) were already logged for each model.
_LOGGED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


def _from_logits(logits: torch.Tensor, y: torch.Tensor, output: Output) -> torch.Tensor:
    """The probability (softmax) or logit of classes y: (B,) from logits (B, K) -> (B,)."""
    return (logits.softmax(1) if output == "probability" else logits).gather(1, y[:, None])[:, 0]


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: Output) -> torch.Tensor:
    """The true-class probability (softmax) or logit of x: (B, C, H, W) for classes y: (B,) -> (B,)."""
    return _from_logits(model(x), y, output)


@contextmanager
def channels_last(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with its 4-d parameters channels-last (NHWC) inside the block, restoring them after.

    On CPU the convolutions of NHWC tensors are faster (oneDNN's native layout); the results agree
    with NCHW to float rounding (about 1e-6 here, see tests). Used for many forward passes of
    occluded images. After the block, also when it raises, every parameter holds its very own
    tensor again (same storage, same strides); buffers and gradients are never touched.
    """
    originals = {p: p.data for p in model.parameters() if p.dim() == 4}
    try:
        for param, data in originals.items():
            param.data = data.to(memory_format=torch.channels_last)
        yield
    finally:
        for param, data in originals.items():
            param.data = data


def _log_once(model: nn.Module, kind: str, message: str) -> None:
    """Log ``message`` at INFO the first time a fallback of this ``kind`` happens for ``model``."""
    seen = _LOGGED.setdefault(model, set())
    if kind not in seen:
        seen.add(kind)
        logger.info("occlusion: %s %s", type(model).__name__, message)


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"


def _fast_layout_works(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: Output) -> bool:
    """True if the model scores up to 4 images of x: (N, C, H, W), N >= 1, in channels-last layout as in its own.

    Both layouts sum the same products in another order, so float32 scores agree to ~1e-6 relative;
    a model that depends on the layout (``x.view(len(x), -1)`` of a feature map) raises or differs by
    far more than the 1e-4 allowed. A false "differs" only costs speed: the fallback is the model's own layout.
    """
    k = min(len(x), 4)
    own = _score(model, x[:k], y[:k], output)
    try:
        with channels_last(model):
            fast = _score(model, x[:k].contiguous(memory_format=torch.channels_last), y[:k], output)
    except Exception as err:  # noqa: BLE001 - any failure of the layout means: keep the model's own
        _log_once(model, "layout", f"fails in channels-last layout ({_first_line(err)}); using its own layout.")
        return False
    if torch.allclose(fast, own, rtol=1e-4, atol=1e-4 * max(1.0, float(own.abs().max()))):
        return True
    _log_once(model, "layout", "gives other outputs in channels-last layout; using its own layout.")
    return False


def _active_pairs(x: torch.Tensor, base: torch.Tensor, regions: torch.Tensor, skip_unchanged: bool) -> torch.Tensor:
    """(image, region) pairs (P, 2) whose occlusion changes the image: regions (R, H, W) or (N, R, H, W)."""
    differs = (x != base).any(dim=1).flatten(1).float()  # (N, P)
    if regions.dim() == 4:
        active = torch.einsum("np,nrp->nr", differs, regions.flatten(2).float()) > 0  # (N, R)
    else:
        active = (differs @ regions.flatten(1).float().T) > 0  # (N, R)
    return torch.ones_like(active).nonzero() if not skip_unchanged else active.nonzero()


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
    incremental: bool = True,
) -> torch.Tensor:
    """s_y(x) - s_y(x with region r set to the baseline), for every image and region, where s is the
    softmax probability (``output='probability'``) or the logit (``'logit'``).

    All (image, region) pairs are forwarded in batches of ``batch_size``. A pair whose region
    already equals the baseline in x (for example an all-black window of an MNIST digit) is not
    forwarded: the occluded image is x itself, so its drop is exactly 0 (``skip_unchanged=False``
    forwards it anyway; benchmarks/spine.py measures the difference).

    Where the regions are windows of one size, the first layers are computed only around each
    window (``incremental``, :mod:`roiroa.maps.incremental`); the drops equal the plain forward
    passes to float rounding. Models torch.fx cannot trace are forwarded whole.

    Args:
        model: logits (N, K).
        x: (N, C, H, W) in [0, 1].
        y: (N,) int64 classes whose score is read.
        regions: (R, H, W) bool region masks shared by all images (may overlap), or (N, R, H, W)
            per image (superpixels; empty regions have drop 0).
        baseline: the fill of an occluded region: a number, or baseline images (N, C, H, W).
        fast_layout: forward whole images in channels-last layout where the model gives the same
            scores in it on the first images (else in its own layout, logged once at INFO); the
            model's parameters are restored after, the very same tensors.
        incremental: use incremental inference for windows of one size (False: whole images).

    Returns:
        (N, R) float32 on x's device.
    """
    device = model_device(model)
    xd, yd, reg = x.to(device), y.to(device), regions.to(device)
    is_tensor = isinstance(baseline, torch.Tensor)
    base = baseline.to(device, xd.dtype) if is_tensor else torch.full_like(xd[:1], baseline)  # type: ignore[union-attr,arg-type]
    pairs = _active_pairs(xd, base, reg, skip_unchanged)
    n_regions = reg.shape[1] if reg.dim() == 4 else reg.shape[0]
    boxes = rectangle_boxes(reg) if incremental and reg.dim() == 3 else None
    engine = cached_incremental_model(model, tuple(xd.shape[1:]), boxes[2]) if boxes is not None else None  # type: ignore[arg-type]
    if engine is not None and boxes is not None:
        try:
            drops = _incremental_drops(engine, model, xd, yd, base, boxes, pairs, n_regions, batch_size, output)
        except Exception as err:  # noqa: BLE001 - e.g. a view() of channels-last maps: forward whole images
            _log_once(model, "incremental", f"fails incrementally ({_first_line(err)}); forwarding whole images.")
            remember_no_engine(model, tuple(xd.shape[1:]), boxes[2])  # type: ignore[arg-type]
        else:
            if drops is not None:
                return drops.to(x.device)
            forget_engine(model)
    folded = _checked_folded(model, xd, yd, output) if fast_layout and len(xd) > 0 else None
    fast_layout = fast_layout and len(xd) > 0 and (folded is not None or _fast_layout_works(model, xd, yd, output))
    net = model if folded is None else folded
    with channels_last(model) if fast_layout and folded is None else nullcontext():
        s_clean = torch.cat([_score(net, xd[s], yd[s], output) for s in batch_slices(len(xd), batch_size)])
        drops = torch.zeros(len(xd), n_regions, device=device)
        for s in progress(batch_slices(len(pairs), batch_size), "occlusion"):
            i, r = pairs[s, 0], pairs[s, 1]
            m = (reg[i, r] if reg.dim() == 4 else reg[r]).unsqueeze(1).to(xd.dtype)  # (B, 1, H, W)
            occluded = xd[i] * (1 - m) + (base[i] if len(base) > 1 else base) * m
            if fast_layout:
                occluded = occluded.contiguous(memory_format=torch.channels_last)
            drops[i, r] = s_clean[i] - _score(net, occluded, yd[i], output)
    return drops.to(x.device)


def _checked_folded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: Output) -> nn.Module | None:
    """The model's conv-BN-folded channels-last copy (:func:`roiroa.maps.incremental.folded_model`) if it scores
    up to 4 images of x: (N, C, H, W), N >= 1, as the model does (1e-4 relative), else None (logged once)."""
    folded = cached_folded_model(model, tuple(x.shape[1:]))  # type: ignore[arg-type]
    if folded is None:
        return None
    k = min(len(x), 4)
    own = _score(model, x[:k], y[:k], output)
    fast = _score(folded, x[:k].contiguous(memory_format=torch.channels_last), y[:k], output)
    if torch.allclose(fast, own, rtol=1e-4, atol=1e-4 * max(1.0, float(own.abs().max()))):
        return folded
    _log_once(model, "folded", "gives other outputs with its batch norms folded; forwarding the model itself.")
    return None


def _incremental_drops(
    engine: IncrementalModel,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    base: torch.Tensor,
    boxes: tuple[torch.Tensor, torch.Tensor, tuple[int, int]],
    pairs: torch.Tensor,
    n_regions: int,
    batch_size: int,
    output: Output,
) -> torch.Tensor | None:
    """:func:`occlusion_drops` of window regions through ``engine``; None (forward whole images
    instead) if its first batch does not equal the model's own forward pass."""
    top, left, (bh, bw) = boxes
    drops = torch.zeros(len(x), n_regions, device=x.device)
    # The clean pass keeps every early layer's maps: a few images at a time bound the memory.
    images_per_pass = max(1, min(len(x), batch_size // 16))
    checked = False
    for start in progress(range(0, len(x), images_per_pass), "occlusion", total=-(-len(x) // images_per_pass)):
        stop = min(start + images_per_pass, len(x))
        clean = engine.clean(x[start:stop])
        s_clean = _from_logits(clean.output, y[start:stop], output)
        chunk = pairs[(pairs[:, 0] >= start) & (pairs[:, 0] < stop)]
        for s in batch_slices(len(chunk), batch_size):
            i, r = chunk[s, 0], chunk[s, 1]
            rows = top[r][:, None] + torch.arange(bh, device=x.device)
            cols = left[r][:, None] + torch.arange(bw, device=x.device)
            fill = base[i] if len(base) > 1 else base.expand(len(i), -1, -1, -1)
            patch = fill[torch.arange(len(i), device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            logits = engine.forward(clean, i - start, top[r], left[r], patch.permute(0, 3, 1, 2))
            scores = _from_logits(logits, y[i], output)
            if not checked:  # guard against a traced graph that differs from the model's own forward
                k = min(len(i), 4)
                m = torch.zeros(k, 1, *x.shape[2:], device=x.device)
                m[torch.arange(k, device=x.device)[:, None, None], 0, rows[:k, :, None], cols[:k, None, :]] = 1
                eager = _score(model, x[i[:k]] * (1 - m) + fill[:k] * m, y[i[:k]], output)
                if not torch.allclose(scores[:k], eager, rtol=1e-4, atol=1e-5):
                    return None
                checked = True
            drops[i, r] = s_clean[i - start] - scores
    return drops


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
