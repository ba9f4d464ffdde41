"""Writing a results folder safely: checked before any work, locked, written whole or not at all.

``claim_folder(out, overwrite)`` runs before the compute: ``out`` must not be a symlink, a file, the current
folder or one of its parents, or hold the data; a non-empty ``out`` is replaced only with ``overwrite`` and
only if roiroa wrote it (its marker file ``.roiroa``); its parent must be writable with room to spare; a lock
file keeps a second process from writing the same folder; the temporary folders of killed runs beside it are
removed. ``write_folder`` then writes every file into a temporary folder that is renamed onto ``out``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roiroa.errors import InputError
from roiroa.report.figures import gallery_figure, patches_figure
from roiroa.report.html import write_report
from roiroa.report.plots import defence_figure
from roiroa.report.tables import METRIC_COLUMNS, metric_rows
from roiroa.results import ResultsFolder

MARKER = ".roiroa"
MIN_FREE_BYTES = 64 * 2**20


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class Claim:
    """A results folder about to be written: where, whether it may replace a folder, and its lock file."""

    out: Path
    overwrite: bool
    lock: Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(parent: Path, name: str) -> None:
    """Remove the temporary folders and locks that killed runs left beside ``parent / name``."""
    for path in parent.glob(f".{name}.*.tmp"):
        pid = path.name.removeprefix(f".{name}.").split(".")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _check_place(out: Path, overwrite: bool, protected: Sequence[Path]) -> None:
    """Every refusal that needs no lock (see the module docstring)."""
    if out.is_symlink():
        raise InputError(f"output folder {out} is a symbolic link: give a real folder as --out.")
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise InputError(f"--out {out} is the current folder or one of its parents: give a new folder for the results.")
    for p in protected:
        p = Path(p).resolve()
        if resolved == p or resolved in p.parents:
            raise InputError(f"--out {out} holds the input data {p}: give another folder for the results.")
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder: choose another --out.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"output folder {out} is not empty: choose another --out or pass --overwrite.")
        if not (out / MARKER).is_file():
            raise InputError(
                f"output folder {out} was not written by roiroa: --overwrite replaces only roiroa's results folders; "
                "choose another --out."
            )


def _writable_ancestor(out: Path) -> Path:
    """The nearest existing folder above ``out``, which must be writable with room for the results."""
    ancestor = out.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {ancestor}: choose a writable --out.")
    free = shutil.disk_usage(ancestor).free
    if free < MIN_FREE_BYTES:
        raise InputError(f"only {free // 2**20} MiB free under {ancestor}: free some space or choose another --out.")
    return ancestor


def claim_folder(out: str | Path, overwrite: bool = False, protected: Sequence[Path] = ()) -> Claim:
    """Check ``out`` and lock it for this process (see the module docstring); nothing is created but the lock
    (beside ``out``, when its parent exists)."""
    out = Path(out)
    _check_place(out, overwrite, protected)
    ancestor = _writable_ancestor(out)
    parent = out.resolve().parent
    lock = parent / f".{out.name}.lock"
    if parent == ancestor:
        _clean_stale(parent, out.name)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock.read_text().strip() if lock.is_file() else ""
            if owner.isdigit() and _pid_alive(int(owner)) and int(owner) != os.getpid():
                raise InputError(
                    f"another roiroa process ({owner}) is writing {out}: wait for it, or choose another --out."
                ) from None
            lock.unlink(missing_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except OSError as err:
            raise InputError(f"cannot write in {parent} ({err.strerror}): choose a writable --out.") from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    return Claim(out, overwrite, lock)


def release(claim: Claim) -> None:
    """Remove the claim's lock (if this process holds it)."""
    if claim.lock.is_file() and claim.lock.read_text().strip() == str(os.getpid()):
        claim.lock.unlink(missing_ok=True)


def _write_atomically(claim: Claim, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary folder beside the output, then rename it onto the output."""
    out = claim.out
    _check_place(out, claim.overwrite, ())
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.resolve().parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps({"written_by": "roiroa"}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror
        raise InputError(
            f"cannot write the results folder {out} ({reason}): free space or choose another --out."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_files(folder: ResultsFolder, tmp: Path, final: Path | None = None) -> None:
    """Every file of a results folder into ``tmp``: config, results, CSV tables, arrays, figures, report; the
    report names the folder by its final path ``final`` (default: the name ``tmp`` will have)."""
    write_json(tmp / "config.json", folder.config)
    write_json(tmp / "results.json", folder.results)
    write_csv(tmp / "metrics.csv", metric_rows(folder.results), METRIC_COLUMNS)
    for name, (columns, rows) in folder.tables.items():
        write_csv(tmp / name, rows, columns)
    if folder.arrays:
        np.savez_compressed(tmp / "maps.npz", **folder.arrays)
    results = folder.results
    if folder.command == "run" and "gallery_index" in folder.arrays:
        attacks = [a["label"] for a in results["attacks"]]
        gallery_figure(folder.arrays, results["dataset"]["classes"], attacks, tmp / "examples.png")
    elif folder.command == "defend":
        defence_figure(results, tmp / "defence.png")
    elif folder.command == "patches":
        patches_figure(results, tmp / "patches.png")
    write_report([tmp], tmp / "report.html", shown_as=[str(final) if final is not None else folder_name(tmp)])


def folder_name(tmp: Path) -> str:
    """The name a temporary folder will have (``.<name>.<pid>.<random>.tmp`` -> ``<name>``)."""
    name = tmp.name
    return name[1:].rsplit(".", 3)[0] if name.startswith(".") and name.endswith(".tmp") else name


def write_folder(folder: ResultsFolder, out: str | Path, overwrite: bool = False, claim: Claim | None = None) -> Path:
    """Write the results folder ``out`` whole (a temporary folder renamed at the end) and return it.

    ``claim`` is the lock taken by :func:`claim_folder` before the work (taken here when not given)."""
    own = claim is None
    claim = claim or claim_folder(out, overwrite)
    try:
        final = claim.out.resolve()
        return _write_atomically(claim, lambda tmp: write_files(folder, tmp, final))
    finally:
        if own:
            release(claim)
