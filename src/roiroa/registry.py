"""Registries by name (as in timm): one per kind of component (models, attacks, estimators)."""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from roiroa.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory table with ``register``, ``create`` and ``names``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or function under ``name`` (a duplicate name warns)."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins.", stacklevel=2)
            self._factories[name] = factory
            return factory

        return add

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._factories if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; an unknown name lists the valid ones."""
        if not isinstance(name, str) or name not in self._factories:
            raise InputError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}.")
        return self._factories[name]

    def create(self, name: str, **kwargs: Any) -> T:
        """Call the factory registered as ``name`` with ``kwargs``; unknown keywords are an InputError."""
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as err:
            raise InputError(
                f"{self.kind} {name!r}: {err}; see help() of {factory.__name__} for its parameters."
            ) from None
        return factory(**kwargs)
