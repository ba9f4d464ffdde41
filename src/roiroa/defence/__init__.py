"""The neutralization defence N(x) = x (1 - M) + v M as f o N (:class:`Neutralized`), its mask scopes and
fills, the input-transformation baselines (:class:`Preprocessed`), and the adaptive attacker's tools."""

from roiroa.defence.adaptive import EOT, bpda
from roiroa.defence.baselines import BASELINES, AdversarialTraining, Preprocessed, Transform
from roiroa.defence.fills import FILLS, Fill, make_fill
from roiroa.defence.fragments import FragmentDetector
from roiroa.defence.lgs import LocalGradientSmoothing
from roiroa.defence.neutralizer import Neutralized, neutralize
from roiroa.defence.scopes import (
    SCOPES,
    EqualAreaControl,
    FitData,
    FixedMask,
    GlobalMask,
    MaskScope,
    PerClassMask,
    PerInputMask,
    random_blob_mask,
    random_mask_like,
)

__all__ = [
    "BASELINES",
    "EOT",
    "FILLS",
    "SCOPES",
    "AdversarialTraining",
    "EqualAreaControl",
    "Fill",
    "FitData",
    "FixedMask",
    "FragmentDetector",
    "GlobalMask",
    "LocalGradientSmoothing",
    "MaskScope",
    "Neutralized",
    "PerClassMask",
    "PerInputMask",
    "Preprocessed",
    "Transform",
    "bpda",
    "make_fill",
    "neutralize",
    "random_blob_mask",
    "random_mask_like",
]
