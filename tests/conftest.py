"""Shared fixtures: a session cache folder, the bundled MNIST splits and the trained reference model.

The model is trained once per session (about 10 s on 2 cores) into a temporary ROIROA_CACHE, with
the same data, recipe and seed as the default run, so the end-to-end tests reuse it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from roiroa.evaluate.config import Config
from roiroa.evaluate.prepare import Splits, load_splits
from roiroa.models.train import TrainingRecipe, load_or_train

# Real data for tests (../shared beside the checkout, or $ROIROA_SHARED); tests that need it skip where it is absent.
SHARED = Path(os.environ.get("ROIROA_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
SHARED_DATA = SHARED / "data"


# The files of a `roiroa run` results folder (besides hidden ones), sorted.
RUN_FILES = [
    "config.json",
    "examples.png",
    "flags.csv",
    "maps.npz",
    "metrics.csv",
    "per_image.csv",
    "report.html",
    "results.json",
]


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test uses a fresh cache folder of this session, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("roiroa-cache")
    old = os.environ.get("ROIROA_CACHE")
    os.environ["ROIROA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ROIROA_CACHE", None)
    else:
        os.environ["ROIROA_CACHE"] = old


@pytest.fixture(scope="session")
def mnist_splits() -> Splits:
    """The default run's splits of bundled MNIST (4,000 train, 500 fit, 1,000 test)."""
    return load_splits(Config())


@pytest.fixture(scope="session")
def mnist_model(mnist_splits: Splits, session_cache: Path) -> nn.Module:
    """The default run's trained MnistCNN (eval mode, CPU)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_or_train("mnist-cnn", mnist_splits.train, TrainingRecipe(), 0, torch.device("cpu")).model


@pytest.fixture(scope="session")
def mnist_batch(mnist_splits: Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """64 test images (N, 1, 28, 28) in [0, 1] and their labels, a few of every class."""
    idx = torch.arange(0, 1000, 1000 // 64)[:64]
    return mnist_splits.test.images[idx], mnist_splits.test.labels[idx]


class TinyRGBNet(nn.Module):
    """A small random conv net on (N, 3, 16, 16), for checks on colour images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 64, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def rgb_model() -> nn.Module:
    return TinyRGBNet().eval()


@pytest.fixture
def rgb_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=gen), torch.randint(0, 5, (6,), generator=gen)
