"""The command line: parse -> config -> command -> results folder, for every command alike.

    roiroa run|defend|patches [--config FILE] [--quick] [--set KEY=VALUE ...] [--out DIR] [--overwrite]
                              [--seed N] [--device D] [--data SRC] [--model ARCH] [--weights FILE]
                              [--normalization P] [--no-cache] [--no-progress]
    roiroa report DIR [DIR ...] [--out FILE]
    roiroa config [same options]      print the effective config (TOML)
    roiroa list

The global flags (--debug, --verbose, --quiet) go before or after the command.

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

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COMMANDS = {
    "run": "the whole analysis: maps, regions, statistics with intervals, the global mask and its controls, the report",
    "defend": "every defence and baseline against adaptive attackers: the table with intervals, sweep, sanity checks",
    "patches": "patch attacks against per-input fragment defences and LGS",
}
OTHERS = {
    "report": "one self-contained HTML report of results folders",
    "config": "print the effective config as TOML (the defaults, a file, and the flags)",
    "list": "list registered models, attacks, estimators, scopes, fills and transforms",
}
EXAMPLES = {
    "run": "examples:\n  roiroa run --quick\n  roiroa run --quick --set attacks.0.eps=0.1 --set evaluation.n_test=50\n"
    "  roiroa run --data cifar10_test_1000.npz --model resnet20 --weights resnet20.th --normalization imagenet",
    "defend": "examples:\n  roiroa defend --quick\n  roiroa defend --device cpu --no-cache\n"
    "  roiroa defend --config my.toml --out runs/defend --overwrite",
    "patches": "examples:\n  roiroa patches --quick\n"
    "  roiroa patches --data d.npz --model resnet20 --weights w.th --normalization imagenet",
    "report": "examples:\n  roiroa report roiroa-runs/run-20260101-120000\n"
    "  roiroa report runs/run runs/defend runs/patches --out all.html",
    "config": "examples:\n  roiroa config --quick\n  roiroa config --set regions.q_roa=0.1 --format json > my.json",
    "list": "example:\n  roiroa list",
}
SET_HELP = (
    "override one config setting, KEY=VALUE with a dotted KEY (a number picks a list entry) and a TOML value, "
    "e.g. attacks.0.eps=0.1, evaluation.n_test=50, maps.importance=saliency; repeatable, applied after --config "
    "and the other flags (--quick still caps sizes)"
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; the global flags are accepted before and after the command name."""
    parser = argparse.ArgumentParser(
        prog="roiroa",
        description="Region of Importance / Region of Attack analysis.",
        epilog="examples:\n  roiroa run --quick\n  roiroa run --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roiroa {__version__}")
    add_global_options(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join([*COMMANDS, *OTHERS]) + "}")
    for name, text in {**COMMANDS, **OTHERS}.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_global_options(p, argparse.SUPPRESS)
        if name in COMMANDS:
            add_experiment_options(p, name)
    report = sub.choices["report"]
    report.add_argument("folders", type=Path, nargs="+", help="results folders written by run, defend or patches")
    report.add_argument(
        "--out",
        type=Path,
        help="the report file (default: DIR/report.html for one folder, roiroa-report.html for several)",
    )
    config = sub.choices["config"]
    add_config_options(config)
    config.add_argument("--format", choices=("toml", "json"), default="toml", help="output format (default: toml)")
    return parser


