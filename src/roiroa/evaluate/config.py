"""The experiment config: one schema for ``roiroa run``, ``defend`` and ``patches``, read from TOML or JSON.

A tree of frozen dataclasses. Each field's type is the schema (``Literal`` for fixed choices) and its metadata
holds its range or registry; components named in lists (attacks, defences) are checked against their own
fields. Every error in a file is reported at once, one line each. A results folder holds ``config.json``,
the effective config (after ``--quick`` and the command line); ``--config config.json`` repeats the run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from roiroa.attacks.base import attack_parameters
from roiroa.attacks.suite import default_suite_specs, quick_suite_specs
from roiroa.models.train import TrainingRecipe

T = TypeVar("T")


def bounded(default: Any, low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Any:
    """A dataclass field whose numbers (the value, or each item of a tuple) lie in [low, high] ((low, high])."""
    factory = {"default_factory": lambda: default} if isinstance(default, tuple) else {"default": default}
    return field(**factory, metadata={"low": low, "high": high, "open_low": open_low})  # type: ignore[call-overload]


def named(default: Any, registry: str) -> Any:
    """A dataclass field holding a component name of ``registry`` (or user code 'package.module:callable')."""
    return field(default=default, metadata={"registry": registry})


@dataclass(frozen=True)
class DataConfig:
    """Which images, and how they are split.

    source: 'mnist' (bundled real MNIST), or a .npz file, an IDX images file, or an image folder.
    labels: the IDX labels file (with an IDX images file only).
    test_fraction: share of each class held out for testing.
    max_test: use at most this many test images (balanced over classes); None = all.
    n_fit: images of the training split that fit the defences' masks and detectors.
    fit_source, fit_labels: a second dataset that trains the model and fits the defences; then every image of
        ``source`` is a test image (capped by max_test) and nothing is split.
    class_index: with an image folder, a class-index JSON (imagenet_class_index.json): class names, and the
        index of each class subfolder (``labels`` may then also be a CSV ``file,label``, label = output index).
    resize, crop: preprocessing of an image folder: shorter side resized to ``resize`` pixels (bilinear), then
        the centre ``crop`` x ``crop`` kept (ImageNet: 256 and 224). None: images as they are.
    """

    source: str = "mnist"
    labels: str | None = None
    test_fraction: float = bounded(0.2, 0.0, 0.99, open_low=True)
    max_test: int | None = bounded(None, 1)
    n_fit: int = bounded(500, 1)
    fit_source: str | None = None
    fit_labels: str | None = None
    class_index: str | None = None
    resize: int | None = bounded(None, 1, 8192)
    crop: int | None = bounded(None, 1, 8192)


@dataclass(frozen=True)
class TrainingConfig:
    """How a registered architecture is trained when no weights are given (see TrainingRecipe)."""

    epochs: int = bounded(12, 1, 1000)
    lr: float = bounded(3e-3, 0.0, 1.0, open_low=True)
    batch_size: int = bounded(64, 1, 65536)
    shift: int = bounded(2, 0, 8)

    def recipe(self) -> TrainingRecipe:
        return TrainingRecipe(self.epochs, self.lr, self.batch_size, self.shift)


@dataclass(frozen=True)
class ModelConfig:
    """The model: trained on the training split (cached), or loaded from ``weights``.

    arch: a registered architecture (``roiroa list``) or user code 'package.module:callable'.
    weights: a pretrained state_dict (.pt/.pth/.th, safetensors) to load instead of training.
    normalization: 'none', 'cifar10' or 'imagenet': the (mean, std) the weights were trained with, applied
        inside the model, so attacks and maps stay in [0, 1] pixels. mean, std: explicit values instead.
    trust_code: allow a TorchScript ``weights`` file (it runs its own code when loaded).
    """

    arch: str = named("mnist-cnn", "model")
    training: TrainingConfig = field(default_factory=TrainingConfig)
    weights: str | None = None
    normalization: Literal["none", "cifar10", "imagenet"] = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_code: bool = False


@dataclass(frozen=True)
class MapsConfig:
    """Importance (RoI) and vulnerability (RoA) maps.

    importance: an importance estimator ('occlusion', 'saliency', 'integrated-gradients', 'grad-cam', ...).
    window, stride, baseline, batch_size: occlusion windows (pixels), their fill value, occluded images per pass.
    importance_params: more keywords of the estimator (e.g. {output = 'logit'} for occlusion).
    vulnerability: how an attack's trace becomes a map: 'auto', 'perturbation' or 'gradient'.
    vulnerability_estimator: None: the RoA map 'all' is the mean of the attacks' maps; else an estimator
        ('localized', 'attribution-shift', 'perturbation') whose map becomes 'all'. vulnerability_params: its keywords.
    """

    importance: str = named("occlusion", "importance estimator")
    window: int = bounded(4, 1)
    stride: int = bounded(2, 1)
    baseline: float = bounded(0.0, 0.0, 1.0)
    batch_size: int = bounded(256, 1, 65536)
    importance_params: dict[str, Any] = field(default_factory=dict)
    vulnerability: Literal["auto", "perturbation", "gradient"] = "auto"
    vulnerability_estimator: str | None = named(None, "vulnerability estimator")
    vulnerability_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegionsConfig:
    """Isolation: the RoI and RoA as top-q fractions of positions, or Otsu's threshold ('threshold')."""

    q_roi: float = bounded(0.2, 0.0, 1.0, open_low=True)
    q_roa: float = bounded(0.2, 0.0, 1.0, open_low=True)
    threshold: Literal["top_q", "otsu"] = "top_q"


