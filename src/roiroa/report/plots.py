"""The report's charts, each a matplotlib Figure drawn from results.json (or per_image.csv) alone: robust
accuracy against eps per defence, accuracy against blocked area (the oracle's q sweep, the mask sweep and its
Pareto front, the defences of the table), per-class statistics with their intervals, and the per-image
statistics against their null.

Every chart has a title and labelled axes, and is sized for the report's 1,200 px column at 100 dpi with no
text under 10 px (``STYLE``); :func:`roiroa.report.figures.png_bytes` renders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from roiroa.report.figures import png_bytes, pyplot, text

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "figure.titlesize": 12,
}
WIDTH = 11.0  # inches: 1,100 px at 100 dpi
Row = Mapping[str, Any]


def figure(n_axes: int = 1, height: float = 4.2) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of ``n_axes`` side by side, in the report's style."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, n_axes, figsize=(WIDTH, height), squeeze=False)
    return fig, list(axes[0])


def _styled(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=STYLE["axes.titlesize"])
    ax.set_xlabel(xlabel, fontsize=STYLE["axes.labelsize"])
    ax.set_ylabel(ylabel, fontsize=STYLE["axes.labelsize"])
    ax.tick_params(labelsize=STYLE["xtick.labelsize"])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=STYLE["legend.fontsize"])


def draw_eps(ax: plt.Axes, results: Mapping[str, Any]) -> None:
    """Adaptive robust accuracy against eps per defence (the sanity check) on ``ax``."""
    rows = results.get("sanity") or []
    for r in rows:
        mark = "" if r.get("falls", True) else " (does NOT fall)"
        ax.plot(r["eps"], r["accuracy"], marker="o", ms=4, label=text(r["defence"]) + mark)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    n = rows[0].get("n_images", results.get("n_sanity", 0)) if rows else 0
    _styled(
        ax,
        f"Sanity check: adaptive robust accuracy against eps ({n} images)",
        "eps (L-inf ball radius, log scale)",
        "robust accuracy, adaptive attack",
    )


def eps_figure(results: Mapping[str, Any]) -> plt.Figure:
    """Adaptive robust accuracy against eps per defence: it must fall, and reach about 0 unbounded."""
    fig, (ax,) = figure()
    draw_eps(ax, results)
    fig.tight_layout()
    return fig


def _oracle_lines(ax: plt.Axes, oracle: Sequence[Row]) -> None:
    """Per attack: the oracle's accuracy against its area over q_roa, and a random mask of the same area."""
    for i, attack in enumerate(dict.fromkeys(str(r["attack"]) for r in oracle)):
        pts = sorted((float(r["area"]), r) for r in oracle if r["attack"] == attack)
        colour = f"C{i % 10}"
        area = [a for a, _ in pts]
        ax.plot(area, [r["accuracy"] for _, r in pts], "-o", color=colour, label=f"oracle, {text(attack)}")
        random = [r["random_mask_accuracy"] for _, r in pts]
        ax.plot(area, random, ":x", color=colour, label=f"random mask, {text(attack)}")


def sweep_robust_key(sweep: Sequence[Row]) -> str:
    """The sweep's robust column its Pareto front is on: the worst case over the suite where the folder has it
    (version 0.2 on), else the adaptive attack's."""
    return "worst_case_accuracy" if sweep and "worst_case_accuracy" in sweep[0] else "adaptive_accuracy"


def _sweep_scatter(ax: plt.Axes, sweep: Sequence[Row], x: str, size: int) -> None:
    """The mask sweep as points (``x`` against its robust column) per scope, and its Pareto front."""
    y = sweep_robust_key(sweep)
    word = "worst case" if y == "worst_case_accuracy" else "adaptive"
    for scope in dict.fromkeys(str(r["scope"]) for r in sweep):
        pts = [r for r in sweep if r["scope"] == scope]
        ax.scatter([r[x] for r in pts], [r[y] for r in pts], s=size, alpha=0.6, label=f"sweep {text(scope)}, {word}")
    front = sorted((r for r in sweep if r.get("pareto")), key=lambda r: r[x])
    if front:
        ax.plot([r[x] for r in front], [r[y] for r in front], "k--", lw=1, label="Pareto front")


