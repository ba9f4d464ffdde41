"""Config and CLI fields for users' models and data: weights, normalization, user code, a second fitting source."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from roiroa.cli import build_parser, config_from_args
from roiroa.errors import InputError
from roiroa.evaluate.config import Config, DataConfig, ModelConfig
from roiroa.evaluate.prepare import load_configured_model, load_splits
from roiroa.evaluate.validate import config_from_dict
from roiroa.models import create_model


def test_defaults_keep_the_trained_reference_model():
    m = Config().model
    assert (m.arch, m.weights, m.normalization, m.mean, m.std, m.trust_code) == (
        "mnist-cnn",
        None,
        "none",
        None,
        None,
        False,
    )
    assert Config().data.fit_source is None


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ({"arch": "my_pkg.nets:net"}, "user code: give its weights"),
        ({"normalization": "cifar10"}, "give model.weights"),
        ({"weights": "w.pt", "normalization": "cifar"}, "model.normalization"),
        ({"weights": "w.pt", "mean": [0.5]}, "both mean and std"),
        ({"weights": "w.pt", "normalization": "imagenet", "mean": [0.5], "std": [0.2]}, "not both"),
        ({"arch": "resnet21", "weights": "w.pt"}, "model.arch"),
    ],
)
def test_bad_model_config(model, match):
    with pytest.raises(InputError, match=match):
        config_from_dict({"model": model})


def test_model_config_round_trips():
    data = {"model": {"arch": "my_pkg.nets:net", "weights": "w.pt", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}}
    config = config_from_dict(data)
    assert config.model.mean == (0.5, 0.4, 0.3)
    assert config_from_dict(config.to_dict()) == config


def test_cli_flags_set_the_model(tmp_path):
    torch.save(create_model("lenet5").state_dict(), tmp_path / "w.pt")
    args = build_parser().parse_args(
        ["run", "--model", "lenet5", "--weights", str(tmp_path / "w.pt"), "--mean", "0.1", "--std", "0.3"]
    )
    m = config_from_args(args).model
    assert (m.arch, m.weights, m.mean, m.std) == ("lenet5", str(tmp_path / "w.pt"), (0.1,), (0.3,))
    args = build_parser().parse_args(["run", "--model", "lenet5", "--weights", str(tmp_path / "missing.pt")])
    with pytest.raises(InputError, match="not found"):
        config_from_args(args)


def _npz(path, n, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), labels=np.arange(n) % 10)
    return str(path)


def test_fit_source_makes_every_source_image_a_test_image(tmp_path):
    config = Config(
        data=DataConfig(source=_npz(tmp_path / "a.npz", 30, 0), fit_source=_npz(tmp_path / "b.npz", 40, 1), n_fit=20)
    )
    splits = load_splits(config)
    assert len(splits.test) == 30 and splits.test.index.tolist() == list(range(30))
    assert len(splits.train) == 40 and len(splits.fit) == 20


def test_prepare_model_loads_weights_instead_of_training(tmp_path, mnist_splits):
    torch.manual_seed(3)
    net = create_model("lenet5").eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pt")
    model_config = ModelConfig(arch="lenet5", weights=str(tmp_path / "w.pt"), mean=(0.5,), std=(0.25,))
    config = dataclasses.replace(Config(), model=model_config)
    model, info = load_configured_model(config, mnist_splits, torch.device("cpu"))
    assert info.source == "weights" and info.normalization == {"preset": "none", "mean": [0.5], "std": [0.25]}
    x = mnist_splits.test.images[:4]
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25))
    bad = dataclasses.replace(config, model=dataclasses.replace(model_config, arch="resnet20"))
    with pytest.raises(InputError, match="do not fit the architecture"):
        load_configured_model(bad, mnist_splits, torch.device("cpu"))


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ([float("nan")], [0.2], r"mean holds nan"),
        ([0.5, 0.5], [0.2, float("inf")], r"std holds inf"),
        ([0.5], [1e-50], r"std 1e-50 is below 1e-06"),
    ],
)
def test_nonfinite_or_tiny_normalization_in_config_is_refused(mean, std, match):
    with pytest.raises(InputError, match=match) as err:
        config_from_dict({"model": {"weights": "w.pt", "mean": mean, "std": std}})
    assert "\n" not in str(err.value) and "--mean/--std" in str(err.value)


def test_cli_refuses_a_tiny_std(tmp_path):
    torch.save(create_model("lenet5").state_dict(), tmp_path / "w.pt")
    args = build_parser().parse_args(
        ["run", "--model", "lenet5", "--weights", str(tmp_path / "w.pt"), "--mean", "0.1", "--std", "1e-50"]
    )
    with pytest.raises(InputError, match=r"normalization: std 1e-50 is below 1e-06"):
        config_from_args(args)
