"""Registries by name (as in timm): one per kind of component (models, attacks, estimators, scopes, fills, ...).

A name of the form ``package.module:callable`` is a plug-in: the callable is imported from the user's code
and used like a registered factory, so a user's attack, estimator, mask scope or fill needs no edit of roiroa.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from roiroa.errors import InputError

T = TypeVar("T")


def is_plugin(name: object) -> bool:
    """True for a 'package.module:callable' name (user code), False for a registered name."""
    return isinstance(name, str) and ":" in name


def load_callable(spec: str, kind: str) -> Callable[..., Any]:
    """The callable named by ``spec`` = 'package.module:attribute' (user code), or an InputError of one line."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"{kind} {spec!r}: give user code as package.module:callable.")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 (user code may raise anything while it is imported)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{kind} {spec!r}: cannot import {module_name!r} ({first}); check PYTHONPATH.") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"{kind} {spec!r}: {module_name} has no callable {attr!r}; give package.module:callable.")
    return factory  # type: ignore[no-any-return]


def accepted(factory: Callable[..., Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``defaults`` that ``factory`` takes as keywords (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(defaults)
    return {k: v for k, v in defaults.items() if k in params}


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
        """The factory registered as ``name`` (or user code 'package.module:callable'); an unknown name lists
        the valid ones."""
        if is_plugin(name):
            return load_callable(name, self.kind)
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
        try:
            return factory(**kwargs)
        except InputError:
            raise
        except Exception as err:
            if not is_plugin(name):
                raise
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"{self.kind} {name!r} raised {type(err).__name__}: {first}; fix that code.") from None
