"""The neutralization defence: neutralize, Neutralized, GlobalMask, random masks, the oracle, and the grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roiroa.attacks import FGSM, LinfPGD
from roiroa.cache import StageCache, model_hash
from roiroa.defence import EqualAreaControl, FitData, FixedMask, GlobalMask, Neutralized, neutralize, random_mask_like
from roiroa.defence.fills import ZeroFill
from roiroa.errors import InputError
from roiroa.evaluate.analysis import correct, oracle_masks, oracle_rows
from roiroa.evaluate.attacking import attack_entries
from roiroa.evaluate.config import Config
from roiroa.evaluate.grid import Cell, Defence, GridContext, evaluate_grid, standard_cells, table_rows
from roiroa.evaluate.maps_stage import MapSet, attack_images
from roiroa.evaluate.tasks import Task, chunks
from roiroa.maps import Saliency, attack_vulnerability, record_attack
from roiroa.regions import isolate, top_q_mask

# --------------------------------------------------------------------------------------------- neutralize


def images(n=3, c=3, h=6, w=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=gen) * 0.8 + 0.1  # never exactly a fill value


def central_mask(h=6, w=5):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[1:4, 2:4] = True
    m[5, 0] = True
    return m


@pytest.mark.parametrize("shape", ["hw", "nhw", "n1hw", "1hw", "11hw"])
@pytest.mark.parametrize("fill", [0.0, 0.75, "tensor"])
def test_neutralize_changes_exactly_the_masked_pixels(shape, fill):
    x = images()
    m = central_mask()
    mask = {
        "hw": m,
        "nhw": m[None].expand(3, -1, -1),
        "n1hw": m[None, None].expand(3, 1, -1, -1).float(),
        "1hw": m[None],
        "11hw": m[None, None],
    }[shape]
    v = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1) if fill == "tensor" else fill
    out = neutralize(x, mask, v)
    assert out.shape == x.shape and out.dtype == x.dtype
    inside = m[None, None].expand_as(x)
    assert torch.equal(out[~inside], x[~inside])  # bit-identical outside
    expected = torch.as_tensor(v, dtype=x.dtype).expand_as(x)
    assert torch.equal(out[inside], expected[inside])
    assert (out != x).sum() == inside.sum()  # every channel of every masked pixel changed
    assert torch.equal(neutralize(out, mask, v), out)  # idempotent


def test_neutralize_per_image_masks():
    x = images()
    masks = torch.zeros(3, 6, 5, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 2:4, :] = True
    out = neutralize(x, masks, 0.0)
    for i in range(3):
        sel = masks[i][None].expand(3, -1, -1)
        assert (out[i][sel] == 0).all()
        assert torch.equal(out[i][~sel], x[i][~sel])
    assert torch.equal(out[2], x[2])


def test_neutralize_bad_mask_shape():
    with pytest.raises(InputError):
        neutralize(images(), torch.zeros(3, 2, 6, 5), 0.0)
    with pytest.raises(InputError):
        neutralize(images(), torch.zeros(5), 0.0)


# --------------------------------------------------------------------------------------------- Neutralized


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 30, 4))

    def forward(self, x):
        return self.net(x)


class ConstantFill:
    """A user's fill: any callable fill(x, mask) -> v."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v

    def __call__(self, x, mask=None):
        return self.v.to(x.dtype)


def test_neutralized_forward_and_gradient():
    model = SmallNet().eval()
    m = central_mask()
    fill = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    defended = Neutralized(model, FixedMask(m), ConstantFill(fill))
    x = images().requires_grad_(True)
    out = defended(x)
    with torch.no_grad():
        ref = model(neutralize(x, m, fill))
    assert torch.equal(out.detach(), ref)
    logits, masks = defended.decide(x)
    assert torch.equal(logits.detach(), ref) and torch.equal(masks, m[None].expand(3, -1, -1))
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    inside = m[None, None].expand_as(x)
    assert (grad[inside] == 0).all()  # the mask is held fixed, the fill is a constant
    assert (grad[~inside] != 0).float().mean() > 0.5


