"""The maps stage: every attack, the importance map and the saliency of a set of images, chunk by chunk.

Each chunk's attacks and maps are cached tasks; only one chunk is in flight at a time, so the memory this needs
does not grow with the number of images. The vulnerability map of each attack is read from its trace (its
images and the gradients recorded while it ran), whatever attack it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from roiroa.cache import StageCache
from roiroa.data.dataset import ImageDataset
from roiroa.evaluate.attacking import AttackEntry, attack_task
from roiroa.evaluate.config import Config
from roiroa.evaluate.tasks import Chunk, Task, chunks, concat, run_tasks, task_seed
from roiroa.maps.recorder import AttackTrace
from roiroa.maps.registry import create_estimator
from roiroa.maps.saliency import Saliency
from roiroa.maps.vulnerability import (
    attack_vulnerability,
    mean_vulnerability,
    perturbation_map,
    unit_mean,
    vulnerability_reading,
)
from roiroa.utils import model_device, seed_all


@dataclass(frozen=True)
class MapSet:
    """Maps of one set of images, all (N, H, W), and the attack traces behind them.

    importance: the configured importance estimator's map; saliency: gradient saliency (for per-input scopes).
    vulnerability: attack label -> that attack's map; roa_map: the map the RoA of the run is taken from (the mean
    of the attacks' maps, each at unit mean per image, or the configured vulnerability estimator's map).
    traces: attack label -> its AttackTrace; readings: attack label -> 'gradient' or 'perturbation'.
    keys: the stage-cache entries the maps came from (their identity for later stages).
    """

    importance: torch.Tensor
    saliency: torch.Tensor
    vulnerability: dict[str, torch.Tensor]
    roa_map: torch.Tensor
    traces: dict[str, AttackTrace]
    readings: dict[str, str]
    keys: tuple[str, ...]


def importance_spec(config: Config) -> tuple[str, dict[str, Any]]:
    """The importance estimator's name and keywords: occlusion gets the window, stride, baseline and batch size
    of ``maps``, saliency the run's batch size; ``importance_params`` win."""
    m = config.maps
    base: dict[str, Any] = {}
    if m.importance == "occlusion":
        base = {"window": m.window, "stride": m.stride, "baseline": m.baseline, "batch_size": m.batch_size}
    elif m.importance == "saliency":
        base = {"batch_size": config.batch_size}
    return m.importance, base | dict(m.importance_params)


def _importance(model: nn.Module, chunk: Chunk, config: Config) -> dict[str, torch.Tensor]:
    name, kwargs = importance_spec(config)
    device = model_device(model)
    x, y = chunk.x.to(device), chunk.y.to(device)
    importance = create_estimator(name, **kwargs)(model, x, y)
    saliency = importance if name == "saliency" else Saliency(batch_size=config.batch_size)(model, x, y)
    return {"importance": importance.float(), "saliency": saliency.float()}


def importance_task(cache: StageCache, model: nn.Module, model_key: str, chunk: Chunk, config: Config) -> Task:
    name, kwargs = importance_spec(config)
    inputs: dict[str, Any] = {"model": model_key, "data": chunk.digest, "importance": name, "params": kwargs}
    inputs |= {"saliency_batch_size": config.batch_size, "device": model_device(model).type}
    return Task(cache.key("maps", inputs), partial(_importance, model, chunk, config))


def _estimated_roa(model: nn.Module, chunk: Chunk, config: Config, seed: int) -> dict[str, torch.Tensor]:
    seed_all(seed)
    m = config.maps
    estimator = create_estimator(str(m.vulnerability_estimator), **m.vulnerability_params)
    device = model_device(model)
    return {"roa": unit_mean(estimator(model, chunk.x.to(device), chunk.y.to(device))).float().cpu()}


def estimator_task(cache: StageCache, model: nn.Module, model_key: str, chunk: Chunk, config: Config) -> Task:
    m = config.maps
    seed = task_seed(config.seed, "vulnerability-estimator", chunk.digest)
    inputs: dict[str, Any] = {"model": model_key, "data": chunk.digest, "estimator": m.vulnerability_estimator}
    inputs |= {"params": m.vulnerability_params, "seed": seed, "device": model_device(model).type}
    return Task(cache.key("roa-estimator", inputs), partial(_estimated_roa, model, chunk, config, seed))


