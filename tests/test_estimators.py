"""Importance estimators against Captum (occlusion variants, input x gradient, integrated gradients,
Grad-CAM) and Grad-CAM++ against its closed form; superpixels; vulnerability estimators."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from roiroa.attacks import FGSM, LinfPGD
from roiroa.errors import InputError
from roiroa.maps import (
    AttributionShift,
    GradCAM,
    GradCAMPlusPlus,
    InputXGradient,
    IntegratedGradients,
    LocalizedAttack,
    Occlusion,
    PerturbationMagnitude,
    Saliency,
    baseline_images,
    create_estimator,
    last_conv_name,
    list_estimators,
)
from roiroa.regions import grid_regions, label_regions, slic_labels
from rounding import EPS32, MNIST_TERMS, RGB_TERMS, drop_rounding, logit_rounding

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
    pytest.mark.numeric,
]

# float32 rounding bounds: tests/rounding.py


captum_attr = pytest.importorskip("captum.attr", reason="Captum is a test dependency (reference implementation)")


def softmax_of(model: nn.Module):
    return lambda inp: model(inp).softmax(1)


@pytest.fixture(scope="module")
def small(mnist_batch):
    return mnist_batch[0][:8], mnist_batch[1][:8]


# --------------------------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize(("baseline", "output"), [("mean", "probability"), ("blur", "probability"), (0.0, "logit")])
def test_occlusion_baselines_and_logit_equal_captum(rgb_model, rgb_batch, baseline, output):
    x, y = rgb_batch
    ours = Occlusion(window=4, stride=2, baseline=baseline, output=output)(rgb_model, x, y)
    base = baseline_images(x, baseline) if isinstance(baseline, str) else baseline
    forward = softmax_of(rgb_model) if output == "probability" else rgb_model
    ref = captum_attr.Occlusion(forward).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=base, target=y, perturbations_per_eval=64
    )
    with torch.no_grad():  # the logits' scale over clean and baseline images (occluded ones mix the two)
        z_max = float(rgb_model(torch.cat([x, torch.as_tensor(base, dtype=x.dtype).expand_as(x)])).abs().max())
    # Captum gives each channel its own drop only through the shared window: all channels are equal.
    # bound: probability drops (drop_rounding), or logit drops: two logits off by logit_rounding (top of the file)
    bound = 2 * logit_rounding(z_max, RGB_TERMS) if output == "logit" else drop_rounding(z_max, RGB_TERMS, 5)
    assert (ours - ref[:, 0]).abs().max() < bound
    assert ours.abs().max() > 1e-4


def test_mean_and_blur_baselines():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 9, generator=gen)
    mean = baseline_images(x, "mean")
    assert torch.allclose(mean[:, :, 4, 4], x.mean((2, 3)))  # the same mean of 81 terms: equal to a few ulps
    blur = baseline_images(x, "blur", blur_sigma=1.0)
    assert blur.shape == x.shape
    assert blur.std() < x.std()  # smoother
    # not rounding: reflecting at the border moves a blurred image's mean by O(sigma / size) of its spread
    assert torch.allclose(blur.mean((2, 3)), x.mean((2, 3)), atol=0.05)
    const = torch.full((1, 1, 9, 9), 0.3)
    # bound: two passes of 9 float32 weights summing to 1 (rounded to float32): 2 * 9 * 6e-8 * 0.3 = 3e-7 < 1e-6
    assert torch.allclose(baseline_images(const, "blur"), const, atol=1e-6)


def test_superpixels_partition_and_occlusion_equal_captum_feature_ablation(rgb_model, rgb_batch):
    x, y = rgb_batch
    labels = slic_labels(x, n_segments=12, compactness=1.0)
    assert labels.shape == (6, 16, 16)
    regions = label_regions(labels)
    assert (regions.sum(1) == 1).all()  # a partition: every pixel in exactly one superpixel
    assert labels.max() >= 4
    ours = Occlusion(regions="superpixels", n_segments=12, compactness=1.0)(rgb_model, x, y)
    ref = captum_attr.FeatureAblation(softmax_of(rgb_model)).attribute(
        x, baselines=0.0, target=y, feature_mask=labels.unsqueeze(1).expand_as(x).contiguous()
    )
    with torch.no_grad():
        z_max = float(rgb_model(torch.cat([x, torch.zeros_like(x)])).abs().max())
    # bound: probability drops, logits rounded in other batches (drop_rounding, top of the file)
    assert (ours - ref[:, 0]).abs().max() < drop_rounding(z_max, RGB_TERMS, 5)
    assert ours.abs().max() > 1e-4


def test_superpixels_follow_an_edge():
    """Two flat halves of different grey: no superpixel straddles the edge."""
    x = torch.zeros(1, 1, 20, 20)
    x[..., 10:] = 1.0
    labels = slic_labels(x, n_segments=8, compactness=0.1)[0]
    for lab in labels.unique():
        cols = (labels == lab).nonzero()[:, 1]
        assert (cols < 10).all() or (cols >= 10).all()


# --------------------------------------------------------------------------------------------- gradients


def test_input_x_gradient_equals_captum(rgb_model, rgb_batch):
    x, y = rgb_batch
    ref = captum_attr.InputXGradient(rgb_model).attribute(x, target=y)
    # bound: x (<= 1) times gradients off by sqrt(A) eps32 max|grad|; max|grad| <= 10 max|x * grad| as x >= 0.1 on
    # most pixels of these uniform images; 'sum' adds 3 channels
    bound = 10 * math.sqrt(RGB_TERMS) * EPS32 * float(ref.detach().abs().max())
    assert ref.abs().max() > 1e-3
    assert (InputXGradient()(rgb_model, x, y) - ref.sum(1)).abs().max() < 3 * bound
    assert (InputXGradient(reduce="max")(rgb_model, x, y) - ref.abs().amax(1)).abs().max() < bound


@pytest.mark.parametrize(
    ("method", "baseline", "steps"),
    [("gausslegendre", "zero", 20), ("riemann_trapezoid", 0.5, 16), ("riemann_left", "blur", 8)],
)
def test_integrated_gradients_equal_captum(rgb_model, rgb_batch, method, baseline, steps):
    x, y = rgb_batch
    ig = IntegratedGradients(steps=steps, baseline=baseline, method=method, batch_size=37)
    result = ig.attribute(rgb_model, x, y)
    base = baseline_images(x, baseline)
    ref, delta = captum_attr.IntegratedGradients(rgb_model).attribute(
        x, baselines=base, target=y, n_steps=steps, method=method, return_convergence_delta=True
    )
    assert ref.abs().max() > 1e-3
    # bound: (x - b) times a weighted mean (weights sum to 1) of gradients batched otherwise (37 path points per
    # pass against all): sqrt(A) eps32 max|grad|, and max|grad| <= 10 max|attribution| as |x - b| >= 0.1 on most
    # pixels of these uniform images; maps add 3 channels
    bound = 10 * math.sqrt(RGB_TERMS) * EPS32 * float(ref.abs().max())
    assert (result.attributions - ref).abs().max() < bound
    assert (result.maps - ref.sum(1)).abs().max() < 3 * bound
    with torch.no_grad():
        z_max = float(rgb_model(torch.cat([x, base])).abs().max())
    # bound: sums of 768 attributions (random walk: sqrt(768) * (bound + 6e-8 max|attr|)) minus a logit gap,
    # two logits off by logit_rounding
    delta_bound = math.sqrt(768) * (bound + EPS32 * float(ref.abs().max())) + 2 * logit_rounding(z_max, RGB_TERMS)
    assert (result.completeness_error - delta).abs().max() < delta_bound


def test_integrated_gradients_completeness_on_mnist(mnist_model, small):
    x, y = small
    ig = IntegratedGradients(steps=64)
    maps = ig(mnist_model, x, y)
    with torch.no_grad():
        gap = mnist_model(x).gather(1, y[:, None])[:, 0] - mnist_model(torch.zeros_like(x)).gather(1, y[:, None])[:, 0]
        z_max = float(mnist_model(torch.cat([x, torch.zeros_like(x)])).abs().max())
    # the maps sum to the logit gap, up to the reported completeness error; bound: a logit gap, two logits off by
    # logit_rounding (other batches), plus a sum of 784 attributions (sqrt(784) * 6e-8 * max|map|)
    bound = 2 * logit_rounding(z_max, MNIST_TERMS) + math.sqrt(784) * EPS32 * float(maps.abs().max())
    assert (maps.flatten(1).sum(1) - gap - ig.completeness_error_).abs().max() < bound
    # not rounding: the 64-node Gauss-Legendre rule on a piecewise-linear path misses a few % at most
    assert (ig.completeness_error_.abs() < 0.05 * gap.abs()).all()


# --------------------------------------------------------------------------------------------- Grad-CAM


@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_equals_captum(mnist_model, small, relu):
    x, y = small
    assert last_conv_name(mnist_model) == "features.3"
    ours = GradCAM(relu=relu)(mnist_model, x, y)
    layer = mnist_model.features[3]
    attr = captum_attr.LayerGradCam(mnist_model, layer).attribute(x, target=y, relu_attributions=relu)
    ref = captum_attr.LayerAttribution.interpolate(attr, (28, 28), interpolate_mode="bilinear")[:, 0]
    assert ours.shape == (8, 28, 28)
    assert ref.abs().max() > 1e-3
    # bound: layer gradients off by sqrt(A) eps32 (relative) if batched otherwise, then a mean over positions and a
    # signed sum of 32 channels (x 10 for cancellation): (sqrt(1785) + 10 * 32) * eps32 * max|cam|
    bound = (math.sqrt(MNIST_TERMS) + 10 * 32) * EPS32 * float(ref.detach().abs().max())
    assert (ours - ref).abs().max() < bound
    first = GradCAM(layer="features.0")(mnist_model, x, y)
    ref0 = captum_attr.LayerGradCam(mnist_model, mnist_model.features[0]).attribute(x, target=y, relu_attributions=True)
    bound0 = (math.sqrt(MNIST_TERMS) + 10 * 16) * EPS32 * float(ref0.detach().abs().max())  # as above, 16 channels
    assert (first - ref0[:, 0]).abs().max() < bound0  # same size: no upsampling


class SumPoolNet(nn.Module):
    """A = relu(conv(x)), logits = V @ (sum of A over positions): dlogit_k/dA_c is V[k, c] everywhere."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(channels, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).sum((2, 3)))


