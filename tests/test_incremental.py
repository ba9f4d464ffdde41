"""Incremental occlusion inference: equal to the model's own forward pass, and a safe fallback."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import roiroa.maps.incremental as incremental_module
import roiroa.maps.occlusion as occlusion_module
from roiroa.geometry import rectangle_boxes, regions_to_pixels
from roiroa.maps import Occlusion, occlusion_drops
from roiroa.maps.incremental import cached_incremental_model, incremental_model
from roiroa.models.normalize import NORMALIZATIONS, Normalized
from roiroa.models.resnet import resnet20
from roiroa.regions import grid_regions

pytestmark = pytest.mark.numeric

# float32 rounding: a sum computed in another order (batch, layout, folded batch norm, crops) differs by a random
# walk of per-term roundings, ~sqrt(A) * EPS32 times the terms' scale, A = the terms summed along a logit's path
# (fan-ins). ResNet-20: 27 + 6*144 + (144 + 5*288) + (288 + 5*576) + 64 (pool) + 64 = 5771; InPlaceNet:
# 75 + 72 + 24 + 512 = 683. The scale is max|logit|, or 1 where the logits cancel to less (InPlaceNet: |z| ~ 0.2
# from terms of O(1)); measured: 1-3 * EPS32 * that.
EPS32 = torch.finfo(torch.float32).eps
# StridedNet: 27 + 9 (depthwise) + 8 + 9 (depthwise) + 12 + 27 (grouped) + 300 + 64 + 4 (pool) + 16 = 476.
PATH_TERMS = {"resnet20": 5771, "inplace": 683, "strided": 476}


def _randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, so folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


class InPlaceNet(nn.Module):
    """Torchvision-style pieces: in-place ReLU modules, a 5x5 conv, a residual add, LeakyReLU, max-pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, (1, 3), padding=(0, 1))
        self.head = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + out)
        out = F.leaky_relu(self.conv3(out) * 0.5 + 0.1, 0.2)
        return self.head(F.max_pool2d(out, 2).flatten(1))


