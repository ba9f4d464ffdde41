"""The run configuration: a tree of frozen dataclasses, read from JSON or TOML, checked strictly.

A run's folder holds ``config.json``, the effective configuration (after ``--quick`` and command
line overrides); passing it back with ``--config`` repeats the run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roiroa.attacks.base import attack_parameters, create_attack
from roiroa.defence.fills import FILL_KINDS
from roiroa.defence.neutralizer import FILLS
from roiroa.errors import InputError
from roiroa.maps.registry import create_estimator, list_importance_estimators, list_vulnerability_estimators
from roiroa.maps.vulnerability import VULNERABILITY_SOURCES
from roiroa.models.normalize import NORMALIZATIONS, normalization_values
from roiroa.models.registry import list_models
from roiroa.models.train import TrainingRecipe
from roiroa.validation import check_choice, check_number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMPORTANCE_METHODS = ("occlusion", "saliency")  # the spine's two; every registered one is accepted
QUICK_TEST_IMAGES = 200
QUICK_FIT_IMAGES = 200
QUICK_STEPS = 10


@dataclass(frozen=True)
class DataConfig:
    """Which images, and how they are split.

    source: 'mnist' (bundled real MNIST), or a .npz file, an IDX images file, or an image folder.
    labels: the IDX labels file (with an IDX images file only).
    test_fraction: share of each class held out for testing.
    max_test: use at most this many test images (balanced over classes); None = all.
    n_fit: images of the training split used to fit the global mask.
    fit_source: a second dataset (same forms as source) that trains the model and fits the mask;
        then every image of ``source`` is a test image (capped by max_test) and nothing is split.
    fit_labels: the IDX labels file of an IDX ``fit_source``.
    """

    source: str = "mnist"
    labels: str | None = None
    test_fraction: float = 0.2
    max_test: int | None = None
    n_fit: int = 500
    fit_source: str | None = None
    fit_labels: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The model: trained on the training split (cached), or loaded from ``weights``.

    arch: a registered architecture (``roiroa list``) or user code 'package.module:callable'
        (called with num_classes where it takes it, else with no arguments; needs ``weights``).
    training: the recipe when the model is trained (no ``weights``).
    weights: a pretrained state_dict (.pt/.pth/.th, safetensors) to load instead of training.
    normalization: 'none', 'cifar10' or 'imagenet': the (mean, std) the weights were trained with;
        applied inside the model, so attacks and maps stay in [0, 1] pixels.
    mean, std: explicit per-channel normalization instead of a preset.
    trust_code: allow a TorchScript ``weights`` file (it runs its own code when loaded).
    """

    arch: str = "mnist-cnn"
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    weights: str | None = None
    normalization: str = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_code: bool = False


@dataclass(frozen=True)
class MapsConfig:
    """Importance (RoI) and vulnerability (RoA) estimators.

    importance: a registered importance estimator ('occlusion', 'saliency', 'integrated-gradients',
        'grad-cam', ...; ``roiroa list`` shows them).
    window, stride, baseline: occlusion windows and their fill.
    vulnerability: 'auto', 'perturbation' or 'gradient' (see roiroa.maps.vulnerability).
    batch_size: occluded images per forward pass.
    importance_params: more keywords of the importance estimator (e.g. {steps = 64} for
        integrated gradients, {output = 'logit'} for occlusion).
    vulnerability_estimator: None (default): the RoA map 'all' is the mean of the attacks' maps;
        else a registered vulnerability estimator ('localized', 'attribution-shift',
        'perturbation') whose map, at unit mean |A|, becomes 'all'.
    vulnerability_params: its keywords (e.g. {attack = {name = 'pgd-linf', eps = 0.3}}).
    """

    importance: str = "occlusion"
    window: int = 4
    stride: int = 2
    baseline: float = 0.0
    vulnerability: str = "auto"
    batch_size: int = 256
    importance_params: dict[str, Any] = field(default_factory=dict)
    vulnerability_estimator: str | None = None
    vulnerability_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegionsConfig:
    """Isolation: top-q fractions of the RoI and RoA, and the method used by the defence."""

    q_roi: float = 0.2
    q_roa: float = 0.2
    threshold: str = "top_q"


@dataclass(frozen=True)
class DefenceConfig:
    """Neutralization: the fill, and the RoA fractions of the oracle analysis."""

    fill: str = "zero"
    oracle_q: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class StatisticsConfig:
    """Dataset statistics (roiroa.evaluate.dataset_statistics).

    bootstrap: resamples of each 95% confidence interval over images (scipy.stats.bootstrap).
    ci_method: 'BCa' or 'percentile'.
    contiguity: neighbours of Moran's I, 'rook' (edges) or 'queen' (edges and corners).
    restarts: re-run every random-start attack once with another seed, for the consistency of the RoA
        across random restarts.
    seed_models: train this many more models (seeds seed+1, ...; cached) and attack them, for the
        consistency of the RoA across model seeds (0 = skip; each costs a training run).
    """

    bootstrap: int = 2000
    ci_method: str = "BCa"
    contiguity: str = "rook"
    restarts: bool = True
    seed_models: int = 0


