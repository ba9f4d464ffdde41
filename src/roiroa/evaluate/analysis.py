"""What a run reads off its maps: the four segments, each attack's effect on f, and the oracle analysis.

The oracle neutralizes each image's own S_A, found from the known attack (its vulnerability map) and the
image's RoI: it needs the attack, so it is an analysis, not a defence; it measures how much of the attack
lives in S_A. A random mask of the same area per image is its control.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from roiroa.cache import StageCache, hash_tensors
from roiroa.defence.fills import Fill
from roiroa.defence.neutralizer import neutralize
from roiroa.defence.scopes import random_mask_like
from roiroa.evaluate.attacking import AttackEntry
from roiroa.evaluate.config import Config
from roiroa.evaluate.maps_stage import MapSet
from roiroa.maps.recorder import AttackTrace
from roiroa.models.predict import predict
from roiroa.regions.segments import SEGMENT_NAMES, Segments
from roiroa.regions.thresholds import isolate, top_q_mask
from roiroa.results import AttackSummary, OracleRow
from roiroa.utils import stage_seed


def segments_of(maps: MapSet, config: Config) -> Segments:
    """The four segments of each image: RoI of the importance, RoA of the run's RoA map."""
    r = config.regions
    return Segments(isolate(maps.importance, r.threshold, r.q_roi), isolate(maps.roa_map, r.threshold, r.q_roa))


def segment_summary(segments: Segments, config: Config) -> dict[str, Any]:
    """Mean share of the positions in each segment, and how the regions were isolated."""
    fractions = segments.fractions()
    r = config.regions
    return {"threshold": r.threshold, "q_roi": r.q_roi, "q_roa": r.q_roa} | {
        n: float(fractions[n].mean()) for n in SEGMENT_NAMES
    }


def attack_summary(
    entry: AttackEntry,
    reading: str,
    x: torch.Tensor,
    y: torch.Tensor,
    trace: AttackTrace,
    pred_clean: torch.Tensor,
    pred_adv: torch.Tensor,
) -> AttackSummary:
    """Parameters, robust accuracy, success rate and perturbation size of one attack on f."""
    ok_clean, ok_adv = pred_clean == y, pred_adv == y
    delta = (trace.x_adv - x).flatten(1)
    success = float((~ok_adv[ok_clean]).double().mean()) if ok_clean.any() else float("nan")
    return AttackSummary(
        entry.label,
        entry.params,
        reading,
        float((ok_clean & ok_adv).double().mean()),
        success,
        float(delta.abs().amax(1).double().mean()),
        float(delta.norm(dim=1).double().mean()),
    )


def oracle_masks(roi: torch.Tensor, vulnerability: torch.Tensor, q_roa: float) -> torch.Tensor:
    """Each image's own S_A (N, H, W) bool: its top-q_roa positions of this attack's map minus its RoI."""
    return Segments(roi, top_q_mask(vulnerability, q_roa)).s_a


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: the model classifies x: (N, C, H, W) as y: (N,)."""
    return predict(model, x, batch_size).cpu() == y.cpu()


def oracle_analysis(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    s_a: torch.Tensor,
    fill: Fill,
    generator: torch.Generator,
) -> dict[str, float]:
    """Neutralize each image's own S_A (N, H, W) in the clean x and the attacked x_adv (N, C, H, W) in [0, 1].

    Returns:
        area (mean |S_A| / |P|), accuracy (clean and neutralized attacked image both right), clean_accuracy (the
        masks on the clean images), random_mask_accuracy (a random mask of the same area per image).
    """
    rand = random_mask_like(s_a, generator)

    def ok(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        m = masks[:, None].to(images.dtype)
        return correct(model, neutralize(images, m, fill(images, m)), y)

    ok_clean, ok_rand_clean = ok(x, s_a), ok(x, rand)
    return {
        "area": float(s_a.double().mean()),
        "accuracy": float((ok_clean & ok(x_adv, s_a)).double().mean()),
        "clean_accuracy": float(ok_clean.double().mean()),
        "random_mask_accuracy": float((ok_rand_clean & ok(x_adv, rand)).double().mean()),
    }


def _oracle(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, maps: MapSet, fill: Fill, config: Config, qs: tuple[float, ...]
) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "oracle-random-masks"))
    roi = isolate(maps.importance, config.regions.threshold, config.regions.q_roi)
    rows = []
    for label, trace in maps.traces.items():
        for q in qs:
            found = oracle_analysis(
                model, x, y, trace.x_adv, oracle_masks(roi, maps.vulnerability[label], q), fill, gen
            )
            rows.append(OracleRow(label, config.regions.q_roi, q, n_images=len(x), **found).__dict__)
    return rows


def oracle_rows(
    model: nn.Module,
    model_key: str,
    x: torch.Tensor,
    y: torch.Tensor,
    maps: MapSet,
    fill: Fill,
    fill_key: str,
    config: Config,
    cache: StageCache,
    qs: tuple[float, ...],
) -> list[OracleRow]:
    """The oracle analysis for every attack of ``maps`` and every RoA fraction in ``qs`` (cached)."""
    inputs: dict[str, Any] = {"model": model_key, "data": hash_tensors(x, y), "maps": list(maps.keys), "fill": fill_key}
    inputs |= {
        "q_roi": config.regions.q_roi,
        "threshold": config.regions.threshold,
        "qs": list(qs),
        "seed": config.seed,
    }
    inputs |= {"vulnerability": config.maps.vulnerability}
    rows = cache.json(cache.key("oracle", inputs), partial(_oracle, model, x, y, maps, fill, config, qs))
    return [OracleRow(**row) for row in rows]
