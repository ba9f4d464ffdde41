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

pytestmark = pytest.mark.numeric


def assert_same_images(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal to float rounding. A confident digit's cross-entropy gradient is ~1e-7, so the L2 step
    g / ||g|| can amplify rounding (thread scheduling of the backward pass) on a handful of pixels;
    an algorithmic difference would move most pixels by up to a step."""
    diff = np.abs(ours - ref).reshape(len(ours), -1)
    # One image may take another path: a sign step whose gradient component is within rounding of 0 flips, or an L2
    # step on a digit whose loss is ~1e-7 (its direction resolved to ~6e-8 / loss only) points elsewhere. So: all
    # but one image agree to 1e-3 (bound: 10 steps of 0.3 with relative direction errors <= 1e-4 on the others),
    # and at most one image's worth of pixels (1.6%) differs by more than rounding (1e-5).
    assert (diff.max(1) >= 1e-3).sum() <= 1, f"max differences {np.sort(diff.max(1))[-3:]}"
    assert (diff > 1e-5).mean() < 0.02, f"{(diff > 1e-5).mean():.2%} of pixels differ by more than 1e-5"


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
    # bound: the same gradient's signs; a component within rounding of 0 (~1e-5 of them) may flip and move that pixel
    # by 2 eps; elsewhere (x + eps) clipped rounds alike (< 1e-6)
    assert (np.abs(ours.numpy() - ref) > 1e-6).mean() < 1e-3
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
    # Both reach the same (low) accuracy on this batch, within the one image that may take another path.
    with torch.no_grad():
        correct_ours = int((mnist_model(ours).argmax(1) == y).sum())
        correct_ref = int((mnist_model(torch.from_numpy(ref)).argmax(1) == y).sum())
    assert abs(correct_ours - correct_ref) <= 1 and correct_ours < 32


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
    assert outside.abs().max() == 0  # exact: the step is multiplied by 0 there, and x + 0 is x
