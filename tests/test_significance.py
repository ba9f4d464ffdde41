"""Paired comparisons: McNemar's exact test, the Agresti-Min interval, TOST equivalence, the paired bootstrap."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from roiroa.errors import InputError
from roiroa.evaluate.grid import interval
from roiroa.evaluate.significance import (
    bootstrap_difference,
    compare,
    discordant,
    equivalence_test,
    mcnemar_exact,
    paired_difference_interval,
)


def flags(n10: int, n01: int, n11: int, n00: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired flags with the given 2x2 counts (a right/wrong x b right/wrong)."""
    a = [True] * n10 + [False] * n01 + [True] * n11 + [False] * n00
    b = [False] * n10 + [True] * n01 + [True] * n11 + [False] * n00
    return torch.tensor(a), torch.tensor(b)


@pytest.mark.parametrize(
    ("n10", "n01", "expected"),
    [(0, 0, 1.0), (1, 5, 14 / 64), (5, 1, 14 / 64), (0, 5, 2 / 32), (3, 3, 1.0), (0, 1, 1.0), (10, 0, 2 / 1024)],
)
def test_mcnemar_hand_cases(n10: int, n01: int, expected: float) -> None:
    """Hand-computed: 1 vs 5 discordant images is p = 2 * (1 + 6) / 2^6 = 0.219 (the README's 'worse' claim)."""
    assert mcnemar_exact(n10, n01) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("n10", "n01"), [(1, 5), (7, 19), (40, 61), (250, 300), (0, 30), (12, 12)])
def test_mcnemar_matches_scipy_binomtest(n10: int, n01: int) -> None:
    expected = stats.binomtest(n10, n10 + n01, 0.5).pvalue
    assert mcnemar_exact(n10, n01) == pytest.approx(expected, rel=1e-9)


def test_discordant_counts_and_raises() -> None:
    a, b = flags(4, 2, 10, 3)
    assert discordant(a, b) == (4, 2)
    with pytest.raises(InputError, match="paired flags"):
        discordant(a, b[:-1])


def _agresti_min_reference(n10: int, n01: int, n: int) -> tuple[float, float]:
    """Agresti & Min (2005), written from the 2x2 table with 0.5 added to every cell."""
    cells = [n10 + 0.5, n01 + 0.5]
    total = n + 2.0
    p10, p01 = cells[0] / total, cells[1] / total
    diff = p10 - p01
    return diff, math.sqrt((p10 + p01 - diff**2) / total)


@pytest.mark.parametrize(("n10", "n01", "n"), [(0, 0, 100), (1, 5, 100), (30, 12, 500), (3, 1, 40)])
def test_interval_and_equivalence_match_normal_theory(n10: int, n01: int, n: int) -> None:
    diff, se = _agresti_min_reference(n10, n01, n)
    z = stats.norm.ppf(0.975)
    low, high = paired_difference_interval(n10, n01, n)
    assert (low, high) == pytest.approx((max(-1, diff - z * se), min(1, diff + z * se)), abs=1e-12)
    margin = 0.05
    p_eq, p_nb = equivalence_test(n10, n01, n, margin)
    upper, lower = stats.norm.sf((margin - diff) / se), stats.norm.sf((diff + margin) / se)
    assert p_nb == pytest.approx(upper, rel=1e-9, abs=1e-15)
    assert p_eq == pytest.approx(max(upper, lower), rel=1e-9, abs=1e-15)


def test_equivalence_raises_on_bad_margin() -> None:
    with pytest.raises(InputError, match="margin"):
        equivalence_test(1, 1, 10, 0.0)


def test_bootstrap_matches_scipy_paired_bootstrap() -> None:
    """Same estimator, different draws: the intervals agree within the Monte Carlo error (~0.01 at n=400)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(400, generator=gen) < 0.7
    b = torch.rand(400, generator=gen) < 0.6
    low, high = bootstrap_difference(a, b, resamples=4000, seed=1)
    ref = stats.bootstrap(
        (a.double().numpy(), b.double().numpy()),
        lambda u, v: u.mean() - v.mean(),
        paired=True,
        vectorized=False,
        n_resamples=4000,
        method="percentile",
        random_state=0,
    ).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.015)
    assert high == pytest.approx(ref.high, abs=0.015)
    assert low < float(a.double().mean() - b.double().mean()) < high


def test_compare_fields_and_verdicts() -> None:
    a, b = flags(1, 5, 80, 14)  # the README's "worse than no defence": not significant
    c = compare(a, b, ("global", "none"), "undefended", ("adaptive", "pgd"))
    assert (c.n10, c.n01, c.n_images) == (1, 5, 100)
    assert c.diff == pytest.approx(-0.04)
    assert c.acc_a_ci == pytest.approx(list(interval(81, 100)))
    assert c.verdict == "not significantly different (p=0.22)"
    better = compare(*flags(20, 2, 60, 18), ("x", "y"), "control", ("clean", "none"))
    assert better.verdict.startswith("better (p=")
    assert better.p_value == pytest.approx(stats.binomtest(2, 22).pvalue)
    worse = compare(*flags(2, 20, 60, 18), ("x", "y"), "control", ("clean", "none"))
    assert worse.verdict.startswith("worse")
    same = compare(*flags(2, 2, 400, 96), ("x", "y"), "control", ("clean", "none"))
    assert same.verdict.startswith("equivalent within 2 points")
