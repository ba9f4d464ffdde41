"""FGSM and PGD give the same adversarial images as ART's implementations on the same model and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from roiroa.attacks import FGSM, L2PGD, LinfPGD

art = pytest.importorskip("art", reason="ART (adversarial-robustness-toolbox) is a test dependency")
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402


def assert_same_images(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal to float rounding. A confident digit's cross-entropy gradient is ~1e-7, so the L2 step
    g / ||g|| can amplify rounding (thread scheduling of the backward pass) on a handful of pixels;
    an algorithmic difference would move most pixels by up to a step."""
    diff = np.abs(ours - ref)
    assert diff.max() < 1e-3, f"max difference {diff.max()}"
    assert (diff > 1e-5).mean() < 1e-3, f"{(diff > 1e-5).mean():.2%} of pixels differ by more than 1e-5"


def art_classifier(model: nn.Module, shape: tuple[int, int, int], classes: int) -> PyTorchClassifier:
    return PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=classes, clip_values=(0.0, 1.0)
    )


def art_pgd(
    clf: PyTorchClassifier, norm: str | float, eps: float, step: float, steps: int
) -> ProjectedGradientDescentPyTorch:
    return ProjectedGradientDescentPyTorch(
        clf, norm=norm, eps=eps, eps_step=step, max_iter=steps, num_random_init=0, batch_size=64, verbose=False
    )


@pytest.fixture(scope="module")
def clf(mnist_model: nn.Module) -> PyTorchClassifier:
    return art_classifier(mnist_model, (1, 28, 28), 10)


def test_fgsm_equals_art(mnist_model, mnist_batch, clf):
    x, y = mnist_batch
    ours = FGSM(eps=0.1)(mnist_model, x, y)
    ref = FastGradientMethod(clf, norm=np.inf, eps=0.1, batch_size=64).generate(x.numpy(), y.numpy())
    assert np.abs(ours.numpy() - ref).max() < 1e-6
    assert (ours != x).float().mean() > 0.1  # the attack changed something


@pytest.mark.parametrize(
    ("norm", "eps", "step"),
    [("linf", 0.15, 0.02), ("l2", 2.0, 0.3)],
)
def test_pgd_equals_art(mnist_model, mnist_batch, clf, norm, eps, step):
    x, y = mnist_batch
    cls = LinfPGD if norm == "linf" else L2PGD
    ours = cls(eps=eps, steps=10, step_size=step, random_start=False)(mnist_model, x, y)
    ref = art_pgd(clf, np.inf if norm == "linf" else 2, eps, step, 10).generate(x.numpy(), y.numpy())
    assert_same_images(ours.numpy(), ref)
    # Both reach the same (low) accuracy on this batch.
    with torch.no_grad():
        acc_ours = (mnist_model(ours).argmax(1) == y).float().mean()
        acc_ref = (mnist_model(torch.from_numpy(ref)).argmax(1) == y).float().mean()
    assert acc_ours == acc_ref and acc_ours < 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_masked_pgd_equals_art_mask(mnist_model, mnist_batch, clf, norm):
    """The mask argument matches ART's: perturb only inside a central 12x12 square."""
    x, y = mnist_batch
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 8:20, 8:20] = 1
    eps, step = (0.2, 0.05) if norm == "linf" else (1.5, 0.3)
    cls = LinfPGD if norm == "linf" else L2PGD
    ours = cls(eps=eps, steps=8, step_size=step, random_start=False)(mnist_model, x, y, mask=mask)
    ref = art_pgd(clf, np.inf if norm == "linf" else 2, eps, step, 8).generate(
        x.numpy(), y.numpy(), mask=np.broadcast_to(mask.numpy()[0], x.shape[1:]).copy()
    )
    assert_same_images(ours.numpy(), ref)
    outside = (ours - x)[(mask == 0).expand_as(x)]
    assert outside.abs().max() == 0
