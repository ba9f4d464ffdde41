"""Gradient attributions: input x gradient and integrated gradients, folded over channels.

Channels fold into one value per position with ``reduce``: 'sum' keeps the sign and the
completeness of integrated gradients (the map sums to f_y(x) - f_y(baseline)); 'max' and 'l2'
fold the absolute values as :class:`~roiroa.maps.saliency.Saliency` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from roiroa.maps.baselines import Baseline, baseline_images, check_baseline
from roiroa.maps.registry import register_estimator
from roiroa.utils import batch_slices, model_device
from roiroa.validation import check_choice, check_images, check_labels, check_number

Reduce = Literal["sum", "max", "l2"]
REDUCES = ("sum", "max", "l2")
IGMethod = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def reduce_channels(attr: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): sum over channels (signed), max |.|, or L2."""
    if reduce == "sum":
        return attr.sum(1)
    if reduce == "max":
        return attr.abs().amax(1)
    return attr.norm(dim=1)


def logit_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The true-class logits (N,) of x: (N, C, H, W) and their gradient w.r.t. x: (N, C, H, W).

    The model's parameter gradients are left untouched.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logit = model(xg).gather(1, y[:, None])[:, 0]
        (grad,) = torch.autograd.grad(logit.sum(), xg)
    return logit.detach(), grad


@register_estimator("input-x-gradient")
@dataclass(kw_only=True)
class InputXGradient:
    """x * d logit_y / d x (Shrikumar et al. 2016), folded over channels.

    Args:
        reduce: 'sum' (signed, default), 'max' |.| or 'l2' over channels.
        batch_size: images per backward pass. Default 64.
    """

    reduce: Reduce = "sum"
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_choice("InputXGradient", "reduce", self.reduce, REDUCES)
        check_number("InputXGradient", "batch_size", self.batch_size, low=1, integer=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attribution (N, H, W) of x: (N, C, H, W) in [0, 1] for classes y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        device = model_device(model)
        out = []
        for s in batch_slices(len(x), self.batch_size):
            xb = x[s].to(device)
            _, grad = logit_gradient(model, xb, y[s].to(device))
            out.append(reduce_channels(xb * grad, self.reduce).to(x.device))
        return torch.cat(out)


def ig_nodes(steps: int, method: IGMethod) -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha in [0, 1] and weights of the path integral, as Captum's approximation methods."""
    if method == "gausslegendre":
        nodes, gl_weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * gl_weights)
    if steps < 2:
        raise ValueError("Riemann methods need steps >= 2")
    n = steps
    alphas = {
        "riemann_trapezoid": torch.linspace(0, 1, n),
        "riemann_left": torch.linspace(0, 1 - 1 / n, n),
        "riemann_middle": torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n),
        "riemann_right": torch.linspace(1 / n, 1, n),
    }[method]
    weights = torch.full((n,), 1 / n, dtype=torch.float64)
    if method == "riemann_trapezoid":  # Captum halves the end weights (they sum to (n - 1) / n)
        weights[0] /= 2
        weights[-1] /= 2
    return alphas.double(), weights


@dataclass(frozen=True)
class IGResult:
    """Integrated gradients of N images.

    Attributes:
        maps: (N, H, W) folded over channels.
        attributions: (N, C, H, W) before folding.
        completeness_error: (N,) sum of the attributions minus (logit_y(x) - logit_y(baseline));
            small when ``steps`` suffice.
    """

    maps: torch.Tensor
    attributions: torch.Tensor
    completeness_error: torch.Tensor


@register_estimator("integrated-gradients")
@dataclass(kw_only=True)
class IntegratedGradients:
    """Integrated gradients of the true-class logit (Sundararajan et al. 2017), as Captum computes them.

    (x - b) * sum_i w_i d logit_y / dx at b + alpha_i (x - b), with the nodes alpha_i and weights
    w_i of ``method``. Call :meth:`attribute` to get the completeness error as well; ``__call__``
    keeps the last one in ``completeness_error_``.

    Args:
        steps: points on the path. Default 50.
        baseline: 'zero', 'mean', 'blur' or a number in [0, 1]. Default 'zero'.
        method: 'gausslegendre' (default, as Captum) or 'riemann_left|right|middle|trapezoid'.
        reduce: 'sum' (signed, default), 'max' or 'l2' over channels.
        batch_size: path points per backward pass. Default 256.
        blur_sigma: std of the 'blur' baseline in pixels. Default 2.0.
    """

    steps: int = 50
    baseline: Baseline = "zero"
    method: IGMethod = "gausslegendre"
    reduce: Reduce = "sum"
    batch_size: int = 256
    blur_sigma: float = 2.0

    def __post_init__(self) -> None:
        owner = "IntegratedGradients"
        check_choice(owner, "method", self.method, IG_METHODS)
        check_number(owner, "steps", self.steps, low=1 if self.method == "gausslegendre" else 2, integer=True)
        check_baseline(owner, self.baseline, self.blur_sigma)
        check_choice(owner, "reduce", self.reduce, REDUCES)
        check_number(owner, "batch_size", self.batch_size, low=1, integer=True)
        self.completeness_error_: torch.Tensor | None = None

    def attribute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> IGResult:
        """Maps, channel attributions and completeness errors of x: (N, C, H, W) in [0, 1], classes y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        device = model_device(model)
        xd, yd = x.to(device), y.to(device)
        base = baseline_images(xd, self.baseline, self.blur_sigma)
        alphas, weights = (t.to(device, xd.dtype) for t in ig_nodes(self.steps, self.method))
        n, k = len(xd), len(alphas)
        # All (image, node) pairs, image-major, in chunks of batch_size.
        img = torch.arange(n, device=device).repeat_interleave(k)
        node = torch.arange(k, device=device).repeat(n)
        total = torch.zeros_like(xd)
        for s in batch_slices(n * k, self.batch_size):
            i, a = img[s], alphas[node[s]].view(-1, 1, 1, 1)
            _, grad = logit_gradient(model, base[i] + a * (xd[i] - base[i]), yd[i])
            total.index_add_(0, i, grad * weights[node[s]].view(-1, 1, 1, 1))
        attr = (xd - base) * total
        with torch.no_grad():
            logits_x, logits_b = model(xd), model(base)
        gap = logits_x.gather(1, yd[:, None])[:, 0] - logits_b.gather(1, yd[:, None])[:, 0]
        error = attr.flatten(1).sum(1) - gap
        return IGResult(reduce_channels(attr, self.reduce).to(x.device), attr.to(x.device), error.detach().to(x.device))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attribution (N, H, W) of x: (N, C, H, W) in [0, 1] for classes y: (N,)."""
        result = self.attribute(model, x, y)
        self.completeness_error_ = result.completeness_error
        return result.maps
