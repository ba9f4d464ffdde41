"""Atlases: where, over a dataset, the model looks and the attacks act.

Mean and standard deviation over images of the importance I, the vulnerability A and the
perturbation |delta|, per class and per attack, and the frequency map of each of the four segments
(the share of images in which a position falls in that segment). Computed from a run folder's
maps.npz alone, drawn as image grids with one colour scale per row and a colour bar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

from roiroa.results import SEGMENT_NAMES

SEGMENT_MEANINGS = {
    "S_0": "neither RoI\nnor RoA",
    "S_I": "RoI only\n(critical, safe)",
    "S_A": "RoA only (vulnerable,\nnot needed)",
    "S_IA": "RoI and RoA",
}


def unit_mean(maps: np.ndarray) -> np.ndarray:
    """Each map of (N, H, W) divided by the mean of its absolute values (an all-zero map stays zero)."""
    scale = np.abs(maps.reshape(len(maps), -1)).mean(1).reshape(-1, 1, 1)
    return maps / np.where(scale > 0, scale, 1.0)


def group_mean_std(maps: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group mean and standard deviation (ddof 0) of maps (N, H, W) over images.

    groups: (N,) ints in [0, n_groups). Returns two (n_groups, H, W) float64 arrays; NaN for an empty group.
    """
    m = maps.reshape(len(maps), -1).astype(np.float64)
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    onehot = np.zeros((n_groups, len(maps)))
    onehot[groups, np.arange(len(maps))] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = onehot @ m / counts[:, None]
        var = onehot @ (m * m) / counts[:, None] - mean**2
    shape = (n_groups, *maps.shape[1:])
    return mean.reshape(shape), np.sqrt(np.clip(var, 0.0, None)).reshape(shape)


