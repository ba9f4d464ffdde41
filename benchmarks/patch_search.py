"""The cost and the effect of the patch placement search: LaVAN at a random place, in the global RoI and searched,
crafted on f and through a fragment defence, on the bundled MNIST setup.

Prints, per placement and target, the robust accuracy on the defended model (95% Wilson interval) and the CPU
time as a ratio to the random placement's (CPU time, so that a busy machine does not change it much).

    python benchmarks/patch_search.py [--n 50] [--defence fragments-iforest] [--area 0.08] [--steps 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from roiroa.cache import StageCache
from roiroa.data.dataset import sample_per_class
from roiroa.evaluate.attacking import attack_entry
from roiroa.evaluate.config import Config, default_patch_defences
from roiroa.evaluate.grid import interval
from roiroa.evaluate.outputs import build_context
from roiroa.evaluate.patches import patch_defences, roi_corners
from roiroa.evaluate.prepare import prepare
from roiroa.utils import seed_all, stage_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--defence", default="fragments-iforest")
    parser.add_argument("--area", type=float, default=0.08)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    entry = next(d for d in default_patch_defences() if isinstance(d, dict) and d["label"] == args.defence)
    base = Config()
    patches = dataclasses.replace(base.patches, defences=(entry,), areas=(args.area,), adaptive_areas=(args.area,))
    prepared = prepare(dataclasses.replace(base, patches=patches))
    config = prepared.config
    test = sample_per_class(prepared.splits.test, args.n, stage_seed(config.seed, "test-subset"))
    fit = sample_per_class(prepared.splits.fit, config.patches.n_fit, stage_seed(config.seed, "fit-subset"))
    ctx = build_context(prepared, fit, [], StageCache.default())
    defence = next(d for d in patch_defences(config, ctx) if d.name == args.defence)
    height, width = test.images.shape[2:]
    corner = list(roi_corners(config, ctx, (height, width))[args.area])
    lavan = {"name": "patch-lavan", "steps": args.steps, "step_size": 2.5 / args.steps, "area": args.area}
    placements = {"random": {}, "roi": {"location": "roi"}, "search": {"location": "search"}}
    print(f"{args.defence}, area {args.area}, {args.n} images, LaVAN {args.steps} steps; RoI corner {corner}")
    for target_name, target, extra in [
        ("on f", prepared.model, {}),
        ("adaptive", defence.attack_model, defence.adaptive_params),
    ]:
        base_time = None
        for name, where in placements.items():
            spec = lavan | where | extra | {"roi_corner": corner}
            attack = attack_entry(spec, config.batch_size, seed=config.seed).attack
            seed_all(config.seed)
            start = time.process_time()
            x_adv = attack(target, test.images, test.labels)
            spent = time.process_time() - start
            base_time = base_time or spent
            with torch.no_grad():
                correct = int((defence.model(x_adv).argmax(1) == test.labels).sum())
            low, high = interval(correct, args.n)
            print(
                f"  {target_name:<9} {name:<7} robust {100 * correct / args.n:5.1f}%"
                f" [{100 * low:5.1f}, {100 * high:5.1f}]  CPU time x{spent / base_time:.2f} of random"
            )


if __name__ == "__main__":
    main()
