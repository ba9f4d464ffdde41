"""Image files decoded on demand: the images of a data set too large to hold decoded (50,000 ImageNet images at
224 x 224 are 30 GB as float32), read chunk by chunk.

:class:`ImageFiles` stands where an (N, 3, H, W) tensor would: ``len``, ``shape``, and indexing by an int, a
slice or a 1-D int64 tensor of positions, which decodes just those files (resize and centre crop, as
:meth:`roiroa.data.imagenet.LabelledFiles.decode` does: the same values, bit for bit) into float32 in [0, 1].
Its content address (:meth:`ImageFiles.digest`) is the hash of the decoded images, as for images in memory (so
the cache keys and seeds of a chunk are those of the same images decoded up front), computed ``DIGEST_BLOCK``
images at a time: nothing more than a block is held decoded to compute it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from roiroa.cache import hash_blocks
from roiroa.data.dataset import ImageDataset
from roiroa.data.imagenet import LabelledFiles, decode_rgb
from roiroa.errors import InputError

Index = int | slice | torch.Tensor
DIGEST_BLOCK = 64  # images decoded at a time to hash a chunk (64 ImageNet images at 224 x 224: 39 MB)


@dataclass(frozen=True)
class ImageFiles:
    """N image files, decoded only where indexed: (N, C, H, W) float32 in [0, 1] after resize and crop.

    Attributes:
        paths: the N files. resize, crop: the preprocessing (see :func:`roiroa.data.imagenet.resize_crop`).
        size: (C, H, W) of every image after preprocessing (each decode checks it).
    """

    paths: tuple[Path, ...]
    resize: int | None
    crop: int | None
    size: tuple[int, int, int]

    @classmethod
    def of(cls, paths: tuple[Path, ...], resize: int | None, crop: int | None) -> ImageFiles:
        """The files ``paths`` (at least one), their size read by decoding the first one."""
        if not paths:
            raise InputError("no image files: give at least one image.")
        c, h, w = decode_rgb([paths[0]], resize, crop).shape[1:]
        return cls(tuple(paths), resize, crop, (c, h, w))

    @property
    def shape(self) -> torch.Size:
        """(N, C, H, W)."""
        return torch.Size((len(self.paths), *self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Index) -> ImageFiles:
        """The files at ``idx`` (a slice, or a 1-D int64 or bool tensor of positions), in that order, not decoded."""
        if isinstance(idx, slice):
            return replace(self, paths=self.paths[idx])
        if isinstance(idx, int) or idx.dim() == 0:
            return replace(self, paths=(self.paths[int(idx)],))
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return replace(self, paths=tuple(self.paths[i] for i in idx.reshape(-1).tolist()))

    def __getitem__(self, idx: Index) -> torch.Tensor:
        """The images at ``idx``, decoded: (n, C, H, W) float32 in [0, 1]; (C, H, W) for an int."""
        pixels = self.subset(idx).decode()
        return pixels[0] if isinstance(idx, int) or (isinstance(idx, torch.Tensor) and idx.dim() == 0) else pixels

    def decode(self) -> torch.Tensor:
        """Every file decoded: (N, C, H, W) float32 in [0, 1]."""
        if not self.paths:
            return torch.empty((0, *self.size))
        pixels = torch.from_numpy(decode_rgb(list(self.paths), self.resize, self.crop)).float().div_(255.0)
        if tuple(pixels.shape[1:]) != self.size:
            _, h, w = self.size
            raise InputError(
                f"{self.paths[0].parent}: images are {pixels.shape[2]}x{pixels.shape[3]} after preprocessing, not "
                f"{h}x{w}: set data.crop (e.g. resize 256, crop 224) so every image ends up the same size."
            )
        return pixels

    @cached_property
    def _digests(self) -> dict[tuple[int, int, int, bytes], str]:
        return {}  # (start, stop, step, labels' bytes) -> digest, for this object's life

    def digest(self, labels: torch.Tensor, where: slice = slice(None)) -> str:
        """The content hash of the images at ``where`` with their labels (n,): ``hash_tensors(images, labels)`` of
        the decoded images, as for images in memory (the same cache keys and seeds), decoding ``DIGEST_BLOCK``
        images at a time, once per object."""
        at = torch.arange(len(self))[where]
        key = (*where.indices(len(self)), labels.cpu().numpy().tobytes())
        if key not in self._digests:
            blocks = (self[part] for part in at.split(DIGEST_BLOCK))
            self._digests[key] = hash_blocks((len(at), *self.size), torch.float32, blocks, labels)
        return self._digests[key]


def lazy_dataset(files: LabelledFiles) -> ImageDataset:
    """The data set of ``files`` with its images decoded only where a stage indexes them (see :class:`ImageFiles`);
    the paths are made absolute (a Ray worker decodes its chunk's files from its own working folder)."""
    images = ImageFiles.of(tuple(p.absolute() for p in files.paths), files.resize, files.crop)
    return ImageDataset(images, files.labels, files.classes, files.name, files.index)
