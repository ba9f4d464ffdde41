"""Input-transformation baselines (feature squeezing, JPEG, blur) and PGD adversarial training.

Each transform maps x: (N, C, H, W) in [0, 1] to the same shape and range, and is checked against ART's
preprocessors (FeatureSqueezing, SpatialSmoothing, JpegCompression) or SciPy (gaussian_filter) in the tests.
:class:`Preprocessed` wraps f and a transform into the defended model f o T; a transform without a useful
gradient (bit depth, median, JPEG) is passed with BPDA (identity backward), the blur with its exact gradient.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from roiroa.attacks.gradient import LinfPGD
from roiroa.defence.adaptive import box_mean, bpda, soft_bit_depth
from roiroa.errors import InputError
from roiroa.filters import gaussian_blur
from roiroa.registry import Registry
from roiroa.validation import check_number


def bit_depth(x: torch.Tensor, bits: int = 3) -> torch.Tensor:
    """Round each value to one of 2**bits levels (ART FeatureSqueezing; round half to even like np.rint)."""
    check_number("bit_depth", "bits", bits, low=1, high=16, integer=True)
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def median_smoothing(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Median over a size x size window of each channel, scipy.ndimage.median_filter (mode 'reflect'), as ART's
    SpatialSmoothing does. On the CPU SciPy's C filter is faster than unfolding in torch; on a GPU the images
    stay on the device (:func:`median_unfold`, the same values)."""
    check_number("median_smoothing", "size", size, low=1, integer=True)
    if x.device.type != "cpu":
        return median_unfold(x, size)
    from scipy import ndimage  # imported where it is used (a cached run never needs it)

    out = ndimage.median_filter(x.detach().cpu().numpy(), size=(1, 1, size, size), mode="reflect")
    return torch.from_numpy(out).to(x.device, x.dtype)


