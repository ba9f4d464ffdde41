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
import itertools
import math
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
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


def _torch_load(path: Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True onto the CPU; failures become one-line InputErrors.

    ``mmap=True`` maps a zip-format file's tensors instead of reading them (legacy files are read).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
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
            state = strip_prefixes(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read it as safetensors ({err}); truncated or corrupt.") from None
    else:
        state = strip_prefixes(_find_state_dict(_torch_load(path), path))
    check_finite_weights(state.items(), str(path))
    return state


def _nonfinite_names(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point (or complex) tensors that hold a NaN or an infinity."""
    return [
        name for name, t in tensors if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
    ]


def check_finite_weights(tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    """Raise one InputError line naming ``source`` and a tensor if any (name, tensor) holds NaN or inf.

    One pass over every value (about as fast as copying the weights once); integer tensors are skipped.
    """
    bad = _nonfinite_names(tensors)
    if bad:
        raise InputError(
            f"{source}: {len(bad)} tensors hold NaN or inf values ({_names(bad)}): the checkpoint is corrupt or was "
            "saved from a diverged training run, and every number computed with it would be wrong; use another "
            "checkpoint (for example an earlier epoch's)."
        )


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


def _error_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters) of an exception from user code."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def build_architecture(arch: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A new model: a registered name (``resnet20``...) or user code ``package.module:callable``.

    A registered architecture gets ``in_channels``, ``num_classes`` and ``image_size``; user code
    is called with ``num_classes`` where its signature takes it, else with no arguments. Any exception
    raised while importing or calling user code becomes one InputError line naming the callable.
    """
    if ":" not in arch:
        return create_model(arch, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"model {arch!r}: cannot import {module_name!r} ({err}); check PYTHONPATH.") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while it was imported
        raise InputError(
            f"model {arch!r}: importing {module_name!r} raised {_error_line(err)}; fix that module."
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise InputError(f"model {arch!r}: {module_name} has no {attr!r}; give package.module:callable.")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    call = f"{attr}(num_classes={num_classes})" if "num_classes" in params else f"{attr}()"
    try:
        model = factory(num_classes=num_classes) if "num_classes" in params else factory()
    except Exception as err:  # noqa: BLE001 - any failure of user code is the user's to fix
        raise InputError(f"model {arch!r}: calling {call} raised {_error_line(err)}; fix that callable.") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"model {arch!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def load_torchscript(path: str | Path) -> nn.Module:
    """A TorchScript archive as a model (on the CPU). It runs the archive's code: trusted files only."""
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as err:
        reason = _first_sentence(err)
        raise InputError(f"{path}: cannot load it as TorchScript ({reason}); truncated or corrupt.") from None
    check_finite_weights(itertools.chain(model.named_parameters(), model.named_buffers()), str(path))
    return model


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
    """One forward pass on ``image`` (C, H, W) in [0, 1]: the model must accept it and give K finite logits.

    Raises:
        InputError: the model refuses the image, returns another shape than (1, K), or returns NaN or
            inf (the message names the likely cause: the checkpoint, the normalization or the model).
    """
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
    if not bool(torch.isfinite(out).all()):
        n_nan, n_inf = int(out.isnan().sum()), int(out.isinf().sum())
        raise InputError(
            f"the model outputs {n_nan} NaN and {n_inf} inf logits of {num_classes} for a test image; likely cause: "
            f"{_nonfinite_cause(model, image[None].to(device))}."
        )


# Pixels in [0, 1] normalized with the usual presets lie within +-3; beyond this the normalization
# (a tiny std, or a mean and std given in 0-255 units) is the likely source of an overflow.
LARGE_NORMALIZED_PIXEL = 100.0


def _nonfinite_cause(model: nn.Module, x: torch.Tensor) -> str:
    """The likely source of NaN/inf logits of ``model`` on x (1, C, H, W), and its fix, as a clause."""
    if not bool(torch.isfinite(x).all()):
        return "the image itself holds NaN or inf values: check the data"
    norms = [m for m in model.modules() if isinstance(m, Normalized)]
    for norm in norms:
        largest = float(((x - norm.mean) / norm.std).abs().max())
        if not math.isfinite(largest) or largest > LARGE_NORMALIZED_PIXEL:
            return (
                f"the normalization: mean {norm.mean.flatten().tolist()} and std {norm.std.flatten().tolist()} "
                f"turn pixels into values up to {largest:.3g}; give the mean and std of [0, 1] pixels "
                "(--normalization imagenet, or --mean/--std)"
            )
    own = {id(t) for norm in norms for t in (norm.mean, norm.std)}
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    bad = _nonfinite_names((name, t) for name, t in tensors if id(t) not in own)
    if bad:
        return f"the checkpoint: {_names(bad)} hold NaN or inf values; use another checkpoint"
    layer = _first_nonfinite_layer(model, x)
    where = f"layer {layer!r} gives the first NaN/inf" if layer else "its forward gives them"
    return f"the model: {where} on a valid image and finite weights; check its code and its weights' scale"


def _first_nonfinite_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """The name of the first leaf module whose output holds NaN or inf in ``model(x)`` (None if not found)."""
    found: list[str] = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, out: Any) -> None:
            if not found and isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
                found.append(name)

        return record

    try:
        leaves = [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
        handles = [m.register_forward_hook(hook(name)) for name, m in leaves]
    except RuntimeError:  # TorchScript modules take no hooks
        return None
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


# Where training scripts store the accuracy they reached (percent 0-100 or fraction 0-1): akamaster's
# CIFAR ResNets and the PyTorch ImageNet example (best_prec1, best_acc1), and common variants.
ACCURACY_KEYS = ("best_prec1", "best_acc1", "best_acc", "best_top1", "acc1", "top1")


def _scalar(value: Any) -> bool | int | float | str | None:
    """A Python number or short string for a stored scalar (a 1-element tensor included), else None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()  # type: ignore[no-any-return]
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 200):
        return value
    return None


def _parsed(text: str) -> int | float | str:
    """A safetensors metadata string as an int or float where it is one, else itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The scalar entries stored beside the weights: ``{'best_prec1': 91.73, 'epoch': 199, 'arch': ...}``.

    A dict checkpoint gives its top-level numbers, bools, short strings and 1-element tensors (read with
    ``weights_only=True``, zip files memory-mapped); a safetensors file its ``__metadata__`` (numbers
    parsed); a plain state_dict or a TorchScript archive (not loaded: it runs code) gives ``{}``.

    Raises:
        InputError: as :func:`read_state_dict` for a missing, corrupt or code-carrying file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} not found: give a .pt, .pth, .th or .safetensors file.")
    if is_torchscript(path):
        return {}
    if _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
                stored = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read it as safetensors ({err}); truncated or corrupt.") from None
        return {str(k): _parsed(v) for k, v in stored.items()}
    obj = _torch_load(path, mmap=True)
    if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {}
    found = {str(k): _scalar(v) for k, v in obj.items()}
    return {k: v for k, v in found.items() if v is not None}


def stored_accuracy(metadata: Mapping[str, Any]) -> tuple[str, float] | None:
    """(key, accuracy as a fraction in (0, 1]) of the first ``ACCURACY_KEYS`` entry of ``metadata``.

    Values above 1 are read as percents (91.7 -> 0.917); values outside (0, 100] or not numbers are ignored.
    """
    for key in ACCURACY_KEYS:
        value = metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
            continue
        return key, float(value) / 100 if value > 1 else float(value)
    return None


# Warn where the measured clean accuracy is this many points (as a fraction) under the stored one:
# a different test sample moves it by a few points, a missing normalization by tens.
ACCURACY_DROP = 0.15


def accuracy_warning(measured: float, num_classes: int, metadata: Mapping[str, Any]) -> str | None:
    """One line of warning when the measured clean accuracy suggests a wrongly prepared model, else None.

    Args:
        measured: clean accuracy in [0, 1] on the run's test images.
        num_classes: K >= 1, chance accuracy is 1/K.
        metadata: :func:`checkpoint_metadata` of the weights file (``{}`` when there is none).

    Warns when the accuracy is near chance (below 1.5/K and below 0.5) or more than 15 points under the
    accuracy stored in the checkpoint (``best_prec1``, ``best_acc1``...).
    """
    chance = 1 / max(num_classes, 1)
    stored = stored_accuracy(metadata)
    if measured < min(1.5 * chance, 0.5):
        problem = f"clean accuracy {measured:.1%} is near chance ({chance:.1%} for {num_classes} classes)"
    elif stored is not None and measured < stored[1] - ACCURACY_DROP:
        key, value = stored
        problem = (
            f"clean accuracy {measured:.1%} is {100 * (value - measured):.0f} points under the {value:.1%} "
            f"stored in the checkpoint ({key})"
        )
    else:
        return None
    return (
        f"{problem}: the model likely needs the input normalization it was trained with, or a different one "
        "(--normalization imagenet or cifar10, or --mean/--std); else check the architecture and the labels' order."
    )
