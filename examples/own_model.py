"""Your own model and images, from Python: the whole roiroa pipeline on an in-memory nn.Module.

    python examples/own_model.py [--out runs/own-model]

It trains a small CNN for a few seconds on images where the class is the place of a bright square, then runs
the analysis (where the model looks, where attacks act, the statistics, the global mask against its random
control) and the defence table, and writes a results folder with its report.html. Replace ``make_data`` and
``SmallCNN`` with your data and your model: images (N, C, H, W) in [0, 1], labels (N,) int, logits (N, K).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import roiroa


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 64, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy 16x16 images; class 0 has a bright square top left, class 1 bottom right."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=gen) * 0.3
    y = torch.arange(n) % 2
    x[y == 0, :, 2:7, 2:7] = 0.9
    x[y == 1, :, 9:14, 9:14] = 0.9
    return x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="roiroa-runs/own-model")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = train(SmallCNN(), *make_data(512, seed=1))
    x, y = make_data(400, seed=2)
    config = {
        "attacks": [{"name": "pgd-linf", "eps": 0.3, "steps": 10}, {"name": "pgd-l2", "eps": 2.0, "steps": 10}],
        "evaluation": {
            "defences": ["global", "per_class", {"name": "blur", "sigma": 1.0}],
            "run_defences": ["per_class"],
            # a small suite for the example; leave "attacks" out for the default suite (the one to publish with)
            "attacks": [{"name": "pgd-linf", "steps": 10, "loss": "margin"}, {"name": "square", "queries": 100}],
        },
    }
    experiment = roiroa.Experiment(model=model, data=(x, y, ["top left", "bottom right"]), config=config)
    run = experiment.run()
    print(run.table())
    print(f"results: {run.write(args.out, overwrite=True)}/report.html")
    print(experiment.defend().table())


if __name__ == "__main__":
    main()
