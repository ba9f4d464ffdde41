"""Localized attacks: adversarial patches and PGD inside a square.

- ``patch-lavan`` (:class:`LocalizedPatch`, Karmon et al. 2018, LaVAN): per image, a square of a given share of
  the image area (location given by ``mask``, drawn at random, or centred) whose pixels are free in [0, 1].
- ``pgd-square`` (:class:`SquarePGD`): L-infinity PGD restricted to such a square (the bridge to the localized
  RoA maps); with eps = 1 it is the LaVAN patch.
- ``patch-universal`` (:class:`UniversalPatch`, Brown et al. 2017): one patch optimised over many images with a
  random placement per image and step, untargeted or towards one target class.

``attack(model, x, y)`` returns x_adv like every attack; ``attack.run(...)`` returns a :class:`PatchResult` that also
holds where the patch is, (N, 1, H, W) bool (for detection IoU).
Attacks accept ``penalty_weight``: with w > 0 the model must have a method ``penalty(x) -> (N,)`` (for example a
defence's differentiable anomaly score) and the attack maximises CE - w * penalty (the adaptive attack that keeps
its patch looking clean to a detector).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from roiroa.attacks.base import GradientAttack, Norm, project, random_start, register_attack
from roiroa.errors import InputError
from roiroa.utils import batch_slices, model_device, progress
from roiroa.validation import check_choice, check_images, check_labels, check_mask, check_number

Location = Literal["random", "center"]
LOCATIONS = ("random", "center")


@dataclass(frozen=True)
class PatchResult:
    """What a localized attack produced.

    Attributes:
        x_adv: (N, C, H, W) in [0, 1].
        patch_mask: (N, 1, H, W) bool, where the attack was allowed to act (the true patch, for detection IoU).
        patch: (C, s, s) in [0, 1], the universal patch; None for per-image attacks.
    """

    x_adv: torch.Tensor
    patch_mask: torch.Tensor
    patch: torch.Tensor | None = None


class PatchCalls:
    """``attack(model, x, y, mask)`` is ``attack.run(model, x, y, mask).x_adv`` for the patch attacks."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_adv: (N, C, H, W) in [0, 1]; see ``run``."""
        return self.run(model, x, y, mask).x_adv

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> PatchResult:
        raise NotImplementedError


def patch_side(height: int, width: int, area: float) -> int:
    """Side s of a square covering about ``area`` (a fraction in (0, 1]) of an H x W image: round(sqrt(area H W))."""
    check_number("patch_side", "area", area, low=0.0, low_open=True, high=1.0)
    return max(1, min(height, width, round(math.sqrt(area * height * width))))


def square_masks(
    n: int, height: int, width: int, side: int, location: Location, generator: torch.Generator
) -> torch.Tensor:
    """(n, 1, H, W) bool squares of ``side``: at a uniformly random corner per image, or centred."""
    check_choice("square_masks", "location", location, LOCATIONS)
    if location == "center":
        tops = torch.full((n,), (height - side) // 2)
        lefts = torch.full((n,), (width - side) // 2)
    else:
        tops = torch.randint(0, height - side + 1, (n,), generator=generator)
        lefts = torch.randint(0, width - side + 1, (n,), generator=generator)
    masks = torch.zeros(n, 1, height, width, dtype=torch.bool)
    for i, (t, left) in enumerate(zip(tops.tolist(), lefts.tolist(), strict=False)):
        masks[i, 0, t : t + side, left : left + side] = True
    return masks


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int | None, weight: float) -> torch.Tensor:
    """The summed objective to maximise: CE(y) (or -CE(target)), minus weight * model.penalty(x) where weight > 0."""
    logits = model(x)
    if target is None:
        loss = F.cross_entropy(logits, y, reduction="sum")
    else:
        loss = -F.cross_entropy(logits, torch.full_like(y, target), reduction="sum")
    if weight > 0:
        if not hasattr(model, "penalty"):
            raise InputError("penalty_weight > 0 needs a model with a penalty(x) method (e.g. a FragmentDefence).")
        penalty: Callable[[torch.Tensor], torch.Tensor] = model.penalty  # type: ignore[assignment]
        loss = loss - weight * penalty(x).sum()
    return loss


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int | None, weight: float) -> torch.Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_loss(model, x, y, target, weight), x)
    return grad


def _check_penalty(owner: str, weight: float) -> None:
    check_number(owner, "penalty_weight", weight, low=0.0)


