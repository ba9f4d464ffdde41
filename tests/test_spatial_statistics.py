"""Dataset statistics on constructed cases with known answers, Moran's I against a dense formula and
exact permutation moments, bootstrap intervals against SciPy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from roiroa.errors import InputError
from roiroa.regions.spatial import (
    moran_permutation_test,
    moran_z,
    morans_i,
    morans_i_moments,
    weight_sums,
)
from roiroa.regions.statistics import (
    bootstrap_ci,
    dice,
    iou,
    pairwise_iou,
    pointing_game,
    relevance_mass,
    share_inside,
    shuffle_positions,
)

pytestmark = pytest.mark.numeric  # float64 statistics against dense formulas, enumeration and SciPy


def dense_weights(h: int, w: int, contiguity: str) -> np.ndarray:
    """The P x P binary contiguity matrix, built position by position (the textbook definition)."""
    p = h * w
    weights = np.zeros((p, p))
    for i, j in itertools.product(range(h), range(w)):
        for di, dj in itertools.product((-1, 0, 1), repeat=2):
            if (di, dj) == (0, 0) or (contiguity == "rook" and di != 0 and dj != 0):
                continue
            a, b = i + di, j + dj
            if 0 <= a < h and 0 <= b < w:
                weights[i * w + j, a * w + b] = 1.0
    return weights


def dense_moran(m: np.ndarray, weights: np.ndarray) -> float:
    z = m.flatten() - m.mean()
    return float(len(z) / weights.sum() * z @ weights @ z / (z @ z))


def checkerboard(h: int, w: int) -> torch.Tensor:
    return ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2).double()


def blob(size: int = 28, sigma: float = 5.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return torch.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * sigma**2)).double()


# --------------------------------------------------------------------------------------------- Moran's I


@pytest.mark.parametrize("shape", [(8, 8), (7, 5), (28, 28)])
def test_checkerboard_rook_is_minus_one(shape):
    # bound: float64 sums of <= 2 * 784 products of one sign (no cancellation): 1568 * 1.1e-16 = 1.7e-13 relative
    assert morans_i(checkerboard(*shape)[None]).item() == pytest.approx(-1.0, abs=1e-12)


def test_checkerboard_queen_matches_dense_and_is_not_minus_one():
    cb = checkerboard(6, 6)
    value = morans_i(cb[None], "queen").item()
    # bound: float64, 36 positions: sums of <= 4 * 36 terms ~0.25 in another order, 144 * 1.1e-16 * (P / S0 <= 1)
    assert value == pytest.approx(dense_moran(cb.numpy(), dense_weights(6, 6, "queen")), abs=1e-12)
    assert -0.5 < value < 0.0  # diagonal neighbours agree, edge neighbours disagree


def test_smooth_blob_is_near_one_and_stripes_are_positive():
    assert morans_i(blob()[None]).item() > 0.95
    assert morans_i(blob()[None], "queen").item() > 0.95
    stripes = (torch.arange(12)[:, None] < 6).double().expand(12, 12)  # two halves
    assert morans_i(stripes[None]).item() > 0.8


@pytest.mark.parametrize("contiguity", ["rook", "queen"])
@pytest.mark.parametrize("shape", [(5, 7), (6, 6), (3, 9)])
def test_morans_i_equals_the_dense_formula(contiguity, shape):
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(4, *shape, generator=gen, dtype=torch.float64) ** 3
    weights = dense_weights(*shape, contiguity)
    got = morans_i(maps, contiguity)
    want = [dense_moran(m.numpy(), weights) for m in maps]
    # bound: float64 sums of <= 4 * 36 products z_i z_j in another order, relative to sum z^2:
    # 144 * 1.1e-16 * P max(z^2) / sum(z^2) (<= 12 for these maps) = 1.9e-13 absolute, worst case
    assert np.abs(got.numpy() - want).max() < 1e-12
    # leading dimensions of any shape (images x permutations): the same sums
    assert np.abs(morans_i(maps.view(2, 2, *shape), contiguity).flatten().numpy() - want).max() < 1e-12


@pytest.mark.parametrize("contiguity", ["rook", "queen"])
def test_weight_sums_match_the_dense_matrix(contiguity):
    w = dense_weights(4, 6, contiguity)
    s0, s1, s2 = weight_sums(4, 6, contiguity)
    assert s0 == w.sum()  # integers in float64: exact (as are s1 and s2; approx is slack)
    assert s1 == pytest.approx(0.5 * ((w + w.T) ** 2).sum())
    assert s2 == pytest.approx(((w.sum(0) + w.sum(1)) ** 2).sum())


def test_constant_and_zero_maps_are_nan():
    maps = torch.stack([torch.zeros(5, 5), torch.full((5, 5), 0.3), checkerboard(5, 5).float()])
    values = morans_i(maps)
    assert values[:2].isnan().all() and values[2].item() == pytest.approx(-1.0)
    assert moran_z(maps)[:2].isnan().all()


@pytest.mark.parametrize("contiguity", ["rook", "queen"])
def test_randomization_moments_equal_full_enumeration(contiguity):
    # every one of the 8! permutations of a 2 x 4 map: the exact mean and variance of I
    gen = torch.Generator().manual_seed(5)
    m = torch.rand(2, 4, generator=gen, dtype=torch.float64) ** 2
    perms = torch.tensor(list(itertools.permutations(range(8))))
    all_i = morans_i(m.flatten()[perms].view(-1, 2, 4), contiguity)
    expected, var = morans_i_moments(m[None], contiguity)
    # bound: float64 mean of 40320 values |I| < 1 by pairwise summation: ~log2(40320) = 16 roundings each,
    # 16 * 1.1e-16 = 1.8e-15 < 1e-12
    assert expected.item() == pytest.approx(all_i.mean().item(), abs=1e-12)
    # bound: the variance (0.02-0.07) is a mean of squared deviations: relative error ~16 * 1.1e-16 plus the
    # mean's, amplified by mean^2 / var (< 1): < 1e-14 relative, 1e-9 is slack
    assert var.item() == pytest.approx(all_i.var(unbiased=False).item(), rel=1e-9)


def test_permutation_test_agrees_with_the_randomization_z_score():
    gen = torch.Generator().manual_seed(0)
    maps = torch.stack([blob(16, 3.0), checkerboard(16, 16), torch.rand(16, 16, generator=gen, dtype=torch.float64)])
    test = moran_permutation_test(maps, permutations=2000, generator=torch.Generator().manual_seed(1))
    analytic = moran_z(maps)
    assert test.z[0] > 10 and test.z[1] < -10  # clustered, dispersed
    assert test.p[0] == pytest.approx(1 / 2001) and test.p[1] == pytest.approx(1 / 2001)
    # not rounding: the z of 2000 permutations estimates the randomization mean and variance, the variance to
    # ~sqrt(2 / 2000) = 3% (relative std): 10% is > 3 std
    np.testing.assert_allclose(test.z.numpy(), analytic.numpy(), rtol=0.1)
    assert abs(test.z[2].item()) < 4 and test.p[2] > 0.001
    # reproducible with the same generator, in chunks of any size: the same permutations, float64 sums of 2000
    # values in another order (2000 * 1.1e-16 = 2e-13 relative), inside assert_close's float64 rtol 1e-7
    again = moran_permutation_test(maps, permutations=2000, generator=torch.Generator().manual_seed(1), chunk=1)
    torch.testing.assert_close(test.z, again.z)


def test_noise_z_scores_are_standard_normal():
    gen = torch.Generator().manual_seed(2)
    z = moran_z(torch.rand(400, 20, 20, generator=gen))
    # not rounding: 400 z-scores: their mean has std 1 / sqrt(400) = 0.05, their std ~1 / sqrt(800) = 0.035, so
    # 0.15 is > 3 std (seeded: these very draws on every machine)
    assert abs(z.mean().item()) < 0.15 and 0.85 < z.std().item() < 1.15


def test_bad_contiguity_and_permutations():
    with pytest.raises(InputError):
        morans_i(torch.rand(1, 4, 4), "bishop")
    with pytest.raises(InputError):
        moran_permutation_test(torch.rand(1, 4, 4), permutations=1)


# --------------------------------------------------------------------------------------------- overlap and agreement


def test_overlap_of_identical_disjoint_and_nested_masks():
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    a[:, :2] = True  # top half
    b = a.clone()
    b[1] = ~a[1]  # image 1: bottom half (disjoint)
    b[2] = False
    b[2, 0] = True  # image 2: the top row (nested in a, a quarter)
    np.testing.assert_allclose(iou(a, b).numpy(), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(dice(a, b).numpy(), [1.0, 0.0, 2 * 4 / 12])
    np.testing.assert_allclose(share_inside(b, a).numpy(), [1.0, 0.0, 1.0])  # all of b inside a
    np.testing.assert_allclose(share_inside(a, b).numpy(), [1.0, 0.0, 0.5])
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert share_inside(empty, a[:1]).isnan().all()
    pairs = pairwise_iou({"x": a, "y": b, "z": a})
    assert list(pairs) == ["x|y", "x|z", "y|z"]
    torch.testing.assert_close(pairs["x|z"], torch.ones(3, dtype=torch.float64))


def test_pointing_game_and_relevance_mass():
    region = torch.zeros(2, 3, 3, dtype=torch.bool)
    region[:, 0] = True  # top row
    maps = torch.zeros(2, 3, 3)
    maps[0, 0, 1] = 5.0  # max in the region
    maps[1, 2, 2] = 5.0  # max outside
    maps[:, 0, 0] += 1.0
    np.testing.assert_allclose(pointing_game(maps, region).numpy(), [1.0, 0.0])
    np.testing.assert_allclose(relevance_mass(maps, region).numpy(), [1.0, 1.0 / 6.0])
    # a uniform map puts the region's area fraction inside it; a constant map points nowhere
    uniform = torch.ones(1, 3, 3)
    assert relevance_mass(uniform, region[:1]).item() == pytest.approx(1 / 3)
    assert pointing_game(uniform, region[:1]).isnan().all()
    assert relevance_mass(torch.zeros(1, 3, 3), region[:1]).isnan().all()


def test_identical_maps_agree_completely():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(5, 8, 8, generator=gen)
    roi = a >= a.flatten(1).quantile(0.8, dim=1).view(-1, 1, 1)
    assert (pointing_game(a, roi) == 1).all()
    assert (relevance_mass(a, roi) > 0.2).all()


def test_shuffle_positions_is_a_seeded_permutation_per_image():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 6, 6, generator=gen)
    s1 = shuffle_positions(maps, torch.Generator().manual_seed(1))
    s2 = shuffle_positions(maps, torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1, s2)
    assert not torch.equal(s1, maps)
    for m, s in zip(maps, s1, strict=True):
        torch.testing.assert_close(m.flatten().sort().values, s.flatten().sort().values)
    # the shuffled map has no spatial structure left: a blob becomes noise
    shuffled_blob = shuffle_positions(blob(20, 3.0)[None].repeat(50, 1, 1), gen)
    # not rounding: I of a shuffled 20 x 20 map has mean -1/399 and std ~1/20, so the mean of 50 has std 0.007
    assert abs(morans_i(shuffled_blob).mean().item()) < 0.05


# --------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_bootstrap_ci_equals_scipy(method):
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, size=150)
    got = bootstrap_ci(torch.from_numpy(values), seed=7, n_resamples=999, method=method)
    ref = stats.bootstrap(
        (values,), np.mean, n_resamples=999, method=method, rng=np.random.default_rng(7), vectorized=True
    )
    # bound: the same SciPy call with the same generator: equal up to float64 ulps (1e-16)
    assert got["low"] == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert got["high"] == pytest.approx(ref.confidence_interval.high, rel=1e-12)
    assert got["mean"] == pytest.approx(values.mean()) and got["n"] == 150
    assert got["std"] == pytest.approx(values.std(ddof=1))
    assert got["low"] < got["mean"] < got["high"]


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(100):
        ci = bootstrap_ci(rng.exponential(1.0, size=60), seed=i, n_resamples=500, method="percentile")
        hits += ci["low"] <= 1.0 <= ci["high"]
    # not rounding: ~Binomial(100, 0.95) (percentile intervals of n = 60 undercover a little): std 2.2, 85 is
    # 4.5 std below (seeded: these very samples on every machine)
    assert 85 <= hits <= 100


def test_bootstrap_ci_edge_cases():
    nan = float("nan")
    ci = bootstrap_ci(np.array([0.5, nan, 0.5, 0.5]), seed=0)
    assert ci == {"mean": 0.5, "low": 0.5, "high": 0.5, "std": 0.0, "n": 3}  # NaN dropped, constant sample
    one = bootstrap_ci(np.array([0.3]), seed=0)
    assert one["mean"] == 0.3 and math.isnan(one["low"]) and one["n"] == 1
    assert bootstrap_ci(np.array([]), seed=0)["n"] == 0


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "section",
    [{"ci_method": "bogus"}, {"contiguity": "bishop"}, {"bootstrap": 10}, {"seed_models": -1}, {"restarts": "no"}],
)
def test_statistics_config_is_checked(section):
    from roiroa.evaluate.validate import config_from_dict

    with pytest.raises(InputError):
        config_from_dict({"statistics": section})


def test_statistics_config_defaults_and_round_trip():
    from roiroa.evaluate.config import Config as RunConfig
    from roiroa.evaluate.validate import config_from_dict

    config = config_from_dict({"statistics": {"ci_method": "percentile", "seed_models": 2}})
    assert config.statistics.ci_method == "percentile" and config.statistics.seed_models == 2
    assert config_from_dict(config.to_dict()) == config
    assert RunConfig().statistics.ci_method == "BCa" and RunConfig().statistics.seed_models == 0
