"""Writing a run folder atomically: everything goes to a temporary folder that is renamed at the end.

Files: config.json, results.json, metrics.csv, per_image.csv, maps.npz, examples.png, report.html
(the report is made from the other files alone, inside the temporary folder).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from roiroa.errors import InputError
from roiroa.maps.vulnerability import perturbation_map
from roiroa.report.figures import write_examples_figure
from roiroa.report.html import write_report
from roiroa.report.tables import METRIC_COLUMNS, metric_rows, per_image_rows

if TYPE_CHECKING:
    from roiroa.evaluate.runner import RunResult

RUN_FILES = ("config.json", "results.json", "metrics.csv", "per_image.csv", "maps.npz", "examples.png", "report.html")


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def map_arrays(result: RunResult) -> dict[str, np.ndarray]:
    """The arrays of maps.npz (test images in the order of per_image.csv)."""
    test, maps = result.splits.test, result.test_maps
    arrays = {
        "index": test.index,
        "labels": test.labels,
        "importance": maps.importance,
        "saliency": maps.saliency,
        "segments": result.segments.labels(),
        "global_mask": result.mask.mask_,
        "random_mask": result.random_mask,
        "fit_importance_mean": result.mask.importance_,
        "fit_vulnerability_mean": result.mask.vulnerability_,
    }
    arrays |= {f"vulnerability[{k}]": v for k, v in maps.vulnerability.items()}
    arrays |= {f"perturbation[{k}]": perturbation_map(test.images, r.x_adv) for k, r in maps.results.items()}
    arrays |= {f"pred[{k}]": v for k, v in result.predictions.items()}
    return {k: v.detach().cpu().numpy() for k, v in arrays.items()}


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty ``out`` unless ``overwrite``; check the parent is writable."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder: choose another --out.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} is not empty: choose another --out or pass --overwrite.")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create {parent} ({err.strerror}): choose a writable --out.") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write in {parent}: choose a writable --out.")


def write_folder_atomically(out: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary folder beside ``out``, then rename it to ``out``: a reader never
    sees a half-written folder, and a failure (or Ctrl-C) leaves none behind."""
    out = Path(out)
    prepare_out_dir(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_run(result: RunResult, out: Path, overwrite: bool = False) -> Path:
    """Write the run folder ``out`` atomically and return it."""

    def write(tmp: Path) -> None:
        write_json(tmp / "config.json", result.config.to_dict())
        write_json(tmp / "results.json", result.results)
        write_csv(tmp / "metrics.csv", metric_rows(result.results), METRIC_COLUMNS)
        rows = per_image_rows(result)
        write_csv(tmp / "per_image.csv", rows, list(rows[0]) if rows else ["index"])
        np.savez_compressed(tmp / "maps.npz", **map_arrays(result))  # type: ignore[arg-type]
        write_examples_figure(result, tmp / "examples.png")
        write_report(tmp)

    return write_folder_atomically(out, overwrite, write)
