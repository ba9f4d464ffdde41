"""FGSM and PGD (L-infinity and L2): hyperparameters only; the loop is in :mod:`roiroa.attacks.base`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from roiroa.attacks.base import GradientAttack, Norm, register_attack


@register_attack("fgsm")
@dataclass(kw_only=True)
class FGSM(GradientAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps along sign(grad).

    Args:
        eps: L-infinity budget in (0, 1] (pixel units of [0, 1] images). Default 0.15.
        batch_size: images per chunk. Default 64.

    Example:
        >>> x_adv = FGSM(eps=0.1)(model, x, y)
    """

    name: ClassVar[str] = "fgsm"
    norm: ClassVar[Norm] = "linf"
    steps: ClassVar[int] = 1  # type: ignore[misc]
    random_start: ClassVar[bool] = False  # type: ignore[misc]
    restarts: ClassVar[int] = 1  # type: ignore[misc]
    loss: ClassVar[str] = "ce"  # type: ignore[misc]
    best_iterate: ClassVar[bool] = False  # type: ignore[misc]
    eps: float = 0.15
    batch_size: int = 64

    def step_size_value(self) -> float:
        return self.eps


@dataclass(kw_only=True)
class _PGD(GradientAttack):
    """Fields shared by both PGD norms."""

    eps: float
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    best_iterate: bool = False
    batch_size: int = 64

    def step_size_value(self) -> float:
        """``step_size`` if given, else 2.5 * eps / steps (Madry et al. 2018)."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


@register_attack("pgd-linf")
@dataclass(kw_only=True)
class LinfPGD(_PGD):
    """Projected gradient descent in the L-infinity ball (Madry et al. 2018).

    Args:
        eps: budget in (0, 1]. Default 0.15.
        steps: gradient steps. Default 20.
        step_size: absolute step; None means 2.5 * eps / steps.
        random_start: start from a uniform point of the ball. Default True.
        restarts: random restarts; an image keeps the first restart that fools the model. Default 1.
        loss: the objective raised: 'ce' (cross-entropy), 'margin' (CW) or 'dlr'. Default 'ce'.
        best_iterate: an image counts as broken if any iterate fooled the model (that iterate is returned);
            False returns the last iterate, as ART does. Default False.
        batch_size: images per chunk. Default 64.
    """

    name: ClassVar[str] = "pgd-linf"
    norm: ClassVar[Norm] = "linf"
    eps: float = 0.15


@register_attack("pgd-l2")
@dataclass(kw_only=True)
class L2PGD(_PGD):
    """Projected gradient descent in the L2 ball; the step is grad / ||grad||_2.

    Args:
        eps: L2 budget > 0 over the whole image (28x28 MNIST: 2.0 is a strong attack). Default 2.0.
        steps, step_size, random_start, restarts, loss, best_iterate, batch_size: as in :class:`LinfPGD`.
    """

    name: ClassVar[str] = "pgd-l2"
    norm: ClassVar[Norm] = "l2"
    eps: float = 2.0


@register_attack("pgd-l1")
@dataclass(kw_only=True)
class L1PGD(_PGD):
    """Sparse PGD in the L1 ball: each step changes the one pixel (and channel) of largest |grad| by
    ``step_size``; the perturbation is rescaled onto the ball. Step for step ART's
    ``ProjectedGradientDescent(norm=1)``, so its perturbation is naturally local (at most ``steps``
    positions change).

    Args:
        eps: L1 budget > 0 over the whole image. Default 10.0.
        steps: gradient steps (= the most positions changed). Default 20.
        step_size: absolute step; None means 2.5 * eps / steps.
        random_start: start from a random point of the L1 ball (ART's random_sphere). Default False.
        restarts, loss, best_iterate, batch_size: as in :class:`LinfPGD`.
    """

    name: ClassVar[str] = "pgd-l1"
    norm: ClassVar[Norm] = "l1"
    eps: float = 10.0
    random_start: bool = False
