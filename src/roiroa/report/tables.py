"""Tables of a results folder, from its results.json alone: the tidy metrics.csv rows and the terminal tables
of ``run``, ``defend`` and ``patches``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from roiroa.report.verdict import tables_of

METRIC_COLUMNS = ("section", "scope", "attack", "setting", "metric", "value")
GRID_METRICS = ("accuracy", "ci_low", "ci_high", "n_images", "area", "detection_iou")


def _row(section: str, scope: str, attack: str, setting: str, metric: str, value: Any) -> dict[str, Any]:
    return dict(zip(METRIC_COLUMNS, (section, scope, attack, setting, metric, value), strict=True))


def grid_metric_rows(section: str, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One metric row per number of each grid row (accuracy, its interval, n, area, detection IoU)."""
    out = []
    for r in rows:
        out += [
            _row(section, r["defence"], r["attack"], r["setting"], m, r[m])
            for m in GRID_METRICS
            if r.get(m) is not None
        ]
    return out


def statistics_rows(statistics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows of the dataset statistics: scope 'statistics' (or 'consistency:<kind>', 'class:<name>') and
    ':null' for the null; metrics <name>, <name>_ci_low, <name>_ci_high."""
    if not statistics:
        return []
    groups = [("statistics", statistics["per_attack"])]
    groups += [(f"consistency:{kind}", entries) for kind, entries in statistics["consistency"].items()]
    groups += [(f"class:{name}", {"all": stats}) for name, stats in statistics["per_class"].items()]
    rows: list[dict[str, Any]] = []
    for scope, by_label in groups:
        for label, stats in by_label.items():
            pairs = stats.items() if "value" not in stats else [("roa_iou", stats)]
            for name, pair in pairs:
                for kind in ("value", "null"):
                    ci, where = pair[kind], scope if kind == "value" else f"{scope}:null"
                    rows += [
                        _row("statistics", where, label, "", name + suffix, ci[key])
                        for suffix, key in (("", "mean"), ("_ci_low", "low"), ("_ci_high", "high"))
                    ]
    return rows


def verdict_metric_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdict at the top of the report, one number per row (section 'verdict', scope the defence): per
    setting its accuracy and interval, its control's and the undefended model's accuracy, the differences
    with their 95% intervals; and the oracle gap (setting 'oracle')."""
    rows: list[dict[str, Any]] = []
    for _, found in tables_of(results):
        for v in found:
            for c in filter(None, (v.clean, *v.comparisons)):
                numbers = {"accuracy": c.defence.accuracy, "ci_low": c.defence.low, "ci_high": c.defence.high}
                for name, other, d in (
                    ("control", c.control, c.vs_control),
                    ("undefended", c.undefended, c.vs_undefended),
                ):
                    if other is not None and d is not None:
                        numbers |= {f"{name}_accuracy": other.accuracy, f"diff_{name}": d.value}
                        numbers |= {f"diff_{name}_ci_low": d.low, f"diff_{name}_ci_high": d.high}
                rows += [_row("verdict", v.defence, c.attack, c.setting, m, x) for m, x in numbers.items()]
            if v.oracle is not None:
                o = v.oracle
                numbers = {"oracle_gap": o.gap, "oracle_accuracy": o.accuracy, "oracle_area": o.area}
                rows += [_row("verdict", v.defence, o.attack, "oracle", m, x) for m, x in numbers.items()]
    return rows


def metric_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """results.json flattened into rows (section, scope, attack, setting, metric, value), one number each."""
    rows = [_row("model", "f", "", "clean", "test_accuracy", results["model"]["test_accuracy"])]
    for a in results.get("attacks", []):
        rows += [
            _row("attacks", "f", a["label"], "", m, a[m])
            for m in ("robust_accuracy", "success_rate", "mean_linf", "mean_l2")
            if m in a
        ]
    rows += statistics_rows(results.get("statistics"))
    for section in ("defence", "defence_short", "table"):
        rows += grid_metric_rows(section, results.get(section, []))
    for r in results.get("oracle", []):
        rows += [
            _row("oracle", f"q_roa={r['q_roa']}", r["attack"], "non-adaptive", m, r[m])
            for m in ("area", "accuracy", "clean_accuracy", "random_mask_accuracy")
        ]
    for r in results.get("sweep", []):
        scope = f"{r['scope']} {r['threshold']} q_roa={r['q_roa']} dilation={r['dilation']} fill={r['fill']}"
        rows += [
            _row("sweep", scope, r["attack"], "", m, r[m])
            for m in ("area", "clean_accuracy", "nonadaptive_accuracy", "adaptive_accuracy")
        ]
    for r in results.get("sanity", []):
        rows += [
            _row("sanity", r["defence"], f"eps={e:g}", "adaptive", "accuracy", a)
            for e, a in zip(r["eps"], r["accuracy"], strict=True)
        ]
    rows += verdict_metric_rows(results)
    rows += [_row("timings", stage, "", "", "seconds", sec) for stage, sec in results["timings"].items()]
    return rows


def pct(v: float | None) -> str:
    return "     -" if v is None else f"{100 * v:5.1f}%"


def cells(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(defence, setting, attack) -> grid row."""
    return {(r["defence"], r["setting"], r["attack"]): r for r in rows}


def run_table(results: dict[str, Any]) -> str:
    """The terminal summary of a run: f, the global mask (non-adaptive and adaptive), its random control, the
    oracle, and the short table of the other defences."""
    m, by = results["model"], cells(results["defence"])
    q = results["regions"]["q_roa"]
    oracle = {r["attack"]: r["accuracy"] for r in results["oracle"] if abs(r["q_roa"] - q) < 1e-9}
    lines = [
        f"model {m['name']}: clean accuracy {pct(m['test_accuracy'])} on {results['dataset']['n_test']} test images",
        *([f"warning: {m['warning']}"] if m.get("warning") else []),
        "",
        f"{'attack':<14}{'f':>8}{'f∘N':>8}{'f∘N adapt':>11}{'random':>8}{'rnd adapt':>11}{'oracle*':>9}  area",
    ]
    area = by.get(("global", "clean", "none"), {}).get("area")
    for a in results["attacks"]:
        label = a["label"]
        adapt = "gradient-free" if ("global", "gradient-free", label) in by else "adaptive"
        get = lambda d, s, label=label: by.get((d, s, label), {}).get("accuracy")  # noqa: E731
        nonadapt = "gradient-free" if adapt == "gradient-free" else "non-adaptive"
        lines.append(
            f"{label:<14}{pct(get('none', nonadapt)):>8}{pct(get('global', nonadapt)):>8}"
            f"{pct(get('global', adapt)):>11}{pct(get('random[global]', nonadapt)):>8}"
            f"{pct(get('random[global]', adapt)):>11}{pct(oracle.get(label)):>9}  {pct(area)}"
        )
    lines += short_lines(results.get("defence_short", []), [a["label"] for a in results["attacks"]])
    stats = results.get("statistics", {}).get("per_attack", {}).get("all", {})
    get_mean = lambda k: stats.get(k, {}).get("value", {}).get("mean")  # noqa: E731
    lines += [
        "",
        "robust accuracy: f = undefended; f∘N = global-mask neutralization, attack crafted on f (non-adaptive)",
        "or through f∘N (adapt); random = a random mask of the same area; *oracle = each image's own S_A",
        f"from the known perturbation at q_roa={q} (an analysis that knows the attack, not a defence).",
        f"RoI vs RoA: IoU {_num(get_mean('iou'))}, Pearson {_num(get_mean('pearson'))}, "
        f"Spearman {_num(get_mean('spearman'))} (means over images)",
        f"time: {sum(results['timings'].values()):.1f} s",
    ]
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def short_lines(rows: list[dict[str, Any]], attacks: list[str]) -> list[str]:
    """The short defence table of a run: every other defence and its random control, on fewer images."""
    if not rows:
        return []
    by = cells(rows)
    n = rows[0]["n_images"]
    lines = ["", f"other defences ({n} test images, the classes balanced; `roiroa defend` has the full table):"]
    lines.append(f"{'defence:attack':<26}{'clean':>8}{'non-adapt':>11}{'adaptive':>10}{'worst':>8}  area")
    names = list(dict.fromkeys(r["defence"] for r in rows if r["defence"] != "none"))
    for d in names:
        worst = by.get((d, "worst-case", "all"), {}).get("accuracy")
        clean = by.get((d, "clean", "none"), {})
        for label in attacks:
            get = lambda s, d=d, label=label: by.get((d, s, label), {}).get("accuracy")  # noqa: E731
            adaptive = get("adaptive") if get("adaptive") is not None else get("gradient-free")
            lines.append(
                f"{d + ':' + label:<26}{pct(clean.get('accuracy')):>8}{pct(get('non-adaptive')):>11}{pct(adaptive):>10}"
                f"{pct(worst):>8}  {pct(clean.get('area'))}"
            )
    return lines


def defend_table(results: dict[str, Any]) -> str:
    """The terminal table of ``roiroa defend``: one line per defence (accuracy with its 95% interval half-width
    in the worst case), the attacks, the oracle, the sanity checks and the Pareto front."""
    lines = [f"defence table: {results['n_test']} test images, seed {results['seed']}"]
    lines += defence_lines(results)
    lines += ["", "attacks: " + "; ".join(_attack_text(a) for a in results["attacks"])]
    lines += [
        "n-ad: crafted on f, evaluated on the defence; adapt: crafted through the defence; "
        "worst: robust to every attack."
    ]
    free = [a["label"] for a in results["attacks"] if a.get("gradient_free")]
    if free and results.get("suite", {}).get("cascade"):
        lines.append(f"{', '.join(free)}: ran only on the images every gradient attack left (cascade), so its column")
        lines.append("  is the gradient attacks and it together; the masking check says how many more it broke.")
    lines += oracle_lines(results) + sanity_lines(results) + front_lines(results)
    lines.append(f"time: {sum(results['timings'].values()):.0f} s")
    return "\n".join(lines)


def _attack_text(a: dict[str, Any]) -> str:
    return f"{a['label']}: {' '.join(f'{k}={v}' for k, v in a['params'].items() if k not in ('batch_size',))}"


def _columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(attack, setting) of each accuracy column: non-adaptive and adaptive, or gradient-free."""
    return [
        (a, s)
        for a in (x["label"] for x in results["attacks"])
        for s in (("gradient-free",) if _free(results, a) else ("non-adaptive", "adaptive"))
    ]


def defence_lines(results: dict[str, Any]) -> list[str]:
    """The header and one line per defence of the defend table."""
    by = cells(results["table"])
    columns = _columns(results)
    names = list(dict.fromkeys(r["defence"] for r in results["table"]))
    kinds = {r["defence"]: r["kind"] for r in results["table"]}
    head = "".join(
        f"{(a if s == 'gradient-free' else a + (' n-ad' if s == 'non-adaptive' else ' adapt'))[:12]:>14}"
        for a, s in columns
    )
    lines = [f"{'defence':<26}{'kind':<9}{'area':>7}{'clean':>8}{head}{'worst':>8}{'95% CI':>16}"]
    for d in names:
        clean = by.get((d, "clean", "none"), {})
        accs = "".join(f"{pct(by.get((d, s, a), {}).get('accuracy')):>14}" for a, s in columns)
        worst = by.get((d, "worst-case", "all"), {})
        ci = f"[{pct(worst.get('ci_low')).strip()}, {pct(worst.get('ci_high')).strip()}]" if worst else ""
        lines.append(
            f"{d:<22}{kinds[d]:<9}{pct(clean.get('area')):>7}{pct(clean.get('accuracy')):>8}{accs}"
            f"{pct(worst.get('accuracy')):>8}{ci:>16}"
        )
    return lines


def oracle_lines(results: dict[str, Any]) -> list[str]:
    return [
        f"oracle (an analysis that knows the attack, not a defence): {r['attack']} q_roa={r['q_roa']}: "
        f"{pct(r['accuracy'])} (area {pct(r['area']).strip()}; "
        f"random mask of the same area {pct(r['random_mask_accuracy']).strip()})"
        for r in results.get("oracle", [])
    ]


def front_lines(results: dict[str, Any]) -> list[str]:
    """The sweep's size and its Pareto front on (clean, worst case), or (clean, adaptive) in older folders."""
    sweep = results.get("sweep", [])
    front = [r for r in sweep if r["pareto"]]
    key, word = (
        ("worst_case_accuracy", "worst case")
        if front and "worst_case_accuracy" in front[0]
        else (
            "adaptive_accuracy",
            "adaptive",
        )
    )
    lines = ["", f"sweep: {len(sweep)} mask settings; Pareto front on (clean, {word}):"]
    return lines + [
        f"  {r['scope']:<17} {r['threshold']:<6} q_roa={r['q_roa']} dil={r['dilation']} fill={r['fill']:<14} "
        f"area {pct(r['area'])} clean {pct(r['clean_accuracy'])} {word} {pct(r[key])}"
        for r in front
    ]


def _free(results: dict[str, Any], label: str) -> bool:
    return any(a["label"] == label and a.get("gradient_free") for a in results["attacks"])


def sanity_lines(results: dict[str, Any]) -> list[str]:
    """The check that adaptive robust accuracy falls with eps and reaches about 0 unbounded."""
    rows = results.get("sanity", [])
    if not rows:
        return []
    lines = [
        "",
        f"sanity (adaptive attack, {results['n_sanity']} images): robust accuracy at eps "
        + ", ".join(f"{e:g}" for e in rows[0]["eps"]),
    ]
    for r in rows:
        flag = "falls" if r["falls"] else "DOES NOT FALL"
        ok = "ok" if r["unbounded_accuracy"] <= 0.05 else "NOT ~0: suspect gradient masking"
        accs = " ".join(pct(a) for a in r["accuracy"])
        lines.append(f"  {r['defence']:<20} {accs}  ({flag}; unbounded {pct(r['unbounded_accuracy'])}: {ok})")
    return lines


def patches_table(results: dict[str, Any]) -> str:
    """The terminal table of ``roiroa patches``: accuracy with its interval, detection IoU and flagged area."""
    lines = [f"patch table: {results['n_test']} test images, seed {results['seed']}"]
    w = max([22] + [len(r["attack"]) + 1 for r in results["table"]])  # 'patch-lavan-search@0.08[straight-through]'
    lines.append(f"{'attack':<{w}}{'defence':<30}{'setting':<14}{'acc':>7}{'95% CI':>16}{'IoU':>7}{'flagged':>9}")
    for r in results["table"]:
        ci = f"[{pct(r['ci_low']).strip()}, {pct(r['ci_high']).strip()}]"
        iou = "-" if r.get("detection_iou") is None else f"{r['detection_iou']:.3f}"
        lines.append(
            f"{r['attack']:<{w}}{r['defence']:<30}{r['setting']:<14}{pct(r['accuracy']):>7}{ci:>16}{iou:>7}{pct(r.get('area')):>9}"
        )
    lines.append(f"time: {sum(results['timings'].values()):.0f} s")
    return "\n".join(lines)


def terminal_table(results: dict[str, Any]) -> str:
    """The terminal table of any command's results."""
    return {"run": run_table, "defend": defend_table, "patches": patches_table}[results["command"]](results)
