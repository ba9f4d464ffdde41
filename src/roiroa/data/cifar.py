"""CIFAR-10 (and CIFAR-100) in the "python version" batch format, read without running pickled code.

The batches (``data_batch_1`` ... ``data_batch_5``, ``test_batch``, ``batches.meta``) are pickles.
``pickle.load`` would run whatever a tampered file names, so they are read with an unpickler that
resolves only the numpy names an array needs and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roiroa.data.dataset import ImageDataset, make_dataset
from roiroa.data.readers import images_to_tensor
from roiroa.errors import InputError


def _array_reconstruct() -> Any:
    """numpy's ndarray pickle constructor (``numpy._core`` in numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]
    return _reconstruct


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (a str to bytes, nothing else)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 strings")
    return text.encode("latin1")


# Written by hand (no library reads these batches without pickle.load): the only globals allowed.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _array_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _array_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allowed numpy names."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler for dicts, lists, strings, numbers and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise RefusedGlobal(f"global {module}.{name} is not allowed")


def safe_unpickle(path: Path) -> Any:
    """The object pickled in ``path``, loaded with :class:`ArrayUnpickler` (bytes kept as bytes)."""
    try:
        data = path.read_bytes()
        return ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as err:
        raise InputError(
            f"{path}: refused to unpickle it ({err}); a CIFAR batch holds only arrays and lists: get the original file."
        ) from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
        raise InputError(
            f"{path}: cannot read it as a CIFAR batch ({type(err).__name__}: {err}); truncated or corrupt."
        ) from None


def _get(d: Any, *keys: str) -> Any:
    """The first of ``keys`` in dict ``d`` (keys may be str or bytes), else None."""
    if not isinstance(d, dict):
        return None
    for key in keys:
        for k in (key, key.encode()):
            if k in d:
                return d[k]
    return None


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def read_cifar_batch(path: str | Path, classes: tuple[str, ...] | None = None) -> ImageDataset:
    """One batch file (e.g. ``test_batch``): images (N, 3, 32, 32) in [0, 1], labels, class names.

    ``data`` is (N, 3*H*W) with values 0..255 (uint8, or integers in that range) in planes R, G, B;
    ``labels`` (or ``fine_labels``) N integer class indices. Class names come from ``classes``, else
    from ``batches.meta`` (or ``meta``) beside the file.
    """
    path = Path(path)
    batch = safe_unpickle(path)
    data, labels = _get(batch, "data"), _get(batch, "labels", "fine_labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] % 3 or labels is None:
        raise InputError(f"{path}: not a CIFAR python batch (needs 'data' (N, 3*H*W) uint8 and 'labels').")
    side = int(round((data.shape[1] // 3) ** 0.5))
    if 3 * side * side != data.shape[1] or len(labels) != len(data):
        raise InputError(f"{path}: 'data' has shape {data.shape} and {len(labels)} labels; not a CIFAR batch.")
    if classes is None:
        classes = read_cifar_classes(path.parent)
    images = images_to_tensor(_pixels(data, path).reshape(-1, 3, side, side), str(path))
    return make_dataset(images, torch.from_numpy(_labels(labels, path)), path.name, classes)


def _pixels(data: np.ndarray, path: Path) -> np.ndarray:
    """``data`` as uint8, refusing values that a cast would wrap or cut (floats, negatives, above 255)."""
    if data.dtype == np.uint8:
        return data
    if data.dtype.kind in "iu" and (not data.size or (data.min() >= 0 and data.max() <= 255)):
        return data.astype(np.uint8)
    shown = f"{data.min():g}..{data.max():g}" if data.size and data.dtype.kind in "iuf" else "?"
    raise InputError(
        f"{path}: 'data' has dtype {data.dtype} (values {shown}); a CIFAR batch holds pixels 0..255 as uint8: "
        "get the original file."
    )


def _labels(labels: Any, path: Path) -> np.ndarray:
    """``labels`` (a list or array of N integers) as (N,) int64, refusing non-integers rather than cutting them."""
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError):
        array = np.asarray([], dtype=object)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InputError(
            f"{path}: 'labels' must be a list of integer class indices; got {array.dtype} of shape {array.shape}: "
            "get the original file."
        )
    return array.astype(np.int64)


def read_cifar_classes(folder: Path) -> tuple[str, ...] | None:
    """Class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100) in ``folder``, if present."""
    for name in ("batches.meta", "meta"):
        if (folder / name).is_file():
            names = _get(safe_unpickle(folder / name), "label_names", "fine_label_names")
            if isinstance(names, (list, tuple, np.ndarray)):
                return tuple(_text(n) for n in names)
            if names is not None:
                raise InputError(f"{folder / name}: 'label_names' is not a list of names; get the original file.")
    return None


def is_cifar_folder(folder: Path) -> bool:
    """True for a folder holding CIFAR python batches (``batches.meta`` or ``test_batch``)."""
    return (folder / "batches.meta").is_file() or (folder / "test_batch").is_file()


def read_cifar_folder(folder: str | Path, split: str = "test") -> ImageDataset:
    """The ``test`` batch, or all ``train`` batches (``data_batch_*``), of a ``cifar-10-batches-py`` folder."""
    folder = Path(folder)
    if split not in ("test", "train"):
        raise InputError(f"CIFAR split must be 'test' or 'train'; got {split!r}.")
    files = [folder / "test_batch"] if split == "test" else sorted(folder.glob("data_batch_*"))
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputError(f"{folder}: no CIFAR {split} batch found (test_batch or data_batch_1..5).")
    classes = read_cifar_classes(folder)
    parts = [read_cifar_batch(f, classes) for f in files]
    images = torch.cat([p.pixels() for p in parts])
    labels = torch.cat([p.labels for p in parts])
    return make_dataset(images, labels, f"{folder.name} ({split})", classes)
