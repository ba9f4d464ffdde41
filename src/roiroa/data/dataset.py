"""The dataset type passed between stages, and the stratified split."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import torch

from roiroa.errors import InputError
from roiroa.validation import check_images, check_labels


class ImageSource(Protocol):
    """Images decoded only where indexed (image files: :class:`roiroa.data.lazy.ImageFiles`): ``shape`` (N, C, H,
    W); indexing by an int, a slice or a 1-D int64 tensor decodes just those images, float32 in [0, 1]; ``subset``
    picks images without decoding them; ``digest`` is the content address of the images at ``where`` with their
    labels (n,), computed without holding them decoded."""

    @property
    def shape(self) -> torch.Size: ...
    def __len__(self) -> int: ...
    def __getitem__(self, idx: int | slice | torch.Tensor) -> torch.Tensor: ...
    def subset(self, idx: int | slice | torch.Tensor) -> ImageSource: ...
    def digest(self, labels: torch.Tensor, where: slice = ...) -> str: ...
    def __hash__(self) -> int: ...


Images: TypeAlias = torch.Tensor | ImageSource


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels in the tensor contract of every stage.

    Attributes:
        images: (N, C, H, W) float32 in [0, 1]: a tensor, or image files decoded chunk by chunk where a stage
            indexes them (an :class:`ImageSource`: a folder too large to hold decoded).
        labels: (N,) int64 in [0, K).
        classes: K class names, index = label, all different.
        name: where the data came from (shown in reports).
        index: (N,) int64, each image's position in the source it was read from.

    Raises:
        InputError: images or labels break that contract, or two classes have the same name.
    """

    images: Images
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    index: torch.Tensor

    def __post_init__(self) -> None:
        if isinstance(self.images, torch.Tensor):
            check_images(self.images, f"images of {self.name}")
        elif len(self.images.shape) != 4 or not len(self.images):
            raise InputError(f"images of {self.name} must be (N, C, H, W) with N >= 1; got {tuple(self.images.shape)}.")
        check_labels(self.labels, self.images.shape[0], len(self.classes), f"labels of {self.name}")
        check_class_names(self.classes, self.name)

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
        """The images at positions ``idx`` (a 1-D int64 tensor), in that order (image files stay undecoded)."""
        images = self.images[idx] if isinstance(self.images, torch.Tensor) else self.images.subset(idx)
        return ImageDataset(images, self.labels[idx], self.classes, self.name, self.index[idx])

    def pixels(self) -> torch.Tensor:
        """The images as one tensor (N, C, H, W) float32 in [0, 1]: ``images`` itself, or every image file decoded
        (for sets whose size the config bounds, as the fitting images; stages take image files chunk by chunk)."""
        return self.images if isinstance(self.images, torch.Tensor) else self.images[:]

    def decoded(self) -> ImageDataset:
        """This data set with its images as one tensor (see :meth:`pixels`)."""
        return (
            self
            if isinstance(self.images, torch.Tensor)
            else ImageDataset(self.pixels(), self.labels, self.classes, self.name, self.index)
        )


def make_dataset(
    images: torch.Tensor, labels: torch.Tensor, name: str, classes: tuple[str, ...] | None = None
) -> ImageDataset:
    """Build an :class:`ImageDataset` from data as read, naming classes '0'..'K-1' where no names are given.

    Args:
        images: (N, C, H, W) float in [0, 1].
        labels: (N,) integer class indices 0..K-1.
        name: where the data came from (shown in messages and reports).
        classes: K class names (index = label), or None for '0'..'K-1' with K = max label + 1.

    Raises:
        InputError: the images or labels break the contract, a label has no class name, two classes share
            a name, or the labels hold fewer than two classes. Classes without images are logged as a warning.
    """
    labels = labels.to(torch.int64)
    classes = index_names(labels, name) if classes is None else tuple(classes)
    top = int(labels.max()) if labels.numel() else -1
    if top >= len(classes):
        raise InputError(
            f"{name}: label {top} has no class name, as 'classes' names {len(classes)} classes: "
            "give one name per class 0..K-1, or leave the names out."
        )
    data = ImageDataset(images.float().contiguous(), labels, classes, name, torch.arange(len(labels)))
    check_two_classes(data)
    return data


def index_names(labels: torch.Tensor, name: str) -> tuple[str, ...]:
    """Class names '0'..'K-1' for int64 ``labels`` (N,), with K = max label + 1 (0 when N = 0).

    Raises:
        InputError: K would be above both N and 1,000 (labels that are ids rather than class indices).
    """
    k = int(labels.max()) + 1 if labels.numel() else 0
    if k > max(len(labels), 1000):
        raise InputError(
            f"{name}: labels go up to {k - 1}, which would make {k} classes for {len(labels)} images: "
            "labels are class indices 0..K-1: renumber them 0..K-1, or give the K class names."
        )
    return tuple(str(i) for i in range(k))


def check_class_names(classes: tuple[str, ...], name: str) -> None:
    """Raise if two of ``classes`` are the same name (the labels of both would look like one class)."""
    counts = Counter(classes)
    repeated = [c for c, n in counts.items() if n > 1]
    if repeated:
        first = repeated[0]
        where = [i for i, c in enumerate(classes) if c == first]
        raise InputError(
            f"{name}: class name {first!r} is given {counts[first]} times (labels {where}) among "
            f"{len(classes)} classes: give each class a different name, or merge those labels into one class."
        )


def check_two_classes(data: Labelled) -> None:
    """Raise unless the labels of ``data`` hold at least two classes; warn about classes without images."""
    counts = torch.bincount(data.labels, minlength=data.num_classes).tolist()
    present = [c for c, n in enumerate(counts) if n]
    if len(present) == 1:
        images = "its one image" if len(data) == 1 else f"all {len(data)} images"
        raise InputError(
            f"{data.name} has only one class ({data.classes[present[0]]!r}, {images}): "
            "RoI/RoA statistics per class and accuracy need at least two classes; "
            "give data with two or more classes."
        )
    empty = [data.classes[c] for c, n in enumerate(counts) if not n]
    if empty:
        shown = ", ".join(repr(c) for c in empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        logging.getLogger(__name__).warning(
            "%s: %d of %d classes have no images (%s); check the labels and class names.",
            data.name,
            len(empty),
            data.num_classes,
            shown,
        )


class Labelled(Protocol):
    """What splitting and sampling need: labels (N,) int64, K classes, a name, ``len`` and ``subset``
    (an :class:`ImageDataset`, or image files not yet decoded, :class:`roiroa.data.imagenet.LabelledFiles`)."""

    @property
    def labels(self) -> torch.Tensor: ...
    @property
    def classes(self) -> tuple[str, ...]: ...
    @property
    def name(self) -> str: ...
    @property
    def num_classes(self) -> int: ...
    def __len__(self) -> int: ...
    def subset(self, idx: torch.Tensor) -> Any: ...


D = TypeVar("D", bound=Labelled)


def split_by_class(data: D, test_fraction: float, seed: int) -> tuple[D, D]:
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


def sample_per_class(data: D, n: int, seed: int) -> D:
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
