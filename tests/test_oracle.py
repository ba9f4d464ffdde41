"""The oracle decomposition: equal-area controls, tie-breaking, and fill against restore."""

from __future__ import annotations

import torch
from torch import nn

from roiroa.cache import StageCache
from roiroa.evaluate.analysis import mask_flags
from roiroa.evaluate.maps_stage import attack_images
from roiroa.evaluate.oracle import ORACLE, control_masks, decomposition_rows, top_k_masks
from roiroa.evaluate.significance import mcnemar_exact
from roiroa.evaluate.tasks import Task, chunks
from roiroa.regions.segments import Segments


def test_top_k_masks_counts_allowed_and_order() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.arange(16.0).view(1, 4, 4).repeat(3, 1, 1)
    allowed = torch.ones(3, 4, 4, dtype=torch.bool)
    allowed[:, 3] = False  # the highest row is off limits
    k = torch.tensor([0, 3, 20])
    m = top_k_masks(scores, k, allowed, gen)
    assert m.flatten(1).sum(1).tolist() == [0, 3, 12]  # fewer where fewer are allowed
    assert m[1].flatten().nonzero().flatten().tolist() == [9, 10, 11]  # the top allowed positions
    assert not (m & ~allowed).any()


def test_top_k_masks_break_ties_at_random_not_by_position() -> None:
    """All-equal scores: the chosen positions are spread over the image, not the first k."""
    gen = torch.Generator().manual_seed(1)
    m = top_k_masks(torch.zeros(200, 8, 8), torch.full((200,), 4), None, gen)
    assert m.flatten(1).sum(1).eq(4).all()
    share = m.double().mean(0)  # every position about 4/64 of the time
    assert share.min() > 0.01 and share.max() < 0.15


def test_controls_have_the_oracles_area_and_region() -> None:
    gen = torch.Generator().manual_seed(2)
    roi = torch.rand(5, 10, 10, generator=gen) < 0.2
    roa = torch.rand(5, 10, 10, generator=gen) < 0.3
    vulnerability, delta = torch.rand(5, 10, 10, generator=gen), torch.rand(5, 10, 10, generator=gen)
    masks = control_masks(Segments(roi, roa), vulnerability, delta, gen)
    k = (roa & ~roi).flatten(1).sum(1)
    assert set(masks) == {ORACLE, "random", "random outside RoI", "top-|delta|", "top-|delta| outside RoI"} | {
        "RoA ignoring RoI",
        "random inside RoA",
    }
    for m in masks.values():
        assert torch.equal(m.flatten(1).sum(1), k)  # equal area, image by image
    assert not (masks["random outside RoI"] & roi).any() and not (masks["top-|delta| outside RoI"] & roi).any()
    assert not (masks["random inside RoA"] & ~roa).any()


class Threshold(nn.Module):
    """Class 1 if the top-left pixel is above 0.5, else class 0 (logits (N, 2))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0]
        return torch.stack([0.5 - v, v - 0.5], 1)


def test_fill_against_restore_on_a_hand_model() -> None:
    """The attack flips the top-left pixel from 1 to 0; a mask on it with a zero fill leaves class 0 (wrong), the
    clean pixel restored gives class 1 (right); a mask elsewhere changes nothing (wrong). Three images in chunks of
    two: the flags are read chunk by chunk and put back in order."""
    x = torch.zeros(3, 1, 2, 2)
    x[:, 0, 0, 0] = 1.0
    x_adv = x.clone()
    x_adv[:, 0, 0, 0] = 0.0
    x_adv[2] = x[2]  # the attack left image 2 alone
    y = torch.tensor([1, 1, 1])
    parts = tuple(chunks(x, y, 2))
    stored = [{"x_adv": x_adv[p.where], "gradient": torch.zeros(len(p.y), 2, 2), "calls": torch.ones(1)} for p in parts]
    tasks = tuple(Task(f"hand-{i}", lambda r=r: r) for i, r in enumerate(stored))
    attacked = attack_images(Threshold(), "hand", parts, tasks, StageCache(None))
    assert attacked.prediction.tolist() == [0, 0, 1] and attacked.linf.tolist() == [1.0, 1.0, 0.0]
    assert attacked.perturbation[:, 0, 0].tolist() == [1.0, 1.0, 0.0] and attacked.gradient_calls == 2
    assert torch.equal(attacked.x_adv, x_adv) and torch.equal(attacked.at(torch.tensor([2, 0])), x_adv[[2, 0]])
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = mask[2, 0, 0] = True  # images 0 and 2: on the attacked pixel; image 1: nowhere
    zero_fill = lambda images, m: torch.zeros_like(images)  # noqa: E731
    flags = mask_flags(Threshold(), attacked, {"m": mask}, zero_fill, restore=True)
    assert flags.clean.tolist() == [True, True, True]
    assert flags.masked["m"]["clean"].tolist() == [False, True, False]  # the zero fill erases image 0's and 2's pixel
    assert flags.masked["m"]["attacked"].tolist() == [False, False, False]
    assert flags.masked["m"]["restored"].tolist() == [True, False, True]
    assert "restored" not in mask_flags(Threshold(), attacked, {"m": mask}, zero_fill).masked["m"]


def test_decomposition_rows_compare_with_the_oracle() -> None:
    oracle = torch.tensor([True] * 6 + [False] * 4)
    other = torch.tensor([False, False, False, True, True, True, True, False, False, False])
    masks = {ORACLE: torch.ones(10, 2, 2, dtype=torch.bool), "random": torch.zeros(10, 2, 2, dtype=torch.bool)}
    flags = {(ORACLE, "fill"): oracle, ("random", "fill"): other}
    rows = {r.mask: r for r in decomposition_rows("pgd", (0.2, 0.2), masks, flags)}
    assert rows[ORACLE].accuracy == 0.6 and rows[ORACLE].p_vs_oracle is None
    r = rows["random"]
    assert (r.correct, r.n_images, r.area) == (4, 10, 0.0)
    assert r.diff_vs_oracle == (1 - 3) / 10 and r.p_vs_oracle == mcnemar_exact(1, 3)
    assert r.ci_low < 0.4 < r.ci_high
