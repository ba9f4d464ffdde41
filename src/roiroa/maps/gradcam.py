"""Grad-CAM and Grad-CAM++ of a named convolutional layer, upsampled bilinearly to H x W.

Plain torch with forward hooks (the pytorch-grad-cam package imports torchvision, which is not
available here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from roiroa.errors import InputError
from roiroa.maps.registry import register_estimator
from roiroa.utils import batch_slices, model_device
from roiroa.validation import check_bool, check_choice, check_images, check_labels, check_number


def last_conv_name(model: nn.Module) -> str:
    """The name of the model's last ``nn.Conv2d`` in module order (the Grad-CAM default)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise InputError("the model has no nn.Conv2d layer: give Grad-CAM a layer name (see model.named_modules()).")
    return names[-1]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name lists the conv layers."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        raise InputError(f"the model has no layer {name!r}; its conv layers are: {', '.join(convs)}.") from None


def layer_activation_and_gradient(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output A (N, K, h, w) on x and the gradient of logit_y w.r.t. A (same shape)."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            logit = model(x).gather(1, y[:, None])[:, 0]
            if not captured or not captured[-1].requires_grad:
                raise InputError("Grad-CAM's layer was not used in the forward pass (or has no gradient).")
            act = captured[-1]
            (grad,) = torch.autograd.grad(logit.sum(), act)
    finally:
        handle.remove()
    return act.detach(), grad


@dataclass(kw_only=True)
class _LayerCAM:
    """Fields shared by Grad-CAM and Grad-CAM++."""

    layer: str | None = None
    relu: bool = True
    interpolate: Literal["bilinear", "nearest", "bicubic"] = "bilinear"
    batch_size: int = 64

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_bool(owner, "relu", self.relu)
        check_choice(owner, "interpolate", self.interpolate, ("bilinear", "nearest", "bicubic"))
        check_number(owner, "batch_size", self.batch_size, low=1, integer=True)
        if self.layer is not None and not isinstance(self.layer, str):
            raise InputError(f"{owner}: layer must be a module name (str) or None; got {self.layer!r}.")

    def channel_weights(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """(N, K, 1, 1) weights of the activation's channels."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Class activation map (N, H, W) of x: (N, C, H, W) in [0, 1] for classes y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        layer = find_layer(model, self.layer if self.layer is not None else last_conv_name(model))
        device = model_device(model)
        out = []
        for s in batch_slices(len(x), self.batch_size):
            act, grad = layer_activation_and_gradient(model, layer, x[s].to(device), y[s].to(device))
            cam = (self.channel_weights(act, grad) * act).sum(1, keepdim=True)
            if self.relu:
                cam = cam.clamp(min=0)
            cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=self.interpolate)  # as Captum's interpolate
            out.append(cam[:, 0].to(x.device))
        return torch.cat(out)


@register_estimator("grad-cam")
@dataclass(kw_only=True)
class GradCAM(_LayerCAM):
    """Grad-CAM (Selvaraju et al. 2017): sum_k mean(dlogit_y/dA_k) A_k, ReLU, upsampled to H x W.

    Equals Captum's ``LayerGradCam(relu_attributions=relu)`` followed by
    ``LayerAttribution.interpolate(..., interpolate_mode)``.

    Args:
        layer: name of the conv layer (as in ``model.named_modules()``); None = the last Conv2d.
        relu: keep only positive evidence (the paper's ReLU). Default True.
        interpolate: upsampling mode, 'bilinear' (default), 'nearest' or 'bicubic'.
        batch_size: images per backward pass. Default 64.
    """

    def channel_weights(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.mean(dim=(2, 3), keepdim=True)


@register_estimator("grad-cam++")
@dataclass(kw_only=True)
class GradCAMPlusPlus(_LayerCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018) with the exponential-score closed form:

    alpha = g^2 / (2 g^2 + sum_ab(A) g^3), w_k = sum_ab alpha * relu(g), map = relu(sum_k w_k A_k),
    with g = dlogit_y/dA (as the reference pytorch-grad-cam computes it).

    Args: as :class:`GradCAM`.
    """

    def channel_weights(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        g2, g3 = grad**2, grad**3
        denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(grad != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
        return (alpha * grad.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
