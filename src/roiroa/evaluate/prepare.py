"""Prepare once, for every command: a config (or the API's arguments) -> data splits and a ready model.

The model is the user's in-memory module, the weights file of ``model.weights`` (with its normalization), or
a registered architecture trained on the training split (cached) -- the same logic for ``run``, ``defend``
and ``patches``, so every command evaluates the same model on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roiroa.cache import model_hash
from roiroa.data.dataset import ImageDataset, make_dataset, sample_per_class, split_by_class
from roiroa.data.imagenet import LabelledFiles
from roiroa.data.lazy import lazy_dataset
from roiroa.data.sources import open_dataset
from roiroa.errors import InputError
from roiroa.evaluate.config import Config
from roiroa.evaluate.defaults import choose_defaults
from roiroa.geometry import window_starts
from roiroa.models.loading import check_model_fits, load_model
from roiroa.models.normalize import normalization_values
from roiroa.models.train import load_or_train
from roiroa.results import ModelInfo
from roiroa.utils import model_device, resolve_device, stage_seed

DataLike = ImageDataset | tuple[Any, ...] | torch.utils.data.Dataset  # type: ignore[type-arg]


@dataclass(frozen=True)
class Splits:
    """train: trains the model; fit: the subset of train that fits the defences; test: evaluation.

    ``train_source`` may be image files not yet decoded (an ImageNet-size folder): ``train`` decodes them on
    first use (training, retraining), so a run on pretrained weights decodes only its fit and test images. The fit
    images (``data.n_fit`` at most) are decoded; test images from a folder stay image files, decoded chunk by chunk
    where a stage uses them (:class:`roiroa.data.lazy.ImageFiles`), so memory does not grow with their number.
    """

    train_source: ImageDataset | LabelledFiles
    fit: ImageDataset
    test: ImageDataset

    @cached_property
    def train(self) -> ImageDataset:
        """The training images, decoded."""
        source = self.train_source
        return source if isinstance(source, ImageDataset) else source.decode()


@dataclass(frozen=True)
class Prepared:
    """The splits, the model (eval mode, on ``device``), its content hash and where it came from; ``config`` with
    its open values chosen from the data, and ``chosen``: {name: {value, reason}} of those choices."""

    config: Config
    splits: Splits
    model: nn.Module
    model_key: str
    info: ModelInfo
    device: torch.device
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)


def as_dataset(data: DataLike, name: str = "data") -> ImageDataset:
    """An ImageDataset from an ImageDataset, a tuple (images, labels[, classes]) of tensors or arrays, or a torch
    Dataset of (image, label) pairs. Images: (N, C, H, W) float in [0, 1]; labels: (N,) int."""
    if isinstance(data, ImageDataset):
        return data
    if isinstance(data, tuple) and len(data) in (2, 3):
        images, labels = (torch.as_tensor(v) for v in data[:2])
        classes = tuple(str(c) for c in data[2]) if len(data) == 3 else None
        return make_dataset(images, labels, name, classes)
    if isinstance(data, torch.utils.data.Dataset):
        pairs = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        images = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        return make_dataset(images, torch.as_tensor([int(p[1]) for p in pairs]), name)
    raise InputError(
        f"data must be an ImageDataset, a tuple (images, labels) or a torch Dataset; got {type(data).__name__}."
    )


def load_splits(config: Config, data: DataLike | None = None, fit_data: DataLike | None = None) -> Splits:
    """Read the dataset (or take the API's), split it by class (seeded), and draw the fitting and test sets."""
    d = config.data
    source = as_dataset(data) if data is not None else open_dataset(d.source, d.labels, d.class_index, d.resize, d.crop)
    fit_source = fit_data if fit_data is not None else d.fit_source
    if fit_source is not None:  # every source image is a test image; train and fit from elsewhere
        train = (
            as_dataset(fit_data)
            if fit_data is not None
            else open_dataset(d.fit_source or "", d.fit_labels, d.class_index, d.resize, d.crop)
        )
        test = source
        if train.num_classes != test.num_classes:
            raise InputError(
                f"the fitting data has {train.num_classes} classes but the test data has {test.num_classes}: "
                "give datasets with the same classes."
            )
    else:
        train, test = split_by_class(source, d.test_fraction, config.seed)
    if d.max_test is not None:
        test = sample_per_class(test, d.max_test, stage_seed(config.seed, "test-subset"))
    fit = sample_per_class(train, d.n_fit, stage_seed(config.seed, "fit-subset"))
    return Splits(train, decoded(fit), lazily(test))


def decoded(data: ImageDataset | LabelledFiles) -> ImageDataset:
    """The images of ``data``, decoding image files where they are not decoded yet."""
    return data if isinstance(data, ImageDataset) else data.decode()


def lazily(data: ImageDataset | LabelledFiles) -> ImageDataset:
    """``data``, with image files left undecoded until a stage indexes them (see :func:`lazy_dataset`)."""
    return data if isinstance(data, ImageDataset) else lazy_dataset(data)


def check_fits_data(config: Config, data: ImageDataset) -> None:
    """Raise before any work if the config cannot apply to images of this size."""
    _, h, w = data.image_shape
    side = config.limits.max_image_side
    if max(h, w) > side:
        raise InputError(
            f"images are {h}x{w}, above limits.max_image_side ({side}): resize them, or raise limits.max_image_side."
        )
    m = config.maps
    if m.importance == "occlusion" and m.window > min(h, w):
        raise InputError(f"maps.window ({m.window}) is larger than the images ({h}x{w}): use a smaller window.")
    windows = len(window_starts(h, min(m.window, h), m.stride)) * len(window_starts(w, min(m.window, w), m.stride))
    if m.importance == "occlusion" and windows > config.limits.max_windows:
        raise InputError(
            f"occlusion needs {windows} windows per {h}x{w} image, above limits.max_windows "
            f"({config.limits.max_windows}): use a larger maps.window or maps.stride, or raise limits.max_windows."
        )


def normalization_summary(config: Config) -> dict[str, Any] | None:
    """The preset and (mean, std) applied inside the model, or None."""
    m = config.model
    values = normalization_values(m.normalization, m.mean, m.std)
    if values is None:
        return None
    return {"preset": m.normalization, "mean": list(values[0]), "std": list(values[1])}


def load_configured_model(config: Config, splits: Splits, device: torch.device) -> tuple[nn.Module, ModelInfo]:
    """The model of ``config.model``: loaded from ``weights`` where given, else trained (cached)."""
    m, test = config.model, splits.test
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    if m.weights is None:
        trained = load_or_train(m.arch, splits.train, m.training.recipe(), config.seed, device)
        info = ModelInfo(m.arch, "trained", count(trained.model), str(trained.checkpoint), trained.from_cache, None)
        return trained.model, info
    model = load_model(
        m.arch,
        m.weights,
        image_shape=test.image_shape,
        num_classes=test.num_classes,
        normalization=normalization_values(m.normalization, m.mean, m.std),
        device=device,
        trust_code=m.trust_code,
    )
    return model, ModelInfo(m.arch, "weights", count(model), str(Path(m.weights)), False, normalization_summary(config))


def prepare(
    config: Config,
    *,
    model: nn.Module | None = None,
    data: DataLike | None = None,
    fit_data: DataLike | None = None,
) -> Prepared:
    """Splits and model for any command: the API's ``model``/``data`` where given, else the config's.

    An in-memory model is put in eval mode and used where it is (``device = 'auto'``) or moved to the
    configured device; it is checked on one test image before any work.
    """
    splits = load_splits(config, data, fit_data)
    check_fits_data(config, splits.test)
    if model is None:
        device = resolve_device(config.device)
        model, info = load_configured_model(config, splits, device)
    else:
        device = model_device(model) if config.device == "auto" else resolve_device(config.device)
        model = model.to(device).eval()
        params = sum(p.numel() for p in model.parameters())
        info = ModelInfo(type(model).__name__, "in-memory", params, None, False, None)
    check_model_fits(model, splits.test.images[0], splits.test.num_classes)
    config, chosen = choose_defaults(config, splits.test.images, splits.test.labels, model)
    return Prepared(config, splits, model, model_hash(model), info, device, chosen)
