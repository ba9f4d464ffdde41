"""``roiroa run``: the whole analysis of one model on one dataset.

prepare -> the attacks' traces and the maps of the test images -> the statistics of RoI and RoA -> the global
mask (fitted on the fitting images) against its random controls, on every test image, and the short table of
the other defences on the first ``evaluation.run_images`` -> the oracle analysis -> a results folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from roiroa.cache import StageCache
from roiroa.data.dataset import ImageDataset, sample_per_class
from roiroa.defence.neutralizer import Neutralized, neutralize
from roiroa.evaluate.analysis import attack_summary, oracle_masks, oracle_rows, segment_summary, segments_of
from roiroa.evaluate.attacking import AttackEntry, attack_entries
from roiroa.evaluate.comparisons import comparisons
from roiroa.evaluate.config import Config
from roiroa.evaluate.dataset_statistics import PerImage, dataset_statistics
from roiroa.evaluate.defences import (
    BuildContext,
    build_defences,
    none_defence,
    parse_defence,
    parse_defences,
    spec_fill,
)
from roiroa.evaluate.executors import uses_executor
from roiroa.evaluate.grid import Defence, standard_cells, table_rows
from roiroa.evaluate.maps_stage import MapSet, attack_maps, compute_maps, vulnerability_maps
from roiroa.evaluate.oracle import ORACLE_NOTE, oracle_decomposition
from roiroa.evaluate.outputs import CommandResult, build_context, dataset_info, flag_table, header, model_info, run_grid
from roiroa.evaluate.prepare import DataLike, Prepared, prepare
from roiroa.evaluate.tasks import Timings, chunks
from roiroa.models.predict import check_finite_logits, predict, predict_logits
from roiroa.models.train import load_or_train
from roiroa.regions.segments import Segments
from roiroa.results import ALL, ResultsFolder, to_json
from roiroa.utils import stage_seed


@dataclass
class RunResult(CommandResult):
    """Everything ``roiroa run`` produced, in memory. ``folder`` is what the results folder holds."""

    prepared: Prepared
    maps: MapSet
    segments: Segments
    predictions: dict[str, torch.Tensor]
    per_image: PerImage
    folder: ResultsFolder


def restart_and_seed_maps(prepared: Prepared, attacks: list[AttackEntry], cache: StageCache) -> Any:
    """``rerun(purpose)`` for the statistics: each attack's maps from another random start ('restart'), or on a
    model of another seed ('seed1', ...; trained and cached like f, where roiroa trained f)."""
    c, test = prepared.config, prepared.splits.test

    def rerun(purpose: str) -> dict[str, Any]:
        if purpose == "restart":
            chosen = [e for e in attacks if getattr(e.attack, "random_start", False)]
            attacked, _ = attack_maps(prepared.model, prepared.model_key, test, chosen, c, cache, purpose="restart")
            return vulnerability_maps(chosen, attacked, c)
        if prepared.info.source != "trained":
            return {}
        seed = c.seed + int(purpose.removeprefix("seed"))
        other = load_or_train(
            c.model.arch, prepared.splits.train, c.model.training.recipe(), seed, prepared.device
        ).model
        attacked, _ = attack_maps(other, f"seed-model:{seed}:{prepared.model_key}", test, attacks, c, cache)
        return vulnerability_maps(attacks, attacked, c)

    return rerun


@dataclass(frozen=True)
class DefenceTables:
    """The run's defence results: the global mask's table on every test image, the short table, the per-image
    flags of both, and the global mask's defended model."""

    rows: list[Any]
    short_rows: list[Any]
    flags: tuple[list[str], list[dict[str, Any]]]
    global_defence: Defence
    comparisons: list[Any] = field(default_factory=list)


