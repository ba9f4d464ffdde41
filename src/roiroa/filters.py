"""Image filters shared by the estimators and the defences (plain torch: differentiable, on any device)."""

from __future__ import annotations

import torch

from roiroa.validation import check_number


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian weights: radius int(truncate * sigma + 0.5), normalized to sum 1."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _symmetric_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Pad by r on both sides of ``dim`` with scipy's 'reflect' rule (d c b a | a b c d | d c b a)."""
    n = x.shape[dim]
    idx = torch.arange(-r, n + r, device=x.device) % (2 * n)
    idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
    return x.index_select(dim, idx)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian blur of each channel, equal to scipy.ndimage.gaussian_filter (mode 'reflect') per image.

    Written in torch (not scipy) so that it is differentiable and runs on the model's device.

    Args:
        x: (N, C, H, W) in [0, 1].
        sigma: standard deviation in pixels, > 0.

    Returns:
        (N, C, H, W) in [0, 1].
    """
    check_number("gaussian_blur", "sigma", sigma, low=0.0, low_open=True)
    k = gaussian_kernel1d(sigma, truncate).to(x.device, x.dtype)
    r = (len(k) - 1) // 2
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = torch.nn.functional.conv2d(_symmetric_pad(flat, r, 3), k.view(1, 1, 1, -1))
    flat = torch.nn.functional.conv2d(_symmetric_pad(flat, r, 2), k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)
