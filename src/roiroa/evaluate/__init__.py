"""The experiment engine and its commands: prepare -> maps -> robustness grid -> analysis, and ``run``,
``defend`` and ``patches`` as compositions of them."""

from roiroa.evaluate.config import Config, config_from_dict, load_config, quick
from roiroa.evaluate.prepare import Prepared, Splits, load_splits, prepare

__all__ = ["Config", "Prepared", "Splits", "config_from_dict", "load_config", "load_splits", "prepare", "quick"]