def test_grad_cam_plus_plus_closed_form():
    """Reference: the Grad-CAM++ weights in closed form where the gradient is constant per channel
    (alpha_c = V^2 / (2 V^2 + S_c V^3), w_c = h w alpha_c relu(V)); then with one channel and a
    positive gradient, Grad-CAM++ and Grad-CAM are the same map up to a positive factor."""
    model = SumPoolNet().eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 1, 12, 12, generator=gen), torch.tensor([0, 1, 2])
    ours = GradCAMPlusPlus(layer="features", relu=False)(model, x, y)
    with torch.no_grad():
        act = model.features(x)  # (3, 4, 6, 6)
    v = model.head.weight[y].detach()  # (3, 4)
    s = act.sum((2, 3))
    alpha = torch.where(v != 0, v**2 / (2 * v**2 + s * v**3), torch.zeros_like(v))
    w = 36 * alpha * v.clamp(min=0)
    expected = nn.functional.interpolate(
        (w[:, :, None, None] * act).sum(1, keepdim=True), size=(12, 12), mode="bilinear"
    )
    assert expected.abs().max() > 1e-3
    # bound: w summed over 36 positions here as 36 * alpha, there as a sum (36 * 6e-8 relative), then 4 channels of
    # non-negative w * A (no cancellation): < 64 * eps32 * max|cam|
    assert (ours - expected[:, 0]).abs().max() < 64 * EPS32 * float(expected.abs().max())

    one = SumPoolNet(channels=1).eval()
    with torch.no_grad():
        one.head.weight.fill_(0.7)
    cam, campp = GradCAM(layer="features")(one, x, y), GradCAMPlusPlus(layer="features")(one, x, y)
    ratio = campp.flatten(1).sum(1) / cam.flatten(1).sum(1)
    assert (ratio > 0).all()
    # bound: the ratio of two sums of 144 non-negative values: worst case 2 * 144 * 6e-8 = 1.7e-5 relative
    assert (campp - cam * ratio.view(-1, 1, 1)).abs().max() < 2 * 144 * EPS32 * float(campp.max())


