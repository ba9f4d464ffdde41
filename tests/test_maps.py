"""Importance and vulnerability maps: occlusion and saliency against Captum, edge cases, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from roiroa.attacks import FGSM, L2PGD, LinfPGD
from roiroa.errors import InputError
from roiroa.maps import (
    Occlusion,
    PerturbationMagnitude,
    Saliency,
    attack_vulnerability,
    create_estimator,
    list_estimators,
    mean_vulnerability,
    occlusion_drops,
    perturbation_map,
    unit_mean,
)
from roiroa.maps.recorder import AttackTrace
from roiroa.regions import grid_regions, window_starts
from rounding import EPS32, MNIST_TERMS, RGB_TERMS, drop_rounding

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
    pytest.mark.numeric,
]

# float32 rounding bounds: tests/rounding.py


captum_attr = pytest.importorskip("captum.attr", reason="Captum is a test dependency (reference implementation)")


def softmax_of(model: nn.Module):
    return lambda inp: model(inp).softmax(1)


def captum_occlusion(model, x, y, window, stride, baseline, per_eval):
    c = x.shape[1]
    attr = captum_attr.Occlusion(softmax_of(model)).attribute(
        x,
        sliding_window_shapes=(c, window, window),
        strides=(c, stride, stride),
        baselines=baseline,
        target=y,
        perturbations_per_eval=per_eval,
    )
    # The window spans every channel, so every channel holds the same attribution (the same sums: exact).
    assert torch.allclose(attr, attr[:, :1].expand_as(attr))
    return attr[:, 0]


def n_windows(size, window, stride):
    return len(window_starts(size, window, stride))


# --------------------------------------------------------------------------------------------- occlusion


def test_occlusion_equals_captum_mnist(mnist_model, mnist_batch):
    x, y = mnist_batch[0][:16], mnist_batch[1][:16]
    ours = Occlusion(window=4, stride=2, baseline=0.0)(mnist_model, x, y)
    ref = captum_occlusion(mnist_model, x, y, 4, 2, 0, per_eval=n_windows(28, 4, 2) ** 2)
    assert ours.shape == (16, 28, 28)
    with torch.no_grad():
        z_max = float(mnist_model(x).abs().max())
    # bound: probability drops, logits rounded in other batches and layout (drop_rounding, top of the file)
    assert (ours - ref).abs().max() < drop_rounding(z_max, MNIST_TERMS, 10)
    assert ours.abs().max() > 0.05  # non-trivial maps


@pytest.mark.parametrize(("stride", "baseline"), [(4, 0.0), (2, 0.0), (4, 0.5), (2, 0.5)])
def test_occlusion_equals_captum_rgb(rgb_model, rgb_batch, stride, baseline):
    x, y = rgb_batch
    ours = Occlusion(window=4, stride=stride, baseline=baseline)(rgb_model, x, y)
    ref = captum_occlusion(rgb_model, x, y, 4, stride, baseline, per_eval=n_windows(16, 4, stride) ** 2)
    assert ours.shape == (6, 16, 16)
    with torch.no_grad():
        z_max = float(rgb_model(x).abs().max())
    # bound: probability drops, logits rounded in other batches (drop_rounding, top of the file)
    assert (ours - ref).abs().max() < drop_rounding(z_max, RGB_TERMS, 5)
    assert ours.abs().max() > 1e-4


def test_occlusion_non_tiling_window_covers_every_pixel_and_matches_brute_force(mnist_model, mnist_batch):
    h, window, stride = 28, 5, 3
    regions = grid_regions(h, h, window, stride)
    starts = window_starts(h, window, stride)
    assert starts == [0, 3, 6, 9, 12, 15, 18, 21, 23]  # the last one is flush with the border
    assert starts[-1] + window == h
    assert regions.shape == (len(starts) ** 2, h, h)
    assert regions.any(0).all()
    assert regions[-1, -window:, -window:].all() and regions[-1].sum() == window * window

    x, y = mnist_batch[0][:1], mnist_batch[1][:1]
    ours = Occlusion(window=window, stride=stride)(mnist_model, x, y)[0]

    with torch.no_grad():
        p_clean = mnist_model(x).softmax(1)[0, y[0]]
        z_max = float(mnist_model(x).abs().max())
        total = torch.zeros(h, h, dtype=torch.float64)
        count = torch.zeros(h, h, dtype=torch.float64)
        for r in starts:
            for c in starts:
                occluded = x.clone()
                occluded[..., r : r + window, c : c + window] = 0.0
                drop = float(p_clean - mnist_model(occluded).softmax(1)[0, y[0]])
                total[r : r + window, c : c + window] += drop
                count[r : r + window, c : c + window] += 1
    assert (count > 0).all()
    expected = (total / count).float()
    # bound: probability drops, one image at a time against batches (drop_rounding, top of the file)
    assert (ours - expected).abs().max() < drop_rounding(z_max, MNIST_TERMS, 10)
    # Rows 23..27 are covered by the flush window only once or twice, unlike a plain stride-3 grid.
    assert count[27, 27] == 1 and count[22, 22] == 4


def test_occlusion_batch_size_invariance(mnist_model, mnist_batch):
    x, y = mnist_batch[0][:3], mnist_batch[1][:3]
    maps = [Occlusion(window=4, stride=2, batch_size=b)(mnist_model, x, y) for b in (1, 2, 3, 256)]
    with torch.no_grad():
        z_max = float(mnist_model(x).abs().max())
    for m in maps[1:]:
        # bound: probability drops, logits rounded in batches of other sizes (drop_rounding, top)
        assert (m - maps[0]).abs().max() < drop_rounding(z_max, MNIST_TERMS, 10)


def test_occlusion_skip_unchanged_is_exact(mnist_model, mnist_batch):
    """A window that is all baseline already has drop exactly 0, with or without the skip."""
    x, y = mnist_batch[0][:4], mnist_batch[1][:4]
    regions = grid_regions(28, 28, 4, 4)
    assert (x[:, :, :4, :4] == 0).all()  # MNIST corners are black
    skipped = occlusion_drops(mnist_model, x, y, regions, 0.0)
    assert (skipped[:, 0] == 0).all()
    forwarded = occlusion_drops(mnist_model, x, y, regions, 0.0, skip_unchanged=False)
    with torch.no_grad():
        bound = drop_rounding(float(mnist_model(x).abs().max()), MNIST_TERMS, 10)
    # bound: the other pairs land in other batches: probability drops off by drop_rounding (top of the file)
    assert (skipped - forwarded).abs().max() < bound
    assert forwarded[:, 0].abs().max() < bound  # x against itself in another batch


class ToyModel(nn.Module):
    """3 classes; logit of class 0 is 10 * x[:, 0, 0, 0], the others are 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(x.shape[0], 3, dtype=x.dtype)
        z[:, 0] = 10 * x[:, 0, 0, 0]
        return z


