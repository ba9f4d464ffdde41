"""Spatial statistics of a run: per image, then over the dataset with bootstrap CIs, beside a null.

For every vulnerability map A (per attack, and the run's RoA map under 'all') and the importance I of the
same image: overlap of RoI and RoA (IoU, Dice, share of the RoA inside the RoI), agreement of the maps
(Pearson, Spearman, pointing game, relevance mass of A inside the RoI), and Moran's I of A and of |delta| with
its z-score against random permutations. Consistency: IoU of the RoA masks of different attacks, of two
random restarts of the same attack, and of the same attack on models trained with other seeds.

The null beside every number is the same statistic with A (or |delta|) replaced by itself with its positions
shuffled at random per image (seeded): the same values without their arrangement. The per-image values are a
table {label: {statistic or statistic_null: (N,)}}; the whole stage is cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from roiroa.cache import StageCache
from roiroa.evaluate.config import Config
from roiroa.evaluate.maps_stage import MapSet
from roiroa.regions.spatial import moran_z, morans_i
from roiroa.regions.statistics import (
    bootstrap_ci,
    dice,
    iou,
    pairwise_iou,
    pearson,
    pointing_game,
    relevance_mass,
    share_inside,
    shuffle_positions,
    spearman,
)
from roiroa.regions.thresholds import isolate
from roiroa.results import ALL, CONSISTENCY_STATISTICS, DELTA_STATISTICS, MAP_STATISTICS
from roiroa.utils import stage_seed

PerImage = dict[str, dict[str, torch.Tensor]]  # label -> statistic (or statistic_null) -> (N,)
Rerun = Callable[[str], dict[str, torch.Tensor]]  # purpose -> attack label -> vulnerability map (N, H, W)


def map_statistics(
    importance: torch.Tensor, vuln: torch.Tensor, roi: torch.Tensor, config: Config
) -> dict[str, torch.Tensor]:
    """MAP_STATISTICS of one vulnerability map (N, H, W) against the importance and its RoI: name -> (N,)."""
    r, contiguity = config.regions, config.statistics.contiguity
    roa = isolate(vuln, r.threshold, r.q_roa)
    return {
        "iou": iou(roi, roa),
        "dice": dice(roi, roa),
        "share_roa_in_roi": share_inside(roa, roi),
        "pearson": pearson(importance, vuln),
        "spearman": spearman(importance, vuln),
        "pointing_game": pointing_game(vuln, roi),
        "relevance_mass": relevance_mass(vuln, roi),
        "moran_a": morans_i(vuln, contiguity),
        "moran_a_z": moran_z(vuln, contiguity),
    }


def with_null(values: dict[str, torch.Tensor], null: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values and their nulls in one table: name and name_null."""
    return values | {f"{k}_null": v for k, v in null.items()}


def per_image_statistics(maps: MapSet, config: Config, rerun: Rerun | None) -> PerImage:
    """Every statistic and its null per test image (see the module docstring)."""
    r = config.regions
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "statistics-null"))
    roi = isolate(maps.importance, r.threshold, r.q_roi)
    sources = maps.vulnerability | {ALL: maps.roa_map}
    shuffled = {label: shuffle_positions(v, gen) for label, v in sources.items()}
    out: PerImage = {}
    for label, vuln in sources.items():
        out[label] = with_null(
            map_statistics(maps.importance, vuln, roi, config),
            map_statistics(maps.importance, shuffled[label], roi, config),
        )
    for label, attacked in maps.attacked.items():
        delta = attacked.perturbation
        contiguity = config.statistics.contiguity
        null = shuffle_positions(delta, gen)
        out[label] |= with_null(
            {"moran_delta": morans_i(delta, contiguity), "moran_delta_z": moran_z(delta, contiguity)},
            {"moran_delta": morans_i(null, contiguity), "moran_delta_z": moran_z(null, contiguity)},
        )
    out = merge(out, attack_consistency(maps.vulnerability, shuffled, config))
    if rerun is not None and config.statistics.restarts:
        out = merge(
            out, rerun_consistency(maps.vulnerability, {"restart": rerun("restart")}, "roa_iou_restarts", config, gen)
        )
    if rerun is not None and config.statistics.seed_models:
        others = {f"seed{k}": rerun(f"seed{k}") for k in range(1, config.statistics.seed_models + 1)}
        out = merge(out, rerun_consistency(maps.vulnerability, others, "roa_iou_seeds", config, gen))
    return out


def attack_consistency(
    vulnerability: dict[str, torch.Tensor], shuffled: dict[str, torch.Tensor], config: Config
) -> PerImage:
    """IoU of the RoA of every pair of attacks ('a|b' -> roa_iou), and their mean per image under 'all'."""
    r = config.regions
    found: dict[bool, dict[str, torch.Tensor]] = {}
    for null, source in ((False, vulnerability), (True, shuffled)):
        found[null] = pairwise_iou({label: isolate(source[label], r.threshold, r.q_roa) for label in vulnerability})
    out: PerImage = {pair: {"roa_iou": v, "roa_iou_null": found[True][pair]} for pair, v in found[False].items()}
    if found[False]:
        out[ALL] = {
            "roa_iou_attacks": torch.stack(list(found[False].values())).nanmean(0),
            "roa_iou_attacks_null": torch.stack(list(found[True].values())).nanmean(0),
        }
    return out


