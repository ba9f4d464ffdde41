"""Paired comparisons of two classifiers on the same images, from their per-image correctness flags.

Two defences evaluated on the same n images give paired flags a, b: (n,) bool. Only the discordant images carry
information about which is better: n10 (a right, b wrong) and n01 (a wrong, b right).
- :func:`mcnemar_exact`: McNemar's exact test, two-sided: under H0 (same accuracy) n10 ~ Binomial(n10 + n01,
  1/2) (equal to ``scipy.stats.binomtest(n10, n10 + n01).pvalue``).
- :func:`paired_difference_interval`: the Agresti-Min (2005) interval of acc_a - acc_b (Wald on the 2x2 table
  with 0.5 added to each cell, so it stays honest with no discordant image).
- :func:`equivalence_test`: TOST (two one-sided tests) that |acc_a - acc_b| < margin, and the one-sided
  non-superiority test that acc_a - acc_b < margin ("a is no better than b by more than the margin").
- :func:`bootstrap_difference`: a percentile bootstrap interval of acc_a - acc_b, resampling images (pairs).
- :func:`compare`: all of it as one :class:`~roiroa.results.Comparison`, with its verdict in words.
Accuracy intervals are Wilson's (:func:`roiroa.evaluate.grid.interval`).
"""

from __future__ import annotations

import math

import torch

from roiroa.errors import InputError
from roiroa.evaluate.grid import Z95, interval
from roiroa.results import Comparison

ALPHA = 0.05
MARGIN = 0.02  # the default equivalence margin: 2 points of accuracy
BOOTSTRAP = 2000


def discordant(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(n10, n01): images a gets right and b wrong, and the reverse, of paired flags a, b: (n,) bool."""
    if a.shape != b.shape or a.dim() != 1:
        raise InputError(f"paired flags must both be (n,); got {tuple(a.shape)} and {tuple(b.shape)}.")
    a, b = a.bool().cpu(), b.bool().cpu()
    return int((a & ~b).sum()), int((~a & b).sum())


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact (integer sums; Python divides big integers correctly)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n


def mcnemar_exact(n10: int, n01: int) -> float:
    """Two-sided p-value of McNemar's exact test: 2 P(X <= min(n10, n01)), X ~ Binomial(n10 + n01, 1/2),
    capped at 1 (1.0 with no discordant image)."""
    n = n10 + n01
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf_half(min(n10, n01), n))


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _agresti_min(n10: int, n01: int, n: int) -> tuple[float, float]:
    """The Agresti-Min estimate of acc_a - acc_b and its standard error (0.5 added to each of the 4 cells)."""
    m, b, c = n + 2.0, n10 + 0.5, n01 + 0.5
    diff = (b - c) / m
    se = math.sqrt(max((b + c) / m - diff * diff, 0.0) / m)
    return diff, se


def paired_difference_interval(n10: int, n01: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Agresti-Min interval (95% by default) of acc_a - acc_b from the discordant counts of n pairs."""
    diff, se = _agresti_min(n10, n01, n)
    return max(-1.0, diff - z * se), min(1.0, diff + z * se)


def equivalence_test(n10: int, n01: int, n: int, margin: float) -> tuple[float, float]:
    """(p_equivalent, p_no_better) for paired accuracies differing by d = acc_a - acc_b.

    p_equivalent: TOST p-value of H0 |d| >= margin (small: a and b are equivalent within the margin).
    p_no_better: one-sided p-value of H0 d >= margin (small: a is no better than b by as much as the margin).
    Both use the Agresti-Min standard error.
    """
    if not 0.0 < margin < 1.0:
        raise InputError(f"the equivalence margin must be in (0, 1); got {margin!r}.")
    diff, se = _agresti_min(n10, n01, n)
    p_no_better = normal_sf((margin - diff) / se)
    p_no_worse = normal_sf((diff + margin) / se)
    return max(p_no_better, p_no_worse), p_no_better


def bootstrap_difference(
    a: torch.Tensor, b: torch.Tensor, resamples: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of mean(a) - mean(b), resampling the n image pairs (seeded)."""
    a_f, b_f = a.double().cpu(), b.double().cpu()
    n = len(a_f)
    if n == 0:
        return float("nan"), float("nan")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (resamples, n), generator=gen)
    diffs = (a_f[draws] - b_f[draws]).mean(1)
    low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(low), float(high)


def verdict(diff: float, p_value: float, p_equivalent: float, margin: float) -> str:
    """The comparison in words: 'better (p=0.003)', 'worse (p=...)', 'equivalent within 2 points (p=...)' or
    'not significantly different (p=0.22)'."""
    if p_value < ALPHA:
        return f"{'better' if diff > 0 else 'worse'} (p={p_value:.2g})"
    if p_equivalent < ALPHA:
        return f"equivalent within {100 * margin:g} points (p={p_equivalent:.2g})"
    return f"not significantly different (p={p_value:.2g})"


def compare(
    a: torch.Tensor,
    b: torch.Tensor,
    names: tuple[str, str],
    relation: str,
    where: tuple[str, str],
    margin: float = MARGIN,
    seed: int = 0,
) -> Comparison:
    """Compare paired flags a, b: (n,) bool of ``names`` (a, b) on the same images.

    relation: what b is to a ('undefended', 'control'); where: (setting, attack) of the cells compared.
    """
    n10, n01 = discordant(a, b)
    n = len(a)
    acc_a, acc_b = float(a.double().mean()), float(b.double().mean())
    p_value = mcnemar_exact(n10, n01)
    p_equivalent, p_no_better = equivalence_test(n10, n01, n, margin)
    low, high = paired_difference_interval(n10, n01, n)
    boot = bootstrap_difference(a, b, seed=seed)
    a_ci, b_ci = interval(int(a.sum()), n), interval(int(b.sum()), n)
    return Comparison(
        *names,
        relation,
        *where,
        n,
        acc_a,
        list(a_ci),
        acc_b,
        list(b_ci),
        acc_a - acc_b,
        [low, high],
        list(boot),
        n10,
        n01,
        p_value,
        margin,
        p_equivalent,
        p_no_better,
        verdict(acc_a - acc_b, p_value, p_equivalent, margin),
    )
