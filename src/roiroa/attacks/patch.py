"""Localized attacks: adversarial patches and PGD inside a square.

- ``patch-lavan`` (:class:`LocalizedPatch`, Karmon et al. 2018, LaVAN): per image, a square of a given share of
  the image area (location given by ``mask``, drawn at random, centred, at a given corner in the region of
  importance, or searched) whose pixels are free in [0, 1].
- ``pgd-square`` (:class:`SquarePGD`): L-infinity PGD restricted to such a square (the bridge to the localized
  RoA maps); with eps = 1 it is the LaVAN patch.
- ``patch-universal`` (:class:`UniversalPatch`, Brown et al. 2017): one patch optimised over many images with a
  random placement per image and step, untargeted or towards one target class.

Placement (``location``): 'random' (a seeded corner per image), 'center', 'roi' (the square at ``roi_corner``, e.g.
the square of the global region of importance that :func:`roi_square` finds: a defence that never blocks its RoI
lets such a patch through) or 'search': a short attack (``search_steps``) at each of K candidate corners per image
(a ``search_grid`` x ``search_grid`` grid, the ``roi_corner`` if given and the seeded random corner), the corner
that fools the attacked model (else with the highest loss) kept per image, then the full attack there on the
images the screening did not fool; the result is never worse on the attacked model than its screening there.

``attack(model, x, y)`` returns x_adv like every attack; ``attack.run(...)`` returns a :class:`PatchResult` that also
holds where the patch is, (N, 1, H, W) bool (for detection IoU).
Attacks accept ``penalty_weight``: with w > 0 the model must have a method ``penalty(x) -> (N,)`` (for example a
defence's differentiable anomaly score) and the attack maximises CE - w * penalty (the adaptive attack that keeps
its patch looking clean to a detector).
"""

from __future__ import annotations

import dataclasses
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

Location = Literal["random", "center", "roi", "search"]
LOCATIONS = ("random", "center", "roi", "search")
Corner = tuple[int, int]
FOOLED = 1e9  # the placement score's bonus for a fooled image: above any loss


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