def defence_tables(
    prepared: Prepared, ctx: BuildContext, attacks: list[AttackEntry], cache: StageCache
) -> DefenceTables:
    """The global mask and its controls on every test image, and the short table of ``evaluation.run_defences``
    on the first ``evaluation.run_images``."""
    c, test = prepared.config, prepared.splits.test
    defences = [none_defence(ctx), *build_defences(parse_defence("global", c), ctx)]
    results = run_grid(prepared, cache, defences, attacks, standard_cells(defences, attacks), test)
    columns, flags = flag_table(results, test)
    margin = c.evaluation.equivalence_margin
    compared = comparisons(defences, results, margin, c.seed)
    n = min(c.evaluation.run_images, len(test))
    short_rows: list[Any] = []
    if n:
        wanted = set(c.evaluation.run_defences) - {"global"}  # the global mask has the full table above
        chosen = [s for s in parse_defences(c.evaluation.defences, c) if s.label in wanted]
        short = [none_defence(ctx)] + [
            d for s in chosen for d in build_defences(s, ctx) if not d.name.startswith("random_blobs")
        ]
        first = sample_per_class(test, n, stage_seed(c.seed, "short-table"))
        short_results = run_grid(prepared, cache, short, attacks, standard_cells(short, attacks), first)
        short_rows = table_rows(short, attacks, short_results, c.evaluation.cascade)
        flags += [row for row in flag_table(short_results, first)[1] if row["defence"] != "none"]
        compared += comparisons(short, short_results, margin, c.seed)
    rows = table_rows(defences, attacks, results, c.evaluation.cascade)
    return DefenceTables(rows, short_rows, (columns, flags), defences[1], compared)


GALLERY_CLASSES = 20


def gallery_arrays(
    prepared: Prepared, maps: MapSet, segments: Segments, glob: Neutralized, attacks: list[AttackEntry]
) -> dict[str, Any]:
    """The gallery's images for the report: per class the first test images, attacked by every attack, and
    neutralized with the global mask and with the oracle's own S_A, with f's predictions on each."""
    c, test = prepared.config, prepared.splits.test
    n = max(c.examples, min(test.num_classes, GALLERY_CLASSES))  # every class, up to GALLERY_CLASSES of them
    idx = torch.tensor(example_indices(test.labels, n), dtype=torch.long)
    if len(idx) == 0:
        return {}
    out: dict[str, Any] = {
        "gallery_index": idx,
        "gallery_x": test.images[idx],
        "gallery_pred": predict(prepared.model, test.images[idx]),
    }
    roi = segments.roi[idx]
    for e in attacks:
        x_adv = maps.attacked[e.label].at(idx)
        s_a = oracle_masks(roi, maps.vulnerability[e.label][idx], c.regions.q_roa)[:, None].float()
        g = glob.masks(x_adv)[:, None].float()
        x_oracle, x_global = neutralize(x_adv, s_a, glob.fill(x_adv, s_a)), neutralize(x_adv, g, glob.fill(x_adv, g))
        for name, images in (("adv", x_adv), ("global", x_global), ("oracle", x_oracle)):
            out[f"gallery_{name}[{e.label}]"] = images
            out[f"gallery_pred_{name}[{e.label}]"] = predict(prepared.model, images)
    return out


def example_indices(labels: torch.Tensor, n: int) -> list[int]:
    """Up to n test positions: the first image of each class in turn, round robin over classes."""
    by_class = [(labels == k).nonzero().flatten().tolist() for k in sorted(set(labels.tolist()))]
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, len(labels)):
        picked += [m[depth] for m in by_class if depth < len(m)][: n - len(picked)]
        depth += 1
    return picked


