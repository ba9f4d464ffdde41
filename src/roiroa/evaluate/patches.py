"""``roiroa patches``: localized (patch) attacks against per-input fragment defences and LGS.

Every attack of ``patches.attacks`` runs at every area of ``patches.areas``; every defence of
``patches.defences`` is evaluated clean and against each attack crafted on f, and the defences named in
``patches.adaptive`` also against the attack crafted through them at ``patches.adaptive_areas`` (for a fragment
detector the attack also pays ``penalty_weight`` times the detector's anomaly surrogate, so its patch learns to
look clean). The first scope gets a random square block of the same area per input as its control. Each row
has its 95% interval, the mean blocked area and the detection IoU with the true patch; the worst case is per
defence and attack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

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
from roiroa.results import GridRow, ResultsFolder, to_json
from roiroa.utils import stage_seed


@dataclass
class PatchesResult(CommandResult):
    """Everything ``roiroa patches`` measured, in memory; ``folder`` is what its results folder holds."""

    prepared: Prepared
    folder: ResultsFolder


def patch_attacks(config: Config) -> list[tuple[float, AttackEntry]]:
    """(area, entry) for every patch attack at every area; labels 'name@area'."""
    out = []
    for area in sorted({*config.patches.areas, *config.patches.adaptive_areas}):
        for spec in config.patches.attacks:
            label = f"{spec.get('label', spec['name'])}@{area:g}"
            out.append((area, attack_entry(spec | {"area": area, "label": label}, config.batch_size, seed=config.seed)))
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


def patch_rows(defences: list[Defence], attacks: list[AttackEntry], results: dict[Cell, CellResult]) -> list[GridRow]:
    """Every cell's row, and per defence and attack the worst case over its settings where it has several."""
    rows = [r for r in table_rows(defences, attacks, results) if r.setting != "worst-case"]
    for d in defences:
        for a in attacks:
            flags = worst_case(results, d.name, a.label)
            if flags is not None and sum(c.defence == d.name and c.attack == a.label for c in results) > 1:
                rows.append(
                    grid_row(d, "worst-case", a.label, "per image: robust only if every setting above failed", flags)
                )
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
        defences = patch_defences(config, build_context(prepared, fit, [], cache))
    attacks = patch_attacks(config)
    with timings("grid"):
        entries = [a for _, a in attacks]
        results = run_grid(prepared, cache, defences, entries, patch_cells(config, defences, attacks), test, fit)
    with timings("certified"):
        data = (test, fit)
        certified, certified_flags = certified_rows(
            prepared.model, prepared.model_key, data, p.areas, p.certified_masks, cache
        )
    accuracy = float(results[Cell("none", "clean")].correct.double().mean())
    summary = header("patches", prepared, timings) | {
        "dataset": dataset_info(prepared, test, fit),
        "model": model_info(prepared, accuracy),
        "attacks": [{"label": a.label, "area": area, "params": a.params} for area, a in attacks],
        "n_test": len(test),
        "table": patch_rows(defences, entries, results),
        "comparisons": comparisons(defences, results, config.evaluation.equivalence_margin, config.seed),
        "certified": certified,
        "certified_note": CERTIFIED_NOTE,
    }
    columns, flag_rows = flag_table(results, test)
    tables = {"flags.csv": (columns, flag_rows + certified_flags)}
    tables["comparisons.csv"] = comparison_table(summary["comparisons"])
    folder = ResultsFolder("patches", to_json(summary), config.to_dict(), tables)
    return PatchesResult(prepared, folder)
