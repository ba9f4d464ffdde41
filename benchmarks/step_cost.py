"""The cost of one attack step per image on each registered architecture, relative to LeNet-5: what a table of
``roiroa defend`` with the default suite costs on a model, given what it cost on MNIST.

    python benchmarks/step_cost.py [--images 64] [--repeats 5]

One step is what every gradient attack of the suite repeats: a forward pass and the gradient of the
cross-entropy with respect to the input, ``cross_entropy(model(x), y).backward()`` with ``x`` requiring grad.
Each architecture is built at the input size it is used with (MNIST 1 x 28 x 28, CIFAR 3 x 32 x 32, ImageNet
3 x 224 x 224; random weights, which do not change the cost) on uniform random images; the ImageNet network gets
a quarter of the images. Timed interleaved (every architecture once per round, best of ``repeats`` rounds), so
that a slow spell of a shared machine hits all alike. Prints milliseconds per image-step and the ratio to LeNet-5.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import interleaved_seconds

from roiroa.models.loading import build_architecture

# (registered name, channels, classes, image side)
CASES = (
    ("mnist-cnn", 1, 10, 28),
    ("lenet5", 1, 10, 28),
    ("resnet20", 3, 10, 32),
    ("mobilenet_v1_025", 3, 1000, 224),
)


def attack_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One attack step on x: (N, C, H, W) in [0, 1]: forward, cross-entropy on class 0, input gradient."""
    y = torch.zeros(len(x), dtype=torch.long)

    def step() -> torch.Tensor:
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), y).backward()
        assert xi.grad is not None
        return xi.grad

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per step (the ImageNet network: a quarter)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    steps, sizes = {}, {}
    for name, channels, classes, side in CASES:
        sizes[name] = args.images if side < 100 else max(1, args.images // 4)
        model = build_architecture(name, channels, classes, side).eval()
        steps[name] = attack_step(model, torch.rand(sizes[name], channels, side, side))
    times = interleaved_seconds(steps, args.repeats)
    per_image = {name: times[name] / sizes[name] for name in times}
    print(f"one attack step per image, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, seconds in per_image.items():
        print(f"  {name:18s} {1e3 * seconds:8.3f} ms   {seconds / per_image['lenet5']:5.1f} x LeNet-5")


if __name__ == "__main__":
    main()