def map_arrays(
    prepared: Prepared, maps: MapSet, segments: Segments, predictions: dict[str, torch.Tensor], glob: Any
) -> dict[str, Any]:
    """The arrays of maps.npz (test images in the order of per_image.csv)."""
    test = prepared.splits.test
    arrays: dict[str, Any] = {
        "index": test.index,
        "labels": test.labels,
        "importance": maps.importance,
        "saliency": maps.saliency,
        "roa_map": maps.roa_map,
        "segments": segments.labels(),
        "global_mask": glob,
    }
    arrays |= {f"vulnerability[{k}]": v for k, v in maps.vulnerability.items()}
    arrays |= {f"perturbation[{k}]": a.perturbation for k, a in maps.attacked.items()}
    arrays |= {f"pred[{k}]": v for k, v in predictions.items()}
    return arrays


def per_image_table(
    test: ImageDataset, predictions: dict[str, torch.Tensor], per_image: PerImage
) -> tuple[list[str], list[dict[str, Any]]]:
    """per_image.csv: one row per (image, attack or 'all' or attack pair), plain columns: image, index, label,
    class, attack, prediction, predicted_class, then every statistic and its null."""
    stats = sorted({s for values in per_image.values() for s in values})
    columns = ["image", "index", "label", "class", "attack", "prediction", "predicted_class", *stats]
    rows = []
    for attack, values in per_image.items():
        pred = predictions.get(attack)
        for i in range(len(test)):
            label = int(test.labels[i])
            row: dict[str, Any] = {
                "image": i,
                "index": int(test.index[i]),
                "label": label,
                "class": test.classes[label],
                "attack": attack,
            }
            if pred is not None:
                row |= {"prediction": int(pred[i]), "predicted_class": test.classes[int(pred[i])]}
            rows.append(row | {s: float(values[s][i]) for s in stats if s in values})
    clean = predictions["clean"]
    rows += [
        {
            "image": i,
            "index": int(test.index[i]),
            "label": int(test.labels[i]),
            "class": test.classes[int(test.labels[i])],
            "attack": "clean",
            "prediction": int(clean[i]),
            "predicted_class": test.classes[int(clean[i])],
        }
        for i in range(len(test))
    ]
    return columns, rows


def checked_predictions(model: nn.Module, x: torch.Tensor, where: str) -> torch.Tensor:
    """Predicted labels (N,) of x: (N, C, H, W), after checking that the logits are finite."""
    logits = predict_logits(model, x)
    check_finite_logits(logits, where)
    return logits.argmax(1).cpu()


@dataclass(frozen=True)
class Analysis:
    """What the run reads off the test images: maps, f's predictions, segments, statistics."""

    maps: MapSet
    predictions: dict[str, torch.Tensor]
    segments: Segments
    statistics: dict[str, Any]
    per_image: PerImage


def analyse(prepared: Prepared, attacks: list[AttackEntry], cache: StageCache, timings: Timings) -> Analysis:
    """The maps, predictions, segments and statistics of the test images (each stage cached)."""
    c, f, test = prepared.config, prepared.model, prepared.splits.test
    with timings("maps"):
        maps = compute_maps(f, prepared.model_key, test, attacks, c, cache)
        parts = chunks(test.images, test.labels, c.chunk_size)
        where = "the model's outputs on the test images"
        predictions = {"clean": torch.cat([checked_predictions(f, p.x, where) for p in parts])}
        predictions |= {k: a.prediction for k, a in maps.attacked.items()}
    with timings("statistics"):
        rerun = restart_and_seed_maps(prepared, attacks, cache)
        statistics, per_image = dataset_statistics(test.labels, test.classes, maps, c, cache, rerun)
    return Analysis(maps, predictions, segments_of(maps, c), statistics, per_image)


def results_of(
    prepared: Prepared,
    attacks: list[AttackEntry],
    found: Analysis,
    tables: DefenceTables,
    oracle: list[Any],
    timings: Timings,
) -> dict[str, Any]:
    """The content of results.json."""
    c, test, maps, pred = prepared.config, prepared.splits.test, found.maps, found.predictions
    summaries = [
        attack_summary(e, maps.readings[e.label], test.labels, maps.attacked[e.label], pred["clean"]) for e in attacks
    ]
    return header("run", prepared, timings) | {
        "dataset": dataset_info(prepared, test, prepared.splits.fit),
        "model": model_info(prepared, float((pred["clean"] == test.labels).double().mean())),
        "attacks": summaries,
        "maps": maps_summary(c, maps),
        "regions": segment_summary(found.segments, c),
        "statistics": found.statistics,
        "defence": tables.rows,
        "defence_short": tables.short_rows,
        "comparisons": tables.comparisons,
        "oracle": oracle,
    }


