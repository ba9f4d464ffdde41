"""Writing the output of ``roiroa defend``: defence.csv, defence.json, defence.png (and config.json), atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from roiroa.report.run_folder import write_csv, write_folder_atomically, write_json  # noqa: E402

if TYPE_CHECKING:
    from roiroa.evaluate.defend import DefendResult

DEFENCE_COLUMNS = ("defence", "kind", "settings", "area", "setting", "attack", "accuracy", "n_images")
DEFENCE_FILES = ("defence.csv", "defence.json", "defence.png", "config.json")


def write_defence_plot(summary: dict[str, Any], path: Path) -> None:
    """Left: the sweep (clean vs adaptive robust accuracy) with its Pareto front and the baselines;
    right: adaptive robust accuracy against eps (the sanity check)."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5))
    colors = {
        "global": "tab:blue",
        "per_class": "tab:orange",
        "per_input": "tab:green",
        "per_input[shift]": "tab:olive",
    }
    for scope, color in colors.items():
        pts = [r for r in summary["sweep"] if r["scope"] == scope]
        if pts:
            ax.scatter(
                [r["clean_accuracy"] for r in pts],
                [r["adaptive_accuracy"] for r in pts],
                c=color,
                label=f"{scope} (sweep)",
                alpha=0.7,
                s=25,
            )
    front = sorted((r for r in summary["sweep"] if r["pareto"]), key=lambda r: r["clean_accuracy"])
    if front:
        ax.plot(
            [r["clean_accuracy"] for r in front],
            [r["adaptive_accuracy"] for r in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
    by: dict[str, dict[str, Any]] = {}
    for r in summary["table"]:
        by.setdefault(r["defence"], {"kind": r["kind"]})[r["setting"]] = r["accuracy"]
    for name, v in by.items():
        if v["kind"] in ("none", "baseline") and "adaptive" in v:
            ax.scatter([v["clean"]], [v["adaptive"]], marker="*" if v["kind"] == "none" else "s", s=80, c="k")
            ax.annotate(name, (v["clean"], v["adaptive"]), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("robust accuracy, adaptive PGD L-inf")
    ax.set_title(f"mask sweep and baselines ({summary['n_test']} test images)")
    ax.legend(fontsize=7)
    for r in summary["sanity"]:
        bx.plot(r["eps"], r["accuracy"], marker="o", ms=3, label=r["defence"])
    bx.set_xscale("log")
    bx.set_xlabel("eps (L-inf)")
    bx.set_ylabel("robust accuracy, adaptive PGD")
    bx.set_title(f"sanity: accuracy falls with eps ({summary['n_sanity']} images)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_defence_files(folder: Path, summary: dict[str, Any]) -> None:
    """defence.csv (the table), defence.json (everything) and defence.png in an existing folder."""
    write_csv(folder / "defence.csv", summary["table"], DEFENCE_COLUMNS)
    write_json(folder / "defence.json", summary)
    write_defence_plot(summary, folder / "defence.png")


def write_defence(result: DefendResult, out: Path, overwrite: bool = False) -> Path:
    """Write the ``roiroa defend`` folder ``out`` atomically (a temporary folder renamed at the end)."""

    def write(tmp: Path) -> None:
        write_json(tmp / "config.json", result.config.to_dict())
        write_defence_files(tmp, result.summary)

    return write_folder_atomically(out, overwrite, write)
