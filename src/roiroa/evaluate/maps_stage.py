"""The maps stage: every attack, the importance map and the saliency of a set of images, chunk by chunk.

Each chunk's attacks and maps are cached tasks. What the stage keeps of a set of N images is maps, (N, H, W), and
per-image values: an attack's images, (N, C, H, W), stay in the stage cache and are read back one chunk at a time
(:class:`AttackImages`), and image files are decoded one chunk at a time, so memory grows with N only by the maps
the run writes. The vulnerability map of each attack is read from its trace (its images and the gradients
recorded while it ran), whatever attack it is.
"""

from __future__ import annotations

from collections.abc import Iterator
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
from roiroa.maps.registry import create_estimator
from roiroa.maps.saliency import Saliency
from roiroa.maps.vulnerability import mean_vulnerability, perturbation_map, unit_mean, vulnerability_reading
from roiroa.models.predict import check_finite_logits, predict_logits
from roiroa.utils import model_device, seed_all


@dataclass(frozen=True)
class AttackImages:
    """One attack on a set of N images: what the later stages read of it, per image, and its images, read back
    from the stage cache one chunk at a time (computed again where an entry has gone).

    gradient: (N, H, W) >= 0, the attack's input gradients summed over its steps (zero for a gradient-free attack);
    gradient_calls: how many gradients reached the input; perturbation: (N, H, W) >= 0, |x_adv - x| (L2 over
    channels); linf, l2: (N,) the size of x_adv - x; prediction: (N,) f's labels on x_adv.
    parts, tasks: the chunks of the set and the attack's task on each (in order).
    """

    gradient: torch.Tensor
    gradient_calls: int
    perturbation: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    prediction: torch.Tensor
    parts: tuple[Chunk, ...]
    tasks: tuple[Task, ...]
    cache: StageCache
    READ = ("gradient", "perturbation", "linf", "l2", "prediction")  # the values read of each chunk's images

    def chunks(self) -> Iterator[tuple[Chunk, torch.Tensor]]:
        """Each chunk with its attacked images x_adv: (n, C, H, W) in [0, 1], one chunk in memory at a time."""
        for part, task in zip(self.parts, self.tasks, strict=True):
            yield part, self._x_adv(task)

    def _x_adv(self, task: Task) -> torch.Tensor:
        return self.cache.tensors(task.key, task.compute)["x_adv"]

    def at(self, idx: torch.Tensor) -> torch.Tensor:
        """x_adv (len(idx), C, H, W) of the images at positions ``idx`` (1-D int64) of the set, in that order."""
        wanted = [int(i) for i in idx.tolist()]
        found: dict[int, torch.Tensor] = {}
        for part, task in zip(self.parts, self.tasks, strict=True):
            inside = [i for i in wanted if part.where.start <= i < part.where.stop]
            if inside:  # only the chunks that hold a wanted image are read
                x_adv = self._x_adv(task)
                found |= {i: x_adv[i - part.where.start] for i in inside}
        return torch.stack([found[i] for i in wanted])

    @property
    def x_adv(self) -> torch.Tensor:
        """All N attacked images (N, C, H, W) at once (memory N x C x H x W: for small sets; stages use chunks())."""
        return torch.cat([x_adv for _, x_adv in self.chunks()])


