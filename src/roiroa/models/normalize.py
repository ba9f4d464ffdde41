"""Input normalization inside the model, so attacks, budgets and maps stay in [0, 1] pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn

from roiroa.errors import InputError

# Per-channel (mean, std) of the training images of each preset.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # The CIFAR-10 training set's own statistics (50,000 images; std over all pixels of a channel).
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # The ImageNet statistics used by torchvision's models (and by many CIFAR checkpoints, such as
    # akamaster's ResNets in ../shared/data/models).
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class Normalized(nn.Module):
    """``model((x - mean) / std)``: a model that takes pixels in [0, 1].

    Args:
        model: the network as it was trained, on normalized inputs.
        mean: per-channel means, C values (or one value for every channel).
        std: per-channel standard deviations, positive, as many as ``mean``.

    ``forward(x)``: x (N, C, H, W) in [0, 1] -> logits (N, K). Differentiable in x, so gradient
    attacks through it take their steps and budgets in pixel space.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise InputError(f"normalization: mean {list(mean)} and std {list(std)} need the same number of values.")
        if any(s <= 0 for s in std):
            raise InputError(f"normalization: every std must be positive; got {list(std)}.")
        self.model = model
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((checked_channels(x, self.mean) - self.mean) / self.std)


def checked_channels(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x itself, after checking that the per-channel ``values`` (1, C', 1, 1) fit its C channels."""
    if values.shape[1] not in (1, x.shape[1]):
        raise InputError(
            f"normalization has {values.shape[1]} channel values but the images have {x.shape[1]} channels: "
            "give one mean/std per channel."
        )
    return x


# torch.fx records the check as one call instead of tracing into it (its test needs real shapes);
# the incremental occlusion (roiroa.maps.incremental) knows it acts on each position separately.
fx.wrap("checked_channels")


def normalization_values(
    preset: str | None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of a preset name ('cifar10', 'imagenet', 'none'), or the explicit values; None = no normalization."""
    if (mean is None) != (std is None):
        raise InputError("normalization: give both mean and std, or neither.")
    if mean is not None and std is not None:
        if preset not in (None, "none"):
            raise InputError(f"normalization: give either the preset {preset!r} or mean and std, not both.")
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if preset in (None, "none"):
        return None
    if preset not in NORMALIZATIONS:
        raise InputError(
            f"unknown normalization {preset!r}; choose one of: none, {', '.join(NORMALIZATIONS)}, or give mean and std."
        )
    return NORMALIZATIONS[preset]
