"""The command line: parse -> config -> command -> results folder, for every command alike.

    roiroa run|defend|patches [--config FILE] [--quick] [--out DIR] [--overwrite] [--seed N] [--device D]
                              [--data SRC] [--model ARCH] [--weights FILE] [--normalization P] [--no-cache]
    roiroa report DIR [DIR ...] [--out FILE]
    roiroa config [same options]      print the effective config (TOML)
    roiroa list

Bad input ends with one line on stderr per problem and exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from roiroa.errors import InputError
from roiroa.evaluate.config import Config, quick, to_toml
from roiroa.evaluate.validate import config_from_dict, read_config_dict
from roiroa.models.loading import check_weights_file
from roiroa.version import __version__

COMMANDS = {
    "run": "the whole analysis: maps, regions, statistics with intervals, the global mask and its controls, the report",
    "defend": "every defence and baseline against adaptive attackers: the table with intervals, sweep, sanity checks",
    "patches": "patch attacks against per-input fragment defences and LGS",
}
EXAMPLES = {
    "run": "examples:\n  roiroa run --quick\n"
    "  roiroa run --data cifar10_test_1000.npz --model resnet20 --weights resnet20.th --normalization imagenet",
    "defend": "examples:\n  roiroa defend --quick\n  roiroa defend --config my.toml --out runs/defend --overwrite",
    "patches": "examples:\n  roiroa patches --quick\n"
    "  roiroa patches --data d.npz --model resnet20 --weights w.th --normalization imagenet",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roiroa", description="Region of Importance / Region of Attack analysis.")
    parser.add_argument("--version", action="version", version=f"roiroa {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--verbose", action="store_true", help="log the time of every stage")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_options(p)
        p.add_argument("--out", type=Path, help=f"results folder (default: roiroa-runs/{name}-<date-time>)")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it is a results folder roiroa wrote")
        p.add_argument(
            "--cache",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="reuse finished work (an interrupted run resumes); --no-cache recomputes",
        )
        p.add_argument(
            "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars on stderr"
        )
    report = sub.add_parser("report", help="one self-contained HTML report of results folders")
    report.add_argument("folders", type=Path, nargs="+", help="results folders written by run, defend or patches")
    report.add_argument(
        "--out",
        type=Path,
        help="the report file (default: DIR/report.html for one folder, roiroa-report.html for several)",
    )
    config = sub.add_parser("config", help="print the effective config as TOML (the defaults, a file, and the flags)")
    add_config_options(config)
    config.add_argument("--format", choices=("toml", "json"), default="toml", help="output format (default: toml)")
    sub.add_parser("list", help="list registered models, attacks, estimators, scopes, fills and transforms")
    return parser


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options every experiment command shares: config, overlay, seed, device, data, model."""
    parser.add_argument(
        "--config", type=Path, help="a .toml or .json config (a results folder's config.json repeats it)"
    )
    parser.add_argument("--quick", action="store_true", help="a small, fast version of the config")
    parser.add_argument("--seed", type=int, help="seed of every random choice (default: the config's, 0)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--data", help="'mnist' (bundled), a .npz, an IDX images file, an image folder or a CIFAR batch"
    )
    parser.add_argument("--labels", help="the IDX labels file, with an IDX images file as --data")
    parser.add_argument("--model", help="architecture: a registered name (roiroa list) or package.module:callable")
    parser.add_argument("--weights", help="pretrained weights to load instead of training (.pt/.pth/.th, .safetensors)")
    parser.add_argument("--normalization", help="the weights' input normalization: none, cifar10, imagenet")
    parser.add_argument("--mean", type=_floats, help="explicit normalization mean per channel, e.g. 0.5,0.5,0.5")
    parser.add_argument("--std", type=_floats, help="explicit normalization std per channel, e.g. 0.25,0.25,0.25")
    parser.add_argument("--trust-code", action="store_true", help="allow TorchScript weights (they run their own code)")


