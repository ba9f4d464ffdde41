"""PatchCleanser double masking (Xiang et al., USENIX Security 2022): a certified defence against one patch.

A mask set is built for a square patch of a given side: along each axis, k masks of side m = patch + stride - 1
at starts 0, stride, 2 stride, ... (the last one moved to end at the border), stride = ceil((size - patch + 1) /
k), so that every position of the patch lies wholly inside at least one of the k x k masks (the R-covering of
the paper). Inference: predict with each one-mask image; if all agree, that label; else, for each mask whose
prediction disagrees with the majority, predict with every two-mask image that contains it, and return its label
if they all agree with it; otherwise the majority. Certification: if every two-mask prediction (each pair of
masks, a mask with itself included) is the true label, no patch of that size anywhere can change the output,
whatever its pixels: one mask covers the patch, and every two-mask image containing that mask sees no patch.
Masked positions get a fixed value (a number, or one per channel), never the input's pixels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from roiroa.errors import InputError
from roiroa.utils import batch_slices, model_device


def axis_masks(size: int, patch: int, k: int) -> tuple[int, list[int]]:
    """(mask side m, starts) along one axis of ``size`` positions for a patch of side ``patch`` with k masks."""
    if not 1 <= patch <= size or k < 1:
        raise InputError(f"PatchCleanser needs 1 <= patch side <= image side and k >= 1; got {patch}, {size}, {k}.")
    stride = math.ceil((size - patch + 1) / k)
    side = min(size, patch + stride - 1)
    return side, sorted({min(i * stride, size - side) for i in range(k)})


def mask_set(height: int, width: int, patch: int, k: int = 6) -> torch.Tensor:
    """(M, H, W) bool: the k x k (fewer on small images) rectangular masks covering every patch position."""
    side_h, tops = axis_masks(height, patch, k)
    side_w, lefts = axis_masks(width, patch, k)
    masks = torch.zeros(len(tops) * len(lefts), height, width, dtype=torch.bool)
    for i, (t, left) in enumerate((t, left) for t in tops for left in lefts):
        masks[i, t : t + side_h, left : left + side_w] = True
    return masks


def double_masking(pairs: torch.Tensor) -> torch.Tensor:
    """The double-masking label (N,) from every two-mask prediction pairs: (N, M, M) int (diagonal: one mask)."""
    one = torch.diagonal(pairs, dim1=1, dim2=2)  # (N, M)
    majority = one.mode(dim=1).values
    consistent = (pairs == one[:, :, None]).all(2) & (one != majority[:, None])  # (N, M)
    first = consistent.to(torch.int64).argmax(1)
    minority = torch.gather(one, 1, first[:, None])[:, 0]
    return torch.where(consistent.any(1), minority, majority)


class PatchCleanser:
    """Double masking of f against a square patch of side ``patch`` on H x W images.

    Args:
        model: f, logits (N, K) for images (N, C, H, W) in [0, 1].
        image_size: (H, W). patch: side of the patch in pixels. k: masks per axis (default 6, as the paper).
        fill: the value of masked positions: a float or one per channel, in [0, 1] (default 0.5, mid grey).
        batch_size: masked images per forward pass.

    Example:
        >>> pc = PatchCleanser(model, (28, 28), patch=8)
        >>> labels, certified = pc.predict(x), pc.certify(x, y)
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: tuple[int, int],
        patch: int,
        *,
        k: int = 6,
        fill: float | tuple[float, ...] = 0.5,
        batch_size: int = 512,
    ) -> None:
        self.model, self.patch, self.k, self.fill, self.batch_size = model, patch, k, fill, batch_size
        self.masks = mask_set(*image_size, patch, k)
        self.mask_side = (axis_masks(image_size[0], patch, k)[0], axis_masks(image_size[1], patch, k)[0])

    @torch.no_grad()
    def pair_predictions(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, M) int64 labels of f on x: (N, C, H, W) in [0, 1] with masks i and j blocked (i = j: one mask)."""
        device = model_device(self.model)
        m = len(self.masks)
        i, j = torch.triu_indices(m, m)
        union = (self.masks[i] | self.masks[j]).to(device)  # (P, H, W)
        value = torch.as_tensor(self.fill, dtype=x.dtype, device=device).reshape(1, -1, 1, 1)
        out = torch.empty(len(x), m, m, dtype=torch.int64)
        step = max(1, self.batch_size // len(union))
        for s in batch_slices(len(x), step):
            xb = x[s].to(device)
            labels = []
            for p in batch_slices(len(union), self.batch_size):
                blocked = union[p][None, :, None]  # (1, P', 1, H, W)
                images = torch.where(blocked, value[:, None], xb[:, None]).flatten(0, 1)
                labels.append(self.model(images).argmax(1).view(len(xb), -1).cpu())
            flat = torch.cat(labels, 1)
            out[s, i, j] = flat
            out[s, j, i] = flat
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) int64: the double-masking labels of x: (N, C, H, W) in [0, 1]."""
        return double_masking(self.pair_predictions(x))

    def certify(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) bool: certified robust and correct (every two-mask prediction is y: (N,))."""
        return (self.pair_predictions(x) == y.cpu()[:, None, None]).all(2).all(1)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(correct, certified), each (N,) bool, from one pass over the mask pairs."""
        pairs = self.pair_predictions(x)
        return double_masking(pairs) == y.cpu(), (pairs == y.cpu()[:, None, None]).all(2).all(1)