@dataclass(kw_only=True)
class _SquareAttack(PatchCalls, GradientAttack):
    """L-infinity PGD inside one square per image; the fields common to LaVAN and masked PGD."""

    norm: ClassVar[Norm] = "linf"
    eps: float
    area: float = 0.05
    location: Location = "random"
    steps: int = 100
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    penalty_weight: float = 0.0
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_number(owner, "area", self.area, low=0.0, low_open=True, high=1.0)
        check_choice(owner, "location", self.location, LOCATIONS)
        check_number(owner, "seed", self.seed, low=0, integer=True)
        _check_penalty(owner, self.penalty_weight)

    def step_size_value(self) -> float:
        """``step_size`` if given, else 2.5 * eps / steps."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> PatchResult:
        """Attack x: (N, C, H, W) in [0, 1] inside ``mask`` ((N or 1, 1, H, W)), or inside squares of ``area``
        drawn at ``location`` (seeded by ``seed``) when mask is None."""
        check_images(x)
        if mask is None:
            side = patch_side(x.shape[2], x.shape[3], self.area)
            gen = torch.Generator().manual_seed(self.seed)
            mask = square_masks(len(x), x.shape[2], x.shape[3], side, self.location, gen).to(x.device)
        check_mask(mask, x)
        x_adv = GradientAttack.__call__(self, model, x, y, mask.float())
        return PatchResult(x_adv, mask.bool().expand(len(x), -1, -1, -1).clone())

    def _one_start(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # The base loop with the objective of _loss (adds the optional penalty); mask is always set here.
        assert mask is not None
        x_adv = x.clone()
        if self.random_start:
            x_adv = (x + mask * random_start(x, self.eps, "linf")).clamp(0.0, 1.0)
        step = self.step_size_value()
        for _ in range(self.steps):
            grad = mask * _gradient(model, x_adv, y, None, self.penalty_weight)
            x_adv = (x_adv + step * grad.sign()).clamp(0.0, 1.0)
            x_adv = x + project(x_adv - x, self.eps, "linf")
        return x_adv.detach()


@register_attack("patch-lavan")
@dataclass(kw_only=True)
class LocalizedPatch(_SquareAttack):
    """LaVAN-style localized patch (Karmon et al. 2018): per image, pixels of a square free in [0, 1].

    Args:
        area: the square's share of the image area, in (0, 1]. Default 0.05.
        location: 'random' (a uniform corner per image, seeded) or 'center'; a ``mask`` passed to the call wins.
        steps: sign-gradient steps. Default 100.
        step_size: absolute step; None means 2.5 / steps.
        eps: L-infinity bound inside the square; 1.0 (the default) leaves the pixels unconstrained.
        random_start, restarts, batch_size: as in LinfPGD. penalty_weight: see the module docstring.
        seed: seeds the random locations.

    Example:
        >>> result = LocalizedPatch(area=0.05).run(model, x, y)  # result.patch_mask: (N, 1, H, W)
    """

    name: ClassVar[str] = "patch-lavan"
    eps: float = 1.0


@register_attack("pgd-square")
@dataclass(kw_only=True)
class SquarePGD(_SquareAttack):
    """L-infinity PGD restricted to a square of ``area`` (the existing PGD with a square mask).

    Args:
        eps: L-infinity budget inside the square. Default 0.3.
        area, location, steps, step_size, random_start, restarts, penalty_weight, seed, batch_size:
            as in :class:`LocalizedPatch` (default steps 40).
    """

    name: ClassVar[str] = "pgd-square"
    eps: float = 0.3
    steps: int = 40


def paste(x: torch.Tensor, patch: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor) -> torch.Tensor:
    """x with ``patch`` (C, s, s) pasted at (tops[i], lefts[i]) of image i; differentiable in patch.

    Args:
        x: (N, C, H, W) in [0, 1]. tops, lefts: (N,) int64 corners with the patch inside the image.
    """
    n, _, h, w = x.shape
    s = patch.shape[-1]
    # Place by padding (differentiable, no in-place writes): one padded copy per image.
    placed = torch.stack(
        [
            F.pad(patch, (left, w - left - s, top, h - top - s))
            for top, left in zip(tops.tolist(), lefts.tolist(), strict=True)
        ]
    )
    mask = torch.zeros(n, 1, h, w, dtype=x.dtype, device=x.device)
    for i, (top, left) in enumerate(zip(tops.tolist(), lefts.tolist(), strict=False)):
        mask[i, 0, top : top + s, left : left + s] = 1.0
    return x * (1 - mask) + placed * mask


def _corners(mask: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (N,) of each mask's bounding box, moved inside the image for a square of ``side`` (0 where
    a mask is empty)."""
    n, _, h, w = mask.shape
    tops, lefts = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    for i in range(n):
        rows, cols = mask[i, 0].nonzero(as_tuple=True)
        if len(rows) == 0:
            continue  # an empty mask: the image stays unchanged (run() cuts the patch to the mask)
        tops[i] = min(int(rows.min()), h - side)
        lefts[i] = min(int(cols.min()), w - side)
    return tops, lefts


