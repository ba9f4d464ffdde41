"""Reading a config and every check its types alone do not make: ranges, component names, each listed
component's own parameters, labels, limits. Every problem is reported at once, one line each."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from roiroa.defence.fills import FILLS
from roiroa.defence.scopes import SCOPES
from roiroa.errors import InputError
from roiroa.evaluate.attacking import attack_entries
from roiroa.evaluate.config import Config, from_dict, quick
from roiroa.evaluate.defences import parse_defences
from roiroa.evaluate.maps_stage import importance_spec
from roiroa.maps.registry import ESTIMATORS, list_importance_estimators, list_vulnerability_estimators
from roiroa.models.normalize import normalization_values
from roiroa.models.registry import list_models
from roiroa.registry import is_plugin
from roiroa.utils import resolve_device
from roiroa.validation import check_number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REGISTRIES: dict[str, Callable[[], list[str]]] = {
    "model": list_models,
    "importance estimator": list_importance_estimators,
    "vulnerability estimator": list_vulnerability_estimators,
    "fill": FILLS.names,
}


def _fields(obj: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """(dotted name, field, value) of every field of a config tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def _collect(errors: list[str], check: Callable[[], Any], where: str = "") -> Any:
    """Run ``check``; an InputError becomes one line per message line in ``errors`` (prefixed with ``where``)."""
    try:
        return check()
    except InputError as err:
        errors += [f"config: {where}: {line}" if where else line for line in str(err).splitlines()]
        return None


def field_errors(config: Config) -> list[str]:
    """Ranges (from the fields' metadata) and registered names."""
    errors: list[str] = []
    for name, f, value in _fields(config):
        meta = f.metadata
        if "low" in meta and value is not None:
            for v in value if isinstance(value, tuple) else (value,):
                bounds = {"low": meta["low"], "high": meta["high"], "low_open": meta["open_low"]}
                _collect(errors, partial(check_number, "config", name, v, **bounds))
        auto = meta.get("registry") == "fill" and value == "auto"  # chosen from the data
        if "registry" in meta and value is not None and not auto and not is_plugin(value):
            names = REGISTRIES[meta["registry"]]()
            if value not in names:
                errors.append(
                    f"config: '{name}' must be one of {', '.join(names)} (or user code package.module:callable); "
                    f"got {value!r}."
                )
    return errors


def model_errors(config: Config) -> list[str]:
    """Normalization and user-code architectures go with pretrained weights; the device exists."""
    m, errors = config.model, list[str]()
    _collect(errors, lambda: normalization_values(m.normalization, m.mean, m.std), "model")
    if m.weights is None and is_plugin(m.arch):
        errors.append(
            f"config: model.arch {m.arch!r} is user code: give its weights (model.weights, --weights); "
            "roiroa trains registered architectures only."
        )
    if m.weights is None and (m.normalization != "none" or m.mean is not None):
        errors.append(
            "config: model.normalization/mean/std describe pretrained weights: give model.weights, or drop them."
        )
    _collect(errors, lambda: resolve_device(config.device))
    return errors


def maps_errors(config: Config, estimators: bool = True) -> list[str]:
    """The windows fit together; the estimators take their parameters (their names are checked with the fields;
    ``estimators`` False skips them when a field they read is already found bad)."""
    m, errors = config.maps, []
    if m.stride > m.window:
        errors.append(
            f"config: maps.stride ({m.stride}) is larger than maps.window ({m.window}); windows would leave gaps: "
            "use a stride <= window."
        )
    if not estimators:
        return errors
    name, kwargs = importance_spec(config)
    if is_plugin(name) or name in list_importance_estimators():
        _collect(errors, lambda: ESTIMATORS.create(name, **kwargs), "maps.importance")
    roa = m.vulnerability_estimator
    if roa is not None and (is_plugin(roa) or roa in list_vulnerability_estimators()):
        _collect(errors, lambda: ESTIMATORS.create(roa, **m.vulnerability_params), "maps.vulnerability_estimator")
    return errors


