"""Figures of a run (matplotlib, Agg backend): the examples grid."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from roiroa.defence.neutralizer import neutralize  # noqa: E402
from roiroa.models.predict import predict  # noqa: E402
from roiroa.regions.segments import Segments  # noqa: E402
from roiroa.regions.thresholds import top_q_mask  # noqa: E402

if TYPE_CHECKING:
    from roiroa.evaluate.runner import RunResult

SEGMENT_COLOURS = ["#ffffff", "#1f77b4", "#d62728", "#9467bd"]  # S_0, S_I, S_A, S_IA
SEGMENT_LABELS = ["S_0: neither", "S_I: RoI only (critical, safe)", "S_A: RoA only (neutralized)", "S_IA: RoI and RoA"]


def example_indices(labels: torch.Tensor, n: int) -> list[int]:
    """Up to n test positions: the first image of each class in turn, round robin over classes."""
    by_class = [(labels == c).nonzero().flatten().tolist() for c in sorted(set(labels.tolist()))]
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, len(labels)):
        for members in by_class:
            if depth < len(members) and len(picked) < n:
                picked.append(members[depth])
        depth += 1
    return picked


def strongest_attack(result: RunResult) -> str:
    """The label of the attack with the lowest robust accuracy on f (the first on ties)."""
    attacks = result.results["attacks"]
    return min(attacks, key=lambda label: attacks[label]["robust_accuracy"])


def _show_image(ax: plt.Axes, img: torch.Tensor) -> None:
    """img: (C, H, W) in [0, 1]."""
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())


def _show_map(ax: plt.Axes, m: torch.Tensor, region: torch.Tensor, colour: str) -> matplotlib.image.AxesImage:
    """A map scaled to its own maximum, with the region's outline."""
    top = float(m.max())
    im = ax.imshow((m / top if top > 0 else m).numpy(), cmap="inferno", vmin=0, vmax=1)
    ax.contour(region.float().numpy(), levels=[0.5], colors=colour, linewidths=1.0)
    return im


def write_examples_figure(result: RunResult, path: Path) -> None:
    """examples.png: per test image the input, RoI, RoA, four segments, attacked, neutralized, oracle."""
    test, maps, seg = result.splits.test, result.test_maps, result.segments
    names = [n.replace("$", r"\$") for n in test.classes]  # matplotlib reads $...$ as maths
    idx = example_indices(test.labels, result.config.examples)
    if not idx:
        return
    label = strongest_attack(result)
    x, y = test.images[idx], test.labels[idx]
    x_adv = maps.results[label].x_adv[idx]
    roi, seg_labels = seg.roi[idx], seg.labels()[idx]
    own_s_a = Segments(roi, top_q_mask(maps.vulnerability[label][idx], result.config.regions.q_roa)).s_a
    x_global = neutralize(x_adv, result.mask.mask_, result.fill)
    x_oracle = neutralize(x_adv, own_s_a, result.fill)
    preds = {
        k: predict(result.model, v) for k, v in {"x": x, "adv": x_adv, "global": x_global, "oracle": x_oracle}.items()
    }
    titles = [
        "input",
        "importance I\n(RoI outlined)",
        "vulnerability A\n(RoA outlined)",
        "segments",
        f"attacked ({label})",
        "neutralized,\nglobal mask",
        "neutralized, own S_A\n(oracle analysis)",
    ]
    fig, axes = plt.subplots(len(idx), len(titles), figsize=(2.0 * len(titles), 2.1 * len(idx) + 1.0), squeeze=False)
    heat = None
    for row, i in enumerate(idx):
        ax = axes[row]
        _show_image(ax[0], x[row])
        ax[0].set_ylabel(f"true {names[int(y[row])]}", fontsize=9)
        ax[0].set_xlabel(f"pred {names[int(preds['x'][row])]}", fontsize=9)
        heat = _show_map(ax[1], maps.importance[i].clamp(min=0), roi[row], "cyan")
        _show_map(ax[2], maps.vulnerability["all"][i], seg.roa[i], "lime")
        ax[3].imshow(
            seg_labels[row].numpy(), cmap=ListedColormap(SEGMENT_COLOURS), vmin=-0.5, vmax=3.5, interpolation="nearest"
        )
        for col, key in ((4, "adv"), (5, "global"), (6, "oracle")):
            _show_image(ax[col], {"adv": x_adv, "global": x_global, "oracle": x_oracle}[key][row])
            ok = int(preds[key][row]) == int(y[row])
            ax[col].set_xlabel(f"pred {names[int(preds[key][row])]}", fontsize=9, color="green" if ok else "red")
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=9)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    legend = [Patch(facecolor=c, edgecolor="k", label=t) for c, t in zip(SEGMENT_COLOURS, SEGMENT_LABELS, strict=True)]
    fig.legend(handles=legend, loc="upper center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    if heat is not None:
        cax = fig.add_axes((0.94, 0.15, 0.012, 0.7))
        fig.colorbar(heat, cax=cax).set_label("map / its maximum (per image)", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
