"""Speed of the estimators against their references, as ratios measured in one run on the same inputs.

    python benchmarks/estimators.py [--images 8] [--repeats 3]

Prints:
1. occlusion maps (4x4 windows, stride 2, zero baseline, softmax drop) for the MNIST CNN and for a
   CIFAR ResNet-20: ours (incremental inference where it saves enough, see roiroa.maps.incremental;
   and on whole images) against Captum's ``Occlusion`` at its fastest ``perturbations_per_eval``
   (2 to 256 are tried), the speed-ups and the largest difference between the maps;
2. the localized-attack map (PGD L-inf, 10 steps, 4x4 windows, stride 2) of one image: one batch
   of masked attacks against a loop over the windows, the speed-up and the largest difference.
Times are the best of ``--repeats`` rounds after a warm-up round; in each round the candidates take
turns, so that a slow spell of a shared machine hits all of them alike. The ResNet-20 uses the pretrained
weights of /work/shared/data/models (or $ROIROA_SHARED) where present, else a random init (the
timing is the same); the CIFAR images are the shared test subset where present, else noise.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from timing import interleaved_seconds
from torch import nn

from roiroa.attacks import LinfPGD
from roiroa.attacks.carlini_wagner import margin
from roiroa.evaluate.config import Config
from roiroa.evaluate.prepare import load_splits
from roiroa.geometry import grid_regions, regions_to_pixels
from roiroa.maps import LocalizedAttack, Occlusion, occlusion_drops
from roiroa.maps.incremental import incremental_model
from roiroa.models.loading import load_model
from roiroa.models.normalize import NORMALIZATIONS, Normalized
from roiroa.models.resnet import resnet20
from roiroa.models.train import TrainingRecipe, load_or_train
from roiroa.utils import set_progress

SHARED = Path(os.environ.get("ROIROA_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))


def cifar_resnet20(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """ResNet-20 (pretrained where the shared weights exist) and n CIFAR-10 test images with labels."""
    weights = SHARED / "data" / "models" / "resnet20-12fca82f.th"
    stats = NORMALIZATIONS["imagenet"]  # what these weights were trained with (see the shared data README)
    if weights.exists():
        model = load_model("resnet20", weights, image_shape=(3, 32, 32), num_classes=10, normalization=stats)
        source = "pretrained"
    else:
        model, source = Normalized(resnet20(), *stats), "random init"
    model.eval()
    data = SHARED / "data" / "cifar10" / "cifar10_test_1000.npz"
    if data.exists():
        with np.load(data) as f:
            images = torch.from_numpy(f["images"][:n]).float()
            labels = torch.from_numpy(f["labels"][:n]).long()
        if images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        if images.max() > 1:
            images = images / 255.0
        images = images.contiguous()
    else:
        gen = torch.Generator().manual_seed(0)
        images, labels = torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    return model, images, labels, source


def compare_occlusion(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    """Print ours (incremental where it applies, and on whole images) against Captum's fastest; return the speed-up."""
    from captum.attr import Occlusion as CaptumOcclusion

    c = x.shape[1]
    captum = CaptumOcclusion(lambda inp: model(inp).softmax(1))

    def reference(per_eval: int) -> torch.Tensor:
        with torch.no_grad():
            attr = captum.attribute(
                x,
                sliding_window_shapes=(c, 4, 4),
                strides=(c, 2, 2),
                baselines=0.0,
                target=y,
                perturbations_per_eval=per_eval,
            )
        return attr[:, 0]

    regions = grid_regions(x.shape[2], x.shape[3], 4, 2)
    ours_fn = Occlusion(window=4, stride=2, baseline=0.0)

    def whole_images() -> torch.Tensor:
        return regions_to_pixels(occlusion_drops(model, x, y, regions, 0.0, incremental=False), regions)

    per_evals = (2, 4, 8, 16, 32, 64, 128, 256)
    fns = {f"captum@{k}": (lambda k=k: reference(k)) for k in per_evals}
    fns |= {"ours": lambda: ours_fn(model, x, y), "ours, whole images": whole_images}
    times = interleaved_seconds(fns, repeats)  # type: ignore[arg-type]
    best_k = min(per_evals, key=lambda k: times[f"captum@{k}"])
    t_ref = times[f"captum@{best_k}"]
    reference_map = reference(best_k)
    diff = float((ours_fn(model, x, y) - reference_map).abs().max())
    diff_whole = float((whole_images() - reference_map).abs().max())
    engine = incremental_model(model, tuple(x.shape[1:]), (4, 4))  # type: ignore[arg-type]
    how = f"incremental, {engine.saved_fraction:.0%} of MACs saved" if engine else "whole images (too little to save)"
    speedup = t_ref / times["ours"]
    tried = ", ".join(f"{k}: {t_ref / times[f'captum@{k}']:.2f}" for k in per_evals)
    print(f"   {name}: ours ({how}) {speedup:.2f}x faster than Captum at its fastest perturbations_per_eval={best_k}")
    print(f"      ours on whole images: {t_ref / times['ours, whole images']:.2f}x; max |ours - Captum| = {diff:.2e},")
    print(f"      whole images {diff_whole:.2e}; Captum's other settings relative to its fastest: {tried}")
    if engine is not None:  # how fast Captum's forward passes already are: the room left to any exact method
        macs = len(x) * len(regions) * engine.macs
        computed = macs * (1 - engine.saved_fraction)
        print(
            f"      Captum's forwards: {macs / t_ref / 1e9:.0f} GMAC/s; ours: {macs / times['ours'] / 1e9:.0f} GMAC/s "
            f"equivalent, {computed / times['ours'] / 1e9:.0f} GMAC/s actually computed"
        )
    return speedup


