"""Checks of user input, each raising :class:`~roiroa.errors.InputError` with one message template."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from roiroa.errors import InputError
from roiroa.utils import model_device


def parameter_error(owner: str, name: str, expected: str, value: Any) -> InputError:
    """The one message template for a bad parameter value."""
    return InputError(f"The '{name}' parameter of {owner} must be {expected}. Got {value!r} instead.")


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise if ``value`` is not a finite number in the interval given by ``low``/``high``.

    ``low_open`` makes the lower bound exclusive: ``(low, high]`` instead of ``[low, high]``.
    """
    kind = "an int" if integer else "a number"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    expected = f"{kind} in {'(' if low_open or low is None else '['}{lo}, {hi}{']' if high is not None else ')'}"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise parameter_error(owner, name, expected, value)
    if low is not None and (value < low or (low_open and value == low)):
        raise parameter_error(owner, name, expected, value)
    if high is not None and value > high:
        raise parameter_error(owner, name, expected, value)


def check_bool(owner: str, name: str, value: Any) -> None:
    """Raise if ``value`` is not a bool (a string such as "false" is refused, not read as true)."""
    if not isinstance(value, bool):
        raise parameter_error(owner, name, "a bool (true or false)", value)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise if ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise parameter_error(owner, name, "one of " + ", ".join(repr(c) for c in choices), value)


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise unless ``x`` is a float tensor (N, C, H, W) with N >= 1, finite, in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}.")
    if x.dim() != 4:
        raise InputError(f"{name} must have shape (N, C, H, W); got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (N = 0): give at least one image.")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor in [0, 1]; got dtype {x.dtype} (divide 8-bit images by 255).")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values: clean the images before the run.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{name} has values in [{lo:g}, {hi:g}], outside [0, 1]: scale the images to [0, 1] first.")


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None, name: str = "y") -> None:
    """Raise unless ``y`` is an integer tensor (n,) with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"{name} must be an int64 tensor of shape ({n},), one label per image; got {shape}.")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{name} must hold integer class indices; got dtype {y.dtype}.")
    if n and int(y.min()) < 0:
        raise InputError(f"{name} has a negative label ({int(y.min())}): labels are class indices 0..K-1.")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise InputError(
            f"{name} has label {int(y.max())} but the model has {num_classes} classes: "
            "use labels 0..K-1 that match the model's outputs."
        )


def check_mask(mask: torch.Tensor, x: torch.Tensor, name: str = "mask") -> None:
    """Raise unless ``mask`` is (N or 1, 1, H, W) matching ``x`` (N, C, H, W)."""
    n, _, h, w = x.shape
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != (h, w) or mask.shape[0] not in (1, n):
        raise InputError(f"{name} must have shape ({n} or 1, 1, {h}, {w}); got {tuple(mask.shape)}.")


def check_model_output(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise unless ``model`` (in eval mode) maps x[:1] to logits (1, K) with K above every label in y.

    One forward pass of one image; the model's parameters are left alone.
    """
    if not len(x):
        return
    with torch.no_grad():
        out = model(x[:1].to(model_device(model)))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"the model returned {shape} for one image; it must return logits of shape (N, K): "
            "give a classifier that outputs one score per class."
        )
    k, top = out.shape[1], int(y.max())
    if top >= k:
        raise InputError(
            f"the model has {k} outputs but the labels go up to {top}: "
            "give a model with one output per class of the data, or labels 0..K-1."
        )
