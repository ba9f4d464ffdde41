"""The reference model (accuracy, cache, augmentation) and properties of every registered attack."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pytest
import torch
from torch.nn import functional as F

from roiroa.attacks import FGSM, L2PGD, LinfPGD, create_attack, list_attacks
from roiroa.errors import InputError
from roiroa.maps import Saliency, record_attack
from roiroa.models import TrainingRecipe, accuracy, load_or_train, random_shift
from rounding import EPS32, MNIST_TERMS

# float32 rounding bounds (MnistCNN's logits and gradients in another order): tests/rounding.py

# --------------------------------------------------------------------------------------------- model

# roiroa's own attacks (the adapters of other libraries take no mask: tests/test_engine.py checks them)
NATIVE = [n for n in list_attacks() if n not in ("art", "torchattacks")]


@pytest.mark.numeric
def test_reference_model_accuracy(mnist_model, mnist_splits):
    test = mnist_splits.test
    assert len(test) == 1000
    # not rounding: the model is trained on each machine, whose kernels round differently, so its weights differ;
    # it reaches ~0.98 (0.977-0.98 measured with AVX-512, AVX2 and portable kernels): 0.97 leaves ~8 images
    assert accuracy(mnist_model, test.images, test.labels) >= 0.97


@pytest.fixture
def tiny_training(mnist_splits, tmp_path, monkeypatch):
    monkeypatch.setenv("ROIROA_CACHE", str(tmp_path / "cache"))
    train = mnist_splits.train.subset(torch.arange(192))
    recipe = TrainingRecipe(epochs=1, batch_size=64)
    return lambda: load_or_train("mnist-cnn", train, recipe, 3, torch.device("cpu")), tmp_path / "cache"


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_or_train_uses_the_cache(tiny_training):
    run, cache = tiny_training
    first = run()
    assert not first.from_cache
    assert first.checkpoint.exists() and first.checkpoint.is_relative_to(cache)
    second = run()
    assert second.from_cache and second.checkpoint == first.checkpoint
    assert state_equal(first.model, second.model)
    assert not second.model.training


def test_fresh_and_cached_models_carry_no_gradients(tiny_training):
    run, _ = tiny_training
    assert all(p.grad is None for p in run().model.parameters())  # cached model: True; fresh: False


def corrupt(path, how):
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(bytes(range(256)) * (len(data) // 256 + 1))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "empty"])
def test_load_or_train_retrains_on_a_corrupt_cache_file(tiny_training, corruption):
    run, _ = tiny_training
    first = run()
    corrupt(first.checkpoint, corruption)
    again = run()
    assert not again.from_cache
    assert again.checkpoint == first.checkpoint
    third = run()
    assert third.from_cache  # the retrained checkpoint was written back and loads
    assert state_equal(again.model, third.model)


def test_damaged_weights_with_intact_header_are_detected(tiny_training):
    """Flip bytes inside the tensor data (the safetensors header still parses): the SHA-256 check catches it."""
    run, _ = tiny_training
    first = run()
    data = bytearray(first.checkpoint.read_bytes())
    data[-64:] = bytes(255 - b for b in data[-64:])
    first.checkpoint.write_bytes(bytes(data))
    again = run()
    assert not again.from_cache
    assert state_equal(first.model, again.model)


def test_training_depends_only_on_its_seed(mnist_splits, tmp_path, monkeypatch):
    train = mnist_splits.train.subset(torch.arange(192))
    models = []
    for global_seed in (0, 1):
        monkeypatch.setenv("ROIROA_CACHE", str(tmp_path / f"cache{global_seed}"))
        torch.manual_seed(global_seed)  # unrelated global RNG state, e.g. from earlier work in the process
        trained = load_or_train("mnist-cnn", train, TrainingRecipe(epochs=1), 3, torch.device("cpu"))
        assert not trained.from_cache
        models.append(trained.model)
    assert state_equal(*models)


def test_retraining_after_corruption_reproduces_the_model(tiny_training):
    run, _ = tiny_training
    torch.manual_seed(0)
    first = run()
    corrupt(first.checkpoint, "garbage")
    torch.manual_seed(1)  # another global state: the weights depend only on the seed
    again = run()
    assert not again.from_cache
    assert state_equal(first.model, again.model)


def test_random_shift_moves_a_pixel_by_at_most_shift():
    n, shift = 300, 2
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, 10, 12] = 1.0
    out = random_shift(x, shift, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out.flatten(1).sum(1) == 1).all()  # the pixel stays inside and keeps its value
    pos = out[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 28 - 10, pos % 28 - 12
    assert dy.abs().max() <= shift and dx.abs().max() <= shift
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) == (2 * shift + 1) ** 2  # every offset occurs
    assert random_shift(x, 0, torch.Generator()) is x


def test_random_shift_zero_fills_and_keeps_channels():
    x = torch.rand(20, 3, 8, 8)
    out = random_shift(x, 1, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    for i in range(20):
        # the image is some translation of x[i] by (dy, dx) in [-1, 1]^2 with zero fill
        found = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = torch.zeros_like(x[i])
                src = x[i][:, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
                ref[:, max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = src
                found |= torch.equal(out[i], ref)
        assert found


# --------------------------------------------------------------------------------------------- attacks


def central_mask():
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 8:20, 8:20] = 1
    return mask


# Fewer iterations for the optimisation attacks, so that these tests stay fast.
QUICK_KWARGS = {"cw-l2": {"steps": 20, "binary_search_steps": 2}, "deepfool": {"steps": 20}}
QUICK_KWARGS |= {name: {"steps": 10} for name in ("apgd-ce", "apgd-dlr", "apgd-ce-l2", "apgd-dlr-l2")}


def within_budget(attack, x, x_adv):
    delta = x_adv - x
    if not hasattr(attack, "eps"):  # unbounded minimal-perturbation attacks (CW-L2, DeepFool)
        return True
    if attack.norm == "l1":
        # bound: <= steps (20) non-zero terms summed in the projection and here: 2 * 20 * 6e-8 * eps (10) = 2.4e-5
        return bool((delta.flatten(1).abs().sum(dim=1) <= attack.eps + 1e-4).all())
    if attack.norm == "linf":
        # bound: (x + delta) - x rounds by <= half an ulp of 1.0 (6e-8) < 1e-6
        return float(delta.abs().max()) <= attack.eps + 1e-6
    # bound: the norm of 784 float32 squares, in the projection and here: 2 * 784 * 6e-8 = 9.4e-5 relative worst
    # case (typically 2 * sqrt(784) * 6e-8 = 3.4e-6), plus (x + delta) - x, <= 1 ulp per pixel: sqrt(784) * 1.2e-7
    n = x[0].numel()
    return bool((delta.flatten(1).norm(dim=1) <= attack.eps * (1 + n * EPS32) + math.sqrt(n) * EPS32).all())


def test_registry_names():
    assert set(list_attacks()) >= {"fgsm", "pgd-linf", "pgd-l2"}
    assert {"pgd-l2", "pgd-linf"} <= set(list_attacks("pgd-*"))
    assert all(n.startswith("pgd-") for n in list_attacks("pgd-*"))


@pytest.mark.numeric
@pytest.mark.parametrize("name", NATIVE)
def test_attack_properties(mnist_model, mnist_batch, name):
    x, y = mnist_batch
    torch.manual_seed(0)
    attack = create_attack(name, **QUICK_KWARGS.get(name, {}))
    result = record_attack(attack, mnist_model, x, y, batch_size=64)
    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert within_budget(attack, x, x_adv)
    # Every attack raises the loss. The accuracy need not fall: the model is trained on each machine, and the weak
    # pgd-square fools 0 or 1 of these 64 images depending on the machine's model (its mean loss still rises 2.5x).
    with torch.no_grad():
        loss, loss_adv = (F.cross_entropy(mnist_model(t), y) for t in (x, x_adv))
    assert loss_adv > loss
    assert accuracy(mnist_model, x_adv, y) <= accuracy(mnist_model, x, y)
    # its gradients, recorded from outside: every attack but the score-based Square takes some
    assert result.gradient.shape == (64, 28, 28) and (result.gradient >= 0).all()
    assert (result.gradient_calls > 0) == (not getattr(attack, "gradient_free", False))
    assert attack(mnist_model, x[:4], y[:4]).shape == (4, 1, 28, 28)


@pytest.mark.parametrize("name", NATIVE)
def test_attack_mask(mnist_model, mnist_batch, name):
    x, y = mnist_batch
    mask = central_mask()
    attack = create_attack(name, **QUICK_KWARGS.get(name, {}))
    torch.manual_seed(0)
    result = record_attack(attack, mnist_model, x, y, batch_size=64, mask=mask)
    outside = (mask == 0).expand_as(x)
    delta = result.x_adv - x
    assert (delta[outside] == 0).all()
    assert delta[~outside].abs().max() > 0
    assert within_budget(attack, x, result.x_adv)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.gradient.shape == (64, 28, 28) and (result.gradient >= 0).all()
    # A per-image mask (N, 1, H, W) is accepted too; a wrong shape is not.
    per_image = mask.expand(64, 1, 28, 28).clone()
    per_image[1::2] = 0  # odd images may not be changed at all
    torch.manual_seed(0)
    x_adv = attack(mnist_model, x, y, mask=per_image)
    assert torch.equal(x_adv[1::2], x[1::2])
    with pytest.raises(InputError):
        attack(mnist_model, x, y, mask=torch.ones(1, 28, 28))


@pytest.mark.numeric
@pytest.mark.parametrize("attack", [FGSM(eps=0.1), LinfPGD(eps=0.1, steps=5, random_start=False)])
def test_attack_batch_size_invariance(mnist_model, mnist_batch, attack):
    """Sign steps: the images do not depend on how the batch is chunked (the loss is a sum), except where a
    gradient component is within rounding of 0: in another batch its sign, so that pixel's step, may flip."""
    x, y = mnist_batch
    big = record_attack(attack, mnist_model, x, y, batch_size=64)
    one = record_attack(dataclasses.replace(attack, batch_size=1), mnist_model, x, y, batch_size=1)
    # Flips need |component| <= ~sqrt(A) eps32 (5e-6) of the gradient: measured ~1 pixel-step in 1e5; a flipped
    # step may steer that image's later steps, so allow up to 1% of the pixels (one image is 1.6%).
    assert (one.x_adv != big.x_adv).float().mean() <= 0.01
    assert within_budget(attack, x, one.x_adv) and one.x_adv.min() >= 0 and one.x_adv.max() <= 1
    same = (one.x_adv == big.x_adv).flatten(1).all(1)  # images on the same path (FGSM: one step, from x)
    assert same.sum() >= 60
    # bound: gradients summed in batches of another size, sqrt(A) eps32 of their scale, in each run; the
    # cross-entropy's true-class term 1 - p_y is resolved to 6e-8 only, another eps32 of it. A ReLU or max-pool
    # input within rounding of its kink may switch, though, and move that image's gradient near it by the unit's
    # share (measured once: 3e-5 = 4e-6 of the largest entry): so 99%, not all, entries. A loss averaged over the
    # batch instead of summed would scale every map by the batch size.
    bound = 2 * math.sqrt(MNIST_TERMS) * EPS32 * float(big.gradient.max())
    assert ((one.gradient - big.gradient)[same].abs() < bound).float().mean() >= 0.99
    three = record_attack(dataclasses.replace(attack, batch_size=3), mnist_model, x, y, batch_size=3)
    assert (three.x_adv != big.x_adv).float().mean() <= 0.01  # as above