def test_grad_cam_bad_layer(mnist_model, small):
    with pytest.raises(InputError, match="no layer 'nope'; its conv layers are: features.0, features.3"):
        GradCAM(layer="nope")(mnist_model, *small)
    with pytest.raises(InputError, match="no nn.Conv2d"):
        GradCAM()(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), *small)


# --------------------------------------------------------------------------------------------- vulnerability


def test_localized_attack_batched_equals_per_window_loop(mnist_model, small):
    """One batch of masked attacks gives what a loop over windows gives; each window's attack
    perturbs only inside its window."""
    x, y = small[0][:2], small[1][:2]
    attack = LinfPGD(eps=0.3, steps=5, random_start=False)
    est = LocalizedAttack(attack=attack, window=7, stride=7)
    result = est.attribute(mnist_model, x, y)
    regions = grid_regions(28, 28, 7, 7)
    assert result.region_drops.shape == (2, 16) and result.maps.shape == (2, 28, 28)
    with torch.no_grad():
        logits = mnist_model(x)
    clean = logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -1e9).amax(1)
    agree = []
    for r in (0, 5, 10):
        m = regions[r].view(1, 1, 28, 28).float()
        x_adv = attack(mnist_model, x, y, mask=m)
        assert ((x_adv - x) * (1 - m)).abs().max() == 0
        with torch.no_grad():
            z = mnist_model(x_adv)
        drop = clean - (z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -1e9).amax(1))
        # bound: the attacked margin is a difference of two logits, each off by logit_rounding in a batch of 32
        # against 2 (the clean margins come from the same batch of 2). Sign steps: a pixel whose loss gradient is
        # within rounding of 0 may step the other way in another batch (measured: ~1 pixel-step in 1e5), which
        # changes that attack's result; so most, not all, (image, window) pairs agree to rounding.
        bound = 2 * logit_rounding(float(z.abs().max()), MNIST_TERMS)
        same_success = result.region_success[:, r] == (z.argmax(1) != y)
        agree.append(((result.region_drops[:, r] - drop).abs() < bound) & same_success)
    assert torch.cat(agree).sum() >= 5  # of 6 (image, window) pairs
    # the central windows (over the digit) are more vulnerable than the corners
    assert result.region_drops[:, [5, 6, 9, 10]].mean() > result.region_drops[:, [0, 3, 12, 15]].mean()
    assert torch.allclose(result.success_rate, result.region_success.float().mean(1))
    assert ((result.success_map >= 0) & (result.success_map <= 1)).all()