@dataclass(frozen=True)
class DefendConfig:
    """``roiroa defend``: the defence table, the parameter sweep and the sanity checks.

    n_test: test images of the table and the sweep (a balanced subset of the test split).
    eps, steps: the L-inf budget and PGD steps of every attack in the table.
    square_queries: iterations of the gradient-free Square attack.
    eot_draws: draws per gradient for random fills (EOT).
    q_roi, q_roa, threshold, dilation, fill: the mask parameters of the table's scopes.
    probe_eps, probe_steps: the per-input scope's own probe attack (PGD L-inf, no random start).
    sweep_q_roa, sweep_dilation, sweep_fills: the mask parameter sweep.
    n_sanity, sanity_eps: images and budgets of the check that robust accuracy falls with eps.
    bits, median_size, jpeg_quality, blur_sigma: the baselines' settings.
    adv_eps, adv_steps, adv_epochs: PGD adversarial training of the same model.
    run_images: test images of the short form inside ``roiroa run`` (0 turns it off).
    """

    n_test: int = 100
    eps: float = 0.15
    steps: int = 20
    square_queries: int = 100
    eot_draws: int = 4
    q_roi: float = 0.2
    q_roa: float = 0.2
    threshold: str = "top_q"
    dilation: int = 0
    fill: str = "zero"
    probe_eps: float = 0.1
    probe_steps: int = 5
    sweep_q_roa: tuple[float, ...] = (0.1, 0.2, 0.3)
    sweep_dilation: tuple[int, ...] = (0, 1)
    sweep_fills: tuple[str, ...] = ("zero", "mean", "pixel_mean", "blur", "noise")
    n_sanity: int = 50
    sanity_eps: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 1.0)
    bits: int = 1
    median_size: int = 3
    jpeg_quality: int = 50
    blur_sigma: float = 1.0
    adv_eps: float = 0.15
    adv_steps: int = 7
    adv_epochs: int = 12
    run_images: int = 50


