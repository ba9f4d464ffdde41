"""Readers for the bundled data and users' files: .npz, IDX (gzip or not), folders of images.

Each returns an :class:`ImageDataset` with images (N, C, H, W) float32 in [0, 1].

Two limits, read from the environment at each read, refuse data before it is decoded or allocated:
``ROIROA_MAX_IMAGE_PIXELS`` (pixels of one image file; default 89,478,485, Pillow's) and
``ROIROA_MAX_DATA_BYTES`` (bytes of the float32 image tensor; default 16 GiB).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roiroa.data.dataset import ImageDataset, make_dataset
from roiroa.errors import InputError

BUNDLED = {"mnist": "real MNIST, 5,000 images (500 per class) shipped inside the package"}
BUNDLED_DIR = Path(__file__).parent / "bundled"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
PIXELS_VARIABLE = "ROIROA_MAX_IMAGE_PIXELS"
BYTES_VARIABLE = "ROIROA_MAX_DATA_BYTES"
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS
DEFAULT_MAX_DATA_BYTES = 16 * 2**30
ROUNDING_SLACK = 1e-3  # float pixels at most this far outside [0, 1] are rounding, and clipped
SIXTEEN_BIT_FORMATS = ("PNG", "PPM")  # formats of at most 16 bits per sample that Pillow may open as mode "I"
log = logging.getLogger(__name__)


def load_bundled_mnist() -> ImageDataset:
    """The 5,000 real MNIST digits shipped inside the package (500 per class, sorted by label).

    Returns images (5000, 1, 28, 28) float32 in [0, 1] and labels (5000,) int64 in 0..9.
    """
    x, y = bundled_mnist_arrays()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    return make_dataset(images, torch.from_numpy(y), "mnist (bundled)", tuple(str(i) for i in range(10)))


def bundled_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled MNIST subset as (5000, 784) uint8 in 0..255 and (5000,) int64 in 0..9.

    Read from ``roiroa/data/bundled/mnist5000.npz`` (package data; source and licence in SOURCE.md beside it).
    """
    path = BUNDLED_DIR / "mnist5000.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["images"], f["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        problem = f"the bundled MNIST file {path} is missing or damaged ({one_line(err)})"
        raise InputError(f"{problem}: reinstall roiroa.") from err
    return x.reshape(len(x), -1), y


