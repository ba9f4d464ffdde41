"""``roiroa defend``: every defence and baseline on the same model, attacks and images, honestly.

For each defence (mask scopes ``global``, ``per_class``, ``per_input``, their equal-area random controls, the
``oracle`` analysis, and the baselines ``bit_depth``, ``median``, ``jpeg``, ``blur``, ``adv_training``):
clean accuracy; robust accuracy under PGD L-inf crafted on f (non-adaptive), under PGD L-inf crafted through the
defence end to end (adaptive: BPDA for steps without a useful gradient, EOT over random fills), under the
gradient-free Square attack run on the defence (a check for gradient masking), and the per-image worst case
over the three. A sweep over the mask parameters gives the trade-off and its Pareto front; a sanity check
shows robust accuracy against eps up to an unbounded budget.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from roiroa.attacks.base import AttackResult
from roiroa.attacks.gradient import LinfPGD
from roiroa.attacks.square import SquareAttack
from roiroa.data.dataset import sample_per_class
from roiroa.defence.adaptive import EOT
from roiroa.defence.baselines import BASELINES, AdversarialTraining, Preprocessed
from roiroa.defence.fills import Fill, make_fill
from roiroa.defence.neutralizer import GlobalMask
from roiroa.defence.scopes import (
    EqualAreaControl,
    FixedScope,
    MaskScope,
    PerClassMask,
    PerInputMask,
    ScopedNeutralizer,
    random_blob_mask,
)
from roiroa.evaluate.config import RunConfig
from roiroa.evaluate.robustness import correct, mean, oracle_analysis
from roiroa.evaluate.runner import ALL, MapSet, Splits, Timings, build_attacks, compute_maps, importance_estimator
from roiroa.models.train import load_or_train
from roiroa.regions.thresholds import isolate
from roiroa.utils import progress, resolve_device, seed_all, stage_seed

log = logging.getLogger(__name__)

SETTINGS = ("clean", "non-adaptive", "adaptive", "gradient-free", "worst-case")


@dataclass
class Entry:
    """One defended model of the table.

    name: 'none', a scope, 'random[scope]', 'random_blobs[global]', 'oracle' or a baseline name.
    kind: 'none', 'scope', 'control', 'analysis' or 'baseline'.
    model: the defended model used for decisions; attack_model: what the adaptive attack differentiates.
    gradient: how the adaptive attack gets its gradient (exact, BPDA, EOT).
    """

    name: str
    kind: str
    settings: str
    model: nn.Module
    attack_model: nn.Module
    gradient: str
    area: float | None = None
    crafted_on: nn.Module | None = None  # the model the non-adaptive attack is crafted on (f unless stated)


@dataclass
class DefendResult:
    """Everything ``roiroa defend`` measured (``summary`` is the content of defence.json)."""

    config: RunConfig
    table: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    sanity: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def _scope_settings(q_roi: float, q_roa: float, threshold: str, dilation: int, fill: Fill, extra: str = "") -> str:
    qs = f"q_roi={q_roi:g} q_roa={q_roa:g}" if threshold == "top_q" else "otsu"
    return f"{qs} dilation={dilation} fill={fill.describe()}" + (f" {extra}" if extra else "")


def scoped_entry(
    name: str, kind: str, model: nn.Module, scope: MaskScope, fill: Fill, dilation: int, eot: int, settings: str
) -> Entry:
    """An Entry for f o N with this scope; a random fill is attacked through EOT."""
    defended = ScopedNeutralizer(model, scope, fill, dilation)
    fixed = isinstance(scope, FixedScope)
    grad = "exact (fixed mask)" if fixed else "BPDA (mask choice held fixed)"
    attack_model: nn.Module = defended
    if fill.random:
        attack_model, grad = EOT(defended, eot), grad + f" + EOT({eot} draws)"
    return Entry(name, kind, settings, defended, attack_model, grad)


def pgd(d: Any, eps: float | None = None, batch_size: int = 256) -> LinfPGD:
    return LinfPGD(eps=eps if eps is not None else d.eps, steps=d.steps, batch_size=batch_size)


def evaluate_entry(
    entry: Entry,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv_f: torch.Tensor,
    config: RunConfig,
    square: bool = True,
) -> dict[str, Any]:
    """Clean, non-adaptive, adaptive, Square and worst-case accuracy of one entry, with the attack of each number."""
    d = config.defend
    attack = pgd(d)
    if isinstance(entry.model, ScopedNeutralizer):
        entry.model.fill.reset()  # the same noise draws for every evaluation of this entry
    ok = {"clean": correct(entry.model, x, y)}
    crafted = x_adv_f if entry.crafted_on is None else attack(entry.crafted_on, x, y)
    ok["non-adaptive"] = ok["clean"] & correct(entry.model, crafted, y)
    if entry.kind == "none":  # on f, crafting through the model is the non-adaptive attack itself
        ok["adaptive"] = ok["non-adaptive"]
    else:
        seed_all(stage_seed(config.seed, f"defend-adaptive:{entry.name}"))
        ok["adaptive"] = ok["clean"] & correct(entry.model, attack(entry.attack_model, x, y), y)
    if square:
        seed_all(stage_seed(config.seed, f"defend-square:{entry.name}"))
        sq = SquareAttack(eps=d.eps, queries=d.square_queries, batch_size=256)
        ok["gradient-free"] = ok["clean"] & correct(entry.model, sq(entry.model, x, y), y)
    ok["worst-case"] = ok["non-adaptive"] & ok["adaptive"] & ok.get("gradient-free", ok["adaptive"])
    if entry.area is None and isinstance(entry.model, ScopedNeutralizer):
        entry.area = float(entry.model.masks(x).double().mean())
    base = f"eps={d.eps:g}"
    crafted_desc = "f" if entry.crafted_on is None else "the undefended model"
    attacks = {
        "clean": "none",
        "non-adaptive": f"pgd-linf {base} steps={d.steps}, crafted on {crafted_desc}, evaluated on the defence",
        "adaptive": f"pgd-linf {base} steps={d.steps}, crafted through the defence: {entry.gradient}",
        "gradient-free": f"square {base} queries={d.square_queries}, run on the defence (no gradients)",
        "worst-case": "per image: robust only if every attack above failed",
    }
    rows = []
    for setting, flags in ok.items():
        rows.append(
            {
                "defence": entry.name,
                "kind": entry.kind,
                "settings": entry.settings,
                "area": entry.area,
                "setting": setting,
                "attack": attacks[setting],
                "accuracy": mean(flags),
                "n_images": len(x),
            }
        )
    return {"rows": rows, "flags": ok}


def fit_scopes(config: RunConfig, fit_maps: MapSet, splits: Splits) -> dict[str, Any]:
    """Fitted global and per-class masks for every (q_roa, threshold) the table and sweep need."""
    d = config.defend
    out: dict[str, Any] = {}
    for threshold in ("top_q", "otsu"):
        for q in sorted({d.q_roa, *d.sweep_q_roa}):
            key = (threshold, q)
            out[f"global{key}"] = GlobalMask(d.q_roi, q, threshold).fit(  # type: ignore[arg-type]
                fit_maps.importance, fit_maps.vulnerability[ALL]
            )
            out[f"per_class{key}"] = PerClassMask(d.q_roi, q, threshold).fit(  # type: ignore[arg-type]
                fit_maps.importance, fit_maps.vulnerability[ALL], splits.fit.labels, splits.fit.num_classes
            )
    return out


def make_scope(
    kind: str, fitted: dict[str, Any], config: RunConfig, q_roa: float, threshold: str, roa: str = "probe"
) -> MaskScope:
    """The scope named ``kind`` ('global', 'per_class', 'per_input') with these parameters."""
    d = config.defend
    if kind == "global":
        return FixedScope(fitted[f"global{(threshold, q_roa)}"].mask_)
    if kind == "per_class":
        return fitted[f"per_class{(threshold, q_roa)}"]
    probe = LinfPGD(eps=d.probe_eps, steps=d.probe_steps, random_start=False, batch_size=256)
    return PerInputMask(d.q_roi, q_roa, threshold, roa, probe)  # type: ignore[arg-type]


def build_table_entries(
    model: nn.Module, adv_model: nn.Module, fitted: dict[str, Any], fill: Fill, config: RunConfig
) -> list[Entry]:
    """The table's entries: no defence, the three scopes with their random controls, and the baselines."""
    d = config.defend
    entries = [Entry("none", "none", "f alone", model, model, "exact")]
    for kind in ("global", "per_class", "per_input"):
        scope = make_scope(kind, fitted, config, d.q_roa, d.threshold)
        probe = f"probe=pgd-linf eps={d.probe_eps:g} steps={d.probe_steps}" if kind == "per_input" else ""
        settings = _scope_settings(d.q_roi, d.q_roa, d.threshold, d.dilation, fill, probe)
        entries.append(scoped_entry(kind, "scope", model, scope, fill, d.dilation, d.eot_draws, settings))
        control = EqualAreaControl(scope, stage_seed(config.seed, f"control:{kind}"))
        entries.append(
            scoped_entry(
                f"random[{kind}]",
                "control",
                model,
                control,
                fill,
                d.dilation,
                d.eot_draws,
                "same pixel count per input as " + kind + ", random positions",
            )
        )
        if kind == "global":
            gen = torch.Generator().manual_seed(stage_seed(config.seed, "control:blobs"))
            blobs = FixedScope(random_blob_mask(scope.mask, gen), "random_blobs[global]")  # type: ignore[attr-defined]
            entries.append(
                scoped_entry(
                    "random_blobs[global]",
                    "control",
                    model,
                    blobs,
                    fill,
                    d.dilation,
                    d.eot_draws,
                    "the global mask's blobs moved to random places (same count and spread)",
                )
            )
    per_input_shift = make_scope("per_input", fitted, config, d.q_roa, d.threshold, roa="shift")
    entries.append(
        scoped_entry(
            "per_input[shift]",
            "scope",
            model,
            per_input_shift,
            fill,
            d.dilation,
            d.eot_draws,
            _scope_settings(d.q_roi, d.q_roa, d.threshold, d.dilation, fill, "roa=|saliency(probe) - saliency(x)|"),
        )
    )
    params: dict[str, dict[str, Any]] = {
        "bit_depth": {"bits": d.bits},
        "median": {"size": d.median_size},
        "jpeg": {"quality": d.jpeg_quality},
        "blur": {"sigma": d.blur_sigma},
    }
    for name, kw in params.items():
        b = BASELINES.create(name, **kw)
        defended = Preprocessed(model, b)
        grad = "exact" if b.differentiable else "BPDA (identity backward)"
        entries.append(Entry(name, "baseline", b.describe(), defended, defended, grad))
    settings = f"PGD-{d.adv_steps} eps={d.adv_eps:g}, {d.adv_epochs} epochs (Madry et al. 2018)"
    entries.append(Entry("adv_training", "baseline", settings, adv_model, adv_model, "exact", crafted_on=model))
    return entries


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each (a, b) to maximize: True if no other point is >= in both and > in one."""
    out = []
    for i, (a, b) in enumerate(points):
        dominated = any((a2 >= a and b2 >= b and (a2 > a or b2 > b)) for j, (a2, b2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def sweep_rows(
    model: nn.Module,
    fitted: dict[str, Any],
    fills: dict[str, Fill],
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv_f: torch.Tensor,
    config: RunConfig,
) -> list[dict[str, Any]]:
    """Clean, non-adaptive and adaptive (PGD) accuracy and area over the mask parameters.

    A row is on the Pareto front when no other row has both higher clean and higher adaptive accuracy."""
    d = config.defend
    points: list[tuple[str, str, float, int, str, str]] = []
    for kind in ("global", "per_class"):
        for q in d.sweep_q_roa:
            for dil in d.sweep_dilation:
                points.append((kind, "top_q", q, dil, d.fill, "probe"))
        points.append((kind, "otsu", d.q_roa, 0, d.fill, "probe"))
        for name in d.sweep_fills:
            if name != d.fill:
                points.append((kind, d.threshold, d.q_roa, d.dilation, name, "probe"))
    # per_input costs a probe attack per forward pass: its sweep covers q_roa and both RoA sources only
    points += [("per_input", "top_q", q, 0, d.fill, roa) for roa in ("probe", "shift") for q in d.sweep_q_roa]
    rows: list[dict[str, Any]] = []
    for kind, threshold, q, dil, fill_name, roa in progress(points, "sweep", total=len(points)):
        scope = make_scope(kind, fitted, config, q, threshold, roa)
        entry = scoped_entry(kind, "scope", model, scope, fills[fill_name], dil, d.eot_draws, "")
        fills[fill_name].reset()
        clean = correct(entry.model, x, y)
        seed_all(stage_seed(config.seed, "defend-sweep"))
        adv = pgd(d)(entry.attack_model, x, y)
        rows.append(
            {
                "scope": kind if roa == "probe" else "per_input[shift]",
                "threshold": threshold,
                "q_roi": d.q_roi,
                "q_roa": q if threshold == "top_q" else None,
                "dilation": dil,
                "fill": fills[fill_name].describe(),
                "area": float(entry.model.masks(x).double().mean()),  # type: ignore[operator]
                "clean_accuracy": mean(clean),
                "nonadaptive_accuracy": mean(clean & correct(entry.model, x_adv_f, y)),
                "adaptive_accuracy": mean(clean & correct(entry.model, adv, y)),
                "attack": f"pgd-linf eps={d.eps:g} steps={d.steps}: non-adaptive crafted on f; "
                f"adaptive through the defence ({entry.gradient})",
                "n_images": len(x),
            }
        )
    front = pareto_front([(r["clean_accuracy"], r["adaptive_accuracy"]) for r in rows])
    for r, p in zip(rows, front, strict=True):
        r["pareto"] = p
    return rows


def sanity_rows(entries: list[Entry], x: torch.Tensor, y: torch.Tensor, config: RunConfig) -> list[dict[str, Any]]:
    """Adaptive PGD robust accuracy against eps for every entry but the controls: it must fall, and reach ~0."""
    d = config.defend
    rows = []
    for entry in progress([e for e in entries if e.kind != "control"], "sanity"):
        clean = correct(entry.model, x, y)
        accs = []
        for eps in d.sanity_eps:
            seed_all(stage_seed(config.seed, f"defend-sanity:{entry.name}:{eps}"))
            attack = LinfPGD(eps=eps, steps=d.steps, batch_size=256)
            accs.append(mean(clean & correct(entry.model, attack(entry.attack_model, x, y), y)))
        rows.append(
            {
                "defence": entry.name,
                "eps": list(d.sanity_eps),
                "accuracy": accs,
                "falls": all(b <= a + 1e-12 for a, b in zip(accs, accs[1:], strict=False)),
                "unbounded_eps": d.sanity_eps[-1],
                "unbounded_accuracy": accs[-1],
                "attack": f"pgd-linf steps={d.steps}, through the defence ({entry.gradient})",
                "n_images": len(x),
            }
        )
    return rows


def run_defend(config: RunConfig) -> DefendResult:
    """Run the defence table, the sweep and the sanity checks of ``config.defend`` (nothing is written)."""
    from roiroa.evaluate.runner import load_splits  # the runner's split logic, so both commands see the same data

    d, timings, t0 = config.defend, Timings(), time.perf_counter()
    device = resolve_device(config.device)
    with timings("data+model"):
        splits = load_splits(config)
        model = load_or_train(config.model.arch, splits.train, config.model.training, config.seed, device).model
    test = sample_per_class(splits.test, d.n_test, stage_seed(config.seed, "defend-test"))
    x, y = test.images, test.labels
    with timings("fit maps"):
        fit_maps = compute_maps(model, splits.fit, build_attacks(config), config, "fit", timings)
        fitted = fit_scopes(config, fit_maps, splits)
    with timings("adv_training"):
        recipe = dataclasses.replace(config.model.training, epochs=d.adv_epochs)
        adv = AdversarialTraining(eps=d.adv_eps, steps=d.adv_steps)
        adv_model = load_or_train(config.model.arch, splits.train, recipe, config.seed, device, adv).model
    fills = {
        name: make_fill(name, splits.fit.images, seed=stage_seed(config.seed, "noise-fill"))  # type: ignore[arg-type]
        for name in {d.fill, *d.sweep_fills}
    }
    seed_all(stage_seed(config.seed, "defend-f"))
    result_f = pgd(d).run(model, x, y)
    x_adv_f = result_f.x_adv
    entries = build_table_entries(model, adv_model, fitted, fills[d.fill], config)
    table, flags = [], {}
    with timings("table"):
        for entry in progress(entries, "defence table"):
            out = evaluate_entry(entry, x, y, x_adv_f, config)
            table += out["rows"]
            flags[entry.name] = out["flags"]
    with timings("oracle"):
        table += oracle_table_rows(model, x, y, result_f, fills[d.fill], config)
    with timings("sweep"):
        sweep = sweep_rows(model, fitted, fills, x, y, x_adv_f, config)
    with timings("sanity"):
        n = min(d.n_sanity, len(x))
        sanity = sanity_rows(entries, x[:n], y[:n], config)
    summary = {
        "roiroa_defence_version": 1,
        "seed": config.seed,
        "quick": config.quick,
        "n_test": len(x),
        "n_fit": len(splits.fit),
        "n_sanity": n,
        "config": dataclasses.asdict(d),
        "table": table,
        "sweep": sweep,
        "pareto": [r for r in sweep if r["pareto"]],
        "sanity": sanity,
        "timings": dict(timings) | {"total": round(time.perf_counter() - t0, 3)},
    }
    return DefendResult(config, table, sweep, sanity, summary)


def oracle_table_rows(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: AttackResult, fill: Fill, config: RunConfig
) -> list[dict[str, Any]]:
    """The oracle (each image's S_A from the known PGD perturbation): an analysis, non-adaptive only."""
    d = config.defend
    importance = importance_estimator(config)(model, x, y)
    roi = isolate(importance, d.threshold, d.q_roi)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "oracle-random-masks"))
    o = oracle_analysis(model, x, y, result.x_adv, roi, result.grad_map, d.q_roa, fill(x), gen)
    settings = f"q_roi={d.q_roi:g} q_roa={d.q_roa:g} fill={fill.describe()}; S_A from the known perturbation"
    attack = f"pgd-linf eps={d.eps:g} steps={d.steps}, crafted on f; the mask knows this attack (not a defence)"
    base = {"kind": "analysis", "settings": settings, "area": o["area"], "n_images": len(x)}
    return [
        base | {"defence": "oracle", "setting": "clean", "attack": "none", "accuracy": o["clean_accuracy"]},
        base | {"defence": "oracle", "setting": "non-adaptive", "attack": attack, "accuracy": o["accuracy"]},
        base
        | {
            "defence": "random[oracle]",
            "kind": "control",
            "setting": "non-adaptive",
            "attack": attack,
            "accuracy": o["random_mask_accuracy"],
        },
    ]


