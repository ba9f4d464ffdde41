"""The robustness grid: defences x attacks x settings on the same images -> per-image correctness flags.

Every command's robustness numbers come from here. A cell is (defence, setting, attack):
- 'clean': the defended model on the clean images;
- 'non-adaptive': the attack crafted on the undefended model f, evaluated on the defence (the post-hoc setting);
- 'adaptive': the attack crafted through the defence end to end (exact gradients, BPDA, EOT as the defence
  says), evaluated on the defence; a defence may name further adaptive variants (another backward pass: a
  smooth surrogate, straight-through through the fill), each its own cell, labelled 'attack[variant]';
- 'gradient-free': a score-based attack (Square) run on the defence as it is.
An image counts as robust in a cell only if the defence classifies the clean image and the attacked image
correctly (RobustBench's convention). Each cell is a cached task per chunk of images; accuracy, its 95% Wilson
interval and the per-image worst case over a defence's cells are computed from the flags.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from roiroa.attacks.base import attack_params
from roiroa.cache import StageCache
from roiroa.data.dataset import Images
from roiroa.defence.fills import reset_fill
from roiroa.evaluate.attacking import AttackEntry, attack_task
from roiroa.evaluate.tasks import Chunk, Task, chunks, concat, run_tasks, subchunk
from roiroa.models.predict import check_finite_logits
from roiroa.regions.statistics import iou
from roiroa.results import ALL, GridRow
from roiroa.utils import batch_slices, model_device

Setting = Literal["clean", "non-adaptive", "adaptive", "gradient-free"]
Kind = Literal["none", "scope", "control", "baseline", "analysis"]


@dataclass(frozen=True)
class AdaptiveVariant:
    """Another way to attack a defence end to end: name (in the cell's label 'attack[name]'), the model a gradient
    attack differentiates (its forward pass is the defence's), and its gradient, in words."""

    name: str
    attack_model: nn.Module
    gradient: str


@dataclass(frozen=True)
class Defence:
    """One defended model of a grid.

    name: its label in tables ('none', 'global', 'random[global]', 'bit_depth', ...); kind: 'none', 'scope',
    'control', 'baseline'; settings: what it is, in words; model: the model that decides; attack_model: what an
    adaptive attack differentiates (an EOT wrapper for a random defence); gradient: how the adaptive attack
    gets its gradient, in words; key: the defence's content identity for the cache; control_of: the scope a
    control copies the area of; adaptive_params: hyperparameters an adaptive attack adds against this defence
    where the attack takes them (e.g. the penalty weight on a detector's anomaly score); variants: further
    adaptive attacks (each gradient attack is also crafted through every variant's attack model).
    """

    name: str
    kind: Kind
    settings: str
    model: nn.Module
    attack_model: nn.Module
    gradient: str
    key: str
    control_of: str | None = None
    adaptive_params: dict[str, Any] = field(default_factory=dict)
    variants: tuple[AdaptiveVariant, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a defence, a setting, an attack label (None for 'clean') and, for an adaptive cell
    through one of the defence's variants, the variant's name."""

    defence: str
    setting: Setting
    attack: str | None = None
    variant: str | None = None

    @property
    def label(self) -> str:
        """The attack as tables name it: 'none' for clean, 'attack[variant]' through a variant."""
        attack = self.attack or "none"
        return attack if self.variant is None else f"{attack}[{self.variant}]"


@dataclass(frozen=True)
class CellResult:
    """Per-image results of a cell: correct (N,) bool; area (N,) blocked fraction of the evaluated input (NaN
    where the defence blocks nothing it can name); detection_iou (N,) with the attack's patch (NaN without one)."""

    cell: Cell
    correct: torch.Tensor
    area: torch.Tensor
    detection_iou: torch.Tensor


@dataclass(frozen=True)
class GridContext:
    """What every cell shares: f and its key, the fitting images (for attacks fitted first), cache and seed; and
    whether gradient-free attacks run only on the images the gradient attacks left (``cascade``)."""

    model: nn.Module
    model_key: str
    cache: StageCache
    seed: int
    fit: tuple[torch.Tensor, torch.Tensor] | None = None
    cascade: bool = True


def standard_cells(defences: Sequence[Defence], attacks: Sequence[AttackEntry]) -> list[Cell]:
    """Clean, and per attack non-adaptive + adaptive (gradient attacks) or gradient-free, for every defence."""
    cells = []
    for d in defences:
        cells.append(Cell(d.name, "clean"))
        for a in attacks:
            settings: tuple[Setting, ...] = ("gradient-free",) if a.gradient_free else ("non-adaptive", "adaptive")
            cells += [Cell(d.name, s, a.label) for s in settings]
            if not a.gradient_free:
                cells += [Cell(d.name, "adaptive", a.label, v.name) for v in d.variants]
    return cells


def masks_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """(N, H, W) bool: the positions a defended model blocks or changes in x, where it can say (else None)."""
    masks = getattr(model, "masks", None)
    return masks(x) if callable(masks) else None


@torch.no_grad()
def decisions(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predicted labels (N,) of a defended model on x: (N, C, H, W) and the masks (N, H, W) it used, where it
    names them (a neutralized model's ``decide`` computes both in one pass), on the CPU."""
    device = model_device(model)
    decide = getattr(model, "decide", None)
    preds, masks = [], []
    for s in batch_slices(len(x), batch_size):
        xb = x[s].to(device)
        logits, m = decide(xb) if callable(decide) else (model(xb), masks_of(model, xb))
        check_finite_logits(logits, "the defended model's outputs")
        preds.append(logits.argmax(1).cpu())
        masks.append(None if m is None else m.cpu())
    return torch.cat(preds), (None if masks[0] is None else torch.cat(masks))  # type: ignore[arg-type]


def _judge(
    defence: Defence, x: torch.Tensor, y: torch.Tensor, patch: torch.Tensor | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """correct (N,), area (N,) and detection_iou (N,) of the defence on x: (N, C, H, W)."""
    fill = getattr(defence.model, "fill", None)
    if fill is not None:
        reset_fill(fill)  # a random fill draws the same numbers for every cell
    pred, m = decisions(defence.model, x, batch_size)
    correct = pred == y.cpu()
    nan = torch.full((len(x),), float("nan"))
    if m is None:
        return {"correct": correct, "area": nan, "iou": nan}
    area = m.flatten(1).double().mean(1).float().cpu()
    overlap = nan if patch is None else torch.nan_to_num(iou(m.cpu(), patch[:, 0].cpu().bool()), 0.0).float()
    return {"correct": correct, "area": area, "iou": overlap}


def with_params(entry: AttackEntry, params: dict[str, Any]) -> AttackEntry:
    """The entry with the hyperparameters in ``params`` that its attack takes (others are ignored)."""
    taken = {k: v for k, v in params.items() if k in entry.params}
    if not taken:
        return entry
    attack = dataclasses.replace(entry.attack, **taken)  # type: ignore[type-var]
    return AttackEntry(entry.label, attack, attack_params(attack), entry.gradient_free)


def _attacked_images(
    context: GridContext, defence: Defence, cell: Cell, entry: AttackEntry, chunk: Chunk
) -> dict[str, torch.Tensor]:
    """The attack task's tensors for this cell: crafted on f, through the defence, or on it."""
    if cell.setting == "non-adaptive" or defence.kind == "none":
        target, key = context.model, context.model_key
    elif cell.setting == "adaptive" and cell.variant is not None:
        target, key = _variant(defence, cell.variant).attack_model, f"{defence.key}:attack_model:{cell.variant}"
        entry = with_params(entry, defence.adaptive_params)
    elif cell.setting == "adaptive":
        target, key = defence.attack_model, f"{defence.key}:attack_model"
        entry = with_params(entry, defence.adaptive_params)
    else:
        target, key = defence.model, f"{defence.key}:model"
    task = attack_task(
        context.cache, entry, target, key, chunk, context.seed, context.fit, record=target is context.model
    )
    return context.cache.tensors(task.key, task.compute)


def _variant(defence: Defence, name: str) -> AdaptiveVariant:
    return next(v for v in defence.variants if v.name == name)


def _cell_chunk(
    context: GridContext,
    defence: Defence,
    cell: Cell,
    entry: AttackEntry | None,
    chunk: Chunk,
    clean: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    batch = int(getattr(entry.attack, "batch_size", 256)) if entry else 256
    if entry is None or clean is None:
        return _judge(defence, chunk.x, chunk.y, None, batch)
    attacked = _attacked_images(context, defence, cell, entry, chunk)
    out = _judge(defence, attacked["x_adv"], chunk.y, attacked.get("patch_mask"), batch)
    out["correct"] &= clean
    return out


def _cell_task(
    context: GridContext,
    defence: Defence,
    cell: Cell,
    entry: AttackEntry | None,
    chunk: Chunk,
    clean: torch.Tensor | None,
) -> Task:
    inputs: dict[str, Any] = {"defence": defence.key, "setting": cell.setting, "data": chunk.digest}
    inputs |= {"variant": cell.variant} if cell.variant is not None else {}
    inputs |= {"model": context.model_key, "seed": context.seed, "attack": entry.params if entry else None}
    compute = partial(_cell_chunk, context, defence, cell, entry, chunk, clean)
    return Task(context.cache.key("cell", inputs), compute)


def evaluate_grid(
    context: GridContext,
    defences: Sequence[Defence],
    attacks: Sequence[AttackEntry],
    cells: Sequence[Cell],
    x: Images,
    y: torch.Tensor,
    chunk_size: int,
) -> dict[Cell, CellResult]:
    """Every cell's per-image results on x: (N, C, H, W) in [0, 1] (a tensor, or image files decoded one chunk at a
    time) with labels y: (N,), chunk by chunk."""
    by_name = {d.name: d for d in defences}
    by_label = {a.label: a for a in attacks}
    results: dict[Cell, list[dict[str, torch.Tensor]]] = {c: [] for c in cells}
    for chunk in chunks(x, y, chunk_size):
        clean_tasks = [_cell_task(context, d, Cell(d.name, "clean"), None, chunk, None) for d in defences]
        clean = dict(zip(by_name, run_tasks(clean_tasks, context.cache, "defences, clean"), strict=True))
        outs = {c: clean[c.defence] for c in cells if c.setting == "clean"}
        first = [c for c in cells if c.setting not in ("clean", "gradient-free")]
        tasks = [
            _cell_task(context, by_name[c.defence], c, by_label[str(c.attack)], chunk, clean[c.defence]["correct"])
            for c in first
        ]
        outs |= dict(zip(first, run_tasks(tasks, context.cache, "defences, attacked"), strict=True))
        free = [c for c in cells if c.setting == "gradient-free"]
        outs |= _gradient_free(context, by_name, by_label, free, chunk, clean, outs)
        for cell in cells:
            results[cell].append(outs[cell])
    return {
        c: CellResult(c, concat(r, "correct").bool(), concat(r, "area"), concat(r, "iou")) for c, r in results.items()
    }


def _gradient_free(
    context: GridContext,
    by_name: dict[str, Defence],
    by_label: dict[str, AttackEntry],
    cells: list[Cell],
    chunk: Chunk,
    clean: dict[str, dict[str, torch.Tensor]],
    done: dict[Cell, dict[str, torch.Tensor]],
) -> dict[Cell, dict[str, torch.Tensor]]:
    """The gradient-free cells of one chunk: with ``context.cascade``, each runs only on the images its defence
    still classifies correctly under every gradient cell in ``done`` (AutoAttack's order: the score-based attack
    spends its queries where the gradient attacks failed), and an image the gradient attacks broke counts as
    broken; else on every image of the chunk."""
    if not cells:
        return {}
    n = len(chunk.y)
    left = {c: torch.ones(n, dtype=torch.bool) for c in cells}
    for c in cells if context.cascade else []:
        left[c] = clean[c.defence]["correct"].clone()
        for other, out in done.items():
            if other.defence == c.defence and other.setting != "clean":
                left[c] &= out["correct"]
    picked = {c: left[c].nonzero().flatten() for c in cells}
    run = [c for c in cells if len(picked[c])]
    tasks = [
        _cell_task(
            context,
            by_name[c.defence],
            c,
            by_label[str(c.attack)],
            subchunk(chunk, picked[c]),
            clean[c.defence]["correct"][picked[c]],
        )
        for c in run
    ]
    outs = dict(zip(run, run_tasks(tasks, context.cache, "defences, gradient-free"), strict=True))
    return {c: _scatter(outs.get(c), picked[c], n) for c in cells}


def _scatter(out: dict[str, torch.Tensor] | None, idx: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """A cell's results on the images at ``idx`` placed among n: images not attacked count as broken (correct
    False), with area and detection IoU NaN."""
    full = {"correct": torch.zeros(n, dtype=torch.bool), "area": torch.full((n,), float("nan"))}
    full["iou"] = full["area"].clone()
    for key, value in (out or {}).items():
        full[key][idx] = value
    return full


Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal (scipy.stats.norm.ppf(0.975))


def interval(correct: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion correct / n (equal to scipy.stats.binomtest's
    ``proportion_ci(method='wilson')``, which the tests check; written out because importing scipy.stats costs
    more than a cached run's whole table)."""
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = correct / n, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def worst_case(results: dict[Cell, CellResult], defence: str, attack: str | None = None) -> torch.Tensor | None:
    """(N,) bool: robust to every attacked cell of ``defence`` (of ``attack`` only, if given); None if no cell."""
    flags = [
        r.correct
        for c, r in results.items()
        if c.defence == defence and c.setting != "clean" and (attack is None or c.attack == attack)
    ]
    return torch.stack(flags).all(0) if flags else None


def grid_flags(results: dict[Cell, CellResult]) -> dict[str, torch.Tensor]:
    """The per-image flags of a grid, for paired tests (McNemar) across cells: 'defence|setting|attack' -> (N,) bool,
    True where the image is robust in that cell (the defence classifies the clean image and the attacked one
    correctly; for 'clean' cells, the clean image); and per defence 'defence|worst-case|all', robust to every
    attacked cell. An image is broken in a cell exactly where its flag is False."""
    flags = {f"{c.defence}|{c.setting}|{c.label}": r.correct.bool() for c, r in results.items()}
    for defence in dict.fromkeys(c.defence for c in results):
        worst = worst_case(results, defence)
        if worst is not None:
            flags[f"{defence}|worst-case|{ALL}"] = worst.bool()
    return flags


def finite_mean(values: torch.Tensor) -> float | None:
    """The mean of the finite values of a (N,) tensor, or None when there is none."""
    finite = values[torch.isfinite(values)]
    return float(finite.double().mean()) if len(finite) else None


def grid_row(
    defence: Defence, setting: str, attack: str, params: str, flags: torch.Tensor, result: CellResult | None = None
) -> GridRow:
    """The table row of one cell (or of a worst case, without ``result``): accuracy over images, its interval,
    and the cell's mean blocked area and detection IoU."""
    correct, n = int(flags.sum()), len(flags)
    low, high = interval(correct, n)
    area = finite_mean(result.area) if result is not None else None
    overlap = finite_mean(result.detection_iou) if result is not None else None
    accuracy = correct / n if n else float("nan")
    return GridRow(
        defence.name,
        defence.kind,
        defence.settings,
        area,
        setting,
        attack,
        params,
        n,
        correct,
        accuracy,
        low,
        high,
        overlap,
    )


def attack_description(
    entry: AttackEntry | None, setting: str, defence: Defence, variant: str | None = None, cascade: bool = True
) -> str:
    """How the attack of a cell was run, in words: its parameters, where it was crafted and (a gradient-free one
    with ``cascade``) on which images."""
    if entry is None:
        return "none"
    if setting == "adaptive":
        entry = with_params(entry, defence.adaptive_params)
    params = " ".join(f"{k}={v}" for k, v in entry.params.items() if k not in ("batch_size", "attack", "norm"))
    gradient = defence.gradient if variant is None else _variant(defence, variant).gradient
    where = {
        "non-adaptive": "crafted on f, evaluated on the defence",
        "adaptive": f"crafted through the defence ({gradient})",
        "gradient-free": "run on the defence (no gradients)"
        + (", on the images every gradient attack above left (cascade)" if cascade else ""),
    }[setting]
    return f"{entry.params.get('attack', entry.label)} {params}; {where}"


def table_rows(
    defences: Sequence[Defence], attacks: Sequence[AttackEntry], results: dict[Cell, CellResult], cascade: bool = True
) -> list[GridRow]:
    """Every cell's row, and per defence the worst case over its attacked cells ('worst-case', attack 'all');
    ``cascade``: the grid ran its gradient-free attacks after the gradient ones (see :func:`evaluate_grid`)."""
    by_label = {a.label: a for a in attacks}
    rows = []
    for d in defences:
        for cell, r in results.items():
            if cell.defence == d.name:
                entry = by_label.get(cell.attack or "")
                words = attack_description(entry, cell.setting, d, cell.variant, cascade)
                rows.append(grid_row(d, cell.setting, cell.label, words, r.correct, r))
        worst = worst_case(results, d.name)
        if worst is not None:
            rows.append(grid_row(d, "worst-case", ALL, "per image: robust only if every attack above failed", worst))
    return rows