def default_attacks() -> tuple[dict[str, Any], ...]:
    """FGSM and PGD L-infinity at eps 0.15, PGD L2 at eps 2.0, 20 steps."""
    return (
        {"name": "fgsm", "eps": 0.15},
        {"name": "pgd-linf", "eps": 0.15, "steps": 20},
        {"name": "pgd-l2", "eps": 2.0, "steps": 20},
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything that makes a run. ``attacks`` is a list of {name, label?, hyperparameters...}.

    ``chunk_size``: images attacked and mapped at a time (each chunk is cached on its own); the peak
    memory of those stages does not grow with the number of images.
    """

    seed: int = 0
    device: str = "auto"
    quick: bool = False
    batch_size: int = 64
    examples: int = 8
    chunk_size: int = 1024
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attacks: tuple[dict[str, Any], ...] = field(default_factory=default_attacks)
    maps: MapsConfig = field(default_factory=MapsConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    defend: DefendConfig = field(default_factory=DefendConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :func:`config_from_dict` reads back to an equal config."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def attack_label(spec: dict[str, Any]) -> str:
    """The name results use for an attack entry: its 'label', else its registered 'name'."""
    return str(spec.get("label", spec["name"]))


def attack_kwargs(spec: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The hyperparameters of an attack entry, with the run's batch size unless it sets its own."""
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "label")}
    kwargs.setdefault("batch_size", batch_size)
    return kwargs


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` (lists to tuples, ints to floats), or raise InputError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        return _check_type(value, next(o for o in options if o is not type(None)), where)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(f"config: '{where}' must be a table of settings; got {value!r}.")
        return _from_dict(typing.cast(type, hint), value, where + ".")
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config: '{where}' must be a list; got {value!r}.")
        return tuple(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config: '{where}' must be a table; got {value!r}.")
        return dict(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise InputError(f"config: '{where}' must be {hint.__name__}; got {value!r}.")
    return float(value) if hint is float else value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"config: unknown key '{prefix}{unknown[0]}'; valid keys here: {', '.join(names)}.")
    return cls(**{k: _check_type(v, hints[k], prefix + k) for k, v in data.items()})


# The declared constraints: key -> keywords of check_number, or the allowed choices.
NUMBER_RANGES: dict[str, dict[str, Any]] = {
    "seed": {"low": 0, "integer": True},
    "batch_size": {"low": 1, "integer": True},
    "examples": {"low": 0, "high": 64, "integer": True},
    "chunk_size": {"low": 1, "integer": True},
    "data.test_fraction": {"low": 0.0, "low_open": True, "high": 0.99},
    "data.max_test": {"low": 1, "integer": True},
    "data.n_fit": {"low": 1, "integer": True},
    "model.training.epochs": {"low": 1, "high": 1000, "integer": True},
    "model.training.lr": {"low": 0.0, "low_open": True, "high": 1.0},
    "model.training.batch_size": {"low": 1, "integer": True},
    "model.training.shift": {"low": 0, "high": 8, "integer": True},
    "maps.window": {"low": 1, "integer": True},
    "maps.stride": {"low": 1, "integer": True},
    "maps.baseline": {"low": 0.0, "high": 1.0},
    "maps.batch_size": {"low": 1, "integer": True},
    "regions.q_roi": {"low": 0.0, "low_open": True, "high": 1.0},
    "regions.q_roa": {"low": 0.0, "low_open": True, "high": 1.0},
    "statistics.bootstrap": {"low": 100, "high": 100000, "integer": True},
    "statistics.seed_models": {"low": 0, "high": 10, "integer": True},
    "defend.n_test": {"low": 1, "integer": True},
    "defend.eps": {"low": 0.0, "low_open": True, "high": 1.0},
    "defend.steps": {"low": 1, "integer": True},
    "defend.square_queries": {"low": 1, "integer": True},
    "defend.eot_draws": {"low": 1, "integer": True},
    "defend.q_roi": {"low": 0.0, "low_open": True, "high": 1.0},
    "defend.q_roa": {"low": 0.0, "low_open": True, "high": 1.0},
    "defend.dilation": {"low": 0, "high": 8, "integer": True},
    "defend.probe_eps": {"low": 0.0, "low_open": True, "high": 1.0},
    "defend.probe_steps": {"low": 1, "integer": True},
    "defend.n_sanity": {"low": 1, "integer": True},
    "defend.bits": {"low": 1, "high": 16, "integer": True},
    "defend.median_size": {"low": 1, "high": 15, "integer": True},
    "defend.jpeg_quality": {"low": 1, "high": 95, "integer": True},
    "defend.blur_sigma": {"low": 0.0, "low_open": True, "high": 10.0},
    "defend.adv_eps": {"low": 0.0, "low_open": True, "high": 1.0},
    "defend.adv_steps": {"low": 1, "integer": True},
    "defend.adv_epochs": {"low": 1, "high": 1000, "integer": True},
    "defend.run_images": {"low": 0, "integer": True},
}
CHOICES: dict[str, Any] = {
    "device": lambda: ("auto", "cpu", "cuda"),
    "model.arch": list_models,
    "model.normalization": lambda: ("none", *NORMALIZATIONS),
    "maps.importance": list_importance_estimators,
    "maps.vulnerability": lambda: VULNERABILITY_SOURCES,
    "regions.threshold": lambda: ("top_q", "otsu"),
    "defence.fill": lambda: FILLS,
    "statistics.ci_method": lambda: ("BCa", "percentile"),
    "statistics.contiguity": lambda: ("rook", "queen"),
    "defend.threshold": lambda: ("top_q", "otsu"),
    "defend.fill": lambda: FILL_KINDS,
}


def _get(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def importance_spec(config: RunConfig) -> tuple[str, dict[str, Any]]:
    """The importance estimator's registered name and keywords: occlusion gets the window, stride,
    baseline and batch size of ``maps``, saliency the run's batch size; ``importance_params`` win."""
    m = config.maps
    base: dict[str, Any] = {}
    if m.importance == "occlusion":
        base = {"window": m.window, "stride": m.stride, "baseline": m.baseline, "batch_size": m.batch_size}
    elif m.importance == "saliency":
        base = {"batch_size": config.batch_size}
    return m.importance, base | dict(m.importance_params)


def validate(config: RunConfig) -> None:
    """Check every value that the types alone do not (ranges, names, attack hyperparameters)."""
    for key, limits in NUMBER_RANGES.items():
        if _get(config, key) is not None:
            check_number("config", key, _get(config, key), **limits)
    for key, choices in CHOICES.items():
        if key == "model.arch" and ":" in config.model.arch:
            continue  # user code, package.module:callable
        check_choice("config", key, _get(config, key), choices())
    validate_model(config.model)
    if config.maps.stride > config.maps.window:
        raise InputError(
            f"config: maps.stride ({config.maps.stride}) is larger than maps.window ({config.maps.window}); "
            "windows would leave gaps: use a stride <= window."
        )
    for q in config.defence.oracle_q:
        check_number("config", "defence.oracle_q", q, low=0.0, low_open=True, high=1.0)
    d = config.defend
    for q in d.sweep_q_roa:
        check_number("config", "defend.sweep_q_roa", q, low=0.0, low_open=True, high=1.0)
    for r in d.sweep_dilation:
        check_number("config", "defend.sweep_dilation", r, low=0, high=8, integer=True)
    for name in d.sweep_fills:
        check_choice("config", "defend.sweep_fills", name, FILL_KINDS)
    for e in d.sanity_eps:
        check_number("config", "defend.sanity_eps", e, low=0.0, low_open=True, high=1.0)
    name, kwargs = importance_spec(config)
    create_estimator(name, **kwargs)  # checks every keyword
    if config.maps.vulnerability_estimator is not None:
        name = config.maps.vulnerability_estimator
        check_choice("config", "maps.vulnerability_estimator", name, list_vulnerability_estimators())
        create_estimator(config.maps.vulnerability_estimator, **config.maps.vulnerability_params)
    validate_attacks(config.attacks, config.batch_size)


def validate_model(model: ModelConfig) -> None:
    """Normalization and user-code architectures go with pretrained ``weights`` only."""
    normalization_values(model.normalization, model.mean, model.std)  # checks the preset name and mean/std
    if model.weights is None and ":" in model.arch:
        raise InputError(
            f"config: model.arch {model.arch!r} is user code: give its weights (model.weights, --weights); "
            "roiroa trains registered architectures only."
        )
    if model.weights is None and (model.normalization != "none" or model.mean is not None):
        raise InputError(
            "config: model.normalization/mean/std describe pretrained weights: give model.weights, or drop them."
        )


def validate_attacks(attacks: tuple[dict[str, Any], ...], batch_size: int) -> None:
    """Every attack entry names a registered attack with valid hyperparameters; labels are distinct."""
    if not attacks:
        raise InputError("config: 'attacks' is empty; give at least one attack, e.g. {name = 'pgd-linf'}.")
    labels = []
    for i, spec in enumerate(attacks):
        if "name" not in spec:
            raise InputError(f"config: attacks[{i}] has no 'name'; add one, e.g. name = 'pgd-linf'.")
        create_attack(spec["name"], **attack_kwargs(spec, batch_size))  # checks every hyperparameter
        labels.append(attack_label(spec))
    if len(set(labels)) != len(labels):
        raise InputError("config: two attacks share a name; give each a distinct 'label'.")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from a dict (unknown keys and wrong types are InputErrors)."""
    config = _from_dict(RunConfig, data)
    validate(config)
    return config


def load_config(path: str | Path) -> RunConfig:
    """Read a RunConfig from a .json or .toml file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read config {path} ({err.strerror}); check the path.") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"config {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {err}.") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} must hold a table of settings at the top level.")
    return config_from_dict(data)


def quick(config: RunConfig) -> RunConfig:
    """The --quick variant: at most 200 test and 200 fitting images, at most 10 attack steps."""
    data = dataclasses.replace(
        config.data,
        max_test=min(config.data.max_test or QUICK_TEST_IMAGES, QUICK_TEST_IMAGES),
        n_fit=min(config.data.n_fit, QUICK_FIT_IMAGES),
    )
    attacks = tuple(
        {**spec, "steps": min(int(spec.get("steps", QUICK_STEPS)), QUICK_STEPS)}
        if "steps" in attack_parameters(spec["name"])
        else spec
        for spec in config.attacks
    )
    return dataclasses.replace(config, quick=True, data=data, attacks=attacks, defend=quick_defend(config.defend))


def quick_defend(d: DefendConfig) -> DefendConfig:
    """The --quick variant of ``roiroa defend``: 40 images, 5 steps, a small sweep, 1 epoch of adversarial training."""
    return dataclasses.replace(
        d,
        n_test=min(d.n_test, 40),
        steps=min(d.steps, 5),
        square_queries=min(d.square_queries, 20),
        eot_draws=min(d.eot_draws, 2),
        probe_steps=min(d.probe_steps, 2),
        sweep_q_roa=d.sweep_q_roa[:2],
        sweep_dilation=d.sweep_dilation[:1],
        sweep_fills=tuple(f for f in d.sweep_fills if f in ("zero", "noise")),
        n_sanity=min(d.n_sanity, 20),
        sanity_eps=(0.05, 0.3, 1.0),
        adv_steps=min(d.adv_steps, 2),
        adv_epochs=min(d.adv_epochs, 1),
        run_images=min(d.run_images, 40),
    )
