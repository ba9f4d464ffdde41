"""The attacks of an experiment, and the attack task: one attack on one chunk of images against one target.

An attack entry is {name, label?, hyperparameters...} (a registered attack or user code); its label names it in
every table. The attack task is content-addressed by the target's identity (a model hash or a defence key), the
attack's parameters, the chunk's content and the seed, so the same attack on the same images is computed once,
whichever command asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from roiroa.attacks.base import ATTACKS, Attack, attack_params, create_attack
from roiroa.cache import StageCache, hash_tensors
from roiroa.errors import InputError
from roiroa.evaluate.tasks import Chunk, Task, task_seed
from roiroa.maps.recorder import record_attack
from roiroa.registry import accepted
from roiroa.utils import model_device, seed_all

# Names the tables use for things that are not attacks: an attack may not be labelled so.
RESERVED_LABELS = ("clean", "all", "none", "worst-case")
META_KEYS = ("name", "label")


@dataclass(frozen=True)
class AttackEntry:
    """One attack of an experiment: its label, the attack, and whether it needs gradients.

    gradient_free: True for score-based attacks (Square): they run on a defence as it is; gradient attacks
    are crafted on f (non-adaptive) and through the defence (adaptive).
    """

    label: str
    attack: Attack
    params: dict[str, Any]
    gradient_free: bool


def attack_label(spec: dict[str, Any]) -> str:
    """The name results use for an attack entry: its 'label', else its registered 'name'."""
    return str(spec.get("label", spec["name"]))


def attack_entry(spec: dict[str, Any], batch_size: int, **defaults: Any) -> AttackEntry:
    """The AttackEntry of one config entry; ``batch_size`` and ``defaults`` apply where the spec leaves them."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise InputError(f"an attack entry needs a 'name', e.g. {{name = 'pgd-linf'}}; got {spec!r}.")
    kwargs = {k: v for k, v in spec.items() if k not in META_KEYS}
    given = accepted(ATTACKS.get(spec["name"]), {"batch_size": batch_size} | defaults) | kwargs
    attack = create_attack(spec["name"], **given)
    return AttackEntry(attack_label(spec), attack, attack_params(attack), bool(getattr(attack, "gradient_free", False)))


def attack_entries(specs: tuple[dict[str, Any], ...], batch_size: int, **defaults: Any) -> list[AttackEntry]:
    """The entries of an attack list, in order; labels must be distinct and not reserved."""
    entries = [attack_entry(s, batch_size, **defaults) for s in specs]
    labels = [e.label for e in entries]
    for label in labels:
        if label in RESERVED_LABELS:
            raise InputError(f"attack label {label!r} is reserved for the tables; give the attack another 'label'.")
    if len(set(labels)) != len(labels):
        raise InputError("two attacks share a name; give each a distinct 'label'.")
    return entries


def fits_first(attack: Attack) -> bool:
    """True for attacks fitted on other images before they run (a universal patch)."""
    return callable(getattr(attack, "fit", None))


def _trace(
    entry: AttackEntry,
    target: nn.Module,
    chunk: Chunk,
    seed: int,
    fit: tuple[torch.Tensor, torch.Tensor] | None,
    record: bool,
) -> dict[str, torch.Tensor]:
    """Run the attack on the chunk: x_adv, the recorded gradient (zero unless ``record``), and the patch mask
    where the attack has one."""
    seed_all(seed)
    attack: Any = entry.attack
    if fits_first(attack) and fit is not None:
        attack.fit(target, fit[0].to(model_device(target)), fit[1].to(model_device(target)))
    if callable(getattr(attack, "run", None)):  # a localized attack reports where its patch is
        result = attack.run(target, chunk.x, chunk.y)
        zeros = torch.zeros(len(chunk.x), *chunk.x.shape[2:])
        return {"x_adv": result.x_adv, "gradient": zeros, "calls": torch.zeros(1), "patch_mask": result.patch_mask}
    if not record:
        zeros = torch.zeros(len(chunk.x), *chunk.x.shape[2:])
        return {"x_adv": attack(target, chunk.x, chunk.y).detach().cpu(), "gradient": zeros, "calls": torch.zeros(1)}
    trace = record_attack(attack, target, chunk.x, chunk.y, int(getattr(attack, "batch_size", 64)))
    return {"x_adv": trace.x_adv, "gradient": trace.gradient, "calls": torch.tensor([trace.gradient_calls])}


def attack_task(
    cache: StageCache,
    entry: AttackEntry,
    target: nn.Module,
    target_key: str,
    chunk: Chunk,
    seed: int,
    fit: tuple[torch.Tensor, torch.Tensor] | None = None,
    purpose: str = "attack",
    record: bool = True,
) -> Task:
    """The cached task of ``entry`` against ``target`` (identified by ``target_key``) on one chunk.

    Its random numbers derive from ``seed``, ``purpose`` (another word gives an independent second run), the
    attack's label and the chunk's content. ``record`` keeps where the attack's gradients acted (the maps need
    it; an attack through a defence does not).
    """
    seed = task_seed(seed, purpose, entry.label, chunk.digest)
    inputs = {
        "target": target_key,
        "attack": entry.params,
        "data": chunk.digest,
        "seed": seed,
        "fit": hash_tensors(*fit) if fit is not None and fits_first(entry.attack) else None,
        "device": model_device(target).type,
        "record": record,
    }
    compute = partial(_trace, entry, target, chunk, seed, fit, record)
    return Task(cache.key("attack", inputs), compute)
