"""What every command shares around the engine: fitting data for the defences, the grid call, and the
common parts of its results (header, dataset, model, per-image flags)."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roiroa.cache import StageCache, hash_json, hash_tensors
from roiroa.data.dataset import ImageDataset
from roiroa.defence.baselines import AdversarialTraining
from roiroa.defence.scopes import FitData
from roiroa.evaluate.attacking import AttackEntry
from roiroa.evaluate.certified import certified_lines
from roiroa.evaluate.comparisons import comparison_lines
from roiroa.evaluate.config import filled
from roiroa.evaluate.defences import BuildContext
from roiroa.evaluate.grid import Cell, CellResult, Defence, GridContext, evaluate_grid, grid_flags
from roiroa.evaluate.maps_stage import compute_maps
from roiroa.evaluate.oracle import oracle_lines
from roiroa.evaluate.prepare import Prepared
from roiroa.evaluate.tasks import Timings
from roiroa.models.loading import accuracy_warning, checkpoint_metadata
from roiroa.models.train import load_or_train
from roiroa.results import RESULTS_VERSION, DatasetInfo, ModelInfo, ResultsFolder, to_json
from roiroa.version import __version__

log = logging.getLogger(__name__)


def fit_key(prepared: Prepared, fit: ImageDataset, attacks: Sequence[AttackEntry]) -> str:
    """The identity of the fitting data and of the maps computed on it (no map is computed here)."""
    c = prepared.config
    inputs = {"data": hash_tensors(fit.pixels(), fit.labels), "model": prepared.model_key, "seed": c.seed}
    return hash_json(inputs | {"attacks": [a.params for a in attacks], "maps": to_json(c.maps), "chunk": c.chunk_size})


def fit_data(prepared: Prepared, fit: ImageDataset, attacks: list[AttackEntry], cache: StageCache) -> FitData:
    """The defences' fitting data: f, the fitting images, and their maps, computed (cached) when a scope asks."""

    def maps() -> tuple[torch.Tensor, torch.Tensor]:
        found = compute_maps(prepared.model, prepared.model_key, fit, attacks, prepared.config, cache)
        return found.importance, found.roa_map

    return FitData(prepared.model, fit.pixels(), fit.labels, fit.num_classes, maps=maps)


def adv_model_provider(prepared: Prepared) -> Callable[[], nn.Module] | None:
    """A way to get the same architecture trained with PGD (Madry et al.; cached), where roiroa trained f."""
    if prepared.info.source != "trained":
        return None
    c, d = prepared.config, prepared.config.defence

    def train() -> nn.Module:
        recipe = c.model.training.recipe()
        recipe = type(recipe)(d.adv_epochs, recipe.lr, recipe.batch_size, recipe.shift)
        adv = AdversarialTraining(eps=filled(d.adv_eps, "defence.adv_eps"), steps=d.adv_steps)
        return load_or_train(c.model.arch, prepared.splits.train, recipe, c.seed, prepared.device, adv).model

    return train


def build_context(prepared: Prepared, fit: ImageDataset, attacks: list[AttackEntry], cache: StageCache) -> BuildContext:
    """Everything defences are built from."""
    data = fit_data(prepared, fit, attacks, cache)
    key = fit_key(prepared, fit, attacks)
    return BuildContext(prepared.model, prepared.model_key, data, key, prepared.config, adv_model_provider(prepared))


def run_grid(
    prepared: Prepared,
    cache: StageCache,
    defences: Sequence[Defence],
    attacks: Sequence[AttackEntry],
    cells: Sequence[Cell],
    data: ImageDataset,
    fit: ImageDataset | None = None,
) -> dict[Cell, CellResult]:
    """The grid's per-image results on ``data`` (attacks fitted first use ``fit``'s images)."""
    c = prepared.config
    fit_data = None if fit is None else (fit.pixels(), fit.labels)
    context = GridContext(prepared.model, prepared.model_key, cache, c.seed, fit_data, c.evaluation.cascade)
    return evaluate_grid(context, defences, attacks, cells, data.images, data.labels, c.chunk_size)


def flag_table(results: dict[Cell, CellResult], data: ImageDataset) -> tuple[list[str], list[dict[str, Any]]]:
    """flags.csv: one row per image and cell (and per defence its worst case: setting 'worst-case', attack 'all'),
    with plain columns (image, index, label, defence, setting, attack, correct): the per-image flags every accuracy
    in the tables is the mean of; 'correct' 0 is an image the cell's attack broke (see :func:`grid_flags`)."""
    columns = ["image", "index", "label", "defence", "setting", "attack", "correct"]
    rows = []
    index, labels = data.index.tolist(), data.labels.tolist()
    for key, flags in grid_flags(results).items():
        defence, setting, attack = key.split("|", 2)
        for i, ok in enumerate(flags.tolist()):
            values = (i, index[i], labels[i], defence, setting, attack, int(ok))
            rows.append(dict(zip(columns, values, strict=True)))
    return columns, rows


