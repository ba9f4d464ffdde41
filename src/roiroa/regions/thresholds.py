"""Isolation: maps (N, H, W) -> masks (N, H, W) bool, by top-q fraction, Otsu's threshold or a value."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from roiroa.validation import check_choice, check_number

ThresholdMethod = Literal["top_q", "otsu", "value"]
THRESHOLD_METHODS = ("top_q", "otsu", "value")


def top_q_mask(maps: torch.Tensor, q: float) -> torch.Tensor:
    """The round(q * H * W) highest positions of each map (at least one); ties go to the earlier position.

    Args:
        maps: (N, H, W) real.
        q: fraction in (0, 1].
    """
    check_number("top_q_mask", "q", q, low=0.0, low_open=True, high=1.0)
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    k = max(1, round(q * flat.shape[1]))
    order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.view_as(maps)


def otsu_mask(maps: torch.Tensor) -> torch.Tensor:
    """Positions above each map's Otsu threshold (scikit-image); a constant map gives an empty mask."""
    from skimage.filters import threshold_otsu  # scikit-image is imported where it is used

    out = torch.zeros_like(maps, dtype=torch.bool)
    for i, m in enumerate(maps.detach().cpu().numpy()):
        if np.ptp(m) > 0:
            out[i] = torch.from_numpy(m > threshold_otsu(m))
    return out


def isolate(maps: torch.Tensor, method: ThresholdMethod = "top_q", q: float = 0.2, value: float = 0.0) -> torch.Tensor:
    """Threshold maps (N, H, W) into masks (N, H, W) bool with the named ``method``.

    Args:
        method: 'top_q' (the top q fraction), 'otsu' (Otsu's threshold per map), or 'value'
            (positions >= ``value``).
        q: the fraction for 'top_q', in (0, 1].
        value: the absolute threshold for 'value'.
    """
    check_choice("isolate", "method", method, THRESHOLD_METHODS)
    if method == "top_q":
        return top_q_mask(maps, q)
    if method == "otsu":
        return otsu_mask(maps)
    return maps >= value
