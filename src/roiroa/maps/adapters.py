"""Captum's attribution methods as roiroa importance estimators (an optional import).

``maps.importance = "captum"`` with ``importance_params = {method = "IntegratedGradients", attribute = {n_steps =
32}}`` uses Captum's method on the true class; channels fold into one value per position as ``reduce`` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from roiroa.attacks.adapters import optional
from roiroa.errors import InputError
from roiroa.maps.registry import register_estimator
from roiroa.utils import batch_slices, model_device
from roiroa.validation import check_choice, check_images, check_labels, check_number

Reduce = Literal["abs_max", "abs_sum", "sum", "mean"]


def fold_channels(attr: torch.Tensor, reduce: str) -> torch.Tensor:
    """(N, C, H, W) attributions -> (N, H, W): max of |a|, sum of |a|, sum or mean over channels."""
    return {
        "abs_max": lambda a: a.abs().amax(1),
        "abs_sum": lambda a: a.abs().sum(1),
        "sum": lambda a: a.sum(1),
        "mean": lambda a: a.mean(1),
    }[reduce](attr)


@register_estimator("captum")
@dataclass(kw_only=True)
class CaptumAttribution:
    """A Captum attribution method of the true class as an importance map (N, H, W).

    Args:
        method: the class in ``captum.attr``, e.g. 'Saliency', 'IntegratedGradients', 'Occlusion'.
        attribute: keywords of its ``attribute`` call (e.g. {sliding_window_shapes: [1, 4, 4]}; lists become tuples).
        reduce: how channels fold: 'abs_max' (Captum's saliency convention), 'abs_sum', 'sum' or 'mean'.
        batch_size: images per call. Default 64.
    """

    method: str = "Saliency"
    attribute: dict[str, Any] = field(default_factory=dict)
    reduce: Reduce = "abs_max"
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_choice("CaptumAttribution", "reduce", self.reduce, ("abs_max", "abs_sum", "sum", "mean"))
        check_number("CaptumAttribution", "batch_size", self.batch_size, low=1, integer=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Importance (N, H, W) of x: (N, C, H, W) in [0, 1] for the classes y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        attr = optional("captum.attr", "pip install captum")
        if not hasattr(attr, self.method):
            raise InputError(
                f"captum.attr has no method {self.method!r}: give one of its class names, e.g. 'Saliency'."
            )
        algorithm = getattr(attr, self.method)(model)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.attribute.items()}
        device = model_device(model)
        out = []
        for s in batch_slices(len(x), self.batch_size):
            a = algorithm.attribute(x[s].to(device), target=y[s].to(device), **kwargs)
            out.append(fold_channels(a.detach(), self.reduce).to(x.device))
        return torch.cat(out)
