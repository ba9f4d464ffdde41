"""The experiment runner: data -> model -> attacks and maps -> regions -> defence -> oracle.

``run_experiment(config)`` returns a :class:`RunResult` in memory; :mod:`roiroa.report.run_folder`
writes it to disk.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import roiroa
from roiroa.attacks.base import Attack, AttackResult, create_attack
from roiroa.cache import hash_tensors
from roiroa.data.dataset import ImageDataset, sample_per_class, split_by_class
from roiroa.data.readers import load_dataset
from roiroa.defence.neutralizer import GlobalMask, Neutralizer, fill_value, random_mask_like
from roiroa.errors import InputError
from roiroa.evaluate.config import RunConfig, attack_kwargs, attack_label, importance_spec
from roiroa.evaluate.dataset_statistics import dataset_statistics
from roiroa.evaluate.robustness import evaluate_defence, mean, oracle_analysis
from roiroa.evaluate.stages import StageCache, model_hash
from roiroa.maps.registry import create_estimator
from roiroa.maps.saliency import Saliency
from roiroa.maps.vulnerability import attack_vulnerability, mean_vulnerability, unit_mean
from roiroa.models.loading import check_model_fits, load_model
from roiroa.models.normalize import normalization_values
from roiroa.models.predict import predict
from roiroa.models.train import TrainedModel, load_or_train
from roiroa.regions.segments import SEGMENT_NAMES, Segments
from roiroa.regions.statistics import dice, iou, pearson, spearman, summarize
from roiroa.regions.thresholds import isolate
from roiroa.utils import batch_slices, model_device, progress, resolve_device, seed_all, stage_seed

log = logging.getLogger(__name__)
ALL = "all"  # the key of the mean vulnerability over all attacks


class Timings(dict):
    """Seconds per stage; ``with timings('stage'):`` adds the time spent inside and logs it (if it succeeds)."""

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self[stage] = round(self.get(stage, 0.0) + elapsed, 3)
        log.info("  %-16s %6.1f s", stage, elapsed)


@dataclass(frozen=True)
class Splits:
    """train: trains the model; fit: the subset of train that fits the mask; test: evaluation."""

    train: ImageDataset
    fit: ImageDataset
    test: ImageDataset


@dataclass(frozen=True)
class MapSet:
    """Maps of one set of images (all (N, H, W)) and the attack results behind them.

    vulnerability: label -> that attack's map, and ``'all'`` -> their mean (each at unit mean).
    """

    importance: torch.Tensor
    saliency: torch.Tensor
    vulnerability: dict[str, torch.Tensor]
    results: dict[str, AttackResult]
    keys: tuple[str, ...] = ()  # the stage-cache entries the maps came from


@dataclass
class RunResult:
    """Everything a run produced, in memory. ``results`` is the content of results.json."""

    config: RunConfig
    results: dict[str, Any]
    splits: Splits
    model: nn.Module
    test_maps: MapSet
    segments: Segments
    mask: GlobalMask
    random_mask: torch.Tensor
    fill: torch.Tensor
    predictions: dict[str, torch.Tensor]
    per_image: dict[str, torch.Tensor]


def load_splits(config: RunConfig) -> Splits:
    """Read the dataset, split it by class (seeded), and draw the fitting and (capped) test sets."""
    data = load_dataset(config.data.source, config.data.labels)
    if config.data.fit_source is not None:  # every source image is a test image; train and fit from elsewhere
        train, test = load_dataset(config.data.fit_source, config.data.fit_labels), data
        if train.num_classes != test.num_classes:
            raise InputError(
                f"data.fit_source has {train.num_classes} classes but data.source has {test.num_classes}: "
                "give datasets with the same classes."
            )
    else:
        train, test = split_by_class(data, config.data.test_fraction, config.seed)
    if config.data.max_test is not None:
        test = sample_per_class(test, config.data.max_test, stage_seed(config.seed, "test-subset"))
    fit = sample_per_class(train, config.data.n_fit, stage_seed(config.seed, "fit-subset"))
    return Splits(train, fit, test)


def check_fits_data(config: RunConfig, data: ImageDataset) -> None:
    """Raise before any work if the config cannot apply to images of this size."""
    _, h, w = data.image_shape
    if config.maps.window > min(h, w):
        raise InputError(
            f"maps.window ({config.maps.window}) is larger than the images ({h}x{w}): use a smaller window."
        )
    if h != w or h < 4:
        raise InputError(
            f"the {config.model.arch} model needs square images of at least 4x4; got {h}x{w}: resize them."
        )


def prepare_model(config: RunConfig, splits: Splits, device: torch.device) -> TrainedModel:
    """The model of the run: loaded from ``model.weights`` where given, else trained (cached); checked on one image."""
    m, test = config.model, splits.test
    if m.weights is None:
        trained = load_or_train(m.arch, splits.train, m.training, config.seed, device)
    else:
        start = time.perf_counter()
        norm = normalization_values(m.normalization, m.mean, m.std)
        model = load_model(
            m.arch,
            m.weights,
            image_shape=test.image_shape,
            num_classes=test.num_classes,
            normalization=norm,
            device=device,
            trust_code=m.trust_code,
        )
        trained = TrainedModel(model, Path(m.weights), False, time.perf_counter() - start)
    check_model_fits(trained.model, test.images[0], test.num_classes)
    return trained


def build_attacks(config: RunConfig) -> dict[str, Attack]:
    """label -> attack, in config order."""
    return {attack_label(s): create_attack(s["name"], **attack_kwargs(s, config.batch_size)) for s in config.attacks}


def importance_estimator(config: RunConfig) -> Callable[..., torch.Tensor]:
    """The RoI estimator the config names, with its parameters."""
    name, kwargs = importance_spec(config)
    return create_estimator(name, **kwargs)


def compute_maps(
    model: nn.Module,
    data: ImageDataset,
    attacks: dict[str, Attack],
    config: RunConfig,
    stage: str,
    timings: Timings,
    cache: StageCache | None = None,
) -> MapSet:
    """Run every attack on ``data`` and compute importance, saliency and vulnerability maps.

    The work goes in chunks of ``config.chunk_size`` images (see :func:`map_chunks`), each cached.
    """
    chunks = list(map_chunks(model, data, attacks, config, stage, timings, cache or StageCache(None)))
    vuln = {k: torch.cat([c.vulnerability[k] for c in chunks]) for k in chunks[0].vulnerability}
    if config.maps.vulnerability_estimator is not None:
        with timings(f"vulnerability_{stage}"):
            seed_all(stage_seed(config.seed, f"{stage}:vulnerability-estimator"))
            estimator = create_estimator(config.maps.vulnerability_estimator, **config.maps.vulnerability_params)
            vuln[ALL] = unit_mean(estimator(model, data.images, data.labels))
    return MapSet(
        torch.cat([c.importance for c in chunks]),
        torch.cat([c.saliency for c in chunks]),
        vuln,
        {
            k: AttackResult(
                torch.cat([c.results[k].x_adv for c in chunks]), torch.cat([c.results[k].grad_map for c in chunks])
            )
            for k in attacks
        },
        tuple(key for c in chunks for key in c.keys),
    )


def map_chunks(
    model: nn.Module,
    data: ImageDataset,
    attacks: dict[str, Attack],
    config: RunConfig,
    stage: str,
    timings: Timings,
    cache: StageCache,
) -> Iterator[MapSet]:
    """The maps of ``data`` chunk by chunk (``config.chunk_size`` images each), each chunk cached on disk.

    Only one chunk is computed at a time, so the memory this needs does not grow with the number of
    images. The attacks' random starts of chunk i are seeded from the run's seed, the stage, the
    attack and i, so a chunk read from the cache and a chunk computed again give the same maps.
    """
    model_key = model_hash(model)
    device = model_device(model).type
    m = config.maps
    name, kwargs = importance_spec(config)
    for i, s in enumerate(batch_slices(len(data), config.chunk_size)):
        x, y = data.images[s], data.labels[s]
        inputs = {"model": model_key, "data": hash_tensors(x, y), "device": device}
        seeds = {label: stage_seed(config.seed, f"{stage}:{label}" + (f":{i}" if i else "")) for label in attacks}
        params = {label: a.params() for label, a in attacks.items()}
        attack_key = cache.key("attacks", inputs | {"attacks": params, "seeds": seeds})
        with timings(f"attacks_{stage}"):
            raw = cache.tensors(attack_key, partial(run_attacks, model, x, y, attacks, seeds))
        results = {label: AttackResult(raw[f"x_adv[{label}]"], raw[f"grad_map[{label}]"]) for label in attacks}
        estimator = {"importance": name, "params": kwargs}
        maps_key = cache.key("maps", inputs | estimator | {"saliency_batch_size": config.batch_size})
        with timings(f"importance_{stage}"):
            found = cache.tensors(maps_key, partial(importance_maps, model, x, y, config))
        vuln = {
            label: attack_vulnerability(x, results[label], attacks[label].norm, m.vulnerability)  # type: ignore[arg-type]
            for label in attacks
        }
        vuln[ALL] = mean_vulnerability(list(vuln.values()))
        yield MapSet(found["importance"], found["saliency"], vuln, results, (attack_key, maps_key))


def run_attacks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], seeds: dict[str, int]
) -> dict[str, torch.Tensor]:
    """Every attack on x: (N, C, H, W), each seeded: ``x_adv[<label>]`` (N, C, H, W) and ``grad_map[<label>]``."""
    out = {}
    for label, attack in attacks.items():
        seed_all(seeds[label])
        result = attack.run(model, x, y)
        out[f"x_adv[{label}]"], out[f"grad_map[{label}]"] = result.x_adv, result.grad_map
    return out


def importance_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: RunConfig) -> dict[str, torch.Tensor]:
    """``importance`` (the config's estimator) and ``saliency``, each (N, H, W), of x: (N, C, H, W)."""
    importance = importance_estimator(config)(model, x, y)
    saliency = (
        importance if config.maps.importance == "saliency" else Saliency(batch_size=config.batch_size)(model, x, y)
    )
    return {"importance": importance, "saliency": saliency}


def region_statistics(maps: MapSet, config: RunConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Overlap of RoI and RoA (top-q and Otsu) and correlation of the maps, per attack and for 'all'.

    Returns:
        (the ``regions`` section of results.json, per-image values name -> (N,)).
    """
    r = config.regions
    per_image: dict[str, torch.Tensor] = {}
    section: dict[str, Any] = {"importance": config.maps.importance, "correlation": {}, "overlap": {}}
    for label, vuln in maps.vulnerability.items():
        per_image[f"pearson[{label}]"] = pearson(maps.importance, vuln)
        per_image[f"spearman[{label}]"] = spearman(maps.importance, vuln)
        section["correlation"][label] = {k: summarize(per_image[f"{k}[{label}]"]) for k in ("pearson", "spearman")}
    for method in ("top_q", "otsu"):
        roi = isolate(maps.importance, method, r.q_roi)  # type: ignore[arg-type]
        entry: dict[str, Any] = {"q_roi": r.q_roi, "q_roa": r.q_roa} if method == "top_q" else {}
        for label, vuln in maps.vulnerability.items():
            roa = isolate(vuln, method, r.q_roa)  # type: ignore[arg-type]
            per_image[f"iou_{method}[{label}]"] = iou(roi, roa)
            per_image[f"dice_{method}[{label}]"] = dice(roi, roa)
            entry[label] = {
                "iou": summarize(per_image[f"iou_{method}[{label}]"]),
                "dice": summarize(per_image[f"dice_{method}[{label}]"]),
                "roi_area": float(roi.double().mean()),
                "roa_area": float(roa.double().mean()),
            }
        section["overlap"][method] = entry
    return section, per_image


def test_segments(maps: MapSet, config: RunConfig) -> Segments:
    """The four segments of each test image with the defence's threshold and the mean RoA."""
    r = config.regions
    roi = isolate(maps.importance, r.threshold, r.q_roi)  # type: ignore[arg-type]
    return Segments(roi, isolate(maps.vulnerability[ALL], r.threshold, r.q_roa))  # type: ignore[arg-type]


def attack_summary(
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    result: AttackResult,
    pred_clean: torch.Tensor,
    pred_adv: torch.Tensor,
) -> dict[str, Any]:
    """Parameters, robust accuracy, success rate and perturbation size of one attack on f."""
    ok_clean, ok_adv = pred_clean == y, pred_adv == y
    delta = (result.x_adv - x).flatten(1)
    return {
        "params": attack.params(),
        "robust_accuracy": mean(ok_clean & ok_adv),
        "success_rate": mean(~ok_adv[ok_clean]) if ok_clean.any() else float("nan"),
        "mean_linf": float(delta.abs().amax(1).double().mean()),
        "mean_l2": float(delta.norm(dim=1).double().mean()),
    }


def oracle_rows(
    model: nn.Module,
    test: ImageDataset,
    maps: MapSet,
    segments: Segments,
    fill: torch.Tensor,
    config: RunConfig,
    cache: StageCache | None = None,
) -> list[dict[str, Any]]:
    """The oracle analysis for every attack and every q in ``defence.oracle_q`` (cached)."""
    cache = cache or StageCache(None)
    inputs = {
        "model": model_hash(model),
        "test": hash_tensors(test.images, test.labels, segments.roi, fill),
        "test_maps": maps.keys or [hash_tensors(v) for v in maps.vulnerability.values()],
        "x_adv": [hash_tensors(r.x_adv) for r in maps.results.values()] if not maps.keys else [],
        "vulnerability": config.maps.vulnerability,
        "q_roi": config.regions.q_roi,
        "oracle_q": list(config.defence.oracle_q),
        "seed": stage_seed(config.seed, "oracle-random-masks"),
    }
    return cache.json(cache.key("oracle", inputs), partial(_oracle_rows, model, test, maps, segments, fill, config))


def _oracle_rows(
    model: nn.Module, test: ImageDataset, maps: MapSet, segments: Segments, fill: torch.Tensor, config: RunConfig
) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "oracle-random-masks"))
    rows = []
    for label, result in progress(maps.results.items(), "oracle", total=len(maps.results)):
        for q in config.defence.oracle_q:
            row = oracle_analysis(
                model, test.images, test.labels, result.x_adv, segments.roi, maps.vulnerability[label], q, fill, gen
            )
            rows.append({"attack": label, "q_roa": q, "q_roi": config.regions.q_roi, **row})
    return rows