class StridedNet(nn.Module):
    """MobileNet-like: a stride-2 3x3 conv, depthwise 3x3 convs of stride 1 and 2, pointwise convs, batch norm after
    each, LeakyReLU and ReLU6, a grouped 3x3 conv with a residual add (maps with different boxes), a 5x5 stride-2
    conv plus a 1x1 stride-2 shortcut (a kernel shorter than its stride), an even 2x2 stride-2 conv without padding,
    global pooling."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, k: int, s: int, p: int, groups: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(c_out))

        self.stem = block(3, 8, 3, 2, 1)
        self.dw1, self.pw1 = block(8, 8, 3, 1, 1, groups=8), block(8, 12, 1, 1, 0)
        self.dw2, self.pw2 = block(12, 12, 3, 2, 1, groups=12), block(12, 12, 1, 1, 0)
        self.grouped = block(12, 12, 3, 1, 1, groups=4)
        self.wide, self.short = nn.Conv2d(12, 16, 5, 2, 2), nn.Conv2d(12, 16, 1, 2, 0, bias=False)
        self.even = nn.Conv2d(16, 16, 2, 2, 0)
        self.head = nn.Linear(16, 5)
        for m in self.modules():  # He init keeps the maps' scale, so that windows move the logits
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.stem(x), 0.1)
        out = F.leaky_relu(self.pw1(F.relu6(self.dw1(out))), 0.1)
        out = F.leaky_relu(self.pw2(F.leaky_relu(self.dw2(out), 0.1)), 0.1)
        out = F.leaky_relu(self.grouped(out) + out, 0.1)
        out = torch.tanh(self.even(F.leaky_relu(self.wide(out) + self.short(out), 0.1)))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


class UntraceableNet(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if out.mean() > 0:
            out = out.relu()
        return self.head(out.mean((2, 3)))


def _occluded_outputs(model, x, regions, fill):
    """model(x[i] with region r set to fill) for every image i and region r, as (N * R, K)."""
    m = regions[None, :, None].float()  # (1, R, 1, H, W)
    occluded = (x[:, None] * (1 - m) + fill * m).flatten(0, 1)
    with torch.no_grad():
        return model(occluded)


@pytest.mark.parametrize(
    ("model_name", "shape", "window", "stride"),
    [
        ("resnet20", (3, 32, 32), (4, 4), 2),
        ("resnet20", (3, 32, 32), (3, 5), 3),
        ("inplace", (3, 16, 16), (4, 4), 2),
    ],
)
def test_incremental_forward_equals_the_model(model_name, shape, window, stride):
    torch.manual_seed(0)
    if model_name == "resnet20":
        model = _randomize_batch_norm(Normalized(resnet20(), *NORMALIZATIONS["cifar10"]))
    else:
        model = _randomize_batch_norm(InPlaceNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, *shape)
    h, w = window
    regions = torch.zeros(0, *shape[1:], dtype=torch.bool)
    for r in range(0, shape[1] - h + 1, stride):  # every window, the image borders included
        for c in range(0, shape[2] - w + 1, stride):
            box = torch.zeros(1, *shape[1:], dtype=torch.bool)
            box[0, r : r + h, c : c + w] = True
            regions = torch.cat([regions, box])
    top, left, size = rectangle_boxes(regions)
    engine = incremental_model(model, shape, size)
    assert engine is not None and engine.cropped_nodes >= 3
    fill = torch.rand(1, shape[0], 1, 1)  # a per-channel baseline
    clean = engine.clean(x)
    with torch.no_grad():
        eager = model(x)
    # bound: the same logits summed in another order: sqrt(A) * eps32 * max(1, max|z|) (module comment)
    bound = math.sqrt(PATH_TERMS[model_name]) * EPS32 * max(1.0, float(eager.abs().max()))
    assert (clean.output - eager).abs().max() < bound
    image = torch.arange(len(x)).repeat_interleave(len(regions))
    r = torch.arange(len(regions)).repeat(len(x))
    patch = fill.expand(len(r), -1, h, w)
    ours = engine.forward(clean, image, top[r], left[r], patch)
    reference = _occluded_outputs(model, x, regions, fill)
    # bound: as above, for the occluded images' logits (crops pasted into clean maps add no rounding)
    bound = math.sqrt(PATH_TERMS[model_name]) * EPS32 * max(1.0, float(reference.abs().max()))
    assert (ours - reference).abs().max() < bound
    # the engine works on its own copy: the model's weights and layout are untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous()


def _every_window(shape: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """Every h x w window at stride 1 (so every window at every border), as masks (R, H, W)."""
    (height, width), (h, w) = shape, window
    regions = torch.zeros((height - h + 1) * (width - w + 1), height, width, dtype=torch.bool)
    for k, (r, c) in enumerate((r, c) for r in range(height - h + 1) for c in range(width - w + 1)):
        regions[k, r : r + h, c : c + w] = True
    return regions


@pytest.mark.parametrize("window", [(5, 3), (4, 4), (1, 7), (9, 2)])
@pytest.mark.parametrize("full_fraction", [None, 1.0])
def test_incremental_forward_through_strided_and_depthwise_convs(window, full_fraction, monkeypatch):
    if full_fraction is not None:  # crop every conv, whatever share of its map its box covers
        monkeypatch.setattr(incremental_module, "FULL_FRACTION", full_fraction)
    torch.manual_seed(3)
    model = _randomize_batch_norm(StridedNet())
    shape = (3, 29, 26)  # odd and even sides: the strided convs' maps end on a half-read row or column
    regions = _every_window(shape[1:], window)
    top, left, size = rectangle_boxes(regions)
    engine = incremental_model(model, shape, size)
    assert engine is not None
    cropped = {name for name, plan in engine.plans.items() if plan.mode == "crop"}
    assert {"stem_0", "dw1_0", "dw2_0", "pw2_0", "grouped_0"} <= cropped  # through strides 2 and groups
    assert full_fraction is None or {"short", "add_1", "even"} <= cropped
    x, fill = torch.rand(2, *shape), torch.rand(1, shape[0], 1, 1)
    clean = engine.clean(x)
    image = torch.arange(len(x)).repeat_interleave(len(regions))
    r = torch.arange(len(regions)).repeat(len(x))
    ours = torch.cat([
        engine.forward(clean, image[s], top[r[s]], left[r[s]], fill.expand(len(r[s]), -1, *size))
        for s in torch.arange(len(r)).split(500)
    ])  # fmt: skip
    reference = _occluded_outputs(model, x, regions, fill)
    # bound: the same logits summed in another order: sqrt(A) * eps32 * max(1, max|z|) (module comment)
    bound = math.sqrt(PATH_TERMS["strided"]) * EPS32 * max(1.0, float(reference.abs().max()))
    assert (ours - reference).abs().max() < bound
    assert (reference - reference.mean(0)).abs().max() > 100 * bound  # the windows change the logits


def test_occlusion_through_strided_convs_equals_captum():
    captum_attr = pytest.importorskip("captum.attr", reason="Captum is a test dependency (reference implementation)")
    torch.manual_seed(4)
    model = _randomize_batch_norm(StridedNet())
    x, y = torch.rand(2, 3, 29, 26), torch.tensor([1, 3])
    engine = cached_incremental_model(model, (3, 29, 26), (5, 5))
    assert engine is not None and engine.plans["dw2_0"].mode == "crop"
    ours = Occlusion(window=5, stride=3, output="logit")(model, x, y)  # (29 - 5) / 3 and (26 - 5) / 3: windows tile
    ref = captum_attr.Occlusion(lambda inp: model(inp)).attribute(
        x, sliding_window_shapes=(3, 5, 5), strides=(3, 3, 3), baselines=0.0, target=y, perturbations_per_eval=64
    )[:, 0]
    with torch.no_grad():
        z_max = float(model(torch.cat([x, torch.zeros_like(x)])).abs().max())
    assert ref.abs().max() > 0.05  # the windows matter: the comparison is not between zeros
    # bound: each drop is a difference of two logits, each off by sqrt(A) * eps32 * max(1, max|z|); a pixel's value
    # is the mean of <= 4 drops
    assert (ours - ref).abs().max() < 2 * math.sqrt(PATH_TERMS["strided"]) * EPS32 * max(1.0, z_max)


def test_occlusion_drops_incremental_equals_whole_images():
    torch.manual_seed(1)
    model = _randomize_batch_norm(Normalized(resnet20(), *NORMALIZATIONS["cifar10"]))
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 4, 9])
    regions = grid_regions(32, 32, 4, 2)
    base = torch.rand(3, 3, 32, 32)
    with torch.no_grad():  # the logits' scale: clean, random-fill and zero-fill images (the occluded ones mix them)
        z_max = float(model(torch.cat([x, base, torch.zeros_like(x)])).abs().max())
    for baseline in (0.0, base):
        # logit drops: this random network's softmax saturates, its probability drops are ~0
        fast = occlusion_drops(model, x, y, regions, baseline, batch_size=64, output="logit")
        whole = occlusion_drops(model, x, y, regions, baseline, batch_size=64, output="logit", incremental=False)
        assert fast.abs().max() > 0.1  # the windows matter: the comparison is not between zeros
        # bound: a drop is a difference of two logits (|z| ~ 50 >> |drop| ~ 2), each off by sqrt(A) eps32 max|z|
        assert (fast - whole).abs().max() < 2 * math.sqrt(PATH_TERMS["resnet20"]) * EPS32 * max(1.0, z_max)


def test_untraceable_model_falls_back_to_whole_images():
    model = UntraceableNet().eval()
    assert incremental_model(model, (1, 12, 12), (4, 4)) is None
    x, y = torch.rand(2, 1, 12, 12), torch.tensor([0, 2])
    regions = grid_regions(12, 12, 4, 2)
    ours = Occlusion(window=4, stride=2, output="logit")(model, x, y)
    whole = regions_to_pixels(occlusion_drops(model, x, y, regions, output="logit", incremental=False), regions)
    # bound: no engine, so the same whole-image passes as `whole`; only the averaging of <= 4 overlapping drops
    # (|drop| < 0.1) may round differently: 4 * 6e-8 * 0.1 << 1e-6
    assert whole.abs().max() > 1e-3 and torch.allclose(ours, whole, atol=1e-6)


def test_engine_that_disagrees_with_the_model_is_not_used(monkeypatch):
    """The first batch is checked against the model's own forward pass; a wrong engine is dropped."""
    model = _randomize_batch_norm(InPlaceNet())
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([1, 3])
    regions = grid_regions(16, 16, 4, 2)
    whole = occlusion_drops(model, x, y, regions, incremental=False)
    real = incremental_model

    calls = []

    def broken(*args, **kwargs):
        engine = real(*args, **kwargs)
        forward = engine.forward

        def wrong(*a, **k):
            calls.append(1)
            return forward(*a, **k) * 1.5  # changes every softmax

        engine.forward = wrong  # type: ignore[method-assign]
        return engine

    monkeypatch.setattr(occlusion_module, "cached_incremental_model", broken)
    # bound: after the check the same whole-image passes as `whole` run, so the drops agree to rounding (probability
    # drops, |z| < 1 here: sqrt(683) eps32 + (5 classes + 3) eps32 = 4e-6, as in tests/test_maps.py); the broken
    # engine's logits * 1.5 would move them by ~1e-2
    assert (occlusion_drops(model, x, y, regions) - whole).abs().max() < 1e-5
    assert calls == [1]  # the engine ran once (the checked batch) and was then dropped