@dataclass(frozen=True)
class StatisticsConfig:
    """Dataset statistics with bootstrap intervals beside a shuffled null.

    bootstrap, ci_method: resamples and method of each 95% interval over images.
    contiguity: neighbours of Moran's I. restarts: re-run every random-start attack from another start (RoA
    consistency across restarts). seed_models: train this many more models (other seeds; cached) and attack them.
    """

    bootstrap: int = bounded(2000, 100, 100000)
    ci_method: Literal["BCa", "percentile"] = "BCa"
    contiguity: Literal["rook", "queen"] = "rook"
    restarts: bool = True
    seed_models: int = bounded(0, 0, 10)


@dataclass(frozen=True)
class DefenceConfig:
    """What every neutralization defence shares.

    fill: the value of blocked positions ('zero', 'mean', 'pixel_mean', 'blur', 'noise', 'lowrank' or user code);
        'auto' (default): 'zero' for grey images, 'mean' for colour ones (roiroa.evaluate.defaults); fill_params:
        its keywords. dilation: grow every mask by this many pixels.
    eot_draws: draws per gradient when a defence is random (EOT).
    oracle_q: the RoA fractions of the oracle analysis (each image's own S_A from the known attack).
    adv_eps, adv_steps, adv_epochs: PGD adversarial training of the same architecture ('adv_training'); adv_eps
        None (default): the run's L-infinity budget (chosen from the data: roiroa.evaluate.defaults).
    """

    fill: str = named("auto", "fill")
    fill_params: dict[str, Any] = field(default_factory=dict)
    dilation: int = bounded(0, 0, 8)
    eot_draws: int = bounded(4, 1, 1000)
    oracle_q: tuple[float, ...] = bounded((0.05, 0.1, 0.2, 0.3), 0.0, 1.0, open_low=True)
    adv_eps: float | None = bounded(None, 0.0, 1.0, open_low=True)
    adv_steps: int = bounded(7, 1)
    adv_epochs: int = bounded(12, 1, 1000)


def default_attacks() -> tuple[dict[str, Any], ...]:
    """FGSM, PGD L-infinity and PGD L2 (20 steps); no 'eps': the budget is chosen from the data
    (roiroa.evaluate.defaults: MNIST-like grey images 0.15 L-inf and 2.0 L2, colour images 8/255 and 0.5)."""
    return (
        {"name": "fgsm"},
        {"name": "pgd-linf", "steps": 20},
        {"name": "pgd-l2", "steps": 20},
    )


def default_defences() -> tuple[Any, ...]:
    """The defences of ``roiroa defend``: the three mask scopes (with their equal-area controls), the shift
    variant of the per-input scope, four input transformations and PGD adversarial training. The per-input scopes'
    probe budget is left open: 2/3 of the run's L-infinity budget (roiroa.evaluate.defaults)."""
    return (
        "global",
        "per_class",
        {"name": "per_input", "probe_steps": 5},
        {"name": "per_input", "label": "per_input[shift]", "roa": "shift", "probe_steps": 5},
        {"name": "bit_depth", "bits": 1},
        {"name": "median", "size": 3},
        {"name": "jpeg", "quality": 50},
        {"name": "blur", "sigma": 1.0},
        "adv_training",
    )


