"""The model registry: ``create_model(name, **kw)``, ``list_models(pattern)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from roiroa.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
register_model = MODELS.register


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """A new, untrained model of the registered architecture ``name``."""
    return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching ``pattern``."""
    return MODELS.names(pattern)
