"""Image folders at ImageNet scale: a labels CSV or a class-index file fixes each class's output index, and the
images go through a declared resize and centre crop.

Two layouts:

- a flat folder of image files plus a labels CSV with a header naming at least ``file`` and ``label``
  (``file,label,wnid``: ImageNet's validation layout); ``label`` is the model's output index, used as is;
- a folder of class subfolders (``n01440764/...``) plus a class-index JSON (``imagenet_class_index.json``:
  ``{"0": ["n01440764", "tench"], ...}``): each subfolder's label is its index in that file, never a
  renumbering of the subfolders present.

The class names come from the class-index file where given (all K of them, so labels keep their meaning when
only some classes have images), else '0'..'K-1'. Preprocessing follows the torchvision ImageNet recipe:
resize so the shorter side is ``resize`` pixels (bilinear, Pillow), then crop the centre ``crop`` x ``crop``.
:func:`list_labelled_files` reads only the file names and labels: a run splits and samples them by label and
decodes only the images it uses (:meth:`LabelledFiles.decode`), each into one uint8 buffer (1 byte per value)
scaled to float32 [0, 1] once at the end.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roiroa.data.dataset import ImageDataset, check_two_classes, index_names
from roiroa.data.readers import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PIXELS_VARIABLE,
    check_data_bytes,
    env_limit,
    is_image_file,
    list_image_files,
    open_image,
    pillow_pixel_limit,
    read_header,
)
from roiroa.errors import InputError


def read_class_index(path: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(ids, names) of a class-index JSON ``{"0": [id, name], ...}`` (keys 0..K-1), or a JSON list of names.
    A name given to two classes gets its id appended (``crane (n02012849)``).

    Raises:
        InputError: the file is missing, not JSON, or its keys are not 0..K-1.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(
            f"class index {path}: cannot read it as JSON ({err}); give imagenet_class_index.json."
        ) from None
    if isinstance(raw, list):
        return tuple(str(n) for n in raw), tuple(str(n) for n in raw)
    keys = sorted(raw, key=lambda k: int(k) if str(k).isdigit() else -1)
    if keys != [str(i) for i in range(len(keys))]:
        raise InputError(f"class index {path}: keys must be '0'..'K-1'; give a file like imagenet_class_index.json.")
    pairs = [raw[k] if isinstance(raw[k], list) else [raw[k], raw[k]] for k in keys]
    ids, names = [str(p[0]) for p in pairs], [str(p[-1]) for p in pairs]
    repeated = {n for n in names if names.count(n) > 1}  # ImageNet has two 'crane's and two 'maillot's
    return tuple(ids), tuple(f"{n} ({i})" if n in repeated else n for i, n in zip(ids, names, strict=True))


def read_labels_csv(path: str | Path) -> list[tuple[str, int]]:
    """(file name, label) rows of a CSV whose header names ``file`` and ``label``.

    Raises:
        InputError: no such columns, or a label that is not a whole number >= 0.
    """
    try:
        with Path(path).open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise InputError(f"labels {path}: cannot read it ({err}); give a CSV with columns file,label.") from None
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise InputError(f"labels {path}: needs a header with columns 'file' and 'label' (e.g. file,label,wnid).")
    try:
        pairs = [(r["file"], int(r["label"])) for r in rows]
    except (TypeError, ValueError):
        raise InputError(f"labels {path}: every 'label' must be a whole number (the model's output index).") from None
    if min(k for _, k in pairs) < 0:
        raise InputError(f"labels {path}: labels must be >= 0 (the model's output index).")
    return pairs


def folder_files(root: Path, ids: tuple[str, ...]) -> list[tuple[Path, int]]:
    """``root/<class id>/<image>`` with each subfolder's index in ``ids`` (sorted by class, then name)."""
    where = {c: i for i, c in enumerate(ids)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [d.name for d in folders if d.name not in where]
    if unknown:
        raise InputError(
            f"{root}: subfolders {unknown[:3]} are not in the class index: name each subfolder by a class id of it."
        )
    return [(f, where[d.name]) for d in folders for f in sorted(d.iterdir()) if is_image_file(f)]


def resize_crop(pic: Any, resize: int | None, crop: int | None) -> Any:
    """An RGB Pillow image with its shorter side resized to ``resize`` (bilinear) and the centre ``crop`` kept."""
    from PIL import Image

    pic = pic.convert("RGB")
    if resize is not None:
        w, h = pic.size
        short = min(w, h)
        size = (resize, round(h * resize / short)) if w == short else (round(w * resize / short), resize)
        pic = pic.resize(size, Image.Resampling.BILINEAR)
    if crop is not None:
        w, h = pic.size
        if crop > min(w, h):
            raise InputError(f"crop {crop} is larger than an image ({w}x{h} after resizing): lower data.crop.")
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        pic = pic.crop((left, top, left + crop, top + crop))
    return pic


def decode_rgb(paths: list[Path], resize: int | None, crop: int | None) -> np.ndarray:
    """The images as (N, 3, H, W) uint8 after resize and crop; all must end up the same size."""
    limit = env_limit(PIXELS_VARIABLE, DEFAULT_MAX_IMAGE_PIXELS)
    with pillow_pixel_limit(None):
        for p in paths:
            read_header(p, limit)  # every file's size checked before anything is decoded
    out: np.ndarray | None = None
    with pillow_pixel_limit(limit):
        for i, path in enumerate(paths):
            with open_image(path) as pic:
                array = np.asarray(resize_crop(pic, resize, crop)).transpose(2, 0, 1)
            if out is None:
                check_data_bytes((len(paths), *array.shape), str(path.parent))
                out = np.empty((len(paths), *array.shape), np.uint8)
            if array.shape != out.shape[1:]:
                raise InputError(
                    f"{path}: {array.shape[1]}x{array.shape[2]} after preprocessing, not {out.shape[2]}x{out.shape[3]}"
                    ": set data.crop (e.g. resize 256, crop 224) so every image ends up the same size."
                )
            out[i] = array
    assert out is not None
    return out


@dataclass(frozen=True)
class LabelledFiles:
    """Image files and their labels, not yet decoded: a data set that is split and sampled by its labels, then
    decoded (:meth:`decode`) only for the images a run uses.

    Attributes:
        paths: N image files. labels: (N,) int64, the model's output indices. classes: K class names.
        name: where the data came from. index: (N,) int64, each file's position in the source.
        resize, crop: the preprocessing :meth:`decode` applies (see :func:`resize_crop`).
    """

    paths: tuple[Path, ...]
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    index: torch.Tensor
    resize: int | None = None
    crop: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: torch.Tensor) -> LabelledFiles:
        """The files at positions ``idx`` (a 1-D int64 tensor), in that order."""
        paths = tuple(self.paths[i] for i in idx.tolist())
        return replace(self, paths=paths, labels=self.labels[idx], index=self.index[idx])

    def decode(self) -> ImageDataset:
        """The images (N, 3, H, W) float32 in [0, 1], after resize and crop, with labels and names."""
        pixels = decode_rgb(list(self.paths), self.resize, self.crop)
        images = torch.from_numpy(pixels).float().div_(255.0)
        return ImageDataset(images, self.labels, self.classes, self.name, self.index)


