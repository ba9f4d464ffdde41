"""The estimator registry: importance and vulnerability maps by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from roiroa.registry import Registry

ESTIMATORS: Registry[Callable[..., Any]] = Registry("estimator")
register_estimator = ESTIMATORS.register


def create_estimator(name: str, **kwargs: Any) -> Callable[..., Any]:
    """A configured estimator ``estimator(model, x, y) -> (N, H, W)`` by registered name."""
    return ESTIMATORS.create(name, **kwargs)


def list_estimators(pattern: str = "*") -> list[str]:
    """Registered estimator names matching ``pattern``."""
    return ESTIMATORS.names(pattern)


def estimator_kind(name: str) -> str:
    """'importance' or 'vulnerability': the ``kind`` class attribute of the registered estimator."""
    return str(getattr(ESTIMATORS.get(name), "kind", "importance"))


def list_importance_estimators() -> list[str]:
    """Registered importance (RoI) estimator names."""
    return [n for n in ESTIMATORS.names() if estimator_kind(n) == "importance"]


def list_vulnerability_estimators() -> list[str]:
    """Registered vulnerability (RoA) estimator names."""
    return [n for n in ESTIMATORS.names() if estimator_kind(n) == "vulnerability"]
