"""The CIFAR ResNets and LeNet5: shapes, parameter counts, and the shared checkpoints load strictly."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA
from roiroa.models import create_model, list_models

RESNET20 = SHARED_DATA / "models" / "resnet20-12fca82f.th"
LENET5 = SHARED_DATA / "models" / "mnist_lenet5_clntrained.pt"


@pytest.mark.parametrize(
    ("name", "params"), [("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586), ("resnet56", 853_018)]
)
def test_cifar_resnet_parameter_counts_and_logits(name: str, params: int) -> None:
    # The published counts (He et al. 2016, table 6: 0.27M, 0.46M, 0.66M, 0.85M), trainable parameters only.
    model = create_model(name).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_option_a_shortcut_pads_channels_with_zeros() -> None:
    block = create_model("resnet20").layer2[0]
    x = torch.rand(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])  # a strided copy: exact, any tolerance would do
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_registry_lists_new_architectures() -> None:
    assert {"lenet5", "resnet20", "resnet32", "resnet44", "resnet56"} <= set(list_models())
    assert create_model("lenet5")(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.skipif(not RESNET20.exists(), reason=f"shared ResNet-20 checkpoint not found at {RESNET20}")
def test_resnet20_shared_state_dict_loads_strict() -> None:
    state = torch.load(RESNET20, map_location="cpu", weights_only=True)["state_dict"]
    create_model("resnet20").load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)


@pytest.mark.skipif(not LENET5.exists(), reason=f"shared LeNet5 checkpoint not found at {LENET5}")
def test_lenet5_shared_state_dict_loads_strict() -> None:
    state = torch.load(LENET5, map_location="cpu", weights_only=True)
    create_model("lenet5").load_state_dict(state, strict=True)
