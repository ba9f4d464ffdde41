"""Geometry of the H x W positions: grid windows and SLIC superpixels as region masks (R, H, W) bool.

The lowest layer that both the maps (occlusion, localized attacks) and the regions (segregation) use.
Windows of a grid may overlap (stride < window); a per-pixel value of region values is then the
mean over the regions that cover the pixel (:func:`regions_to_pixels`). Superpixels (SLIC, from
scikit-image) suit images whose objects do not align with a grid.
"""

from __future__ import annotations

import numpy as np
import torch

from roiroa.validation import check_images, check_number


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets 0, stride, 2*stride, ... of windows along one axis, plus one flush with the end
    when the stride does not land there, so every position is covered."""
    check_number("window_starts", "window", window, low=1, high=size, integer=True)
    check_number("window_starts", "stride", stride, low=1, integer=True)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def grid_regions(height: int, width: int, window: int, stride: int) -> torch.Tensor:
    """All window x window windows with the given stride, as masks (R, H, W) bool, row-major order."""
    check_number("grid_regions", "window", window, low=1, high=min(height, width), integer=True)
    check_number("grid_regions", "stride", stride, low=1, high=window, integer=True)
    rows, cols = window_starts(height, window, stride), window_starts(width, window, stride)
    masks = torch.zeros(len(rows) * len(cols), height, width, dtype=torch.bool)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            masks[i * len(cols) + j, r : r + window, c : c + window] = True
    return masks


def regions_to_pixels(values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean of region values over the regions covering each pixel.

    Args:
        values: (N, R) one value per image and region.
        regions: (R, H, W) bool, or (N, R, H, W) per image.

    Returns:
        (N, H, W); 0 at pixels no region covers.
    """
    if regions.dim() == 4:  # per-image regions (N, R, H, W), e.g. superpixels
        flat = regions.flatten(2).to(values.dtype)  # (N, R, P)
        coverage = flat.sum(1).clamp(min=1)
        return (torch.einsum("nr,nrp->np", values, flat) / coverage).view(values.shape[0], *regions.shape[2:])
    flat = regions.flatten(1).to(values.dtype)  # (R, P)
    coverage = flat.sum(0).clamp(min=1)
    return (values @ flat / coverage).view(values.shape[0], *regions.shape[1:])


def rectangle_boxes(regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None:
    """(top (R,), left (R,), (h, w)) of regions (R, H, W) bool that are all filled h x w rectangles
    (grid windows), or None if any region is empty, not a rectangle, or of another size."""
    if regions.dim() != 3 or len(regions) == 0:
        return None
    rows, cols = regions.any(2), regions.any(1)  # (R, H), (R, W): the rows and columns each region touches
    h, w = int(rows[0].sum()), int(cols[0].sum())
    top, left = rows.int().argmax(1), cols.int().argmax(1)
    bottom = rows.shape[1] - 1 - rows.flip(1).int().argmax(1)
    right = cols.shape[1] - 1 - cols.flip(1).int().argmax(1)
    # A region is a filled rectangle when it has as many pixels as the box of the rows and columns it touches.
    filled = (bottom - top + 1 == h) & (right - left + 1 == w) & (regions.flatten(1).sum(1) == h * w)
    if h == 0 or not bool(filled.all()):
        return None
    return top.long(), left.long(), (h, w)


def slic_labels(x: torch.Tensor, n_segments: int = 49, compactness: float = 0.1, sigma: float = 0.0) -> torch.Tensor:
    """SLIC superpixel labels of each image: (N, C, H, W) in [0, 1] -> (N, H, W) int64 in 0..R_i-1.

    Args:
        n_segments: about how many superpixels per image (SLIC may return a few more or fewer).
        compactness: SLIC's balance of colour against space; on [0, 1] images 0.01-1 is sensible
            (larger gives squarer regions). Default 0.1.
        sigma: Gaussian smoothing before segmenting. Default 0.0.
    """
    check_images(x)
    check_number("slic_labels", "n_segments", n_segments, low=1, integer=True)
    check_number("slic_labels", "compactness", compactness, low=0.0, low_open=True)
    check_number("slic_labels", "sigma", sigma, low=0.0)
    from skimage.segmentation import slic  # only superpixel users pay for importing scikit-image

    images = x.detach().cpu().double().numpy()
    labels = []
    for img in images:
        gray = img.shape[0] == 1
        lab = slic(
            img[0] if gray else np.moveaxis(img, 0, -1),
            n_segments=n_segments,
            compactness=compactness,
            sigma=sigma,
            channel_axis=None if gray else -1,
            start_label=0,
            convert2lab=False,
            enforce_connectivity=True,
        )
        # Relabel to consecutive 0..R-1 (SLIC may skip labels).
        labels.append(np.unique(lab, return_inverse=True)[1].reshape(lab.shape))
    return torch.from_numpy(np.stack(labels)).long().to(x.device)


def label_regions(labels: torch.Tensor) -> torch.Tensor:
    """Label maps (N, H, W) int -> region masks (N, R, H, W) bool, R = the most labels of any image.

    An image with fewer labels gets empty (all-False) regions at the end.
    """
    r = int(labels.max()) + 1
    return labels.unsqueeze(1) == torch.arange(r, device=labels.device).view(1, r, 1, 1)
