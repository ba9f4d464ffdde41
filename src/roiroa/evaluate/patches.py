"""``roiroa patches``: localized (patch) attacks against per-input fragment defences and LGS.

Every attack of ``patches.attacks`` runs at every area of ``patches.areas``; every defence of
``patches.defences`` is evaluated clean and against each attack crafted on f, and the defences named in
``patches.adaptive`` also against the attack crafted through them at ``patches.adaptive_areas`` (for a fragment
detector the attack also pays ``penalty_weight`` times the detector's anomaly surrogate, so its patch learns to
look clean). The first scope gets a random square block of the same area per input as its control. Each row
has its 95% interval, the mean blocked area and the detection IoU with the true patch; the worst case is per
defence and attack, and per defence and area over every attack at that area ('all@area': an image counts as
broken if any attack or placement broke it on the defended model).

Placement: an attack entry with ``location = 'roi'`` or ``'search'`` (the default suite searches the LaVAN and the
universal patch) gets ``roi_corner``, the corner of the square of each area that lies in the
global region of importance (the top ``regions.q_roi`` of the fitting images' mean importance map: the region a
fragment defence never blocks), unless the entry gives its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from roiroa.attacks.patch import Corner, patch_side, roi_square
from roiroa.cache import StageCache
from roiroa.data.dataset import sample_per_class
from roiroa.evaluate.attacking import AttackEntry, attack_entry
from roiroa.evaluate.certified import NOTE as CERTIFIED_NOTE
from roiroa.evaluate.certified import certified_rows
from roiroa.evaluate.comparisons import comparison_table, comparisons
from roiroa.evaluate.config import Config
from roiroa.evaluate.defences import BuildContext, build_defences, none_defence, parse_defences
from roiroa.evaluate.executors import uses_executor
from roiroa.evaluate.grid import Cell, CellResult, Defence, grid_row, table_rows, worst_case
from roiroa.evaluate.outputs import CommandResult, build_context, dataset_info, flag_table, header, model_info, run_grid
from roiroa.evaluate.prepare import DataLike, Prepared, prepare
from roiroa.evaluate.tasks import Timings
from roiroa.maps.vulnerability import unit_mean
from roiroa.regions.thresholds import top_q_mask
from roiroa.results import GridRow, ResultsFolder, to_json
from roiroa.utils import stage_seed


@dataclass
class PatchesResult(CommandResult):
    """Everything ``roiroa patches`` measured, in memory; ``folder`` is what its results folder holds."""

    prepared: Prepared
    folder: ResultsFolder


PLACED = ("roi", "search")  # the locations that use the global RoI's corner


def global_roi(importance: torch.Tensor, q_roi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The global RoI, (H, W) bool: the top ``q_roi`` of the mean of the unit-mean importance maps (N, H, W) of
    the fitting images, as the fragment detector's; and that mean map (H, W), for ties."""
    mean = unit_mean(importance.float()).mean(0, keepdim=True)
    return top_q_mask(mean, q_roi)[0], mean[0]


def roi_corners(config: Config, ctx: BuildContext, shape: tuple[int, int]) -> dict[float, Corner]:
    """Per area, the corner of the square (of that area, images H x W = ``shape``) most inside the global RoI;
    empty where no attack entry places its patch by the RoI."""
    if not any(spec.get("location") in PLACED for spec in config.patches.attacks):
        return {}
    roi, mean = global_roi(ctx.fit.importance.cpu(), config.regions.q_roi)
    out = {}
    for area in {*config.patches.areas, *config.patches.adaptive_areas}:
        tops, lefts = roi_square(roi[None], patch_side(*shape, area), mean[None])
        out[area] = (int(tops[0]), int(lefts[0]))
    return out


def patch_attacks(config: Config, corners: dict[float, Corner] | None = None) -> list[tuple[float, AttackEntry]]:
    """(area, entry) for every patch attack at every area; labels 'name@area'. An entry placed by the RoI
    ('roi' or 'search') without its own ``roi_corner`` gets the area's corner of ``corners``."""
    out, corners = [], corners or {}
    for area in sorted({*config.patches.areas, *config.patches.adaptive_areas}):
        for spec in config.patches.attacks:
            label = f"{spec.get('label', spec['name'])}@{area:g}"
            given = spec | {"area": area, "label": label}
            if spec.get("location") in PLACED and "roi_corner" not in spec and area in corners:
                given["roi_corner"] = list(corners[area])
            out.append((area, attack_entry(given, config.batch_size, seed=config.seed)))
    return out


def patch_defences(config: Config, ctx: BuildContext) -> list[Defence]:
    """f, then every defence; the first scope with its random-block control; detectors' adaptive penalty."""
    defences, controlled = [none_defence(ctx)], False
    for spec in parse_defences(config.patches.defences, config, patches=True):
        controls = "block" if spec.kind == "scope" and not controlled else None
        controlled |= controls is not None
        for d in build_defences(spec, ctx, controls):
            penalty = (
                {"penalty_weight": config.patches.penalty_weight}
                if d.kind == "scope" and hasattr(d.model.scope, "penalty")
                else {}
            )  # type: ignore[union-attr]
            defences.append(dataclasses.replace(d, adaptive_params=penalty))
    return defences


