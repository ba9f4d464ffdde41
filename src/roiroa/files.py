"""Files without torch: the cache folder, atomic writes and content hashes (the report uses these too)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roiroa.errors import InputError


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    if os.environ.get("ROIROA_CACHE"):
        root = Path(os.environ["ROIROA_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roiroa"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"cannot create the cache folder {root} ({err}): set ROIROA_CACHE to a writable folder."
        ) from None
    return root


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; nothing is left behind on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hash_json(obj: Any) -> str:
    """SHA-256 of a JSON-able object with sorted keys, in hex."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