def localized_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: LinfPGD) -> torch.Tensor:
    """The per-window loop the batched estimator replaces: one masked attack call per window."""
    regions = grid_regions(x.shape[2], x.shape[3], 4, 2)
    with torch.no_grad():
        clean = margin(model(x), y)
    drops = []
    for r in regions:
        x_adv = attack(model, x, y, mask=r.view(1, 1, *r.shape).float())
        with torch.no_grad():
            drops.append(clean - margin(model(x_adv), y))
    return regions_to_pixels(torch.stack(drops, 1), regions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images per occlusion comparison")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    set_progress(False)
    splits = load_splits(Config())
    mnist = load_or_train("mnist-cnn", splits.train, TrainingRecipe(), 0, torch.device("cpu")).model
    xm, ym = splits.test.images[: args.images], splits.test.labels[: args.images]
    resnet, xc, yc, source = cifar_resnet20(args.images)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images per comparison\n")

    print("1. occlusion, 4x4 windows, stride 2, zero baseline, softmax drop")
    compare_occlusion("MNIST CNN (28x28)", mnist, xm, ym, args.repeats)
    compare_occlusion(f"CIFAR ResNet-20 (32x32, {source})", resnet, xc, yc, args.repeats)

    print("\n2. localized attack map of one MNIST image (PGD L-inf eps 0.3, 10 steps, 4x4 windows, stride 2)")
    attack = LinfPGD(eps=0.3, steps=10, random_start=False)
    x1, y1 = xm[:1], ym[:1]
    batched = LocalizedAttack(attack=attack, window=4, stride=2)
    times = interleaved_seconds(
        {"batch": lambda: batched(mnist, x1, y1), "loop": lambda: localized_loop(mnist, x1, y1, attack)}, args.repeats
    )
    t_batch, t_loop = times["batch"], times["loop"]
    diff = float((batched(mnist, x1, y1) - localized_loop(mnist, x1, y1, attack)).abs().max())
    windows = len(grid_regions(28, 28, 4, 2))
    print(f"   {windows} windows: one batch {t_loop / t_batch:.1f}x faster than a loop over windows;")
    print(f"   max |batched - loop| = {diff:.2e}")


if __name__ == "__main__":
    main()