def env_limit(variable: str, default: int) -> int:
    """The positive whole number in environment variable ``variable`` (``_`` and ``,`` allowed), else ``default``."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"{variable} must be a positive whole number; got {text!r}: set it to e.g. {default}.")
    return value


def check_data_bytes(shape: tuple[int, ...], source: str) -> None:
    """Raise if a float32 tensor of ``shape`` would take more than ``ROIROA_MAX_DATA_BYTES`` bytes."""
    limit = env_limit(BYTES_VARIABLE, DEFAULT_MAX_DATA_BYTES)
    size = 4 * math.prod(shape)
    if size > limit:
        raise InputError(
            f"{source}: the images {tuple(shape)} would take {size:,} bytes as float32, above the limit of "
            f"{limit:,} bytes ({BYTES_VARIABLE}): use fewer or smaller images, "
            f"or set {BYTES_VARIABLE} higher if the memory is there."
        )


def unit_range(values: np.ndarray, source: str) -> np.ndarray:
    """Float32 pixel values checked to lie in [0, 1]; values at most ``ROUNDING_SLACK`` outside are clipped.

    Raises:
        InputError: NaN or infinite values, or values further outside [0, 1].
    """
    if not np.isfinite(values).all():
        raise InputError(f"{source}: images contain NaN or infinite values: clean the images (or drop those) first.")
    if not values.size:
        return values
    lo, hi = float(values.min()), float(values.max())
    if hi > 1.0 + ROUNDING_SLACK:
        raise InputError(
            f"{source}: image values reach {hi:.6g}, but float images must be in [0, 1]: divide by 255 if they are "
            "0..255 values (or store them as uint8), else rescale them to [0, 1]."
        )
    if lo < -ROUNDING_SLACK:
        raise InputError(
            f"{source}: image values go down to {lo:.6g}, outside [0, 1]: scale the images to [0, 1] "
            "(undo any mean/std normalization)."
        )
    return np.clip(values, 0.0, 1.0) if lo < 0.0 or hi > 1.0 else values


def to_nchw(array: np.ndarray, source: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} as a (N, C, H, W) view."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        return array.transpose(0, 3, 1, 2)
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return array
    raise InputError(
        f"{source}: images have shape {array.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3."
    )


def images_to_tensor(array: np.ndarray, source: str) -> torch.Tensor:
    """Turn image arrays into (N, C, H, W) float32 in [0, 1].

    Accepts (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}. uint8 is divided by 255; bool
    and other integer types must hold 0 and 1 only (their range is not known); floats must be in
    [0, 1], where values at most ``ROUNDING_SLACK`` (1e-3) outside are rounding and clipped.

    Raises:
        InputError: another shape or dtype, NaN or infinite values, values outside [0, 1], or a tensor
            above ``ROIROA_MAX_DATA_BYTES``.
    """
    array = to_nchw(array, source)
    check_data_bytes(array.shape, source)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{source}: images have dtype {array.dtype}; use uint8 (0..255) or float in [0, 1].")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if array.dtype == np.uint8:
        out /= np.float32(255.0)
    elif array.dtype.kind in "iu" and out.size and (out.max() > 1.0 or out.min() < 0.0):
        raise InputError(
            f"{source}: images of dtype {array.dtype} hold values {out.min():g}..{out.max():g}, but only uint8 "
            "is scaled (by 255): store 8-bit values as uint8, or give floats in [0, 1] (e.g. 16-bit values / 65535)."
        )
    elif array.dtype.kind == "f":
        out = unit_range(out, source)
    return torch.from_numpy(out)


def npz_class_names(names: np.ndarray, path: Path) -> tuple[str, ...]:
    """The 1-D ``classes`` array of a .npz as strings (bytes decoded as UTF-8)."""
    if names.ndim != 1:
        raise InputError(f"{path}: 'classes' must be a 1-D array of class names; got shape {names.shape}.")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist())


def read_npz(path: str | Path) -> ImageDataset:
    """Read ``images`` and ``labels`` (and optional ``classes``) from a .npz file. Never unpickles.

    ``images`` as in :func:`images_to_tensor`; ``labels`` (N,) integer class indices 0..K-1 (not bool);
    ``classes`` a 1-D array of K names, all different (str or bytes).
    """
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # np.load would take it for a pickle
        raise InputError(f"{path}: cannot read it as .npz (not a zip archive); check the file is complete.")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"images", "labels"} <= keys:
                raise InputError(f"{path}: a .npz dataset needs arrays 'images' and 'labels'; it has {sorted(keys)}.")
            images, labels = f["images"], f["labels"]
            classes = npz_class_names(f["classes"], path) if "classes" in keys else None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"{path}: cannot read it as .npz ({err}); check the file is complete.") from None
    except ValueError as err:  # object arrays would need pickle
        raise InputError(f"{path}: {err}; store images and labels as plain numeric arrays.") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(
            f"{path}: 'labels' must be a 1-D integer array; got shape {labels.shape}, dtype {labels.dtype}: "
            "store one class index 0..K-1 per image as integers."
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
    if len(raw) != header + math.prod(shape) * dtype.itemsize:
        raise InputError(f"{path}: size does not match its IDX header {shape}; the file is truncated or corrupt.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx(images_path: str | Path, labels_path: str | Path) -> ImageDataset:
    """Read an IDX pair of images (N, H, W) (as in :func:`images_to_tensor`) and integer labels (N,)."""
    images, labels = read_idx_array(images_path), read_idx_array(labels_path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"{labels_path}: expected {len(images)} labels in a 1-D IDX file; got shape {labels.shape}.")
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"{labels_path}: labels are stored as {labels.dtype.name}; labels are class indices: "
            "give an IDX labels file of integers (type 0x08, 0x09, 0x0B or 0x0C)."
        )
    name = Path(images_path).name
    return make_dataset(images_to_tensor(images, name), torch.from_numpy(labels.astype(np.int64)), name)


def read_image_folder(root: str | Path) -> ImageDataset:
    """Read ``root/<class name>/<image>``: one subfolder per class, classes in sorted order.

    Hidden folders and files (names starting with '.') are skipped, and so are class folders without
    image files (with a logged warning). All images must have the same size. They are read as
    grayscale (C = 1) when every file is grayscale, else as RGB (C = 3), each scaled to [0, 1] by the
    range of its own type (see :func:`pixel_values`). Every header is read, and the limits checked,
    before any image is decoded.

    Returns:
        images (N, C, H, W) float32 in [0, 1]; labels (N,) int64, the index of the sorted class folder.

    Raises:
        InputError: no images, an unreadable image, an image above ``ROIROA_MAX_IMAGE_PIXELS`` pixels,
            images of different sizes, a tensor above ``ROIROA_MAX_DATA_BYTES`` bytes, or one class only.
    """
    root = Path(root)
    pixel_limit = env_limit(PIXELS_VARIABLE, DEFAULT_MAX_IMAGE_PIXELS)
    files, classes = list_image_files(root)
    if not files:
        raise InputError(f"{root}: no images found; expected one subfolder per class holding image files.")
    paths = [f for f, _ in files]
    with pillow_pixel_limit(None):  # the check on each header below names the file and the variable
        headers = [read_header(f, pixel_limit) for f in paths]
    h, w = common_size(root, paths, [size for _, size in headers])
    channels = 1 if all(is_gray_mode(mode) for mode, _ in headers) else 3
    check_data_bytes((len(paths), channels, h, w), str(root))
    images = np.empty((len(paths), channels, h, w), np.float32)
    with pillow_pixel_limit(pixel_limit):
        for i, f in enumerate(paths):
            images[i] = decode_image(f, channels, (h, w))
    labels = torch.tensor([k for _, k in files], dtype=torch.int64)
    return make_dataset(torch.from_numpy(images), labels, root.name, classes)


def list_image_files(root: Path) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """The image files ``root/<class>/<file>`` with their labels, and the class names, in sorted order.

    Hidden folders and files (names starting with '.') are skipped; class folders without image files
    are skipped with a warning.
    """
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        found = [(d, sorted(f for f in d.iterdir() if is_image_file(f))) for d in folders]
    except OSError as err:
        raise InputError(f"{root}: cannot list the folder ({err}); check the path and its permissions.") from None
    empty = [d.name for d, names in found if not names]
    if empty:
        log.warning("%s: skipped %d class folders without image files: %s", root, len(empty), ", ".join(empty))
    kept = [(d, names) for d, names in found if names]
    files = [(f, k) for k, (_, names) in enumerate(kept) for f in names]
    return files, tuple(d.name for d, _ in kept)


def is_image_file(path: Path) -> bool:
    """A file with an image suffix whose name does not start with '.' (.DS_Store, macOS ``._x.png``)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def is_gray_mode(mode: str) -> bool:
    """Pillow modes read as one channel: 1-bit, 8-bit (with or without alpha), 16- and 32-bit, float."""
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