@pytest.mark.numeric
def test_l2_attack_batch_size_invariance_up_to_rounding(mnist_model, mnist_batch):
    """L2 steps divide by ||grad||, which is ~1e-6 on confidently classified digits, so float
    rounding of batched convolutions is amplified; the images agree closely, not bit for bit."""
    x, y = mnist_batch
    attack = L2PGD(eps=1.5, steps=5, step_size=0.3, random_start=False)
    big = record_attack(attack, mnist_model, x, y, batch_size=64)
    one = record_attack(dataclasses.replace(attack, batch_size=1), mnist_model, x, y, batch_size=1)
    with torch.no_grad():
        loss = F.cross_entropy(mnist_model(x), y, reduction="none")
    # The cross-entropy gradient's true-class term 1 - p_y (~ the loss when small) is resolved to 6e-8 only, so
    # the step g / ||g|| has a relative error ~6e-8 / loss: pure rounding below a loss of ~1e-6. Where the loss is
    # >= 1e-3 (it grows along the attack): <= 6e-5 + sqrt(A) eps32 (5e-6) per step, in each run, over 5 steps of
    # 0.3: bound 2 * 5 * 0.3 * 6.5e-5 = 2e-4 per pixel (a ReLU switching at its kink in one run moves a gradient by
    # ~1e-5 of it: inside).
    resolved = loss >= 1e-3
    assert resolved.sum() >= 8  # 26 and 27 of the 64 with the models trained under AVX-512 and portable kernels
    assert (one.x_adv - big.x_adv)[resolved].abs().max() < 2e-4
    # The others may step elsewhere: both stay in the ball and the box, and fool about as many images (~5 have
    # losses in 1e-8..1e-5, where the first step is mostly rounding; each may or may not end fooled).
    for result in (one, big):
        assert within_budget(attack, x, result.x_adv) and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        correct_one, correct_big = ((mnist_model(r.x_adv).argmax(1) == y).sum() for r in (one, big))
    assert abs(int(correct_one) - int(correct_big)) <= 2


