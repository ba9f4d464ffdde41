"""Loading users' models: an architecture (registry name or ``package.module:callable``) and weights.

Weights come from a state_dict in a ``.pt``/``.pth``/``.th`` file (torch's zip or legacy format,
read with ``weights_only=True`` only), from a dict holding ``state_dict``/``model_state_dict``, or
from safetensors. ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes are
stripped, CUDA-saved tensors land on the CPU first. A file that needs Python code to unpickle
(a whole pickled model) is refused. TorchScript archives run their own code when loaded
(``torch.load`` itself refuses them with ``weights_only=True``), so they load only with
``trust_code=True``.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from roiroa.errors import InputError
from roiroa.models.normalize import Normalized
from roiroa.models.registry import create_model

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")
_RESAVE = "re-save it as weights only: torch.save(model.state_dict(), 'weights.pt') or safetensors"


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip file holding compiled ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in z.namelist())


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(". ")[0][:160]


def _corrupt(path: Path, err: BaseException) -> InputError:
    return InputError(
        f"{path}: cannot read it as a PyTorch checkpoint ({_first_sentence(err)}); the file is truncated, corrupt "
        "or not a checkpoint: download or save it again."
    )


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True onto the CPU; failures become one-line InputErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise _corrupt(path, err) from None
        raise InputError(
            f"{path}: the file holds pickled Python objects ({found.group(1)}) that need code to load, which roiroa "
            f"refuses (weights_only=True), or it is corrupt; {_RESAVE}."
        ) from None
    except (RuntimeError, EOFError, IndexError, KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise _corrupt(path, err) from None


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain state_dict, or of one held under 'state_dict'/'model_state_dict'/'model'."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _find_state_dict(obj[key], path)
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        raise InputError(
            f"{path}: found a dict with keys {keys} but no state_dict of tensors (looked under "
            f"{', '.join(STATE_DICT_KEYS)}); save the model's state_dict()."
        )
    raise InputError(f"{path}: holds a {type(obj).__name__}, not a state_dict; {_RESAVE}.")


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a ``module.`` or ``_orig_mod.`` prefix that every key carries (DataParallel, torch.compile)."""
    out = dict(state)
    for prefix in PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict stored in ``path`` (on the CPU, prefixes stripped). Never unpickles code.

    Raises:
        InputError: missing, truncated or corrupt file; a file that needs code to unpickle; a
            TorchScript archive (load it with :func:`load_torchscript`); no state_dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} not found: give a .pt, .pth, .th or .safetensors file.")
    if is_torchscript(path):
        raise InputError(
            f"{path}: a TorchScript archive runs its own code when loaded; load it only if you trust it "
            "(model.trust_code = true, --trust-code), or save its state_dict instead."
        )
    if _is_safetensors(path):
        try:
            return strip_prefixes(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read it as safetensors ({err}); truncated or corrupt.") from None
    return strip_prefixes(_find_state_dict(_torch_load(path), path))


def check_weights_file(path: str | Path, trust_code: bool = False) -> None:
    """Raise the InputError :func:`load_model` would raise for the file itself (before any other work)."""
    if not (trust_code and Path(path).is_file() and is_torchscript(Path(path))):
        read_state_dict(path)


def _names(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weights") -> nn.Module:
    """Load ``state`` into ``model`` strictly; a mismatch is one InputError naming keys and shapes."""
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}  # absent from old BatchNorm checkpoints
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_names(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({_names(shapes, 2)})")
    if problems:
        raise InputError(
            f"{source} do not fit the architecture {type(model).__name__}: {'; '.join(problems)}; "
            "choose the architecture the weights were saved from (model.arch, --model) and its number of classes."
        )
    model.load_state_dict(dict(state), strict=True)
    return model


def build_architecture(arch: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A new model: a registered name (``resnet20``...) or user code ``package.module:callable``.

    A registered architecture gets ``in_channels``, ``num_classes`` and ``image_size``; user code
    is called with ``num_classes`` where its signature takes it, else with no arguments.
    """
    if ":" not in arch:
        return create_model(arch, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    module_name, _, attr = arch.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise InputError(f"model {arch!r}: cannot import {module_name!r} ({err}); check PYTHONPATH.") from None
    except AttributeError:
        raise InputError(f"model {arch!r}: {module_name} has no {attr!r}; give package.module:callable.") from None
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    model = factory(num_classes=num_classes) if "num_classes" in params else factory()
    if not isinstance(model, nn.Module):
        raise InputError(f"model {arch!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def load_torchscript(path: str | Path) -> nn.Module:
    """A TorchScript archive as a model (on the CPU). It runs the archive's code: trusted files only."""
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as err:
        reason = _first_sentence(err)
        raise InputError(f"{path}: cannot load it as TorchScript ({reason}); truncated or corrupt.") from None


def load_model(
    arch: str,
    weights: str | Path,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    device: torch.device | str = "cpu",
    trust_code: bool = False,
) -> nn.Module:
    """A pretrained model ready for [0, 1] pixels: architecture + weights (+ normalization), eval mode.

    Args:
        arch: registered name or ``package.module:callable`` (ignored for a TorchScript file).
        weights: the weights file (see :func:`read_state_dict`).
        image_shape: (C, H, W) of the data.
        num_classes: K of the data.
        normalization: (mean, std) the network was trained with; None = it takes [0, 1] pixels.
        device: where the model goes.
        trust_code: allow a TorchScript archive (it runs its own code when loaded).
    """
    path = Path(weights)
    if trust_code and path.is_file() and is_torchscript(path):
        model = load_torchscript(path)
    else:
        c, h, _ = image_shape
        model = load_weights(build_architecture(arch, c, num_classes, h), read_state_dict(path), str(path))
    if normalization is not None:
        model = Normalized(model, *normalization)
    return model.to(device).eval()


def check_model_fits(model: nn.Module, image: torch.Tensor, num_classes: int) -> None:
    """One forward pass on ``image`` (C, H, W) in [0, 1]: the model must accept it and give K logits."""
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = model(image[None].to(device))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise InputError(
            f"the model does not accept images of shape {tuple(image.shape)} ({first}); "
            "give data of the size and channels the model was built for."
        ) from None
    if not isinstance(out, torch.Tensor) or out.shape != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"the model outputs {shape} for one image, but the data has {num_classes} classes: "
            f"it must return logits of shape (N, {num_classes})."
        )
