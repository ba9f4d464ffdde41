"""Spatial autocorrelation of maps on the pixel grid: Moran's I with rook or queen contiguity.

    I = (P / S0) * sum_ij w_ij z_i z_j / sum_i z_i^2,   z = map - its mean,  S0 = sum_ij w_ij,

with binary weights w_ij = 1 where pixels i and j touch (rook: share an edge; queen: an edge or a
corner). I is near 1 for smooth maps (neighbours alike), near -1/(P-1) for spatial noise, and -1
for a checkerboard with rook weights.

Written here rather than taken from esda/PySAL (not dependencies, and they loop over one map at a
time with a sparse P x P matrix): on a grid every weight is a shift, so the cross sum is a sum of
products of shifted copies, vectorized over images, permutations and devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from roiroa.validation import check_choice, check_number

# Half of the neighbour offsets (dy, dx) of each contiguity; the other half are their negatives.
CONTIGUITY: dict[str, tuple[tuple[int, int], ...]] = {
    "rook": ((0, 1), (1, 0)),
    "queen": ((0, 1), (1, 0), (1, 1), (1, -1)),
}


def _pairs(z: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two aligned views of z (..., H, W) whose elementwise pairs are neighbours at offset (dy, dx >= -W)."""
    h, w = z.shape[-2:]
    a = z[..., : h - dy, max(0, -dx) : w - max(0, dx)]
    b = z[..., dy:, max(0, dx) : w - max(0, -dx)]
    return a, b


def weight_sums(height: int, width: int, contiguity: str = "rook") -> tuple[float, float, float]:
    """(S0, S1, S2) of the binary symmetric contiguity weights of a height x width grid.

    S0 = sum_ij w_ij, S1 = 1/2 sum_ij (w_ij + w_ji)^2, S2 = sum_i (sum_j w_ij + sum_j w_ji)^2.
    """
    check_choice("weight_sums", "contiguity", contiguity, CONTIGUITY)
    degree = torch.zeros(height, width, dtype=torch.float64)
    for dy, dx in CONTIGUITY[contiguity]:
        a, b = _pairs(degree, dy, dx)  # views: every pair (i, j) adds a neighbour to i and to j
        a += 1.0
        b += 1.0
    s0 = float(degree.sum())
    return s0, 2.0 * s0, float((4.0 * degree**2).sum())


def morans_i(maps: torch.Tensor, contiguity: str = "rook") -> torch.Tensor:
    """Moran's I of each map.

    Args:
        maps: (..., H, W) real; any leading shape (images, permutations).
        contiguity: 'rook' or 'queen'.

    Returns:
        (...) float64; NaN for a constant map.
    """
    check_choice("morans_i", "contiguity", contiguity, CONTIGUITY)
    h, w = maps.shape[-2:]
    z = maps.double()
    z = z - z.mean(dim=(-2, -1), keepdim=True)
    cross = torch.zeros(maps.shape[:-2], dtype=torch.float64, device=maps.device)
    for dy, dx in CONTIGUITY[contiguity]:
        a, b = _pairs(z, dy, dx)
        cross += 2.0 * (a * b).sum(dim=(-2, -1))
    s0 = weight_sums(h, w, contiguity)[0]
    var = (z * z).sum(dim=(-2, -1))
    # relative test: a map whose spread is rounding noise around a constant is constant
    scale = maps.double().abs().amax(dim=(-2, -1)) ** 2 * h * w
    constant = var <= 1e-24 * scale.clamp(min=1e-300)
    value = (h * w / s0) * cross / var.where(~constant, torch.ones_like(var))
    return value.where(~constant, torch.full_like(value, float("nan")))


def morans_i_moments(maps: torch.Tensor, contiguity: str = "rook") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of Moran's I over all permutations of each map's values (Cliff and Ord's
    randomization moments). maps: (N, H, W) -> ((N,), (N,)) float64."""
    h, w = maps.shape[-2:]
    n = h * w
    s0, s1, s2 = weight_sums(h, w, contiguity)
    z = maps.flatten(1).double()
    z = z - z.mean(1, keepdim=True)
    m2 = (z**2).sum(1)
    kurt = n * (z**4).sum(1) / m2.where(m2 > 0, torch.ones_like(m2)) ** 2
    expected = torch.full_like(m2, -1.0 / (n - 1))
    a = n * ((n * n - 3 * n + 3) * s1 - n * s2 + 3 * s0 * s0)
    b = kurt * ((n * n - n) * s1 - 2 * n * s2 + 6 * s0 * s0)
    var = (a - b) / ((n - 1) * (n - 2) * (n - 3) * s0 * s0) - expected**2
    return expected, var


def moran_z(maps: torch.Tensor, contiguity: str = "rook") -> torch.Tensor:
    """z-score of each map's Moran's I against all permutations of its positions:
    (I - E[I]) / sqrt(Var[I]) with the exact randomization moments. maps: (N, H, W) -> (N,) float64.

    The same quantity that :func:`moran_permutation_test` estimates by sampling, without the sampling
    cost (a run has thousands of maps).
    """
    expected, var = morans_i_moments(maps, contiguity)
    return (morans_i(maps, contiguity) - expected) / var.sqrt()


@dataclass(frozen=True)
class MoranPermutationTest:
    """Moran's I of each map and its permutation test; all (N,) float64.

    i: Moran's I. z: (i - mean of the permuted I) / their std. p: two-sided permutation p-value,
    (1 + #{|I_perm - mean| >= |i - mean|}) / (1 + permutations). NaN for constant maps.
    """

    i: torch.Tensor
    z: torch.Tensor
    p: torch.Tensor


def moran_permutation_test(
    maps: torch.Tensor,
    contiguity: str = "rook",
    permutations: int = 99,
    generator: torch.Generator | None = None,
    chunk: int = 64,
) -> MoranPermutationTest:
    """Moran's I of each map (N, H, W) with its z-score against ``permutations`` random permutations
    of the map's positions (the same seeded permutations for every image; each image's test is valid)."""
    check_number("moran_permutation_test", "permutations", permutations, low=2, integer=True)
    check_number("moran_permutation_test", "chunk", chunk, low=1, integer=True)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n, h, w = maps.shape
    perms = torch.rand(permutations, h * w, generator=gen).argsort(1).to(maps.device)  # (B, P)
    observed = morans_i(maps, contiguity)
    z = torch.empty_like(observed)
    p = torch.empty_like(observed)
    for start in range(0, n, chunk):
        flat = maps[start : start + chunk].flatten(1)  # (c, P)
        permuted = flat[:, perms].view(flat.shape[0], permutations, h, w)  # (c, B, H, W)
        null = morans_i(permuted, contiguity)  # (c, B)
        mean, std = null.mean(1), null.std(1)
        obs = observed[start : start + chunk]
        z[start : start + chunk] = (obs - mean) / std
        extreme = ((null - mean[:, None]).abs() >= (obs - mean).abs()[:, None]).sum(1)
        p[start : start + chunk] = (1.0 + extreme) / (1.0 + permutations)
    nan = observed.isnan()
    return MoranPermutationTest(observed, z.masked_fill(nan, float("nan")), p.masked_fill(nan, float("nan")))
