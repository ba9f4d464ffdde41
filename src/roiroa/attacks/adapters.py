"""Attacks of other libraries as roiroa attacks, in a few lines each (optional imports).

``{name = "torchattacks", attack = "PGD", params = {eps = 0.1, alpha = 0.01, steps = 20}}`` in a config runs
torchattacks' PGD; ``{name = "art", attack = "ProjectedGradientDescent", params = {...}}`` runs ART's. Nothing
else is asked of them: the maps stage records where their gradients acted from the outside
(:mod:`roiroa.maps.recorder`), so they give the same kind of RoA as roiroa's own attacks. ``norm`` names the
budget's norm, which decides how the vulnerability map is read ('auto').
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn

from roiroa.attacks.base import register_attack
from roiroa.errors import InputError
from roiroa.registry import accepted
from roiroa.utils import model_device
from roiroa.validation import check_choice


def optional(module: str, install: str) -> ModuleType:
    """Import an optional library, or one line that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"this attack needs {module.split('.')[0]}: {install}.") from None


def _check(owner: str, attack: str, norm: str, mask: torch.Tensor | None) -> None:
    check_choice(owner, "norm", norm, ("linf", "l2", "l1"))
    if mask is not None:
        raise InputError(f"{owner} attack {attack!r} cannot be restricted to a mask: use a roiroa attack for that.")


@register_attack("torchattacks")
@dataclass(kw_only=True)
class TorchAttacks:
    """An attack of torchattacks (Kim 2020) by class name, with its keywords.

    Args:
        attack: the torchattacks class, e.g. 'PGD', 'APGD', 'CW', 'Square'. Default 'PGD'.
        params: its keywords (e.g. {eps: 0.1, alpha: 0.01, steps: 20}).
        norm: the budget's norm, 'linf', 'l2' or 'l1'. Default 'linf'.
        batch_size: images per call. Default 64.
    """

    attack: str = "PGD"
    params: dict[str, Any] = field(default_factory=dict)
    norm: str = "linf"
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check("torchattacks", self.attack, self.norm, None)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_adv: (N, C, H, W) in [0, 1] for x: (N, C, H, W) in [0, 1] and labels y: (N,)."""
        _check("torchattacks", self.attack, self.norm, mask)
        library = optional("torchattacks", "pip install torchattacks --no-deps (it would pull torchvision otherwise)")
        if not hasattr(library, self.attack):
            raise InputError(f"torchattacks has no attack {self.attack!r}: give one of its class names, e.g. 'PGD'.")
        device = model_device(model)
        attack = getattr(library, self.attack)(model, **self.params)
        return attack(x.to(device), y.to(device)).detach().to(x.device)


@register_attack("art")
@dataclass(kw_only=True)
class ARTAttack:
    """An evasion attack of the Adversarial Robustness Toolbox by class name, with its keywords.

    Args:
        attack: the class in ``art.attacks.evasion``, e.g. 'ProjectedGradientDescent'. Default that one.
        params: its keywords (e.g. {eps: 0.1, eps_step: 0.01, max_iter: 20}).
        norm: the budget's norm, 'linf', 'l2' or 'l1'. Default 'linf'.
        batch_size: images per call. Default 64.
    """

    attack: str = "ProjectedGradientDescent"
    params: dict[str, Any] = field(default_factory=dict)
    norm: str = "linf"
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check("ART", self.attack, self.norm, None)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_adv: (N, C, H, W) in [0, 1] for x: (N, C, H, W) in [0, 1] and labels y: (N,)."""
        _check("ART", self.attack, self.norm, mask)
        evasion = optional("art.attacks.evasion", "pip install adversarial-robustness-toolbox")
        classifiers = optional("art.estimators.classification", "pip install adversarial-robustness-toolbox")
        if not hasattr(evasion, self.attack):
            raise InputError(f"ART has no evasion attack {self.attack!r}: give a class of art.attacks.evasion.")
        device = model_device(model)
        with torch.no_grad():
            classes = int(model(x[:1].to(device)).shape[1])
        classifier = classifiers.PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        factory = getattr(evasion, self.attack)
        params = accepted(factory, {"batch_size": self.batch_size, "verbose": False}) | dict(self.params)
        attack = factory(classifier, **params)
        x_adv = attack.generate(x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
        return torch.from_numpy(x_adv).to(x.device, x.dtype)
