"""Input normalization inside the model, so attacks, budgets and maps stay in [0, 1] pixel space."""

from __future__ import annotations

import math
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

# The smallest std accepted. Real channels of [0, 1] images have std 0.05-0.5; a std of 1e-6 already
# turns a pixel step of 1/255 into 4e3, and far smaller ones (1e-50 is 0 in float32) overflow to inf.
MIN_STD = 1e-6
_FIX = (
    "give the training images' per-channel mean and std in [0, 1] pixel units (model.mean and model.std, "
    "--mean/--std) or a preset (model.normalization, --normalization imagenet)"
)


def check_normalization(mean: Sequence[float], std: Sequence[float]) -> None:
    """Raise one InputError line unless ``Normalized`` with this mean and std gives finite float32 inputs.

    Args:
        mean: per-channel means of [0, 1] pixels, C values (C >= 1), finite.
        std: per-channel standard deviations, as many as ``mean``, finite and at least ``MIN_STD`` (1e-6),
            such that (x - mean) / std stays below the float32 maximum (3.4e38) for x in [0, 1].
    """
    if len(mean) != len(std) or not mean:
        raise InputError(f"normalization: mean {list(mean)} and std {list(std)} need the same number of values.")
    for name, values in (("mean", mean), ("std", std)):
        bad = [float(v) for v in values if not math.isfinite(float(v))]
        if bad:
            raise InputError(f"normalization: {name} holds {bad[0]} ({list(values)}), not a finite number; {_FIX}.")
    if any(float(s) <= 0 for s in std):
        raise InputError(f"normalization: every std must be positive; got {list(std)}; {_FIX}.")
    small = [float(s) for s in std if float(s) < MIN_STD]
    if small:
        raise InputError(
            f"normalization: std {small[0]:g} is below {MIN_STD:g}: the normalized pixels would be huge or "
            f"overflow to inf; {_FIX}."
        )
    largest = max(max(abs(float(m)), abs(1 - float(m))) / float(s) for m, s in zip(mean, std, strict=True))
    if largest >= torch.finfo(torch.float32).max:
        raise InputError(f"normalization: mean {list(mean)} and std {list(std)} overflow float32 pixels; {_FIX}.")


class Normalized(nn.Module):
    """``model((x - mean) / std)``: a model that takes pixels in [0, 1].

    Args:
        model: the network as it was trained, on normalized inputs.
        mean: per-channel means, C values (or one value for every channel).
        std: per-channel standard deviations, finite and at least ``MIN_STD`` (1e-6), as many as ``mean``.

    ``forward(x)``: x (N, C, H, W) in [0, 1] -> logits (N, K). Differentiable in x, so gradient
    attacks through it take their steps and budgets in pixel space.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        check_normalization(mean, std)
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
    """(mean, std) of a preset name ('cifar10', 'imagenet', 'none'), or the explicit values; None = no normalization.

    Explicit values are checked by :func:`check_normalization` (finite, std >= 1e-6).
    """
    if (mean is None) != (std is None):
        raise InputError("normalization: give both mean and std, or neither.")
    if mean is not None and std is not None:
        if preset not in (None, "none"):
            raise InputError(f"normalization: give either the preset {preset!r} or mean and std, not both.")
        check_normalization(mean, std)
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if preset in (None, "none"):
        return None
    if preset not in NORMALIZATIONS:
        raise InputError(
            f"unknown normalization {preset!r}; choose one of: none, {', '.join(NORMALIZATIONS)}, or give mean and std."
        )
    return NORMALIZATIONS[preset]
