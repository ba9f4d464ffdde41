"""The command line: a thin layer over :func:`roiroa.run_experiment` and :func:`roiroa.report.write_run`.

    roiroa run [--config FILE] [--out DIR] [--quick] [--seed N] [--device auto|cpu|cuda]
               [--model ARCH] [--weights FILE] [--normalization PRESET] [--mean M --std S]
    roiroa report RUN_DIR
    roiroa defend [--config FILE] [--out DIR] [--quick] [--seed N] [--device auto|cpu|cuda]
    roiroa list

Bad input ends with one line on stderr and exit code 2, and no run folder is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from roiroa.attacks.base import list_attacks
from roiroa.errors import InputError
from roiroa.evaluate.config import RunConfig, load_config, quick, validate
from roiroa.maps.registry import list_estimators, list_importance_estimators, list_vulnerability_estimators
from roiroa.models.loading import check_weights_file
from roiroa.models.registry import list_models
from roiroa.utils import resolve_device, set_progress


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roiroa", description="Region of Importance / Region of Attack analysis.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline and write a results folder")
    defend = sub.add_parser("defend", help="evaluate every defence and baseline (table, sweep, sanity checks)")
    _add_experiment_options(run, "<date-time>")
    _add_experiment_options(defend, "defend-<date-time>")
    run.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse and store the results of finished stages (an interrupted run resumes); --no-cache recomputes",
    )
    report = sub.add_parser("report", help="write RUN_DIR/report.html, one self-contained page, from a run folder")
    report.add_argument("run_dir", type=Path, help="a results folder written by `roiroa run`")
    sub.add_parser("list", help="list registered models, attacks and estimators")
    patches = sub.add_parser("patches", help="patch attacks against per-input fragment defences and LGS")
    patches.add_argument("--config", type=Path, help="a .toml or .json patches config (see examples/)")
    patches.add_argument("--out", type=Path, help="output folder (default: roiroa-runs/patches-<date-time>)")
    patches.add_argument("--quick", action="store_true", help="50 test images, 100 fitting images, at most 20 steps")
    patches.add_argument("--seed", type=int, help="seed of every random choice (default: the config's, 0)")
    patches.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False, help="progress bars")
    return parser


def _add_experiment_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The options that `roiroa run` and `roiroa defend` share: config, data, model, seed, output."""
    parser.add_argument(
        "--config", type=Path, help="a .json or .toml config (a run folder's config.json repeats that run)"
    )
    parser.add_argument("--out", type=Path, help=f"results folder (default: roiroa-runs/{default_out})")
    parser.add_argument("--quick", action="store_true", help="a small, fast version of the config")
    parser.add_argument("--seed", type=int, help="seed of every random choice (default: the config's, 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to compute (default: auto)")
    parser.add_argument("--data", help="dataset: 'mnist' (bundled), a .npz, an IDX images file, or an image folder")
    parser.add_argument("--labels", help="the IDX labels file, with an IDX images file as --data")
    parser.add_argument("--model", help="architecture: a registered name (roiroa list) or package.module:callable")
    parser.add_argument("--weights", help="pretrained weights to load instead of training (.pt/.pth/.th, .safetensors)")
    parser.add_argument(
        "--normalization", help="the weights' input normalization: none, cifar10, imagenet (applied inside the model)"
    )
    parser.add_argument("--mean", type=_floats, help="explicit normalization mean per channel, e.g. 0.5,0.5,0.5")
    parser.add_argument("--std", type=_floats, help="explicit normalization std per channel, e.g. 0.25,0.25,0.25")
    parser.add_argument("--trust-code", action="store_true", help="allow TorchScript weights (they run their own code)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars on stderr"
    )


