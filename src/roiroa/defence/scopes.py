"""Mask scopes of the neutralization defence: which positions to block, for which input.

One protocol, :class:`MaskScope`: ``scope.masks(model, x) -> (N, H, W) bool``; a scope that learns from clean
images also has ``fit(data: FitData) -> self`` (scikit-learn style). Registered (``SCOPES``):
- 'global' (:class:`GlobalMask`): one mask for every input, S_A of the fitting images' mean maps;
- 'per_class' (:class:`PerClassMask`): one mask per class, chosen by the predicted class;
- 'per_input' (:class:`PerInputMask`): from the input alone at test time: RoI = saliency of the predicted class,
  RoA = where the defender's own probe attack acts ('probe') or where importance moves under it ('shift');
- 'fragments' (:mod:`roiroa.defence.fragments`): anomalous fragments of the input, minus the RoI.
Controls, any scope's equal-area random twin: :class:`EqualAreaControl` (the same count of positions per
input, at random, or as one square block) and :func:`random_blob_mask` (a fixed mask's blobs moved at random).
S_A = RoA minus RoI comes from :class:`~roiroa.regions.segments.Segments` everywhere. A user's scope is
named 'package.module:callable' in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from roiroa.attacks.gradient import LinfPGD
from roiroa.errors import InputError
from roiroa.maps.recorder import record_attack
from roiroa.maps.saliency import Saliency
from roiroa.maps.vulnerability import unit_mean
from roiroa.models.predict import predict
from roiroa.regions.segments import Segments
from roiroa.regions.thresholds import ThresholdMethod, isolate
from roiroa.registry import Registry
from roiroa.validation import check_choice, check_number


class MaskScope(Protocol):
    """Anything that gives each input its neutralization mask."""

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool masks for x: (N, C, H, W) in [0, 1]."""
        ...


SCOPES: Registry[MaskScope] = Registry("mask scope")