def _sweep_points(ax: plt.Axes, sweep: Sequence[Row]) -> None:
    """The mask sweep's robust accuracy against area per scope, and its Pareto front."""
    _sweep_scatter(ax, sweep, "area", 18)


def _table_points(ax: plt.Axes, rows: Sequence[Row], attacks: Sequence[str]) -> None:
    """The table's masking defences (*) and controls (x) at their blocked area: non-adaptive accuracy in the
    colour of the oracle's line of that attack, the worst case in black (named)."""
    area = {r["defence"]: r["area"] for r in rows if r["setting"] == "clean" and r.get("area") is not None}
    for r in rows:
        worst = r["setting"] == "worst-case"
        if r["defence"] not in area or not (worst or (r["setting"] == "non-adaptive" and r["attack"] in attacks)):
            continue
        control = r.get("kind") == "control"
        colour = "k" if worst else f"C{list(attacks).index(r['attack']) % 10}"
        xy = (area[r["defence"]], r["accuracy"])
        ax.scatter([xy[0]], [xy[1]], marker="x" if control else "*", s=70, c=colour, zorder=3)
        if worst and not control:
            ax.annotate(text(r["defence"]), xy, fontsize=8, xytext=(4, 3), textcoords="offset points")


def tradeoff_figure(results: Mapping[str, Any]) -> plt.Figure:
    """Robust accuracy against the blocked fraction of the image: the oracle over q_roa beside a random mask of
    the same area, the mask sweep with its Pareto front, and the table's defences (worst case)."""
    fig, (ax,) = figure(height=4.8)
    _oracle_lines(ax, results.get("oracle") or [])
    _sweep_points(ax, results.get("sweep") or [])
    attacks = list(dict.fromkeys(str(r["attack"]) for r in results.get("oracle") or []))
    _table_points(ax, results.get("defence") or results.get("table") or [], attacks)
    ax.set_ylim(-0.02, 1.02)
    _styled(
        ax,
        "Accuracy against blocked area (*: a defence, x: its control; black: worst case)",
        "blocked area (fraction of the image)",
        "robust accuracy",
    )
    ax.legend(fontsize=STYLE["legend.fontsize"], loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def draw_pareto(ax: plt.Axes, results: Mapping[str, Any]) -> None:
    """The mask sweep's clean against robust accuracy (worst case, or adaptive in older folders) with its Pareto
    front, and the baselines, on ``ax``."""
    sweep = results.get("sweep") or []
    _sweep_scatter(ax, sweep, "clean_accuracy", 20)
    _baseline_points(ax, results.get("table") or [])
    _styled(
        ax,
        f"Mask sweep: clean against robust accuracy ({results.get('n_test', '?')} test images)",
        "clean accuracy",
        "robust accuracy" + (", worst case" if sweep_robust_key(sweep) == "worst_case_accuracy" else ", adaptive"),
    )


def pareto_figure(results: Mapping[str, Any]) -> plt.Figure:
    """The mask sweep's clean against robust accuracy with its Pareto front, and the table's baselines."""
    fig, (ax,) = figure(height=4.5)
    draw_pareto(ax, results)
    fig.tight_layout()
    return fig


def defence_figure(results: Mapping[str, Any], path: Path) -> None:
    """defence.png of ``roiroa defend``: the sweep's Pareto front (left) and the sanity check (right)."""
    fig, (ax, bx) = figure(2, height=4.8)
    draw_pareto(ax, results)
    draw_eps(bx, results)
    fig.tight_layout()
    path.write_bytes(png_bytes(fig))


def _baseline_points(ax: plt.Axes, rows: Sequence[Row]) -> None:
    """The undefended model and the baselines: clean against worst-case accuracy."""
    by = {(r["defence"], r["setting"]): r for r in rows if r["attack"] in ("none", "all")}
    for (name, setting), r in by.items():
        worst = by.get((name, "worst-case"))
        if setting == "clean" and r.get("kind") in ("none", "baseline") and worst is not None:
            ax.scatter([r["accuracy"]], [worst["accuracy"]], marker="*" if r["kind"] == "none" else "s", s=60, c="k")
            ax.annotate(
                text(name), (r["accuracy"], worst["accuracy"]), fontsize=8, xytext=(4, 2), textcoords="offset points"
            )


CLASS_STATISTICS = (("iou", "IoU of RoI and RoA"), ("spearman", "Spearman of I and A"))


def class_figure(results: Mapping[str, Any]) -> plt.Figure:
    """Per class: the mean IoU and Spearman over its test images with their intervals, beside the null."""
    per_class = (results.get("statistics") or {}).get("per_class") or {}
    classes = shown_classes(per_class)
    fig, axes = figure(len(CLASS_STATISTICS), height=3.8)
    x = np.arange(len(classes))
    for ax, (key, title) in zip(axes, CLASS_STATISTICS, strict=True):
        for shift, kind, colour in ((-0.2, "value", "C0"), (0.2, "null", "0.6")):
            mean, low, high = _intervals([per_class[c].get(key, {}).get(kind, {}) for c in classes])
            ax.bar(
                x + shift,
                mean,
                0.4,
                color=colour,
                label="the maps" if kind == "value" else "null (shuffled A)",
                yerr=np.stack([mean - low, high - mean]),
                capsize=2,
            )
        names = [text(c) if len(c) <= 12 else text(c[:11]) + "…" for c in classes]
        ax.set_xticks(x, names, rotation=45 if len(classes) > 10 else 0, ha="right" if len(classes) > 10 else "center")
        ax.margins(y=0.25)
        _styled(ax, f"{title} per class (mean, 95% interval)", "class", title)
        ax.legend(fontsize=STYLE["legend.fontsize"], loc="upper center", ncol=2)
    if len(classes) < len(per_class):
        fig.suptitle(f"The {len(classes)} of the {len(per_class)} classes of lowest and highest IoU", fontsize=11)
    fig.tight_layout()
    return fig


MAX_CLASSES = 24


def shown_classes(per_class: Mapping[str, Any]) -> list[str]:
    """Every class, or with more than MAX_CLASSES (ImageNet) the half of them of lowest and of highest IoU."""
    classes = list(per_class)
    if len(classes) <= MAX_CLASSES:
        return classes
    iou = {c: (per_class[c].get("iou", {}).get("value", {}).get("mean") or 0.0) for c in classes}
    ranked = sorted(classes, key=lambda c: iou[c])
    return ranked[: MAX_CLASSES // 2] + ranked[-MAX_CLASSES // 2 :]


def _intervals(stats: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) arrays of bootstrap_ci dicts; NaN for a missing mean, the mean for a missing bound."""

    def get(s: Mapping[str, Any], key: str) -> float:
        value = s.get(key)
        value = s.get("mean") if value is None else value
        return np.nan if value is None else float(value)

    return tuple(np.array([get(s, k) for s in stats], dtype=float) for k in ("mean", "low", "high"))  # type: ignore[return-value]


PER_IMAGE_STATISTICS = (("iou", "IoU of RoI and RoA"), ("spearman", "Spearman of I and A"))


def per_image_figure(rows: Sequence[Mapping[str, str]]) -> plt.Figure:
    """Histograms over the test images (the run's RoA map) of IoU and Spearman, beside their null."""
    chosen = [r for r in rows if r.get("attack") == "all"] or list(rows)
    fig, axes = figure(len(PER_IMAGE_STATISTICS), height=3.6)
    for ax, (key, title) in zip(axes, PER_IMAGE_STATISTICS, strict=True):
        value = _floats(chosen, key)
        null = _floats(chosen, f"{key}_null")
        both = np.concatenate([value, null])
        bins = list(np.linspace(both.min(), both.max(), 31)) if both.size else 10
        ax.hist(null, bins=bins, color="0.6", alpha=0.7, label=f"null (shuffled A), mean {_mean(null)}")
        ax.hist(value, bins=bins, color="C0", alpha=0.7, label=f"the maps, mean {_mean(value)}")
        _styled(ax, f"{title}: {len(value)} test images against the null", title, "images")
    fig.tight_layout()
    return fig


def _floats(rows: Sequence[Mapping[str, str]], key: str) -> np.ndarray:
    """The finite numbers of one column of per_image.csv."""
    out = np.array([float(r[key]) for r in rows if r.get(key) not in (None, "")], dtype=float)
    return out[np.isfinite(out)]


def _mean(values: np.ndarray) -> str:
    return f"{values.mean():.3f}" if values.size else "n/a"