def _pct(v: float | None) -> str:
    return "     -" if v is None else f"{100 * v:5.1f}%"


def defence_table(result: DefendResult) -> str:
    """The terminal table: one line per defence, one column per setting, the attacks below, and the sanity checks."""
    by: dict[str, dict[str, Any]] = {}
    for r in result.table:
        by.setdefault(r["defence"], {"kind": r["kind"], "area": r["area"]})[r["setting"]] = r["accuracy"]
    s = result.summary
    lines = [
        f"defence table: {s['n_test']} test images, seed {s['seed']}",
        f"{'defence':<22}{'kind':<10}{'area':>7}{'clean':>8}{'non-adapt':>11}{'adaptive':>10}{'square':>8}{'worst':>8}",
    ]
    for name, v in by.items():
        lines.append(
            f"{name:<22}{v['kind']:<10}{_pct(v['area']):>7}{_pct(v.get('clean')):>8}{_pct(v.get('non-adaptive')):>11}"
            f"{_pct(v.get('adaptive')):>10}{_pct(v.get('gradient-free')):>8}{_pct(v.get('worst-case')):>8}"
        )
    d = result.config.defend
    lines += [
        "",
        f"non-adapt: pgd-linf eps={d.eps:g} steps={d.steps} crafted on f (for adv_training: on the undefended f);",
        f"adaptive: the same PGD crafted through the defence (fixed masks: exact gradient; per-class/per-input mask "
        f"choice: BPDA; bit_depth/median/jpeg: BPDA identity; noise fill: EOT {d.eot_draws} draws);",
        f"square: square eps={d.eps:g} queries={d.square_queries} on the defence; worst: robust to all three.",
        "oracle = each image's own S_A from the known attack: an analysis, not a defence.",
        "",
        f"sanity (adaptive PGD, {s['n_sanity']} images): robust accuracy at eps "
        + ", ".join(f"{e:g}" for e in d.sanity_eps),
    ]
    for r in result.sanity:
        flag = "falls" if r["falls"] else "DOES NOT FALL"
        ok = "ok" if r["unbounded_accuracy"] <= 0.05 else "NOT ~0: suspect gradient masking"
        accs = " ".join(_pct(a) for a in r["accuracy"])
        lines.append(f"  {r['defence']:<20} {accs}  ({flag}; unbounded {_pct(r['unbounded_accuracy'])}: {ok})")
    front = [r for r in result.sweep if r["pareto"]]
    lines += ["", f"sweep: {len(result.sweep)} mask settings; Pareto front on (clean, adaptive):"]
    for r in front:
        lines.append(
            f"  {r['scope']:<17} {r['threshold']:<6} q_roa={r['q_roa']} dil={r['dilation']} fill={r['fill']:<14}"
            f" area {_pct(r['area'])} clean {_pct(r['clean_accuracy'])} adaptive {_pct(r['adaptive_accuracy'])}"
        )
    lines.append(f"time: {s['timings']['total']:.0f} s")
    return "\n".join(lines)