@contextlib.contextmanager
def pillow_pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb limit set to ``limit`` pixels (None: off), its warning raised as an error."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)``; its errors, and those of the body, become a one-line :class:`InputError`."""
    from PIL import Image

    try:
        with Image.open(path) as pic:
            yield pic
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(
            f"{path}: {one_line(err)}; set {PIXELS_VARIABLE} higher to read it, if you trust the file."
        ) from None
    except (OSError, ValueError, EOFError, SyntaxError, struct.error) as err:
        raise InputError(f"{path}: cannot read this image ({one_line(err)}); remove or fix that file.") from None


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line."""
    return " ".join(str(err).split()) or type(err).__name__


def read_header(path: Path, pixel_limit: int) -> tuple[str, tuple[int, int]]:
    """The Pillow mode and (H, W) of an image file, from its header only (nothing is decoded).

    Raises:
        InputError: the file is no readable image, or has more than ``pixel_limit`` pixels.
    """
    with open_image(path) as pic:
        mode, (w, h) = pic.mode, pic.size
    if w * h > pixel_limit:
        raise InputError(
            f"{path}: the image is {w}x{h} = {w * h:,} pixels, above the limit of {pixel_limit:,} pixels "
            f"(a guard against decompression bombs): set {PIXELS_VARIABLE} higher to read it, if you trust the file."
        )
    return mode, (h, w)


def common_size(root: Path, paths: list[Path], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The one (H, W) of all images; raises naming a file of each size when they differ."""
    first: dict[tuple[int, int], Path] = {}
    for path, size in zip(paths, sizes, strict=True):
        first.setdefault(size, path)
    if len(first) > 1:
        shown = ", ".join(f"{h}x{w} ({p.relative_to(root)})" for (h, w), p in list(first.items())[:4])
        more = f" and {len(first) - 4} more" if len(first) > 4 else ""
        raise InputError(f"{root}: images have different sizes (H x W: {shown}{more}); resize them to one size first.")
    return next(iter(first))


def decode_image(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file as (channels, H, W) float32 in [0, 1]; grayscale is repeated when ``channels`` is 3."""
    with open_image(path) as pic:
        values = pixel_values(pic, path)
    if values.shape[:2] != size or (values.ndim == 3 and channels == 1):
        raise InputError(f"{path}: the decoded image {values.shape} does not match its header; re-save the file.")
    if values.ndim == 2:
        return np.broadcast_to(values, (channels, *size))
    return values.transpose(2, 0, 1)


def pixel_values(pic: Any, path: Path) -> np.ndarray:
    """The pixels of an open Pillow image as float32 in [0, 1]: (H, W) for grayscale modes, else (H, W, 3).

    Each image is scaled by the range of its own type: 1-bit to 0 and 1, 8-bit by 255, 16-bit by
    65535; mode "I" (32-bit integers) only from formats of at most 16 bits (PNG, PPM/PGM), by 65535;
    float ("F") must be in [0, 1]. Alpha is dropped; palette and other colour modes become RGB.

    Raises:
        InputError: 32-bit integers from other formats, negative or signed values, floats outside [0, 1].
    """
    mode = pic.mode
    if mode in ("1", "LA", "La"):
        pic = pic.convert("L")
    elif not is_gray_mode(mode) and mode != "RGB":
        pic = pic.convert("RGB")
    array = np.asarray(pic)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return array.astype(np.float32) / np.float32(65535.0)
    if array.dtype.kind == "f":
        return unit_range(array.astype(np.float32), str(path))
    sixteen_bit = mode == "I" and pic.format in SIXTEEN_BIT_FORMATS
    if sixteen_bit and array.size and 0 <= array.min() and array.max() <= 65535:
        return array.astype(np.float32) / np.float32(65535.0)
    top = array.max() if array.size else 0
    raise InputError(
        f"{path}: a mode {mode} image of {array.dtype} values up to {top} has no known range; "
        "save it as an 8- or 16-bit PNG, or as a float TIFF in [0, 1]."
    )