def square_at(tops: torch.Tensor, lefts: torch.Tensor, height: int, width: int, side: int) -> torch.Tensor:
    """(N, 1, H, W) bool squares of ``side`` with top-left corners tops, lefts: (N,) int64 (batched, no loop)."""
    rows, cols = torch.arange(height, device=tops.device), torch.arange(width, device=tops.device)
    in_rows = (rows[None] >= tops[:, None]) & (rows[None] < tops[:, None] + side)
    in_cols = (cols[None] >= lefts[:, None]) & (cols[None] < lefts[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def square_corners(
    n: int,
    height: int,
    width: int,
    side: int,
    location: Location,
    generator: torch.Generator,
    roi_corner: Corner | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (tops, lefts), each (n,) int64, for squares of ``side``: a uniformly random corner per
    image ('random', drawn from ``generator``), centred ('center'), or ``roi_corner`` ('roi', moved inside the
    image). 'search' has many corners per image: see :func:`candidate_corners`."""
    check_choice("square_corners", "location", location, ("random", "center", "roi"))
    if location == "random":
        tops = torch.randint(0, height - side + 1, (n,), generator=generator)
        return tops, torch.randint(0, width - side + 1, (n,), generator=generator)
    if location == "roi":
        if roi_corner is None:
            raise InputError("location 'roi' needs roi_corner=(top, left); see roiroa.attacks.patch.roi_square.")
        top, left = min(int(roi_corner[0]), height - side), min(int(roi_corner[1]), width - side)
    else:
        top, left = (height - side) // 2, (width - side) // 2
    return torch.full((n,), max(top, 0)), torch.full((n,), max(left, 0))


def square_masks(
    n: int,
    height: int,
    width: int,
    side: int,
    location: Location,
    generator: torch.Generator,
    roi_corner: Corner | None = None,
) -> torch.Tensor:
    """(n, 1, H, W) bool squares of ``side`` at the corners of :func:`square_corners`."""
    tops, lefts = square_corners(n, height, width, side, location, generator, roi_corner)
    return square_at(tops, lefts, height, width, side)


def grid_corners(height: int, width: int, side: int, count: int) -> list[Corner]:
    """``count`` x ``count`` corners evenly spread over the places a square of ``side`` fits (fewer where the image
    has fewer places), row-major."""
    check_number("grid_corners", "count", count, low=1, integer=True)
    tops = torch.linspace(0, height - side, count).round().long().unique().tolist()
    lefts = torch.linspace(0, width - side, count).round().long().unique().tolist()
    return [(t, left) for t in tops for left in lefts]


def candidate_corners(
    n: int, height: int, width: int, side: int, grid: int, generator: torch.Generator, roi_corner: Corner | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The placement search's candidates, (K, n) tops and lefts: the grid of :func:`grid_corners`, the
    ``roi_corner`` if given, and last the seeded random corner per image (the one location 'random' draws)."""
    fixed = grid_corners(height, width, side, grid)
    if roi_corner is not None:
        fixed.append((min(int(roi_corner[0]), height - side), min(int(roi_corner[1]), width - side)))
    random_tops, random_lefts = square_corners(n, height, width, side, "random", generator)
    tops = torch.tensor([t for t, _ in fixed], dtype=torch.long)[:, None].expand(-1, n)
    lefts = torch.tensor([left for _, left in fixed], dtype=torch.long)[:, None].expand(-1, n)
    return torch.cat([tops, random_tops[None]]), torch.cat([lefts, random_lefts[None]])


def roi_square(
    roi: torch.Tensor, side: int, importance: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per map, the corner of the square of ``side`` holding the most RoI positions (ties: the most importance,
    then the first in row-major order): a square inside the RoI wherever one fits.

    Args:
        roi: (N, H, W) bool, the region of importance. importance: optional (N, H, W) real, for ties.

    Returns:
        tops, lefts: (N,) int64.
    """
    if roi.dim() != 3 or (importance is not None and importance.shape != roi.shape):
        raise InputError(f"roi_square needs roi (N, H, W) and importance of the same shape; got {tuple(roi.shape)}.")
    _, h, w = roi.shape
    counts = F.avg_pool2d(roi.double()[:, None], side, stride=1)[:, 0].mul(side * side).round()
    key = counts.flatten(1)
    if importance is not None:
        mass = F.avg_pool2d(importance.double()[:, None], side, stride=1)[:, 0].flatten(1)
        best = key == key.max(1, keepdim=True).values
        key = torch.where(best, mass, torch.full_like(mass, -math.inf))
    index = key.argmax(1)
    return index // (w - side + 1), index % (w - side + 1)


def _objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int | None, weight: float) -> torch.Tensor:
    """(N,) the objective to maximise per image: CE(y) (or -CE(target)), minus weight * model.penalty(x) where
    weight > 0."""
    logits = model(x)
    if target is None:
        loss = F.cross_entropy(logits, y, reduction="none")
    else:
        loss = -F.cross_entropy(logits, torch.full_like(y, target), reduction="none")
    if weight > 0:
        if not hasattr(model, "penalty"):
            raise InputError("penalty_weight > 0 needs a model with a penalty(x) method (e.g. a FragmentDefence).")
        penalty: Callable[[torch.Tensor], torch.Tensor] = model.penalty  # type: ignore[assignment]
        loss = loss - weight * penalty(x)
    return loss


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int | None, weight: float) -> torch.Tensor:
    """The summed objective of :func:`_objective`."""
    return _objective(model, x, y, target, weight).sum()


@torch.no_grad()
def placement_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float, batch_size: int, target: int | None = None
) -> torch.Tensor:
    """(N,) float64 rank of each attacked image for the placement search: FOOLED (1e9) where the model is fooled
    (does not predict y; predicts ``target`` when given), plus the objective of the attack (higher is better).

    Args:
        x: (N, C, H, W) in [0, 1] attacked images; y: (N,) true labels.
    """
    device, out = model_device(model), []
    for s in batch_slices(len(x), batch_size):
        xb, yb = x[s].to(device), y[s].to(device)
        pred = model(xb).argmax(1)
        fooled = pred != yb if target is None else pred == target
        out.append((fooled.double() * FOOLED + _objective(model, xb, yb, target, weight).double()).cpu())
    return torch.cat(out)


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int | None, weight: float) -> torch.Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_loss(model, x, y, target, weight), x)
    return grad


def _check_penalty(owner: str, weight: float) -> None:
    check_number(owner, "penalty_weight", weight, low=0.0)


def _check_placement(owner: str, roi_corner: Any, search_grid: int, search_steps: int) -> Corner | None:
    """Check the placement fields; the corner as a (top, left) tuple of ints (TOML gives a list)."""
    check_number(owner, "search_grid", search_grid, low=1, integer=True)
    check_number(owner, "search_steps", search_steps, low=1, integer=True)
    if roi_corner is None:  # 'roi' without it fails at run time (roiroa patches sets it from the global RoI)
        return None
    if not isinstance(roi_corner, (list, tuple)) or len(roi_corner) != 2:
        raise InputError(f"{owner}: roi_corner must be [top, left]; got {roi_corner!r}.")
    for v in roi_corner:
        check_number(owner, "roi_corner", v, low=0, integer=True)
    return (int(roi_corner[0]), int(roi_corner[1]))


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
    roi_corner: Corner | None = None
    search_grid: int = 3
    search_steps: int = 5
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_number(owner, "area", self.area, low=0.0, low_open=True, high=1.0)
        check_choice(owner, "location", self.location, LOCATIONS)
        check_number(owner, "seed", self.seed, low=0, integer=True)
        _check_penalty(owner, self.penalty_weight)
        self.roi_corner = _check_placement(owner, self.roi_corner, self.search_grid, self.search_steps)

    def step_size_value(self) -> float:
        """``step_size`` if given, else 2.5 * eps / steps."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> PatchResult:
        """Attack x: (N, C, H, W) in [0, 1] inside ``mask`` ((N or 1, 1, H, W)), or inside squares of ``area``
        placed by ``location`` (seeded by ``seed``) when mask is None."""
        check_images(x)
        if mask is None and self.location == "search":
            return self._search(model, x, y)
        if mask is None:
            side = patch_side(x.shape[2], x.shape[3], self.area)
            gen = torch.Generator().manual_seed(self.seed)
            loc: Location = self.location
            mask = square_masks(len(x), x.shape[2], x.shape[3], side, loc, gen, self.roi_corner).to(x.device)
        check_mask(mask, x)
        x_adv = GradientAttack.__call__(self, model, x, y, mask.float())
        return PatchResult(x_adv, mask.bool().expand(len(x), -1, -1, -1).clone())

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> PatchResult:
        """The placement search: a ``search_steps`` attack at every candidate corner of every image (one batched
        run over K x N images), the best corner per image, then the full attack there; per image the better of
        the full attack and its screening (rank of :func:`placement_scores`)."""
        n, _, h, w = x.shape
        side = patch_side(h, w, self.area)
        gen = torch.Generator().manual_seed(self.seed)
        tops, lefts = candidate_corners(n, h, w, side, self.search_grid, gen, self.roi_corner)
        k = len(tops)
        masks = square_at(tops.flatten(), lefts.flatten(), h, w, side).to(x.device)
        screen = dataclasses.replace(self, location="random", steps=self.search_steps, step_size=None, restarts=1)
        xs, ys = x.repeat(k, 1, 1, 1), y.repeat(k)
        screened = GradientAttack.__call__(screen, model, xs, ys, masks.float())
        scores = placement_scores(model, screened, ys, self.penalty_weight, self.batch_size).view(k, n)
        best = scores.argmax(0).to(x.device)
        rows = best * n + torch.arange(n, device=x.device)
        mask, x_adv = masks[rows], screened[rows]
        top = scores.max(0).values
        todo = (top < FOOLED).nonzero()[:, 0].to(x.device)  # the images the screening did not already fool
        if (self.steps > self.search_steps or self.restarts > 1) and len(todo):
            full = GradientAttack.__call__(self, model, x[todo], y[todo], mask[todo].float())
            better = placement_scores(model, full, y[todo], self.penalty_weight, self.batch_size) >= top[todo.cpu()]
            x_adv[todo] = torch.where(better.to(x.device).view(-1, 1, 1, 1), full, x_adv[todo])
        return PatchResult(x_adv, mask.clone())

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
        location: 'random' (a uniform corner per image, seeded), 'center', 'roi' (at ``roi_corner``) or 'search'
            (see the module docstring); a ``mask`` passed to the call wins.
        roi_corner: [top, left] of the square in the region of importance ('roi'; a candidate of 'search').
        search_grid: the search's candidate grid is search_grid x search_grid corners. Default 3.
        search_steps: steps of the screening attack at each candidate (its step 2.5 * eps / search_steps).
            Default 5.
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
        area, location, roi_corner, search_grid, search_steps, steps, step_size, random_start, restarts,
            penalty_weight, seed, batch_size: as in :class:`LocalizedPatch` (default steps 40).
    """

    name: ClassVar[str] = "pgd-square"
    eps: float = 0.3
    steps: int = 40


def paste(x: torch.Tensor, patch: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor) -> torch.Tensor:
    """x with ``patch`` (C, s, s) pasted at (tops[i], lefts[i]) of image i; differentiable in patch.

    Args:
        x: (N, C, H, W) in [0, 1]. tops, lefts: (N,) int64 corners with the patch inside the image.
    """
    n, c, h, w = x.shape
    s = patch.shape[-1]
    # One gather per image from a padded canvas holding the patch at (0, 0): differentiable, no in-place writes.
    rows = torch.arange(h, device=x.device)[None] - tops.to(x.device)[:, None]  # (N, H) row inside the patch
    cols = torch.arange(w, device=x.device)[None] - lefts.to(x.device)[:, None]  # (N, W)
    inside_r, inside_c = (rows >= 0) & (rows < s), (cols >= 0) & (cols < s)
    mask = (inside_r[:, :, None] & inside_c[:, None, :])[:, None].to(x.dtype)  # (N, 1, H, W)
    r, col = rows.clamp(0, s - 1), cols.clamp(0, s - 1)
    placed = patch[:, r[:, :, None], col[:, None, :]].permute(1, 0, 2, 3)  # (N, C, H, W)
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
        location: placement at ``run``: 'random', 'center', 'roi' (at ``roi_corner``) or 'search': the fitted
            patch pasted at every candidate corner (a ``search_grid`` x ``search_grid`` grid, ``roi_corner`` if
            given, the seeded random corner) and kept per image where it fools the model (else the highest loss).
        roi_corner, search_grid: as in :class:`LocalizedPatch`.
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
    roi_corner: Corner | None = None
    search_grid: int = 3
    penalty_weight: float = 0.0
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self.roi_corner = _check_placement("UniversalPatch", self.roi_corner, self.search_grid, 1)
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
        n, _, h, w = x.shape
        side = self.patch_.shape[-1]
        if mask is None:
            tops, lefts = self._placement(model, x, y)
            full = torch.ones(1, 1, h, w, dtype=torch.bool)
        else:
            check_mask(mask, x)
            full = mask.expand(n, -1, -1, -1).cpu().bool()
            tops, lefts = _corners(full, side)
        with torch.no_grad():
            x_adv = paste(x.cpu(), self.patch_.to(x.dtype), tops, lefts).clamp(0.0, 1.0)
        patch_mask = square_at(tops, lefts, h, w, side) & full  # never outside the mask (an empty mask: no patch)
        x_adv = torch.where(patch_mask, x_adv, x.cpu())
        return PatchResult(x_adv.to(x.device), patch_mask.to(x.device), self.patch_.clone())

    def _placement(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corners (N,) of the fitted patch at ``location``; for 'search' the best candidate per image."""
        n, _, h, w = x.shape
        side = self.patch_.shape[-1]
        gen = torch.Generator().manual_seed(self.seed + 1)
        if self.location != "search":
            return square_corners(n, h, w, side, self.location, gen, self.roi_corner)
        tops, lefts = candidate_corners(n, h, w, side, self.search_grid, gen, self.roi_corner)
        k = len(tops)
        with torch.no_grad():
            pasted = paste(x.cpu().repeat(k, 1, 1, 1), self.patch_.to(x.dtype), tops.flatten(), lefts.flatten())
        scores = placement_scores(
            model, pasted.clamp(0.0, 1.0), y.cpu().repeat(k), self.penalty_weight, self.batch_size, self.target
        ).view(k, n)
        best = scores.argmax(0)
        return tops[best, torch.arange(n)], lefts[best, torch.arange(n)]
