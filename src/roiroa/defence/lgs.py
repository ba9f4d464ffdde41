"""Local Gradient Smoothing (Naseer, Khan and Porikli, WACV 2019), written from the paper, as the baseline.

1. g(x) = sqrt((dx/du)^2 + (dx/dv)^2), the first-order gradient magnitude of the (channel-mean) image,
   normalised to [0, 1] per image (min-max).
2. Block-wise thresholding: the image is cut into overlapping windows (size w, overlap o); a window keeps
   its normalised gradients if their mean exceeds the threshold tau, otherwise they are set to 0 (a pixel
   keeps its value if any window covering it is kept). This leaves the dense high-frequency regions that
   localized patches make.
3. Smoothing: T(x) = x * (1 - lambda * g_hat) with (1 - lambda * g_hat) clipped to [0, 1].
The paper uses w = 15, o = 5, tau = 0.1, lambda = 2.3 on 299 x 299 images; the defaults below scale the window
to small images. The block decisions are hard (no gradient through them: BPDA treats them as constants); the
rest is differentiable, so an adaptive attack can run through ``Preprocessed(model, LocalGradientSmoothing())``
directly; it is registered with the other input transformations as 'lgs'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from roiroa.defence.baselines import BASELINES
from roiroa.geometry import grid_regions
from roiroa.validation import check_images, check_number


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """sqrt(du^2 + dv^2) of the channel mean of x: (N, C, H, W) -> (N, H, W).

    Forward differences, 0 at the last row and column."""
    g = x.mean(1)
    du = F.pad(g[:, :, 1:] - g[:, :, :-1], (0, 1))
    dv = F.pad(g[:, 1:, :] - g[:, :-1, :], (0, 0, 0, 1))
    return torch.sqrt(du**2 + dv**2 + 1e-12)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of each map (N, H, W) to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    span = hi - lo
    return (maps - lo) / torch.where(span > 0, span, torch.ones_like(span))


@dataclass(kw_only=True)
class LGSParams:
    """window, overlap (stride = window - overlap), threshold tau, and smoothing factor lambda."""

    window: int = 5
    overlap: int = 2
    threshold: float = 0.1
    smoothing: float = 2.3

    def __post_init__(self) -> None:
        check_number("LGS", "window", self.window, low=1, integer=True)
        check_number("LGS", "overlap", self.overlap, low=0, high=self.window - 1, integer=True)
        check_number("LGS", "threshold", self.threshold, low=0.0, high=1.0)
        check_number("LGS", "smoothing", self.smoothing, low=0.0)


def lgs_gradients(x: torch.Tensor, params: LGSParams) -> torch.Tensor:
    """The thresholded normalised gradient map g_hat (N, H, W) in [0, 1] of x: (N, C, H, W) in [0, 1]."""
    g = normalise(gradient_magnitude(x))
    windows = grid_regions(x.shape[2], x.shape[3], params.window, params.window - params.overlap).to(x.device)
    flat = windows.flatten(1).to(x.dtype)  # (R, P)
    window_mean = (g.detach().flatten(1) @ flat.T) / flat.sum(1)  # (N, R)
    kept = ((window_mean > params.threshold).to(x.dtype) @ flat) > 0  # (N, P): covered by a kept window
    return g * kept.view_as(g)


def local_gradient_smoothing(x: torch.Tensor, params: LGSParams | None = None) -> torch.Tensor:
    """T(x) = x * clip(1 - lambda * g_hat, 0, 1) for x: (N, C, H, W) in [0, 1]."""
    check_images(x)
    params = params or LGSParams()
    return x * (1 - params.smoothing * lgs_gradients(x, params)).clamp(0.0, 1.0)[:, None]


@BASELINES.register("lgs")
@dataclass(frozen=True)
class LocalGradientSmoothing:
    """LGS as an input transformation: T(x) = x * clip(1 - lambda * g_hat, 0, 1) (see the module docstring).

    Differentiable but for the hard block decisions, which are constants in the backward pass (BPDA), so an
    adaptive attack runs through ``Preprocessed(model, LocalGradientSmoothing())`` directly.

    Args: window, overlap, threshold, smoothing as in :class:`LGSParams`.
    """

    window: int = 5
    overlap: int = 2
    threshold: float = 0.1
    smoothing: float = 2.3
    differentiable = True

    def __post_init__(self) -> None:
        LGSParams(window=self.window, overlap=self.overlap, threshold=self.threshold, smoothing=self.smoothing)

    @property
    def params(self) -> LGSParams:
        return LGSParams(window=self.window, overlap=self.overlap, threshold=self.threshold, smoothing=self.smoothing)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 - self.smoothing * lgs_gradients(x, self.params)).clamp(0.0, 1.0)[:, None]

    def flagged(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: the positions LGS damps (g_hat > 0), for detection IoU."""
        return lgs_gradients(x, self.params) > 0
