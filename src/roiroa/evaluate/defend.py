"""``roiroa defend``: every defence and baseline on the same model, attacks and images, honestly.

The table: for each defence of ``evaluation.defences`` (mask scopes with their equal-area random controls,
input transformations, adversarial training) and the undefended model, clean accuracy and robust accuracy
under every attack of ``evaluation.attacks`` (gradient attacks crafted on f and through the defence; Square
run on it), with the per-image worst case and 95% intervals. Beside it: the oracle analysis, a sweep of the mask
parameters with its Pareto front, and the check that adaptive robust accuracy falls with eps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from roiroa.attacks.suite import budget_of, describe_budget
from roiroa.cache import StageCache
from roiroa.data.dataset import ImageDataset, sample_per_class
from roiroa.evaluate.analysis import oracle_rows
from roiroa.evaluate.attacking import AttackEntry, attack_entries, attack_entry
from roiroa.evaluate.comparisons import comparison_table, comparisons
from roiroa.evaluate.config import Config, filled, suite_name
from roiroa.evaluate.defences import (
    BuildContext,
    DefenceSpec,
    build_defences,
    none_defence,
    parse_defence,
    parse_defences,
    spec_fill,
)
from roiroa.evaluate.executors import uses_executor
from roiroa.evaluate.grid import (
    Cell,
    CellResult,
    Defence,
    finite_mean,
    grid_flags,
    standard_cells,
    table_rows,
    worst_case,
)
from roiroa.evaluate.maps_stage import compute_maps
from roiroa.evaluate.oracle import ORACLE_NOTE, oracle_decomposition
from roiroa.evaluate.outputs import CommandResult, build_context, dataset_info, flag_table, header, model_info, run_grid
from roiroa.evaluate.prepare import DataLike, Prepared, prepare
from roiroa.evaluate.sanity import (
    convergence_entries,
    convergence_verdicts,
    eps_verdicts,
    masking_verdicts,
    worst_verdicts,
)
from roiroa.evaluate.tasks import Timings
from roiroa.results import ResultsFolder, SanityRow, SweepRow, Verdict, to_json
from roiroa.utils import stage_seed


@dataclass
class DefendResult(CommandResult):
    """Everything ``roiroa defend`` measured, in memory; ``folder`` is what its results folder holds."""

    prepared: Prepared
    folder: ResultsFolder
    flags: dict[str, torch.Tensor] = field(default_factory=dict)
    """The table's per-image flags, 'defence|setting|attack' -> (N,) bool, True where the image is robust in that
    cell, with 'defence|worst-case|all' per defence (see :func:`roiroa.evaluate.grid.grid_flags`); the same as
    flags.csv, for paired tests."""


def sweep_specs(config: Config) -> list[DefenceSpec]:
    """The mask settings of the sweep: per scope the RoA fractions x dilations, Otsu, and the other fills; the
    per-input scope (a probe attack per forward pass) over the RoA fractions and both RoA sources only."""
    e, d = config.evaluation, config.defence
    entries: list[dict[str, Any]] = []
    for scope in e.sweep_scopes:
        if scope == "per_input":
            entries += [
                {"name": scope, "q_roa": q, "roa": roa, "dilation": 0}
                for roa in ("probe", "shift")
                for q in e.sweep_q_roa
            ]
            continue
        entries += [{"name": scope, "q_roa": q, "dilation": r} for q in e.sweep_q_roa for r in e.sweep_dilation]
        entries += [{"name": scope, "threshold": "otsu"}] + [
            {"name": scope, "fill": f} for f in e.sweep_fills if f != d.fill
        ]
    return [parse_defence(x | {"label": f"sweep{i}:{x['name']}"}, config) for i, x in enumerate(entries)]


def sweep_rows(
    specs: list[DefenceSpec], defences: list[Defence], attack: AttackEntry, results: dict[Cell, CellResult]
) -> list[SweepRow]:
    """One row per mask setting: clean, non-adaptive and adaptive accuracy, area, and the per-image worst case over
    its attacked cells (non-adaptive, adaptive and every adaptive variant); the Pareto front on (clean, worst case):
    a setting only the weaker adaptive attack fails on is not on the front."""
    rows = []
    for spec, d in zip(specs, defences, strict=True):
        flags = {
            s: results[Cell(d.name, s, None if s == "clean" else attack.label)]
            for s in ("clean", "non-adaptive", "adaptive")
        }
        p = spec.params
        scope = spec.name if p.get("roa", "probe") == "probe" else f"{spec.name}[shift]"
        q_roa = p.get("q_roa") if p.get("threshold") == "top_q" else None
        acc = {s: float(r.correct.double().mean()) for s, r in flags.items()}
        worst = worst_case(results, d.name)
        where = f"{attack.label}: non-adaptive crafted on f; adaptive through the defence ({d.gradient})"
        rows.append(
            SweepRow(
                scope,
                p.get("threshold", "top_q"),
                p.get("q_roi", 0.0),
                q_roa,
                spec.dilation,
                spec.fill,
                finite_mean(flags["clean"].area) or 0.0,
                acc["clean"],
                acc["non-adaptive"],
                acc["adaptive"],
                where,
                len(flags["clean"].correct),
                worst_case_accuracy=None if worst is None else float(worst.double().mean()),
            )
        )
    front = pareto_front([(r.clean_accuracy, r.worst_case_accuracy or 0.0) for r in rows])
    return [SweepRow(**{**r.__dict__, "pareto": p}) for r, p in zip(rows, front, strict=True)]


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each (a, b) to maximize: True if no other point is >= in both and > in one."""
    return [
        not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for j, (a2, b2) in enumerate(points) if j != i)
        for i, (a, b) in enumerate(points)
    ]


