"""Accuracy of a model and of its neutralized form under attacks, and the oracle analysis.

Robust accuracy counts an image as robust only if the evaluated model classifies both the clean
image and the attacked image correctly (RobustBench's convention).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from roiroa.attacks.base import Attack, AttackResult
from roiroa.defence.neutralizer import Neutralizer, neutralize, random_mask_like
from roiroa.models.predict import predict
from roiroa.regions.segments import Segments
from roiroa.regions.thresholds import top_q_mask


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: the model classifies x: (N, C, H, W) as y: (N,)."""
    return predict(model, x, batch_size) == y.to(x.device)


def mean(flags: torch.Tensor) -> float:
    """The share of True in a bool tensor."""
    return float(flags.double().mean())


def evaluate_defence(
    defended: Neutralizer,
    control: Neutralizer,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: dict[str, Attack],
    results: dict[str, AttackResult],
) -> list[dict[str, Any]]:
    """One row per attack: clean, non-adaptive and adaptive accuracy of f o N, beside the random-mask control.

    Args:
        defended: f o N with the fitted mask.
        control: f o N' with a random mask N' of the same area.
        x, y: the test images (N, C, H, W) in [0, 1] and labels (N,).
        attacks: label -> attack; each is run again through ``defended`` and ``control`` (adaptive).
        results: label -> the attack's result on f (its x_adv is the non-adaptive attack).
    """
    clean = {"def": correct(defended, x, y), "ctl": correct(control, x, y)}
    rows = []
    for label, attack in attacks.items():
        x_adv = results[label].x_adv
        rows.append(
            {
                "attack": label,
                "area": float(defended.mask.double().mean()),
                "clean_accuracy": mean(clean["def"]),
                "nonadaptive_accuracy": mean(clean["def"] & correct(defended, x_adv, y)),
                "adaptive_accuracy": mean(clean["def"] & correct(defended, attack(defended, x, y), y)),
                "random_mask_clean_accuracy": mean(clean["ctl"]),
                "random_mask_accuracy": mean(clean["ctl"] & correct(control, x_adv, y)),
                "random_mask_adaptive_accuracy": mean(clean["ctl"] & correct(control, attack(control, x, y), y)),
            }
        )
    return rows


def oracle_analysis(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    roi: torch.Tensor,
    vulnerability: torch.Tensor,
    q_roa: float,
    fill: torch.Tensor | float,
    generator: torch.Generator,
) -> dict[str, float]:
    """Neutralize each image's own S_A, found from the known attack: an analysis, not a defence.

    Args:
        x, x_adv: clean and attacked images (N, C, H, W) in [0, 1]; y: (N,) labels.
        roi: (N, H, W) bool, each clean image's RoI.
        vulnerability: (N, H, W) this attack's map on each image (it knows the perturbation).
        q_roa: fraction of positions in each RoA.
        fill: the neutralization fill.
        generator: draws the random control masks (same area per image).

    Returns:
        area (mean |S_A| / |P|), accuracy (clean and neutralized attacked image both right),
        clean_accuracy (the same masks on the clean images), random_mask_accuracy (a random
        mask of the same area per image).
    """
    s_a = Segments(roi, top_q_mask(vulnerability, q_roa)).s_a
    rand = random_mask_like(s_a, generator)
    ok_clean = correct(model, neutralize(x, s_a, fill), y)
    ok_rand_clean = correct(model, neutralize(x, rand, fill), y)
    return {
        "area": float(s_a.double().mean()),
        "accuracy": mean(ok_clean & correct(model, neutralize(x_adv, s_a, fill), y)),
        "clean_accuracy": mean(ok_clean),
        "random_mask_accuracy": mean(ok_rand_clean & correct(model, neutralize(x_adv, rand, fill), y)),
    }
