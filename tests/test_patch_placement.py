"""Patch placement: squares in the region of importance, the placement search, and its rows in ``roiroa patches``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roiroa.attacks.patch import (
    LocalizedPatch,
    UniversalPatch,
    candidate_corners,
    grid_corners,
    paste,
    roi_square,
    square_at,
    square_masks,
)
from roiroa.errors import InputError
from roiroa.evaluate.config import Config, quick
from roiroa.evaluate.patches import global_roi

SIDE, HW = 4, 16
SPOT = (12, 12)  # the only place where the toy model can be fooled: a grid corner of a 4 x 4 square on 16 x 16


class OneSpot(nn.Module):
    """Two classes; class 1 wins only where the mean of the 4 x 4 square at ``spot`` exceeds 0.5 (images of zeros
    are class 0): a patch fools it only if it covers most of that square."""

    def __init__(self, spot: tuple[int, int] = SPOT) -> None:
        super().__init__()
        self.spot = spot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, left = self.spot
        spot = x[:, :, t : t + SIDE, left : left + SIDE].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(spot), 20.0 * (spot - 0.5)], 1)


def _zeros(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, 1, HW, HW), torch.zeros(n, dtype=torch.long)


def _fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


def test_square_at_matches_slicing_and_paste_matches_a_loop() -> None:
    tops, lefts = torch.tensor([0, 3, 12]), torch.tensor([5, 0, 12])
    masks = square_at(tops, lefts, HW, HW, SIDE)
    patch = torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    x = torch.rand(3, 3, HW, HW, generator=torch.Generator().manual_seed(1))
    pasted = paste(x, patch, tops, lefts)
    for i, (t, left) in enumerate(zip(tops.tolist(), lefts.tolist(), strict=True)):
        expected = torch.zeros(HW, HW, dtype=torch.bool)
        expected[t : t + SIDE, left : left + SIDE] = True
        assert torch.equal(masks[i, 0], expected)
        reference = x[i].clone()
        reference[:, t : t + SIDE, left : left + SIDE] = patch
        assert torch.equal(pasted[i], reference)


def test_roi_square_lands_inside_the_roi() -> None:
    roi = torch.zeros(2, HW, HW, dtype=torch.bool)
    roi[0, 2:9, 7:13] = True  # a 7 x 6 block: many 4 x 4 squares fit
    roi[1, 9:14, 1:6] = True
    roi[1, 0:2, 0:16] = True  # a strip too thin for the square
    importance = torch.zeros(2, HW, HW)
    importance[0, 8, 12] = 1.0  # ties broken towards importance: the square in the block's bottom-right corner
    tops, lefts = roi_square(roi, SIDE, importance)
    masks = square_at(tops, lefts, HW, HW, SIDE)[:, 0]
    assert (masks & ~roi).sum() == 0 and (masks.flatten(1).sum(1) == SIDE * SIDE).all()
    assert (int(tops[0]), int(lefts[0])) == (5, 9)
    fixed = square_masks(3, HW, HW, SIDE, "roi", torch.Generator(), (int(tops[1]), int(lefts[1])))
    assert torch.equal(fixed[:, 0], masks[1].expand(3, -1, -1))
    with pytest.raises(InputError, match="roi_corner"):
        square_masks(1, HW, HW, SIDE, "roi", torch.Generator())


def test_global_roi_is_the_top_share_of_the_mean_importance() -> None:
    importance = torch.zeros(3, HW, HW)
    importance[:, 4:8, 4:8] = 1.0
    roi, mean = global_roi(importance, 16 / (HW * HW))
    assert torch.equal(roi, importance[0] > 0) and mean.shape == (HW, HW)


def test_candidates_are_the_grid_the_roi_corner_and_the_random_corner() -> None:
    assert grid_corners(HW, HW, SIDE, 3) == [(t, left) for t in (0, 6, 12) for left in (0, 6, 12)]
    tops, lefts = candidate_corners(5, HW, HW, SIDE, 2, torch.Generator().manual_seed(3), (7, 2))
    assert tops.shape == (6, 5) and (tops[4] == 7).all() and (lefts[4] == 2).all()
    random = square_masks(5, HW, HW, SIDE, "random", torch.Generator().manual_seed(3))
    assert torch.equal(square_at(tops[5], lefts[5], HW, HW, SIDE), random)  # the random placement is a candidate


def test_search_finds_the_one_spot_that_random_placement_misses() -> None:
    model, (x, y) = OneSpot(), _zeros()
    random = LocalizedPatch(area=SIDE**2 / HW**2, steps=5, step_size=0.5).run(model, x, y)
    searched = LocalizedPatch(area=SIDE**2 / HW**2, steps=5, step_size=0.5, location="search", search_steps=2)
    result = searched.run(model, x, y)
    assert int(_fooled(model, random.x_adv, y).sum()) < len(x) // 2
    assert _fooled(model, result.x_adv, y).all()
    assert torch.equal(result.patch_mask, square_masks(len(x), HW, HW, SIDE, "roi", torch.Generator(), SPOT))
    outside = ~result.patch_mask.expand_as(x)
    assert torch.equal(result.x_adv[outside], x[outside])


def test_search_is_never_worse_than_any_single_candidate() -> None:
    """Per image: if the full attack at some candidate corner fools the model, the search fools it too (here the
    toy model has a spot at a non-grid place, given as the RoI corner, and random images)."""
    spot = (5, 7)
    model, y = OneSpot(spot), torch.zeros(12, dtype=torch.long)
    x = torch.rand(12, 1, HW, HW, generator=torch.Generator().manual_seed(0)) * 0.6
    attack = dict(area=SIDE**2 / HW**2, steps=3, step_size=0.2, random_start=False)
    tops, lefts = candidate_corners(len(x), HW, HW, SIDE, 2, torch.Generator().manual_seed(0), spot)
    single = torch.zeros(len(x), dtype=torch.bool)
    for k in range(len(tops)):
        mask = square_at(tops[k], lefts[k], HW, HW, SIDE)
        single |= _fooled(model, LocalizedPatch(**attack).run(model, x, y, mask).x_adv, y)
    search = LocalizedPatch(**attack, location="search", search_grid=2, search_steps=3, roi_corner=spot)
    fooled = _fooled(model, search.run(model, x, y).x_adv, y)
    assert single.any() and bool((fooled | ~single).all())


def test_search_is_deterministic_from_its_seed() -> None:
    x = torch.rand(6, 1, HW, HW, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(6, dtype=torch.long)
    runs = []
    for seed in (4, 4, 5):
        torch.manual_seed(0)  # the random start draws from torch's generator (seeded per task by roiroa)
        attack = LocalizedPatch(area=0.1, steps=2, location="search", search_grid=2, search_steps=1, seed=seed)
        runs.append(attack.run(OneSpot(), x, y))
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].patch_mask, runs[1].patch_mask)
    random = [square_masks(6, HW, HW, SIDE, "random", torch.Generator().manual_seed(s)) for s in (4, 5)]
    assert not torch.equal(random[0], random[1])  # another seed: other random candidates


def test_universal_patch_search_pastes_where_it_fools() -> None:
    model, (x, y) = OneSpot(), _zeros()
    placed = {}
    for location in ("random", "search"):
        attack = UniversalPatch(area=SIDE**2 / HW**2, location=location, search_grid=3)
        attack.patch_ = torch.ones(1, SIDE, SIDE)
        placed[location] = attack.run(model, x, y)
    assert _fooled(model, placed["search"].x_adv, y).all()
    assert int(_fooled(model, placed["random"].x_adv, y).sum()) < len(x) // 2


def test_quick_keeps_the_search_small() -> None:
    specs = {s.get("label", s["name"]): s for s in quick(Config()).patches.attacks}
    assert specs["patch-lavan-search"]["search_grid"] == 2 and specs["patch-lavan-search"]["search_steps"] == 5
    assert specs["patch-universal-search"]["search_grid"] == 2 and "search_steps" not in specs["patch-universal-search"]
