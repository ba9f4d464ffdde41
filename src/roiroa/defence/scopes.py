"""Mask scopes of the neutralization defence: which positions to block, for which input.

A scope answers ``scope.masks(model, x) -> (N, H, W) bool``:
- ``FixedScope`` ('global'): one mask for every input (fitted by :class:`~roiroa.defence.GlobalMask`);
- ``PerClassMask`` ('per_class'): one mask per class, fitted on the fitting split, chosen by the predicted class;
- ``PerInputMask`` ('per_input'): computed from the input alone at test time: RoI = importance w.r.t. the predicted
  class, RoA = where the defender's own probe attack acts ('probe'), or where importance moves under that probe
  ('shift');
- ``EqualAreaControl``: the random control of any scope, the same count of positions per input.

:class:`ScopedNeutralizer` wraps f and a scope into f o N. The mask choice is computed without gradient: in the
backward pass the mask is held fixed (BPDA with the identity for the non-differentiable choice), while the gradient
through x (1 - M) + v M is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from roiroa.attacks.base import GradientAttack
from roiroa.attacks.gradient import LinfPGD
from roiroa.defence.fills import Fill
from roiroa.defence.neutralizer import neutralize
from roiroa.errors import InputError
from roiroa.maps.saliency import Saliency
from roiroa.maps.vulnerability import unit_mean
from roiroa.models.predict import predict
from roiroa.regions.thresholds import ThresholdMethod, isolate
from roiroa.validation import check_choice, check_number

SCOPE_NAMES = ("global", "per_class", "per_input", "oracle")


class MaskScope(Protocol):
    """Anything that gives each input its neutralization mask."""

    @property
    def name(self) -> str:
        """The scope's name in tables."""
        ...

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool masks for x: (N, C, H, W) in [0, 1]."""
        ...


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow each mask of (N, H, W) bool by ``radius`` pixels (a (2r+1) x (2r+1) square element).

    A max-pool is a binary dilation with a square element; it runs batched on the mask's device.
    """
    check_number("dilate", "radius", radius, low=0, integer=True)
    if radius == 0:
        return mask
    k = 2 * radius + 1
    return nn.functional.max_pool2d(mask[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0


def random_blob_mask(mask: torch.Tensor, generator: torch.Generator, tries: int = 200) -> torch.Tensor:
    """A random mask with the same count of positions and the same blobs as ``mask`` (H, W), moved at random.

    Each connected blob (8-connectivity, scipy.ndimage.label) is shifted to a random place where it fits
    without touching the blobs already placed (largest first); a blob that finds no free place after ``tries``
    draws is scattered, and any shortfall from overlaps is made up with random free positions, so the count is
    exact. This keeps the spatial spread of the mask while ignoring where it was.
    """
    m = mask.cpu().numpy().astype(bool)
    h, w = m.shape
    labels, n = ndimage.label(m, structure=np.ones((3, 3)))
    blobs = sorted((np.argwhere(labels == i) for i in range(1, n + 1)), key=len, reverse=True)
    out = np.zeros_like(m)

    def randint(high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=generator))

    for pts in blobs:
        pts = pts - pts.min(0)
        span = pts.max(0) + 1
        for _ in range(tries):
            dy, dx = randint(h - span[0] + 1), randint(w - span[1] + 1)
            cand = pts + (dy, dx)
            if not out[cand[:, 0], cand[:, 1]].any():
                out[cand[:, 0], cand[:, 1]] = True
                break
    missing = int(m.sum() - out.sum())
    if missing > 0:
        free = np.flatnonzero(~out.ravel())
        pick = free[torch.randperm(len(free), generator=generator)[:missing].numpy()]
        out.ravel()[pick] = True
    return torch.from_numpy(out).to(mask.device)


@dataclass
class FixedScope:
    """The same mask (H, W) bool for every input ('global', or its random control)."""

    mask: torch.Tensor
    name: str = "global"

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x.device).bool()[None].expand(len(x), -1, -1)


@dataclass
class PerClassMask:
    """One mask per class: S_A = RoA minus RoI of the mean maps of the fitting images of that class.

    Args:
        q_roi, q_roa: top-q fractions (method 'top_q'). Default 0.2 each.
        method: 'top_q' or 'otsu'.

    Attributes (after ``fit``):
        masks_: (K, H, W) bool; area_: mean blocked fraction over the classes.
    """

    q_roi: float = 0.2
    q_roa: float = 0.2
    method: ThresholdMethod = "top_q"
    name: str = "per_class"
    masks_: torch.Tensor = field(init=False, repr=False)
    area_: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_number("PerClassMask", "q_roi", self.q_roi, low=0.0, low_open=True, high=1.0)
        check_number("PerClassMask", "q_roa", self.q_roa, low=0.0, low_open=True, high=1.0)
        check_choice("PerClassMask", "method", self.method, ("top_q", "otsu"))

    def fit(
        self, importance: torch.Tensor, vulnerability: torch.Tensor, labels: torch.Tensor, num_classes: int
    ) -> PerClassMask:
        """Fit on maps (N, H, W) of the fitting images and their classes (N,); a class without images blocks nothing."""
        if importance.shape != vulnerability.shape or importance.dim() != 3 or len(labels) != len(importance):
            raise InputError("PerClassMask.fit needs importance and vulnerability (N, H, W) and labels (N,).")
        imp, vul = unit_mean(importance), unit_mean(vulnerability)
        masks = torch.zeros(num_classes, *importance.shape[1:], dtype=torch.bool)
        for k in range(num_classes):
            sel = labels == k
            if sel.any():
                roi = isolate(imp[sel].mean(0, keepdim=True), self.method, self.q_roi)[0]
                roa = isolate(vul[sel].mean(0, keepdim=True), self.method, self.q_roa)[0]
                masks[k] = roa & ~roi
        self.masks_ = masks
        self.area_ = float(masks.double().mean())
        return self

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "masks_"):
            raise InputError("PerClassMask is not fitted yet: call fit(importance, vulnerability, labels, K) first.")
        return self.masks_.to(x.device)[predict(model, x)]


