"""Throughput of the spine's batched stages on this machine, as ratios measured in one run.

    python benchmarks/spine.py [--images 256]

Prints:
1. PGD (L-infinity, 10 steps) images/s at several batch sizes, relative to batch size 64
   (the default of every attack);
2. occlusion (4x4 windows, stride 2) with and without skipping windows that already equal the
   baseline, on the same images: the speed-up and the largest difference between the maps;
3. occlusion images/s at several batch sizes, relative to 256 (the default).
Uses the default run's trained MNIST CNN (trained and cached on first use).
"""

from __future__ import annotations

import argparse

import torch
from timing import seconds

from roiroa.attacks import LinfPGD
from roiroa.evaluate.config import Config
from roiroa.evaluate.prepare import load_splits
from roiroa.geometry import grid_regions
from roiroa.maps.occlusion import occlusion_drops
from roiroa.models.train import TrainingRecipe, load_or_train
from roiroa.utils import set_progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    set_progress(False)
    splits = load_splits(Config())
    model = load_or_train("mnist-cnn", splits.train, TrainingRecipe(), 0, torch.device("cpu")).model
    x, y = splits.test.images[: args.images], splits.test.labels[: args.images]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(x)} MNIST test images\n")

    print("1. PGD L-inf, 10 steps: images/s by batch size")
    rates = {}
    for bs in (1, 8, 16, 32, 64, 128, 256):
        attack = LinfPGD(eps=0.15, steps=10, random_start=False, batch_size=bs)
        rates[bs] = len(x) / seconds(lambda a=attack: a(model, x, y), repeats=2)
    for bs, rate in rates.items():
        print(f"   batch {bs:>4}: {rate:8.0f} images/s   {rate / rates[64]:.2f}x batch 64")
    print(f"   fastest: batch {max(rates, key=rates.get)}\n")

    regions = grid_regions(28, 28, 4, 2)
    n = min(len(x), 200)
    xs, ys = x[:n], y[:n]
    print(f"2. occlusion, {len(regions)} windows of 4x4, stride 2, {n} images")
    maps = {}

    def occlude(skip: bool) -> None:
        maps[skip] = occlusion_drops(model, xs, ys, regions, 0.0, 256, skip_unchanged=skip)

    t_skip, t_all = seconds(lambda: occlude(True)), seconds(lambda: occlude(False))
    diff = float((maps[True] - maps[False]).abs().max())
    print(f"   every window forwarded: {t_all:.2f} s; unchanged windows skipped: {t_skip:.2f} s")
    print(f"   speed-up {t_all / t_skip:.2f}x, largest difference of the window drops {diff:.1e}\n")

    print("3. occlusion: images/s by batch size (occluded images per forward pass)")
    occ_rates = {}
    for bs in (64, 128, 256, 512, 1024):
        occ_rates[bs] = n / seconds(lambda b=bs: occlusion_drops(model, xs, ys, regions, 0.0, b), repeats=2)
    for bs, rate in occ_rates.items():
        print(f"   batch {bs:>4}: {rate:8.0f} images/s   {rate / occ_rates[256]:.2f}x batch 256")


if __name__ == "__main__":
    main()
