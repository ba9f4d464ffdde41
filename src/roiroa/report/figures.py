"""Figures of a results folder, drawn from its files alone (matplotlib, Agg backend): the run's gallery, the
defence table's sweep and sanity check, and the patch evaluation."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

from roiroa.files import atomic_write, cache_dir

FIGURE_VERSION = 5  # bump when a figure's drawing changes, so cached images are drawn again
_CACHE = {"enabled": True}
SEGMENT_COLOURS = ["#ffffff", "#1f77b4", "#d62728", "#9467bd"]  # S_0, S_I, S_A, S_IA


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend, imported when a figure is drawn (a cached figure needs none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def set_figure_cache(enabled: bool) -> None:
    """Keep drawn figures in the cache folder (``ROIROA_CACHE/figures``), keyed by what they show (default on)."""
    _CACHE["enabled"] = enabled


PAGE_PX = 1200  # the report's column at a 1,400 px wide window: an image no wider is shown at its own size
DPI = 100


def effective_dpi(fig: plt.Figure) -> float:
    """The resolution a figure is saved at: 100 dpi, less for a figure wider than the report's column, so
    that a point of text is ``effective_dpi / 72`` pixels on the page (text of 7.2 pt and more is 10 px)."""
    return min(DPI, PAGE_PX / float(fig.get_figwidth()))


def png_bytes(fig: plt.Figure, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes (and closed), at :func:`effective_dpi` unless ``dpi`` is given."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or effective_dpi(fig))
    pyplot().close(fig)
    return buf.getvalue()


def content_key(*parts: Any) -> str:
    """SHA-256 of arrays (their dtype, shape and bytes) and JSON-able values."""
    h = hashlib.sha256(str(FIGURE_VERSION).encode())
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cached_png(key: str, draw: Callable[[], bytes]) -> bytes:
    """The PNG drawn by ``draw()``, kept in the cache folder under ``key``: a figure of the same content is drawn
    once (drawing is most of the time a warm run spends)."""
    if not _CACHE["enabled"]:
        return draw()
    path = cache_dir() / "figures" / f"{key}.png"
    if path.is_file():
        return path.read_bytes()
    png = draw()
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(png))
    except OSError:
        pass  # a figure that cannot be kept is drawn again next time
    return png


SEGMENT_LABELS = ["S_0: neither", "S_I: RoI only (critical, safe)", "S_A: RoA only (neutralized)", "S_IA: RoI and RoA"]


def short(name: str, width: int = 11) -> str:
    """``name`` cut to ``width`` characters (an ellipsis marks the cut), so labels under a thumbnail do not run
    into the next one (ImageNet class names are long)."""
    return name if len(name) <= width else name[: width - 1] + "…"


def text(name: str) -> str:
    """A user string safe for matplotlib ('$' would start mathtext)."""
    return str(name).replace("$", r"\$")


def _image(ax: plt.Axes, img: np.ndarray) -> None:
    """img: (C, H, W) in [0, 1]."""
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1))


def _map(ax: plt.Axes, m: np.ndarray, region: np.ndarray, colour: str) -> Any:
    """A map scaled to its own maximum, with the region's outline."""
    top = float(m.max())
    im = ax.imshow(m / top if top > 0 else m, cmap="inferno", vmin=0, vmax=1)
    ax.contour(region.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
    return im


def gallery_figure(
    arrays: Mapping[str, np.ndarray], classes: Sequence[str], attacks: Sequence[str], path: Path
) -> None:
    """examples.png: per gallery image its input, importance with the RoI, the RoA map with the RoA, the four
    segments, then for every attack the attacked image, it neutralized with the global mask, and with its own
    S_A (the oracle analysis)."""
    idx = np.asarray(arrays["gallery_index"])
    attacks = [a for a in attacks if f"gallery_adv[{a}]" in arrays]
    used = [k for k in sorted(arrays) if k.startswith("gallery_")]
    parts = [np.asarray(arrays[k]) for k in used]
    parts += [np.asarray(arrays[k])[idx] for k in ("importance", "roa_map", "segments", "labels")]
    key = content_key("gallery", list(classes), list(attacks), used, *parts)
    path.write_bytes(cached_png(key, lambda: png_bytes(draw_gallery(arrays, classes, attacks))))


GALLERY_TITLES = ["input", "I, RoI\n(cyan)", "A, RoA\n(green)", "segments"]
GALLERY_ATTACK_TITLES = {"adv": "{}\nattacked", "global": "{}\nglobal mask", "oracle": "{}\noracle S_A"}
FONT = 9  # points: 12.5 px at the gallery's 100 dpi (column titles 8 points: 11 px)


def _gallery_axes(n_rows: int, n_cols: int) -> tuple[plt.Figure, np.ndarray]:
    """A grid of square cells as wide as the report's column, laid out by hand (fast for many axes)."""
    plt = pyplot()
    left, right, top, bottom = 0.75, 0.55, 1.05, 0.4
    cell = min(1.3, (PAGE_PX / DPI - left - right) / n_cols)
    width, height = left + right + n_cols * cell, top + bottom + n_rows * (cell + 0.3)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=0.08,
        hspace=0.3 / cell,
    )
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    return fig, axes


