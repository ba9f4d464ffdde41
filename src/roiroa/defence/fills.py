"""Fills v of the neutralization N(x) = x (1 - M) + v M: one registry for every kind.

A fill is a callable ``fill(x, mask=None) -> v`` with v broadcastable to x: (N, C, H, W) in [0, 1]; the
mask (N or 1, 1, H, W) in {0, 1} is the blocked region (only the low-rank fill reads it). Fills with
statistics of clean images have ``fit(x_fit) -> self`` (scikit-learn style); a fill whose ``random`` is True
draws anew at every call (evaluate it with EOT) and ``reset()`` starts its draws again.

Registered: 'zero', 'mean' (per-channel mean of the fitting images), 'pixel_mean' (per-pixel mean),
'blur' (a Gaussian blur of the input itself), 'noise' (seeded uniform noise) and 'lowrank' (ODDR's fill,
Chattopadhyay et al. 2023: the blocked region reconstructed from the image's largest singular values; its
backward pass is the identity, BPDA). A user's fill is named 'package.module:callable' in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from roiroa.defence.adaptive import bpda
from roiroa.errors import InputError
from roiroa.filters import gaussian_blur
from roiroa.registry import Registry
from roiroa.validation import check_images, check_number


class Fill(Protocol):
    """The value of blocked positions as a function of the input (and of the blocked region)."""

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """v for x: (N, C, H, W) in [0, 1], broadcastable to x, in [0, 1]."""
        ...


FILLS: Registry[Fill] = Registry("fill")


@FILLS.register("zero")
@dataclass
class ZeroFill:
    """v = 0 (black)."""

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device)

    def describe(self) -> str:
        return "zero"


@dataclass
class _FittedFill:
    """A fill holding a statistic ``value_`` of clean fitting images."""

    value_: torch.Tensor | None = field(default=None, repr=False)

    def _statistic(self, x_fit: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, x_fit: torch.Tensor) -> _FittedFill:
        """Fit on clean images x_fit: (N, C, H, W) in [0, 1]; returns self."""
        check_images(x_fit, "x_fit")
        self.value_ = self._statistic(x_fit.detach())
        return self

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.value_ is None:
            raise InputError(f"fill {self.describe()!r} is not fitted: call fit(x_fit) with clean images first.")
        return self.value_.to(x.device, x.dtype)

    def describe(self) -> str:
        raise NotImplementedError


@FILLS.register("mean")
@dataclass
class MeanFill(_FittedFill):
    """v = the per-channel mean of the fitting images, (1, C, 1, 1)."""

    def _statistic(self, x_fit: torch.Tensor) -> torch.Tensor:
        return x_fit.mean(dim=(0, 2, 3), keepdim=True)

    def describe(self) -> str:
        return "mean"


@FILLS.register("pixel_mean")
@dataclass
class PixelMeanFill(_FittedFill):
    """v = the per-pixel mean of the fitting images, (1, C, H, W)."""

    def _statistic(self, x_fit: torch.Tensor) -> torch.Tensor:
        return x_fit.mean(dim=0, keepdim=True)

    def describe(self) -> str:
        return "pixel_mean"


@FILLS.register("blur")
@dataclass
class BlurFill:
    """v = a Gaussian blur of the input itself (sigma in pixels; exact gradient). Default sigma 2.0."""

    sigma: float = 2.0

    def __post_init__(self) -> None:
        check_number("BlurFill", "sigma", self.sigma, low=0.0, low_open=True)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return gaussian_blur(x, self.sigma)

    def describe(self) -> str:
        return f"blur({self.sigma:g})"


@FILLS.register("noise")
@dataclass
class NoiseFill:
    """v = uniform [0, 1] noise drawn anew at every call from a generator seeded with ``seed`` (a random defence)."""

    seed: int = 0
    random = True
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_number("NoiseFill", "seed", self.seed, low=0, integer=True)
        self.reset()

    def reset(self) -> None:
        """Re-seed the generator (the same sequence of draws again)."""
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.rand(x.shape, generator=self._gen, dtype=x.dtype).to(x.device)

    def describe(self) -> str:
        return f"noise(seed {self.seed})"


def truncated_svd(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Each channel of x: (N, C, H, W) as its best rank-``rank`` approximation (Eckart-Young); rank 0 gives 0."""
    check_number("truncated_svd", "rank", rank, low=0, integer=True)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # batched over (N, C)
    r = min(rank, s.shape[-1])
    return (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]


def lowrank_reconstruction(x: torch.Tensor, mask: torch.Tensor, rank: int = 2) -> torch.Tensor:
    """x: (N, C, H, W) with the blocked region (mask (N or 1, 1, H, W) in {0, 1}) first set to the image's mean
    over the rest (so a patch does not steer the singular vectors), then each channel reconstructed from its
    ``rank`` largest singular values; (N, C, H, W) in [0, 1]."""
    m = mask.to(x.device, x.dtype)
    keep = 1.0 - m
    outside = (x * keep).sum(dim=(2, 3), keepdim=True) / keep.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
    return truncated_svd(x * keep + outside * m, rank).clamp(0.0, 1.0)


@FILLS.register("lowrank")
@dataclass
class LowRankFill:
    """ODDR's fill: the low-rank reconstruction of the image (see :func:`lowrank_reconstruction`), passed
    straight through in the backward pass (BPDA identity). Default rank 2."""

    rank: int = 2

    def __post_init__(self) -> None:
        check_number("LowRankFill", "rank", self.rank, low=0, integer=True)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            raise InputError("the 'lowrank' fill needs the blocked region: call fill(x, mask).")
        return bpda(x, lambda t: lowrank_reconstruction(t, mask, self.rank))

    def describe(self) -> str:
        return f"lowrank(rank {self.rank})"


def make_fill(kind: str, x_fit: torch.Tensor | None = None, **params: Any) -> Fill:
    """A fill by registered name (or 'package.module:callable') with its parameters, fitted on x_fit:
    (N, C, H, W) in [0, 1] when it has a ``fit`` method (then x_fit is required)."""
    fill = FILLS.create(kind, **params)
    if callable(getattr(fill, "fit", None)):
        if x_fit is None:
            raise InputError(f"fill {kind!r} is fitted on clean images: pass make_fill({kind!r}, x_fit).")
        fill = fill.fit(x_fit)  # type: ignore[attr-defined]
    return fill


def is_random(fill: Fill) -> bool:
    """True when every call of the fill draws anew (the defence is randomized: evaluate it with EOT)."""
    return bool(getattr(fill, "random", False))


def reset_fill(fill: Fill) -> None:
    """Start a random fill's draws again (the same sequence for every evaluation); others are unchanged."""
    reset = getattr(fill, "reset", None)
    if callable(reset):
        reset()
