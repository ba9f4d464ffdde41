"""Fills of a flagged region for the per-input defence: low-rank (truncated SVD) reconstruction and blur.

ODDR (Chattopadhyay et al., arXiv 2311.12084) neutralizes the flagged fragments by a low-rank reconstruction:
a patch is high-rank local structure that a few singular vectors of the image do not carry. Here the flagged
region is first set to the image's mean over the rest (so the patch does not steer the singular vectors),
each channel (H x W) is reconstructed from its ``rank`` largest singular values, and only the flagged
positions take the reconstruction. Written here (torch.linalg.svd, batched) because the fill must run inside
the defended model's forward pass. (To be folded with the other fills of defence/fills.py.)
"""

from __future__ import annotations

import torch

from roiroa.defence.neutralizer import as_mask4d
from roiroa.filters import gaussian_blur
from roiroa.validation import check_number


def truncated_svd(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Each channel of x: (N, C, H, W) as its best rank-``rank`` approximation (Eckart-Young); rank 0 gives 0."""
    check_number("truncated_svd", "rank", rank, low=0, integer=True)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # batched over (N, C)
    r = min(rank, s.shape[-1])
    return (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image and channel mean of x: (N, C, H, W) outside mask (N or 1, 1, H, W) -> (N, C, 1, 1)."""
    keep = 1.0 - mask
    total = keep.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
    return (x * keep).sum(dim=(2, 3), keepdim=True) / total


def lowrank_fill(x: torch.Tensor, mask: torch.Tensor, rank: int = 2) -> torch.Tensor:
    """x with the masked positions replaced by a rank-``rank`` reconstruction (ODDR's fill).

    Args:
        x: (N, C, H, W) in [0, 1].
        mask: (H, W), (N, H, W) or (N or 1, 1, H, W) in {0, 1}, the flagged positions.
        rank: singular values kept per channel.

    Returns:
        (N, C, H, W) in [0, 1], equal to x outside the mask.
    """
    m = as_mask4d(mask).to(x.device, x.dtype)
    prefilled = x * (1 - m) + masked_mean(x, m) * m
    return torch.where(m > 0, truncated_svd(prefilled, rank).clamp(0.0, 1.0), x)


def blur_fill(x: torch.Tensor, mask: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """x with the masked positions replaced by the Gaussian blur of x (differentiable)."""
    m = as_mask4d(mask).to(x.device, x.dtype)
    return torch.where(m > 0, gaussian_blur(x, sigma), x)