def _floats(text: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5) (argparse turns the ValueError into a one-line usage error)."""
    return tuple(float(v) for v in text.split(","))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config file (or the defaults) with the command line's overrides applied."""
    config = load_config(args.config) if args.config else RunConfig()
    top = {k: v for k, v in (("seed", args.seed), ("device", args.device)) if v is not None}
    data = {k: v for k, v in (("source", args.data), ("labels", args.labels)) if v is not None}
    model = {
        k: v
        for k, v in (
            ("arch", args.model),
            ("weights", args.weights),
            ("normalization", args.normalization),
            ("mean", args.mean),
            ("std", args.std),
            ("trust_code", args.trust_code or None),
        )
        if v is not None
    }
    config = dataclasses.replace(
        config, **top, data=dataclasses.replace(config.data, **data), model=dataclasses.replace(config.model, **model)
    )
    if args.quick:
        config = quick(config)
    validate(config)
    resolve_device(config.device)  # a missing GPU is bad input too: fail before any work
    if config.model.weights is not None:  # a missing, corrupt or unsafe weights file too
        check_weights_file(config.model.weights, config.model.trust_code)
    return config


def command_run(args: argparse.Namespace) -> int:
    from roiroa.evaluate.runner import run_experiment
    from roiroa.evaluate.stages import StageCache
    from roiroa.report import headline_table, write_run
    from roiroa.report.run_folder import prepare_out_dir

    config = config_from_args(args)
    out = args.out or Path("roiroa-runs") / time.strftime("%Y%m%d-%H%M%S")
    prepare_out_dir(out, args.overwrite)  # fail before the work, not after
    set_progress(args.progress)
    result = run_experiment(config, None if args.cache else StageCache(None))
    write_run(result, out, args.overwrite)
    print(headline_table(result.results))
    print(f"results: {out}/ (report.html, results.json, metrics.csv, per_image.csv, maps.npz, examples.png, ...)")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from roiroa.report.html import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0


def command_defend(args: argparse.Namespace) -> int:
    from roiroa.evaluate.defend import defence_table, run_defend
    from roiroa.report.defence import write_defence
    from roiroa.report.run_folder import prepare_out_dir

    config = config_from_args(args)
    out = args.out or Path("roiroa-runs") / time.strftime("defend-%Y%m%d-%H%M%S")
    prepare_out_dir(out, args.overwrite)
    set_progress(args.progress)
    result = run_defend(config)
    write_defence(result, out, args.overwrite)
    print(defence_table(result))
    print(f"results: {out}/ (defence.csv, defence.json, defence.png, config.json)")
    return 0


def command_list() -> int:
    print("models:     " + ", ".join(list_models()))
    print("attacks:    " + ", ".join(list_attacks()))
    print("estimators: " + ", ".join(list_estimators()))
    print("  importance (maps.importance):                " + ", ".join(list_importance_estimators()))
    print("  vulnerability (maps.vulnerability_estimator): " + ", ".join(list_vulnerability_estimators()))
    return 0


def command_patches(args: argparse.Namespace) -> int:
    from roiroa.evaluate.patches import (
        PatchEvalConfig,
        evaluate_patches,
        load_patch_config,
        patch_table,
        quick_patch_config,
        validate_patch_config,
        write_patch_results,
    )

    config = load_patch_config(args.config) if args.config else PatchEvalConfig()
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.quick:
        config = quick_patch_config(config)
    validate_patch_config(config)
    resolve_device(config.device)
    out = args.out or Path("roiroa-runs") / time.strftime("patches-%Y%m%d-%H%M%S")
    set_progress(args.progress)
    rows, meta = evaluate_patches(config)
    write_patch_results(rows, meta, out)
    print(patch_table(rows))
    print(f"results: {out}/ (patches.csv, patches.json, patches.png); {meta['n_test']} test images")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "patches":
            return command_patches(args)
        if args.command == "report":
            return command_report(args)
        if args.command == "defend":
            return command_defend(args)
        return command_run(args) if args.command == "run" else command_list()
    except InputError as err:
        if args.debug:
            raise
        print(f"roiroa: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "roiroa: interrupted; no results folder was written (run the same command again to resume).",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
