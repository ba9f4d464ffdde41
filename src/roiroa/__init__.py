"""roiroa: where classifiers look (Region of Importance), where attacks act (Region of Attack),
how the two are laid out, and what neutralizing the region that is vulnerable but not important buys.

Every stage takes and returns plain tensors: images x (N, C, H, W) float in [0, 1], labels
y (N,) int64, maps (N, H, W), masks (N, H, W) bool. ``roiroa.Experiment`` runs the whole pipeline on
any ``torch.nn.Module`` and any images.
"""

from roiroa.attacks import FGSM, L2PGD, LinfPGD, create_attack, list_attacks
from roiroa.data import ImageDataset, load_dataset, split_by_class
from roiroa.defence import (
    EqualAreaControl,
    FitData,
    FixedMask,
    GlobalMask,
    Neutralized,
    PerClassMask,
    PerInputMask,
    Preprocessed,
    make_fill,
    neutralize,
)
from roiroa.errors import InputError
from roiroa.evaluate import Config, config_from_dict, load_config, quick
from roiroa.evaluate.experiment import Experiment
from roiroa.maps import Occlusion, PerturbationMagnitude, Saliency, create_estimator, list_estimators, record_attack
from roiroa.models import MnistCNN, Normalized, accuracy, create_model, list_models, load_model, load_or_train, predict
from roiroa.regions import Segments, dice, grid_regions, iou, isolate, pearson, spearman, top_q_mask
from roiroa.regions.spatial import morans_i
from roiroa.regions.statistics import bootstrap_ci
from roiroa.report.notebook import show_maps
from roiroa.version import __version__

__all__ = [
    "__version__",
    "Experiment",
    "InputError",
    "ImageDataset",
    "load_dataset",
    "split_by_class",
    "MnistCNN",
    "create_model",
    "list_models",
    "load_or_train",
    "load_model",
    "Normalized",
    "predict",
    "accuracy",
    "FGSM",
    "LinfPGD",
    "L2PGD",
    "create_attack",
    "list_attacks",
    "Occlusion",
    "Saliency",
    "PerturbationMagnitude",
    "record_attack",
    "create_estimator",
    "list_estimators",
    "grid_regions",
    "isolate",
    "top_q_mask",
    "Segments",
    "iou",
    "dice",
    "pearson",
    "spearman",
    "morans_i",
    "bootstrap_ci",
    "FitData",
    "FixedMask",
    "GlobalMask",
    "PerClassMask",
    "PerInputMask",
    "EqualAreaControl",
    "Neutralized",
    "Preprocessed",
    "neutralize",
    "make_fill",
    "Config",
    "config_from_dict",
    "load_config",
    "quick",
    "show_maps",
]