def versions() -> dict[str, str]:
    """Versions of roiroa, torch and Python."""
    return {"roiroa": roiroa.__version__, "torch": torch.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class DefenceStage:
    """The fitted global mask, its equal-area random control, the fill, and the evaluation rows."""

    mask: GlobalMask
    random_mask: torch.Tensor
    fill: torch.Tensor
    rows: list[dict[str, Any]]


def defence_stage(
    model: nn.Module,
    splits: Splits,
    fit_maps: MapSet,
    test_maps: MapSet,
    attacks: dict[str, Attack],
    config: RunConfig,
    cache: StageCache | None = None,
) -> DefenceStage:
    """Fit the global mask on the fitting maps and evaluate f o N and the random control on the test set."""
    r, device = config.regions, model_device(model)
    mask = GlobalMask(r.q_roi, r.q_roa, r.threshold).fit(fit_maps.importance, fit_maps.vulnerability[ALL])  # type: ignore[arg-type]
    fill = fill_value(config.defence.fill, splits.fit.images)  # type: ignore[arg-type]
    random_mask = random_mask_like(mask.mask_, torch.Generator().manual_seed(stage_seed(config.seed, "random-mask")))
    defended = mask.wrap(model, fill).to(device)
    control = Neutralizer(model, random_mask, fill).to(device)

    def evaluate() -> list[dict[str, Any]]:
        seed_all(stage_seed(config.seed, "adaptive"))
        return evaluate_defence(defended, control, splits.test.images, splits.test.labels, attacks, test_maps.results)

    cache = cache or StageCache(None)
    inputs = {
        "model": model_hash(model),
        "test": hash_tensors(splits.test.images, splits.test.labels),
        "masks": hash_tensors(mask.mask_, random_mask, fill),
        "test_maps": test_maps.keys or [hash_tensors(r.x_adv) for r in test_maps.results.values()],
        "attacks": {label: a.params() for label, a in attacks.items()},
        "seed": stage_seed(config.seed, "adaptive"),
        "device": device.type,
    }
    rows = cache.json(cache.key("defence", inputs), evaluate)
    meta = {"mask": "global", "fill": config.defence.fill, "threshold": r.threshold}
    return DefenceStage(mask, random_mask, fill, [meta | row for row in rows])


def run_experiment(config: RunConfig, cache: StageCache | None = None) -> RunResult:
    """Run every stage of a config and return the results in memory.

    The expensive stages (attacks, maps, defence, oracle) are cached on disk in ``cache`` (default:
    :meth:`StageCache.default`; ``StageCache(None)`` turns caching off), so a run that was interrupted
    resumes from the stages it finished and gives the same results.
    """
    cache = StageCache.default() if cache is None else cache
    timings = Timings()
    device = resolve_device(config.device)
    with timings("data"):
        splits = load_splits(config)
        check_fits_data(config, splits.test)
    with timings("model"):
        trained = prepare_model(config, splits, device)
    model, test = trained.model, splits.test
    attacks = build_attacks(config)
    test_maps = compute_maps(model, test, attacks, config, "test", timings, cache)
    predictions = {"clean": predict(model, test.images)} | {
        label: predict(model, r.x_adv) for label, r in test_maps.results.items()
    }
    summaries = {
        label: attack_summary(
            a, test.images, test.labels, test_maps.results[label], predictions["clean"], predictions[label]
        )
        for label, a in attacks.items()
    }
    with timings("regions"):
        regions, per_image = region_statistics(test_maps, config)
        segments = test_segments(test_maps, config)
    with timings("statistics"):
        statistics, statistics_per_image = dataset_statistics(model, test, test_maps, attacks, config, splits.train)
        per_image |= statistics_per_image
    fit_maps = compute_maps(model, splits.fit, attacks, config, "fit", timings, cache)
    with timings("defence"):
        defence = defence_stage(model, splits, fit_maps, test_maps, attacks, config, cache)
    with timings("oracle"):
        oracle = oracle_rows(model, test, test_maps, segments, defence.fill, config, cache)
    with timings("defence_short"):
        from roiroa.evaluate.defend import short_form_rows  # defend imports this module

        short_rows = short_form_rows(model, splits, fit_maps, test_maps, attacks, config)
    undefended = {label: {"undefended_accuracy": s["robust_accuracy"]} for label, s in summaries.items()}
    results = {
        "roiroa_results_version": 1,
        "seed": config.seed,
        "quick": config.quick,
        "device": device.type,
        "dataset": dataset_summary(splits, config),
        "model": model_summary(trained, config, mean(predictions["clean"] == test.labels)),
        "attacks": summaries,
        "maps": maps_summary(config, attacks),
        "regions": regions | {"segments": segment_summary(segments, config)},
        "statistics": statistics,
        "defence": [row | undefended[row["attack"]] for row in defence.rows],
        "defence_short": short_rows,
        "oracle": [row | undefended[row["attack"]] for row in oracle],
        "timings": timings,
        "versions": versions(),
    }
    return RunResult(
        config,
        results,
        splits,
        model,
        test_maps,
        segments,
        defence.mask,
        defence.random_mask,
        defence.fill,
        predictions,
        per_image,
    )


def dataset_summary(splits: Splits, config: RunConfig) -> dict[str, Any]:
    return {
        "name": splits.test.name,
        "source": config.data.source,
        "classes": list(splits.test.classes),
        "image_shape": list(splits.test.image_shape),
        "n_train": len(splits.train),
        "n_fit": len(splits.fit),
        "n_test": len(splits.test),
    }


def model_summary(trained: TrainedModel, config: RunConfig, test_accuracy: float) -> dict[str, Any]:
    return {
        "name": config.model.arch,
        "test_accuracy": test_accuracy,
        "parameters": sum(p.numel() for p in trained.model.parameters()),
        "checkpoint": str(trained.checkpoint),
        "from_cache": trained.from_cache,
        "pretrained": config.model.weights is not None,
        "normalization": normalization_summary(config),
    }


def normalization_summary(config: RunConfig) -> dict[str, Any] | None:
    """The preset and (mean, std) applied inside the model, or None."""
    values = normalization_values(config.model.normalization, config.model.mean, config.model.std)
    if values is None:
        return None
    return {"preset": config.model.normalization, "mean": list(values[0]), "std": list(values[1])}


def maps_summary(config: RunConfig, attacks: dict[str, Attack]) -> dict[str, Any]:
    m = config.maps
    importance: dict[str, Any] = {"method": m.importance}
    if m.importance == "occlusion":
        importance |= {
            "window": m.window,
            "stride": m.stride,
            "baseline": m.baseline,
            "output": "softmax probability drop",
        }
    used = {
        label: (
            "gradient"
            if m.vulnerability == "gradient" or (m.vulnerability == "auto" and a.norm == "linf")
            else "perturbation"
        )
        for label, a in attacks.items()
    }
    if m.importance_params:
        importance["params"] = dict(m.importance_params)
    vulnerability: dict[str, Any] = {
        "source": m.vulnerability,
        "per_attack": used,
        ALL: "mean of the maps, each scaled to unit mean |A|",
    }
    if m.vulnerability_estimator is not None:
        vulnerability[ALL] = f"the {m.vulnerability_estimator!r} estimator's map, scaled to unit mean |A|"
        vulnerability["estimator"] = {"name": m.vulnerability_estimator, "params": dict(m.vulnerability_params)}
    return {"importance": importance, "vulnerability": vulnerability}


def segment_summary(segments: Segments, config: RunConfig) -> dict[str, Any]:
    fractions = segments.fractions()
    return {"threshold": config.regions.threshold, "roa": ALL} | {n: float(fractions[n].mean()) for n in SEGMENT_NAMES}