def test_occlusion_toy_model_exact():
    x = torch.full((1, 1, 4, 4), 0.5)
    x[0, 0, 0, 0] = 1.0
    y = torch.tensor([0])
    imp = Occlusion(window=2, stride=2)(ToyModel(), x, y)[0]
    e10 = math.exp(10.0)
    expected_drop = e10 / (e10 + 2) - 1 / 3
    assert imp.shape == (4, 4)
    # bound: exact logits (10, 5, 0); the float32 softmax rounds each probability by a few ulps (6e-8): two of
    # them, and expected_drop rounded to float32, stay < 4e-7 < 1e-6
    assert torch.allclose(imp[:2, :2], torch.full((2, 2), expected_drop), atol=1e-6, rtol=0)
    outside = imp.clone()
    outside[:2, :2] = 0
    assert (outside == 0).all()
    assert (imp[:2, :2] > 0).all()


# --------------------------------------------------------------------------------------------- saliency


def test_saliency_equals_captum_rgb(rgb_model, rgb_batch):
    x, y = rgb_batch
    ours = Saliency()(rgb_model, x, y)
    ref = captum_attr.Saliency(rgb_model).attribute(x, target=y, abs=True).amax(1)
    assert ours.shape == (6, 16, 16)
    # bound: the same backward pass (Captum may batch it otherwise): sqrt(A) * eps32 * max|grad| (top)
    assert (ours - ref).abs().max() < math.sqrt(RGB_TERMS) * EPS32 * float(ref.max())
    assert ref.max() > 0


def test_saliency_l2_reduce(rgb_model, rgb_batch):
    x, y = rgb_batch
    ours = Saliency(reduce="l2")(rgb_model, x, y)
    grads = captum_attr.Saliency(rgb_model).attribute(x, target=y, abs=False)
    # bound: the same gradients (sqrt(A) eps32 max|grad| ~ 1e-7 if batched otherwise), then an L2 norm of 3 values:
    # a few ulps, inside rtol=1e-5 plus atol=1e-6
    assert torch.allclose(ours, grads.norm(dim=1), atol=1e-6)


