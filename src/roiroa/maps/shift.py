"""Attribution shift: how an attack moves the importance map.

A = I(x_adv, y_adv) - I(x, y): the importance of the adversarial class on the adversarial image
minus the importance of the true class on the clean image, with any importance estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from roiroa.attacks.base import Attack, resolve_attack
from roiroa.maps.registry import create_estimator, register_estimator
from roiroa.models.predict import predict
from roiroa.validation import check_images, check_labels


def _default_attack() -> dict[str, Any]:
    return {"name": "pgd-linf", "eps": 0.15, "steps": 20}


@register_estimator("attribution-shift")
@dataclass(kw_only=True)
class AttributionShift:
    """Vulnerability as the shift of importance under an attack (signed, (N, H, W)).

    Where the attack fails (the prediction stays y), y_adv = y, so the map is the change of the
    true class's importance.

    Args:
        attack: an attack instance, a registered name, or {'name': ..., hyperparameters}.
            Default PGD L-infinity, eps 0.15, 20 steps.
        importance: an importance estimator instance or registered name. Default 'saliency'.
        importance_params: keywords for a named importance estimator.
    """

    kind: ClassVar[str] = "vulnerability"

    attack: Any = field(default_factory=_default_attack)
    importance: Any = "saliency"
    importance_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attack_: Attack = resolve_attack(self.attack)
        self.importance_ = (
            create_estimator(self.importance, **self.importance_params)
            if isinstance(self.importance, str)
            else self.importance
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """I(x_adv, y_adv) - I(x, y): (N, H, W) for x: (N, C, H, W) in [0, 1] and labels y: (N,)."""
        check_images(x)
        check_labels(y, len(x))
        x_adv = self.attack_(model, x, y)
        y_adv = predict(model, x_adv).to(y.device)
        return self.importance_(model, x_adv, y_adv) - self.importance_(model, x, y)