def default_evaluation_attacks() -> tuple[dict[str, Any], ...]:
    """The default attack suite, L-infinity: PGD (100 steps x 2 restarts, best iterate) with the cross-entropy
    and the margin loss, APGD-CE, APGD-DLR (100 steps) and Square (5,000 queries); see
    :func:`roiroa.attacks.suite.default_suite_specs`. Its eps is chosen from the data (0.15 on MNIST-like
    images, 8/255 on colour images; :mod:`roiroa.evaluate.defaults`)."""
    return default_suite_specs(None)


def suite_name(attacks: tuple[dict[str, Any], ...], quick: bool) -> str:
    """'default', 'quick' (the --quick overlay's small suite) or 'custom' (the user's own list), whether its
    budget is still open or already chosen."""
    eps = next((a["eps"] for a in attacks if isinstance(a, dict) and "eps" in a), None)
    if attacks in [default_suite_specs(e, classes=k) for e in {None, eps} for k in (None, 2)]:
        return "default"  # with 2 classes the default suite leaves out APGD-DLR
    is_quick = attacks == quick_suite_specs(None) or (eps is not None and attacks == quick_suite_specs(eps))
    return "quick" if quick and is_quick else "custom"


@dataclass(frozen=True)
class EvaluationConfig:
    """The robustness grid of ``roiroa defend`` (and the short defence table of ``roiroa run``).

    n_test: test images of the table and the sweep (a class-balanced subset of the test split; default 500, so a
        95% interval is at most about +-4.4 points; the bundled MNIST split has 1,000 test images).
    defences: names or {name, label?, fill?, dilation?, parameters...} of mask scopes ('global', 'per_class',
        'per_input', 'fragments' or user code), input transformations ('bit_depth', 'median', 'jpeg', 'blur',
        'lgs') and 'adv_training'. Every scope gets its equal-area random control when ``controls`` is true.
    attacks: the attack suite, {name, label?, hyperparameters...} each (default: PGD-CE and PGD-margin 100 steps x
        2 restarts with the best iterate, APGD-CE, APGD-DLR, Square 5,000 queries): a gradient attack is crafted on
        f (non-adaptive), through each defence and through each of its adaptive variants (adaptive); a
        gradient-free one ('square') runs on the defence; the worst case per image is over all of them.
    cascade: run the gradient-free attacks only on the images that every gradient attack left, per defence, as
        AutoAttack does (default): the worst case is the same, the score-based attack's queries go where they can
        change it, and its row is then the worst case of the gradient attacks and it together. False: on every
        image, so its row is its own robust accuracy.
    sweep_scopes, sweep_q_roa, sweep_dilation, sweep_fills: the mask parameter sweep (clean, non-adaptive and
        adaptive accuracy with the first attack), with its Pareto front.
    n_sanity, sanity_eps: images and L-inf budgets of the check that adaptive robust accuracy falls with eps;
        sanity_eps None (default): 1/3, 2/3, 1, 4/3 and 2 times the run's budget, and 1.0 (unbounded): on MNIST
        0.05, 0.1, 0.15, 0.2, 0.3, 1.0 (three of them with --quick).
    run_defences, run_images: the defences (labels of ``defences``) and test images of the short table that
        ``roiroa run`` adds against its own attacks (0 images turns it off).
    equivalence_margin: the margin (a fraction of accuracy) of the equivalence and "no better than" tests of
        every comparison of a defence with its control and with the undefended model.
    """

    n_test: int = bounded(500, 1)
    defences: tuple[Any, ...] = field(default_factory=default_defences)
    controls: bool = True
    attacks: tuple[dict[str, Any], ...] = field(default_factory=default_evaluation_attacks)
    cascade: bool = True
    sweep_scopes: tuple[str, ...] = ("global", "per_class", "per_input")
    sweep_q_roa: tuple[float, ...] = bounded((0.1, 0.2, 0.3), 0.0, 1.0, open_low=True)
    sweep_dilation: tuple[int, ...] = bounded((0, 1), 0, 8)
    sweep_fills: tuple[str, ...] = ("zero", "mean", "pixel_mean", "blur", "noise")
    n_sanity: int = bounded(50, 1)
    sanity_eps: tuple[float, ...] | None = bounded(None, 0.0, 1.0, open_low=True)
    run_defences: tuple[str, ...] = ("per_class", "per_input", "bit_depth", "median", "jpeg", "blur")
    run_images: int = bounded(50, 0)
    equivalence_margin: float = bounded(0.02, 0.0, 0.5, open_low=True)


