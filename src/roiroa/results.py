"""Typed results of every command, their one JSON form, and the vocabulary of the statistics.

A results folder holds ``results.json``; its shape is written down in ``roiroa/schema/results.schema.json``
(checked against every results.json the tests write). The report and any program read the same files.
This module holds data only: no model, no attack.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_VERSION = 2
COMMANDS = ("run", "defend", "patches")
SCHEMA_PATH = Path(__file__).parent / "schema" / "results.schema.json"

# Per-image statistics of RoI (I) and RoA (A) and what each measures (the report's glossary).
MAP_STATISTICS = {
    "iou": "IoU of RoI and RoA",
    "dice": "Dice of RoI and RoA",
    "share_roa_in_roi": "share of the RoA inside the RoI",
    "pearson": "Pearson correlation of I and A",
    "spearman": "Spearman correlation of I and A",
    "pointing_game": "share of images whose max of A lies in the RoI",
    "relevance_mass": "share of the total of A inside the RoI",
    "moran_a": "Moran's I of A",
    "moran_a_z": "z-score of Moran's I of A against permutations",
}
DELTA_STATISTICS = {
    "moran_delta": "Moran's I of |delta|",
    "moran_delta_z": "z-score of Moran's I of |delta| against permutations",
}
CONSISTENCY_STATISTICS = {
    "roa_iou_attacks": "IoU of the RoA masks of two attacks (mean over the pairs)",
    "roa_iou_restarts": "IoU of the RoA masks of two random restarts (mean over the attacks)",
    "roa_iou_seeds": "IoU of the RoA masks on models trained with different seeds (mean over the attacks)",
}
SEGMENT_NAMES = ("S_0", "S_I", "S_A", "S_IA")  # label values 0..3 of the segment maps
ALL = "all"  # the statistics' key of the run's RoA map (the mean over the attacks); no attack may be labelled so


@dataclass(frozen=True)
class DatasetInfo:
    """The data of a run: its name and source, class names, image shape (C, H, W) and split sizes."""

    name: str
    source: str
    classes: list[str]
    image_shape: list[int]
    n_train: int
    n_fit: int
    n_test: int


@dataclass(frozen=True)
class ModelInfo:
    """Where the model came from: 'trained' (here, or from the cache), 'weights' (a file) or 'in-memory';
    its clean accuracy on the test images, and a warning when that looks wrong."""

    name: str
    source: str
    parameters: int
    checkpoint: str | None
    from_cache: bool
    normalization: dict[str, Any] | None
    test_accuracy: float | None = None
    warning: str | None = None


@dataclass(frozen=True)
class AttackSummary:
    """One attack on the undefended model: its parameters, how its RoA map is read, and what it did."""

    label: str
    params: dict[str, Any]
    reading: str
    robust_accuracy: float
    success_rate: float
    mean_linf: float
    mean_l2: float


@dataclass(frozen=True)
class GridRow:
    """One cell of a robustness grid, or a defence's per-image worst case, with its 95% Wilson interval.

    setting: 'clean', 'non-adaptive', 'adaptive', 'gradient-free' or 'worst-case'; attack: the attack's label
    ('none' for clean, 'all' for the worst case over attacks); attack_params: the attack and how it was run;
    area: mean blocked fraction of the evaluated inputs (None: the defence blocks no named positions);
    detection_iou: mean IoU of the blocked positions with the attack's patch (None without a patch).
    """

    defence: str
    kind: str
    settings: str
    area: float | None
    setting: str
    attack: str
    attack_params: str
    n_images: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    detection_iou: float | None = None


@dataclass(frozen=True)
class OracleRow:
    """The oracle analysis of one attack at one RoA fraction: each image's own S_A from the known attack, an
    analysis (not a defence), beside a random mask of the same area per image."""

    attack: str
    q_roi: float
    q_roa: float
    area: float
    accuracy: float
    clean_accuracy: float
    random_mask_accuracy: float
    n_images: int


@dataclass(frozen=True)
class Comparison:
    """Defence a against b (its equal-area control, or the undefended model) on the same n images.

    relation: what b is to a ('undefended' or 'control'); setting, attack: the cells compared (the same for
    both). acc_a, acc_b with their 95% Wilson intervals; diff = acc_a - acc_b with its 95% Agresti-Min interval
    (diff_ci) and its percentile bootstrap interval over images (diff_bootstrap_ci); n10 (a right, b wrong) and
    n01 (a wrong, b right), the discordant images; p_value: McNemar's exact two-sided test; p_equivalent: TOST
    that |diff| < margin; p_no_better: one-sided test that diff < margin; verdict: the comparison in words.
    """

    a: str
    b: str
    relation: str
    setting: str
    attack: str
    n_images: int
    acc_a: float
    acc_a_ci: list[float]
    acc_b: float
    acc_b_ci: list[float]
    diff: float
    diff_ci: list[float]
    diff_bootstrap_ci: list[float]
    n10: int
    n01: int
    p_value: float
    margin: float
    p_equivalent: float
    p_no_better: float
    verdict: str


@dataclass(frozen=True)
class OracleControlRow:
    """One mask of the oracle decomposition (one attack, RoI and RoA fractions): the oracle's own S_A or an
    equal-area control, applied with the defence's fill ('fill') or by restoring the clean pixels ('restore').

    mask: 'oracle S_A', 'random', 'random outside RoI', 'top-|delta|', 'top-|delta| outside RoI', 'RoA ignoring
    RoI' or 'random inside RoA'; knows: what the mask is chosen with; area: mean blocked fraction; accuracy =
    correct / n_images with its 95% Wilson interval; diff_vs_oracle: accuracy minus the oracle mask's (same
    replacement, same images) and p_vs_oracle its McNemar exact p-value (None for the oracle itself).
    """

    attack: str
    q_roi: float
    q_roa: float
    mask: str
    replacement: str
    knows: str
    area: float
    n_images: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    diff_vs_oracle: float | None = None
    p_vs_oracle: float | None = None


@dataclass(frozen=True)
class CertifiedRow:
    """A certified defence against one square patch of ``patch_side`` pixels (about ``area`` of the image).

    defence: 'patchcleanser' (double masking); mask_side: [height, width] of each mask; masks: how many; k:
    masks per axis; fill: the per-channel value of masked positions; clean_accuracy: the defence's output on clean
    images; certified_accuracy: images whose every two-mask prediction is the true label (a lower bound on
    robust accuracy against any patch of that size); each with its 95% Wilson interval and counts.
    """

    defence: str
    area: float
    patch_side: int
    mask_side: list[int]
    masks: int
    k: int
    fill: list[float]
    n_images: int
    clean_correct: int
    clean_accuracy: float
    clean_ci: list[float]
    certified_correct: int
    certified_accuracy: float
    certified_ci: list[float]


@dataclass(frozen=True)
class SweepRow:
    """One mask setting of the sweep: clean, non-adaptive and adaptive accuracy, area, the per-image worst case over
    its attacked cells, and membership of the Pareto front on (clean, worst case)."""

    scope: str
    threshold: str
    q_roi: float
    q_roa: float | None
    dilation: int
    fill: str
    area: float
    clean_accuracy: float
    nonadaptive_accuracy: float
    adaptive_accuracy: float
    attack: str
    n_images: int
    pareto: bool = False
    worst_case_accuracy: float | None = None


@dataclass(frozen=True)
class Verdict:
    """One sanity check of an evaluation's attacks (Carlini et al. 2019): its defence, the check's name, whether it
    passed, and what was measured, in words.

    check: 'falls with eps', 'about 0 unbounded', 'worst case <= every attack', 'converged' (more steps and restarts
    do not lower robust accuracy below the interval) or 'no gradient masking' (gradient-free and transfer attacks
    not stronger than the gradient attacks through the defence).
    """

    defence: str
    check: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class SanityRow:
    """Adaptive robust accuracy of one defence against eps: it must fall, and reach about 0 unbounded."""

    defence: str
    eps: list[float]
    accuracy: list[float]
    falls: bool
    unbounded_eps: float
    unbounded_accuracy: float
    attack: str
    n_images: int


def to_json(obj: Any) -> Any:
    """A JSON-able form of dataclasses, dicts, lists and numbers; NaN and infinities become null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def schema() -> dict[str, Any]:
    """The JSON Schema of results.json (all three commands)."""
    return json.loads(SCHEMA_PATH.read_text())  # type: ignore[no-any-return]


@dataclass
class ResultsFolder:
    """What a command writes, as plain data (no model): ``results.json``, ``config.json``, CSV tables
    (file name -> (columns, rows)) and arrays (``maps.npz``: name -> numpy array; a run's maps and gallery)."""

    command: str
    results: dict[str, Any]
    config: dict[str, Any]
    tables: dict[str, tuple[list[str], list[dict[str, Any]]]] = dataclasses.field(default_factory=dict)
    arrays: dict[str, Any] = dataclasses.field(default_factory=dict)
