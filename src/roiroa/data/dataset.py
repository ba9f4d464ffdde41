"""The dataset type passed between stages, and the stratified split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from roiroa.errors import InputError
from roiroa.validation import check_images, check_labels


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels in the tensor contract of every stage.

    Attributes:
        images: (N, C, H, W) float32 in [0, 1].
        labels: (N,) int64 in [0, K).
        classes: K class names, index = label.
        name: where the data came from (shown in reports).
        index: (N,) int64, each image's position in the source it was read from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    index: torch.Tensor

    def __post_init__(self) -> None:
        check_images(self.images, f"images of {self.name}")
        check_labels(self.labels, self.images.shape[0], len(self.classes), f"labels of {self.name}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def subset(self, idx: torch.Tensor) -> ImageDataset:
        """The images at positions ``idx`` (a 1-D int64 tensor), in that order."""
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name, self.index[idx])


def make_dataset(
    images: torch.Tensor, labels: torch.Tensor, name: str, classes: tuple[str, ...] | None = None
) -> ImageDataset:
    """Build an :class:`ImageDataset`, naming classes '0'..'K-1' where no names are given."""
    labels = labels.to(torch.int64)
    if classes is None:
        k = int(labels.max()) + 1 if labels.numel() else 0
        classes = tuple(str(i) for i in range(k))
    return ImageDataset(images.float().contiguous(), labels, tuple(classes), name, torch.arange(len(labels)))


def split_by_class(data: ImageDataset, test_fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Split each class at random (seeded) into train and test parts.

    Every class gives ``round(n_c * test_fraction)`` images to the test part, so both parts keep
    the class balance of ``data``. Images keep their order within each part (by class, then seeded).

    Returns:
        (train, test).
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1); got {test_fraction!r}.")
    gen = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(data.num_classes):
        members = (data.labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_test = round(len(members) * test_fraction)
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    train, test = torch.cat(train_idx), torch.cat(test_idx)
    if len(train) == 0 or len(test) == 0:
        raise InputError(f"{data.name} has {len(data)} images: too few to split into train and test; give more images.")
    return data.subset(train), data.subset(test)


def sample_per_class(data: ImageDataset, n: int, seed: int) -> ImageDataset:
    """A seeded random subset of ``min(n, len(data))`` images with the classes as balanced as possible."""
    if n >= len(data):
        return data
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen)
    # Round-robin over classes in the seeded order keeps the subset balanced.
    rank = torch.empty(len(data), dtype=torch.int64)
    for c in range(data.num_classes):
        members = order[data.labels[order] == c]
        rank[members] = torch.arange(len(members))
    key = rank * len(data) + torch.argsort(order)
    chosen = torch.argsort(key)[:n]
    return data.subset(chosen.sort().values)
