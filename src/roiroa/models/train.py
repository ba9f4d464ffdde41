"""Training a classifier, and the cached trained reference model (safetensors)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from roiroa.cache import atomic_write, cache_dir, hash_json, hash_tensors
from roiroa.data.dataset import ImageDataset
from roiroa.models.registry import create_model
from roiroa.utils import batch_slices, progress

_RECIPE_VERSION = 2  # bump when train_classifier changes, so old cache entries are not reused


@dataclass(frozen=True)
class TrainingRecipe:
    """How the reference model is trained: Adam with a one-cycle learning rate and random shifts.

    Attributes:
        epochs: passes over the training images.
        lr: peak learning rate of the one-cycle schedule.
        batch_size: images per step.
        shift: random translation of each image by up to this many pixels (0 turns it off).
    """

    epochs: int = 12
    lr: float = 3e-3
    batch_size: int = 64
    shift: int = 2


class BatchTransform(Protocol):
    """A hook on every training batch, e.g. adversarial training: ``(model, xb, yb) -> xb'``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def params(self) -> dict[str, Any]:
        """What the transform does, as JSON (part of the model cache key)."""
        ...


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and where it came from."""

    model: nn.Module
    checkpoint: Path
    from_cache: bool
    seconds: float


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of x: (N, C, H, W) by a random (dy, dx) in [-shift, shift]^2, zero-filled."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    out = padded[torch.arange(n)[:, None, None], :, rows, cols]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generator (and the device's) inside the block; restore it afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors in key order (stored with a cached checkpoint)."""
    return hash_tensors(*(state[k] for k in sorted(state)))


def train_classifier(
    model: nn.Module,
    data: ImageDataset,
    recipe: TrainingRecipe,
    seed: int,
    batch_transform: BatchTransform | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``data`` with cross-entropy; returns it in eval mode.

    ``batch_transform`` (optional) replaces each shifted training batch, e.g. by its adversarial images.

    Shuffling and shifts use a generator seeded with ``seed``; torch's global generator (used by
    dropout, if the model has any) is seeded inside and restored afterwards.
    """
    device = next(model.parameters()).device
    with seeded_rng(seed, device):
        return _train(model, data, recipe, torch.Generator().manual_seed(seed), device, batch_transform)


def _train(
    model: nn.Module,
    data: ImageDataset,
    recipe: TrainingRecipe,
    gen: torch.Generator,
    device: torch.device,
    batch_transform: BatchTransform | None = None,
) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    steps_per_epoch = len(batch_slices(len(data), recipe.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    model.train()
    for _ in progress(range(recipe.epochs), "train model", total=recipe.epochs, unit="epochs"):
        order = torch.randperm(len(data), generator=gen)
        for s in batch_slices(len(data), recipe.batch_size):
            idx = order[s]
            xb = random_shift(data.images[idx], recipe.shift, gen).to(device)
            yb = data.labels[idx].to(device)
            if batch_transform is not None:
                xb = batch_transform(model, xb, yb)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def load_or_train(
    arch: str,
    train: ImageDataset,
    recipe: TrainingRecipe,
    seed: int,
    device: torch.device,
    batch_transform: BatchTransform | None = None,
) -> TrainedModel:
    """The model ``arch`` trained on ``train``, from the cache when the same training was done before.

    The cache key hashes the training images and labels, the architecture, the recipe, the seed,
    the device type, and the batch transform's parameters (when there is one); the weights are stored
    as safetensors (no pickle) with their SHA-256, and an entry that fails the check is trained again.
    """
    c, h, _ = train.image_shape
    kwargs = {"in_channels": c, "num_classes": train.num_classes, "image_size": h}
    key_fields = {
        "arch": arch,
        "kwargs": kwargs,
        "data": hash_tensors(train.pixels(), train.labels),
        "recipe": asdict(recipe),
        "seed": seed,
        "device": device.type,
        "version": _RECIPE_VERSION,
    }
    if batch_transform is not None:
        key_fields["batch_transform"] = batch_transform.params()
    key = hash_json(key_fields)[:16]
    path = cache_dir() / "models" / f"{arch}-{key}.safetensors"
    start = time.perf_counter()
    model = seeded_model(arch, kwargs, seed, device)
    if path.exists():
        if load_verified(model, path, device):
            return TrainedModel(model.eval(), path, True, time.perf_counter() - start)
        path.unlink(missing_ok=True)  # corrupt or stale entry: train again
        model = seeded_model(arch, kwargs, seed, device)
    train_classifier(model, train, recipe, seed, batch_transform)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "arch": arch,
        "kwargs": json.dumps(kwargs),
        "recipe": json.dumps(asdict(recipe)),
        "seed": str(seed),
        "sha256": state_hash(state),
    }
    if batch_transform is not None:
        meta["batch_transform"] = json.dumps(batch_transform.params())
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
    return TrainedModel(model, path, False, time.perf_counter() - start)


def seeded_model(arch: str, kwargs: dict[str, int], seed: int, device: torch.device) -> nn.Module:
    """A new model whose initial weights depend only on ``seed`` (the global RNG is left as it was)."""
    with seeded_rng(seed, device):
        return create_model(arch, **kwargs).to(device)


def load_verified(model: nn.Module, path: Path, device: torch.device) -> bool:
    """Load a cached state dict into ``model`` if the file is intact (its SHA-256 matches); else False."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            expected = (f.metadata() or {}).get("sha256")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        if expected != state_hash(state):
            return False
        model.load_state_dict(state)
        return True
    except (SafetensorError, RuntimeError, OSError):
        return False