def sanity_rows(
    prepared: Prepared, cache: StageCache, defences: list[Defence], attack: dict[str, Any], data: ImageDataset
) -> list[SanityRow]:
    """Adaptive robust accuracy against eps for every defence but the controls: it must fall, and reach ~0."""
    c = prepared.config
    eps = filled(c.evaluation.sanity_eps, "evaluation.sanity_eps")
    scaled = {k: v for k, v in attack.items() if k != "step_size"}  # the attack's default step, scaled with eps
    attacks = [attack_entry(scaled | {"eps": e, "label": f"eps={e:g}"}, c.batch_size) for e in eps]
    chosen = [d for d in defences if d.kind != "control"]
    cells = [Cell(d.name, "adaptive", a.label) for d in chosen for a in attacks]
    results = run_grid(prepared, cache, chosen, attacks, cells, data)
    rows = []
    for d in chosen:
        accs = [float(results[Cell(d.name, "adaptive", a.label)].correct.double().mean()) for a in attacks]
        falls = all(b <= a + 1e-12 for a, b in zip(accs, accs[1:], strict=False))
        rows.append(
            SanityRow(
                d.name,
                list(eps),
                accs,
                falls,
                eps[-1],
                accs[-1],
                f"{attack['name']} through the defence ({d.gradient})",
                len(data),
            )
        )
    return rows


def defend_table(
    prepared: Prepared, ctx: BuildContext, attacks: list[AttackEntry], test: ImageDataset, cache: StageCache
) -> tuple[list[Defence], dict[Cell, CellResult]]:
    """The table's defences (f, every defence with its controls) and their per-image results."""
    e = prepared.config.evaluation
    defences = [none_defence(ctx)]
    for spec in parse_defences(e.defences, prepared.config):
        defences += build_defences(spec, ctx, "pixels" if e.controls else None)
    return defences, run_grid(prepared, cache, defences, attacks, standard_cells(defences, attacks), test)


def beside_the_table(
    prepared: Prepared,
    ctx: BuildContext,
    test: ImageDataset,
    first: AttackEntry,
    defences: list[Defence],
    cache: StageCache,
    timings: Timings,
) -> dict[str, Any]:
    """The oracle analysis, the mask sweep and the sanity check of ``defend``."""
    c, e = prepared.config, prepared.config.evaluation
    with timings("oracle"):
        maps = compute_maps(prepared.model, prepared.model_key, test, [first], c, cache)
        glob = parse_defence("global", c)
        fill, key = spec_fill(glob, ctx), build_defences(glob, ctx, None)[0].key
        oracle = oracle_rows(prepared.model, prepared.model_key, maps, fill, key, c, cache, (c.regions.q_roa,))
        decomposition = oracle_decomposition(prepared.model, prepared.model_key, maps, fill, key, c, cache)
    with timings("sweep"):
        specs = sweep_specs(c)
        swept = [build_defences(s, ctx, None)[0] for s in specs]
        sweep_results = run_grid(prepared, cache, swept, [first], standard_cells(swept, [first]), test)
    with timings("sanity"):
        n = min(e.n_sanity, len(test))
        first_spec = next(s for s in e.attacks if attack_entry(s, c.batch_size).label == first.label)
        subset = sample_per_class(test, n, stage_seed(c.seed, "sanity"))  # every class, as the table
        sanity = sanity_rows(prepared, cache, defences, first_spec, subset)
        converged = convergence_check(prepared, cache, defences, first_spec, subset)
    sweep = sweep_rows(specs, swept, first, sweep_results)
    return {
        "oracle_decomposition": decomposition,
        "oracle_note": ORACLE_NOTE,
        "n_sanity": n,
        "oracle": oracle,
        "sweep": sweep,
        "sanity": sanity,
        "verdicts": eps_verdicts(sanity) + converged,
    }