def attack_maps(
    model: nn.Module,
    model_key: str,
    data: ImageDataset,
    attacks: list[AttackEntry],
    config: Config,
    cache: StageCache,
    purpose: str = "attack",
) -> tuple[dict[str, AttackTrace], list[str]]:
    """Each attack's trace on ``data`` (label -> AttackTrace), chunk by chunk (cached), and the task keys.

    ``purpose`` salts the attacks' seeds: 'attack' for the run's attacks; another word for a second,
    independent run of the same attacks (the consistency of the RoA across random restarts).
    """
    parts = chunks(data.images, data.labels, config.chunk_size)
    tasks = {
        e.label: [attack_task(cache, e, model, model_key, c, config.seed, purpose=purpose) for c in parts]
        for e in attacks
    }
    traces = {label: trace_of(run_tasks(t, cache, f"attack {label}")) for label, t in tasks.items()}
    return traces, [t.key for label_tasks in tasks.values() for t in label_tasks]


def vulnerability_maps(
    data: ImageDataset, attacks: list[AttackEntry], traces: dict[str, AttackTrace], config: Config
) -> dict[str, torch.Tensor]:
    """label -> the vulnerability map (N, H, W) of each attack's trace, read as ``maps.vulnerability`` says."""
    return {e.label: vulnerability_map(data, traces[e.label], e.attack.norm, config) for e in attacks}


def vulnerability_map(data: ImageDataset, trace: AttackTrace, norm: str, config: Config) -> torch.Tensor:
    """The vulnerability map (N, H, W) of one attack's trace on ``data``, read as ``maps.vulnerability`` says; the
    perturbation map of image files is read one chunk of decoded images at a time."""
    source = config.maps.vulnerability
    if isinstance(data.images, torch.Tensor):
        return attack_vulnerability(data.images, trace, norm, source)
    if vulnerability_reading(norm, source, trace.gradient_calls > 0) == "gradient":
        return trace.gradient
    parts = chunks(data.images, data.labels, config.chunk_size)
    return torch.cat([perturbation_map(c.x, trace.x_adv[c.where]) for c in parts])


def compute_maps(
    model: nn.Module,
    model_key: str,
    data: ImageDataset,
    attacks: list[AttackEntry],
    config: Config,
    cache: StageCache,
) -> MapSet:
    """Attack ``data`` with every attack and compute its importance and saliency maps, chunk by chunk (cached)."""
    traces, keys = attack_maps(model, model_key, data, attacks, config, cache)
    parts = chunks(data.images, data.labels, config.chunk_size)
    map_tasks = [importance_task(cache, model, model_key, c, config) for c in parts]
    maps = run_tasks(map_tasks, cache, "importance")
    keys += [t.key for t in map_tasks]
    src = config.maps.vulnerability
    readings = {e.label: vulnerability_reading(e.attack.norm, src, traces[e.label].gradient_calls > 0) for e in attacks}
    vulnerability = vulnerability_maps(data, attacks, traces, config)
    if config.maps.vulnerability_estimator is not None:
        estimator_tasks = [estimator_task(cache, model, model_key, c, config) for c in parts]
        roa_map = concat(run_tasks(estimator_tasks, cache, "RoA estimator"), "roa")
        keys += [t.key for t in estimator_tasks]
    elif vulnerability:
        roa_map = mean_vulnerability(list(vulnerability.values()))
    else:
        roa_map = torch.zeros_like(concat(maps, "importance"))
    return MapSet(
        concat(maps, "importance"), concat(maps, "saliency"), vulnerability, roa_map, traces, readings, tuple(keys)
    )


def trace_of(stored: list[dict[str, torch.Tensor]]) -> AttackTrace:
    """The AttackTrace of all chunks of one attack."""
    calls = sum(int(r["calls"][0]) for r in stored)
    return AttackTrace(concat(stored, "x_adv"), concat(stored, "gradient"), calls)