def _gallery_row(
    ax: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    row: int,
    i: int,
    label: int,
    attacks: Sequence[str],
    classes: Sequence[str],
    regions: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Any:
    """One gallery image: its four maps, then the three images of every attack with f's predictions."""
    from matplotlib.colors import ListedColormap

    seg, roi, roa = regions
    _image(ax[0], arrays["gallery_x"][row])
    ax[0].set_ylabel(short(text(classes[label])), fontsize=FONT)
    ax[0].set_xlabel(f"pred {short(text(classes[int(arrays['gallery_pred'][row])]))}", fontsize=FONT)
    heat = _map(ax[1], np.clip(arrays["importance"][i], 0, None), roi[row], "cyan")
    _map(ax[2], arrays["roa_map"][i], roa[row], "lime")
    ax[3].imshow(seg[row], cmap=ListedColormap(SEGMENT_COLOURS), vmin=-0.5, vmax=3.5, interpolation="nearest")
    for k, attack in enumerate(attacks):
        for j, name in enumerate(GALLERY_ATTACK_TITLES):
            a = ax[4 + 3 * k + j]
            _image(a, arrays[f"gallery_{name}[{attack}]"][row])
            pred = int(arrays[f"gallery_pred_{name}[{attack}]"][row])
            colour = "green" if pred == label else "red"
            a.set_xlabel(short(text(classes[pred])), fontsize=FONT, color=colour)
    return heat


def draw_gallery(arrays: Mapping[str, np.ndarray], classes: Sequence[str], attacks: Sequence[str]) -> plt.Figure:
    """The gallery as a Figure (see :func:`gallery_figure`)."""
    from matplotlib.patches import Patch

    idx = np.asarray(arrays["gallery_index"])
    seg = np.asarray(arrays["segments"])[idx]
    regions = (seg, (seg == 1) | (seg == 3), (seg == 2) | (seg == 3))
    labels = np.asarray(arrays["labels"])[idx]
    titles = GALLERY_TITLES + [t.format(text(a)) for a in attacks for t in GALLERY_ATTACK_TITLES.values()]
    fig, axes = _gallery_axes(len(idx), len(titles))
    heat = None
    for row, i in enumerate(idx):
        heat = _gallery_row(axes[row], arrays, row, int(i), int(labels[row]), attacks, classes, regions)
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=FONT - 1)
    legend = [Patch(facecolor=c, edgecolor="k", label=t) for c, t in zip(SEGMENT_COLOURS, SEGMENT_LABELS, strict=True)]
    fig.legend(handles=legend, loc="upper center", ncol=4, fontsize=FONT, frameon=False)
    fig.suptitle(
        "Gallery: one test image per class (row: its class), every attack (below: f's prediction, green if right)",
        fontsize=FONT + 1,
        y=1 - 0.35 / fig.get_figheight(),
    )
    if heat is not None:
        box = axes[0, -1].get_position()
        cax = fig.add_axes((box.x1 + 0.01, 0.3, 0.01, 0.4))
        fig.colorbar(heat, cax=cax).set_label("map / its maximum", fontsize=FONT)
        cax.tick_params(labelsize=FONT)
    return fig


def patches_figure(results: Mapping[str, Any], path: Path) -> None:
    """Accuracy against patch area per attack and defence (o non-adaptive, x adaptive)."""
    plt = pyplot()
    rows = results["table"]
    attacks = {a["label"]: a for a in results["attacks"]}
    names = sorted({label.rsplit("@", 1)[0] for label in attacks})  # one panel per attack entry (and placement)
    defences = list(dict.fromkeys(r["defence"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        for i, d in enumerate(defences):
            for setting, marker in (("non-adaptive", "o"), ("adaptive", "x")):
                pts = sorted(
                    (attacks[r["attack"]]["area"], r["accuracy"])
                    for r in rows
                    if r["defence"] == d
                    and r["setting"] == setting
                    and r["attack"] in attacks
                    and r["attack"].rsplit("@", 1)[0] == name
                )
                if pts:
                    style = "-" if setting == "non-adaptive" else ""
                    ax.plot(
                        *zip(*pts, strict=True),
                        marker=marker,
                        ls=style,
                        color=plt.get_cmap("tab20")(i % 20),
                        label=text(d) if setting == "non-adaptive" else None,
                    )
        ax.set(
            title=f"{text(name)} (o non-adaptive, x adaptive)",
            xlabel="patch area (fraction of image)",
            ylabel="accuracy",
            ylim=(-0.02, 1.02),
        )
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
