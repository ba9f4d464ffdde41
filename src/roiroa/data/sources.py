"""Load a dataset by name or path: the one entry point of the data stage (bundled MNIST, .npz, IDX, image
folders, CIFAR batches, and the opt-in torchvision path)."""

from __future__ import annotations

from pathlib import Path

from roiroa.data.cifar import is_cifar_folder, read_cifar_batch, read_cifar_folder
from roiroa.data.dataset import ImageDataset
from roiroa.data.imagenet import LabelledFiles, list_labelled_files
from roiroa.data.readers import BUNDLED, load_bundled_mnist, read_idx, read_image_folder, read_npz
from roiroa.errors import InputError


def open_dataset(
    source: str,
    labels: str | None = None,
    class_index: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
) -> ImageDataset | LabelledFiles:
    """As :func:`load_dataset`, but an image folder with a labels CSV, a class index or a resize/crop is
    returned as its files and labels, not yet decoded (split and sample it, then decode what is used)."""
    if Path(source).is_dir() and (labels or class_index or resize or crop):
        return list_labelled_files(source, labels, class_index, resize, crop)
    return load_dataset(source, labels, class_index, resize, crop)


def load_dataset(
    source: str,
    labels: str | None = None,
    class_index: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
) -> ImageDataset:
    """Load a dataset by bundled name or path.

    Args:
        source: 'mnist' (bundled), a .npz file, an IDX images file (then ``labels`` is the IDX
            labels file), a folder with one subfolder of images per class, a CIFAR python batch
            file (``test_batch``, ``data_batch_N``) or folder (its ``test_batch``), or
            'torchvision:NAME[:train|test]' (opt-in: needs torchvision and a connection).
        labels: the IDX labels file, only with an IDX images file; or, with an image folder, a CSV
            ``file,label[,...]`` giving each file's output index (ImageNet's validation layout).
        class_index: with an image folder, a class-index JSON (``imagenet_class_index.json``): the class
            names, and each class subfolder's index.
        resize, crop: with an image folder, resize the shorter side to ``resize`` pixels, then keep the centre
            ``crop`` x ``crop`` (the ImageNet recipe: 256, 224); see :mod:`roiroa.data.imagenet`.
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
    if path.is_dir() and (labels or class_index or resize or crop):
        return list_labelled_files(path, labels, class_index, resize, crop).decode()
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
