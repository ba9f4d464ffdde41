"""What a run reads off its maps: the four segments, each attack's effect on f, and the oracle analysis.

The oracle neutralizes each image's own S_A, found from the known attack (its vulnerability map) and the
image's RoI: it needs the attack, so it is an analysis, not a defence; it measures how much of the attack
lives in S_A. A random mask of the same area per image is its control.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from roiroa.cache import StageCache
from roiroa.defence.fills import Fill
from roiroa.defence.neutralizer import neutralize
from roiroa.defence.scopes import random_mask_like
from roiroa.evaluate.attacking import AttackEntry
from roiroa.evaluate.config import Config
from roiroa.evaluate.maps_stage import AttackImages, MapSet
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
    entry: AttackEntry, reading: str, y: torch.Tensor, attacked: AttackImages, pred_clean: torch.Tensor
) -> AttackSummary:
    """Parameters, robust accuracy, success rate and perturbation size of one attack on f; y, pred_clean: (N,)."""
    ok_clean, ok_adv = pred_clean == y, attacked.prediction == y
    success = float((~ok_adv[ok_clean]).double().mean()) if ok_clean.any() else float("nan")
    return AttackSummary(
        entry.label,
        entry.params,
        reading,
        float((ok_clean & ok_adv).double().mean()),
        success,
        float(attacked.linf.double().mean()),
        float(attacked.l2.double().mean()),
    )


def oracle_masks(roi: torch.Tensor, vulnerability: torch.Tensor, q_roa: float) -> torch.Tensor:
    """Each image's own S_A (N, H, W) bool: its top-q_roa positions of this attack's map minus its RoI."""
    return Segments(roi, top_q_mask(vulnerability, q_roa)).s_a


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: the model classifies x: (N, C, H, W) as y: (N,)."""
    return predict(model, x, batch_size).cpu() == y.cpu()


@dataclass(frozen=True)
class MaskFlags:
    """Per-image flags (N,) bool of f under masks, on the clean and the attacked images.

    clean: f right on the clean image; masked: mask name -> {'clean': right on the clean image with the mask
    filled, 'attacked': right on the attacked image with the mask filled, 'restored': right on the attacked image
    with the clean pixels put back under the mask (only where asked)}.
    """

    clean: torch.Tensor
    masked: dict[str, dict[str, torch.Tensor]]


def mask_flags(
    model: nn.Module, attacked: AttackImages, masks: dict[str, torch.Tensor], fill: Fill, restore: bool = False
) -> MaskFlags:
    """f's flags under each mask (N, H, W) bool of ``masks``, read one chunk of clean and attacked images at a
    time (see MaskFlags); ``restore`` adds the attacked images with the clean pixels put back."""
    clean: list[torch.Tensor] = []
    found: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in masks}
    for part, x_adv in attacked.chunks():
        x, y = part.x.to(x_adv.device), part.y
        clean.append(correct(model, x, y))
        for name, mask in masks.items():
            m = mask[part.where][:, None].to(x.dtype)
            flags = {"clean": neutralize(x, m, fill(x, m)), "attacked": neutralize(x_adv, m, fill(x_adv, m))}
            flags |= {"restored": neutralize(x_adv, m, x)} if restore else {}
            for how, images in flags.items():
                found[name].setdefault(how, []).append(correct(model, images, y))
    masked = {name: {how: torch.cat(v) for how, v in hows.items()} for name, hows in found.items()}
    return MaskFlags(torch.cat(clean), masked)


def _oracle(model: nn.Module, maps: MapSet, fill: Fill, config: Config, qs: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per attack and RoA fraction q: neutralize each image's own S_A in the clean and the attacked images: area
    (mean |S_A| / |P|), accuracy (clean and neutralized attacked image both right), clean_accuracy (the masks on
    the clean images), random_mask_accuracy (a random mask of the same area per image)."""
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "oracle-random-masks"))
    roi = isolate(maps.importance, config.regions.threshold, config.regions.q_roi)
    rows = []
    for label, attacked in maps.attacked.items():
        masks: dict[str, torch.Tensor] = {}
        for q in qs:  # every fraction's masks first, so one pass over the images reads them all
            s_a = oracle_masks(roi, maps.vulnerability[label], q)
            masks |= {f"oracle@{q}": s_a, f"random@{q}": random_mask_like(s_a, gen)}
        flags = mask_flags(model, attacked, masks, fill).masked
        for q in qs:
            s_a, oracle, rand = masks[f"oracle@{q}"], flags[f"oracle@{q}"], flags[f"random@{q}"]
            found = {
                "area": float(s_a.double().mean()),
                "accuracy": float((oracle["clean"] & oracle["attacked"]).double().mean()),
                "clean_accuracy": float(oracle["clean"].double().mean()),
                "random_mask_accuracy": float((rand["clean"] & rand["attacked"]).double().mean()),
            }
            rows.append(OracleRow(label, config.regions.q_roi, q, n_images=len(s_a), **found).__dict__)
    return rows


def oracle_rows(
    model: nn.Module,
    model_key: str,
    maps: MapSet,
    fill: Fill,
    fill_key: str,
    config: Config,
    cache: StageCache,
    qs: tuple[float, ...],
) -> list[OracleRow]:
    """The oracle analysis for every attack of ``maps`` and every RoA fraction in ``qs`` (cached; the images are
    those the maps were made on, identified by the maps' cache keys)."""
    inputs: dict[str, Any] = {"model": model_key, "maps": list(maps.keys), "fill": fill_key}
    inputs |= {
        "q_roi": config.regions.q_roi,
        "threshold": config.regions.threshold,
        "qs": list(qs),
        "seed": config.seed,
    }
    inputs |= {"vulnerability": config.maps.vulnerability}
    rows = cache.json(cache.key("oracle", inputs), partial(_oracle, model, maps, fill, config, qs))
    return [OracleRow(**row) for row in rows]