def _floats(text: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5) (argparse turns the ValueError into a one-line usage error)."""
    return tuple(float(v) for v in text.split(","))


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file (or the defaults) with the command line's overrides and overlay, checked as a whole."""
    base = Config().to_dict()
    for section, value in (read_config_dict(args.config) if args.config else {}).items():
        both = isinstance(value, dict) and isinstance(base.get(section), dict)
        base[section] = base[section] | value if both else value
    flags = {"seed": args.seed, "device": args.device}
    data = {"source": args.data, "labels": args.labels}
    model = {
        "arch": args.model,
        "weights": args.weights,
        "normalization": args.normalization,
        "mean": args.mean,
        "std": args.std,
    }
    model["trust_code"] = args.trust_code or None
    base |= {k: v for k, v in flags.items() if v is not None}
    base["data"] |= {k: v for k, v in data.items() if v is not None}
    base["model"] |= {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.items() if v is not None}
    config = config_from_dict(base)
    if config.model.weights is not None:  # a missing, corrupt or unsafe weights file fails before any work
        check_weights_file(config.model.weights, config.model.trust_code)
    return quick(config) if args.quick else config


def protected_paths(config: Config) -> list[Path]:
    """Files a results folder must never hold: the data and the weights."""
    found = [
        config.data.source,
        config.data.labels,
        config.data.fit_source,
        config.data.fit_labels,
        config.model.weights,
    ]
    return [Path(p) for p in found if p and Path(p).exists()]


def run_command(args: argparse.Namespace) -> int:
    """run, defend or patches: checks, the lock on --out, the work, the folder, the table."""
    from roiroa.cache import StageCache
    from roiroa.report import claim_folder, release, write_folder
    from roiroa.report.figures import set_figure_cache
    from roiroa.utils import set_progress

    config = config_from_args(args)
    out = args.out or Path("roiroa-runs") / time.strftime(f"{args.command}-%Y%m%d-%H%M%S")
    claim = claim_folder(out, args.overwrite, protected_paths(config))
    try:
        set_progress(args.progress)
        set_figure_cache(args.cache)
        result = commands()[args.command](config, cache=StageCache.default() if args.cache else StageCache(None))
        write_folder(result.folder, out, claim=claim)
    finally:
        release(claim)
    print(result.table())
    print(f"results: {out}/ (report.html, results.json, metrics.csv, ...)")
    return 0


def commands() -> dict[str, Callable[..., Any]]:
    from roiroa.evaluate.defend import run_defend
    from roiroa.evaluate.patches import run_patches
    from roiroa.evaluate.run import run_experiment

    return {"run": run_experiment, "defend": run_defend, "patches": run_patches}


def command_report(args: argparse.Namespace) -> int:
    from roiroa.report.html import write_report

    out = args.out or (args.folders[0] / "report.html" if len(args.folders) == 1 else Path("roiroa-report.html"))
    print(f"report: {write_report(args.folders, out)}")
    return 0


def command_config(args: argparse.Namespace) -> int:
    data = config_from_args(args).to_dict()
    print(json.dumps(data, indent=2) if args.format == "json" else to_toml(data))
    return 0


def command_list() -> int:
    from roiroa.attacks.base import list_attacks
    from roiroa.defence import BASELINES, FILLS, SCOPES
    from roiroa.maps.registry import list_importance_estimators, list_vulnerability_estimators
    from roiroa.models.registry import list_models

    rows = {
        "models": list_models(),
        "attacks": list_attacks(),
        "importance": list_importance_estimators(),
        "vulnerability": list_vulnerability_estimators(),
        "mask scopes": SCOPES.names(),
        "fills": FILLS.names(),
        "transforms": [*BASELINES.names(), "adv_training"],
    }
    for name, values in rows.items():
        print(f"{name + ':':<15}" + ", ".join(values))
    print("any of them can also be user code, named package.module:callable")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    try:
        if args.command in COMMANDS:
            return run_command(args)
        return {"report": command_report, "config": command_config}.get(args.command, lambda _: command_list())(args)
    except InputError as err:
        if args.debug:
            raise
        for line in str(err).splitlines() or [type(err).__name__]:
            print(f"roiroa: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "roiroa: interrupted; no results folder was written (run the same command again to resume).",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