def dataset_info(prepared: Prepared, test: ImageDataset, fit: ImageDataset) -> DatasetInfo:
    s, c = prepared.splits, prepared.config
    source = c.data.source if test.name == s.test.name else test.name
    return DatasetInfo(
        test.name, source, list(test.classes), list(test.image_shape), len(s.train_source), len(fit), len(test)
    )


def seen_data_warning(model_source: str, data_source: str) -> str | None:
    """One line of warning when a model roiroa did not train is tested on the bundled MNIST digits, which come
    from MNIST's training set (a model trained on MNIST has seen them), else None."""
    if model_source == "trained" or data_source != "mnist":
        return None
    return (
        "the bundled MNIST digits come from MNIST's training set, which a pretrained MNIST model has likely seen: "
        "for a test-set evaluation pass the MNIST test set (--data t10k-images-idx3-ubyte.gz "
        "--labels t10k-labels-idx1-ubyte.gz)"
    )


def model_info(prepared: Prepared, accuracy: float) -> ModelInfo:
    """The model's provenance with its clean test accuracy, and a warning (also logged) when that accuracy is near
    chance or far under the accuracy stored in the checkpoint (the likely cause is a wrong normalization), or when
    a model roiroa did not train is tested on the bundled MNIST digits (:func:`seen_data_warning`)."""
    i, c = prepared.info, prepared.config
    metadata = checkpoint_metadata(c.model.weights) if i.source == "weights" and c.model.weights else {}
    warning = accuracy_warning(accuracy, prepared.splits.test.num_classes, metadata)
    warning = warning or seen_data_warning(i.source, c.data.source)
    if warning:
        log.warning("roiroa: warning: %s", warning)
    return ModelInfo(i.name, i.source, i.parameters, i.checkpoint, i.from_cache, i.normalization, accuracy, warning)


def header(command: str, prepared: Prepared, timings: Timings) -> dict[str, Any]:
    """The keys every results.json starts with."""
    c = prepared.config
    versions = {"roiroa": __version__, "torch": torch.__version__, "python": platform.python_version()}
    return {
        "roiroa_results_version": RESULTS_VERSION,
        "command": command,
        "seed": c.seed,
        "quick": c.quick,
        "device": str(prepared.device),
        "timings": timings,
        "versions": versions,
        "chosen": prepared.chosen,
    }


def quick_lines(results: dict[str, Any]) -> list[str]:
    """A warning line when the run was a --quick one: its sample is small and its intervals wide."""
    if not results.get("quick"):
        return []
    n = int(results.get("n_test") or results["dataset"]["n_test"])
    half = 100 * 1.96 * (0.25 / n) ** 0.5
    return [
        "",
        f"quick run: only {n} test images (95% intervals up to +-{half:.0f} points) and short attacks; a smoke "
        "test, not numbers to publish (drop --quick).",
    ]


class CommandResult:
    """What every command returns: the folder's content (``folder``), with ``results`` (results.json as a
    dict), ``table()`` (the terminal table) and ``write(out)`` (the results folder and its report)."""

    folder: ResultsFolder

    @property
    def results(self) -> dict[str, Any]:
        """The content of results.json."""
        return self.folder.results

    def table(self) -> str:
        """The terminal table of the results."""
        from roiroa.report.tables import terminal_table

        more = [
            *suite_lines(self.results),
            *quick_lines(self.results),
            *comparison_lines(self.results),
            *oracle_lines(self.results),
            *certified_lines(self.results),
        ]
        return "\n".join([terminal_table(self.results), *more])

    def _repr_html_(self) -> str:
        """The summary Jupyter shows: the model, the attacks, and the verdict on every defence."""
        from roiroa.report.notebook import summary_html

        return summary_html(self.results)

    def write(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the results folder ``out`` (results.json, CSV tables, figures, report.html) and return it."""
        from roiroa.report.folder import write_folder

        return write_folder(self.folder, out, overwrite)


def suite_lines(results: dict[str, Any]) -> list[str]:
    """The attack suite's budget and the sanity verdicts, for the terminal (where results.json has them)."""
    lines = []
    if "suite" in results:
        suite = results["suite"]
        lines += ["", f"attack suite '{suite['name']}' (worst case: {suite['worst_case']}):"]
        lines += [f"  {words}" for words in suite["description"]]
    verdicts = results.get("verdicts", [])
    if verdicts:
        failed = [v for v in verdicts if not v["passed"]]
        lines += ["", f"sanity verdicts: {len(verdicts) - len(failed)} of {len(verdicts)} checks passed"]
        lines += [f"  FAILED {v['defence']}: {v['check']}: {v['detail']}" for v in failed]
    return lines
