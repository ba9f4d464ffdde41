"""torchvision datasets by name: an opt-in online path (never the default run, never in tests).

``load_dataset("torchvision:CIFAR10")`` (test split) or ``"torchvision:CIFAR10:train"`` downloads
the dataset into ``$ROIROA_CACHE/torchvision`` where torchvision is installed and the machine is online.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from roiroa.cache import cache_dir
from roiroa.data.dataset import ImageDataset, make_dataset
from roiroa.data.readers import images_to_tensor
from roiroa.errors import InputError

PREFIX = "torchvision:"


def read_torchvision(source: str) -> ImageDataset:
    """The torchvision dataset named in ``source`` ('torchvision:NAME[:train|test]') as an ImageDataset.

    Works for datasets that hold their images in ``.data`` and labels in ``.targets`` (MNIST,
    FashionMNIST, KMNIST, CIFAR10, CIFAR100).
    """
    parts = source[len(PREFIX) :].split(":")
    name, split = parts[0], (parts[1] if len(parts) > 1 else "test")
    if split not in ("train", "test") or len(parts) > 2:
        raise InputError(f"dataset {source!r}: write torchvision:NAME, or torchvision:NAME:train / :test.")
    try:
        datasets = importlib.import_module("torchvision.datasets")
    except (ImportError, RuntimeError, OSError) as err:  # absent, or installed but broken against this torch
        raise InputError(
            f"dataset {source!r} needs a working torchvision ({type(err).__name__}): pip install torchvision, "
            "or give a .npz, IDX file, image folder or CIFAR batch folder."
        ) from None
    if not hasattr(datasets, name):
        raise InputError(f"torchvision has no dataset {name!r}; use e.g. torchvision:CIFAR10 or torchvision:MNIST.")
    try:
        ds: Any = getattr(datasets, name)(str(cache_dir() / "torchvision"), train=split == "train", download=True)
    except (RuntimeError, OSError) as err:
        raise InputError(f"dataset {source!r}: download or reading failed ({err}); check the connection.") from None
    if not hasattr(ds, "data") or not hasattr(ds, "targets"):
        raise InputError(f"dataset {source!r}: roiroa reads torchvision datasets with .data and .targets only.")
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    classes = tuple(str(c) for c in ds.classes) if hasattr(ds, "classes") else None
    return make_dataset(images_to_tensor(data, source), labels, f"{name} ({split}, torchvision)", classes)