def patch_cells(config: Config, defences: list[Defence], attacks: list[tuple[float, AttackEntry]]) -> list[Cell]:
    """Clean and non-adaptive for every defence and attack at ``areas``; adaptive (through the defence and through
    each of its variants, e.g. straight through the fill with the detector's penalty) for the defences of
    ``adaptive`` at ``adaptive_areas``."""
    p = config.patches
    cells = [Cell(d.name, "clean") for d in defences]
    for area, a in attacks:
        if area in p.areas:
            cells += [Cell(d.name, "non-adaptive", a.label) for d in defences]
        if area in p.adaptive_areas:
            chosen = [d for d in defences if d.name in p.adaptive]
            cells += [Cell(d.name, "adaptive", a.label) for d in chosen]
            cells += [Cell(d.name, "adaptive", a.label, v.name) for d in chosen for v in d.variants]
    return cells


def patch_rows(
    defences: list[Defence], attacks: list[tuple[float, AttackEntry]], results: dict[Cell, CellResult]
) -> list[GridRow]:
    """Every cell's row; per defence and attack the worst case over its settings where it has several; per
    defence and area the worst case over every attack (and placement) at that area where there are several."""
    entries = [a for _, a in attacks]
    rows = [r for r in table_rows(defences, entries, results) if r.setting != "worst-case"]
    for d in defences:
        for a in entries:
            flags = worst_case(results, d.name, a.label)
            if flags is not None and sum(c.defence == d.name and c.attack == a.label for c in results) > 1:
                rows.append(
                    grid_row(d, "worst-case", a.label, "per image: robust only if every setting above failed", flags)
                )
        rows += area_worst_cases(d, attacks, results)
    return rows


def area_worst_cases(
    defence: Defence, attacks: list[tuple[float, AttackEntry]], results: dict[Cell, CellResult]
) -> list[GridRow]:
    """Per area, ``defence``'s worst case over every attack and setting at that area ('all@area'), where more
    than one attack ran there."""
    rows = []
    for area in sorted({area for area, _ in attacks}):
        labels = {a.label for at, a in attacks if at == area}
        flags = [r.correct for c, r in results.items() if c.defence == defence.name and c.attack in labels]
        ran = {c.attack for c in results if c.defence == defence.name and c.attack in labels}
        if len(ran) > 1:
            words = "per image: robust only if every attack, placement and setting at this area failed"
            rows.append(grid_row(defence, "worst-case", f"all@{area:g}", words, torch.stack(flags).all(0)))
    return rows


@uses_executor
def run_patches(
    config: Config,
    *,
    model: nn.Module | None = None,
    data: DataLike | None = None,
    fit_data: DataLike | None = None,
    cache: StageCache | None = None,
) -> PatchesResult:
    """Run the patch evaluation (nothing is written)."""
    cache = StageCache.default() if cache is None else cache
    timings = Timings()
    with timings("prepare"):
        prepared = prepare(config, model=model, data=data, fit_data=fit_data)
    config = prepared.config  # with the values left open chosen from the data
    p, splits = config.patches, prepared.splits
    test = sample_per_class(splits.test, p.n_test, stage_seed(config.seed, "test-subset"))
    fit = sample_per_class(splits.fit, p.n_fit, stage_seed(config.seed, "fit-subset"))
    with timings("fit"):
        ctx = build_context(prepared, fit, [], cache)
        defences = patch_defences(config, ctx)
        height, width = test.images.shape[2:]
        attacks = patch_attacks(config, roi_corners(config, ctx, (height, width)))
    with timings("grid"):
        entries = [a for _, a in attacks]
        results = run_grid(prepared, cache, defences, entries, patch_cells(config, defences, attacks), test, fit)
    with timings("certified"):
        data = (test, fit)
        certified, certified_flags = certified_rows(
            prepared.model, prepared.model_key, data, p.areas, p.certified_masks, cache, config.chunk_size
        )
    accuracy = float(results[Cell("none", "clean")].correct.double().mean())
    summary = header("patches", prepared, timings) | {
        "dataset": dataset_info(prepared, test, fit),
        "model": model_info(prepared, accuracy),
        "attacks": [{"label": a.label, "area": area, "params": a.params} for area, a in attacks],
        "n_test": len(test),
        "table": patch_rows(defences, attacks, results),
        "comparisons": comparisons(defences, results, config.evaluation.equivalence_margin, config.seed),
        "certified": certified,
        "certified_note": CERTIFIED_NOTE,
    }
    columns, flag_rows = flag_table(results, test)
    tables = {"flags.csv": (columns, flag_rows + certified_flags)}
    tables["comparisons.csv"] = comparison_table(summary["comparisons"])
    folder = ResultsFolder("patches", to_json(summary), config.to_dict(), tables)
    return PatchesResult(prepared, folder)