def segment_frequency(segments: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, 4, H, W): per group, the share of images in which each position is in S_0, S_I, S_A, S_IA.

    segments: (N, H, W) labels 0..3 (Segments.labels()); the four maps of a group sum to 1 at every position.
    """
    return np.stack(
        [group_mean_std((segments == v).astype(np.float64), groups, n_groups)[0] for v in range(len(SEGMENT_NAMES))],
        axis=1,
    )


@dataclass(frozen=True)
class GridRow:
    """One row of an image grid: a title, maps (K, H, W) with their column titles, a colour bar label."""

    title: str
    maps: np.ndarray
    columns: Sequence[str]
    colourbar: str
    cmap: str = "inferno"
    vmin: float | None = None
    vmax: float | None = None


FONT = 8  # points: 11 px on the page at the grid's 100 dpi


def image_grid(rows: Sequence[GridRow], title: str, cell: float = 1.25) -> plt.Figure:
    """A grid of maps, one row per GridRow, with one colour scale per row and its colour bar; cells shrink so
    that the grid fits the report's column at 100 dpi (text stays at ``FONT``).

    The axes are placed by hand (sizes in inches): matplotlib's automatic layouts cost seconds on
    grids of this many axes.
    """
    from roiroa.report.figures import DPI, PAGE_PX, pyplot

    plt = pyplot()
    n_cols = max(len(r.columns) for r in rows)
    left, right, top, bottom, title_h, gap = 1.25, 1.25, 0.5, 0.1, 0.25, 0.08
    cell = min(cell, (PAGE_PX / DPI - left - right) / n_cols)
    width = left + n_cols * cell + right
    height = top + len(rows) * (cell + title_h) + bottom
    fig = plt.figure(figsize=(width, height))
    for r, row in enumerate(rows):
        finite = row.maps[np.isfinite(row.maps)]
        vmin = row.vmin if row.vmin is not None else (float(finite.min()) if finite.size else 0.0)
        vmax = row.vmax if row.vmax is not None else (float(finite.max()) if finite.size else 1.0)
        y = (height - top - (r + 1) * (cell + title_h) + gap / 2) / height
        size = (cell - gap) / width, (cell - gap) / height
        image = None
        for c, name in enumerate(row.columns):
            ax = fig.add_axes(((left + c * cell) / width, y, *size))
            ax.set_xticks([])
            ax.set_yticks([])
            image = ax.imshow(row.maps[c], cmap=row.cmap, vmin=vmin, vmax=max(vmax, vmin + 1e-12))
            ax.set_title(name, fontsize=FONT, pad=2)
            if c == 0:
                ax.set_ylabel(row.title, fontsize=FONT + 1)
        if image is not None:
            cax = fig.add_axes(((left + len(row.columns) * cell + 0.05) / width, y, 0.1 / width, size[1]))
            bar = fig.colorbar(image, cax=cax)
            bar.set_label(row.colourbar, fontsize=FONT)
            bar.ax.tick_params(labelsize=FONT)
    fig.suptitle(title, fontsize=FONT + 3, y=1 - 0.08 / height, va="top")
    return fig


def _short(name: str, width: int = 14) -> str:
    """A class or attack name cut to ``width`` characters, with '$' escaped (matplotlib reads $...$ as maths)."""
    name = name if len(name) <= width else name[: width - 1] + "…"
    return name.replace("$", r"\$")


MAX_CLASSES = 12  # columns of the per-class atlases: more would not fit the report's column legibly


def _note(k: int) -> str:
    return "" if k <= MAX_CLASSES else f" (the first {MAX_CLASSES} of {k} classes)"


def class_atlas(arrays: Mapping[str, np.ndarray], classes: Sequence[str], attack: str) -> plt.Figure:
    """Rows mean/std of I, A (mean over attacks) and |delta| of ``attack``; columns the classes and 'all'."""
    labels = np.asarray(arrays["labels"]).astype(np.int64)
    k, shown = len(classes), slice(0, MAX_CLASSES)
    columns = [_short(c, 10) for c in classes[shown]] + ["all images"]
    rows = []
    for name, key, unit in (
        ("I", "importance", "I"),
        ("A", "roa_map", "A (unit mean)"),
        (f"|δ| {_short(attack)}", f"perturbation[{attack}]", "|δ|"),
    ):
        maps = np.asarray(arrays[key])
        mean, std = group_mean_std(maps, labels, k)
        all_mean, all_std = group_mean_std(maps, np.zeros(len(maps), dtype=np.int64), 1)
        rows.append(GridRow(f"mean {name}", np.concatenate([mean[shown], all_mean]), columns, f"mean {unit}"))
        rows.append(
            GridRow(f"std {name}", np.concatenate([std[shown], all_std]), columns, f"std {unit}", cmap="viridis")
        )
    return image_grid(rows, "Atlas per class: mean and standard deviation over the test images" + _note(k))


def attack_atlas(arrays: Mapping[str, np.ndarray], attacks: Sequence[str]) -> plt.Figure:
    """Rows mean/std of A and |delta|; columns the attacks (and 'all' for A).

    Attacks differ in units (a gradient sum, an L2 or L-inf perturbation), so every map is first
    scaled to unit mean per image (as the run's mean A is): the rows compare where, not how much.
    """
    n = len(np.asarray(arrays["labels"]))
    one = np.zeros(n, dtype=np.int64)
    rows = []
    for name, prefix, extra in (("A", "vulnerability", [("all attacks", "roa_map")]), ("|δ|", "perturbation", [])):
        keys = [(_short(a), f"{prefix}[{a}]") for a in attacks if f"{prefix}[{a}]" in arrays] + extra
        maps = [unit_mean(np.asarray(arrays[key], dtype=np.float64)) for _, key in keys]
        stats = [group_mean_std(m, one, 1) for m in maps]
        columns = [column for column, _ in keys]
        rows.append(GridRow(f"mean {name}", np.concatenate([s[0] for s in stats]), columns, f"mean {name} (unit mean)"))
        rows.append(
            GridRow(
                f"std {name}", np.concatenate([s[1] for s in stats]), columns, f"std {name} (unit mean)", cmap="viridis"
            )
        )
    return image_grid(rows, "Atlas per attack: mean and standard deviation over the test images (maps at unit mean)")


def segment_atlas(arrays: Mapping[str, np.ndarray], classes: Sequence[str]) -> plt.Figure:
    """Rows the four segments; columns the classes and 'all'; colour = share of images (0..1, one scale)."""
    labels = np.asarray(arrays["labels"]).astype(np.int64)
    segments = np.asarray(arrays["segments"])
    freq = segment_frequency(segments, labels, len(classes))
    total = segment_frequency(segments, np.zeros(len(labels), dtype=np.int64), 1)
    shown = slice(0, MAX_CLASSES)
    columns = [_short(c, 10) for c in classes[shown]] + ["all images"]
    rows = [
        GridRow(
            f"{name}\n{SEGMENT_MEANINGS[name]}",
            np.concatenate([freq[shown, s], total[:, s]]),
            columns,
            "share of images",
            cmap="magma",
            vmin=0.0,
            vmax=1.0,
        )
        for s, name in enumerate(SEGMENT_NAMES)
    ]
    title = "Segment frequency: share of test images in which each position falls in each segment"
    return image_grid(rows, title + _note(len(classes)))
