"""From the config's defence entries to the defended models of a grid, with their random controls.

An entry is a name or {name, label?, fill?, fill_params?, dilation?, parameters...}: a mask scope ('global',
'per_class', 'per_input', 'fragments' or user code with ``masks``), an input transformation ('bit_depth',
'median', 'jpeg', 'blur', 'lgs' or user code) or 'adv_training'. A component's own parameters are its schema;
the regions' q_roi/q_roa/threshold (and the patch detectors' window/stride/contamination) fill in the
parameters an entry leaves out. Scopes are fitted on the fitting images and neutralized with the fill.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from roiroa.cache import hash_json
from roiroa.defence.adaptive import EOT, StraightThrough
from roiroa.defence.baselines import BASELINES, Preprocessed, describe_transform, has_exact, has_surrogate
from roiroa.defence.fills import FILLS, Fill, is_random, make_fill
from roiroa.defence.neutralizer import Neutralized
from roiroa.defence.scopes import (
    SCOPES,
    Dilated,
    EqualAreaControl,
    FitData,
    FixedMask,
    GlobalMask,
    MaskScope,
    dilate,
    random_blob_mask,
)
from roiroa.errors import InputError
from roiroa.evaluate.config import Config, filled
from roiroa.evaluate.grid import AdaptiveVariant, Defence
from roiroa.registry import accepted, is_plugin
from roiroa.utils import stage_seed

META_KEYS = ("name", "label", "fill", "fill_params", "dilation")
ADV_TRAINING = "adv_training"
SpecKind = Literal["scope", "transform", "adv_training"]


@dataclass(frozen=True)
class DefenceSpec:
    """One defence entry of the config, resolved: its label, component, parameters, fill and dilation."""

    label: str
    name: str
    kind: SpecKind
    params: dict[str, Any] = field(default_factory=dict)
    fill: str = "zero"
    fill_params: dict[str, Any] = field(default_factory=dict)
    dilation: int = 0

    def identity(self) -> dict[str, Any]:
        """The JSON identity of this defence (part of every cache key of its cells)."""
        return {"name": self.name, "kind": self.kind, "params": self.params, "fill": self.fill} | {
            "fill_params": self.fill_params,
            "dilation": self.dilation,
        }

    def describe(self) -> str:
        """What the defence is, in words: parameters, fill and dilation."""
        params = " ".join(f"{k}={v}" for k, v in self.params.items() if k not in ("seed", "batch_size"))
        if self.kind == "scope":
            return f"{params} fill={self.fill} dilation={self.dilation}".strip()
        return params or self.name


def _factory(name: str) -> Callable[..., Any]:
    return SCOPES.get(name) if name in SCOPES.names() or is_plugin(name) else BASELINES.get(name)


def spec_kind(name: str, params: dict[str, Any] | None = None) -> SpecKind:
    """'scope', 'transform' or 'adv_training' for a defence name (user code: a scope if the object it makes with
    ``params`` has ``masks``)."""
    params = params or {}
    if name == ADV_TRAINING:
        return "adv_training"
    if name in SCOPES.names():
        return "scope"
    if name in BASELINES.names():
        return "transform"
    if is_plugin(name):
        return "scope" if hasattr(SCOPES.create(name, **params), "masks") else "transform"
    known = ", ".join([*SCOPES.names(), *BASELINES.names(), ADV_TRAINING])
    raise InputError(f"unknown defence {name!r}; choose one of: {known}, or user code package.module:callable.")


def component_defaults(config: Config, patches: bool = False) -> dict[str, Any]:
    """Parameters a mask scope's entry leaves out, taken from the config (the regions; for patches the
    detectors')."""
    r, p = config.regions, config.patches
    out: dict[str, Any] = {"q_roi": r.q_roi, "q_roa": r.q_roa, "threshold": r.threshold, "seed": config.seed}
    if patches:
        out |= {"window": p.window, "stride": p.stride, "contamination": p.contamination}
    return out


