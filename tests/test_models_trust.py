"""No silently wrong number from the model: non-finite weights, normalization values and logits are
refused in one line; user code that raises is one line; a checkpoint's stored accuracy warns when
the measured one falls far under it; occlusion never changes the model's memory layout."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import SHARED_DATA
from roiroa.errors import InputError
from roiroa.geometry import grid_regions, regions_to_pixels
from roiroa.maps import Occlusion
from roiroa.maps.incremental import IncrementalModel, cached_incremental_model, forget_engine
from roiroa.maps.occlusion import occlusion_drops
from roiroa.models import accuracy, create_model
from roiroa.models.loading import (
    accuracy_warning,
    build_architecture,
    check_model_fits,
    check_weights_file,
    checkpoint_metadata,
    load_model,
    read_state_dict,
    stored_accuracy,
)
from roiroa.models.normalize import Normalized, normalization_values
from roiroa.models.predict import check_finite_logits

RESNET20 = SHARED_DATA / "models" / "resnet20-12fca82f.th"
CIFAR_NPZ = SHARED_DATA / "cifar10" / "cifar10_test_1000.npz"
MOBILENET = SHARED_DATA / "imagenet" / "models" / "mobilenetV1X0.25_pretrain.tar"


def _one_line(err: pytest.ExceptionInfo[InputError]) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text
    return text


# 1. Non-finite numbers: checkpoints, normalization values, logits.


def _lenet_state(bad: float | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = create_model("lenet5").state_dict()
    if bad is not None:
        state["conv2.weight"] = state["conv2.weight"].clone()
        state["conv2.weight"][3, 0, 1, 1] = bad
    return state


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("form", ["zip", "legacy", "safetensors"])
def test_checkpoint_with_nonfinite_weights_is_refused_naming_file_and_tensor(tmp_path, bad, form):
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pt")
    state = _lenet_state(bad)
    if form == "safetensors":
        save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "best_prec1": 90.0}, path, _use_new_zipfile_serialization=form == "zip")
    for load in (
        lambda: read_state_dict(path),
        lambda: check_weights_file(path),
        lambda: load_model("lenet5", path, image_shape=(1, 28, 28), num_classes=10),
    ):
        with pytest.raises(InputError, match=r"NaN or inf") as err:
            load()
        text = _one_line(err)
        assert str(path) in text and "conv2.weight" in text and "another checkpoint" in text


def test_finite_checkpoint_with_integer_buffers_loads(tmp_path):
    state = create_model("resnet20").state_dict()  # int64 num_batches_tracked beside float weights
    torch.save(state, tmp_path / "w.pt")
    assert read_state_dict(tmp_path / "w.pt").keys() == state.keys()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_with_nonfinite_weights_is_refused(tmp_path):
    net = create_model("lenet5").eval()
    with torch.no_grad():
        net.linear2.bias[0] = float("nan")
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    with pytest.raises(InputError, match=r"net\.pt: 1 tensors hold NaN or inf values \(linear2\.bias\)") as err:
        load_model("lenet5", tmp_path / "net.pt", image_shape=(1, 28, 28), num_classes=10, trust_code=True)
    _one_line(err)


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ((float("nan"),), (0.2,), r"mean holds nan"),
        ((float("inf"),), (0.2,), r"mean holds inf"),
        ((0.5, 0.5), (0.2, float("nan")), r"std holds nan"),
        ((0.5,), (float("inf"),), r"std holds inf"),
        ((0.5,), (1e-50,), r"std 1e-50 is below 1e-06"),
        ((0.5,), (5e-7,), r"std 5e-07 is below 1e-06"),
        ((0.5,), (-0.2,), r"positive"),
        ((1e33,), (1e-6,), r"overflow float32"),
    ],
)
def test_nonfinite_or_tiny_normalization_is_refused(mean, std, match):
    for make in (lambda: Normalized(nn.Identity(), mean, std), lambda: normalization_values(None, mean, std)):
        with pytest.raises(InputError, match=match) as err:
            make()
        assert "--mean/--std" in _one_line(err)


def test_smallest_accepted_std_gives_finite_inputs():
    model = Normalized(nn.Identity(), (0.5,), (1e-6,))
    x = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    assert torch.isfinite(model(x)).all()  # +-0.5 / 1e-6 = +-5e5, far from float32's 3.4e38
    assert normalization_values(None, (0.5,), (1e-6,)) == ((0.5,), (1e-6,))


class _LogOfNegative(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(-x.abs() - 1)  # NaN everywhere


def test_check_model_fits_refuses_nan_logits_and_blames_the_checkpoint():
    model = create_model("lenet5").eval()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN .*likely cause: the checkpoint: conv1\.weight hold NaN") as err:
        check_model_fits(model, torch.rand(1, 28, 28), 10)
    _one_line(err)


@pytest.mark.parametrize(("buffer", "value"), [("std", 1e-40), ("mean", float("nan"))])
def test_check_model_fits_blames_the_normalization(buffer, value):
    model = Normalized(create_model("lenet5"), (0.5,), (0.25,)).eval()
    getattr(model, buffer).fill_(value)  # past the constructor's checks: 0.5 / 1e-40 overflows float32
    with pytest.raises(InputError, match=r"likely cause: the normalization: mean .* --mean/--std") as err:
        check_model_fits(model, torch.rand(1, 28, 28), 10)
    _one_line(err)


def test_check_model_fits_blames_the_model_and_names_the_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), _LogOfNegative()).eval()
    with pytest.raises(InputError, match=r"10 NaN and 0 inf .*the model: layer '2' gives the first") as err:
        check_model_fits(model, torch.rand(1, 28, 28), 10)
    _one_line(err)
    overflow = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    with torch.no_grad():
        overflow[1].weight.fill_(1e36)  # finite weights whose sum over 784 positive pixels overflows float32
    with pytest.raises(InputError, match=r"inf logits .*the model: layer '1' gives the first"):
        check_model_fits(overflow, torch.rand(1, 28, 28) + 0.5, 10)


def test_check_finite_logits_names_where():
    check_finite_logits(torch.randn(5, 3), "clean images")
    check_finite_logits(torch.empty(0, 3), "no images")
    logits = torch.randn(5, 3)
    logits[1, 2], logits[3, 0], logits[3, 1] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(InputError, match=r"^pgd eps=0.1, images 0-4: the model output NaN or inf logits for 2 of 5"):
        check_finite_logits(logits, "pgd eps=0.1, images 0-4")
    with pytest.raises(InputError, match=r"for 1 of 1 images") as err:
        check_finite_logits(torch.tensor([[float("nan"), 0.0]], dtype=torch.float16), "x")
    assert "--normalization" in _one_line(err)


# 2. User code that raises.


def test_user_factory_that_raises_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "trust_nets.py").write_text(
        "def broken(num_classes=10):\n"
        "    raise RuntimeError('CUDA error: out of memory\\nsecond line')\n"
        "def needs_arg(width):\n"
        "    return width\n"
    )
    (tmp_path / "trust_bad_import.py").write_text("raise KeyError('weights_url')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    match = r"'trust_nets:broken': calling broken\(num_classes=7\) raised RuntimeError: CUDA error: out of memory;"
    with pytest.raises(InputError, match=match) as err:
        build_architecture("trust_nets:broken", 1, 7, 28)
    assert "second line" not in _one_line(err)
    with pytest.raises(InputError, match=r"calling needs_arg\(\) raised TypeError: .*width") as err:
        load_model("trust_nets:needs_arg", tmp_path / "unused.pt", image_shape=(1, 28, 28), num_classes=10)
    _one_line(err)
    with pytest.raises(InputError, match=r"importing 'trust_bad_import' raised KeyError: 'weights_url'") as err:
        build_architecture("trust_bad_import:net", 1, 10, 28)
    _one_line(err)


# 3. Stored metadata and the accuracy warning.


def test_checkpoint_metadata_of_each_format(tmp_path):
    state = _lenet_state()
    meta = {"best_prec1": 91.7, "epoch": 3, "arch": "lenet5", "best_acc1": torch.tensor(0.5), "optimizer": {"lr": 0.1}}
    for zip_format in (True, False):
        torch.save({"state_dict": state, **meta}, tmp_path / "w.pt", _use_new_zipfile_serialization=zip_format)
        found = checkpoint_metadata(tmp_path / "w.pt")
        assert found == {"best_prec1": 91.7, "epoch": 3, "arch": "lenet5", "best_acc1": 0.5}
    torch.save(state, tmp_path / "plain.pt")
    assert checkpoint_metadata(tmp_path / "plain.pt") == {}
    save_file(state, str(tmp_path / "w.safetensors"), metadata={"best_acc1": "71.5", "epoch": "9", "arch": "x"})
    assert checkpoint_metadata(tmp_path / "w.safetensors") == {"best_acc1": 71.5, "epoch": 9, "arch": "x"}
    save_file(state, str(tmp_path / "bare.safetensors"))
    assert checkpoint_metadata(tmp_path / "bare.safetensors") == {}
    with pytest.raises(InputError, match="not found"):
        checkpoint_metadata(tmp_path / "missing.pt")


def test_stored_accuracy_reads_percent_or_fraction():
    assert stored_accuracy({"best_prec1": 91.7}) == ("best_prec1", pytest.approx(0.917))
    assert stored_accuracy({"best_acc1": 0.4658, "epoch": 90}) == ("best_acc1", 0.4658)
    assert stored_accuracy({"best_acc1": "high", "best_prec1": float("nan")}) is None
    assert stored_accuracy({"best_prec1": 250.0, "epoch": 3}) is None
    assert stored_accuracy({}) is None


@pytest.mark.parametrize(
    ("measured", "classes", "metadata", "warns"),
    [
        (0.10, 10, {}, "near chance (10.0% for 10 classes)"),
        (0.14, 10, {}, "near chance"),  # under 1.5 x 1/K = 15%
        (0.20, 10, {}, None),
        (0.45, 2, {}, "near chance (50.0% for 2 classes)"),  # 1.5/K = 75% is capped at 50%
        (0.60, 2, {}, None),
        (0.001, 1000, {}, "near chance"),
        (0.45, 10, {"best_prec1": 91.7}, "47 points under the 91.7% stored in the checkpoint (best_prec1)"),
        (0.45, 10, {"best_acc1": 0.917}, "47 points under"),
        (0.85, 10, {"best_prec1": 91.7}, None),  # 7 points under: another test sample, not a wrong model
        (0.70, 1000, {"best_acc1": 46.58}, None),  # above the stored accuracy
    ],
)
def test_accuracy_warning(measured, classes, metadata, warns):
    text = accuracy_warning(measured, classes, metadata)
    if warns is None:
        assert text is None
    else:
        assert text is not None and warns in text and "\n" not in text
        assert "--normalization imagenet" in text and "--mean/--std" in text


needs_resnet20 = pytest.mark.skipif(
    not (RESNET20.exists() and CIFAR_NPZ.exists()),
    reason=f"shared ResNet-20 and CIFAR-10 sample not found under {SHARED_DATA}; set ROIROA_SHARED",
)


@needs_resnet20
def test_resnet20_without_its_normalization_warns_and_with_it_does_not():
    from roiroa.data import load_dataset

    data = load_dataset(str(CIFAR_NPZ))
    metadata = checkpoint_metadata(RESNET20)
    assert metadata["best_prec1"] == pytest.approx(91.7, abs=0.1)  # a float32 tensor: 91.78, the 91.7% of the README
    for normalization, warns in ((None, True), ("imagenet", False)):
        norm = normalization_values(normalization)
        model = load_model("resnet20", RESNET20, image_shape=(3, 32, 32), num_classes=10, normalization=norm)
        measured = accuracy(model, data.images, data.labels, batch_size=500)
        text = accuracy_warning(measured, data.num_classes, metadata)
        assert (text is not None) == warns, (normalization, measured, text)
        if warns:
            assert "stored in the checkpoint (best_prec1)" in text and "--normalization imagenet" in text


@pytest.mark.skipif(not MOBILENET.exists(), reason=f"shared MobileNetV1 checkpoint not found under {SHARED_DATA}")
def test_checkpoint_metadata_of_an_imagenet_training_checkpoint():
    metadata = checkpoint_metadata(MOBILENET)  # {epoch, arch, best_acc1, optimizer, state_dict}: the scalars
    assert stored_accuracy(metadata) == ("best_acc1", pytest.approx(0.4658, abs=1e-4))
    assert "epoch" in metadata and "optimizer" not in metadata and "state_dict" not in metadata


# 4. Occlusion leaves the model's layout alone and falls back for models that need theirs.


class ViewNet(nn.Module):
    """Flattens a conv map with ``view``, which needs contiguous NCHW maps; and adds a 4-d buffer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 5)
        self.register_buffer("offset", torch.randn(1, 8, 8, 8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x))) + self.offset
        return self.fc(x.view(x.size(0), -1))