def test_neutralized_dilation_and_default_fill():
    model = SmallNet().eval()
    m = torch.zeros(6, 5, dtype=torch.bool)
    m[2, 2] = True
    defended = Neutralized(model, FixedMask(m), dilation=1)
    x = images()
    blocked = defended.masks(x)
    assert blocked.shape == (3, 6, 5) and int(blocked[0].sum()) == 9 and blocked[0, 1:4, 1:4].all()
    assert isinstance(defended.fill, ZeroFill)
    with pytest.raises(InputError):
        Neutralized(model, FixedMask(m), dilation=-1)


# --------------------------------------------------------------------------------------------- GlobalMask


def left_half_importance(n, h=8, w=8, scale=1.0):
    imp = torch.zeros(n, h, w)
    imp[:, :, : w // 2] = scale
    return imp


def band_vulnerability(n, h=8, w=8):
    vul = torch.full((n, h, w), 0.1)
    vul[:, :, 2:6] = 3.0  # a central vertical band, columns 2..5
    return vul


def test_global_mask_exact_set():
    gm = GlobalMask(q_roi=0.5, q_roa=0.5).fit(FitData.of_maps(left_half_importance(5), band_vulnerability(5)))
    expected_roi = torch.zeros(8, 8, dtype=torch.bool)
    expected_roi[:, :4] = True
    expected_roa = torch.zeros(8, 8, dtype=torch.bool)
    expected_roa[:, 2:6] = True
    expected_mask = torch.zeros(8, 8, dtype=torch.bool)
    expected_mask[:, 4:6] = True
    assert torch.equal(gm.roi_, expected_roi)
    assert torch.equal(gm.roa_, expected_roa)
    assert torch.equal(gm.mask_, expected_mask)
    assert gm.area_ == pytest.approx(16 / 64)
    assert gm.importance_.shape == (8, 8) and gm.vulnerability_.shape == (8, 8)
    defended = Neutralized(nn.Identity(), gm)
    assert torch.equal(defended.masks(torch.rand(2, 1, 8, 8))[1], expected_mask)


def test_global_mask_unit_mean_scaling():
    """Two images want the left half, one image with a huge scale wants the right half: the left wins."""
    imp = torch.cat([left_half_importance(2), left_half_importance(1, scale=1e6).flip(-1)])
    vul = band_vulnerability(3)
    vul[2] *= 1e6
    gm = GlobalMask(q_roi=0.5, q_roa=0.5).fit(FitData.of_maps(imp, vul))
    assert gm.roi_[:, :4].all() and not gm.roi_[:, 4:].any()
    assert torch.equal(gm.mask_[:, 4:6], torch.ones(8, 2, dtype=torch.bool))
    assert gm.mask_.sum() == 16
    # Without unit-mean scaling the plain mean would pick the right half.
    assert top_q_mask(imp.mean(0)[None], 0.5)[0][:, 4:].all()


def test_global_mask_errors():
    with pytest.raises(InputError):
        GlobalMask().masks(nn.Identity(), torch.rand(1, 1, 4, 4))  # not fitted
    for q in (0.0, 1.5, -0.2):
        with pytest.raises(InputError):
            GlobalMask(q_roi=q)
        with pytest.raises(InputError):
            GlobalMask(q_roa=q)
    with pytest.raises(InputError):
        GlobalMask(threshold="value")
    with pytest.raises(InputError):
        FitData.of_maps(torch.rand(2, 4, 4), torch.rand(2, 4, 5))


def test_global_mask_otsu():
    gm = GlobalMask(threshold="otsu").fit(FitData.of_maps(left_half_importance(3), band_vulnerability(3)))
    assert gm.roi_[:, :4].all() and not gm.roi_[:, 4:].any()
    assert gm.roa_[:, 2:6].all() and gm.roa_.sum() == 32
    assert gm.mask_.sum() == 16


# --------------------------------------------------------------------------------------------- random masks


def test_random_mask_like():
    base = torch.zeros(4, 7, 7, dtype=torch.bool)
    base[0, :3] = True
    base[1, 0, 0] = True
    base[3] = True
    out = random_mask_like(base, torch.Generator().manual_seed(0))
    assert out.shape == base.shape and out.dtype == torch.bool
    assert torch.equal(out.flatten(1).sum(1), base.flatten(1).sum(1))
    again = random_mask_like(base, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = random_mask_like(base, torch.Generator().manual_seed(1))
    assert not torch.equal(out[0], other[0])

    single = base[0]
    out2 = random_mask_like(single, torch.Generator().manual_seed(5))
    assert out2.shape == (7, 7) and out2.sum() == single.sum()
    assert not torch.equal(out2, single) or single.all()


def test_block_control_is_one_square_of_the_same_area():
    m = torch.zeros(3, 12, 12, dtype=torch.bool)
    m[0, :4, :4] = True  # 16 positions -> a 4x4 square
    m[1, 0, :9] = True  # 9 positions -> a 3x3 square
    control = EqualAreaControl(FixedMask(torch.zeros(12, 12, dtype=torch.bool)), seed=3, shape="block")
    control.scope = type("Given", (), {"masks": lambda self, model, x: m})()
    out = control.masks(nn.Identity(), torch.rand(3, 1, 12, 12))
    assert out.flatten(1).sum(1).tolist() == [16, 9, 0]
    for i, side in ((0, 4), (1, 3)):
        rows, cols = out[i].any(1).nonzero().flatten(), out[i].any(0).nonzero().flatten()
        assert len(rows) == side and len(cols) == side and rows.diff().eq(1).all() and cols.diff().eq(1).all()
    assert torch.equal(out, control.masks(nn.Identity(), torch.rand(3, 1, 12, 12)))  # a function of the input's area


# --------------------------------------------------------------------------------------------- oracle and the grid


@pytest.fixture(scope="module")
def pgd_trace(mnist_model, mnist_batch):
    x, y = mnist_batch
    torch.manual_seed(0)
    return record_attack(LinfPGD(eps=0.15, steps=10), mnist_model, x, y)


def test_oracle_analysis(mnist_model, mnist_batch, pgd_trace):
    """The oracle row, read one chunk of attacked images at a time (chunks of 7), equals the same analysis done
    by hand on the whole batch; and most of PGD's effect lives in S_A, far more than in a random mask."""
    x, y = mnist_batch
    parts = tuple(chunks(x, y, 7))
    calls = torch.tensor([pgd_trace.gradient_calls])
    tasks = tuple(
        Task(
            f"pgd-{i}",
            lambda p=p: {"x_adv": pgd_trace.x_adv[p.where], "gradient": pgd_trace.gradient[p.where]} | {"calls": calls},
        )
        for i, p in enumerate(parts)
    )
    attacked = attack_images(mnist_model, "pgd", parts, tasks, StageCache(None))
    importance = Saliency()(mnist_model, x, y)
    vul = attack_vulnerability(x, pgd_trace, "linf")
    assert torch.equal(attacked.gradient, vul) and torch.equal(attacked.x_adv, pgd_trace.x_adv)
    maps = MapSet(importance, importance, {"pgd": vul}, vul, {"pgd": attacked}, {"pgd": "gradient"}, ())
    config, q_roa = Config(), 0.3
    row = oracle_rows(mnist_model, "m", maps, ZeroFill(), "zero", config, StageCache(None), (q_roa,))[0]
    roi = isolate(importance, config.regions.threshold, config.regions.q_roi)
    s_a = oracle_masks(roi, vul, q_roa)
    assert torch.equal(s_a, top_q_mask(vul, q_roa) & ~roi)  # S_A = RoA minus RoI
    m = s_a[:, None].float()
    by_hand = correct(mnist_model, neutralize(x, m, torch.zeros_like(x)), y)
    by_hand &= correct(mnist_model, neutralize(pgd_trace.x_adv, m, torch.zeros_like(x)), y)
    assert row.accuracy == pytest.approx(float(by_hand.double().mean())) and row.n_images == len(x)
    undefended = float((correct(mnist_model, x, y) & correct(mnist_model, pgd_trace.x_adv, y)).double().mean())
    assert row.accuracy > undefended + 0.3  # most of the attack lives in S_A
    # the random mask of the same area: 0.2 is about 2.5 standard errors of a difference of two rates at n = 64
    assert row.accuracy > row.random_mask_accuracy + 0.2
    assert row.area == pytest.approx(float(s_a.double().mean())) and 0 < row.area <= q_roa
    assert row.clean_accuracy >= 0.9


def test_grid_flags_are_the_defences_decisions(mnist_model, mnist_splits, mnist_batch):
    """Every cell of the grid equals what the defended model decides on images the attack made: recomputed here
    by hand for f, a global mask and its control; worst case is the per-image AND; rows carry Wilson intervals."""
    x, y = mnist_batch
    fit = mnist_splits.fit
    xf, yf = fit.images[:64], fit.labels[:64]
    fgsm = FGSM(eps=0.15)
    fit_vul = attack_vulnerability(xf, record_attack(fgsm, mnist_model, xf, yf), "linf")
    gm = GlobalMask(q_roi=0.2, q_roa=0.2).fit(FitData.of_maps(Saliency()(mnist_model, xf, yf), fit_vul))
    glob = Neutralized(mnist_model, gm)
    control = Neutralized(mnist_model, EqualAreaControl(gm, seed=1))
    defences = [
        Defence("none", "none", "f", mnist_model, mnist_model, "exact", "none"),
        Defence("global", "scope", "", glob, glob, "exact", "g"),
        Defence("random[global]", "control", "", control, control, "exact", "c", "global"),
    ]
    attacks = attack_entries(({"name": "fgsm", "eps": 0.15},), 64)
    context = GridContext(mnist_model, model_hash(mnist_model), StageCache(None), 0)
    results = evaluate_grid(context, defences, attacks, standard_cells(defences, attacks), x, y, chunk_size=40)
    x_f = fgsm(mnist_model, x, y)
    for d in defences:
        clean = correct(d.model, x, y)
        assert torch.equal(results[Cell(d.name, "clean")].correct, clean)
        assert torch.equal(results[Cell(d.name, "non-adaptive", "fgsm")].correct, clean & correct(d.model, x_f, y))
        adaptive = clean & correct(d.model, fgsm(d.attack_model, x, y), y)
        assert torch.equal(results[Cell(d.name, "adaptive", "fgsm")].correct, adaptive)
    area = results[Cell("global", "clean")].area
    assert torch.allclose(area, torch.full_like(area, gm.area_)) and torch.equal(
        results[Cell("random[global]", "clean")].area, area
    )
    rows = {(r.defence, r.setting): r for r in table_rows(defences, attacks, results)}
    worst = (
        results[Cell("global", "non-adaptive", "fgsm")].correct & results[Cell("global", "adaptive", "fgsm")].correct
    )
    assert rows[("global", "worst-case")].correct == int(worst.sum())
    for r in rows.values():
        assert r.ci_low <= r.accuracy <= r.ci_high and r.n_images == len(x)
    assert rows[("none", "clean")].area is None and rows[("global", "clean")].area == pytest.approx(gm.area_)


@pytest.mark.numeric
@pytest.mark.parametrize(("correct", "n"), [(0, 10), (3, 10), (10, 10), (87, 100), (1, 1000), (999, 1000)])
def test_wilson_interval_equals_scipy(correct, n):
    from scipy.stats import binomtest

    from roiroa.evaluate.grid import interval

    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    # bound: the closed form and SciPy's evaluate the same square roots in float64: ~1e-15, not 1e-12
    assert interval(correct, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_equal_area_control_copies_the_area_blocked_after_dilation():
    """A control of a dilated defence blocks as many pixels as the defence blocks (its mask grown), and is not
    grown again: a 4 x 4 block dilated by 2 blocks 64 pixels, so does the control (16 random pixels each grown
    by 2 would block far more)."""
    from roiroa.defence.scopes import FitData, FixedMask
    from roiroa.evaluate.config import Config
    from roiroa.evaluate.defences import BuildContext, DefenceSpec, _neutralized, control_defences

    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[6:10, 6:10] = True
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))
    fit = FitData(model, torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0]), 3)
    ctx = BuildContext(model, "m", fit, "fit", Config())
    spec = DefenceSpec("fixed", "fixed", "scope", dilation=2)
    x = torch.rand(5, 1, 16, 16)
    defended = _neutralized(spec, FixedMask(mask), ctx)[0]
    (control,) = control_defences(spec, FixedMask(mask), ctx, "pixels")
    assert defended.masks(x).sum((1, 2)).tolist() == [64] * 5  # an 8 x 8 square
    assert control.model.masks(x).sum((1, 2)).tolist() == [64] * 5