def parse_defence(entry: Any, config: Config, patches: bool = False) -> DefenceSpec:
    """The DefenceSpec of one config entry; the component is created once to check its parameters."""
    entry = {"name": entry} if isinstance(entry, str) else entry
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise InputError(f"a defence entry is a name or a table with a 'name'; got {entry!r}.")
    given = {k: v for k, v in entry.items() if k not in META_KEYS}
    name, kind = entry["name"], spec_kind(entry["name"], given)
    d = config.defence
    fill = str(entry.get("fill", d.fill))
    fill = "zero" if fill == "auto" else fill  # 'auto' is chosen from the data in prepare(); zero before
    spec = DefenceSpec(
        label=str(entry.get("label", name)),
        name=name,
        kind=kind,
        params=accepted(_factory(name), component_defaults(config, patches)) | given if kind == "scope" else given,
        fill=fill,
        fill_params=dict(entry.get("fill_params", d.fill_params if fill == d.fill else {})),
        dilation=int(entry.get("dilation", d.dilation)),
    )
    if kind != "adv_training":
        _factory(name)  # a known name
        (SCOPES if kind == "scope" else BASELINES).create(name, **spec.params)
    if kind == "scope":
        FILLS.create(spec.fill, **spec.fill_params)
    return spec


def parse_defences(entries: tuple[Any, ...], config: Config, patches: bool = False) -> list[DefenceSpec]:
    """Every entry's spec; labels are distinct and none is 'none'."""
    specs = [parse_defence(e, config, patches) for e in entries]
    labels = [s.label for s in specs]
    if "none" in labels or len(set(labels)) != len(labels):
        raise InputError("defence labels must be distinct and not 'none'; give each entry its own 'label'.")
    return specs


@dataclass(frozen=True)
class BuildContext:
    """What building defences needs: f and its key, the fitting data and its key, the config, and a way to get
    the adversarially trained model (None where roiroa did not train f and cannot train its architecture)."""

    model: nn.Module
    model_key: str
    fit: FitData
    fit_key: str
    config: Config
    adv_model: Callable[[], nn.Module] | None = None


def none_defence(ctx: BuildContext) -> Defence:
    """The undefended model f."""
    return Defence("none", "none", "f alone", ctx.model, ctx.model, "exact", f"none:{ctx.model_key}")


def _key(spec: DefenceSpec, ctx: BuildContext, extra: str = "") -> str:
    return hash_json({"spec": spec.identity(), "model": ctx.model_key, "fit": ctx.fit_key, "extra": extra})


def spec_fill(spec: DefenceSpec, ctx: BuildContext) -> Fill:
    """The spec's fill, fitted on the fitting images where it is fitted (a noise fill seeded by the run)."""
    fill_params = accepted(FILLS.get(spec.fill), {"seed": stage_seed(ctx.config.seed, "noise-fill")}) | spec.fill_params
    return make_fill(spec.fill, ctx.fit.images, **fill_params)


def _neutralized(spec: DefenceSpec, scope: MaskScope, ctx: BuildContext) -> tuple[Neutralized, nn.Module, str]:
    """f o N with this scope and the spec's fill; the model an adaptive attack differentiates; its gradient."""
    fill = spec_fill(spec, ctx)
    model = Neutralized(ctx.model, scope, fill, spec.dilation)
    fixed = isinstance(scope, (GlobalMask, FixedMask))
    gradient = "exact (fixed mask)" if fixed else "BPDA (mask choice held fixed)"
    if is_random(fill):
        draws = ctx.config.defence.eot_draws
        return model, EOT(model, draws), f"{gradient} + EOT({draws} draws)"
    return model, model, gradient


def straight_through(model: Neutralized, ctx: BuildContext) -> tuple[AdaptiveVariant, ...]:
    """The second adaptive attack on an input-dependent mask: the mask recomputed at every step, the gradient
    straight through the fill (as if nothing were blocked), with EOT over a random fill."""
    words = "straight-through: mask recomputed at x, the fill passed as the identity backward"
    if is_random(model.fill):
        draws = ctx.config.defence.eot_draws
        return (
            AdaptiveVariant("straight-through", EOT(StraightThrough(model), draws), f"{words} + EOT({draws} draws)"),
        )
    return (AdaptiveVariant("straight-through", StraightThrough(model), words),)