RoaSource = Literal["probe", "shift"]


@dataclass
class PerInputMask:
    """Per-input S_A from the input alone, at test time (no knowledge of the attack).

    RoI: gradient saliency of the predicted class on x. RoA: with ``roa='probe'``, the loss-gradient magnitude
    accumulated by the defender's own probe attack on x against its predicted class (where the probe acts); with
    ``roa='shift'``, |saliency on the probed image - saliency on x| (where the probe moves importance).

    Args:
        q_roi, q_roa: top-q fractions (method 'top_q'). Default 0.2 each.
        method: 'top_q' or 'otsu'.
        roa: 'probe' or 'shift'. Default 'probe'.
        probe: the defender's attack. Default PGD L-inf eps 0.1, 5 steps, no random start (deterministic).
    """

    q_roi: float = 0.2
    q_roa: float = 0.2
    method: ThresholdMethod = "top_q"
    roa: RoaSource = "probe"
    probe: GradientAttack = field(default_factory=lambda: LinfPGD(eps=0.1, steps=5, random_start=False))
    name: str = "per_input"

    def __post_init__(self) -> None:
        check_number("PerInputMask", "q_roi", self.q_roi, low=0.0, low_open=True, high=1.0)
        check_number("PerInputMask", "q_roa", self.q_roa, low=0.0, low_open=True, high=1.0)
        check_choice("PerInputMask", "method", self.method, ("top_q", "otsu"))
        check_choice("PerInputMask", "roa", self.roa, ("probe", "shift"))

    def maps(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(importance, vulnerability), each (N, H, W), of x w.r.t. its predicted class."""
        x = x.detach().clamp(0.0, 1.0)
        pred = predict(model, x)
        saliency = Saliency(batch_size=max(1, len(x)))
        importance = saliency(model, x, pred)
        result = self.probe.run(model, x, pred)
        if self.roa == "probe":
            return importance, result.grad_map
        return importance, (saliency(model, result.x_adv, pred) - importance).abs()

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        importance, vulnerability = self.maps(model, x)
        roi = isolate(importance, self.method, self.q_roi)
        roa = isolate(vulnerability, self.method, self.q_roa)
        return (roa & ~roi).to(x.device)


@dataclass
class EqualAreaControl:
    """The random control of a scope: for each input, as many positions as the scope's mask, placed at random.

    The positions are the first |M(x)| of one fixed random order of the H x W positions (seeded), so the
    control is a deterministic function of the input (no randomness for an attacker to average over).
    """

    scope: MaskScope
    seed: int = 0

    @property
    def name(self) -> str:
        return f"random[{self.scope.name}]"

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        m = self.scope.masks(model, x)
        n, h, w = m.shape
        order = torch.randperm(h * w, generator=torch.Generator().manual_seed(self.seed)).to(m.device)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(h * w, device=m.device)
        counts = m.reshape(n, -1).sum(1, keepdim=True)
        return (ranks[None] < counts).view(n, h, w)


class ScopedNeutralizer(nn.Module):
    """f o N with a mask from a scope, an optional dilation, and a fill: an nn.Module to attack end to end.

    The mask is chosen without gradient (held fixed in the backward pass: BPDA with the identity); the
    gradient through the blend x (1 - M) + v M, and through a blur fill, is exact.

    Args:
        model: f, logits (N, K) from (N, C, H, W) in [0, 1].
        scope: a :class:`MaskScope`.
        fill: a :class:`~roiroa.defence.fills.Fill`.
        dilation: grow every mask by this many pixels. Default 0.
    """

    def __init__(self, model: nn.Module, scope: MaskScope, fill: Fill, dilation: int = 0) -> None:
        super().__init__()
        check_number("ScopedNeutralizer", "dilation", dilation, low=0, integer=True)
        self.model, self.scope, self.fill, self.dilation = model, scope, fill, dilation

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocked positions (N, H, W) bool for x: (N, C, H, W)."""
        with torch.no_grad():
            return dilate(self.scope.masks(self.model, x.detach()), self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, K) of f(N(x))."""
        return self.model(neutralize(x, self.masks(x), self.fill(x)))
