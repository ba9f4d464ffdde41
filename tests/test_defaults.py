"""Defaults that fit the data: budget, fill and occlusion output chosen only where the config leaves them open."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from roiroa.attacks.suite import default_suite_specs
from roiroa.errors import InputError
from roiroa.evaluate.config import Config, suite_name
from roiroa.evaluate.defaults import GREY_EPS, RGB_EPS, choose_defaults, choose_eps, choose_fill, open_attacks
from roiroa.evaluate.validate import config_from_dict


def test_grey_images_keep_the_mnist_budget_and_colour_images_get_8_255() -> None:
    grey, rgb = torch.rand(4, 1, 28, 28).round(), torch.rand(4, 3, 32, 32)
    assert choose_eps(grey)[0] == {"linf": 0.15, "l2": 2.0}
    assert choose_eps(rgb)[0] == {"linf": 8 / 255, "l2": 0.5}
    assert choose_fill(grey)[0] == "zero" and choose_fill(rgb)[0] == "mean"


def test_only_open_attack_budgets_are_chosen() -> None:
    specs = ({"name": "pgd-linf", "steps": 5}, {"name": "pgd-l2"}, {"name": "fgsm", "eps": 0.3}, {"name": "cw-l2"})
    out = open_attacks(specs, RGB_EPS)
    assert out[0]["eps"] == 8 / 255 and out[1]["eps"] == 0.5  # each norm its own budget
    assert out[2]["eps"] == 0.3  # the user's value is kept
    assert "eps" not in out[3]  # an attack without a budget


class Confident(nn.Module):
    """A linear model with huge logits on colour images: softmax probabilities are exactly 0 or 1."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 2)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.tensor([1e4, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_choose_defaults_on_colour_images_with_a_saturated_model() -> None:
    x, y = torch.rand(6, 3, 8, 8), torch.zeros(6, dtype=torch.long)
    config = config_from_dict({"maps": {"window": 2, "stride": 2}})
    resolved, chosen = choose_defaults(config, x, y, Confident())
    assert set(chosen) == {"eps", "budgets", "fill", "occlusion_output", "suite"}  # suite: 2 classes, see below
    assert all(c["reason"] for c in chosen.values())
    assert resolved.defence.fill == "mean" and resolved.maps.importance_params == {"output": "logit"}
    assert chosen["occlusion_output"]["value"] == "logit"  # every probability-drop map is all zero
    assert {a.get("eps") for a in resolved.attacks} == {8 / 255, 0.5}
    e = 8 / 255  # the budgets that follow eps: the sanity grid around it, adversarial training, the probe
    assert resolved.evaluation.sanity_eps == pytest.approx((e / 3, 2 * e / 3, e, 4 * e / 3, 2 * e, 1.0), abs=1e-6)
    assert resolved.defence.adv_eps == pytest.approx(e)
    probes = [d["probe_eps"] for d in resolved.evaluation.defences if isinstance(d, dict) and "probe_eps" in d]
    assert probes == pytest.approx([2 * e / 3] * 2, abs=1e-6)  # both per-input scopes
    square = [a["eps"] for a in resolved.patches.attacks if a["name"] == "pgd-square"]
    assert square == pytest.approx([2 * e], abs=1e-6)  # PGD inside the patch square: twice the budget


def test_the_eps_relative_budgets_on_mnist_are_the_values_always_used(mnist_model, mnist_batch) -> None:
    x, y = mnist_batch
    resolved, _ = choose_defaults(Config(), x, y, mnist_model)
    assert resolved.evaluation.sanity_eps == (0.05, 0.1, 0.15, 0.2, 0.3, 1.0)
    assert resolved.defence.adv_eps == 0.15
    assert [d.get("probe_eps") for d in resolved.evaluation.defences if isinstance(d, dict)][:2] == [0.1, 0.1]
    assert [a["eps"] for a in resolved.patches.attacks if a["name"] == "pgd-square"] == [0.3]
    quick = choose_defaults(dataclasses.replace(Config(), quick=True), x, y, mnist_model)[0]
    assert quick.evaluation.sanity_eps == (0.05, 0.2, 1.0)
    mine = config_from_dict({"evaluation": {"sanity_eps": [0.3, 1.0]}, "defence": {"adv_eps": 0.2}})
    kept, chosen = choose_defaults(mine, x, y, mnist_model)
    assert kept.evaluation.sanity_eps == (0.3, 1.0) and kept.defence.adv_eps == 0.2  # a written value wins


def test_mnist_defaults_are_kept_and_explicit_values_win(mnist_model, mnist_batch) -> None:
    x, y = mnist_batch
    resolved, chosen = choose_defaults(Config(), x, y, mnist_model)
    assert resolved.defence.fill == "zero" and resolved.maps.importance_params == {}
    assert [a["eps"] for a in resolved.attacks] == [0.15, 0.15, 2.0]
    assert [a["eps"] for a in resolved.evaluation.attacks] == [0.15] * 5  # the default suite at the MNIST budget
    assert resolved.evaluation.attacks[0]["step_size"] == pytest.approx(0.01)
    explicit = dataclasses.replace(
        Config(),
        defence=dataclasses.replace(Config().defence, fill="blur"),
        maps=dataclasses.replace(Config().maps, importance_params={"output": "probability"}),
    )
    rgb = torch.rand(4, 3, 28, 28)
    kept, chosen = choose_defaults(explicit, rgb, y[:4], nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10)))
    assert kept.defence.fill == "blur" and "fill" not in chosen and "occlusion_output" not in chosen
    assert GREY_EPS != chosen["eps"]["value"]


def test_a_two_class_model_gets_the_default_suite_without_apgd_dlr() -> None:
    x, y = torch.rand(6, 3, 8, 8), torch.zeros(6, dtype=torch.long)
    config = config_from_dict({"maps": {"window": 2, "stride": 2}})
    resolved, chosen = choose_defaults(config, x, y, Confident())
    names = [a["name"] for a in resolved.evaluation.attacks]
    assert names == ["pgd-linf", "pgd-linf", "apgd-ce", "square"]  # DLR needs a third logit; the margin PGD stays
    assert chosen["suite"]["value"] == "default without apgd-dlr" and "2 classes" in chosen["suite"]["reason"]
    assert suite_name(resolved.evaluation.attacks, quick=False) == "default"
    ten = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    resolved, chosen = choose_defaults(config, x, y, ten)
    assert resolved.evaluation.attacks == default_suite_specs(8 / 255) and "suite" not in chosen


def test_a_listed_dlr_attack_on_a_two_class_model_is_refused_before_any_work() -> None:
    x, y = torch.rand(6, 3, 8, 8), torch.zeros(6, dtype=torch.long)
    config = config_from_dict({"evaluation": {"attacks": [{"name": "apgd-dlr", "steps": 5}]}})
    with pytest.raises(InputError, match="'apgd-dlr' uses the DLR loss.*the model has 2"):
        choose_defaults(config, x, y, Confident())
    config = config_from_dict({"attacks": [{"name": "pgd-linf", "steps": 5, "loss": "dlr"}]})
    with pytest.raises(InputError, match="needs at least 3 classes"):
        choose_defaults(config, x, y, Confident())
