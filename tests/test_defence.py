"""The neutralization defence: neutralize, Neutralizer, fills, GlobalMask, random masks, evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roiroa.attacks import FGSM, AttackResult, LinfPGD
from roiroa.defence import GlobalMask, Neutralizer, fill_value, neutralize, random_mask_like
from roiroa.errors import InputError
from roiroa.evaluate.robustness import correct, evaluate_defence, oracle_analysis
from roiroa.maps import Saliency, attack_vulnerability
from roiroa.regions import top_q_mask

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


# --------------------------------------------------------------------------------------------- Neutralizer


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 30, 4))

    def forward(self, x):
        return self.net(x)


def test_neutralizer_forward_and_gradient():
    model = SmallNet().eval()
    m = central_mask()
    fill = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    defended = Neutralizer(model, m, fill)
    x = images().requires_grad_(True)
    out = defended(x)
    with torch.no_grad():
        ref = model(neutralize(x, m, fill))
    assert torch.equal(out.detach(), ref)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    inside = m[None, None].expand_as(x)
    assert (grad[inside] == 0).all()
    assert (grad[~inside] != 0).float().mean() > 0.5


def test_neutralizer_buffers_move_with_to():
    model = SmallNet().eval()
    defended = Neutralizer(model, central_mask()[None, None], 0.5)
    buffers = dict(defended.named_buffers())
    assert {"mask", "fill"} <= set(buffers)
    assert buffers["mask"].shape == (1, 1, 6, 5) and buffers["fill"].shape == (1, 1, 1, 1)
    moved = defended.to(torch.float64)
    assert moved.mask.dtype == torch.float64 and moved.fill.dtype == torch.float64
    assert "mask" in moved.state_dict() and "fill" in moved.state_dict()
    moved = moved.to("meta")
    assert moved.mask.device.type == "meta" and moved.fill.device.type == "meta"


def test_neutralizer_rejects_per_image_masks():
    with pytest.raises(InputError):
        Neutralizer(SmallNet(), torch.zeros(2, 6, 5, dtype=torch.bool))
    with pytest.raises(InputError):
        Neutralizer(SmallNet(), torch.zeros(2, 1, 6, 5))


def test_fill_value():
    x = images(n=4, c=3)
    zero = fill_value("zero", x)
    assert zero.shape == (1, 3, 1, 1) and (zero == 0).all()
    mean = fill_value("mean", x)
    assert mean.shape == (1, 3, 1, 1)
    for c in range(3):
        assert mean[0, c, 0, 0] == pytest.approx(float(x[:, c].mean()), abs=1e-6)
    with pytest.raises(InputError):
        fill_value("median", x)  # type: ignore[arg-type]


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
    gm = GlobalMask(q_roi=0.5, q_roa=0.5).fit(left_half_importance(5), band_vulnerability(5))
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
    defended = gm.wrap(nn.Identity(), 0.0)
    assert isinstance(defended, Neutralizer)
    assert torch.equal(defended.mask[0, 0].bool(), expected_mask)


def test_global_mask_unit_mean_scaling():
    """Two images want the left half, one image with a huge scale wants the right half: the left wins."""
    imp = torch.cat([left_half_importance(2), left_half_importance(1, scale=1e6).flip(-1)])
    vul = band_vulnerability(3)
    vul[2] *= 1e6
    gm = GlobalMask(q_roi=0.5, q_roa=0.5).fit(imp, vul)
    assert gm.roi_[:, :4].all() and not gm.roi_[:, 4:].any()
    assert torch.equal(gm.mask_[:, 4:6], torch.ones(8, 2, dtype=torch.bool))
    assert gm.mask_.sum() == 16
    # Without unit-mean scaling the plain mean would pick the right half.
    assert top_q_mask(imp.mean(0)[None], 0.5)[0][:, 4:].all()


def test_global_mask_errors():
    with pytest.raises(InputError):
        GlobalMask().wrap(nn.Identity())
    for q in (0.0, 1.5, -0.2):
        with pytest.raises(InputError):
            GlobalMask(q_roi=q)
        with pytest.raises(InputError):
            GlobalMask(q_roa=q)
    with pytest.raises(InputError):
        GlobalMask(method="value")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        GlobalMask().fit(torch.rand(2, 4, 4), torch.rand(2, 4, 5))


def test_global_mask_otsu():
    gm = GlobalMask(method="otsu").fit(left_half_importance(3), band_vulnerability(3))
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


# --------------------------------------------------------------------------------------------- oracle and evaluation


@pytest.fixture(scope="module")
def pgd_result(mnist_model, mnist_batch):
    x, y = mnist_batch
    torch.manual_seed(0)
    attack = LinfPGD(eps=0.15, steps=10)
    return attack, attack.run(mnist_model, x, y)


def test_oracle_analysis(mnist_model, mnist_batch, pgd_result):
    x, y = mnist_batch
    _, result = pgd_result
    roi = top_q_mask(Saliency()(mnist_model, x, y), 0.2)
    vul = attack_vulnerability(x, result, "linf")
    undefended = float((correct(mnist_model, x, y) & correct(mnist_model, result.x_adv, y)).double().mean())
    q_roa = 0.3
    row = oracle_analysis(mnist_model, x, y, result.x_adv, roi, vul, q_roa, 0.0, torch.Generator().manual_seed(0))
    assert set(row) == {"area", "accuracy", "clean_accuracy", "random_mask_accuracy"}
    assert row["accuracy"] > undefended
    assert 0 < row["area"] <= q_roa + 1e-9
    # area = mean |S_A| / |P|, with S_A = RoA minus RoI
    s_a = top_q_mask(vul, q_roa) & ~roi
    assert row["area"] == pytest.approx(float(s_a.double().mean()))
    assert row["clean_accuracy"] >= 0.9
    assert all(0.0 <= v <= 1.0 for v in row.values())


def test_evaluate_defence(mnist_model, mnist_splits, mnist_batch, pgd_result):
    x, y = mnist_batch
    attack, result = pgd_result
    fit = mnist_splits.fit
    xf, yf = fit.images[:64], fit.labels[:64]
    fit_vul = attack_vulnerability(xf, attack.run(mnist_model, xf, yf), "linf")
    gm = GlobalMask(q_roi=0.2, q_roa=0.2).fit(Saliency()(mnist_model, xf, yf), fit_vul)
    defended = gm.wrap(mnist_model, 0.0)
    control = Neutralizer(mnist_model, random_mask_like(gm.mask_, torch.Generator().manual_seed(0)), 0.0)
    torch.manual_seed(1)
    rows = evaluate_defence(defended, control, x, y, {"pgd": attack}, {"pgd": result})
    assert len(rows) == 1
    row = rows[0]
    assert row["attack"] == "pgd"
    numeric = {k: v for k, v in row.items() if k != "attack"}
    assert set(numeric) == {
        "area",
        "clean_accuracy",
        "nonadaptive_accuracy",
        "adaptive_accuracy",
        "random_mask_clean_accuracy",
        "random_mask_accuracy",
        "random_mask_adaptive_accuracy",
    }
    assert all(0.0 <= v <= 1.0 for v in numeric.values())
    assert row["area"] == pytest.approx(gm.area_)
    assert row["adaptive_accuracy"] <= row["nonadaptive_accuracy"] + 0.05
    assert row["nonadaptive_accuracy"] <= row["clean_accuracy"]
    assert row["clean_accuracy"] == pytest.approx(float(correct(defended, x, y).double().mean()))
    # Two attacks give one row each, in order.
    sub = AttackResult(result.x_adv[:16], result.grad_map[:16])
    fgsm = FGSM(eps=0.15)
    rows2 = evaluate_defence(
        defended,
        control,
        x[:16],
        y[:16],
        {"a": attack, "b": fgsm},
        {"a": sub, "b": fgsm.run(mnist_model, x[:16], y[:16])},
    )
    assert [r["attack"] for r in rows2] == ["a", "b"]
