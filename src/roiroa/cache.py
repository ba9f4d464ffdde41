"""The on-disk cache of expensive results, and atomic writes.

The cache folder is ``$ROIROA_CACHE`` if set, else ``~/.cache/roiroa`` (``$XDG_CACHE_HOME/roiroa``
where that is set). Every file is written under a temporary name in the same folder and renamed,
so a reader never sees a half-written entry.

:class:`StageCache` holds the results of the experiment's tasks (an attack, a map, a grid cell on one chunk
of images), so an interrupted run resumes where it stopped. An entry is keyed by the SHA-256 of its stage
name, its inputs (the config slice that matters, the hashes of the data and model, the keys of upstream
entries) and :data:`STAGE_VERSION` with the roiroa version. Tensors are stored as safetensors and JSON values
as JSON (never pickle), each with the SHA-256 of its content; an entry that fails its check on reading (a
truncated or damaged file) is deleted and computed again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from roiroa.errors import InputError
from roiroa.files import atomic_write, cache_dir, hash_json
from roiroa.version import __version__

log = logging.getLogger(__name__)


def hash_tensors(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes, in hex."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def hash_blocks(
    shape: tuple[int, ...], dtype: torch.dtype, blocks: Iterable[torch.Tensor], *tensors: torch.Tensor
) -> str:
    """``hash_tensors(x, *tensors)`` of a tensor x of ``shape`` and ``dtype`` given as ``blocks``, its consecutive
    pieces along the first axis, without ever holding x whole."""
    h = hashlib.sha256()
    h.update(f"{dtype}{tuple(shape)}".encode())
    for block in blocks:
        h.update(block.detach().cpu().contiguous().numpy().tobytes())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


STAGE_VERSION = 2  # bump when a cached stage's code changes its output, so old entries are not reused


def model_hash(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (tensors in key order): its weights, not its name."""
    state = model.state_dict()
    return hash_tensors(*(state[k] for k in sorted(state)))


class StageCache:
    """A folder of stage results; ``StageCache(None)`` stores nothing on disk (a result asked for twice in one
    run is computed once and kept in memory).

    Attributes:
        root: the folder (None: caching off).
        hits, misses, corrupt: counts of entries read, computed, and found damaged (then recomputed).
    """

    def __init__(self, root: Path | None) -> None:
        self.root = None if root is None else Path(root)
        self.hits = self.misses = self.corrupt = 0
        self._memory: dict[str, Any] = {}  # without a folder, results live for this object's life only

    @classmethod
    def default(cls) -> StageCache:
        """The cache under :func:`roiroa.cache.cache_dir` (``$ROIROA_CACHE/stages``)."""
        return cls(cache_dir() / "stages")

    def key(self, stage: str, inputs: dict[str, Any]) -> str:
        """The entry name of ``stage`` for these inputs (JSON-able), e.g. ``attack-3f2a...``."""
        version = {"stage_version": STAGE_VERSION, "roiroa": __version__}
        return f"{stage}-{hash_json({'stage': stage, 'inputs': inputs, **version})[:24]}"

    def tensors(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The tensors stored under ``key``, else ``compute()`` stored there (CPU tensors, any dtype)."""
        if self.root is None:
            if key not in self._memory:
                self._memory[key] = compute()
            return self._memory[key]  # type: ignore[no-any-return]
        path = self.root / f"{key}.safetensors"
        if path.exists():
            loaded = _read_tensors(path)
            if loaded is not None:
                self.hits += 1
                return loaded
            self._discard(path)
        self.misses += 1
        out = compute()
        state = {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}
        meta = {"sha256": _tensors_hash(state), "key": key}
        self._store(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
        return out

    def stored(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key`` if present and intact (a hit), else None (a damaged entry is deleted)."""
        if self.root is None:
            return self._memory.get(key)  # type: ignore[no-any-return]
        path = self.root / f"{key}.safetensors"
        if not path.exists():
            return None
        loaded = _read_tensors(path)
        if loaded is None:
            self._discard(path)
            return None
        self.hits += 1
        return loaded

    def json(self, key: str, compute: Callable[[], Any]) -> Any:
        """The JSON value stored under ``key``, else ``compute()`` stored there."""
        if self.root is None:
            if key not in self._memory:
                self._memory[key] = json.loads(json.dumps(compute()))
            return self._memory[key]
        path = self.root / f"{key}.json"
        if path.exists():
            found, value = _read_json(path)
            if found:
                self.hits += 1
                return value
            self._discard(path)
        self.misses += 1
        value = compute()
        text = json.dumps({"sha256": hash_json(value), "key": key, "value": value})
        self._store(path, lambda tmp: tmp.write_text(text))
        return json.loads(text)["value"]  # what a later read returns (tuples become lists)

    def _store(self, path: Path, write: Callable[[Path], Any]) -> None:
        """Write one entry atomically; a full disk or a folder that refuses writing is one line of InputError."""
        try:
            atomic_write(path, write)
        except OSError as err:
            reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or type(err).__name__
            raise InputError(
                f"cannot write the cache entry {path.name} in {path.parent} ({reason}): free space, set ROIROA_CACHE "
                "to a writable folder, or run with --no-cache."
            ) from None

    def _discard(self, path: Path) -> None:
        self.corrupt += 1
        log.warning("  cache entry %s is damaged; computing it again", path.name)
        path.unlink(missing_ok=True)


def _tensors_hash(state: dict[str, torch.Tensor]) -> str:
    return hash_json({k: hash_tensors(state[k]) for k in sorted(state)})


def _read_tensors(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a safetensors entry if its SHA-256 matches, else None."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            expected = (f.metadata() or {}).get("sha256")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (SafetensorError, RuntimeError, OSError, ValueError):
        return None
    return state if expected == _tensors_hash(state) else None


def _read_json(path: Path) -> tuple[bool, Any]:
    """(True, value) if the JSON entry is intact, else (False, None)."""
    try:
        entry = json.loads(path.read_text())
        value = entry["value"]
        ok = entry["sha256"] == hash_json(value)
    except (OSError, ValueError, KeyError, TypeError):
        return False, None
    return ok, value if ok else None
