"""Per-image agreement of RoI and RoA: overlap of the masks and correlation of the maps.

Every function takes (N, H, W) tensors and returns (N,) float64 values (NaN where undefined,
for example the correlation of a constant map).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch


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
    from scipy.stats import rankdata  # scipy.stats is imported where it is used: a cached run never needs it

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


def share_inside(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a and b| / |a| of bool masks: the share of a that lies inside b; NaN where a is empty."""
    inter = (a & b).flatten(1).sum(1).double()
    size = a.flatten(1).sum(1).double()
    return inter / size.where(size > 0, torch.full_like(size, float("nan")))


def pointing_game(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """1.0 where the position of each map's maximum lies in ``region`` (bool), else 0.0.

    Ties for the maximum go to the first position in row-major order (as torch.argmax); a
    constant map is NaN (it points nowhere).
    """
    flat = maps.flatten(1)
    hit = region.flatten(1).gather(1, flat.argmax(1, keepdim=True)).squeeze(1).double()
    constant = flat.amax(1) == flat.amin(1)
    return hit.where(~constant, torch.full_like(hit, float("nan")))


def relevance_mass(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """sum of a non-negative map inside ``region`` / its total sum (negative values count as 0).

    Equals the region's area fraction for a uniform map; NaN where the map's sum is 0.
    """
    m = maps.flatten(1).double().clamp(min=0)
    total = m.sum(1)
    inside = (m * region.flatten(1)).sum(1)
    return inside / total.where(total > 0, torch.full_like(total, float("nan")))


def pairwise_iou(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """IoU per image of every pair of masks: 'a|b' -> (N,), pairs in the dict's order."""
    names = list(masks)
    return {f"{a}|{b}": iou(masks[a], masks[b]) for i, a in enumerate(names) for b in names[i + 1 :]}


def shuffle_positions(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each map of (N, H, W) with its positions permuted at random (its own permutation per image).

    The null model of the statistics: same values, no spatial arrangement.
    """
    flat = maps.flatten(1)
    order = torch.rand(flat.shape, generator=generator).argsort(1).to(flat.device)
    return flat.gather(1, order).view_as(maps)


CI_METHODS = ("BCa", "percentile")


def bootstrap_ci(
    values: torch.Tensor | np.ndarray,
    seed: int,
    n_resamples: int = 2000,
    method: str = "BCa",
    confidence: float = 0.95,
) -> dict[str, float]:
    """Mean of the finite values and its bootstrap confidence interval (scipy.stats.bootstrap).

    Returns:
        {'mean', 'low', 'high', 'std', 'n'}: low/high are the ``confidence`` interval of the mean
        over images (``method`` 'BCa' or 'percentile', ``n_resamples`` resamples, seeded); an
        interval of a constant sample is the value itself; NaN where n < 2.
    """
    from scipy.stats import bootstrap

    v = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    out = {"mean": float(v.mean()) if n else float("nan"), "low": float("nan"), "high": float("nan")}
    out |= {"std": float(v.std(ddof=1)) if n > 1 else float("nan"), "n": n}
    if n < 2:
        return out
    if np.ptp(v) == 0:  # scipy's BCa is undefined on a constant sample; its interval is the point
        return out | {"low": out["mean"], "high": out["mean"]}
    res = bootstrap(
        (v,),
        np.mean,
        n_resamples=n_resamples,
        method=method,
        confidence_level=confidence,
        vectorized=True,
        **_rng_keyword(bootstrap, np.random.default_rng(seed)),
    )
    return out | {"low": float(res.confidence_interval.low), "high": float(res.confidence_interval.high)}


def _rng_keyword(bootstrap: Any, rng: np.random.Generator) -> dict[str, np.random.Generator]:
    """scipy >= 1.15 names the generator ``rng``; older versions ``random_state``."""
    return {"rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state": rng}
