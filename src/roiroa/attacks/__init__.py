"""Attacks with one signature, ``attack(model, x, y, mask=None) -> x_adv``, and a registry by name."""

from roiroa.attacks.adapters import ARTAttack, TorchAttacks
from roiroa.attacks.apgd import APGDCE, APGDCEL2, APGDDLR, APGDDLRL2
from roiroa.attacks.base import (
    ATTACKS,
    Attack,
    GradientAttack,
    attack_params,
    create_attack,
    list_attacks,
    loss_gradient,
    register_attack,
)
from roiroa.attacks.carlini_wagner import CarliniWagnerL2
from roiroa.attacks.deepfool import DeepFool
from roiroa.attacks.gradient import FGSM, L1PGD, L2PGD, LinfPGD
from roiroa.attacks.patch import LocalizedPatch, PatchResult, SquarePGD, UniversalPatch
from roiroa.attacks.square import SquareAttack

__all__ = [
    "APGDCE",
    "APGDCEL2",
    "APGDDLR",
    "APGDDLRL2",
    "ATTACKS",
    "ARTAttack",
    "TorchAttacks",
    "Attack",
    "CarliniWagnerL2",
    "DeepFool",
    "attack_params",
    "GradientAttack",
    "FGSM",
    "LinfPGD",
    "SquareAttack",
    "L2PGD",
    "LocalizedPatch",
    "PatchResult",
    "SquarePGD",
    "UniversalPatch",
    "L1PGD",
    "create_attack",
    "list_attacks",
    "loss_gradient",
    "register_attack",
]
