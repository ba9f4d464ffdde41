"""APGD (Croce & Hein 2020): PGD with momentum and a step size that halves where the loss stalls.

One start: the step begins at 2 eps; every step is a momentum-0.75 blend of a projected gradient step and the
previous move; the step size is checked at checkpoints (the first after 22% of the steps, then ever closer, at
least 6% apart): where the loss rose in at most ``rho`` of the steps since the last checkpoint, or the best loss
did not improve and the step was not just halved, the step halves and the iterate restarts from the best point.
An image counts as broken if any iterate fooled the model; restarts run only on images still robust. The
losses are cross-entropy (APGD-CE) and DLR (APGD-DLR, invariant to the logits' scale). With a mask, only masked
positions move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from roiroa.attacks.base import AttackCalls, Norm, normalize_step, project, random_start, register_attack
from roiroa.attacks.losses import loss_and_gradient
from roiroa.validation import check_number


def _rows(flags: torch.Tensor) -> torch.Tensor:
    return flags.view(-1, 1, 1, 1)


@dataclass
class _Schedule:
    """The checkpoints of one start: every ``k`` steps (k from 22% of the steps, shrinking by 3% to >= 6%)."""

    steps: int
    rho: float

    def __post_init__(self) -> None:
        self.k = max(int(0.22 * self.steps), 1)
        self.decrease, self.k_min = max(int(0.03 * self.steps), 1), max(int(0.06 * self.steps), 1)
        self.counter = 0

    def due(self) -> bool:
        """True at a checkpoint (then the next one is set up)."""
        self.counter += 1
        if self.counter < self.k:
            return False
        self.counter, self.window = 0, self.k
        self.k = max(self.k - self.decrease, self.k_min)
        return True


@dataclass(kw_only=True)
class _APGD(AttackCalls):
    """Fields and the loop shared by the four APGD variants (loss and norm are class constants).

    Args:
        eps: the budget. Default 0.15 (L-infinity, in (0, 1]) or 2.0 (L2 over the whole image).
        steps: gradient steps per start. Default 100.
        restarts: random starts, each on the images still robust. Default 1.
        rho: a checkpoint halves the step where the loss rose in at most this fraction of its steps. Default 0.75.
        batch_size: images per chunk. Default 64.
    """

    loss: ClassVar[str]
    eps: float
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    batch_size: int = 64

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_number(owner, "eps", self.eps, low=0.0, low_open=True, high=1.0 if self.norm == "linf" else None)
        check_number(owner, "steps", self.steps, low=1, integer=True)
        check_number(owner, "restarts", self.restarts, low=1, integer=True)
        check_number(owner, "rho", self.rho, low=0.0, high=1.0)
        check_number(owner, "batch_size", self.batch_size, low=1, integer=True)

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-able dict with the keys 'attack', 'norm' and 'loss'."""
        return {"attack": self.name, "norm": self.norm, "loss": self.loss, **asdict(self)}

    def _attack_chunk(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Per image the first iterate that fooled the model, else the point of highest loss of the last start."""
        out = x.clone()
        with torch.no_grad():
            robust = model(x).argmax(1) == y
        for _ in range(self.restarts):
            idx = robust.nonzero()[:, 0]
            if len(idx) == 0:
                break
            m = None if mask is None or len(mask) == 1 else mask[idx]
            x_adv, fooled = self._one_start(model, x[idx], y[idx], mask if m is None else m)
            out[idx] = x_adv
            robust[idx[fooled]] = False
        return out

    def _to_ball(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x + project(t - x, self.eps, self.norm)).clamp(0.0, 1.0)

    def _one_start(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv (N, C, H, W), fooled (N,) bool) of one start from a random point of the ball."""
        keep: Callable[[torch.Tensor], torch.Tensor] = (lambda t: t) if mask is None else (lambda t: t * mask)
        x_adv = (x + keep(random_start(x, self.eps, self.norm))).clamp(0.0, 1.0)
        logits, loss, grad = loss_and_gradient(model, x_adv, y, self.loss)
        fooled = logits.argmax(1) != y
        x_fool, x_best, loss_best, grad_best = x_adv.clone(), x_adv.clone(), loss.clone(), grad.clone()
        eta = torch.full((len(x), 1, 1, 1), 2.0 * self.eps, device=x.device, dtype=x.dtype)
        x_prev, schedule = x_adv.clone(), _Schedule(self.steps, self.rho)
        rises, loss_prev = torch.zeros_like(loss), loss
        best_at_check, halved = loss_best.clone(), torch.ones_like(fooled)
        for i in range(self.steps):
            a = 0.75 if i > 0 else 1.0
            z = self._to_ball(x, x_adv + eta * normalize_step(keep(grad), self.norm))
            x_prev, x_adv = x_adv, self._to_ball(x, x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev))
            logits, loss, grad = loss_and_gradient(model, x_adv, y, self.loss)
            new = (logits.argmax(1) != y) & ~fooled
            x_fool, fooled = torch.where(_rows(new), x_adv, x_fool), fooled | new
            rises, loss_prev = rises + (loss > loss_prev).to(loss.dtype), loss
            better = loss > loss_best
            x_best, grad_best = torch.where(_rows(better), x_adv, x_best), torch.where(_rows(better), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            if schedule.due():
                halve = (rises <= schedule.window * self.rho) | (~halved & (best_at_check >= loss_best))
                halved, best_at_check, rises = halve, loss_best.clone(), torch.zeros_like(rises)
                eta = torch.where(_rows(halve), eta / 2, eta)
                x_adv, grad = torch.where(_rows(halve), x_best, x_adv), torch.where(_rows(halve), grad_best, grad)
        return torch.where(_rows(fooled), x_fool, x_best).detach(), fooled


@register_attack("apgd-ce")
@dataclass(kw_only=True)
class APGDCE(_APGD):
    """APGD-CE, L-infinity (Croce & Hein 2020). Uses torch's global generator (seed it).

    Args: eps, steps, restarts, rho, batch_size as in the shared base ``_APGD``.

    Example:
        >>> x_adv = APGDCE(eps=0.1)(model, x, y)
    """

    name: ClassVar[str] = "apgd-ce"
    norm: ClassVar[Norm] = "linf"
    loss: ClassVar[str] = "ce"
    eps: float = 0.15


@register_attack("apgd-dlr")
@dataclass(kw_only=True)
class APGDDLR(_APGD):
    """APGD-DLR, L-infinity: the DLR loss, invariant to the logits' shift and scale (needs >= 3 classes).

    Args: as :class:`APGDCE`.
    """

    name: ClassVar[str] = "apgd-dlr"
    norm: ClassVar[Norm] = "linf"
    loss: ClassVar[str] = "dlr"
    eps: float = 0.15


@register_attack("apgd-ce-l2")
@dataclass(kw_only=True)
class APGDCEL2(_APGD):
    """APGD-CE in the L2 ball (eps over the whole image; default 2.0). Args: as :class:`APGDCE`."""

    name: ClassVar[str] = "apgd-ce-l2"
    norm: ClassVar[Norm] = "l2"
    loss: ClassVar[str] = "ce"
    eps: float = 2.0


@register_attack("apgd-dlr-l2")
@dataclass(kw_only=True)
class APGDDLRL2(_APGD):
    """APGD-DLR in the L2 ball (eps over the whole image; default 2.0). Args: as :class:`APGDCE`."""

    name: ClassVar[str] = "apgd-dlr-l2"
    norm: ClassVar[Norm] = "l2"
    loss: ClassVar[str] = "dlr"
    eps: float = 2.0
