"""On-disk cache of the runner's expensive stages, so that an interrupted run resumes where it stopped.

An entry is keyed by the SHA-256 of its stage name, its inputs (the config slice that matters, the
hashes of the data and model, the keys of the upstream entries) and :data:`STAGE_VERSION` with the
roiroa version. Tensors are stored as safetensors and JSON values as JSON (never pickle), each with
the SHA-256 of its content; every file is written under a temporary name and renamed. An entry
that fails its check on reading (a truncated or damaged file) is deleted and computed again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import roiroa
from roiroa.cache import atomic_write, cache_dir, hash_json, hash_tensors

log = logging.getLogger(__name__)

STAGE_VERSION = 1  # bump when a cached stage's code changes its output, so old entries are not reused


def model_hash(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (tensors in key order): its weights, not its name."""
    state = model.state_dict()
    return hash_tensors(*(state[k] for k in sorted(state)))


class StageCache:
    """A folder of stage results; ``StageCache(None)`` computes everything and stores nothing.

    Attributes:
        root: the folder (None: caching off).
        hits, misses, corrupt: counts of entries read, computed, and found damaged (then recomputed).
    """

    def __init__(self, root: Path | None) -> None:
        self.root = None if root is None else Path(root)
        self.hits = self.misses = self.corrupt = 0

    @classmethod
    def default(cls) -> StageCache:
        """The cache under :func:`roiroa.cache.cache_dir` (``$ROIROA_CACHE/stages``)."""
        return cls(cache_dir() / "stages")

    def key(self, stage: str, inputs: dict[str, Any]) -> str:
        """The entry name of ``stage`` for these inputs (JSON-able), e.g. ``attacks-3f2a...``."""
        version = {"stage_version": STAGE_VERSION, "roiroa": roiroa.__version__}
        return f"{stage}-{hash_json({'stage': stage, 'inputs': inputs, **version})[:24]}"

    def tensors(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The tensors stored under ``key``, else ``compute()`` stored there (CPU tensors, any dtype)."""
        if self.root is None:
            return compute()
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
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
        return out

    def json(self, key: str, compute: Callable[[], Any]) -> Any:
        """The JSON value stored under ``key``, else ``compute()`` stored there."""
        if self.root is None:
            return compute()
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
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return json.loads(text)["value"]  # what a later read returns (tuples become lists)

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