def folder_of(
    prepared: Prepared, attacks: list[AttackEntry], found: Analysis, tables: DefenceTables, results: dict[str, Any]
) -> ResultsFolder:
    """The results folder's content: results, config, per-image tables, maps and gallery arrays."""
    glob, test = tables.global_defence.model, prepared.splits.test
    assert isinstance(glob, Neutralized)
    arrays = map_arrays(prepared, found.maps, found.segments, found.predictions, glob.masks(test.images[:1])[0])
    arrays |= gallery_arrays(prepared, found.maps, found.segments, glob, attacks)
    csv = {"per_image.csv": per_image_table(test, found.predictions, found.per_image), "flags.csv": tables.flags}
    numpy = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
    return ResultsFolder("run", to_json(results), prepared.config.to_dict(), csv, numpy)


@uses_executor
def run_experiment(
    config: Config,
    *,
    model: nn.Module | None = None,
    data: DataLike | None = None,
    fit_data: DataLike | None = None,
    cache: StageCache | None = None,
) -> RunResult:
    """Run every stage of ``run`` and return the results in memory (``.write(out)`` writes the folder).

    Expensive stages are cached in ``cache`` (default: the user's cache folder; ``StageCache(None)`` keeps
    nothing on disk), so an interrupted run resumes and a second run recomputes nothing."""
    cache = StageCache.default() if cache is None else cache
    timings = Timings()
    with timings("prepare"):
        prepared = prepare(config, model=model, data=data, fit_data=fit_data)
    config = prepared.config  # with the values left open chosen from the data
    attacks = attack_entries(config.attacks, config.batch_size)
    found = analyse(prepared, attacks, cache, timings)
    ctx = build_context(prepared, prepared.splits.fit, attacks, cache)
    with timings("defence"):
        tables = defence_tables(prepared, ctx, attacks, cache)
    with timings("oracle"):
        glob = tables.global_defence
        fill = spec_fill(parse_defence("global", config), ctx)
        qs, key = config.defence.oracle_q, prepared.model_key
        oracle = oracle_rows(prepared.model, key, found.maps, fill, glob.key, config, cache, qs)
        decomposition = oracle_decomposition(prepared.model, key, found.maps, fill, glob.key, config, cache)
    results = results_of(prepared, attacks, found, tables, oracle, timings)
    results |= {"oracle_decomposition": decomposition, "oracle_note": ORACLE_NOTE}
    folder = folder_of(prepared, attacks, found, tables, results)
    return RunResult(prepared, found.maps, found.segments, found.predictions, found.per_image, folder)


def maps_summary(config: Config, maps: MapSet) -> dict[str, Any]:
    """How the importance and vulnerability maps were made."""
    m = config.maps
    importance: dict[str, Any] = {"method": m.importance, "params": dict(m.importance_params)}
    if m.importance == "occlusion":
        importance |= {
            "window": m.window,
            "stride": m.stride,
            "baseline": m.baseline,
            "output": "logit drop" if m.importance_params.get("output") == "logit" else "softmax probability drop",
        }
    roa = "mean of the attacks' maps, each scaled to unit mean |A|"
    if m.vulnerability_estimator is not None:
        roa = f"the {m.vulnerability_estimator!r} estimator's map, scaled to unit mean |A|"
    return {
        "importance": importance,
        "vulnerability": {"source": m.vulnerability, "per_attack": maps.readings, ALL: roa},
    }
