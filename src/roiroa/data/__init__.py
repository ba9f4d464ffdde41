"""Datasets as (images in [0, 1], labels) tensors: bundled MNIST and readers for users' files."""

from roiroa.data.cifar import read_cifar_batch, read_cifar_folder
from roiroa.data.dataset import ImageDataset, make_dataset, sample_per_class, split_by_class
from roiroa.data.readers import (
    load_bundled_mnist,
    read_idx,
    read_image_folder,
    read_npz,
)
from roiroa.data.sources import load_dataset

__all__ = [
    "ImageDataset",
    "make_dataset",
    "split_by_class",
    "sample_per_class",
    "load_bundled_mnist",
    "load_dataset",
    "read_npz",
    "read_idx",
    "read_image_folder",
    "read_cifar_batch",
    "read_cifar_folder",
]
