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

FIGURE_VERSION = 1  # bump when a figure's drawing changes, so cached images are drawn again
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


def png_bytes(fig: plt.Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
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


def strongest_attack(results: Mapping[str, Any]) -> str:
    """The label of the attack with the lowest robust accuracy on f (the first on ties)."""
    return str(min(results["attacks"], key=lambda a: a["robust_accuracy"])["label"])


def gallery_figure(arrays: Mapping[str, np.ndarray], classes: Sequence[str], attack: str, path: Path) -> None:
    """Per gallery image: input, importance with the RoI, the RoA map with the RoA, the four segments, the image
    attacked by ``attack``, neutralized with the global mask, and with its own S_A (the oracle analysis)."""
    idx = np.asarray(arrays["gallery_index"])
    used = [k for k in sorted(arrays) if k.startswith("gallery_") and (k.endswith(f"[{attack}]") or "[" not in k)]
    parts = [arrays[k][idx] if k in ("importance", "roa_map", "segments", "labels") else arrays[k] for k in used]
    parts += [np.asarray(arrays[k])[idx] for k in ("importance", "roa_map", "segments", "labels")]
    key = content_key("gallery", list(classes), attack, used, *parts)
    path.write_bytes(cached_png(key, lambda: _draw_gallery(arrays, classes, attack)))


def _draw_gallery(arrays: Mapping[str, np.ndarray], classes: Sequence[str], attack: str) -> bytes:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    idx = np.asarray(arrays["gallery_index"])
    seg = np.asarray(arrays["segments"])[idx]
    roi, roa = (seg == 1) | (seg == 3), (seg == 2) | (seg == 3)
    labels = np.asarray(arrays["labels"])[idx]
    titles = [
        "input",
        "importance I\n(RoI outlined)",
        "RoA map A\n(RoA outlined)",
        "segments",
        f"attacked ({text(attack)})",
        "neutralized,\nglobal mask",
        "neutralized, own S_A\n(oracle analysis)",
    ]
    fig, axes = plt.subplots(len(idx), len(titles), figsize=(2.0 * len(titles), 2.1 * len(idx) + 1.0), squeeze=False)
    heat = None
    for row, i in enumerate(idx):
        ax = axes[row]
        _image(ax[0], arrays["gallery_x"][row])
        ax[0].set_ylabel(f"true {text(classes[int(labels[row])])}", fontsize=9)
        ax[0].set_xlabel(f"pred {text(classes[int(arrays['gallery_pred'][row])])}", fontsize=9)
        heat = _map(ax[1], np.clip(arrays["importance"][i], 0, None), roi[row], "cyan")
        _map(ax[2], arrays["roa_map"][i], roa[row], "lime")
        ax[3].imshow(seg[row], cmap=ListedColormap(SEGMENT_COLOURS), vmin=-0.5, vmax=3.5, interpolation="nearest")
        for col, key in ((4, "adv"), (5, "global"), (6, "oracle")):
            _image(ax[col], arrays[f"gallery_{key}[{attack}]"][row])
            pred = int(arrays[f"gallery_pred_{key}[{attack}]"][row])
            ax[col].set_xlabel(
                f"pred {text(classes[pred])}", fontsize=9, color="green" if pred == int(labels[row]) else "red"
            )
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=9)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    legend = [Patch(facecolor=c, edgecolor="k", label=t) for c, t in zip(SEGMENT_COLOURS, SEGMENT_LABELS, strict=True)]
    fig.legend(handles=legend, loc="upper center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    if heat is not None:
        fig.colorbar(heat, cax=fig.add_axes((0.94, 0.15, 0.012, 0.7))).set_label(
            "map / its maximum (per image)", fontsize=8
        )
    return png_bytes(fig, dpi=90)


def defence_figure(results: Mapping[str, Any], path: Path) -> None:
    """Left: the sweep (clean against adaptive robust accuracy) with its Pareto front and the baselines; right:
    adaptive robust accuracy against eps (the sanity check)."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5))
    sweep = results.get("sweep", [])
    for scope in dict.fromkeys(r["scope"] for r in sweep):
        pts = [r for r in sweep if r["scope"] == scope]
        ax.scatter(
            [r["clean_accuracy"] for r in pts],
            [r["adaptive_accuracy"] for r in pts],
            label=f"{text(scope)} (sweep)",
            alpha=0.7,
            s=25,
        )
    front = sorted((r for r in sweep if r["pareto"]), key=lambda r: r["clean_accuracy"])
    if front:
        ax.plot(
            [r["clean_accuracy"] for r in front],
            [r["adaptive_accuracy"] for r in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
    rows = {
        (r["defence"], r["setting"]): r
        for r in results["table"]
        if r["attack"] in ("none", "all") or r["setting"] == "adaptive"
    }
    for (name, setting), r in rows.items():
        if setting == "clean" and r["kind"] in ("none", "baseline") and (name, "adaptive") in rows:
            ax.scatter(
                [r["accuracy"]],
                [rows[(name, "adaptive")]["accuracy"]],
                marker="*" if r["kind"] == "none" else "s",
                s=80,
                c="k",
            )
            ax.annotate(
                text(name),
                (r["accuracy"], rows[(name, "adaptive")]["accuracy"]),
                fontsize=8,
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.set(
        xlabel="clean accuracy",
        ylabel="robust accuracy, adaptive attack",
        title=f"mask sweep and baselines ({results['n_test']} test images)",
    )
    ax.legend(fontsize=7)
    for r in results.get("sanity", []):
        bx.plot(r["eps"], r["accuracy"], marker="o", ms=3, label=text(r["defence"]))
    bx.set_xscale("log")
    bx.set(
        xlabel="eps (L-inf)",
        ylabel="robust accuracy, adaptive attack",
        title=f"sanity: accuracy falls with eps ({results.get('n_sanity', 0)} images)",
    )
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def patches_figure(results: Mapping[str, Any], path: Path) -> None:
    """Accuracy against patch area per attack and defence (o non-adaptive, x adaptive)."""
    plt = pyplot()
    rows = results["table"]
    attacks = {a["label"]: a for a in results["attacks"]}
    names = sorted({a["params"].get("attack", label.split("@")[0]) for label, a in attacks.items()})
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
                    and attacks[r["attack"]]["params"].get("attack") == name
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
