"""PatchCleanser double masking: the mask set covers every patch position; certification on a hand model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from roiroa.defence.patchcleanser import PatchCleanser, axis_masks, double_masking, mask_set
from roiroa.errors import InputError


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(4, 40),
    width=st.integers(4, 40),
    patch=st.integers(1, 12),
    k=st.integers(1, 8),
)
def test_mask_set_covers_every_patch_position(height: int, width: int, patch: int, k: int) -> None:
    patch = min(patch, height, width)
    masks = mask_set(height, width, patch, k)
    assert len(masks) <= k * k
    windows = torch.zeros(height - patch + 1, width - patch + 1, height, width, dtype=torch.bool)
    for t in range(height - patch + 1):
        for left in range(width - patch + 1):
            windows[t, left, t : t + patch, left : left + patch] = True
    inside = (windows[:, :, None] & ~masks[None, None]).flatten(3).any(3)  # patch pixels outside each mask
    assert (~inside).any(2).all()  # every position lies wholly inside some mask


def test_mask_side_follows_the_paper() -> None:
    """28-pixel side, 8-pixel patch, 6 masks: stride ceil(21 / 6) = 4, mask side 8 + 4 - 1 = 11."""
    side, starts = axis_masks(28, 8, 6)
    assert side == 11 and starts == [0, 4, 8, 12, 16, 17]
    with pytest.raises(InputError, match="patch side"):
        axis_masks(10, 11, 6)


class AnyBright(nn.Module):
    """Class 1 if any pixel is above 0.5, else class 0 (logits (N, 2))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1).amax(1)
        return torch.stack([0.5 - v, v - 0.5], 1)


def test_certification_on_a_hand_model() -> None:
    """Five bright points spread over the image: no two 8x8 masks hide them all, so class 1 is certified. One
    bright point: a mask hides it (not certified) and double masking trusts that mask (class 0). All dark: every
    masked image is class 0, certified."""
    x = torch.zeros(3, 1, 28, 28)
    for r, c in [(0, 0), (0, 27), (27, 0), (27, 27), (14, 14)]:
        x[0, 0, r, c] = 1.0
    x[1, 0, 10, 10] = 1.0
    y = torch.tensor([1, 1, 0])
    pc = PatchCleanser(AnyBright(), (28, 28), patch=4, k=6, fill=0.0)
    assert pc.mask_side == (8, 8)
    assert pc.certify(x, y).tolist() == [True, False, True]
    assert pc.predict(x).tolist() == [1, 0, 0]
    correct, certified = pc.evaluate(x, y)
    assert correct.tolist() == [True, False, True] and certified.tolist() == [True, False, True]


def test_pair_predictions_are_the_same_at_any_batch_size() -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 12, 12, generator=gen) > 0.97).float()
    a = PatchCleanser(AnyBright(), (12, 12), patch=3, k=3, fill=0.0, batch_size=7).pair_predictions(x)
    b = PatchCleanser(AnyBright(), (12, 12), patch=3, k=3, fill=0.0, batch_size=1000).pair_predictions(x)
    assert torch.equal(a, b) and torch.equal(a, a.transpose(1, 2))


def test_double_masking_rule() -> None:
    """Masks 0..2; one-mask labels (1, 1, 2). Mask 2 disagrees: if every pair with it says 2, the answer is 2
    (it hid the patch); if one pair says otherwise, the majority 1."""
    trusted = torch.tensor([[[1, 1, 2], [1, 1, 2], [2, 2, 2]]])
    untrusted = torch.tensor([[[1, 1, 1], [1, 1, 2], [1, 2, 2]]])
    agree = torch.full((1, 3, 3), 4)
    assert double_masking(torch.cat([trusted, untrusted, agree])).tolist() == [2, 1, 4]
