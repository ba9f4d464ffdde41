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
from roiroa.attacks.patch import LocalizedPatch, PatchResult, SquarePGD, UniversalPatch
from roiroa.attacks.square import SquareAttack

__all__ = [
    "ATTACKS",
    "AttackResult",
    "GradientAttack",
    "FGSM",
    "LinfPGD",
    "SquareAttack",
    "L2PGD",
    "LocalizedPatch",
    "PatchResult",
    "SquarePGD",
    "UniversalPatch",
    "create_attack",
    "list_attacks",
    "loss_gradient",
    "register_attack",
]