def limit_errors(specs: tuple[dict[str, Any], ...], where: str, config: Config) -> list[str]:
    """Steps, queries and restarts of attack entries within ``limits``."""
    lim, errors = config.limits, []
    for i, spec in enumerate(specs):
        for key, top, name in (
            ("steps", lim.max_steps, "max_steps"),
            ("queries", lim.max_steps, "max_steps"),
            ("restarts", lim.max_restarts, "max_restarts"),
        ):
            value = spec.get(key) if isinstance(spec, dict) else None
            if isinstance(value, int) and value > top:
                errors.append(
                    f"config: {where}[{i}].{key} = {value} is above limits.{name} ({top}): "
                    f"lower it, or raise limits.{name}."
                )
    return errors


def component_errors(config: Config, defences: bool = True) -> list[str]:
    """Each attack and defence entry checked against its component's own parameters; labels and references.
    (``defences`` False skips the defence entries, whose defaults come from fields already found bad.)"""
    errors: list[str] = []
    e, p = config.evaluation, config.patches
    for specs, where in (
        (config.attacks, "attacks"),
        (e.attacks, "evaluation.attacks"),
        (p.attacks, "patches.attacks"),
    ):
        if not specs:
            errors.append(f"config: '{where}' is empty; give at least one attack, e.g. {{name = 'pgd-linf'}}.")
            continue
        entries = _collect(errors, partial(attack_entries, specs, config.batch_size), where)
        errors += limit_errors(specs, where, config)
        if where == "evaluation.attacks" and entries and all(a.gradient_free for a in entries):
            errors.append(
                "config: evaluation.attacks needs a gradient attack (e.g. pgd-linf): the sweep and sanity check use it."
            )
    if not defences:
        return errors
    found = _collect(errors, lambda: parse_defences(e.defences, config), "evaluation.defences") or []
    for label in e.run_defences:
        if found and label not in {s.label for s in found}:
            errors.append(
                f"config: evaluation.run_defences names {label!r}, which is not a label of evaluation.defences: "
                "add it there, or drop it from run_defences."
            )
    patch_specs = _collect(errors, lambda: parse_defences(p.defences, config, patches=True), "patches.defences") or []
    for label in p.adaptive:
        if patch_specs and label not in {s.label for s in patch_specs}:
            errors.append(f"config: patches.adaptive names {label!r}, which is not a label of patches.defences.")
    for name in e.sweep_scopes:
        if name not in SCOPES.names():
            errors.append(
                f"config: evaluation.sweep_scopes: {name!r} is not a mask scope; "
                f"choose from {', '.join(SCOPES.names())}."
            )
    for name in e.sweep_fills:
        _collect(errors, partial(FILLS.get, name), "evaluation.sweep_fills")
    if config.defence.fill != "auto":  # chosen from the data (roiroa.evaluate.defaults)
        _collect(errors, lambda: FILLS.create(config.defence.fill, **config.defence.fill_params), "defence.fill")
    return errors


def config_errors(config: Config) -> list[str]:
    """Every problem of a config, one line each (an empty list for a valid config)."""
    fields = field_errors(config)
    return fields + model_errors(config) + maps_errors(config, not fields) + component_errors(config, not fields)


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated Config from a dict; every unknown key, wrong type or bad value is reported at once."""
    errors: list[str] = []
    config = from_dict(Config, data, "", errors)
    errors += config_errors(config)
    if errors:
        raise InputError("\n".join(errors))
    return quick(config) if config.quick else config  # a config that says quick = true gets the overlay (idempotent)


def read_config_dict(path: str | Path) -> dict[str, Any]:
    """The settings of a .toml or .json config file, not yet checked (the CLI lays its flags over them)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read config {path} ({err.strerror}); check the path.") from None
    except UnicodeDecodeError:
        raise InputError(f"config {path} is not a text file: give a .toml or .json config.") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise InputError(f"config {path} is not valid {kind}: {str(err).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} must hold a table of settings at the top level.")
    return data


def load_config(path: str | Path) -> Config:
    """Read a Config from a .toml or .json file (every problem reported at once)."""
    return config_from_dict(read_config_dict(path))