def test_localized_attack_superpixels(rgb_model, rgb_batch):
    x, y = rgb_batch[0][:2], rgb_batch[1][:2]
    est = LocalizedAttack(attack={"name": "fgsm", "eps": 0.2}, regions="superpixels", n_segments=6, compactness=1.0)
    maps = est(rgb_model, x, y)
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()
    assert est.success_rate_ is not None and est.success_rate_.shape == (2,)


def test_attribution_shift_is_difference_of_importance(mnist_model, small):
    x, y = small
    attack = FGSM(eps=0.2)
    est = AttributionShift(attack=attack, importance=Saliency())
    shift = est(mnist_model, x, y)
    x_adv = attack(mnist_model, x, y)
    with torch.no_grad():
        y_adv = mnist_model(x_adv).argmax(1)
    assert (y_adv != y).any()
    expected = Saliency()(mnist_model, x_adv, y_adv) - Saliency()(mnist_model, x, y)
    # bound: the same batches and steps (the attack is deterministic), so equal up to the saliencies' rounding:
    # 2 * sqrt(A) * eps32 * max|saliency|
    scale = float(Saliency()(mnist_model, x_adv, y_adv).max() + Saliency()(mnist_model, x, y).max())
    assert (shift - expected).abs().max() < 2 * math.sqrt(MNIST_TERMS) * EPS32 * scale
    named = create_estimator("attribution-shift", attack={"name": "fgsm", "eps": 0.2}, importance="input-x-gradient")
    assert named(mnist_model, x, y).shape == (8, 28, 28)


