"""The Python API: the whole pipeline on any ``torch.nn.Module`` and any images, in a notebook or a script.

>>> exp = roiroa.Experiment(model=my_net, data=(x, y), quick=True)
>>> run = exp.run()            # maps, regions, statistics with intervals, the global mask and its controls
>>> print(run.table())
>>> run.write("runs/mine")     # results.json, CSV tables, figures, report.html
>>> table = exp.defend()       # every defence against adaptive attackers, with intervals
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from roiroa.cache import StageCache
from roiroa.errors import InputError
from roiroa.evaluate.config import Config, quick
from roiroa.evaluate.defend import DefendResult, run_defend
from roiroa.evaluate.patches import PatchesResult, run_patches
from roiroa.evaluate.prepare import DataLike
from roiroa.evaluate.run import RunResult, run_experiment
from roiroa.evaluate.validate import config_from_dict, load_config


class Experiment:
    """One experiment: a model, images, and a config; ``run()``, ``defend()`` and ``patches()`` evaluate it.

    Args:
        model: any ``torch.nn.Module`` mapping (N, C, H, W) in [0, 1] to logits (N, K); None: the config's model
            (trained, or loaded from ``model.weights``). It is put in eval mode, on its device (``device='auto'``).
        data: the images: a tuple (images (N, C, H, W) in [0, 1], labels (N,)[, class names]), an ImageDataset or
            a torch Dataset of (image, label); None: the config's ``data.source``. Split by class into fitting and
            test images, unless ``fit_data`` gives the fitting images (then every image of ``data`` is tested).
        config: a :class:`Config`, a path to a .toml/.json config, or a dict of settings laid over the defaults
            (e.g. ``{"attacks": [{"name": "pgd-linf", "eps": 0.03}], "regions": {"q_roi": 0.3}}``).
        quick: apply the --quick overlay.
        cache: True (the user's cache folder, ``$ROIROA_CACHE``), False (keep no result on disk) or a cache
            folder (its ``stages/``, as the command line's).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        data: DataLike | None = None,
        *,
        fit_data: DataLike | None = None,
        config: Config | str | Path | dict[str, Any] | None = None,
        quick: bool = False,
        cache: bool | str | Path = True,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        self.model, self.data, self.fit_data = model, data, fit_data
        self.config = self._config(config, quick)
        folder = None if cache is False else (Path(cache) / "stages" if cache is not True else None)
        self.cache = StageCache.default() if cache is True else StageCache(folder)

    @staticmethod
    def _config(config: Config | str | Path | dict[str, Any] | None, overlay: bool) -> Config:
        if isinstance(config, (str, Path)):
            config = load_config(config)
        found = config if isinstance(config, Config) else config_from_dict(config or {})
        return quick(found) if overlay else found

    def _arguments(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "fit_data": self.fit_data, "cache": self.cache}

    def run(self) -> RunResult:
        """The whole analysis (``roiroa run``): see :func:`roiroa.evaluate.run.run_experiment`."""
        return run_experiment(self.config, **self._arguments())

    def defend(self) -> DefendResult:
        """Every defence against adaptive attackers (``roiroa defend``)."""
        return run_defend(self.config, **self._arguments())

    def patches(self) -> PatchesResult:
        """Patch attacks against per-input fragment defences and LGS (``roiroa patches``)."""
        return run_patches(self.config, **self._arguments())
