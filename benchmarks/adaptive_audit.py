"""Re-attack a defence of the default MNIST setup with the default attack suite: every attack's robust accuracy
and the per-image worst case, each with its 95% Wilson interval.

The default: the per-input mask of ``roiroa defend`` (probe eps 0.1, 5 steps) at L-infinity eps 0.15 on 100 test
images (10 per class), beside the undefended model (and, with --control, the mask's equal-area random control).
The goal of issue 16: a worst case of at most 3% on the per-input mask. Runs go through the stage cache.

    python benchmarks/adaptive_audit.py [--defence per_input] [--eps 0.15] [--n 100]
    python benchmarks/adaptive_audit.py --defence bit_depth --bits 1 --eps 0.3
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from roiroa.attacks.suite import budget_of, default_suite_specs, describe_budget
from roiroa.cache import StageCache
from roiroa.data.dataset import sample_per_class
from roiroa.evaluate.attacking import attack_entries
from roiroa.evaluate.config import Config
from roiroa.evaluate.defences import build_defences, none_defence, parse_defence
from roiroa.evaluate.grid import interval, standard_cells, worst_case
from roiroa.evaluate.outputs import build_context, run_grid
from roiroa.evaluate.prepare import prepare
from roiroa.utils import stage_seed


def defence_entry(args: argparse.Namespace) -> dict[str, Any]:
    if args.defence == "per_input":
        return {"name": "per_input", "probe_eps": 0.1, "probe_steps": 5}
    if args.defence == "bit_depth":
        return {"name": "bit_depth", "bits": args.bits}
    return {"name": args.defence}


def line(name: str, flags: Any) -> str:
    correct, n = int(flags.sum()), len(flags)
    low, high = interval(correct, n)
    return f"  {name:<34} {100 * correct / n:6.1f}%  [{100 * low:5.1f}, {100 * high:5.1f}]  ({correct}/{n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defence", default="per_input")
    parser.add_argument("--bits", type=int, default=1)
    parser.add_argument("--eps", type=float, default=0.15)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--control", action="store_true", help="also the mask's equal-area random control")
    args = parser.parse_args()
    config, cache = Config(), StageCache.default()
    prepared = prepare(config)
    test = sample_per_class(prepared.splits.test, args.n, stage_seed(config.seed, "defend-test"))
    specs = default_suite_specs(args.eps, args.queries)
    attacks = attack_entries(specs, config.batch_size)
    ctx = build_context(prepared, prepared.splits.fit, attack_entries(config.attacks, config.batch_size), cache)
    spec = parse_defence(defence_entry(args), config)
    defences = [none_defence(ctx), *build_defences(spec, ctx, "pixels" if args.control else None)]
    results = run_grid(prepared, cache, defences, attacks, standard_cells(defences, attacks), test)
    print("$ python " + " ".join(sys.argv))
    print(f"MNIST reference CNN, {len(test)} test images, L-inf eps {args.eps:g}; suite:")
    for a in attacks:
        print("  " + describe_budget(budget_of(a.label, a.params)))
    for d in defences:
        print(f"{d.name} ({d.settings}; adaptive gradient: {d.gradient}):")
        for cell, r in results.items():
            if cell.defence == d.name:
                print(line(f"{cell.setting} {cell.label}", r.correct))
        worst = worst_case(results, d.name)
        assert worst is not None
        print(line("WORST CASE (any attack, any cell)", worst))


if __name__ == "__main__":
    main()
