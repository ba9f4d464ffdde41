"""Looking at results in a notebook: maps of your own model from plain tensors (:func:`show_maps`), and the
HTML summary a command's result shows in Jupyter (:func:`summary_html`, its ``_repr_html_``).

>>> fig = roiroa.show_maps(x, importance, vulnerability, segments.labels(), labels=y)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from roiroa.errors import InputError
from roiroa.report.figures import SEGMENT_COLOURS, SEGMENT_LABELS, _image, pyplot, text
from roiroa.report.markup import e, pct
from roiroa.report.summary import folder_verdict

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

MAX_IMAGES = 32


def as_array(value: Any, name: str) -> np.ndarray:
    """A tensor (any device), array or nested list as a float numpy array."""
    if hasattr(value, "labels") and callable(value.labels):  # a roiroa Segments
        value = value.labels()
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a tensor or array of numbers; got {type(value).__name__}.") from None


def _checked(
    x: Any, importance: Any, vulnerability: Any, segments: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The four inputs as arrays, their shapes checked against x: (N, C, H, W)."""
    xs = as_array(x, "x")
    if xs.ndim != 4 or xs.shape[1] not in (1, 3):
        raise InputError(f"x must be images (N, C, H, W) with C = 1 or 3; got shape {tuple(xs.shape)}.")
    n, _, h, w = xs.shape
    if not 0 < n <= MAX_IMAGES:
        raise InputError(f"show_maps draws 1 to {MAX_IMAGES} images; got {n}: pass a slice such as x[:8].")
    maps: list[np.ndarray | None] = []
    for name, value in (("importance", importance), ("vulnerability", vulnerability), ("segments", segments)):
        if value is None:
            maps.append(None)
            continue
        m = as_array(value, name)
        m = m[:, 0] if m.ndim == 4 and m.shape[1] == 1 else m
        if m.shape != (n, h, w):
            raise InputError(f"{name} must have shape (N, H, W) = {(n, h, w)} like x; got {tuple(m.shape)}.")
        maps.append(m)
    if maps[0] is None or maps[1] is None:
        raise InputError("show_maps needs importance and vulnerability maps (N, H, W).")
    return xs, maps[0], maps[1], maps[2]


def _row_label(labels: Sequence[Any] | Any | None, i: int) -> str:
    if labels is None:
        return f"image {i}"
    values = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    return f"label {text(values[i])}"


def _heat(ax: plt.Axes, m: np.ndarray) -> Any:
    """A map scaled to its own largest magnitude (signed maps on a diverging scale)."""
    top = float(np.abs(m).max())
    scaled = m / top if top > 0 else m
    if m.min() < 0:
        return ax.imshow(scaled, cmap="RdBu_r", vmin=-1, vmax=1)
    return ax.imshow(scaled, cmap="inferno", vmin=0, vmax=1)


def show_maps(
    x: Any, importance: Any, vulnerability: Any, segments: Any = None, labels: Sequence[Any] | Any | None = None
) -> plt.Figure:
    """A figure of images with their importance and vulnerability maps (and segments), one row per image.

    Args:
        x: images (N, C, H, W) in [0, 1], C = 1 or 3, N <= 32 (a torch tensor on any device, or an array).
        importance: importance I (N, H, W) (or (N, 1, H, W)): where the model looks; each map is shown scaled
            to its own largest magnitude.
        vulnerability: the RoA map A (N, H, W): where attacks act; scaled the same way.
        segments: optional segment labels (N, H, W) with values 0 = S_0, 1 = S_I, 2 = S_A, 3 = S_IA (as
            ``Segments.labels()``), or a :class:`roiroa.Segments`.
        labels: optional (N,) class ids or names shown beside each row.

    Returns:
        A matplotlib Figure (shown inline by Jupyter; ``fig.savefig(path)`` writes it).

    Raises:
        InputError: a shape that does not match x, or more than 32 images.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    xs, imp, vul, seg = _checked(x, importance, vulnerability, segments)
    titles = ["input", "importance I", "vulnerability A"] + (["segments"] if seg is not None else [])
    n, cols = len(xs), len(titles)
    fig, axes = pyplot().subplots(n, cols, figsize=(2.2 * cols + 0.6, 2.2 * n + 0.8), squeeze=False)
    for i in range(n):
        _image(axes[i, 0], np.clip(xs[i], 0, 1))
        axes[i, 0].set_ylabel(_row_label(labels, i), fontsize=10)
        _heat(axes[i, 1], imp[i])
        _heat(axes[i, 2], vul[i])
        if seg is not None:
            cmap = ListedColormap(SEGMENT_COLOURS)
            axes[i, 3].imshow(seg[i], cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=11)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    if seg is not None:
        pairs = zip(SEGMENT_COLOURS, SEGMENT_LABELS, strict=True)
        legend = [Patch(facecolor=c, edgecolor="k", label=t) for c, t in pairs]
        fig.legend(handles=legend, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle("Where the model looks (I) and where attacks act (A)", fontsize=12)
    fig.tight_layout(rect=(0, 0.08 if seg is not None else 0, 1, 0.97))
    return fig


SUMMARY_CSS = """
.roiroa-summary table { border-collapse: collapse; font-size: .9em; }
.roiroa-summary th, .roiroa-summary td { border: 1px solid #ddd; padding: .2em .5em; text-align: right;
  vertical-align: top; white-space: nowrap; }
.roiroa-summary td.l, .roiroa-summary th.l { text-align: left; }
.roiroa-summary .better { color: #17702a; font-weight: 600; } .roiroa-summary .worse { color: #b0261d;
  font-weight: 600; } .roiroa-summary .indistinguishable, .roiroa-summary .small { color: #666; }
.roiroa-summary .wide { overflow-x: auto; }
"""


def summary_html(results: Mapping[str, Any]) -> str:
    """A command's results (results.json as a dict) as an HTML fragment for a notebook: the model, the data,
    the attacks on the undefended model, and the verdict on every defence (escaped; no script)."""
    m, d = results.get("model", {}), results.get("dataset", {})
    head = (
        f"<p><b>roiroa {e(results.get('command', ''))}</b>: {e(d.get('name', '?'))}, "
        f"{e(d.get('n_test', '?'))} test images; model {e(m.get('name', '?'))}, clean accuracy "
        f"{pct(m.get('test_accuracy'))}</p>"
    )
    attacks = ", ".join(
        f"{e(a['label'])} {pct(a['robust_accuracy'])}" for a in results.get("attacks", []) if "robust_accuracy" in a
    )
    lines = [head] + ([f"<p>Robust accuracy of the undefended model: {attacks}</p>"] if attacks else [])
    verdict = folder_verdict(results, None)
    lines.append(verdict or "<p>No defence was evaluated.</p>")
    return f'<div class="roiroa-summary"><style>{SUMMARY_CSS}</style>{"".join(lines)}</div>'