FRAGMENT_VARIANTS: dict[str, dict[str, Any]] = {
    "fragments-iforest": {},
    "fragments-iforest-lowrank": {"fill": "lowrank"},
    "fragments-iforest-blur": {"fill": "blur"},
    "fragments-iforest-no-roi": {"keep_roi": False},
    "fragments-iforest-input-roi": {"roi_source": "input"},
    "fragments-iforest-pixel": {"features": ["mean", "std", "highfreq"]},
    "fragments-iforest-gradient": {"features": ["gradient", "probe"]},
    "fragments-dbscan": {"method": "dbscan"},
    "fragments-dbscan-self": {"method": "dbscan", "fit_on": "self"},
    "fragments-roa": {"method": "roa"},
}


def default_patch_defences() -> tuple[Any, ...]:
    """Ten fragment-defence variants (ODDR-style, mean fill unless named) and LGS."""
    variants = tuple({"name": "fragments", "label": k, "fill": "mean"} | v for k, v in FRAGMENT_VARIANTS.items())
    return (*variants, "lgs")


def default_patch_attacks() -> tuple[dict[str, Any], ...]:
    """LaVAN at a random place and searched (the search's candidates include the global RoI's square, which
    ``roiroa patches`` sets); masked PGD; the universal patch at a random place and searched."""
    lavan = {"name": "patch-lavan", "steps": 50, "step_size": 0.05}
    return (
        lavan,
        lavan | {"label": "patch-lavan-search", "location": "search", "search_grid": 3, "search_steps": 5},
        {"name": "pgd-square", "steps": 40},  # eps left open: twice the run's L-inf budget (0.3 on MNIST)
        {"name": "patch-universal", "steps": 10, "step_size": 0.02},
        {"name": "patch-universal", "label": "patch-universal-search", "steps": 10, "step_size": 0.02}
        | {"location": "search", "search_grid": 3},
    )


@dataclass(frozen=True)
class PatchesConfig:
    """``roiroa patches``: localized attacks against per-input fragment defences and LGS.

    n_test, n_fit: test images (default 500: a Wilson interval of about +-4 points), and clean images that fit the
        detectors (class-balanced subsets).
    areas: patch sizes as fractions of the image. attacks: patch attacks {name, hyperparameters...}; ``location``
        'random' (the default), 'center', 'roi' (in the global RoI) or 'search' (the best of a grid, the RoI
        square and a random place per image; ``search_grid``, ``search_steps``).
    defences: as in ``evaluation.defences`` (fragment scopes and transformations); the first scope also gets
        a random square block of the same area as its control.
    adaptive: labels of defences attacked through the defence, at ``adaptive_areas``.
    window, stride, contamination: the fragment detectors' defaults (an entry's own keys win).
    penalty_weight: the adaptive attack's weight on a fragment detector's anomaly surrogate.
    certified_masks: masks per axis (k) of PatchCleanser double masking, the certified reference point reported at
        every area (k x k masks; about k^4 / 2 forward passes per image); 0 turns it off.
    """

    n_test: int = bounded(500, 1)
    n_fit: int = bounded(200, 1)
    areas: tuple[float, ...] = bounded((0.02, 0.05, 0.08), 0.0, 0.5, open_low=True)
    attacks: tuple[dict[str, Any], ...] = field(default_factory=default_patch_attacks)
    defences: tuple[Any, ...] = field(default_factory=default_patch_defences)
    adaptive: tuple[str, ...] = ("fragments-iforest", "fragments-iforest-pixel", "lgs")
    adaptive_areas: tuple[float, ...] = bounded((0.08,), 0.0, 0.5, open_low=True)
    window: int = bounded(4, 1)
    stride: int = bounded(2, 1)
    contamination: float = bounded(0.01, 0.0, 0.5, open_low=True)
    penalty_weight: float = bounded(1.0, 0.0)
    certified_masks: int = bounded(6, 0, 32)