def convergence_check(
    prepared: Prepared, cache: StageCache, defences: list[Defence], spec: dict[str, Any], data: ImageDataset
) -> list[Verdict]:
    """The first gradient attack through every defence but the controls, as run and with twice the steps and twice
    the restarts, on the sanity images: the 'converged' verdicts."""
    pair = convergence_entries(spec, prepared.config.batch_size)
    chosen = [d for d in defences if d.kind != "control"]
    cells = [Cell(d.name, "adaptive", a.label) for d in chosen for a in pair]
    return convergence_verdicts(chosen, pair, run_grid(prepared, cache, chosen, list(pair), cells, data))


def suite_info(config: Config, attacks: list[AttackEntry]) -> dict[str, Any]:
    """The attack suite of the table: its name ('default', 'quick', 'custom'), every attack's budget, in data and
    in words, what the worst case means, and whether gradient-free attacks ran in cascade after the others."""
    budget = [budget_of(a.label, a.params) for a in attacks]
    name = suite_name(config.evaluation.attacks, config.quick)
    words = [describe_budget(b) for b in budget]
    if name == "quick":
        words.append("--quick: a small suite for a smoke test; its robust accuracies overstate robustness")
    cascade = config.evaluation.cascade and any(a.gradient_free for a in attacks)
    if cascade:
        words.append(
            "cascade: the gradient-free attacks ran after the gradient attacks, on the images they all left; "
            "their rows are the gradient attacks and them together"
        )
    worst = "per image: robust only if every attack, crafted on f, through the defence and its variants, failed"
    return {"name": name, "budget": budget, "description": words, "worst_case": worst, "cascade": cascade}


@uses_executor
def run_defend(
    config: Config,
    *,
    model: nn.Module | None = None,
    data: DataLike | None = None,
    fit_data: DataLike | None = None,
    cache: StageCache | None = None,
) -> DefendResult:
    """Run the defence table, the oracle analysis, the sweep and the sanity checks (nothing is written)."""
    cache = StageCache.default() if cache is None else cache
    timings = Timings()
    with timings("prepare"):
        prepared = prepare(config, model=model, data=data, fit_data=fit_data)
    config = prepared.config  # with the values left open chosen from the data
    e, splits = config.evaluation, prepared.splits
    test = sample_per_class(splits.test, e.n_test, stage_seed(config.seed, "defend-test"))
    attacks = attack_entries(e.attacks, config.batch_size)
    first = next(a for a in attacks if not a.gradient_free)
    ctx = build_context(prepared, splits.fit, attack_entries(config.attacks, config.batch_size), cache)
    with timings("table"):
        defences, results = defend_table(prepared, ctx, attacks, test, cache)
    more = beside_the_table(prepared, ctx, test, first, defences, cache, timings)
    summary = (
        header("defend", prepared, timings)
        | {
            "dataset": dataset_info(prepared, test, splits.fit),
            "model": model_info(prepared, float(results[Cell("none", "clean")].correct.double().mean())),
            "attacks": [{"label": a.label, "params": a.params, "gradient_free": a.gradient_free} for a in attacks],
            "n_test": len(test),
            "suite": suite_info(config, attacks),
            "table": table_rows(defences, attacks, results, config.evaluation.cascade),
            "comparisons": comparisons(defences, results, e.equivalence_margin, config.seed),
            "notes": notes(config, defences),
        }
        | more
    )
    summary["verdicts"] = worst_verdicts(defences, results) + masking_verdicts(defences, results) + more["verdicts"]
    tables = {"flags.csv": flag_table(results, test), "comparisons.csv": comparison_table(summary["comparisons"])}
    folder = ResultsFolder("defend", to_json(summary), config.to_dict(), tables)
    return DefendResult(prepared, folder, grid_flags(results))


def notes(config: Config, defences: list[Defence]) -> list[str]:
    """What the table leaves out, and why."""
    names = {d.name for d in defences}
    wanted = [s if isinstance(s, str) else s.get("label", s.get("name")) for s in config.evaluation.defences]
    return [
        f"{w}: needs the architecture trained by roiroa (no weights file, no in-memory model); left out."
        for w in wanted
        if w not in names and w == "adv_training"
    ]