def short_form_rows(
    model: nn.Module,
    splits: Splits,
    fit_maps: MapSet,
    test_maps: MapSet,
    attacks: dict[str, Any],
    config: RunConfig,
) -> list[dict[str, Any]]:
    """The short form of ``roiroa defend`` inside ``roiroa run``: per-class and per-input scopes (each beside its
    equal-area random control) and the four input-transformation baselines, against the run's own attacks, on the
    first ``defend.run_images`` test images. Rows have the keys of the run's ``defence`` rows (plus n_images)."""
    d, r = config.defend, config.regions
    n = min(d.run_images, len(splits.test))
    if n == 0:
        return []
    x, y = splits.test.images[:n], splits.test.labels[:n]
    fill = make_fill(config.defence.fill, splits.fit.images)  # type: ignore[arg-type]
    probe = LinfPGD(eps=d.probe_eps, steps=d.probe_steps, random_start=False, batch_size=256)
    scopes: dict[str, MaskScope] = {
        "per_class": PerClassMask(r.q_roi, r.q_roa, r.threshold).fit(  # type: ignore[arg-type]
            fit_maps.importance, fit_maps.vulnerability[ALL], splits.fit.labels, splits.fit.num_classes
        ),
        "per_input": PerInputMask(r.q_roi, r.q_roa, r.threshold, "probe", probe),  # type: ignore[arg-type]
    }
    defended: dict[str, tuple[nn.Module, nn.Module | None]] = {
        name: (
            ScopedNeutralizer(model, scope, fill),
            ScopedNeutralizer(model, EqualAreaControl(scope, stage_seed(config.seed, f"control:{name}")), fill),
        )
        for name, scope in scopes.items()
    }
    params: dict[str, dict[str, Any]] = {
        "bit_depth": {"bits": d.bits},
        "median": {"size": d.median_size},
        "jpeg": {"quality": d.jpeg_quality},
        "blur": {"sigma": d.blur_sigma},
    }
    for name, kw in params.items():
        defended[name] = (Preprocessed(model, BASELINES.create(name, **kw)), None)
    ok_f = correct(model, x, y)
    rows = []
    for name, (dm, control) in progress(defended.items(), "defence short form", total=len(defended)):
        clean = correct(dm, x, y)
        ctl_clean = None if control is None else correct(control, x, y)
        area = float(dm.masks(x).double().mean()) if isinstance(dm, ScopedNeutralizer) else None
        for label, attack in attacks.items():
            x_adv = test_maps.results[label].x_adv[:n]
            seed_all(stage_seed(config.seed, f"short:{name}:{label}"))
            row: dict[str, Any] = {
                "mask": name,
                "fill": config.defence.fill if area is not None else None,
                "threshold": r.threshold if area is not None else None,
                "attack": label,
                "area": area,
                "clean_accuracy": mean(clean),
                "nonadaptive_accuracy": mean(clean & correct(dm, x_adv, y)),
                "adaptive_accuracy": mean(clean & correct(dm, attack(dm, x, y), y)),
                "random_mask_clean_accuracy": None,
                "random_mask_accuracy": None,
                "random_mask_adaptive_accuracy": None,
                "undefended_accuracy": mean(ok_f & correct(model, x_adv, y)),
                "n_images": n,
            }
            if control is not None and ctl_clean is not None:
                row["random_mask_clean_accuracy"] = mean(ctl_clean)
                row["random_mask_accuracy"] = mean(ctl_clean & correct(control, x_adv, y))
                row["random_mask_adaptive_accuracy"] = mean(ctl_clean & correct(control, attack(control, x, y), y))
            rows.append(row)
    return rows
