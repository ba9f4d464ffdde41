"""The default run's headline numbers over several seeds: their mean and spread (min to max).

Each seed draws another split of the bundled MNIST, trains another model and starts the attacks elsewhere, so
the spread over seeds is far wider than the float-rounding differences between machines: a user's numbers on
another machine fall inside it. Runs go through the stage cache (a second call recomputes nothing).

    python benchmarks/seed_spread.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from roiroa.evaluate.config import Config, quick
from roiroa.evaluate.run import run_experiment


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The numbers of the README's table of one run: per attack f, f∘N, adaptive, random and the oracle."""
    cells = {(r["defence"], r["setting"], r["attack"]): r["accuracy"] for r in results["defence"]}
    q = results["regions"]["q_roa"]
    oracle = {r["attack"]: r["accuracy"] for r in results["oracle"] if abs(r["q_roa"] - q) < 1e-9}
    stats = results["statistics"]["per_attack"]["all"]
    out = {"clean accuracy": results["model"]["test_accuracy"]}
    for a in results["attacks"]:
        label = a["label"]
        out[f"{label}: f"] = cells[("none", "non-adaptive", label)]
        out[f"{label}: f∘N"] = cells[("global", "non-adaptive", label)]
        out[f"{label}: f∘N adaptive"] = cells[("global", "adaptive", label)]
        out[f"{label}: random"] = cells[("random[global]", "non-adaptive", label)]
        out[f"{label}: random adaptive"] = cells[("random[global]", "adaptive", label)]
        out[f"{label}: oracle"] = oracle[label]
    out["global mask area"] = cells_area(results)
    for name in ("iou", "pearson", "spearman"):
        out[f"RoI vs RoA {name}"] = stats[name]["value"]["mean"]
    return out


def cells_area(results: dict[str, Any]) -> float:
    return next(r["area"] for r in results["defence"] if r["defence"] == "global" and r["setting"] == "clean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = {}
    for seed in args.seeds:
        config = Config(seed=seed)
        runs[seed] = headline(run_experiment(quick(config) if args.quick else config).results)
    n_test = "200" if args.quick else "1,000"
    print(f"roiroa run{' --quick' if args.quick else ''}, seeds {args.seeds} ({n_test} test images each)")
    print(f"| number | seed {args.seeds[0]} | mean | min to max |")
    print("| --- | ---: | ---: | ---: |")
    for name in runs[args.seeds[0]]:
        values = [runs[s][name] for s in args.seeds]
        pct = name not in ("RoI vs RoA iou", "RoI vs RoA pearson", "RoI vs RoA spearman")
        show = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        spread = f"{show(min(values))} to {show(max(values))}"
        print(f"| {name} | {show(values[0])} | {show(statistics.mean(values))} | {spread} |")


if __name__ == "__main__":
    main()
