"""Loading users' models: checkpoint formats, refusal of code-carrying files, mismatches, normalization."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from roiroa.errors import InputError
from roiroa.models import create_model
from roiroa.models.loading import (
    build_architecture,
    check_model_fits,
    load_model,
    load_weights,
    read_state_dict,
)
from roiroa.models.normalize import NORMALIZATIONS, Normalized, normalization_values


class Payload:
    """Unpickling this calls open(marker, 'w'): the marker file exists afterwards iff code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("lenet5").state_dict()


def _assert_equal_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "best_prec1": 91.7, "epoch": 3},
        lambda s: {"model_state_dict": s, "optimizer": {"lr": 0.1}},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},
    ],
    ids=["plain", "state_dict", "model_state_dict", "module-prefix", "compile-prefix"],
)
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_read_state_dict_formats(tmp_path, wrap, zip_format):
    state = _reference_state()
    path = tmp_path / "w.pth"
    torch.save(wrap(state), path, _use_new_zipfile_serialization=zip_format)
    _assert_equal_state(read_state_dict(path), state)


def test_read_state_dict_safetensors(tmp_path):
    state = _reference_state()
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    _assert_equal_state(read_state_dict(tmp_path / "w.safetensors"), state)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_checkpoint_is_refused_and_runs_no_code(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = {"state_dict": _reference_state(), "extra": Payload(marker)}
    torch.save(evil, path, _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(InputError, match=r"need code to load.*state_dict\(\)") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_whole_pickled_model_is_refused(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "model.pt")
    with pytest.raises(InputError, match=r"torch.nn.modules.container.Sequential.*need code"):
        read_state_dict(tmp_path / "model.pt")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_and_junk_files_are_one_line_errors(tmp_path, zip_format):
    path = tmp_path / "w.pt"
    torch.save(_reference_state(), path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    for name, content in (("cut.pt", data[: len(data) // 2]), ("head.pt", data[:200]), ("junk.pt", b"not a model")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=r"corrupt") as err:
            read_state_dict(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")


def test_corrupt_safetensors(tmp_path):
    save_file({"a": torch.zeros(100)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:-50])
    with pytest.raises(InputError, match="safetensors"):
        read_state_dict(tmp_path / "cut.safetensors")


def test_torchscript_needs_trust_code(tmp_path):
    net = create_model("lenet5").eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    with pytest.raises(InputError, match="TorchScript.*trust"):
        read_state_dict(path)
    with pytest.raises(InputError, match="TorchScript"):
        load_model("lenet5", path, image_shape=(1, 28, 28), num_classes=10)
    loaded = load_model("lenet5", path, image_shape=(1, 28, 28), num_classes=10, trust_code=True)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), net(x))


def test_mismatched_architecture_names_keys_and_shapes(tmp_path):
    state = create_model("resnet20").state_dict()
    with pytest.raises(InputError, match=r"missing keys \(layer1\.3\.") as err:
        load_weights(create_model("resnet32"), state, "w.th")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"unexpected keys"):
        load_weights(create_model("resnet20"), state | {"extra.weight": torch.zeros(1)}, "w.th")
    with pytest.raises(InputError, match=r"shape mismatches \(linear\.weight \(10, 64\) in the file, \(100, 64\)"):
        load_weights(create_model("resnet20", num_classes=100), state, "w.th")


def test_old_batchnorm_checkpoint_without_num_batches_tracked_loads():
    state = {k: v for k, v in create_model("resnet20").state_dict().items() if "num_batches_tracked" not in k}
    model = load_weights(create_model("resnet20"), state)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])


def test_normalized_matches_manual_normalization_and_keeps_pixel_gradients():
    mean, std = NORMALIZATIONS["imagenet"]
    net = create_model("resnet20").eval()
    model = Normalized(net, mean, std).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    manual = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), manual)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_normalization_values_presets_and_errors():
    assert normalization_values("none") is None
    assert normalization_values("cifar10") == NORMALIZATIONS["cifar10"]
    assert normalization_values(None, (0.5,), (0.25,)) == ((0.5,), (0.25,))
    with pytest.raises(InputError, match="unknown normalization 'cifar'"):
        normalization_values("cifar")
    with pytest.raises(InputError, match="both mean and std"):
        normalization_values(None, (0.5,), None)
    with pytest.raises(InputError, match="positive"):
        Normalized(nn.Identity(), (0.5,), (0.0,))


def test_user_code_architecture(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "import torch\n"
        "def tiny(num_classes=10):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, num_classes))\n"
        "def fixed():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n"
        "def not_a_model():\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_architecture("my_nets:tiny", 1, 7, 28)[1].out_features == 7
    assert build_architecture("my_nets:fixed", 1, 7, 28)[1].out_features == 10
    with pytest.raises(InputError, match="cannot import 'no_such_module'"):
        build_architecture("no_such_module:net", 1, 10, 28)
    with pytest.raises(InputError, match="has no 'missing'"):
        build_architecture("my_nets:missing", 1, 10, 28)
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        build_architecture("my_nets:not_a_model", 1, 10, 28)
    # weights saved from it load through load_model
    torch.save(build_architecture("my_nets:tiny", 1, 10, 28).state_dict(), tmp_path / "tiny.pt")
    model = load_model("my_nets:tiny", tmp_path / "tiny.pt", image_shape=(1, 28, 28), num_classes=10)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_check_model_fits_catches_input_shape_and_class_count():
    lenet = create_model("lenet5").eval()
    check_model_fits(lenet, torch.rand(1, 28, 28), 10)
    with pytest.raises(InputError, match=r"does not accept images of shape \(3, 32, 32\)"):
        check_model_fits(lenet, torch.rand(3, 32, 32), 10)
    with pytest.raises(InputError, match=r"outputs \(1, 10\).*5 classes"):
        check_model_fits(lenet, torch.rand(1, 28, 28), 5)


def test_cli_refuses_malicious_weights_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Payload(marker)}, evil)
    cmd = [sys.executable, "-m", "roiroa", "run", "--model", "lenet5", "--weights", str(evil)]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("roiroa: error:") and "need code" in lines[0], proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
