"""The experiment engine and its commands: prepare -> maps -> robustness grid -> analysis, and ``run``,
``defend`` and ``patches`` as compositions of them."""

from roiroa.evaluate.config import Config, quick
from roiroa.evaluate.prepare import Prepared, Splits, load_splits, prepare
from roiroa.evaluate.validate import config_from_dict, load_config

__all__ = ["Config", "Prepared", "Splits", "config_from_dict", "load_config", "load_splits", "prepare", "quick"]