@pytest.mark.numeric
def test_restarts_keep_the_first_success(mnist_model, mnist_batch):
    x, y = mnist_batch
    eps = 0.06
    torch.manual_seed(123)
    first = LinfPGD(eps=eps, steps=5, restarts=1)(mnist_model, x, y)
    torch.manual_seed(123)
    result = record_attack(LinfPGD(eps=eps, steps=5, restarts=3), mnist_model, x, y)
    best = result.x_adv
    assert float((best - x).abs().max()) <= eps + 1e-6  # bound: (x + delta) - x rounds by <= 6e-8
    assert best.min() >= 0 and best.max() <= 1
    with torch.no_grad():
        fooled_first = mnist_model(first).argmax(1) != y
        fooled_best = mnist_model(best).argmax(1) != y
    assert 0 < fooled_first.sum() < 64  # the test needs both kinds of image
    assert (fooled_best | ~fooled_first).all()  # fooled by the first restart -> stays fooled
    # and keeps the first restart's image: the same seed, batch and kernels in one process, so bit for bit
    assert torch.equal(best[fooled_first], first[fooled_first])
    assert fooled_best.sum() >= fooled_first.sum()
    # The gradient map sums over all three restarts. Exact: the first restart repeats `single` bit for bit, and
    # adding non-negative maps never lowers a float32 sum (1e-5 is slack).
    torch.manual_seed(123)
    single = record_attack(LinfPGD(eps=eps, steps=5, restarts=1), mnist_model, x, y)
    assert (result.gradient >= single.gradient - 1e-5).all()
    assert result.gradient.sum() > 2 * single.gradient.sum() and result.gradient_calls == 3 * single.gradient_calls