def scope_defences(spec: DefenceSpec, ctx: BuildContext, controls: str | None) -> list[Defence]:
    """The fitted scope as f o N, and (``controls`` 'pixels' or 'block') its equal-area random control; a global
    mask also gets its blobs moved at random."""
    scope = SCOPES.create(spec.name, **spec.params)
    if callable(getattr(scope, "fit", None)):
        scope = scope.fit(ctx.fit)  # type: ignore[attr-defined]
    model, attack_model, gradient = _neutralized(spec, scope, ctx)
    variants = straight_through(model, ctx) if not isinstance(scope, (GlobalMask, FixedMask)) else ()
    out = [
        Defence(
            spec.label, "scope", spec.describe(), model, attack_model, gradient, _key(spec, ctx), None, {}, variants
        )
    ]
    if controls is None:
        return out
    return out + control_defences(spec, scope, ctx, controls)


def control_defences(spec: DefenceSpec, scope: MaskScope, ctx: BuildContext, controls: str) -> list[Defence]:
    """The scope's equal-area random control ('pixels' or 'block') and, for a global mask with 'pixels', its blobs
    moved at random. Both copy the area the defence blocks after its dilation and are not dilated again."""
    blocked = Dilated(scope, spec.dilation) if spec.dilation else scope
    plain = dataclasses.replace(spec, dilation=0)
    seed = stage_seed(ctx.config.seed, f"control:{spec.label}")
    control = EqualAreaControl(blocked, seed, "block" if controls == "block" else "pixels")
    name = "random-block" if controls == "block" else f"random[{spec.label}]"
    words = (
        "one square of the same area per input, at a random place"
        if controls == "block"
        else "the same pixel count per input, random positions"
    )
    out = [
        Defence(
            name,
            "control",
            f"{words} as {spec.label}",
            *_neutralized(plain, control, ctx),
            _key(spec, ctx, f"{name}:area after dilation"),
            spec.label,
        )
    ]
    if isinstance(scope, GlobalMask) and controls == "pixels":
        grown = dilate(scope.mask_[None], spec.dilation)[0]
        blobs = FixedMask(
            random_blob_mask(grown, torch.Generator().manual_seed(stage_seed(ctx.config.seed, "control:blobs")))
        )
        words = f"the {spec.label} mask's blobs moved to random places (same count and spread)"
        name = f"random_blobs[{spec.label}]"
        key = _key(spec, ctx, f"{name}:area after dilation")
        out.append(Defence(name, "control", words, *_neutralized(plain, blobs, ctx), key, spec.label))
    return out


def transform_variants(ctx: BuildContext, transform: Any) -> tuple[AdaptiveVariant, ...]:
    """The adaptive variants of a transformation without its own gradient: BPDA through its smooth surrogate, and
    its exact gradient where it can be differentiated as it is (the median)."""
    variants = []
    if has_surrogate(transform):
        variants.append(
            AdaptiveVariant(
                "surrogate", Preprocessed(ctx.model, transform, "surrogate"), "BPDA (smooth surrogate backward)"
            )
        )
    if has_exact(transform):
        variants.append(
            AdaptiveVariant("exact", Preprocessed(ctx.model, transform, "exact"), "exact gradient (through a sort)")
        )
    return tuple(variants)


def build_defences(spec: DefenceSpec, ctx: BuildContext, controls: str | None = "pixels") -> list[Defence]:
    """The defended models of one spec (a scope with its controls, a transformation, or adversarial training);
    an empty list for 'adv_training' where the model cannot be retrained."""
    if spec.kind == "scope":
        return scope_defences(spec, ctx, controls)
    if spec.kind == "transform":
        transform = BASELINES.create(spec.name, **spec.params)
        model = Preprocessed(ctx.model, transform)
        gradient = "exact" if getattr(transform, "differentiable", False) else "BPDA (identity backward)"
        words, key = describe_transform(transform), _key(spec, ctx)
        return [
            Defence(
                spec.label, "baseline", words, model, model, gradient, key, None, {}, transform_variants(ctx, transform)
            )
        ]
    if ctx.adv_model is None:
        return []
    d = ctx.config.defence
    words = f"PGD-{d.adv_steps} eps={filled(d.adv_eps, 'defence.adv_eps'):g}, {d.adv_epochs} epochs (Madry et al. 2018)"
    adv = ctx.adv_model()
    return [Defence(spec.label, "baseline", words, adv, adv, "exact", _key(spec, ctx, hash_json(words)))]
