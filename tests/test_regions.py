"""Isolation (thresholds), the four segments, overlap and correlation statistics, and grid partitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from skimage.filters import threshold_otsu

from roiroa.errors import InputError
from roiroa.regions import (
    SEGMENT_NAMES,
    Segments,
    dice,
    grid_regions,
    iou,
    isolate,
    otsu_mask,
    pearson,
    regions_to_pixels,
    spearman,
    summarize,
    top_q_mask,
)

# --------------------------------------------------------------------------------------------- top_q


def test_top_q_mask_selects_the_highest():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 10, 10, generator=gen)
    for q in (0.01, 0.004, 0.13, 0.5, 1.0):
        mask = top_q_mask(maps, q)
        k = max(1, round(q * 100))
        assert mask.shape == maps.shape and mask.dtype == torch.bool
        assert (mask.flatten(1).sum(1) == k).all()
        for m, mk in zip(maps, mask, strict=True):
            threshold = torch.sort(m.flatten(), descending=True).values[k - 1]
            assert torch.equal(mk, m >= threshold)  # distinct values: exactly the k largest


def test_top_q_mask_ties_go_to_earlier_positions():
    maps = torch.zeros(1, 4, 5)
    mask = top_q_mask(maps, 0.3)  # 6 of 20 positions, all tied
    expected = torch.zeros(20, dtype=torch.bool)
    expected[:6] = True
    assert torch.equal(mask.flatten(), expected)
    # A partial tie: the two 1s are taken, then the earliest 0s.
    maps = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    mask = top_q_mask(maps, 0.5)
    assert torch.equal(mask, torch.tensor([[[True, False, True], [False, True, False]]]))


@pytest.mark.parametrize("q", [0.0, -0.1, 1.01, float("nan"), 2])
def test_top_q_mask_bad_q(q):
    with pytest.raises(InputError):
        top_q_mask(torch.rand(1, 3, 3), q)


def test_isolate_methods():
    maps = torch.arange(16.0).view(1, 4, 4)
    assert torch.equal(isolate(maps, "top_q", q=0.25), top_q_mask(maps, 0.25))
    assert torch.equal(isolate(maps, "otsu"), otsu_mask(maps))
    assert torch.equal(isolate(maps, "value", value=10.0), maps >= 10)
    with pytest.raises(InputError):
        isolate(maps, "nope")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- property tests

small_maps = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)).flatmap(
    lambda shape: st.tuples(
        st.lists(st.integers(0, 3), min_size=math.prod(shape), max_size=math.prod(shape)),  # many ties
        st.lists(
            st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
            min_size=math.prod(shape),
            max_size=math.prod(shape),
        ),
        st.just(shape),
    )
)
fractions = st.floats(0.0, 1.0, exclude_min=True)


def as_map(values, shape, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype).view(*shape)


@settings(max_examples=50, deadline=None)
@given(data=small_maps, q_roi=fractions, q_roa=fractions, swap=st.booleans())
def test_segments_partition_every_image(data, q_roi, q_roa, swap):
    ints, floats, shape = data
    imp, vul = as_map(ints, shape), as_map(floats, shape)
    if swap:
        imp, vul = vul, imp
    seg = Segments(top_q_mask(imp, q_roi), top_q_mask(vul, q_roa))
    parts = [seg.s_0, seg.s_i, seg.s_a, seg.s_ia]
    total = sum(p.long() for p in parts)
    assert (total == 1).all()  # disjoint and covering
    labels = seg.labels()
    assert labels.shape == tuple(shape) and labels.dtype == torch.uint8
    for v, p in enumerate(parts):
        assert torch.equal(labels == v, p)
    assert torch.equal(seg.s_i | seg.s_ia, seg.roi)
    assert torch.equal(seg.s_a | seg.s_ia, seg.roa)
    fr = seg.fractions()
    assert list(fr) == list(SEGMENT_NAMES)
    # float64 counts / P summed over 4 segments: a few ulps of 1 (1e-16), far inside allclose's 1e-5
    assert torch.allclose(sum(fr.values()), torch.ones(shape[0], dtype=torch.float64))


@settings(max_examples=50, deadline=None)
@given(data=small_maps, q=fractions)
def test_top_q_count_and_order_property(data, q):
    ints, floats, shape = data
    p = shape[1] * shape[2]
    k = max(1, round(q * p))
    for values in (ints, floats):
        maps = as_map(values, shape)
        mask = top_q_mask(maps, q)
        assert (mask.flatten(1).sum(1) == k).all()
        flat, fm = maps.flatten(1), mask.flatten(1)
        for row, mrow in zip(flat, fm, strict=True):
            # every selected value >= every unselected value
            if (~mrow).any():
                assert row[mrow].min() >= row[~mrow].max()
            # among tied values at the boundary, the earlier positions are selected
            sel = mrow.nonzero().flatten()
            boundary = row[mrow].min()
            unsel_tied = ((row == boundary) & ~mrow).nonzero().flatten()
            sel_tied = ((row == boundary) & mrow).nonzero().flatten()
            if len(unsel_tied) and len(sel_tied):
                assert sel_tied.max() < unsel_tied.min()
            assert len(sel) == k


# --------------------------------------------------------------------------------------------- otsu


def test_otsu_mask_equals_skimage():
    gen = torch.Generator().manual_seed(3)
    maps = torch.cat(
        [torch.rand(3, 12, 12, generator=gen) ** 3, torch.randint(0, 4, (2, 12, 12), generator=gen).float()]
    )
    mask = otsu_mask(maps)
    for m, mk in zip(maps.numpy(), mask, strict=True):
        assert torch.equal(mk, torch.from_numpy(m > threshold_otsu(m)))
    assert mask.any() and not mask.all()


def test_otsu_mask_constant_map_is_empty():
    maps = torch.stack([torch.full((6, 6), 0.7), torch.zeros(6, 6), torch.eye(6)])
    mask = otsu_mask(maps)
    assert not mask[0].any() and not mask[1].any()
    assert torch.equal(mask[2], torch.eye(6, dtype=torch.bool))


# --------------------------------------------------------------------------------------------- overlap


def test_iou_and_dice():
    a = torch.zeros(4, 3, 4, dtype=torch.bool)
    b = torch.zeros(4, 3, 4, dtype=torch.bool)
    # 0: identical
    a[0, :2] = True
    b[0, :2] = True
    # 1: disjoint
    a[1, 0] = True
    b[1, 2] = True
    # 2: partial: |a| = 4, |b| = 3, |a & b| = 2, |a | b| = 5
    a[2, 0, :4] = True
    b[2, 0, 2:] = True
    b[2, 1, 0] = True
    # 3: both empty
    i, d = iou(a, b), dice(a, b)
    assert i.dtype == torch.float64 and d.dtype == torch.float64
    assert i[0] == 1 and d[0] == 1
    assert i[1] == 0 and d[1] == 0
    assert i[2] == pytest.approx(2 / 5) and d[2] == pytest.approx(2 * 2 / 7)
    assert math.isnan(i[3]) and math.isnan(d[3])


# --------------------------------------------------------------------------------------------- correlation


def correlation_maps():
    gen = torch.Generator().manual_seed(7)
    a = torch.rand(4, 9, 9, generator=gen)
    b = a + 0.5 * torch.rand(4, 9, 9, generator=gen)
    a[2] = torch.randint(0, 3, (9, 9), generator=gen).float()  # many ties
    b[2] = torch.randint(0, 2, (9, 9), generator=gen).float()
    b[3] = -(a[3] ** 2)
    return a, b


@pytest.mark.numeric
def test_pearson_and_spearman_equal_scipy():
    a, b = correlation_maps()
    p, s = pearson(a, b), spearman(a, b)
    assert p.shape == (4,) and s.shape == (4,)
    for i in range(4):
        x, y = a[i].flatten().double().numpy(), b[i].flatten().double().numpy()
        # bound: float64 sums of 81 terms in another order; by Cauchy-Schwarz the error of r stays below
        # ~2 * 81 * 1.1e-16 = 2e-14 (worst case), so 1e-10 leaves room for SciPy's own formula
        assert abs(float(p[i]) - stats.pearsonr(x, y)[0]) < 1e-10
        assert abs(float(s[i]) - stats.spearmanr(x, y)[0]) < 1e-10
    assert s[3] == pytest.approx(-1.0)


def test_correlation_of_constant_map_is_nan():
    a, b = correlation_maps()
    a[1] = 0.25
    p, s = pearson(a, b), spearman(a, b)
    assert math.isnan(p[1]) and math.isnan(s[1])
    assert torch.isfinite(p[[0, 2, 3]]).all() and torch.isfinite(s[[0, 2, 3]]).all()


def test_summarize_ignores_nan():
    values = torch.tensor([0.5, float("nan"), 1.0, 0.0, float("nan")], dtype=torch.float64)
    out = summarize(values)
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(0.5)
    assert out["std"] == pytest.approx(float(np.std([0.5, 1.0, 0.0], ddof=1)))
    one = summarize(torch.tensor([0.3, float("nan")]))
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.3) and math.isnan(one["std"])
    none = summarize(torch.tensor([float("nan")]))
    assert none["n"] == 0 and math.isnan(none["mean"])


# --------------------------------------------------------------------------------------------- partitions


@pytest.mark.parametrize(
    ("size", "window", "stride", "per_axis"), [(28, 4, 2, 13), (28, 4, 4, 7), (16, 4, 3, 5), (5, 5, 1, 1)]
)
def test_grid_regions_counts(size, window, stride, per_axis):
    regions = grid_regions(size, size, window, stride)
    assert regions.shape == (per_axis**2, size, size) and regions.dtype == torch.bool
    assert (regions.flatten(1).sum(1) == window * window).all()
    assert regions.any(0).all()


def test_grid_regions_rectangular_and_bad_args():
    regions = grid_regions(6, 8, 2, 2)
    assert regions.shape == (12, 6, 8)
    assert regions[1, 0:2, 2:4].all()  # row-major order
    assert regions[4, 2:4, 0:2].all()
    with pytest.raises(InputError):
        grid_regions(6, 8, 7, 1)  # larger than the height
    with pytest.raises(InputError):
        grid_regions(6, 8, 2, 3)  # stride > window leaves gaps
    with pytest.raises(InputError):
        grid_regions(6, 8, 0, 1)


def test_regions_to_pixels_averages_overlaps():
    # 1 x 3 image, windows of width 2 at columns 0-1 and 1-2.
    regions = torch.tensor([[[True, True, False]], [[False, True, True]]])
    values = torch.tensor([[2.0, 4.0], [-1.0, 1.0]])
    out = regions_to_pixels(values, regions)
    assert torch.equal(out, torch.tensor([[[2.0, 3.0, 4.0]], [[-1.0, 0.0, 1.0]]]))
    # 4x4 with window 2 stride 1: the centre pixel (1,1) is in windows 0, 1, 3, 4 of the 3x3 grid.
    regions = grid_regions(4, 4, 2, 1)
    values = torch.arange(9.0)[None]
    out = regions_to_pixels(values, regions)[0]
    assert out[1, 1] == pytest.approx((0 + 1 + 3 + 4) / 4)
    assert out[0, 0] == 0 and out[3, 3] == 8
    assert out[0, 1] == pytest.approx((0 + 1) / 2)
    # a pixel covered by no region gets 0
    partial = torch.zeros(1, 2, 2, dtype=torch.bool)
    partial[0, 0, 0] = True
    assert torch.equal(regions_to_pixels(torch.tensor([[5.0]]), partial), torch.tensor([[[5.0, 0.0], [0.0, 0.0]]]))
