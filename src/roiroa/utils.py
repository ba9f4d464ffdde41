"""Small helpers every stage uses: batching, devices, progress bars, seeds."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from roiroa.errors import InputError

T = TypeVar("T")

_PROGRESS = {"enabled": True}


def set_progress(enabled: bool) -> None:
    """Turn every roiroa progress bar on or off (they are also off when stderr is not a terminal)."""
    _PROGRESS["enabled"] = enabled


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr, shown only on a terminal and when enabled."""
    disable = None if _PROGRESS["enabled"] and not os.environ.get("TQDM_DISABLE") else True
    yield from tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive int; got {batch_size}.")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA where available, else CPU; 'cpu', 'cuda' and 'cuda:N' as given (that GPU must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = name.partition(":")[2]
    if not (name == "cuda" or (name.startswith("cuda:") and index.isdigit())):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}.")
    if not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but PyTorch sees no CUDA GPU: use --device cpu.")
    if index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InputError(f"device {name!r}: PyTorch sees {count} GPU(s), cuda:0..cuda:{count - 1}; choose one of them.")
    return torch.device(name)


def stage_seed(seed: int, stage: str) -> int:
    """A seed for one named stage, derived from the run's seed, so every stage is reproducible on its own."""
    digest = hashlib.sha256(f"{seed}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_all(seed: int) -> None:
    """Seed torch's global generators (CPU and CUDA)."""
    torch.manual_seed(seed)