def add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--debug, --verbose, --quiet; on a command's parser their default is SUPPRESS, so the top level's stands."""
    flags = {
        "--debug": "show full tracebacks",
        "--verbose": "log the time of every stage",
        "--quiet": "no progress and no log lines, only the results table and errors",
    }
    for flag, text in flags.items():
        parser.add_argument(flag, action="store_true", default=default, help=text)


def add_experiment_options(parser: argparse.ArgumentParser, name: str) -> None:
    """The options of run, defend and patches: config, data, model, device, seed, out, cache, progress."""
    add_config_options(parser)
    parser.add_argument("--out", type=Path, help=f"results folder (default: roiroa-runs/{name}-<date-time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is a results folder roiroa wrote")
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse finished work (an interrupted run resumes); --no-cache recomputes",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress on stderr: bars on a terminal, a line per stage every few seconds when piped",
    )


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options every experiment command shares: config, overlay, seed, device, data, model."""
    parser.add_argument(
        "--config", type=Path, help="a .toml or .json config (a results folder's config.json repeats it)"
    )
    parser.add_argument("--quick", action="store_true", help="a small, fast version of the config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    parser.add_argument("--seed", type=int, help="seed of every random choice (default: the config's, 0)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--data", help="'mnist' (bundled), a .npz, an IDX images file, an image folder or a CIFAR batch"
    )
    parser.add_argument(
        "--labels", help="the IDX labels file with an IDX images file; or a CSV file,label with an image folder"
    )
    parser.add_argument("--class-index", help="class-index JSON (imagenet_class_index.json) of an image folder")
    parser.add_argument("--resize", type=int, help="resize an image folder's shorter side to this many pixels")
    parser.add_argument("--crop", type=int, help="then keep the centre crop of this side (ImageNet: 256, 224)")
    parser.add_argument("--executor", help="where chunk tasks run: local (default) or ray")
    parser.add_argument("--address", help="with --executor ray: the Ray cluster's address (e.g. auto, host:6379)")
    parser.add_argument("--model", help="architecture: a registered name (roiroa list) or package.module:callable")
    parser.add_argument("--weights", help="pretrained weights to load instead of training (.pt/.pth/.th, .safetensors)")
    parser.add_argument("--normalization", help="the weights' input normalization: none, cifar10, imagenet")
    parser.add_argument("--mean", type=_floats, help="explicit normalization mean per channel, e.g. 0.5,0.5,0.5")
    parser.add_argument("--std", type=_floats, help="explicit normalization std per channel, e.g. 0.25,0.25,0.25")
    parser.add_argument("--trust-code", action="store_true", help="allow TorchScript weights (they run their own code)")


def parse_value(text: str) -> Any:
    """A --set value: a TOML literal (0.1, 50, true, "x", [1, 2], {name = "fgsm"}), else JSON, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_override(settings: dict[str, Any], text: str) -> None:
    """Set ``KEY=VALUE`` in the settings dict in place: dotted KEY, a number indexes a list (its length appends)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise InputError(f"--set {text!r}: write KEY=VALUE with a dotted KEY, e.g. --set attacks.0.eps=0.1.")
    node: Any = settings
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise InputError(f"--set {text!r}: {where} is a list of {len(node)}; use an index 0..{len(node)}.")
            if int(part) == len(node):
                node.append({})
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise InputError(f"--set {text!r}: {where} is a value, not a section; set {where}=VALUE instead.")
        elif not last and not isinstance(node.get(part), (dict, list)):
            node[part] = {} if part not in node else node[part]
        if last:
            node[part] = parse_value(raw.strip())
        else:
            node = node[part]


def _floats(text: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5) (argparse turns the ValueError into a one-line usage error)."""
    return tuple(float(v) for v in text.split(","))


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file (or the defaults) with the command line's overrides and overlay, checked as a whole."""
    base = Config().to_dict()
    for section, value in (read_config_dict(args.config) if args.config else {}).items():
        both = isinstance(value, dict) and isinstance(base.get(section), dict)
        base[section] = base[section] | value if both else value
    flags = {"seed": args.seed, "device": args.device, "executor": args.executor, "ray_address": args.address}
    data = {"source": args.data, "labels": args.labels, "class_index": args.class_index}
    data |= {"resize": args.resize, "crop": args.crop}
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
    for text in args.overrides:
        apply_override(base, text)
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
        config.data.class_index,
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
    start = time.perf_counter()
    out = args.out or Path("roiroa-runs") / time.strftime(f"{args.command}-%Y%m%d-%H%M%S")
    claim = claim_folder(out, args.overwrite, protected_paths(config))
    try:
        set_progress(args.progress and not args.quiet)
        set_figure_cache(args.cache)
        result = commands()[args.command](config, cache=StageCache.default() if args.cache else StageCache(None))
        write_folder(result.folder, out, claim=claim)
    finally:
        release(claim)
    print(result.table())  # the command's table, with the attack suite and the sanity verdicts
    log_summary(args.command, result.results, time.perf_counter() - start)
    print(f"results: {out}/ (report.html, results.json, metrics.csv, ...)")
    return 0


def log_summary(command: str, results: dict[str, Any], seconds: float) -> None:
    """The overall line on stderr: the command's time, its test images per second, and its slowest stages."""
    from roiroa.utils import clock, progress_log

    n = (results.get("dataset") or {}).get("n_test") or 0
    stages = sorted((results.get("timings") or {}).items(), key=lambda kv: -kv[1])[:3]
    slowest = ", ".join(f"{name} {clock(t)}" for name, t in stages)
    rate = f", {n / seconds:.3g} test images/s" if n and seconds > 0 else ""
    progress_log.info("%s: finished in %s (%d test images%s; slowest: %s)", command, clock(seconds), n, rate, slowest)


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
    progress_on = not args.quiet and getattr(args, "progress", True)
    logging.getLogger("roiroa.progress").setLevel(logging.INFO if progress_on else logging.WARNING)
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
