"""An attack suite: several attacks run on the same images, an image broken if any attack broke it.

The suite states its budget (norm, eps, steps x restarts, queries, loss of every attack) so that every number
computed with it can say what it survived. The robustness grid (:mod:`roiroa.evaluate.grid`) runs a suite's
attacks as its cells; :meth:`AttackSuite.run` is the same on one model, for library use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from roiroa.attacks.base import attack_params, resolve_attack
from roiroa.errors import InputError


def default_suite_specs(
    eps: float | None = 0.15, queries: int = 5000, classes: int | None = None
) -> tuple[dict[str, Any], ...]:
    """PGD (100 steps x 2 restarts, best iterate, step eps/15) with cross-entropy and with the CW margin, APGD-CE
    and APGD-DLR (100 steps), and Square (``queries`` queries), all L-infinity at ``eps``. ``eps=None`` leaves
    the budget open (no eps, no step size) for :func:`roiroa.evaluate.defaults.choose_defaults` to fill.
    With ``classes`` < 3 APGD-DLR is left out: the DLR loss needs a third logit (PGD's margin loss stays)."""
    pgd = {"name": "pgd-linf", "steps": 100, "restarts": 2, "best_iterate": True} | _budget(eps, 1 / 15)
    dlr = () if classes is not None and classes < 3 else ({"name": "apgd-dlr", "steps": 100} | _budget(eps),)
    return (
        pgd | {"label": "pgd-ce", "loss": "ce"},
        pgd | {"label": "pgd-margin", "loss": "margin"},
        {"name": "apgd-ce", "steps": 100} | _budget(eps),
        *dlr,
        {"name": "square", "queries": queries} | _budget(eps),
    )


def quick_suite_specs(eps: float | None = 0.15) -> tuple[dict[str, Any], ...]:
    """The --quick suite: PGD with the margin loss (5 steps, best iterate) and Square (20 queries): a smoke test,
    not a number to publish. ``eps=None`` leaves the budget open."""
    return (
        {"name": "pgd-linf", "steps": 5, "loss": "margin", "best_iterate": True} | _budget(eps),
        {"name": "square", "queries": 20} | _budget(eps),
    )


def _budget(eps: float | None, step: float | None = None) -> dict[str, float]:
    """{'eps': eps} (and 'step_size': step * eps when ``step`` is given); {} for an open budget."""
    if eps is None:
        return {}
    return {"eps": eps} | ({"step_size": eps * step} if step is not None else {})


def suite_with_eps(
    specs: tuple[dict[str, Any], ...], eps: float, classes: int | None = None
) -> tuple[dict[str, Any], ...] | None:
    """The default or quick suite at ``eps`` (the default one for a model of ``classes`` classes) when ``specs``
    is that suite with its budget open, else None."""
    if specs == default_suite_specs(None):
        return default_suite_specs(eps, classes=classes)
    if specs == quick_suite_specs(None):
        return quick_suite_specs(eps)
    return None


def uses_dlr(spec: dict[str, Any]) -> bool:
    """True when an attack spec raises the DLR loss (apgd-dlr, apgd-dlr-l2, or loss 'dlr')."""
    return spec.get("loss") == "dlr" or str(spec.get("name", "")).startswith("apgd-dlr")


_BUDGET_KEYS = ("eps", "steps", "restarts", "queries", "loss", "best_iterate", "step_size")


def budget_of(label: str, params: dict[str, Any]) -> dict[str, Any]:
    """The budget of one attack from its parameters: label, attack, norm and the keys it has among eps, steps,
    restarts, queries, loss, best_iterate, step_size."""
    return {"label": label, "attack": params.get("attack"), "norm": params.get("norm")} | {
        k: params[k] for k in _BUDGET_KEYS if k in params
    }


def describe_budget(budget: dict[str, Any]) -> str:
    """One attack's budget in words, e.g. 'pgd-ce: pgd-linf linf eps=0.15, 100 steps x 2 restarts, loss ce, best
    iterate'."""
    parts = [f"{budget['attack']} {budget['norm']} eps={budget.get('eps', '-')}"]
    if "steps" in budget:
        parts.append(f"{budget['steps']} steps x {budget.get('restarts', 1)} restarts")
    if "queries" in budget:
        parts.append(f"{budget['queries']} queries x {budget.get('restarts', 1)} restarts")
    if "loss" in budget:
        parts.append(f"loss {budget['loss']}")
    if budget.get("best_iterate"):
        parts.append("best iterate")
    return f"{budget['label']}: " + ", ".join(parts)


@dataclass(frozen=True)
class SuiteResult:
    """Per-image results of a suite on one model.

    robust: attack label -> (N,) bool, True where the model classifies the clean image and that attack's image
    correctly; worst: (N,) bool, robust to every attack (the per-image worst case); budget: each attack's budget.
    """

    robust: dict[str, torch.Tensor]
    worst: torch.Tensor
    budget: list[dict[str, Any]]


@dataclass(frozen=True)
class AttackSuite:
    """A named list of attacks (specs {name, label?, hyperparameters...} as in the config, or instances).

    Args:
        name: how outputs call the suite ('default', 'quick', 'custom').
        specs: the attacks; labels (a spec's 'label', else its 'name') must be distinct.

    Example:
        >>> result = AttackSuite('default', default_suite_specs(0.1)).run(model, x, y)
        >>> float(result.worst.double().mean())  # worst-case robust accuracy
    """

    name: str
    specs: tuple[Any, ...] = field(default_factory=default_suite_specs)

    def labelled(self) -> list[tuple[str, Any]]:
        """(label, attack instance) of every spec, in order."""
        out = []
        for spec in self.specs:
            attack = resolve_attack(spec)
            label = spec.get("label", spec["name"]) if isinstance(spec, dict) else type(attack).__name__
            out.append((str(label), attack))
        if len({label for label, _ in out}) != len(out):
            raise InputError(f"two attacks of the suite {self.name!r} share a label; give each a distinct 'label'.")
        return out

    def budget(self) -> list[dict[str, Any]]:
        """Every attack's budget (see :func:`budget_of`)."""
        return [budget_of(label, attack_params(attack)) for label, attack in self.labelled()]

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_model: nn.Module | None = None
    ) -> SuiteResult:
        """Run every attack on ``attack_model`` (default ``model``), judge on ``model``.

        Args:
            model: the defended model that decides, logits (N, K); attack_model: what gradient attacks
                differentiate (e.g. a BPDA or EOT wrapper of ``model``); gradient-free attacks query ``model``.
            x: (N, C, H, W) in [0, 1]; y: (N,) int64.
        """
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        robust = {}
        for label, attack in self.labelled():
            target = model if getattr(attack, "gradient_free", False) or attack_model is None else attack_model
            x_adv = attack(target, x, y)
            with torch.no_grad():
                robust[label] = clean & (model(x_adv).argmax(1) == y)
        worst = torch.stack(list(robust.values())).all(0)
        return SuiteResult(robust, worst, self.budget())