def median_unfold(x: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`median_smoothing` in torch: x (N, C, H, W) padded by mirroring with the edge repeated (SciPy's
    'reflect'), each size x size window's median (of an even window, the value at rank size*size // 2 from 0,
    the upper middle one, as SciPy's rank filter picks)."""
    before, after = size // 2, (size - 1) // 2  # SciPy centres an even window at offset size // 2
    rows = _symmetric_index(x.shape[-2], before, after, x.device)
    cols = _symmetric_index(x.shape[-1], before, after, x.device)
    padded = x[..., rows, :][..., cols]
    windows = padded.unfold(-2, size, 1).unfold(-2, size, 1).flatten(-2)  # (N, C, H, W, size * size)
    return windows.sort(-1).values[..., size * size // 2]


def _symmetric_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-n axis padded by ``before`` and ``after`` mirrored positions (d c b a | a b c d)."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def jpeg(x: torch.Tensor, quality: int = 50) -> torch.Tensor:
    """JPEG-compress each image with Pillow at ``quality`` (ART JpegCompression: values * 255 truncated to uint8,
    mode 'RGB' for 3 channels, else each channel as 'L')."""
    check_number("jpeg", "quality", quality, low=1, high=95, integer=True)
    from PIL import Image

    arr = (x.detach().cpu().numpy() * 255).astype(np.uint8)  # truncation, as ART
    out = np.empty_like(arr)

    def compress(img: np.ndarray, mode: str) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img, mode=mode).save(buf, format="jpeg", quality=quality)
        return np.array(Image.open(buf))

    for i in range(len(arr)):
        if arr.shape[1] == 3:
            out[i] = compress(arr[i].transpose(1, 2, 0), "RGB").transpose(2, 0, 1)
        else:
            for c in range(arr.shape[1]):
                out[i, c] = compress(arr[i, c], "L")
    return torch.from_numpy(out.astype(np.float32) / 255.0).to(x.device, x.dtype)


def blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur (equal to scipy.ndimage.gaussian_filter, mode 'reflect'); differentiable."""
    return gaussian_blur(x, sigma)


class Transform(Protocol):
    """An input transformation T: x (N, C, H, W) in [0, 1] -> the same shape and range.

    ``differentiable`` (default False) says whether an adaptive attack may use T's own gradient; otherwise it
    goes through T with BPDA (identity backward).
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


BASELINES: Registry[Transform] = Registry("transform")


@BASELINES.register("bit_depth")
@dataclass(frozen=True)
class BitDepth:
    """Feature squeezing by bit depth (Xu et al. 2018): ``bits`` bits per value. Default 3."""

    bits: int = 3
    differentiable = False

    def __post_init__(self) -> None:
        check_number("bit_depth", "bits", self.bits, low=1, high=16, integer=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return bit_depth(x, self.bits)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth surrogate of BPDA: sigmoid steps at the rounding thresholds, 0.1 level wide."""
        return soft_bit_depth(x, self.bits, 0.1)


@BASELINES.register("median")
@dataclass(frozen=True)
class MedianSmoothing:
    """Median smoothing over a size x size window (feature squeezing). Default 3."""

    size: int = 3
    differentiable = False

    def __post_init__(self) -> None:
        check_number("median", "size", self.size, low=1, integer=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return median_smoothing(x, self.size)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth surrogate of BPDA: the mean over the same window."""
        return box_mean(x, self.size)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The same values in torch (:func:`median_unfold`), differentiable almost everywhere: the gradient of each
        output reaches the input pixel that is its window's median."""
        return median_unfold(x, self.size)


@BASELINES.register("jpeg")
@dataclass(frozen=True)
class Jpeg:
    """JPEG compression at ``quality`` (Dziugaite et al. 2016; Guo et al. 2018). Default 50."""

    quality: int = 50
    differentiable = False

    def __post_init__(self) -> None:
        check_number("jpeg", "quality", self.quality, low=1, high=95, integer=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg(x, self.quality)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth surrogate of BPDA: a Gaussian blur of 0.5 pixel (JPEG drops high frequencies)."""
        return blur(x, 0.5)


@BASELINES.register("blur")
@dataclass(frozen=True)
class Blur:
    """Gaussian blur with ``sigma`` pixels; its gradient is exact. Default 1.0."""

    sigma: float = 1.0
    differentiable = True

    def __post_init__(self) -> None:
        check_number("blur", "sigma", self.sigma, low=0.0, low_open=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.sigma)


def has_surrogate(transform: Transform) -> bool:
    """True for a transform without its own gradient that offers a smooth ``surrogate(x)`` for BPDA."""
    return not getattr(transform, "differentiable", False) and callable(getattr(transform, "surrogate", None))


def has_exact(transform: Transform) -> bool:
    """True for a transform without its own gradient that offers ``exact(x)``: the same values, computed in a way
    autograd differentiates (the median through a sort), for an adaptive attack without BPDA."""
    return not getattr(transform, "differentiable", False) and callable(getattr(transform, "exact", None))


def describe_transform(transform: Transform) -> str:
    """'name(param=value, ...)' of a transform dataclass, or its class name."""
    params: dict[str, Any] = asdict(transform) if is_dataclass(transform) and not isinstance(transform, type) else {}
    name = type(transform).__name__
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


class Preprocessed(nn.Module):
    """f o T: an input transformation, then the classifier: the one preprocessed-model class.

    The backward pass is exact for a differentiable transform (``transform.differentiable``) and BPDA otherwise:
    with the identity, or (``backward='surrogate'``) with the transform's smooth ``surrogate(x)``, so an attack
    crafted through this module is the adaptive attack on the baseline.

    Args:
        model: f, logits (N, K) from (N, C, H, W) in [0, 1].
        transform: a :class:`Transform` (e.g. ``BASELINES.create('jpeg', quality=50)``).
        backward: 'identity' (default), 'surrogate' (needs ``transform.surrogate``) or 'exact' (the transform's
            own differentiable form, ``transform.exact``: the median through a sort).
    """

    def __init__(self, model: nn.Module, transform: Transform, backward: str = "identity") -> None:
        super().__init__()
        offered = {"identity": True, "surrogate": has_surrogate(transform), "exact": has_exact(transform)}
        if not offered.get(backward, False):
            raise InputError(
                f"backward must be 'identity', or 'surrogate' or 'exact' where the transform has it; got {backward!r}."
            )
        self.model, self.transform, self.backward = model, transform, backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, K) of f(T(x))."""
        if getattr(self.transform, "differentiable", False):
            return self.model(self.transform(x))
        if self.backward == "exact":
            return self.model(self.transform.exact(x))  # type: ignore[attr-defined]
        surrogate = self.transform.surrogate if self.backward == "surrogate" else None  # type: ignore[attr-defined]
        return self.model(bpda(x, self.transform, surrogate))

    def masks(self, x: torch.Tensor) -> torch.Tensor | None:
        """(N, H, W) bool: the positions the transform acts on, where it says (``transform.flagged``), else None."""
        flagged = getattr(self.transform, "flagged", None)
        return flagged(x.detach()) if callable(flagged) else None


@dataclass(frozen=True)
class AdversarialTraining:
    """Madry et al. (2018) PGD adversarial training as a batch transform of the training loop.

    ``transform(model, xb, yb)`` replaces every training batch by its PGD L-inf adversarial images.

    Args:
        eps: L-inf budget. Default 0.15.
        steps: PGD steps per batch. Default 7.
        step_size: absolute step; None means 2.5 * eps / steps.
    """

    eps: float = 0.15
    steps: int = 7
    step_size: float | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attack = LinfPGD(eps=self.eps, steps=self.steps, step_size=self.step_size, batch_size=max(1, len(x)))
        return attack._attack_chunk(model, x, y, None)

    def params(self) -> dict[str, Any]:
        """The recipe for the model cache key and the tables."""
        return {"method": "pgd-linf-madry", **asdict(self)}
