"""The attack suite, the adaptive variants (straight-through, smooth surrogates) and the sanity verdicts."""

from __future__ import annotations

import pytest
import torch

from roiroa.attacks.suite import (
    AttackSuite,
    budget_of,
    default_suite_specs,
    describe_budget,
    quick_suite_specs,
    suite_with_eps,
)
from roiroa.defence.adaptive import StraightThrough, box_mean, soft_bit_depth
from roiroa.defence.baselines import BitDepth, MedianSmoothing, Preprocessed, bit_depth
from roiroa.defence.neutralizer import Neutralized
from roiroa.defence.scopes import FixedMask
from roiroa.errors import InputError
from roiroa.evaluate.config import Config, default_evaluation_attacks, quick, suite_name
from roiroa.evaluate.defend import pareto_front
from roiroa.evaluate.grid import Cell, CellResult, Defence, grid_flags
from roiroa.evaluate.sanity import convergence_entries, masking_verdicts, stronger_spec, worst_verdicts


def test_suite_runs_every_attack_and_takes_the_worst_case(rgb_model, rgb_batch):
    x, y = rgb_batch
    specs = ({"name": "fgsm", "eps": 0.05}, {"name": "pgd-linf", "label": "pgd", "eps": 0.3, "steps": 5})
    torch.manual_seed(0)
    result = AttackSuite("custom", specs).run(rgb_model, x, y)
    assert set(result.robust) == {"fgsm", "pgd"}
    assert torch.equal(result.worst, result.robust["fgsm"] & result.robust["pgd"])
    assert [b["label"] for b in result.budget] == ["fgsm", "pgd"] and result.budget[1]["steps"] == 5
    with pytest.raises(InputError, match="share a label"):
        AttackSuite("custom", ({"name": "fgsm"}, {"name": "fgsm"})).labelled()


def test_default_and_quick_suites_state_their_budget():
    budget = AttackSuite("default", default_suite_specs(0.15)).budget()
    assert [b["label"] for b in budget] == ["pgd-ce", "pgd-margin", "apgd-ce", "apgd-dlr", "square"]
    assert budget[1] | {"step_size": 0.01} == budget[1] and budget[1]["loss"] == "margin" and budget[1]["restarts"] == 2
    assert budget[4]["queries"] == 5000 and all(b["eps"] == 0.15 for b in budget)
    words = describe_budget(budget_of("pgd-margin", budget[1] | {"attack": "pgd-linf"}))
    assert words == "pgd-margin: pgd-linf linf eps=0.15, 100 steps x 2 restarts, loss margin, best iterate"
    config = Config()
    assert config.evaluation.attacks == default_evaluation_attacks()
    assert suite_name(config.evaluation.attacks, False) == "default"
    small = quick(config).evaluation.attacks
    assert small == quick_suite_specs(None) and suite_name(small, True) == "quick"
    # the budget is left open in the config and chosen from the data; the chosen suite keeps its name
    assert all("eps" not in a and "step_size" not in a for a in config.evaluation.attacks)
    assert suite_with_eps(config.evaluation.attacks, 0.03) == default_suite_specs(0.03)
    assert suite_with_eps(small, 0.03) == quick_suite_specs(0.03) and suite_with_eps(({"name": "fgsm"},), 0.1) is None
    assert suite_name(default_suite_specs(0.03), False) == "default"
    assert suite_name(quick_suite_specs(0.03), True) == "quick"
    assert suite_name(({"name": "fgsm"},), False) == "custom"


def test_straight_through_forward_is_the_defence_backward_the_identity(rgb_model, rgb_batch):
    x, _ = rgb_batch
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:8, 4:8] = True
    defended = Neutralized(rgb_model, FixedMask(mask))
    straight = StraightThrough(defended)
    assert torch.equal(straight(x), defended(x))

    def grad(model):
        xr = x.clone().requires_grad_(True)
        model(xr).sum().backward()
        return xr.grad

    exact, through = grad(defended), grad(straight)
    assert (exact[..., 4:8, 4:8] == 0).all()  # the zero fill: nothing reaches the blocked positions
    assert (through[..., 4:8, 4:8] != 0).any()
    # elsewhere the same: f's gradient at N(x), by two routes (float32 rounding of the blend only)
    assert torch.allclose(exact[..., :4, :], through[..., :4, :], atol=1e-6)


def test_smooth_surrogates():
    x = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    for bits in (1, 3):
        soft = soft_bit_depth(x, bits, temperature=1e-3)
        away = ((x * (2**bits - 1)) % 1 - 0.5).abs() > 0.02  # away from the rounding thresholds
        assert torch.allclose(soft[away], bit_depth(x, bits)[away], atol=1e-6)
    xr = x.clone().requires_grad_(True)
    soft_bit_depth(xr, 1, 0.1).sum().backward()
    assert (xr.grad > 0).all() and xr.grad.argmax() == 50  # steepest at the threshold 0.5
    img = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(box_mean(img, 3)[..., 4, 4], img[..., 3:6, 3:6].mean((-1, -2)), atol=1e-6)
    assert box_mean(img, 3).shape == img.shape and torch.equal(box_mean(img, 1), img)