def attack_readout(
    model: nn.Module, parts: tuple[Chunk, ...], label: str, i: int, stored: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """What the stages read of the attack task's result on chunk i of ``parts``: all but its images (the values of
    AttackImages on that chunk)."""
    x_adv, x = stored["x_adv"], parts[i].x.to(stored["x_adv"].device)
    logits = predict_logits(model, x_adv)
    check_finite_logits(logits, f"the model's outputs under {label}")
    delta = x_adv - x
    return {
        "gradient": stored["gradient"],
        "calls": stored["calls"],
        "perturbation": perturbation_map(x, x_adv),
        "linf": delta.flatten(1).abs().amax(1),
        "l2": delta.flatten(1).norm(dim=1),
        "prediction": logits.argmax(1).cpu(),
    }


@dataclass(frozen=True)
class MapSet:
    """Maps of one set of images, all (N, H, W), and the attacks behind them.

    importance: the configured importance estimator's map; saliency: gradient saliency (for per-input scopes).
    vulnerability: attack label -> that attack's map; roa_map: the map the RoA of the run is taken from (the mean
    of the attacks' maps, each at unit mean per image, or the configured vulnerability estimator's map).
    attacked: attack label -> its AttackImages; readings: attack label -> 'gradient' or 'perturbation'.
    keys: the stage-cache entries the maps came from (their identity for later stages).
    """

    importance: torch.Tensor
    saliency: torch.Tensor
    vulnerability: dict[str, torch.Tensor]
    roa_map: torch.Tensor
    attacked: dict[str, AttackImages]
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
) -> tuple[dict[str, AttackImages], list[str]]:
    """Each attack on ``data`` (label -> AttackImages), chunk by chunk (cached), and the task keys.

    ``purpose`` salts the attacks' seeds: 'attack' for the run's attacks; another word for a second,
    independent run of the same attacks (the consistency of the RoA across random restarts).
    """
    parts = tuple(chunks(data.images, data.labels, config.chunk_size))
    out = {}
    for e in attacks:
        tasks = tuple(attack_task(cache, e, model, model_key, c, config.seed, purpose=purpose) for c in parts)
        out[e.label] = attack_images(model, e.label, parts, tasks, cache)
    return out, [t.key for a in out.values() for t in a.tasks]


def attack_images(
    model: nn.Module, label: str, parts: tuple[Chunk, ...], tasks: tuple[Task, ...], cache: StageCache
) -> AttackImages:
    """The AttackImages of one attack whose task on each chunk of ``parts`` is ``tasks`` (each returning x_adv,
    gradient and calls), run on the current executor; only what is read of each chunk's images is kept."""
    keep = partial(attack_readout, model, parts, label)
    read = run_tasks(tasks, cache, f"attack {label}", reduce=keep)
    calls = sum(int(r["calls"][0]) for r in read)
    gradient, perturbation, linf, l2, pred = (concat(read, k) for k in AttackImages.READ)
    return AttackImages(gradient, calls, perturbation, linf, l2, pred, parts, tasks, cache)


def vulnerability_maps(
    attacks: list[AttackEntry], attacked: dict[str, AttackImages], config: Config
) -> dict[str, torch.Tensor]:
    """label -> the vulnerability map (N, H, W) of each attack, read as ``maps.vulnerability`` says: its summed
    gradients or its perturbation (see :mod:`roiroa.maps.vulnerability`)."""
    out = {}
    for e in attacks:
        a = attacked[e.label]
        reading = vulnerability_reading(e.attack.norm, config.maps.vulnerability, a.gradient_calls > 0)
        out[e.label] = a.gradient if reading == "gradient" else a.perturbation
    return out


def compute_maps(
    model: nn.Module,
    model_key: str,
    data: ImageDataset,
    attacks: list[AttackEntry],
    config: Config,
    cache: StageCache,
) -> MapSet:
    """Attack ``data`` with every attack and compute its importance and saliency maps, chunk by chunk (cached)."""
    attacked, keys = attack_maps(model, model_key, data, attacks, config, cache)
    parts = chunks(data.images, data.labels, config.chunk_size)
    map_tasks = [importance_task(cache, model, model_key, c, config) for c in parts]
    maps = run_tasks(map_tasks, cache, "importance")
    keys += [t.key for t in map_tasks]
    src = config.maps.vulnerability
    readings = {
        e.label: vulnerability_reading(e.attack.norm, src, attacked[e.label].gradient_calls > 0) for e in attacks
    }
    vulnerability = vulnerability_maps(attacks, attacked, config)
    if config.maps.vulnerability_estimator is not None:
        estimator_tasks = [estimator_task(cache, model, model_key, c, config) for c in parts]
        roa_map = concat(run_tasks(estimator_tasks, cache, "RoA estimator"), "roa")
        keys += [t.key for t in estimator_tasks]
    elif vulnerability:
        roa_map = mean_vulnerability(list(vulnerability.values()))
    else:
        roa_map = torch.zeros_like(concat(maps, "importance"))
    return MapSet(
        concat(maps, "importance"), concat(maps, "saliency"), vulnerability, roa_map, attacked, readings, tuple(keys)
    )
