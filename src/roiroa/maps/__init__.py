"""Importance and vulnerability estimators, each ``estimator(model, x, y) -> (N, H, W)``."""

from roiroa.maps.adapters import CaptumAttribution
from roiroa.maps.baselines import baseline_images, gaussian_blur
from roiroa.maps.gradcam import GradCAM, GradCAMPlusPlus, last_conv_name
from roiroa.maps.gradients import IGResult, InputXGradient, IntegratedGradients, reduce_channels
from roiroa.maps.localized import LocalizedAttack, LocalizedResult
from roiroa.maps.occlusion import Occlusion, occlusion_drops
from roiroa.maps.recorder import AttackTrace, GradientRecorder, record_attack
from roiroa.maps.registry import ESTIMATORS, create_estimator, list_estimators, register_estimator
from roiroa.maps.saliency import Saliency
from roiroa.maps.shift import AttributionShift
from roiroa.maps.vulnerability import (
    VULNERABILITY_SOURCES,
    PerturbationMagnitude,
    attack_vulnerability,
    mean_vulnerability,
    perturbation_map,
    unit_mean,
    vulnerability_reading,
)

__all__ = [
    "ESTIMATORS",
    "CaptumAttribution",
    "create_estimator",
    "list_estimators",
    "register_estimator",
    "Occlusion",
    "occlusion_drops",
    "Saliency",
    "AttackTrace",
    "GradientRecorder",
    "record_attack",
    "vulnerability_reading",
    "PerturbationMagnitude",
    "attack_vulnerability",
    "mean_vulnerability",
    "perturbation_map",
    "unit_mean",
    "VULNERABILITY_SOURCES",
    "baseline_images",
    "gaussian_blur",
    "GradCAM",
    "GradCAMPlusPlus",
    "last_conv_name",
    "InputXGradient",
    "IntegratedGradients",
    "IGResult",
    "reduce_channels",
    "LocalizedAttack",
    "LocalizedResult",
    "AttributionShift",
]