def test_preprocessed_surrogate_backward(rgb_model, rgb_batch):
    x, _ = rgb_batch
    identity, smooth = Preprocessed(rgb_model, BitDepth(1)), Preprocessed(rgb_model, BitDepth(1), "surrogate")
    assert torch.equal(identity(x), smooth(x))  # the same forward pass: the real transform
    grads = []
    for model in (identity, smooth):
        xr = x.clone().requires_grad_(True)
        model(xr).sum().backward()
        grads.append(xr.grad)
    assert not torch.allclose(grads[0], grads[1])
    assert Preprocessed(rgb_model, MedianSmoothing(3), "surrogate")(x).shape == (6, 5)
    with pytest.raises(InputError, match="backward must be"):
        Preprocessed(rgb_model, BitDepth(1), "sideways")


def _result(defence, setting, attack, flags, variant=None):
    cell = Cell(defence, setting, attack, variant)
    t = torch.tensor(flags, dtype=torch.bool)
    return cell, CellResult(cell, t, torch.full((len(t),), float("nan")), torch.full((len(t),), float("nan")))


def test_flags_and_verdicts_on_hand_made_cells():
    n = 40
    robust = [True] * 30 + [False] * 10
    weak = [True] * 38 + [False] * 2  # the adaptive attack through the defence breaks only 2
    results = dict(
        [
            _result("d", "clean", None, [True] * n),
            _result("d", "adaptive", "pgd", weak),
            _result("d", "adaptive", "pgd", weak[::-1], "straight-through"),
            _result("d", "non-adaptive", "pgd", robust),  # the transfer attack breaks 10: masking
            _result("d", "gradient-free", "square", [True] * n),
        ]
    )
    flags = grid_flags(results)
    assert set(flags) == {
        "d|clean|none",
        "d|adaptive|pgd",
        "d|adaptive|pgd[straight-through]",
        "d|non-adaptive|pgd",
        "d|gradient-free|square",
        "d|worst-case|all",
    }
    assert int(flags["d|worst-case|all"].sum()) == 28  # broken: 0, 1 (the variant) and 30-39 (transfer, pgd)
    defence = Defence("d", "scope", "", torch.nn.Identity(), torch.nn.Identity(), "exact", "k")
    (masking,) = masking_verdicts([defence], results)
    assert not masking.passed and "pgd (non-adaptive) 75.0%" in masking.detail
    (worst,) = worst_verdicts([defence], results)
    assert worst.passed and "worst 70.0%" in worst.detail
    assert pareto_front([(0.9, 0.1), (0.8, 0.3), (0.7, 0.2)]) == [True, True, False]


def test_masking_verdict_flags_square_breaking_what_the_gradient_attacks_left():
    n = 100
    gradient = [True] * 60 + [False] * 40  # the gradient attacks leave 60 images
    defence = Defence("d", "scope", "", torch.nn.Identity(), torch.nn.Identity(), "exact", "k")

    def verdict(square):
        results = dict(
            [
                _result("d", "clean", None, [True] * n),
                _result("d", "adaptive", "pgd", gradient),
                _result("d", "non-adaptive", "pgd", [True] * n),
                _result("d", "gradient-free", "square", square),
            ]
        )
        (masking,) = masking_verdicts([defence], results)
        return masking

    stronger = verdict([False] * 20 + [True] * 40 + [False] * 40)  # 20 of the 60 images PGD left
    assert not stronger.passed and "square broke 20 of the 60 images" in stronger.detail
    assert "from 60.0% to 40.0%" in stronger.detail
    same = verdict([True] * 60 + [False] * 40)  # only images PGD broke too: no masking
    assert same.passed and "square broke 0 of the 60 images" in same.detail
    few = verdict([False] * 3 + [True] * 57 + [False] * 40)  # 57% is inside the interval of 60% at n = 100
    assert few.passed and "broke 3 of the 60" in few.detail


def test_convergence_check_doubles_steps_and_restarts():
    spec = {"name": "pgd-linf", "label": "pgd", "eps": 0.1, "steps": 10}
    assert stronger_spec(spec | {"restarts": 1}) == spec | {"restarts": 2, "steps": 20, "label": "pgd-x4"}
    run, more = convergence_entries(spec, 64)
    assert (run.params["steps"], run.params["restarts"]) == (10, 1)
    assert (more.params["steps"], more.params["restarts"], more.label) == (20, 2, "pgd-x4")
    square, square_more = convergence_entries({"name": "square", "queries": 10}, 64)
    assert square_more.params["queries"] == 20 and square_more.params["restarts"] == 2
