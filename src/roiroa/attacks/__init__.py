"""Attacks with one signature, ``attack(model, x, y, mask=None) -> x_adv``, and a registry by name."""

from roiroa.attacks.base import (
    ATTACKS,
    AttackResult,
    GradientAttack,
    create_attack,
    list_attacks,
    loss_gradient,
    register_attack,
)
from roiroa.attacks.gradient import FGSM, L2PGD, LinfPGD
from roiroa.attacks.square import SquareAttack

__all__ = [
    "ATTACKS",
    "AttackResult",
    "GradientAttack",
    "FGSM",
    "LinfPGD",
    "SquareAttack",
    "L2PGD",
    "create_attack",
    "list_attacks",
    "loss_gradient",
    "register_attack",
]