@dataclass(frozen=True)
class LimitsConfig:
    """Upper bounds that stop a mistyped value before it runs for days; raise them here when you mean it.

    max_steps: steps, iterations or queries of the attacks in ``attacks``, ``evaluation.attacks`` and
    ``patches.attacks``. max_restarts: their random restarts. max_image_side: the height and width of images.
    max_windows: occlusion windows per image.
    """

    max_steps: int = bounded(10_000, 1)
    max_restarts: int = bounded(100, 1)
    max_image_side: int = bounded(1024, 1)
    max_windows: int = bounded(65_536, 1)


@dataclass(frozen=True)
class Config:
    """Everything that makes an experiment; one file for ``roiroa run``, ``defend`` and ``patches``.

    seed: every random choice derives from it. device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
    batch_size: images per attack or gradient batch. chunk_size: images attacked, mapped and evaluated at a
    time (each chunk is a cached task; peak memory does not grow with the number of images).
    examples: test images in the gallery of the report. attacks: the run's attacks {name, label?, ...}.
    executor: where the chunk tasks run: 'local' (in this process) or 'ray' (Ray tasks, one GPU each where the
    cluster has GPUs; ``pip install 'roiroa[ray]'``). ray_address: the cluster ('auto', 'host:6379',
    'ray://host:10001'); None: a new local cluster, or the one this process already joined.
    """

    seed: int = bounded(0, 0, 2**31 - 1)
    device: str = "auto"
    quick: bool = False
    batch_size: int = bounded(64, 1, 65536)
    chunk_size: int = bounded(1024, 1)
    examples: int = bounded(8, 0, 64)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attacks: tuple[dict[str, Any], ...] = field(default_factory=default_attacks)
    maps: MapsConfig = field(default_factory=MapsConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :func:`config_from_dict` reads back to an equal config."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ------------------------------------------------------------------------------------------------ reading


BAD = object()  # a value of the wrong type: reported, and the field keeps its default


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return {bool: "true or false", int: "an int", float: "a number", str: "a string"}.get(hint, str(hint))


def _convert(value: Any, hint: Any, where: str, errors: list[str]) -> Any:
    """``value`` converted to ``hint`` (lists to tuples, ints to floats); a mismatch appends one error line."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        return (
            None
            if value is None and len(options) < len(typing.get_args(hint))
            else _convert(value, options[0], where, errors)
        )
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return from_dict(typing.cast(type, hint), value, where + ".", errors)
        errors.append(f"config: '{where}' must be a table of settings; got {value!r}.")
        return BAD
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            items = tuple(_convert(v, typing.get_args(hint)[0], f"{where}[{i}]", errors) for i, v in enumerate(value))
            return BAD if any(item is BAD for item in items) else items
        errors.append(f"config: '{where}' must be a list; got {value!r}.")
        return BAD
    if origin is dict or hint is Any:
        if origin is dict and not isinstance(value, dict):
            errors.append(f"config: '{where}' must be a table; got {value!r}.")
            return BAD
        return value
    if origin is Literal:
        if value not in typing.get_args(hint):
            errors.append(f"config: '{where}' must be {_type_name(hint)}; got {value!r}.")
            return BAD
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        errors.append(f"config: '{where}' must be {_type_name(hint)}; got {value!r}.")
        return BAD
    return float(value) if hint is float else value


def from_dict(cls: type, data: dict[str, Any], prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in sorted(set(data) - set(names)):
        errors.append(f"config: unknown key '{prefix}{key}'; valid keys here: {', '.join(names)}.")
    values = {k: _convert(v, hints[k], prefix + k, errors) for k, v in data.items() if k in names}
    return cls(**{k: v for k, v in values.items() if v is not BAD})  # a bad value keeps its default (reported)


# ------------------------------------------------------------------------------------------------ overlays

QUICK_TEST_IMAGES = 200
QUICK_FIT_IMAGES = 200
QUICK_STEPS = 10


def capped(specs: tuple[dict[str, Any], ...], steps: int, queries: int) -> tuple[dict[str, Any], ...]:
    """Attack specs with their 'steps' at most ``steps`` and 'queries' at most ``queries`` (set where the attack
    takes them and the spec leaves them to the attack's default)."""
    out = []
    for spec in specs:
        known = attack_parameters(spec["name"]) if isinstance(spec.get("name"), str) and ":" not in spec["name"] else []
        caps = {k: min(int(spec.get(k, cap)), cap) for k, cap in (("steps", steps), ("queries", queries)) if k in known}
        out.append({**spec, **caps})
    return tuple(out)


def quick_search(specs: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """Patch attack specs with a placement search of at most a 2 x 2 grid and 5 screening steps (--quick)."""
    out = []
    for spec in specs:
        if spec.get("location") == "search":
            known = attack_parameters(spec["name"]) if ":" not in str(spec.get("name")) else []
            caps = {"search_grid": 2, "search_steps": 5}
            spec = {**spec, **{k: min(int(spec.get(k, cap)), cap) for k, cap in caps.items() if k in known}}
        out.append(spec)
    return tuple(out)


def _quick_defence(entry: Any) -> Any:
    """A defence entry with its probe attack at most 2 steps (a per-input scope attacks every input it sees)."""
    if isinstance(entry, dict) and isinstance(entry.get("probe_steps"), int):
        return {**entry, "probe_steps": min(entry["probe_steps"], 2)}
    return entry


def filled(value: T | None, name: str) -> T:
    """A setting left open (None) in the config, after ``prepare`` chose it from the data."""
    if value is None:
        raise RuntimeError(f"{name} is still open: roiroa.evaluate.prepare chooses it from the data; call it first.")
    return value


def quick_sanity_eps(eps: tuple[float, ...]) -> tuple[float, ...]:
    """The --quick sanity budgets: the smallest, the middle and the largest of ``eps``."""
    return tuple(sorted({eps[0], eps[len(eps) // 2], eps[-1]}))


def quick(config: Config) -> Config:
    """The --quick overlay: ``run`` on at most 200 test and 200 fitting images with at most 10 attack steps;
    ``defend`` on 40 images with the quick attack suite (or the user's attacks capped at 5 steps and 20
    queries) and a small sweep; ``patches`` on 50 images, 20 steps, a placement search of a 2 x 2 grid with 5
    screening steps."""
    data = dataclasses.replace(
        config.data,
        max_test=min(config.data.max_test or QUICK_TEST_IMAGES, QUICK_TEST_IMAGES),
        n_fit=min(config.data.n_fit, QUICK_FIT_IMAGES),
    )
    e = config.evaluation
    evaluation = dataclasses.replace(
        e,
        n_test=min(e.n_test, 40),
        attacks=quick_suite_specs(None) if e.attacks == default_evaluation_attacks() else capped(e.attacks, 5, 20),
        sweep_q_roa=e.sweep_q_roa[:2],
        sweep_dilation=e.sweep_dilation[:1],
        sweep_fills=tuple(f for f in e.sweep_fills if f in ("zero", "noise")),
        n_sanity=min(e.n_sanity, 20),
        sanity_eps=None if e.sanity_eps is None else quick_sanity_eps(e.sanity_eps),
        run_images=min(e.run_images, 40),
    )
    d, p = config.defence, config.patches
    evaluation = dataclasses.replace(evaluation, defences=tuple(_quick_defence(x) for x in e.defences))
    return dataclasses.replace(
        config,
        quick=True,
        data=data,
        attacks=capped(config.attacks, QUICK_STEPS, 100),
        defence=dataclasses.replace(d, eot_draws=min(d.eot_draws, 2), adv_steps=min(d.adv_steps, 2), adv_epochs=1),
        evaluation=evaluation,
        patches=dataclasses.replace(
            p,
            n_test=min(p.n_test, 50),
            n_fit=min(p.n_fit, 100),
            attacks=quick_search(capped(p.attacks, 20, 100)),
            certified_masks=min(p.certified_masks, 3),
        ),
    )


# ------------------------------------------------------------------------------------------------ writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A config dict as TOML: its scalars and lists, then one [table] per dict (None values omitted)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if v is not None and not isinstance(v, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{prefix}{key}]", to_toml(value, f"{prefix}{key}.")]
    return "\n".join(lines).strip("\n")