def rerun_consistency(
    first: dict[str, torch.Tensor],
    reruns: dict[str, dict[str, torch.Tensor]],
    stat: str,
    config: Config,
    gen: torch.Generator,
) -> PerImage:
    """Per image, the IoU of each attack's RoA on ``first`` and on each rerun of the same attack (the mean over
    the reruns under the attack's label, and over attacks too under 'all'), with its null."""
    r = config.regions
    found: dict[str, dict[bool, list[torch.Tensor]]] = {}
    for again in reruns.values():
        for label, b in again.items():
            a = first[label]
            for null in (False, True):
                a2, b2 = (shuffle_positions(a, gen), shuffle_positions(b, gen)) if null else (a, b)
                value = iou(isolate(a2, r.threshold, r.q_roa), isolate(b2, r.threshold, r.q_roa))
                found.setdefault(label, {False: [], True: []})[null].append(value)
    out: PerImage = {
        label: {stat: torch.stack(v[False]).nanmean(0), f"{stat}_null": torch.stack(v[True]).nanmean(0)}
        for label, v in found.items()
    }
    if out:
        out[ALL] = {k: torch.stack([v[k] for v in out.values()]).nanmean(0) for k in (stat, f"{stat}_null")}
    return out


def merge(table: PerImage, more: PerImage) -> PerImage:
    """Two per-image tables in one (the columns of a label side by side)."""
    return {
        label: table.get(label, {}) | more.get(label, {}) for label in [*table, *(k for k in more if k not in table)]
    }


def _ci_pair(
    values: dict[str, torch.Tensor], stat: str, config: Config, keep: torch.Tensor | None = None
) -> dict[str, Any]:
    """{'value': CI, 'null': CI} of one statistic over the images selected by ``keep`` (a bool (N,) or None)."""
    s = config.statistics
    seed = stage_seed(config.seed, "bootstrap")
    out = {}
    for name, column in (("value", stat), ("null", f"{stat}_null")):
        v = values[column] if keep is None else values[column][keep]
        out[name] = bootstrap_ci(v, seed, s.bootstrap, s.ci_method)
    return out


def summarize_statistics(
    per_image: PerImage, attacks: list[str], labels: torch.Tensor, classes: tuple[str, ...], config: Config
) -> dict[str, Any]:
    """The ``statistics`` section of results.json from the per-image values."""
    per_attack = {
        label: {
            stat: _ci_pair(per_image[label], stat, config)
            for stat in [*MAP_STATISTICS, *DELTA_STATISTICS]
            if stat in per_image[label]
        }
        for label in [*attacks, ALL]
    }
    pairs = [label for label in per_image if "|" in label]
    everything = per_image[ALL]
    consistency: dict[str, Any] = {"attacks": {pair: _ci_pair(per_image[pair], "roa_iou", config) for pair in pairs}}
    for kind, stat in (("restarts", "roa_iou_restarts"), ("seeds", "roa_iou_seeds")):
        consistency[kind] = {
            label: _ci_pair(per_image[label], stat, config)
            for label in [*attacks, ALL]
            if stat in per_image.get(label, {})
        }
    class_stats = [*MAP_STATISTICS, *(k for k in CONSISTENCY_STATISTICS if k in everything)]
    per_class = {
        str(classes[c]): {stat: _ci_pair(everything, stat, config, labels == c) for stat in class_stats}
        for c in sorted(set(labels.tolist()))
    }
    return {
        "method": statistics_method(config),
        "per_attack": per_attack,
        "consistency": consistency,
        "per_class": per_class,
    }


def statistics_method(config: Config) -> dict[str, Any]:
    """How every interval and null of the statistics was made."""
    s, r = config.statistics, config.regions
    return {
        "interval": f"{s.ci_method} bootstrap 95% confidence interval of the mean over images",
        "bootstrap_resamples": s.bootstrap,
        "ci_method": s.ci_method,
        "confidence": 0.95,
        "null": "the same statistic with A (or |delta|) shuffled over positions per image (seeded)",
        "threshold": r.threshold,
        "q_roi": r.q_roi,
        "q_roa": r.q_roa,
        "contiguity": s.contiguity,
        "moran_z": "(I - E[I]) / sd[I] over all permutations of the map's positions (randomization moments)",
        "restarts": s.restarts,
        "seed_models": s.seed_models,
    }


def flatten(per_image: PerImage) -> dict[str, torch.Tensor]:
    """The per-image table as one flat dict of tensors (for the stage cache): 'label\\tstat' -> (N,)."""
    return {f"{label}\t{stat}": v.double() for label, stats in per_image.items() for stat, v in stats.items()}


def unflatten(flat: dict[str, torch.Tensor]) -> PerImage:
    out: PerImage = {}
    for key, v in flat.items():
        label, _, stat = key.partition("\t")
        out.setdefault(label, {})[stat] = v
    return out


def dataset_statistics(
    labels: torch.Tensor,
    classes: tuple[str, ...],
    maps: MapSet,
    config: Config,
    cache: StageCache,
    rerun: Rerun | None = None,
) -> tuple[dict[str, Any], PerImage]:
    """(the ``statistics`` section of results.json, the per-image table), cached as one stage.

    ``rerun(purpose)`` gives each attack's vulnerability map from an independent second run ('restart') or on
    a model of another seed ('seed1', ...); without it the consistency across restarts and seeds is skipped.
    """
    inputs: dict[str, Any] = {
        "maps": list(maps.keys),
        "statistics": vars(config.statistics),
        "regions": vars(config.regions),
    }
    inputs |= {"seed": config.seed, "reruns": rerun is not None, "vulnerability": config.maps.vulnerability}
    flat = cache.tensors(
        cache.key("statistics-per-image", inputs), lambda: flatten(per_image_statistics(maps, config, rerun))
    )
    per_image = unflatten(flat)
    summary = cache.json(
        cache.key("statistics-summary", inputs),
        lambda: summarize_statistics(per_image, list(maps.vulnerability), labels, classes, config),
    )
    return summary, per_image
