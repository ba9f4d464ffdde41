"""Tables of a run: the tidy metrics.csv rows, the per-image rows, and the terminal summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roiroa.evaluate.runner import RunResult

METRIC_COLUMNS = ("section", "scope", "attack", "metric", "value")


def _row(section: str, scope: str, attack: str, metric: str, value: Any) -> dict[str, Any]:
    return dict(zip(METRIC_COLUMNS, (section, scope, attack, metric, value), strict=True))


def metric_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """results.json flattened into rows (section, scope, attack, metric, value), one number each."""
    rows = [_row("model", "f", "", "test_accuracy", results["model"]["test_accuracy"])]
    for label, a in results["attacks"].items():
        rows += [
            _row("attacks", "f", label, m, a[m]) for m in ("robust_accuracy", "success_rate", "mean_linf", "mean_l2")
        ]
    regions = results["regions"]
    for label, stats in regions["correlation"].items():
        rows += [_row("regions", "correlation", label, m, s["mean"]) for m, s in stats.items()]
    for method, entry in regions["overlap"].items():
        for label, stats in entry.items():
            if isinstance(stats, dict):
                rows += [_row("regions", method, label, m, stats[m]["mean"]) for m in ("iou", "dice")]
    rows += statistics_rows(results.get("statistics"))
    for row in results["defence"]:
        meta = ("mask", "fill", "threshold", "attack")
        rows += [_row("defence", row["mask"], row["attack"], m, v) for m, v in row.items() if m not in meta]
    for row in results["oracle"]:
        metrics = ("area", "accuracy", "clean_accuracy", "random_mask_accuracy")
        rows += [_row("oracle", f"q_roa={row['q_roa']}", row["attack"], m, row[m]) for m in metrics]
    rows += [_row("timings", stage, "", "seconds", sec) for stage, sec in results["timings"].items()]
    return rows


def statistics_rows(statistics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows of the dataset statistics: scope 'statistics' (or 'consistency:<kind>') for the value and
    '...:null' for the null; metrics <name>, <name>_ci_low, <name>_ci_high."""
    rows: list[dict[str, Any]] = []
    if not statistics:
        return rows
    groups = [("statistics", statistics["per_attack"])]
    groups += [
        (f"consistency:{kind}", {label: {"roa_iou": s} for label, s in entries.items()})
        for kind, entries in statistics["consistency"].items()
    ]
    for scope, by_label in groups:
        for label, stats in by_label.items():
            for name, pair in stats.items():
                for kind in ("value", "null"):
                    ci = pair[kind]
                    where = scope if kind == "value" else f"{scope}:null"
                    rows += [
                        _row("statistics", where, label, name + suffix, ci[key])
                        for suffix, key in (("", "mean"), ("_ci_low", "low"), ("_ci_high", "high"))
                    ]
    return rows


def per_image_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per test image: source index, label, predictions on clean and attacked images, statistics,
    and the class names of the label and of each prediction."""
    test = result.splits.test
    columns = {"index": test.index, "label": test.labels}
    columns |= {f"pred[{k}]": v for k, v in result.predictions.items()}
    columns |= result.per_image
    names = list(columns)
    values = [c.tolist() for c in columns.values()]
    rows = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
    classes = test.classes  # class names beside the indices
    for row in rows:
        row["class"] = classes[row["label"]]
        row |= {f"pred_class[{k}]": classes[row[f"pred[{k}]"]] for k in result.predictions}
    return rows


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}%"


def headline_table(results: dict[str, Any]) -> str:
    """The terminal summary: accuracy of f, of f o N (non-adaptive and adaptive), the control, the oracle."""
    lines = [
        f"model {results['model']['name']}: clean accuracy {_pct(results['model']['test_accuracy'])} "
        f"on {results['dataset']['n_test']} test images",
        "",
        f"{'attack':<12}{'f':>8}{'f∘N':>8}{'f∘N adapt':>11}{'random':>8}{'rnd adapt':>11}{'oracle*':>9}  area",
    ]
    oracle = {}
    q_roa = results["regions"]["overlap"]["top_q"]["q_roa"]
    for row in results["oracle"]:
        if abs(row["q_roa"] - q_roa) < 1e-9:
            oracle[row["attack"]] = row["accuracy"]
    for row in results["defence"]:
        label = row["attack"]
        lines.append(
            f"{label:<12}{_pct(row['undefended_accuracy']):>8}{_pct(row['nonadaptive_accuracy']):>8}"
            f"{_pct(row['adaptive_accuracy']):>11}{_pct(row['random_mask_accuracy']):>8}"
            f"{_pct(row['random_mask_adaptive_accuracy']):>11}{_pct(oracle.get(label, float('nan'))):>9}"
            f"  {_pct(row['area'])}"
        )
    lines += short_form_lines(results.get("defence_short", []))
    corr = results["regions"]["correlation"]["all"]
    iou = results["regions"]["overlap"]["top_q"]["all"]["iou"]
    lines += [
        "",
        "robust accuracy: f = undefended; f∘N = global-mask neutralization, attack crafted on f (non-adaptive)",
        "or through f∘N (adapt); random = a random mask of the same area; *oracle = each image's own S_A",
        f"from the known perturbation at q_roa={q_roa} (an analysis that knows the attack, not a defence).",
        f"RoI vs RoA: IoU {iou['mean']:.3f}, Pearson {corr['pearson']['mean']:.3f}, "
        f"Spearman {corr['spearman']['mean']:.3f} (means over images)",
        f"time: {sum(results['timings'].values()):.1f} s",
    ]
    return "\n".join(lines)


def short_form_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The short form of `roiroa defend` in the run's table: other scopes and baselines, on fewer images."""
    if not rows:
        return []
    dash = "    -"
    lines = [
        "",
        f"short form of `roiroa defend` (first {rows[0]['n_images']} test images; `roiroa defend` has the full table):",
        f"{'defence:attack':<22}{'f':>8}{'f∘N':>8}{'f∘N adapt':>11}{'random':>8}{'rnd adapt':>11}  area",
    ]
    for r in rows:
        keys = ("random_mask_accuracy", "random_mask_adaptive_accuracy")
        ctl = [_pct(r[k]) if r[k] is not None else dash for k in keys]
        area = _pct(r["area"]) if r["area"] is not None else dash
        lines.append(
            f"{r['mask'] + ':' + r['attack']:<22}{_pct(r['undefended_accuracy']):>8}"
            f"{_pct(r['nonadaptive_accuracy']):>8}"
            f"{_pct(r['adaptive_accuracy']):>11}{ctl[0]:>8}{ctl[1]:>11}  {area}"
        )
    return lines