def list_labelled_files(
    root: str | Path,
    labels: str | Path | None = None,
    class_index: str | Path | None = None,
    resize: int | None = None,
    crop: int | None = None,
) -> LabelledFiles:
    """The image files of ``root`` with labels from a CSV (flat folder) or a class index (class subfolders).

    Args:
        root: a folder of images (with ``labels``) or of class subfolders (numbered by ``class_index`` where
            given, else in sorted order).
        labels: CSV with columns ``file,label``: label = the model's output index.
        class_index: JSON ``{"0": [id, name], ...}``: class names, and the subfolders' indices.
        resize, crop: shorter side after resizing, and side of the centre crop (pixels); None: left out.

    Raises:
        InputError: a file of the CSV is missing, no images, labels without class names, one class only.
    """
    root = Path(root)
    ids, names = read_class_index(class_index) if class_index is not None else ((), ())
    if labels is not None:
        files = [(root / name, k) for name, k in read_labels_csv(labels)]
        missing = [str(p) for p, _ in files if not p.is_file()]
        if missing:
            raise InputError(f"labels {labels}: {len(missing)} files not found, e.g. {missing[0]}; fix the CSV.")
    elif class_index is not None:
        files = folder_files(root, ids)
    else:  # class subfolders in sorted order, as read_image_folder numbers them
        files, names = list_image_files(root)
    if not files:
        raise InputError(f"{root}: no images found.")
    y = torch.tensor([k for _, k in files], dtype=torch.int64)
    classes = names or index_names(y, root.name)
    top = int(y.max())
    if top >= len(classes):
        raise InputError(f"{root}: label {top} has no class name in the class index ({len(classes)} classes).")
    found = LabelledFiles(tuple(p for p, _ in files), y, tuple(classes), root.name, torch.arange(len(y)), resize, crop)
    check_two_classes(found)
    return found
