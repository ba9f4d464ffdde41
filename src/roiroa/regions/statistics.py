"""Per-image agreement of RoI and RoA: overlap of the masks and correlation of the maps.

Every function takes (N, H, W) tensors and returns (N,) float64 values (NaN where undefined,
for example the correlation of a constant map).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a and b| / |a or b| of bool masks; NaN where both are empty."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return inter / union.where(union > 0, torch.full_like(union, float("nan")))


def dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2 |a and b| / (|a| + |b|) of bool masks; NaN where both are empty."""
    inter = (a & b).flatten(1).sum(1).double()
    total = a.flatten(1).sum(1).double() + b.flatten(1).sum(1).double()
    return 2 * inter / total.where(total > 0, torch.full_like(total, float("nan")))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the two maps of each image."""
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    denom = x.norm(dim=1) * y.norm(dim=1)
    return (x * y).sum(1) / denom.where(denom > 0, torch.full_like(denom, float("nan")))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of the two maps of each image (ties get average ranks, as in SciPy)."""
    ra = rankdata(a.flatten(1).detach().cpu().numpy(), axis=1)
    rb = rankdata(b.flatten(1).detach().cpu().numpy(), axis=1)
    return pearson(torch.from_numpy(np.asarray(ra)), torch.from_numpy(np.asarray(rb)))


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation and count of the finite values of a (N,) tensor."""
    v = values[torch.isfinite(values)].double()
    n = int(v.numel())
    mean = float(v.mean()) if n else float("nan")
    std = float(v.std(unbiased=True)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n}
