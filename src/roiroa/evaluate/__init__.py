"""The experiment: configuration, runner, robustness and oracle evaluation."""

from roiroa.evaluate.config import RunConfig, config_from_dict, load_config, quick
from roiroa.evaluate.robustness import correct, evaluate_defence, oracle_analysis
from roiroa.evaluate.runner import MapSet, RunResult, Splits, compute_maps, load_splits, run_experiment
from roiroa.evaluate.stages import StageCache

__all__ = [
    "RunConfig",
    "config_from_dict",
    "load_config",
    "quick",
    "correct",
    "evaluate_defence",
    "oracle_analysis",
    "MapSet",
    "RunResult",
    "Splits",
    "compute_maps",
    "load_splits",
    "run_experiment",
    "StageCache",
]
