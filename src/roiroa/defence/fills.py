"""Fills v of the neutralization N(x) = x (1 - M) + v M: zero, mean, per-pixel mean, blur of x, noise.

A fill is a callable ``fill(x) -> v`` with v broadcastable to x: (N, C, H, W) in [0, 1]. ``make_fill``
builds one by name; the fitted fills ('mean', 'pixel_mean') take their statistics from fitting images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from roiroa.errors import InputError
from roiroa.filters import gaussian_blur
from roiroa.validation import check_choice, check_number

FillKind = Literal["zero", "mean", "pixel_mean", "blur", "noise"]
FILL_KINDS = ("zero", "mean", "pixel_mean", "blur", "noise")


@dataclass
class Fill:
    """The value v of blocked positions, as a function of the input.

    Args:
        kind: 'zero'; 'mean' (per-channel mean of the fitting images); 'pixel_mean' (per-pixel mean
            of the fitting images); 'blur' (a Gaussian blur of the input itself, sigma ``sigma``);
            'noise' (uniform [0, 1] noise, drawn anew at every call from a generator seeded with ``seed``).
        value: the fitted statistic for 'mean' (1, C, 1, 1) or 'pixel_mean' (1, C, H, W); else unused.
        sigma: blur width in pixels. Default 2.0.
        seed: the noise generator's seed. Default 0.
    """

    kind: FillKind = "zero"
    value: torch.Tensor | None = field(default=None, repr=False)
    sigma: float = 2.0
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("Fill", "kind", self.kind, FILL_KINDS)
        check_number("Fill", "sigma", self.sigma, low=0.0, low_open=True)
        self.reset()

    @property
    def random(self) -> bool:
        """True when every call draws a new fill (the defence is randomized: evaluate it with EOT)."""
        return self.kind == "noise"

    def reset(self) -> None:
        """Re-seed the noise generator (the same sequence of draws again)."""
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """v for x: (N, C, H, W) in [0, 1], broadcastable to x."""
        if self.kind == "zero":
            return torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device)
        if self.kind in ("mean", "pixel_mean"):
            assert self.value is not None, "a fitted fill needs its value; build it with make_fill"
            return self.value.to(x.device, x.dtype)
        if self.kind == "blur":
            return gaussian_blur(x, self.sigma)
        return torch.rand(x.shape, generator=self._gen, dtype=x.dtype).to(x.device)

    def describe(self) -> str:
        """A short label for tables, e.g. 'blur(2)' or 'noise(seed 0)'."""
        if self.kind == "blur":
            return f"blur({self.sigma:g})"
        return f"noise(seed {self.seed})" if self.kind == "noise" else self.kind


def make_fill(kind: FillKind, x_fit: torch.Tensor | None = None, sigma: float = 2.0, seed: int = 0) -> Fill:
    """A :class:`Fill` by name; 'mean' and 'pixel_mean' need the fitting images x_fit: (N, C, H, W)."""
    check_choice("make_fill", "kind", kind, FILL_KINDS)
    value = None
    if kind in ("mean", "pixel_mean"):
        if x_fit is None:
            raise InputError(f"fill {kind!r} needs the fitting images x_fit: pass make_fill(kind, x_fit).")
        value = x_fit.mean(dim=(0, 2, 3), keepdim=True) if kind == "mean" else x_fit.mean(dim=0, keepdim=True)
    return Fill(kind, value, sigma, seed)