@pytest.mark.parametrize(
    ("cls", "kwargs", "param"),
    [
        (LinfPGD, {"eps": -0.1}, "eps"),
        (LinfPGD, {"eps": 0}, "eps"),
        (LinfPGD, {"eps": 1.5}, "eps"),
        (LinfPGD, {"steps": 0}, "steps"),
        (LinfPGD, {"steps": 2.5}, "steps"),
        (LinfPGD, {"restarts": 0}, "restarts"),
        (LinfPGD, {"step_size": -0.01}, "step_size"),
        (LinfPGD, {"batch_size": 0}, "batch_size"),
        (L2PGD, {"eps": 0.0}, "eps"),
        (L2PGD, {"eps": float("inf")}, "eps"),
        (FGSM, {"eps": 0}, "eps"),
        (FGSM, {"eps": 1.5}, "eps"),
    ],
)
def test_bad_hyperparameters(cls, kwargs, param):
    pattern = rf"^The '{param}' parameter of {cls.__name__} must be .+ Got .+ instead\.$"
    with pytest.raises(InputError, match=pattern):
        cls(**kwargs)


def test_large_l2_eps_is_allowed():
    assert L2PGD(eps=5.0).eps == 5.0


def test_create_attack_errors():
    with pytest.raises(InputError) as err:
        create_attack("nope")
    for name in list_attacks():
        assert name in str(err.value)
    with pytest.raises(InputError):
        create_attack("fgsm", steps=3)  # FGSM has no steps
    with pytest.raises(InputError, match=re.escape("The 'eps' parameter of LinfPGD must be")):
        create_attack("pgd-linf", eps=2.0)
    attack = create_attack("pgd-linf", eps=0.1, steps=4)
    assert isinstance(attack, LinfPGD) and attack.step_size_value() == pytest.approx(2.5 * 0.1 / 4)
    assert attack.params()["step_size"] == pytest.approx(0.0625) and attack.params()["norm"] == "linf"


def test_attacks_leave_the_model_parameters_alone(mnist_model, mnist_batch):
    model = copy.deepcopy(mnist_model)
    for p in model.parameters():
        p.grad = None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = mnist_batch[0][:16], mnist_batch[1][:16]
    for name in NATIVE:
        create_attack(name)(model, x, y, mask=central_mask())
    Saliency()(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