def test_saliency_equals_captum_mnist(mnist_model, mnist_batch):
    x, y = mnist_batch
    ours = Saliency()(mnist_model, x, y)
    ref = captum_attr.Saliency(mnist_model).attribute(x, target=y, abs=True)[:, 0]
    assert ours.shape == (64, 28, 28)
    # bound: the same backward pass (Captum may batch it otherwise): sqrt(A) * eps32 * max|grad| (top)
    assert (ours - ref).abs().max() < math.sqrt(MNIST_TERMS) * EPS32 * float(ref.max())


def test_saliency_batch_size_invariance(mnist_model, mnist_batch):
    x, y = mnist_batch
    maps = [Saliency(batch_size=b)(mnist_model, x, y) for b in (1, 2, 3, 64)]
    for m in maps[1:]:
        # bound: gradients summed in batches of other sizes: sqrt(A) * eps32 * max|grad| (top). A ReLU or max-pool
        # input within rounding of its kink may switch in another batch and move the gradient near it by that
        # unit's share (~1e-5 of the largest): so 99% of the entries within the bound, all within 1e-3 of the largest.
        close = (m - maps[0]).abs() < math.sqrt(MNIST_TERMS) * EPS32 * float(maps[0].max())
        assert close.float().mean() >= 0.99
        assert (m - maps[0]).abs().max() < 1e-3 * float(maps[0].max())


# --------------------------------------------------------------------------------------------- vulnerability


def test_perturbation_map_single_and_multi_channel():
    gen = torch.Generator().manual_seed(0)
    x1 = torch.rand(3, 1, 5, 6, generator=gen)
    a1 = torch.rand(3, 1, 5, 6, generator=gen)
    assert torch.allclose(perturbation_map(x1, a1), (a1 - x1).abs()[:, 0])
    x3 = torch.rand(3, 3, 5, 6, generator=gen)
    a3 = torch.rand(3, 3, 5, 6, generator=gen)
    expected = ((a3 - x3) ** 2).sum(1).sqrt()
    out = perturbation_map(x3, a3)
    assert out.shape == (3, 5, 6)
    # bound: an L2 norm of 3 values < 1 computed two ways: a few ulps (<= 5 * 6e-8 * 1.7), inside rtol=1e-5
    assert torch.allclose(out, expected, atol=1e-7)


def test_unit_mean():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 7, 7, generator=gen) * torch.tensor([1.0, 10.0, 1e-3, 0.0]).view(-1, 1, 1)
    out = unit_mean(maps)
    means = out.flatten(1).mean(1)
    # bound: two means of 49 float32 terms ~1 (in unit_mean, here): worst case 2 * 49 * 6e-8 = 6e-6 < 1e-5
    assert torch.allclose(means[:3], torch.ones(3), atol=1e-5)
    assert (out[3] == 0).all()
    # proportional to the input; bound: ratios <= 1 of one scaling and two divisions: a few ulps < 1e-6
    assert torch.allclose(out[1] / out[1].max(), maps[1] / maps[1].max(), atol=1e-6)


def test_attack_vulnerability_auto_source():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 4, 4, generator=gen) * 0.5
    x_adv = x + 0.1 * torch.rand(2, 1, 4, 4, generator=gen)
    grad_map = torch.rand(2, 4, 4, generator=gen)
    res = AttackTrace(x_adv, grad_map, gradient_calls=3)
    assert torch.equal(attack_vulnerability(x, res, "linf"), grad_map)
    # a gradient-free attack (no gradient reached the input) is read from its perturbation even in L-inf
    free = AttackTrace(x_adv, torch.zeros(2, 4, 4), gradient_calls=0)
    assert torch.equal(attack_vulnerability(x, free, "linf"), perturbation_map(x, x_adv))
    assert torch.equal(attack_vulnerability(x, res, "l2"), perturbation_map(x, x_adv))
    assert torch.equal(attack_vulnerability(x, res, "l2", source="gradient"), grad_map)
    assert torch.equal(attack_vulnerability(x, res, "linf", source="perturbation"), perturbation_map(x, x_adv))
    with pytest.raises(InputError):
        attack_vulnerability(x, res, "linf", source="nope")  # type: ignore[arg-type]