class InputViewNet(nn.Module):
    """Convs worth computing incrementally, plus a linear branch on ``x.view(len(x), -1)`` of the input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(16, 5)
        self.skip = nn.Linear(3 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3))) + self.skip(x.view(x.size(0), -1))


def _snapshot(model: nn.Module) -> list[tuple[str, torch.Tensor, int, tuple[int, ...], bool]]:
    named = [*model.named_parameters(), *model.named_buffers()]
    return [(name, t, t.data_ptr(), t.stride(), t.is_contiguous()) for name, t in named]


def _assert_unchanged(model: nn.Module, before: list[tuple[str, torch.Tensor, int, tuple[int, ...], bool]]) -> None:
    """The very same parameter and buffer objects, on the same storage with the same strides."""
    after = _snapshot(model)
    assert [a[0] for a in after] == [b[0] for b in before]
    for a, b in zip(after, before, strict=True):
        assert a[1] is b[1] and a[2:] == b[2:], a[0]


def _reference_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    drops = occlusion_drops(model, x, y, regions, 0.0, 256, fast_layout=False, incremental=False)
    return regions_to_pixels(drops, regions)


@pytest.mark.parametrize("net", [ViewNet, InputViewNet])
def test_occlusion_of_a_model_that_needs_its_layout_equals_the_plain_path(net, caplog):
    model = net().eval()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(5, 3, 8, 8, generator=gen), torch.randint(0, 5, (5,), generator=gen)
    before = _snapshot(model)
    forget_engine(model)
    with caplog.at_level(logging.INFO, logger="roiroa.maps.occlusion"):
        grid = Occlusion(window=2, stride=2)(model, x, y)  # windows: the incremental path, then whole images
        superpixels = Occlusion(regions="superpixels", n_segments=6)(model, x, y)  # whole images only
        Occlusion(window=2, stride=2)(model, x, y)
    # The fallback forwards the same images in the same batches as the plain path: equal bit for bit.
    torch.testing.assert_close(grid, _reference_maps(model, x, y, grid_regions(8, 8, 2, 2)), rtol=0, atol=0)
    regions = Occlusion(regions="superpixels", n_segments=6).region_masks(x)
    torch.testing.assert_close(superpixels, _reference_maps(model, x, y, regions), rtol=0, atol=0)
    _assert_unchanged(model, before)
    fallbacks = [r for r in caplog.records if "channels-last" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.INFO  # logged once, not per call


def _conv_net() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip


def test_incremental_engine_that_raises_falls_back_to_whole_images(monkeypatch, caplog):
    model = _conv_net()
    x, y = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 4])
    forget_engine(model)
    assert cached_incremental_model(model, (3, 8, 8), (2, 2)) is not None

    def broken(*args: object) -> None:
        raise RuntimeError("view size is not compatible with input tensor's size and stride")

    monkeypatch.setattr(IncrementalModel, "forward", broken)
    with caplog.at_level(logging.INFO, logger="roiroa.maps.occlusion"):
        maps = Occlusion(window=2, stride=2)(model, x, y)
    regions = grid_regions(8, 8, 2, 2)
    drops = occlusion_drops(model, x, y, regions, 0.0, 256, fast_layout=True, incremental=False)
    torch.testing.assert_close(maps, regions_to_pixels(drops, regions), rtol=0, atol=0)  # the same computation
    assert any("fails incrementally (RuntimeError: view size" in r.getMessage() for r in caplog.records)
    assert cached_incremental_model(model, (3, 8, 8), (2, 2)) is None  # not traced again for the next chunk


def test_occlusion_restores_parameters_and_buffers_of_any_layout(rgb_model, rgb_batch, caplog):
    x, y = rgb_batch
    conv = rgb_model.net[0]
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)  # the user's own choice
    model = Normalized(rgb_model, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)).eval()  # (1, 3, 1, 1) buffers, as loaded models
    before = _snapshot(model)
    with caplog.at_level(logging.INFO, logger="roiroa.maps.occlusion"):
        Occlusion(window=4, stride=4)(model, x, y)
        Occlusion(regions="superpixels", n_segments=4)(model, x, y)
    _assert_unchanged(model, before)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not caplog.records  # a model that runs channels-last keeps the fast layout, without a word


def test_a_model_roiroa_did_not_train_is_warned_that_the_bundled_digits_are_training_images():
    from roiroa.evaluate.outputs import seen_data_warning

    for source in ("weights", "in-memory"):
        text = seen_data_warning(source, "mnist")
        assert text is not None and "MNIST's training set" in text and "\n" not in text
        assert "--data t10k-images-idx3-ubyte.gz --labels t10k-labels-idx1-ubyte.gz" in text
    assert seen_data_warning("trained", "mnist") is None  # roiroa trains on bundled digits the test split leaves out
    assert seen_data_warning("weights", "t10k-images-idx3-ubyte.gz") is None
