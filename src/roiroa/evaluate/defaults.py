"""Defaults that fit the data: the attack budget, the fill and the occlusion output, chosen where the config
leaves them open, with the reason for each.

Open means: an attack spec without 'eps' (the default specs leave it out), ``defence.fill = 'auto'`` (its
default) and, for occlusion, ``maps.importance_params`` without 'output'. A value the user writes is kept.
- eps: grey images (one channel; MNIST-like, pixels mostly near 0 or 1) get the MNIST budget, 0.15 L-inf and
  2.0 L2; colour images get the standard CIFAR/ImageNet budget, 8/255 L-inf and 0.5 L2 (at 0.15 a CIFAR ResNet
  keeps no robust accuracy at all, so the RoA and the oracle would say little).
- fill: 'zero' for grey images (their background is 0); 'mean' (the fitting images' per-channel mean) for colour
  images, where a black square is far from every image and costs clean accuracy by itself.
- budgets that follow eps where left open (None): the sanity check's budgets (eps x 1/3, 2/3, 1, 4/3, 2, and 1.0
  unbounded), adversarial training's eps (eps), the per-input scopes' probe (2/3 eps) and the budget of PGD
  inside a patch square (``pgd-square`` in ``patches.attacks``: 2 eps); on MNIST these are the values the project
  always used (0.05 ... 0.3 and 1.0; 0.15; 0.1; 0.3).
- occlusion output: the softmax probability drop, unless it saturates: when more than 5% of the maps of a sample
  of test images are all zero (a confident model's probability does not move under any one window), 'logit'.
The choices and their reasons are in results.json ('chosen'); one other than the MNIST value is logged (a
warning) at the start of the run, the others at INFO level (--verbose).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from roiroa.attacks import create_attack
from roiroa.attacks.base import attack_parameters
from roiroa.attacks.suite import suite_with_eps, uses_dlr
from roiroa.data.dataset import Images
from roiroa.errors import InputError
from roiroa.evaluate.config import Config
from roiroa.utils import model_device

log = logging.getLogger(__name__)

AUTO = "auto"
GREY_EPS = {"linf": 0.15, "l2": 2.0}
RGB_EPS = {"linf": 8 / 255, "l2": 0.5}
SATURATED = 0.05  # share of all-zero occlusion maps above which the probability drop saturates
PROBE_IMAGES = 32
MNIST_CHOICES: dict[str, tuple[Any, ...]] = {
    "eps": (GREY_EPS,),
    "fill": ("zero",),
    "occlusion_output": ("probability",),
}  # 'budgets' follow eps: said at INFO level, with eps
SANITY_FACTORS = (1 / 3, 2 / 3, 1.0, 4 / 3, 2.0)  # times eps; then 1.0, unbounded
PROBE_FACTOR = 2 / 3  # the per-input scopes' probe attack, times eps
SQUARE_FACTOR = 2.0  # PGD inside a patch square ('pgd-square'), times eps
PROBE_WINDOWS = 20_000  # at most about this many occluded images in the saturation probe (at least 4 images)


def binary_share(images: torch.Tensor) -> float:
    """Share of the pixel values of images: (N, C, H, W) in [0, 1] within 0.1 of 0 or 1."""
    return float(((images < 0.1) | (images > 0.9)).double().mean())


def choose_eps(images: Images) -> tuple[dict[str, float], str]:
    """The L-inf and L2 budgets for images: (N, C, H, W) in [0, 1], and why."""
    c, h, w = images.shape[1:]
    if c == 1:  # image files are decoded to 3 channels: only a tensor gets here
        share = binary_share(images[:])
        return dict(GREY_EPS), f"grey {h}x{w} images, {100 * share:.0f}% of pixels near 0 or 1: the MNIST budget"
    return dict(RGB_EPS), f"{c}-channel {h}x{w} images: the CIFAR/ImageNet budget (MNIST's 0.15 leaves nothing)"


def choose_fill(images: Images) -> tuple[str, str]:
    """'zero' for grey images, 'mean' for colour images, and why."""
    if images.shape[1] == 1:
        return "zero", "grey images: their background is 0"
    return "mean", "colour images: the per-channel mean fill is closer to every image than black"


def open_attacks(specs: tuple[dict[str, Any], ...], eps: dict[str, float]) -> tuple[dict[str, Any], ...]:
    """Attack specs with the budget of their norm where they take 'eps' and leave it out."""
    out = []
    for spec in specs:
        name = spec.get("name")
        if "eps" in spec or not isinstance(name, str) or ":" in name or "eps" not in attack_parameters(name):
            out.append(spec)
            continue
        norm = getattr(create_attack(name), "norm", "linf")
        out.append({**spec, "eps": eps["l2" if norm == "l2" else "linf"]})
    return tuple(out)


def count_classes(model: nn.Module, images: Images) -> int:
    """K: the width of f's logits on the first of images (N, C, H, W) in [0, 1]."""
    with torch.no_grad():
        return int(model(images[:1].to(model_device(model))).shape[1])