def test_mean_vulnerability_of_unit_mean_maps():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 5, generator=gen) * 100
    b = torch.rand(3, 5, 5, generator=gen) * 0.01
    out = mean_vulnerability([a, b])
    # bound: values ~1 from the same means (25 terms) in another order: 25 * 6e-8 = 1.5e-6 worst, inside
    # atol=1e-6 plus rtol=1e-5 * |value|
    assert torch.allclose(out, (unit_mean(a) + unit_mean(b)) / 2, atol=1e-6)
    # bound: two means of 25 terms ~1: worst case 2 * 25 * 6e-8 = 3e-6 < 1e-5
    assert torch.allclose(out.flatten(1).mean(1), torch.ones(3), atol=1e-5)


def test_perturbation_magnitude_estimator(mnist_model, mnist_batch):
    x, y = mnist_batch[0][:8], mnist_batch[1][:8]
    est = PerturbationMagnitude(attacks=[FGSM(eps=0.1), L2PGD(eps=1.0, steps=3), LinfPGD(eps=0.1, steps=3)])
    out = est(mnist_model, x, y)
    assert out.shape == (8, 28, 28)
    assert torch.isfinite(out).all() and (out >= 0).all()
    # bound: means of 784 float32 terms ~1, in unit_mean and here (and 3 maps averaged): worst case
    # 2 * 784 * 6e-8 = 9.4e-5 < 1e-4 (typically sqrt(784) * 6e-8 = 2e-6)
    assert torch.allclose(out.flatten(1).mean(1), torch.ones(8), atol=1e-4)


# --------------------------------------------------------------------------------------------- registry and params


def test_estimator_registry():
    names = list_estimators()
    assert {"occlusion", "saliency", "perturbation"} <= set(names)
    occ = create_estimator("occlusion", window=3)
    assert isinstance(occ, Occlusion) and occ.window == 3 and occ.stride == 2
    assert isinstance(create_estimator("saliency"), Saliency)
    pm = create_estimator("perturbation", attacks=[FGSM()], source="perturbation")
    assert isinstance(pm, PerturbationMagnitude) and pm.source == "perturbation"
    with pytest.raises(InputError) as err:
        create_estimator("nope")
    for name in ("occlusion", "saliency", "perturbation"):
        assert name in str(err.value)
    with pytest.raises(InputError):
        create_estimator("occlusion", size=3)


@pytest.mark.parametrize(
    "kwargs", [{"window": 0}, {"stride": 0}, {"baseline": 2.0}, {"baseline": -0.1}, {"window": 2.5}]
)
def test_occlusion_bad_params(kwargs):
    with pytest.raises(InputError):
        Occlusion(**kwargs)


def test_occlusion_window_larger_than_image(rgb_model, rgb_batch):
    occ = Occlusion(window=17, stride=2)  # fine until called on a 16x16 image
    with pytest.raises(InputError):
        occ(rgb_model, *rgb_batch)


def test_occlusion_window_equal_to_image(rgb_model, rgb_batch):
    """One window covering the whole image: every pixel gets p_y(x) - p_y(baseline image)."""
    x, y = rgb_batch
    out = Occlusion(window=16, stride=16, baseline=0.5)(rgb_model, x, y)
    with torch.no_grad():
        drop = (
            rgb_model(x).softmax(1).gather(1, y[:, None])[:, 0]
            - rgb_model(torch.full_like(x, 0.5)).softmax(1)[torch.arange(6), y]
        )
        z_max = float(rgb_model(torch.cat([x, torch.full_like(x, 0.5)])).abs().max())
    # bound: probability drops, logits rounded in other batches (drop_rounding, top of the file)
    assert (out - drop.view(-1, 1, 1)).abs().max() < drop_rounding(z_max, RGB_TERMS, 5)


def test_occlusion_equals_captum_non_square(rgb_model, rgb_batch):
    """H != W: rows and columns get their own window starts (Captum slides the same way)."""

    class Pad(nn.Module):  # the tiny net needs 16x16: pad a 16x12 crop back with zeros
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inp):
            return self.inner(nn.functional.pad(inp, (0, 4)))

    model = Pad(rgb_model)
    x, y = rgb_batch[0][..., :12], rgb_batch[1]
    ours = Occlusion(window=4, stride=2)(model, x, y)
    ref = captum_occlusion(model, x, y, 4, 2, 0, per_eval=7 * 5)
    assert ours.shape == (6, 16, 12)
    with torch.no_grad():
        z_max = float(model(x).abs().max())
    # bound: probability drops, logits rounded in other batches (drop_rounding, top of the file)
    assert (ours - ref).abs().max() < drop_rounding(z_max, RGB_TERMS, 5)
    assert ours.abs().max() > 1e-4  # non-trivial maps