class FitData:
    """What a scope may be fitted on: f, clean fitting images, their labels and (computed on first use) maps.

    Args:
        model: f, logits (N, K).
        images: (N, C, H, W) in [0, 1]; labels: (N,) int64; num_classes: K.
        importance, vulnerability: (N, H, W) maps of the images, or None to compute them with ``maps()`` only
            when a scope asks for them.
        maps: a callable returning (importance, vulnerability) for the images.
    """

    def __init__(
        self,
        model: nn.Module | None,
        images: torch.Tensor | None,
        labels: torch.Tensor | None,
        num_classes: int,
        importance: torch.Tensor | None = None,
        vulnerability: torch.Tensor | None = None,
        maps: object = None,
    ) -> None:
        self.model, self.images, self.labels, self.num_classes = model, images, labels, num_classes
        self._given, self._maps = (importance, vulnerability), maps
        if (
            importance is not None
            and vulnerability is not None
            and (importance.shape != vulnerability.shape or importance.dim() != 3)
        ):
            raise InputError(
                f"importance and vulnerability maps must both be (N, H, W); got {tuple(importance.shape)} "
                f"and {tuple(vulnerability.shape)}."
            )

    @classmethod
    def of_maps(
        cls, importance: torch.Tensor, vulnerability: torch.Tensor, labels: torch.Tensor | None = None
    ) -> FitData:
        """Fitting data that holds only maps (N, H, W) (and labels (N,)): enough for the global and per-class
        masks."""
        k = int(labels.max()) + 1 if labels is not None and len(labels) else 0
        return cls(None, None, labels, k, importance, vulnerability)

    @cached_property
    def _both(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._given[0] is not None and self._given[1] is not None:
            return self._given  # type: ignore[return-value]
        if not callable(self._maps):
            raise InputError("this scope is fitted on maps: give FitData the importance and vulnerability maps.")
        return self._maps()  # type: ignore[no-any-return]

    @property
    def importance(self) -> torch.Tensor:
        """(N, H, W) importance maps of the fitting images."""
        return self._given[0] if self._given[0] is not None else self._both[0]

    @property
    def vulnerability(self) -> torch.Tensor:
        """(N, H, W) vulnerability maps of the fitting images."""
        return self._both[1]


def check_q(owner: str, q_roi: float, q_roa: float, threshold: str) -> None:
    check_number(owner, "q_roi", q_roi, low=0.0, low_open=True, high=1.0)
    check_number(owner, "q_roa", q_roa, low=0.0, low_open=True, high=1.0)
    check_choice(owner, "threshold", threshold, ("top_q", "otsu"))


def s_a_mask(
    importance: torch.Tensor, vulnerability: torch.Tensor, q_roi: float, q_roa: float, threshold: str
) -> torch.Tensor:
    """S_A = RoA minus RoI (N, H, W) bool of maps (N, H, W), each isolated by ``threshold`` with its q."""
    method: ThresholdMethod = threshold  # type: ignore[assignment]
    return Segments(isolate(importance, method, q_roi), isolate(vulnerability, method, q_roa)).s_a


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow each mask of (N, H, W) bool by ``radius`` pixels (a (2r+1) x (2r+1) square element).

    A max-pool is a binary dilation with a square element; it runs batched on the mask's device.
    """
    check_number("dilate", "radius", radius, low=0, integer=True)
    if radius == 0:
        return mask
    k = 2 * radius + 1
    return nn.functional.max_pool2d(mask[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0


@dataclass
class Dilated:
    """A scope's masks grown by ``radius`` pixels: what a neutralizer with that dilation blocks, so that an
    equal-area control copies the area actually blocked (and is not dilated itself)."""

    scope: MaskScope
    radius: int

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return dilate(self.scope.masks(model, x), self.radius)


@dataclass
class FixedMask:
    """The same mask (H, W) bool for every input (a given mask, or a control)."""

    mask: torch.Tensor

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x.device).bool()[None].expand(len(x), -1, -1)


@SCOPES.register("global")
@dataclass
class GlobalMask:
    """One mask for every input: S_A of the fitting images' maps, each scaled to unit mean and averaged.

    Args:
        q_roi, q_roa: top-q fractions of positions in the RoI and RoA (threshold 'top_q'). Default 0.2 each.
        threshold: 'top_q' or 'otsu'. Default 'top_q'.

    Attributes (after ``fit``): importance_, vulnerability_ (H, W) mean maps; roi_, roa_, mask_ (H, W) bool;
    area_ = |mask_| / (H W).
    """

    q_roi: float = 0.2
    q_roa: float = 0.2
    threshold: str = "top_q"
    mask_: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_q("GlobalMask", self.q_roi, self.q_roa, self.threshold)

    def fit(self, data: FitData) -> GlobalMask:
        """Fit on the maps of the fitting images; returns self."""
        self.importance_ = unit_mean(data.importance).mean(0)
        self.vulnerability_ = unit_mean(data.vulnerability).mean(0)
        method: ThresholdMethod = self.threshold  # type: ignore[assignment]
        segments = Segments(
            isolate(self.importance_[None], method, self.q_roi), isolate(self.vulnerability_[None], method, self.q_roa)
        )
        self.roi_, self.roa_, self.mask_ = segments.roi[0], segments.roa[0], segments.s_a[0]
        self.area_ = float(self.mask_.float().mean())
        return self

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "mask_"):
            raise InputError("GlobalMask is not fitted yet: call fit(FitData(...)) first.")
        return FixedMask(self.mask_).masks(model, x)


@SCOPES.register("per_class")
@dataclass
class PerClassMask:
    """One mask per class: S_A of the mean maps of the fitting images of that class, chosen by the predicted class.

    Args:
        q_roi, q_roa, threshold: as in :class:`GlobalMask`.

    Attributes (after ``fit``): masks_ (K, H, W) bool (a class without fitting images blocks nothing);
    area_, the mean blocked fraction over the classes.
    """

    q_roi: float = 0.2
    q_roa: float = 0.2
    threshold: str = "top_q"
    masks_: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_q("PerClassMask", self.q_roi, self.q_roa, self.threshold)

    def fit(self, data: FitData) -> PerClassMask:
        """Fit on the maps and labels of the fitting images; returns self."""
        if data.labels is None:
            raise InputError("PerClassMask is fitted on labelled images: give FitData the labels.")
        imp, vul = unit_mean(data.importance), unit_mean(data.vulnerability)
        masks = torch.zeros(data.num_classes, *imp.shape[1:], dtype=torch.bool)
        for k in range(data.num_classes):
            sel: torch.Tensor = data.labels == k
            if sel.any():
                mean_maps = imp[sel].mean(0, keepdim=True), vul[sel].mean(0, keepdim=True)
                masks[k] = s_a_mask(*mean_maps, self.q_roi, self.q_roa, self.threshold)[0]
        self.masks_, self.area_ = masks, float(masks.double().mean())
        return self

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "masks_"):
            raise InputError("PerClassMask is not fitted yet: call fit(FitData(...)) first.")
        return self.masks_.to(x.device)[predict(model, x)]


@SCOPES.register("per_input")
@dataclass
class PerInputMask:
    """Per-input S_A from the input alone, at test time (no knowledge of the attack).

    RoI: gradient saliency of the predicted class on x. RoA: with ``roa='probe'``, the gradient magnitude the
    defender's own probe attack (PGD L-inf, no random start, against the predicted class) accumulates on x;
    with ``roa='shift'``, |saliency on the probed image - saliency on x| (where the probe moves importance).

    Args:
        q_roi, q_roa, threshold: as in :class:`GlobalMask`.
        roa: 'probe' or 'shift'. Default 'probe'.
        probe_eps, probe_steps: the probe attack. Default 0.1, 5.
    """

    q_roi: float = 0.2
    q_roa: float = 0.2
    threshold: str = "top_q"
    roa: Literal["probe", "shift"] = "probe"
    probe_eps: float = 0.1
    probe_steps: int = 5

    def __post_init__(self) -> None:
        check_q("PerInputMask", self.q_roi, self.q_roa, self.threshold)
        check_choice("PerInputMask", "roa", self.roa, ("probe", "shift"))
        check_number("PerInputMask", "probe_eps", self.probe_eps, low=0.0, low_open=True, high=1.0)
        check_number("PerInputMask", "probe_steps", self.probe_steps, low=1, integer=True)
        self.probe = LinfPGD(eps=self.probe_eps, steps=self.probe_steps, random_start=False)

    def maps(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(importance, vulnerability), each (N, H, W), of x w.r.t. its predicted class."""
        x = x.detach().clamp(0.0, 1.0)
        pred = predict(model, x)
        saliency = Saliency(batch_size=max(1, len(x)))
        importance = saliency(model, x, pred)
        trace = record_attack(self.probe, model, x, pred, batch_size=max(1, len(x)))
        if self.roa == "probe":
            return importance, trace.gradient
        return importance, (saliency(model, trace.x_adv, pred) - importance).abs()

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return s_a_mask(*self.maps(model, x), self.q_roi, self.q_roa, self.threshold).to(x.device)


def _square_masks(counts: torch.Tensor, height: int, width: int, order: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: per image one square of side round(sqrt(count)), at the first corner of ``order``
    (a random order of the H x W positions) where it fits."""
    out = torch.zeros(len(counts), height, width, dtype=torch.bool)
    for i, count in enumerate(counts.tolist()):
        side = min(round(count**0.5), height, width)
        if side > 0:
            top, left = next(
                (int(p) // width, int(p) % width)
                for p in order
                if int(p) // width <= height - side and int(p) % width <= width - side
            )
            out[i, top : top + side, left : left + side] = True
    return out


@dataclass
class EqualAreaControl:
    """The random control of a scope: for each input, as many positions as the scope's mask, placed at random.

    With ``shape='pixels'`` the positions are the first |M(x)| of one fixed random order of the H x W positions;
    with ``shape='block'`` they form one square of about |M(x)| positions at a fixed random place for its size
    (the control of patch defences). Either way the control is a deterministic function of the input (no
    randomness for an attacker to average over).

    Args:
        scope: the scope whose per-input area is copied (fitted).
        seed: the random order. shape: 'pixels' or 'block'. Default 'pixels'.
    """

    scope: MaskScope
    seed: int = 0
    shape: Literal["pixels", "block"] = "pixels"

    def __post_init__(self) -> None:
        check_choice("EqualAreaControl", "shape", self.shape, ("pixels", "block"))

    def masks(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        m = self.scope.masks(model, x)
        n, h, w = m.shape
        order = torch.randperm(h * w, generator=torch.Generator().manual_seed(self.seed))
        counts = m.reshape(n, -1).sum(1).cpu()
        if self.shape == "block":
            return _square_masks(counts, h, w, order).to(m.device)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(h * w)
        return (ranks[None] < counts[:, None]).view(n, h, w).to(m.device)


def random_blob_mask(mask: torch.Tensor, generator: torch.Generator, tries: int = 200) -> torch.Tensor:
    """A random mask with the same count of positions and the same blobs as ``mask`` (H, W), moved at random.

    Each connected blob (8-connectivity, scipy.ndimage.label) is shifted to a random place where it fits
    without touching the blobs already placed (largest first); a blob that finds no free place after ``tries``
    draws is scattered, and any shortfall from overlaps is made up with random free positions, so the count is
    exact. This keeps the spatial spread of the mask while ignoring where it was.
    """
    from scipy import ndimage

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
            cand = pts + (randint(h - span[0] + 1), randint(w - span[1] + 1))
            if not out[cand[:, 0], cand[:, 1]].any():
                out[cand[:, 0], cand[:, 1]] = True
                break
    missing = int(m.sum() - out.sum())
    if missing > 0:
        free = np.flatnonzero(~out.ravel())
        pick = free[torch.randperm(len(free), generator=generator)[:missing].numpy()]
        out.ravel()[pick] = True
    return torch.from_numpy(out).to(mask.device)


def random_mask_like(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random masks with as many positions as ``mask``, drawn uniformly (the equal-area control of a known mask).

    Args:
        mask: (H, W) or (N, H, W) bool; each (H, W) mask gets its own random mask of equal count.
        generator: a CPU generator (seeded by the caller).

    Returns:
        bool tensor shaped like ``mask``, on its device.
    """
    flat = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).cpu()
    ranks = torch.rand(flat.shape, generator=generator).argsort(dim=1).argsort(dim=1)
    out = ranks < flat.sum(dim=1, keepdim=True)
    return out.view(mask.shape).to(mask.device)