def evaluation_attacks(
    config: Config, eps: dict[str, float], classes: int
) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]:
    """The evaluation's attacks with their open budget filled, and the suite's choice with its reason when the
    default suite left out APGD-DLR for a model of fewer than 3 classes (else None). Raises InputError when an
    attack the user listed raises the DLR loss on such a model."""
    suite = suite_with_eps(config.evaluation.attacks, eps["linf"], classes)
    specs = suite if suite is not None else open_attacks(config.evaluation.attacks, eps)
    dlr = [a for a in (*specs, *config.attacks) if isinstance(a, dict) and uses_dlr(a)]
    if dlr and classes < 3:
        raise InputError(
            f"attack {dlr[0].get('label', dlr[0].get('name'))!r} uses the DLR loss, which needs at least 3 classes; "
            f"the model has {classes}: use apgd-ce or pgd-linf with loss = 'margin' instead."
        )
    if suite == suite_with_eps(config.evaluation.attacks, eps["linf"]):  # None == None: not a built-in suite
        return specs, None
    reason = f"the model has {classes} classes and the DLR loss needs at least 3 (PGD's margin loss stays)"
    return specs, {"value": "default without apgd-dlr", "reason": reason}


def budget(value: float) -> float:
    """A budget rounded to 6 decimals (2/3 of 0.15 is 0.1, not 0.09999999999999999)."""
    return round(value, 6)


def sanity_eps(eps: float, quick: bool) -> tuple[float, ...]:
    """The sanity check's L-inf budgets around ``eps``, ending at 1.0 (three of them when ``quick``)."""
    from roiroa.evaluate.config import quick_sanity_eps

    grid = tuple(sorted({*(budget(f * eps) for f in SANITY_FACTORS if f * eps < 1.0), 1.0}))
    return quick_sanity_eps(grid) if quick else grid


def with_probe(entry: Any, eps: float) -> Any:
    """A defence entry, with a per-input scope's probe budget (2/3 eps) where it leaves it out."""
    spec = {"name": entry} if isinstance(entry, str) else entry
    if not isinstance(spec, dict) or spec.get("name") != "per_input" or "probe_eps" in spec:
        return entry
    return {**spec, "probe_eps": budget(PROBE_FACTOR * eps)}


def eps_relative(config: Config, eps: float) -> tuple[Config, dict[str, Any]]:
    """The config with its open eps-relative budgets filled from the L-inf ``eps``, and what was filled."""
    e, d = config.evaluation, config.defence
    filled: dict[str, Any] = {}
    if e.sanity_eps is None:
        filled["sanity_eps"] = sanity_eps(eps, config.quick)
    if d.adv_eps is None:
        filled["adv_eps"] = eps
    defences = tuple(with_probe(x, eps) for x in e.defences)
    if defences != e.defences:
        filled["probe_eps"] = budget(PROBE_FACTOR * eps)
    square = budget(min(1.0, SQUARE_FACTOR * eps))
    open_square = lambda a: isinstance(a, dict) and a.get("name") == "pgd-square" and "eps" not in a  # noqa: E731
    patch_attacks = tuple({**a, "eps": square} if open_square(a) else a for a in config.patches.attacks)
    if patch_attacks != config.patches.attacks:
        filled["square_eps"] = square
    evaluation = dataclasses.replace(e, defences=defences, sanity_eps=filled.get("sanity_eps", e.sanity_eps))
    defence = dataclasses.replace(d, adv_eps=filled.get("adv_eps", d.adv_eps))
    patches = dataclasses.replace(config.patches, attacks=patch_attacks)
    return dataclasses.replace(config, evaluation=evaluation, defence=defence, patches=patches), filled


