"""Property tests (hypothesis) of the pure pieces, beside the example-based tests of each stage.

test_regions.py already checks that top-q segments partition the image and that top_q_mask selects
max(1, round(q P)) positions; here: segments for every threshold method, neutralization, random
equal-area masks, and attacks that never leave the eps-ball or [0, 1].
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from roiroa.attacks import create_attack
from roiroa.defence import neutralize, random_mask_like
from roiroa.regions import Segments, isolate

shapes = st.tuples(st.integers(1, 3), st.integers(2, 6), st.integers(2, 6))
fractions = st.floats(0.0, 1.0, exclude_min=True)
methods = st.sampled_from(["top_q", "otsu", "value"])


@st.composite
def map_pairs(draw):
    """Two maps (N, H, W) with many ties or arbitrary floats (including negative values)."""
    shape = draw(shapes)
    size = math.prod(shape)
    values = st.one_of(
        st.lists(st.integers(0, 3).map(float), min_size=size, max_size=size),
        st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=size, max_size=size),
    )
    return torch.tensor(draw(values)).view(shape), torch.tensor(draw(values)).view(shape)


@settings(max_examples=60, deadline=None)
@given(maps=map_pairs(), m_roi=methods, m_roa=methods, q_roi=fractions, q_roa=fractions, value=st.floats(-5, 5))
def test_segments_partition_for_every_threshold_method(maps, m_roi, m_roa, q_roi, q_roa, value):
    importance, vulnerability = maps
    roi = isolate(importance, m_roi, q_roi, value)
    roa = isolate(vulnerability, m_roa, q_roa, value)
    seg = Segments(roi, roa)
    total = seg.s_0.long() + seg.s_i.long() + seg.s_a.long() + seg.s_ia.long()
    assert (total == 1).all()
    assert torch.equal(seg.s_a, roa & ~roi) and torch.equal(seg.s_i | seg.s_ia, roi)
    if m_roi == "top_q":  # the requested fraction, within one position
        p = roi.shape[1] * roi.shape[2]
        assert (roi.flatten(1).sum(1) - q_roi * p).abs().max() <= 1


@st.composite
def images_and_masks(draw):
    n, h, w = draw(shapes)
    c = draw(st.sampled_from([1, 3]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(n, c, h, w, generator=gen)
    x[x < 0.1] = 0.0  # exact zeros: a zero fill leaves such pixels as they were
    per_image = draw(st.booleans())
    mask = torch.rand((n if per_image else 1), h, w, generator=gen) < draw(st.floats(0, 1))
    fill = draw(
        st.one_of(
            st.floats(0, 1),
            st.lists(st.floats(0, 1), min_size=c, max_size=c).map(lambda v: torch.tensor(v).view(1, -1, 1, 1)),
        )
    )
    return x, mask, fill


@settings(max_examples=60, deadline=None)
@given(data=images_and_masks())
def test_neutralize_touches_only_masked_pixels_and_is_idempotent(data):
    x, mask, fill = data
    out = neutralize(x, mask, fill)
    inside = mask[:, None].expand_as(x)
    assert torch.equal(out[~inside], x[~inside])
    expected = torch.as_tensor(fill, dtype=x.dtype).expand_as(x)
    assert torch.equal(out[inside], expected[inside])
    assert torch.equal(neutralize(out, mask, fill), out)
    assert out.min() >= 0 and out.max() <= 1


@settings(max_examples=40, deadline=None)
@given(shape=shapes, density=st.floats(0, 1), seed=st.integers(0, 1000))
def test_random_mask_has_exactly_the_same_area(shape, density, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density
    rand = random_mask_like(mask, torch.Generator().manual_seed(seed + 1))
    assert rand.shape == mask.shape and rand.dtype == torch.bool
    assert torch.equal(rand.flatten(1).sum(1), mask.flatten(1).sum(1))


class Linear(nn.Module):
    """A fixed random linear classifier on (N, C, 6, 6): cheap, with useful gradients everywhere."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c * 36, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(4, c * 36, generator=torch.Generator().manual_seed(c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


MODELS = {c: Linear(c).eval() for c in (1, 3)}


@st.composite
def attack_cases(draw):
    name = draw(st.sampled_from(["fgsm", "pgd-linf", "pgd-l2"]))
    eps = draw(st.floats(1e-3, 1.0 if name != "pgd-l2" else 5.0))
    kwargs = {"eps": eps, "batch_size": draw(st.integers(1, 5))}
    if name != "fgsm":
        kwargs |= {
            "steps": draw(st.integers(1, 4)),
            "random_start": draw(st.booleans()),
            "restarts": draw(st.integers(1, 2)),
        }
        if draw(st.booleans()):
            kwargs["step_size"] = draw(st.floats(1e-3, 2.0))
    c, n = draw(st.sampled_from([1, 3])), draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(n, c, 6, 6, generator=gen)
    x[x < 0.2], x[x > 0.8] = 0.0, 1.0  # pixels on the box's faces
    y = torch.randint(0, 4, (n,), generator=gen)
    mask = None
    if draw(st.booleans()):
        mask = (torch.rand(draw(st.sampled_from([1, n])), 1, 6, 6, generator=gen) < 0.5).float()
    return create_attack(name, **kwargs), MODELS[c], x, y, mask, draw(st.integers(0, 100))


@pytest.mark.numeric
@settings(max_examples=30, deadline=None)
@given(case=attack_cases())
def test_attacks_never_leave_the_eps_ball_or_the_unit_box(case):
    attack, model, x, y, mask, seed = case
    torch.manual_seed(seed)
    x_adv = attack(model, x, y, mask=mask)
    delta = x_adv - x
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # up to float32 rounding of (x + delta) - x: at most one ulp of 1.0 (1.2e-7) per pixel
    if attack.norm == "linf":
        assert float(delta.abs().max()) <= attack.eps + 2e-7
    else:
        # and the L2 norm of n = C * 36 float32 squares, in the projection and here: 2 * n * 6e-8 relative, worst
        # case (1.3e-5 for n = 108); the ulps add up to sqrt(n) * 1.2e-7
        n = x[0].numel()
        assert float(delta.flatten(1).norm(dim=1).max()) <= attack.eps * (1 + n * 1.2e-7) + 1.2e-7 * math.sqrt(n)
    if mask is not None:
        assert (delta * (1 - mask) == 0).all()  # nothing changes outside the mask
