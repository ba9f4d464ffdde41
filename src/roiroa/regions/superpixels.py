"""Superpixels (SLIC, from scikit-image) as regions, for images whose objects do not align with a grid."""

from __future__ import annotations

import numpy as np
import torch
from skimage.segmentation import slic

from roiroa.validation import check_images, check_number


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