def occlusion_saturation(config: Config, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of all-zero probability-drop occlusion maps on x: (N, C, H, W) in [0, 1] with labels y: (N,)."""
    from roiroa.evaluate.maps_stage import importance_spec
    from roiroa.maps.registry import create_estimator

    name, params = importance_spec(config)
    device = model_device(model)
    maps = create_estimator(name, **params)(model, x.to(device), y.to(device))
    return float((maps.flatten(1).abs().amax(1) == 0).double().mean())


def choose_output(config: Config, model: nn.Module, x: Images, y: torch.Tensor) -> tuple[str, str] | None:
    """'logit' or 'probability' for occlusion left open, and why; None when the config decides."""
    m = config.maps
    if m.importance != "occlusion" or "output" in m.importance_params:
        return None
    windows = x.shape[-2] * x.shape[-1] / m.stride**2
    n = max(4, min(PROBE_IMAGES, int(PROBE_WINDOWS / windows)))
    share = occlusion_saturation(config, model, x[:n], y[:n])
    if share > SATURATED:
        return "logit", f"{100 * share:.0f}% of {min(n, len(x))} probability-drop maps are all zero (saturated)"
    return "probability", f"{100 * share:.0f}% of {min(n, len(x))} probability-drop maps are all zero (not saturated)"


def choose_defaults(
    config: Config, images: Images, labels: torch.Tensor, model: nn.Module
) -> tuple[Config, dict[str, dict[str, Any]]]:
    """The config with its open values chosen from the test images (N, C, H, W) and f, and {name: {value,
    reason}} for each choice made."""
    chosen: dict[str, dict[str, Any]] = {}
    eps, why = choose_eps(images)
    attacks = open_attacks(config.attacks, eps)
    evaluation, suite = evaluation_attacks(config, eps, count_classes(model, images))
    if attacks != config.attacks or evaluation != config.evaluation.attacks:
        chosen["eps"] = {"value": eps, "reason": why}
    if suite is not None:
        chosen["suite"] = suite
    config = dataclasses.replace(
        config, attacks=attacks, evaluation=dataclasses.replace(config.evaluation, attacks=evaluation)
    )
    config, filled = eps_relative(config, eps["linf"])
    if filled:
        chosen["budgets"] = {"value": filled, "reason": f"relative to the L-inf budget {eps['linf']:g}"}
    if config.defence.fill == AUTO:
        fill, why = choose_fill(images)
        chosen["fill"] = {"value": fill, "reason": why}
        config = dataclasses.replace(config, defence=dataclasses.replace(config.defence, fill=fill))
    output = choose_output(config, model, images, labels)
    if output is not None:
        chosen["occlusion_output"] = {"value": output[0], "reason": output[1]}
    if output is not None and output[0] == "logit":  # 'probability' is the estimator's own default
        params = {**config.maps.importance_params, "output": output[0]}
        config = dataclasses.replace(config, maps=dataclasses.replace(config.maps, importance_params=params))
    for k, v in chosen.items():  # a choice other than the MNIST one is said at the start of the run
        if k == "budgets" or v["value"] in MNIST_CHOICES.get(k, ()):
            log.info("  chose %s = %s (%s)", k, v["value"], v["reason"])  # --verbose lines are indented
        else:
            log.warning("roiroa: chose %s = %s (%s)", k, v["value"], v["reason"])
    return config, chosen