def test_rectangle_boxes():
    regions = grid_regions(10, 12, 4, 3)
    top, left, size = rectangle_boxes(regions)
    assert size == (4, 4)
    for k in range(len(regions)):
        expected = torch.zeros(10, 12, dtype=torch.bool)
        expected[top[k] : top[k] + 4, left[k] : left[k] + 4] = True
        assert torch.equal(regions[k], expected)
    holed = regions.clone()
    holed[0, 1, 1] = False
    assert rectangle_boxes(holed) is None
    two_blocks = torch.zeros(1, 10, 12, dtype=torch.bool)
    two_blocks[0, 0:2, 0:2] = two_blocks[0, 4:6, 0:2] = True  # same rows and columns count, not contiguous
    assert rectangle_boxes(two_blocks) is None
    assert rectangle_boxes(torch.zeros(2, 5, 5, dtype=torch.bool)) is None


def test_cached_engine_follows_the_weights():
    torch.manual_seed(2)
    model = _randomize_batch_norm(InPlaceNet())
    first = cached_incremental_model(model, (3, 16, 16), (4, 4))
    assert first is not None and cached_incremental_model(model, (3, 16, 16), (4, 4)) is first
    assert cached_incremental_model(model, (3, 16, 16), (3, 3)) is not first  # another box
    second = cached_incremental_model(model, (3, 16, 16), (4, 4))
    with torch.no_grad():
        model.conv1.weight.mul_(2.0)  # an in-place update, as an optimizer step makes
    assert cached_incremental_model(model, (3, 16, 16), (4, 4)) is not second
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    regions = grid_regions(16, 16, 4, 2)
    fresh = occlusion_drops(model, x, y, regions, output="logit")
    whole = occlusion_drops(model, x, y, regions, output="logit", incremental=False)
    with torch.no_grad():
        z_max = float(model(torch.cat([x, torch.zeros_like(x)])).abs().max())
    assert whole.abs().max() > 1e-3  # the windows matter
    # bound: two logits per drop, each off by sqrt(A) * eps32 * max(1, max|z|); stale weights (conv1 x 2) would
    # move them by O(|z|)
    assert (fresh - whole).abs().max() < 2 * math.sqrt(PATH_TERMS["inplace"]) * EPS32 * max(1.0, z_max)
