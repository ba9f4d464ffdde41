"""The patch evaluation: localized attacks against per-input fragment defences, LGS and a random-block control.

``evaluate_patches(config)`` returns rows (one per attack x area x defence x setting) and writes nothing;
``write_patch_results(rows, meta, out)`` writes patches.csv, patches.json and patches.png atomically.

Settings: 'clean' (no attack), 'non-adaptive' (the attack crafted on f, evaluated on the defence) and
'adaptive' (crafted through the defence end to end: the detector's hard decisions are constants in the
backward pass (BPDA), and for fragment defences the loss also pays ``penalty_weight`` times the detector's
differentiable anomaly surrogate, so the patch learns to look like clean fragments). 'worst-case' counts an image
only if both the non-adaptive and the adaptive attack failed on it. Accuracy counts an image
only if the defended model classifies both the clean and the attacked image correctly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roiroa.attacks.base import create_attack
from roiroa.attacks.patch import PatchResult, UniversalPatch, square_masks
from roiroa.cache import atomic_write
from roiroa.defence.fragments import FEATURES, FragmentDefence, FragmentDetector
from roiroa.defence.lgs import LGS, LGSParams
from roiroa.defence.neutralizer import fill_value, neutralize
from roiroa.errors import InputError
from roiroa.maps.occlusion import Occlusion
from roiroa.models.predict import predict
from roiroa.regions.statistics import iou
from roiroa.utils import resolve_device, stage_seed
from roiroa.validation import check_number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)
PATCH_FILES = ("patches.csv", "patches.json", "patches.png")
COLUMNS = (
    "dataset",
    "attack",
    "area",
    "defence",
    "setting",
    "accuracy",
    "detection_iou",
    "flagged_area",
    "n_images",
    "attack_params",
)


def default_patch_attacks() -> tuple[dict[str, Any], ...]:
    return (
        {"name": "patch-lavan", "steps": 50, "step_size": 0.05},
        {"name": "pgd-square", "eps": 0.3, "steps": 40},
        {"name": "patch-universal", "steps": 10, "step_size": 0.02},
    )


# Fragment-defence variants by name: FragmentDetector keywords, and the fill.
DEFENCE_VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "fragments-iforest": ({}, "mean"),
    "fragments-iforest-lowrank": ({}, "lowrank"),
    "fragments-iforest-blur": ({}, "blur"),
    "fragments-iforest-no-roi": ({"keep_roi": False}, "mean"),
    "fragments-iforest-input-roi": ({"roi_source": "input"}, "mean"),
    "fragments-iforest-pixel": ({"features": ("mean", "std", "highfreq")}, "mean"),
    "fragments-iforest-gradient": ({"features": ("gradient", "probe")}, "mean"),
    "fragments-dbscan": ({"method": "dbscan"}, "mean"),
    "fragments-dbscan-self": ({"method": "dbscan", "fit_on": "self"}, "mean"),
    "fragments-roa": ({"method": "roa"}, "mean"),
}


@dataclass(frozen=True)
class PatchEvalConfig:
    """One patch evaluation.

    data: 'mnist' (bundled; the reference MnistCNN is trained and cached) or a .npz of images and labels
        (then ``checkpoint`` and ``arch`` give the model).
    arch, checkpoint, mean, std: the model for a .npz (a registered architecture, its weights, and the
        input normalization applied inside the model).
    n_test, n_fit: test images, and clean images that fit the detectors (disjoint).
    areas: patch sizes as fractions of the image area. attacks: {name, hyperparameters...} of patch attacks.
    defences: names of :data:`DEFENCE_VARIANTS`; 'lgs' and the random-block control are always added.
    adaptive: defences attacked adaptively (through the defence), at ``adaptive_areas``.
    window, stride, contamination: the detectors' fragments and false-positive share on clean fragments.
    penalty_weight: the adaptive attacks' weight on the detector's anomaly surrogate.
    """

    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    data: str = "mnist"
    arch: str = "mnist-cnn"
    checkpoint: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    n_test: int = 200
    n_fit: int = 200
    batch_size: int = 100
    areas: tuple[float, ...] = (0.02, 0.05, 0.08)
    attacks: tuple[dict[str, Any], ...] = field(default_factory=default_patch_attacks)
    defences: tuple[str, ...] = tuple(DEFENCE_VARIANTS)
    adaptive: tuple[str, ...] = ("fragments-iforest", "fragments-iforest-pixel", "lgs")
    adaptive_areas: tuple[float, ...] = (0.08,)
    window: int = 4
    stride: int = 2
    contamination: float = 0.01
    penalty_weight: float = 1.0
    lgs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def quick_patch_config(config: PatchEvalConfig) -> PatchEvalConfig:
    """--quick: 50 test and 100 fitting images, at most 20 attack steps (10 for the universal patch)."""
    attacks = tuple(
        {**a, "steps": min(int(a.get("steps", 20)), 10 if a["name"] == "patch-universal" else 20)}
        for a in config.attacks
    )
    return dataclasses.replace(
        config, quick=True, n_test=min(config.n_test, 50), n_fit=min(config.n_fit, 100), attacks=attacks
    )


def validate_patch_config(config: PatchEvalConfig) -> None:
    """Ranges and names, before any work."""
    check_number("patches config", "n_test", config.n_test, low=1, integer=True)
    check_number("patches config", "n_fit", config.n_fit, low=1, integer=True)
    check_number("patches config", "penalty_weight", config.penalty_weight, low=0.0)
    for a in config.areas + config.adaptive_areas:
        check_number("patches config", "areas", a, low=0.0, low_open=True, high=0.5)
    for name in config.defences:
        if name not in DEFENCE_VARIANTS:
            raise InputError(f"patches config: unknown defence {name!r}; choose from {', '.join(DEFENCE_VARIANTS)}.")
    for name in config.adaptive:
        if name != "lgs" and name not in config.defences:
            raise InputError(f"patches config: adaptive defence {name!r} is not in 'defences'; add it there.")
    if not config.attacks:
        raise InputError("patches config: 'attacks' is empty; give at least one, e.g. {name = 'patch-lavan'}.")
    for spec in config.attacks:
        if "name" not in spec:
            raise InputError("patches config: every attack needs a 'name', e.g. 'patch-lavan'.")
        create_attack(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    LGSParams(**config.lgs)
    if config.data != "mnist" and config.checkpoint is None:
        raise InputError("patches config: a .npz dataset needs 'checkpoint' (and 'arch') naming its trained model.")


def load_patch_config(path: str | Path) -> PatchEvalConfig:
    """A PatchEvalConfig from a .toml or .json file (unknown keys are an InputError)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as err:
        raise InputError(f"cannot read config {path} ({err.strerror}); check the path.") from None
    except ValueError as err:
        raise InputError(f"config {path} is not valid TOML/JSON: {err}.") from None
    names = {f.name for f in dataclasses.fields(PatchEvalConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"patches config: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}.")
    tuples = {"areas", "adaptive_areas", "defences", "adaptive", "attacks", "mean", "std"}
    data = {k: (tuple(v) if k in tuples and isinstance(v, list) else v) for k, v in data.items()}
    config = PatchEvalConfig(**data)
    validate_patch_config(config)
    return config


def load_data_and_model(
    config: PatchEvalConfig, device: torch.device
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, x_test, y_test, x_fit, y_fit): MNIST with the trained reference model, or a .npz and a checkpoint.

    For a .npz the first n_fit images (balanced by class) fit the detectors and the next n_test are tested.
    """
    from roiroa.data.dataset import sample_per_class
    from roiroa.data.readers import load_dataset

    if config.data == "mnist":
        from roiroa.evaluate.config import RunConfig
        from roiroa.evaluate.runner import load_splits
        from roiroa.models.train import TrainingRecipe, load_or_train

        splits = load_splits(RunConfig(seed=config.seed))
        model = load_or_train(config.arch, splits.train, TrainingRecipe(), config.seed, device).model
        test = sample_per_class(splits.test, config.n_test, stage_seed(config.seed, "test-subset"))
        fit = sample_per_class(splits.fit, config.n_fit, stage_seed(config.seed, "fit-subset"))
        return model.eval(), test.images, test.labels, fit.images, fit.labels
    from roiroa.models.loading import load_model

    data = load_dataset(config.data, None)
    fit = sample_per_class(data, config.n_fit, stage_seed(config.seed, "fit-subset"))
    rest = torch.ones(len(data.labels), dtype=torch.bool)
    rest[torch.as_tensor(fit.index)] = False
    x_rest, y_rest = data.images[rest], data.labels[rest]
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "test-subset"))
    pick = torch.randperm(len(y_rest), generator=gen)[: config.n_test]
    norm = (config.mean, config.std) if config.mean is not None and config.std is not None else None
    model = load_model(
        config.arch,
        str(config.checkpoint),
        image_shape=tuple(data.images.shape[1:]),  # type: ignore[arg-type]
        num_classes=int(data.labels.max()) + 1,
        normalization=norm,
        device=device,
    )
    return model, x_rest[pick], y_rest[pick], fit.images, fit.labels


def random_blocks(areas: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """The random-block control: per image a square at a random place covering about ``areas[i]`` of the image.

    Args:
        areas: (N,) fractions in [0, 1] (e.g. each image's flagged share); side = round(sqrt(area H W)).

    Returns:
        (N, 1, H, W) bool; an image whose side rounds to 0 gets an empty mask.
    """
    masks = torch.zeros(len(areas), 1, height, width, dtype=torch.bool)
    for i, a in enumerate(areas.tolist()):
        side = min(round((a * height * width) ** 0.5), height, width)
        if side > 0:
            masks[i] = square_masks(1, height, width, side, "random", generator)[0]
    return masks


def _accuracy(ok_clean: torch.Tensor, ok_adv: torch.Tensor) -> float:
    return float((ok_clean & ok_adv).double().mean())


def _mean_iou(flagged: torch.Tensor, patch: torch.Tensor) -> float:
    v = iou(flagged.cpu(), patch[:, 0].cpu())
    return float(torch.nan_to_num(v, 0.0).mean())


def evaluate_patches(config: PatchEvalConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the patch evaluation; returns (rows, meta). See the module docstring."""
    validate_patch_config(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    model, x, y, x_fit, y_fit = load_data_and_model(config, device)
    meta: dict[str, Any] = {"config": config.to_dict(), "n_test": len(x), "n_fit": len(x_fit)}
    dataset = "mnist" if config.data == "mnist" else Path(config.data).stem

    # Fit every detector once, sharing the fragment features and the occlusion importance of the fitting set.
    base = FragmentDetector(
        window=config.window,
        stride=config.stride,
        contamination=config.contamination,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    fit_feats = base.fragment_features(model, x_fit)
    importance = Occlusion(window=config.window, stride=config.stride)(model, x_fit, y_fit)
    mean_fill = fill_value("mean", x_fit)
    defences: dict[str, nn.Module] = {}
    for name in config.defences:
        kwargs, fill = DEFENCE_VARIANTS[name]
        det = dataclasses.replace(base, **kwargs)
        cols = [FEATURES.index(f) for f in det.features]
        det.fit(model, x_fit, y_fit, fit_feats[..., cols], importance)
        defences[name] = FragmentDefence(model, det, fill, mean_fill)
    lgs = LGS(model, LGSParams(**config.lgs))
    meta["fit_seconds"] = round(time.perf_counter() - start, 1)

    def flagged_and_correct(images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """defence -> (flagged (N, H, W), correct (N,)), sharing the fragment features between detectors."""
        feats = base.fragment_features(model, images)
        out = {}
        for name, d in defences.items():
            assert isinstance(d, FragmentDefence)
            cols = [FEATURES.index(f) for f in d.detector.features]
            flag = d.flagged(images, feats[..., cols])
            with torch.no_grad():
                pred = predict(model, d.neutralize(images, flag), config.batch_size)
            out[name] = (flag.cpu(), pred.cpu() == y)
        with torch.no_grad():
            out["lgs"] = (lgs.flagged(images).cpu(), predict(lgs, images, config.batch_size).cpu() == y)
        return out

    def control(images: torch.Tensor, area: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random square per image with as many pixels as the main defence flagged (mean fill): correct (N,)."""
        masks = random_blocks(area, images.shape[2], images.shape[3], gen)
        return predict(model, neutralize(images, masks, mean_fill), config.batch_size).cpu() == y

    main = config.defences[0] if config.defences else None
    rows: list[dict[str, Any]] = []
    ok_undefended = predict(model, x, config.batch_size).cpu() == y
    clean = flagged_and_correct(x)
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "control"))
    ctl_area = clean[main][0].flatten(1).double().mean(1) if main else torch.zeros(len(x))
    ok_ctl_clean = control(x, ctl_area, gen)

    def add(attack: str, area: float, defence: str, setting: str, acc: float, **extra: Any) -> None:
        rows.append(
            {
                "dataset": dataset,
                "attack": attack,
                "area": area,
                "defence": defence,
                "setting": setting,
                "accuracy": acc,
                "detection_iou": extra.get("iou", float("nan")),
                "flagged_area": extra.get("flagged", float("nan")),
                "n_images": len(x),
                "attack_params": json.dumps(extra.get("params", {}), sort_keys=True),
            }
        )

    add("none", 0.0, "none", "clean", float(ok_undefended.double().mean()))
    for name, (flag, ok) in clean.items():
        add("none", 0.0, name, "clean", float(ok.double().mean()), flagged=float(flag.double().mean()))
    add("none", 0.0, "random-block", "clean", float(ok_ctl_clean.double().mean()), flagged=float(ctl_area.mean()))

    for area in config.areas:
        for spec in config.attacks:
            kwargs = {k: v for k, v in spec.items() if k != "name"}
            kwargs.setdefault("batch_size", config.batch_size)
            kwargs.setdefault("seed", config.seed)
            attack = create_attack(spec["name"], area=area, **kwargs)
            label = spec["name"]
            t0 = time.perf_counter()
            if isinstance(attack, UniversalPatch):
                attack.fit(model, x_fit, y_fit)
            result = attack.run(model, x, y)
            assert isinstance(result, PatchResult)
            params = attack.params()
            ok_adv = predict(model, result.x_adv, config.batch_size).cpu() == y
            add(label, area, "none", "non-adaptive", _accuracy(ok_undefended, ok_adv), params=params)
            adv = flagged_and_correct(result.x_adv)
            for name, (flag, ok) in adv.items():
                add(
                    label,
                    area,
                    name,
                    "non-adaptive",
                    _accuracy(clean[name][1], ok),
                    params=params,
                    iou=_mean_iou(flag, result.patch_mask),
                    flagged=float(flag.double().mean()),
                )
            if main:
                a_area = adv[main][0].flatten(1).double().mean(1)
                ok_ctl = control(result.x_adv, a_area, gen)
                add(
                    label,
                    area,
                    "random-block",
                    "non-adaptive",
                    _accuracy(ok_ctl_clean, ok_ctl),
                    params=params,
                    iou=float("nan"),
                    flagged=float(a_area.mean()),
                )
            log.info("  %s area %.2f: %.1f s", label, area, time.perf_counter() - t0)
            if area not in config.adaptive_areas:
                continue
            for name in config.adaptive:
                t0 = time.perf_counter()
                target = lgs if name == "lgs" else defences[name]
                weight = 0.0 if name == "lgs" else config.penalty_weight
                adaptive = create_attack(spec["name"], area=area, **{**kwargs, "penalty_weight": weight})
                if isinstance(adaptive, UniversalPatch):
                    adaptive.fit(target, x_fit, y_fit)
                res = adaptive.run(target, x, y)
                assert isinstance(res, PatchResult)
                flag, ok = flagged_and_correct(res.x_adv)[name]
                add(
                    label,
                    area,
                    name,
                    "adaptive",
                    _accuracy(clean[name][1], ok),
                    params=adaptive.params(),
                    iou=_mean_iou(flag, res.patch_mask),
                    flagged=float(flag.double().mean()),
                )
                # per image worst case: robust only if both the non-adaptive and the adaptive attack failed
                both = _accuracy(clean[name][1] & adv[name][1], ok)
                add(label, area, name, "worst-case", both, params=params)
                log.info("  adaptive %s vs %s: %.1f s", label, name, time.perf_counter() - t0)
    meta["seconds"] = round(time.perf_counter() - start, 1)
    return rows, meta


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = sorted({r["attack"] for r in rows if r["attack"] != "none"})
    defences = list(dict.fromkeys(r["defence"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(attacks)), figsize=(5 * max(1, len(attacks)), 4.5), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=False):
        for i, d in enumerate(defences):
            pts = sorted(
                (r["area"], r["accuracy"])
                for r in rows
                if r["attack"] == attack and r["defence"] == d and r["setting"] == "non-adaptive"
            )
            if pts:
                line = ax.plot(*zip(*pts, strict=False), marker="o", label=d, color=plt.get_cmap("tab20")(i % 20))[0]
                ada = [
                    (r["area"], r["accuracy"])
                    for r in rows
                    if r["attack"] == attack and r["defence"] == d and r["setting"] == "adaptive"
                ]
                if ada:
                    ax.scatter(*zip(*ada, strict=False), marker="x", s=80, color=line.get_color())
        ax.set_title(f"{attack} (o non-adaptive, x adaptive)", fontsize=9)
        ax.set_xlabel("patch area (fraction of image)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_patch_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    """patches.csv, patches.json and patches.png in ``out``, each written under a temporary name and renamed."""
    from roiroa.report.run_folder import write_csv, write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "patches.csv", lambda p: write_csv(p, rows, COLUMNS))
    atomic_write(out / "patches.json", lambda p: write_json(p, {**meta, "rows": rows}))
    atomic_write(out / "patches.png", lambda p: _plot(rows, p))


def patch_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows (accuracy, IoU) for the terminal."""
    lines = [f"{'attack':16} {'area':>5} {'defence':28} {'setting':13} {'acc':>6} {'IoU':>6} {'flagged':>7}"]
    for r in rows:
        lines.append(
            f"{r['attack']:16} {r['area']:5.2f} {r['defence']:28} {r['setting']:13} {r['accuracy']:6.3f} "
            f"{r['detection_iou']:6.3f} {r['flagged_area']:7.3f}"
        )
    return "\n".join(lines)