def test_perturbation_magnitude_repeats_average_random_starts(mnist_model, small):
    x, y = small
    torch.manual_seed(0)
    one = PerturbationMagnitude(attacks=[{"name": "pgd-l2", "eps": 1.0, "steps": 3}], repeats=1)(mnist_model, x, y)
    torch.manual_seed(0)
    three = PerturbationMagnitude(attacks=[{"name": "pgd-l2", "eps": 1.0, "steps": 3}], repeats=3)(mnist_model, x, y)
    assert one.shape == three.shape == (8, 28, 28)
    # bound: means of 784 float32 terms ~1, in the estimator and here: worst case 2 * 784 * 6e-8 = 9.4e-5 < 1e-4
    assert torch.allclose(three.flatten(1).mean(1), torch.ones(8), atol=1e-4)
    assert not torch.allclose(one, three)


def test_every_estimator_registered_and_callable(mnist_model, small):
    x, y = small[0][:2], small[1][:2]
    names = list_estimators()
    for name in (
        "occlusion",
        "saliency",
        "input-x-gradient",
        "integrated-gradients",
        "grad-cam",
        "grad-cam++",
        "perturbation",
        "localized",
        "attribution-shift",
    ):
        assert name in names
    quick_attack = {"name": "fgsm", "eps": 0.1}
    fast = {
        "localized": {"attack": quick_attack, "window": 14, "stride": 14},
        "integrated-gradients": {"steps": 4},
        "perturbation": {"attacks": [quick_attack]},
        "attribution-shift": {"attack": quick_attack},
    }
    for name in names:
        out = create_estimator(name, **fast.get(name, {}))(mnist_model, x, y)
        assert out.shape == (2, 28, 28) and torch.isfinite(out).all(), name


# --------------------------------------------------------------------------------------------- config


def test_config_chooses_estimators_by_name(mnist_model, small):
    from roiroa.evaluate.config import Config
    from roiroa.evaluate.maps_stage import importance_spec
    from roiroa.evaluate.validate import config_from_dict

    def importance_estimator(config):
        name, kwargs = importance_spec(config)
        return create_estimator(name, **kwargs)

    default = importance_estimator(Config())
    assert default == Occlusion(window=4, stride=2, baseline=0.0, batch_size=256)  # today's run, unchanged
    cfg = config_from_dict(
        {
            "maps": {
                "importance": "integrated-gradients",
                "importance_params": {"steps": 8, "method": "riemann_middle"},
                "vulnerability_estimator": "localized",
                "vulnerability_params": {"attack": {"name": "fgsm", "eps": 0.2}, "window": 7, "stride": 7},
            }
        }
    )
    est = importance_estimator(cfg)
    assert isinstance(est, IntegratedGradients) and est.steps == 8 and est.method == "riemann_middle"
    occ = importance_estimator(config_from_dict({"maps": {"importance_params": {"output": "logit"}}}))
    assert isinstance(occ, Occlusion) and occ.output == "logit" and occ.window == 4
    assert cfg.to_dict()["maps"]["vulnerability_params"]["window"] == 7
    with pytest.raises(InputError, match="maps.vulnerability_estimator"):
        config_from_dict({"maps": {"vulnerability_estimator": "saliency"}})
    with pytest.raises(InputError, match="maps.importance"):
        config_from_dict({"maps": {"importance": "localized"}})
    with pytest.raises(InputError, match="steps"):
        config_from_dict({"maps": {"importance": "integrated-gradients", "importance_params": {"steps": 0}}})
    with pytest.raises(InputError, match="estimator 'grad-cam'"):
        config_from_dict({"maps": {"importance": "grad-cam", "importance_params": {"nope": 1}}})
