"""Spatial statistics of a run: per image, then over the dataset with bootstrap CIs, beside a null.

For every vulnerability map A (per attack and 'all') and the importance I of the same image:
overlap of RoI and RoA (IoU, Dice, share of the RoA inside the RoI), agreement of the maps
(Pearson, Spearman, pointing game, relevance mass of A inside the RoI), and Moran's I of A and of
|delta| with its z-score against random permutations. Consistency: IoU of the RoA masks of
different attacks, of two random restarts of the same attack, and of the same attack on models
trained with other seeds (``statistics.seed_models``).

The null beside every number is the same statistic with A (or |delta|) replaced by itself with its
positions shuffled at random per image (seeded): the same values without their arrangement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from roiroa.attacks.base import Attack
from roiroa.data.dataset import ImageDataset
from roiroa.maps.vulnerability import attack_vulnerability, perturbation_map
from roiroa.models.train import load_or_train
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
from roiroa.utils import model_device, seed_all, stage_seed

if TYPE_CHECKING:
    from roiroa.evaluate.config import RunConfig
    from roiroa.evaluate.runner import MapSet

ALL = "all"

# name -> what it measures (the report's table uses these descriptions)
MAP_STATISTICS = {
    "iou": "IoU of RoI and RoA",
    "dice": "Dice of RoI and RoA",
    "share_roa_in_roi": "share of the RoA inside the RoI",
    "pearson": "Pearson correlation of I and A",
    "spearman": "Spearman correlation of I and A",
    "pointing_game": "share of images whose max of A lies in the RoI",
    "relevance_mass": "share of the total of A inside the RoI",
    "moran_a": "Moran's I of A",
    "moran_a_z": "z-score of Moran's I of A against permutations",
}
DELTA_STATISTICS = {
    "moran_delta": "Moran's I of |delta|",
    "moran_delta_z": "z-score of Moran's I of |delta| against permutations",
}
CONSISTENCY_STATISTICS = {
    "roa_iou_attacks": "IoU of the RoA masks of two attacks (mean over the pairs)",
    "roa_iou_restarts": "IoU of the RoA masks of two random restarts (mean over the attacks)",
    "roa_iou_seeds": "IoU of the RoA masks on models trained with different seeds (mean over the attacks)",
}


def column(stat: str, label: str, null: bool = False) -> str:
    """The per_image.csv column of a statistic: 'stat[label]' or 'stat_null[label]'."""
    return f"{stat}{'_null' if null else ''}[{label}]"


def map_statistics(
    importance: torch.Tensor, vuln: torch.Tensor, roi: torch.Tensor, config: RunConfig
) -> dict[str, torch.Tensor]:
    """MAP_STATISTICS of one vulnerability map (N, H, W) against the importance and its RoI: name -> (N,)."""
    r, contiguity = config.regions, config.statistics.contiguity
    roa = isolate(vuln, r.threshold, r.q_roa)  # type: ignore[arg-type]
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


def delta_statistics(delta: torch.Tensor, contiguity: str) -> dict[str, torch.Tensor]:
    """DELTA_STATISTICS of |delta| maps (N, H, W): name -> (N,)."""
    return {"moran_delta": morans_i(delta, contiguity), "moran_delta_z": moran_z(delta, contiguity)}


def per_image_statistics(
    model: nn.Module,
    test: ImageDataset,
    maps: MapSet,
    attacks: dict[str, Attack],
    config: RunConfig,
    train: ImageDataset | None = None,
) -> dict[str, torch.Tensor]:
    """Every statistic and its null per test image: column(stat, label, null) -> (N,)."""
    r, seed = config.regions, config.seed
    gen = torch.Generator().manual_seed(stage_seed(seed, "statistics-null"))
    roi = isolate(maps.importance, r.threshold, r.q_roi)  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    shuffled = {label: shuffle_positions(v, gen) for label, v in maps.vulnerability.items()}
    for label, vuln in maps.vulnerability.items():
        for null, amap in ((False, vuln), (True, shuffled[label])):
            out |= {column(k, label, null): v for k, v in map_statistics(maps.importance, amap, roi, config).items()}
    for label, result in maps.results.items():
        delta = perturbation_map(test.images, result.x_adv)
        for null, dmap in ((False, delta), (True, shuffle_positions(delta, gen))):
            stats = delta_statistics(dmap, config.statistics.contiguity)
            out |= {column(k, label, null): v for k, v in stats.items()}
    # consistency across attacks: every pair's IoU, and their mean per image
    labels = list(maps.results)
    for null, source in ((False, maps.vulnerability), (True, shuffled)):
        roas = {label: isolate(source[label], r.threshold, r.q_roa) for label in labels}  # type: ignore[arg-type]
        pairs = pairwise_iou(roas)
        out |= {column("roa_iou", pair, null): v for pair, v in pairs.items()}
        if pairs:
            out[column("roa_iou_attacks", ALL, null)] = torch.stack(list(pairs.values())).nanmean(0)
    if config.statistics.restarts:
        out |= restart_consistency(model, test, maps, attacks, config, gen)
    if config.statistics.seed_models and train is not None:
        out |= seed_consistency(model, train, test, maps, attacks, config, gen)
    return out


def rerun_iou(
    first: dict[str, torch.Tensor], again: dict[str, torch.Tensor], stat: str, config: RunConfig, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """IoU of the RoA of each attack's map in ``first`` and in ``again`` (label -> (N, H, W)), and its null.

    Columns ``stat[label]`` per attack and ``stat + 's'[all]``, their mean per image.
    """
    r = config.regions
    out: dict[str, torch.Tensor] = {}
    for null in (False, True):
        values = []
        for label, b in again.items():
            a = first[label]
            if null:
                a, b = shuffle_positions(a, gen), shuffle_positions(b, gen)
            value = iou(isolate(a, r.threshold, r.q_roa), isolate(b, r.threshold, r.q_roa))  # type: ignore[arg-type]
            out[column(stat, label, null)] = value
            values.append(value)
        if values:
            out[column(stat + "s", ALL, null)] = torch.stack(values).nanmean(0)
    return out


def restart_consistency(
    model: nn.Module,
    test: ImageDataset,
    maps: MapSet,
    attacks: dict[str, Attack],
    config: RunConfig,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """IoU of the RoA of each random-start attack and of a second run from another random start."""
    x, y = test.images, test.labels
    again = {}
    for label, attack in attacks.items():
        if not getattr(attack, "random_start", False):
            continue  # a deterministic attack repeats itself exactly
        seed_all(stage_seed(config.seed, f"test-restart:{label}"))
        again[label] = attack_vulnerability(x, attack.run(model, x, y), attack.norm, config.maps.vulnerability)  # type: ignore[arg-type]
    return rerun_iou(maps.vulnerability, again, "roa_iou_restart", config, gen)


def seed_consistency(
    model: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    maps: MapSet,
    attacks: dict[str, Attack],
    config: RunConfig,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """IoU of the RoA of each attack on the run's model and on models trained with other seeds
    (seed + 1, ..., seed + statistics.seed_models; cached like the run's model), averaged over those models."""
    x, y = test.images, test.labels
    runs: dict[str, list[torch.Tensor]] = {label: [] for label in attacks}
    for k in range(1, config.statistics.seed_models + 1):
        seed = config.seed + k
        other = load_or_train(config.model.arch, train, config.model.training, seed, model_device(model)).model
        for label, attack in attacks.items():
            seed_all(stage_seed(seed, f"test:{label}"))
            runs[label].append(
                attack_vulnerability(x, attack.run(other, x, y), attack.norm, config.maps.vulnerability)  # type: ignore[arg-type]
            )
    out: dict[str, torch.Tensor] = {}
    for k in range(config.statistics.seed_models):
        for key, value in rerun_iou(
            maps.vulnerability, {a: v[k] for a, v in runs.items()}, "roa_iou_seed", config, gen
        ).items():
            out[key] = value if k == 0 else out[key] + value
    return {key: value / config.statistics.seed_models for key, value in out.items()}


def labels_of(per_image: dict[str, torch.Tensor], stat: str) -> list[str]:
    """The labels of the columns 'stat[label]' (not the nulls), in order."""
    prefix = f"{stat}["
    return [k[len(prefix) : -1] for k in per_image if k.startswith(prefix)]


def _ci_pair(per_image: dict[str, torch.Tensor], stat: str, label: str, config: RunConfig, keep: Any = None) -> Any:
    """{'value': CI, 'null': CI} of one statistic over the images selected by ``keep`` (a bool (N,) or None)."""
    s = config.statistics
    seed = stage_seed(config.seed, "bootstrap")
    out = {}
    for null in (False, True):
        values = per_image[column(stat, label, null)]
        values = values if keep is None else values[keep]
        out["null" if null else "value"] = bootstrap_ci(values, seed, s.bootstrap, s.ci_method)
    return out


def summarize_statistics(
    per_image: dict[str, torch.Tensor], labels: torch.Tensor, classes: tuple[str, ...] | list[str], config: RunConfig
) -> dict[str, Any]:
    """The ``statistics`` section of results.json from the per-image values."""
    s, r = config.statistics, config.regions
    per_attack: dict[str, Any] = {}
    for label in [*labels_of(per_image, "moran_delta"), ALL]:
        stats = list(MAP_STATISTICS) + (list(DELTA_STATISTICS) if label != ALL else [])
        per_attack[label] = {stat: _ci_pair(per_image, stat, label, config) for stat in stats}
    consistency = {
        name: {label: _ci_pair(per_image, stat, label, config) for label in labels_of(per_image, stat)}
        for name, stat in (("attacks", "roa_iou"), ("restarts", "roa_iou_restart"), ("seeds", "roa_iou_seed"))
    }
    class_stats = list(MAP_STATISTICS) + [k for k in CONSISTENCY_STATISTICS if column(k, ALL) in per_image]
    per_class = {
        str(classes[c]): {stat: _ci_pair(per_image, stat, ALL, config, labels == c) for stat in class_stats}
        for c in sorted(set(labels.tolist()))
    }
    return {
        "method": {
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
        },
        "per_attack": per_attack,
        "consistency": consistency,
        "per_class": per_class,
    }


def dataset_statistics(
    model: nn.Module,
    test: ImageDataset,
    maps: MapSet,
    attacks: dict[str, Attack],
    config: RunConfig,
    train: ImageDataset | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(the ``statistics`` section of results.json, the per-image columns name -> (N,)).

    ``train`` trains the models of other seeds (``statistics.seed_models``); without it that part is skipped.
    """
    per_image = per_image_statistics(model, test, maps, attacks, config, train)
    return summarize_statistics(per_image, test.labels, test.classes, config), per_image