@register_attack("patch-universal")
@dataclass(kw_only=True)
class UniversalPatch(PatchCalls, GradientAttack):
    """Universal adversarial patch (Brown et al. 2017): one square patch for every image, random placement.

    ``fit(model, x, y)`` optimises the patch on training images with a fresh random location for every
    image at every step (Brown et al. also vary rotation and scale; here placement only); ``run`` pastes the
    fitted patch on new images (at ``mask``'s bounding-box corner, or at random). ``run`` without ``fit``
    first fits on the attacked images themselves (transductive: stronger than a true universal patch).

    Args:
        area: the patch's share of the image area, in (0, 1]. Default 0.05.
        steps: passes over the fitting images. Default 20.
        step_size: sign-gradient step on the patch per batch. Default 0.02.
        target: a target class to push every image to; None (the default) is untargeted.
        location: placement at ``run``: 'random' or 'center'.
        penalty_weight: see the module docstring. seed: seeds placements and the patch's start.
        batch_size: images per step. Default 64.

    Attributes (after ``fit``): patch_: (C, s, s) in [0, 1].
    """

    name: ClassVar[str] = "patch-universal"
    norm: ClassVar[Norm] = "linf"
    eps: ClassVar[float] = 1.0  # type: ignore[misc]
    random_start: ClassVar[bool] = True  # type: ignore[misc]
    restarts: ClassVar[int] = 1  # type: ignore[misc]
    area: float = 0.05
    steps: int = 20
    step_size: float = 0.02
    target: int | None = None
    location: Location = "random"
    penalty_weight: float = 0.0
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("UniversalPatch", "area", self.area, low=0.0, low_open=True, high=1.0)
        check_choice("UniversalPatch", "location", self.location, LOCATIONS)
        check_number("UniversalPatch", "seed", self.seed, low=0, integer=True)
        if self.target is not None:
            check_number("UniversalPatch", "target", self.target, low=0, integer=True)
        _check_penalty("UniversalPatch", self.penalty_weight)

    def step_size_value(self) -> float:
        return self.step_size

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "norm": self.norm, "eps": self.eps, **asdict(self)}

    def fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> UniversalPatch:
        """Optimise ``patch_`` on x: (N, C, H, W) in [0, 1], labels y: (N,); returns self."""
        check_images(x)
        check_labels(y, len(x))
        device = model_device(model)
        _, c, h, w = x.shape
        side = patch_side(h, w, self.area)
        gen = torch.Generator().manual_seed(self.seed)
        patch = torch.rand(c, side, side, generator=gen).to(device, x.dtype)
        for _ in progress(range(self.steps), self.name):
            order = torch.randperm(len(x), generator=gen)
            for s in batch_slices(len(x), self.batch_size):
                idx = order[s]
                xb, yb = x[idx].to(device), y[idx].to(device)
                tops = torch.randint(0, h - side + 1, (len(idx),), generator=gen)
                lefts = torch.randint(0, w - side + 1, (len(idx),), generator=gen)
                with torch.enable_grad():
                    p = patch.detach().requires_grad_(True)
                    loss = _loss(model, paste(xb, p, tops, lefts), yb, self.target, self.penalty_weight)
                    (grad,) = torch.autograd.grad(loss, p)
                patch = (patch + self.step_size * grad.sign()).clamp(0.0, 1.0)
        self.patch_ = patch.detach().cpu()
        return self

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> PatchResult:
        """Paste the fitted patch on x: (N, C, H, W); at the corner of each ``mask``'s bounding box, else at
        ``location`` (seeded)."""
        check_images(x)
        check_labels(y, len(x))
        if not hasattr(self, "patch_"):
            self.fit(model, x, y)
        _, _, h, w = x.shape
        side = self.patch_.shape[-1]
        if mask is None:
            gen = torch.Generator().manual_seed(self.seed + 1)
            mask = square_masks(len(x), h, w, side, self.location, gen)
        check_mask(mask, x)
        tops, lefts = _corners(mask.expand(len(x), -1, -1, -1).cpu(), side)
        with torch.no_grad():
            x_adv = paste(x.cpu(), self.patch_.to(x.dtype), tops, lefts).clamp(0.0, 1.0)
        patch_mask = torch.zeros(len(x), 1, h, w, dtype=torch.bool)
        for i, (t, left) in enumerate(zip(tops.tolist(), lefts.tolist(), strict=False)):
            patch_mask[i, 0, t : t + side, left : left + side] = True
        patch_mask &= mask.expand(len(x), -1, -1, -1).cpu().bool()  # never outside the mask (an empty mask: no patch)
        x_adv = torch.where(patch_mask, x_adv, x.cpu())
        return PatchResult(x_adv.to(x.device), patch_mask.to(x.device), self.patch_.clone())
