"""Tables of a run: the tidy metrics.csv rows, the per-image rows, and the terminal summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roiroa.evaluate.runner import RunResult

METRIC_COLUMNS = ("section", "scope", "attack", "metric", "value")


def metric_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """results.json flattened into rows (section, scope, attack, metric, value), one number each."""
    rows: list[dict[str, Any]] = [
        {"section": "model", "scope": "f", "attack": "", "metric": "test_accuracy", "value": results["model"]["test_accuracy"]}
    ]
    for label, a in results["attacks"].items():
        for metric in ("robust_accuracy", "success_rate", "mean_linf", "mean_l2"):
            rows.append({"section": "attacks", "scope": "f", "attack": label, "metric": metric, "value": a[metric]})
    regions = results["regions"]
    for label, stats in regions["correlation"].items():
        for metric, s in stats.items():
            rows.append({"section": "regions", "scope": "correlation", "attack": label, "metric": metric, "value": s["mean"]})
    for method, entry in regions["overlap"].items():
        for label, stats in entry.items():
            if isinstance(stats, dict):
                for metric in ("iou", "dice"):
                    rows.append({"section": "regions", "scope": method, "attack": label, "metric": metric, "value": stats[metric]["mean"]})  # fmt: skip
    for row in results["defence"]:
        for metric, value in row.items():
            if metric not in ("mask", "fill", "threshold", "attack"):
                rows.append({"section": "defence", "scope": row["mask"], "attack": row["attack"], "metric": metric, "value": value})  # fmt: skip
    for row in results["oracle"]:
        for metric in ("area", "accuracy", "clean_accuracy", "random_mask_accuracy"):
            rows.append({"section": "oracle", "scope": f"q_roa={row['q_roa']}", "attack": row["attack"], "metric": metric, "value": row[metric]})  # fmt: skip
    for stage, seconds in results["timings"].items():
        rows.append({"section": "timings", "scope": stage, "attack": "", "metric": "seconds", "value": seconds})
    return rows


def per_image_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per test image: source index, label, predictions on clean and attacked images, statistics."""
    test = result.splits.test
    columns = {"index": test.index, "label": test.labels}
    columns |= {f"pred[{k}]": v for k, v in result.predictions.items()}
    columns |= result.per_image
    names = list(columns)
    values = [c.tolist() for c in columns.values()]
    return [dict(zip(names, row)) for row in zip(*values)]


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
            f"{_pct(row['random_mask_adaptive_accuracy']):>11}{_pct(oracle.get(label, float('nan'))):>9}  {_pct(row['area'])}"
        )
    corr = results["regions"]["correlation"]["all"]
    iou = results["regions"]["overlap"]["top_q"]["all"]["iou"]
    lines += [
        "",
        "robust accuracy: f = undefended; f∘N = global-mask neutralization, attack crafted on f (non-adaptive)",
        "or through f∘N (adapt); random = a random mask of the same area; *oracle = each image's own S_A",
        f"from the known perturbation at q_roa={q_roa} (an analysis that knows the attack, not a defence).",
        f"RoI vs RoA: IoU {iou['mean']:.3f}, Pearson {corr['pearson']['mean']:.3f}, Spearman {corr['spearman']['mean']:.3f} (means over images)",
        f"time: {sum(results['timings'].values()):.1f} s",
    ]
    return "\n".join(lines)
