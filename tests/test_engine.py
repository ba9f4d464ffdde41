"""The experiment engine through its public doors: the Python API on an in-memory model and tensors, user code
plugged in by name, the adapters of other libraries, one model for every command, and a warm cache that
recomputes nothing."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from torch import nn

import roiroa
from conftest import SHARED_DATA
from roiroa.cache import StageCache
from roiroa.cli import main
from roiroa.maps import Saliency, record_attack
from roiroa.results import schema


class TwoSquares(nn.Module):
    """A small CNN for 12x12 images whose class is where a bright square is (top left: 0, bottom right: 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 36, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def squares(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (N, 1, 12, 12) in [0, 1]: noise, and a bright 4x4 square top left (label 0) or bottom right (1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 12, 12, generator=gen) * 0.3
    y = torch.arange(n) % 2
    x[y == 0, :, 1:5, 1:5] = 0.9
    x[y == 1, :, 7:11, 7:11] = 0.9
    return x, y


def train_two_squares() -> TwoSquares:
    """TwoSquares trained (seeded, 60 Adam steps) on 256 images of ``squares``: the engine tests' f."""
    torch.manual_seed(0)
    model = TwoSquares()
    x, y = squares(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> TwoSquares:
    return train_two_squares()


SMALL = {
    "attacks": [{"name": "fgsm", "eps": 0.1}, {"name": "pgd-linf", "eps": 0.1, "steps": 3}],
    "maps": {"window": 4, "stride": 2},
    "statistics": {"bootstrap": 200},
    "evaluation": {
        "n_test": 16,
        "defences": ["global", "per_class", {"name": "blur", "sigma": 1.0}],
        "attacks": [{"name": "pgd-linf", "eps": 0.1, "steps": 2}],
        "run_defences": ["per_class"],
        "run_images": 8,
        "sweep_scopes": ["global"],
        "sweep_q_roa": [0.2],
        "sweep_dilation": [0],
        "sweep_fills": ["zero"],
        "n_sanity": 4,
        "sanity_eps": [0.1, 1.0],
    },
    "data": {"n_fit": 16},
}


def test_the_whole_pipeline_from_the_api_on_an_in_memory_model(trained, tmp_path):
    """A researcher's own nn.Module and tensors: results, the report and a defence table, with no file in between."""
    x, y = squares(80, seed=2)
    experiment = roiroa.Experiment(model=trained, data=(x, y, ["top left", "bottom right"]), config=SMALL, cache=False)
    run = experiment.run()
    r = run.results
    jsonschema.validate(json.loads(json.dumps(r)), schema())
    assert r["model"]["source"] == "in-memory" and r["model"]["name"] == "TwoSquares"
    assert r["model"]["test_accuracy"] == 1.0 and r["dataset"]["classes"] == ["top left", "bottom right"]
    # where the model looks: occlusion puts every image's peak importance on its own square
    importance, labels = run.maps.importance, run.prepared.splits.test.labels
    peak = importance.flatten(1).argmax(1)
    rows, cols = peak // 12, peak % 12
    inside = torch.where(labels == 0, (rows < 6) & (cols < 6), (rows >= 6) & (cols >= 6))
    assert inside.float().mean() > 0.9
    folder = run.write(tmp_path / "run")
    assert {"results.json", "report.html", "flags.csv"} <= {p.name for p in folder.iterdir()}
    assert "TwoSquares" in (folder / "report.html").read_text()
    table = experiment.defend().results["table"]
    names = {row["defence"] for row in table}
    assert {"none", "global", "random[global]", "per_class", "random[per_class]", "blur"} <= names
    assert "adv_training" not in names  # an in-memory model cannot be retrained: left out, and said so
    assert all(row["n_images"] == 16 and row["ci_low"] <= row["accuracy"] <= row["ci_high"] for row in table)


# ---------------------------------------------------------------------------------------------- user code

USER_CODE = '''
import torch
from dataclasses import dataclass


@dataclass
class CornerScope:
    """Blocks the top-left corner of every image."""
    size: int = 3

    def masks(self, model, x):
        m = torch.zeros(len(x), *x.shape[2:], dtype=torch.bool, device=x.device)
        m[:, : self.size, : self.size] = True
        return m


class GreyFill:
    def __call__(self, x, mask=None):
        return torch.full_like(x[:1, :, :1, :1], 0.5)


@dataclass
class Brightness:
    """Importance = the pixel value itself (a user's estimator)."""

    def __call__(self, model, x, y):
        return x.mean(1)


@dataclass
class Nudge:
    """A user's attack: one signed gradient step (FGSM written by hand)."""
    eps: float = 0.1
    norm: str = "linf"

    def __call__(self, model, x, y, mask=None):
        x = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, x)
        return (x + self.eps * g.sign()).clamp(0, 1).detach()
'''


def test_user_components_plug_in_by_name(trained, tmp_path, monkeypatch):
    (tmp_path / "my_parts.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    x, y = squares(60, seed=3)
    settings = dict(SMALL)
    settings["attacks"] = [{"name": "my_parts:Nudge", "label": "nudge", "eps": 0.5}]
    settings["maps"] = {"importance": "my_parts:Brightness"}
    settings["evaluation"] = SMALL["evaluation"] | {
        "defences": [{"name": "my_parts:CornerScope", "label": "corner", "fill": "my_parts:GreyFill"}],
        "run_defences": ["corner"],
    }
    run = roiroa.Experiment(model=trained, data=(x, y), config=settings, cache=False).run()
    r = run.results
    assert [a["label"] for a in r["attacks"]] == ["nudge"]
    assert r["attacks"][0]["reading"] == "gradient"  # its gradients were recorded from the outside
    assert r["attacks"][0]["robust_accuracy"] < r["model"]["test_accuracy"]
    assert torch.allclose(run.maps.importance, run.prepared.splits.test.images.mean(1))
    corner = {(row["defence"], row["setting"]): row for row in r["defence_short"]}
    assert corner[("corner", "clean")]["area"] == pytest.approx(9 / 144)
    assert corner[("random[corner]", "clean")]["area"] == pytest.approx(9 / 144)


# ---------------------------------------------------------------------------------------------- adapters


def test_captum_adapter_equals_roiroa_saliency(trained):
    pytest.importorskip("captum")
    x, y = squares(10, seed=4)
    captum = roiroa.create_estimator("captum", method="Saliency")(trained, x, y)
    torch.testing.assert_close(captum, Saliency()(trained, x, y), rtol=0, atol=0)


def test_torchattacks_adapter_against_roiroa_pgd(mnist_model, mnist_batch):
    """torchattacks' PGD through the adapter: its gradients are recorded like roiroa's (20 steps x 1 batch), and it
    leaves the same robust accuracy as roiroa's PGD with the same budget, steps and step size (random starts differ:
    within 3 images of 64)."""
    pytest.importorskip("torchattacks", reason="pip install torchattacks --no-deps (.ci/run does)")
    x, y = mnist_batch
    adapter = roiroa.create_attack("torchattacks", attack="PGD", params={"eps": 0.15, "alpha": 0.01875, "steps": 20})
    torch.manual_seed(0)
    trace = record_attack(adapter, mnist_model, x, y, batch_size=64)
    assert trace.gradient_calls == 20 and (trace.gradient > 0).float().mean() > 0.5
    assert float((trace.x_adv - x).abs().max()) <= 0.15 + 1e-6
    torch.manual_seed(0)
    ours = roiroa.create_attack("pgd-linf", eps=0.15, steps=20, step_size=0.01875)(mnist_model, x, y)
    with torch.no_grad():
        theirs_ok = (mnist_model(trace.x_adv).argmax(1) == y).sum()
        ours_ok = (mnist_model(ours).argmax(1) == y).sum()
    assert abs(int(theirs_ok) - int(ours_ok)) <= 3


def test_art_adapter_records_its_gradients(mnist_model, mnist_batch):
    pytest.importorskip("art")
    x, y = mnist_batch
    adapter = roiroa.create_attack("art", attack="FastGradientMethod", params={"eps": 0.15})
    trace = record_attack(adapter, mnist_model, x[:16], y[:16], batch_size=16)
    fgsm = roiroa.create_attack("fgsm", eps=0.15)(mnist_model, x[:16], y[:16])
    assert trace.gradient_calls >= 1
    assert (trace.x_adv - fgsm).abs().max() < 1e-5  # ART's FGSM is roiroa's FGSM
    with pytest.raises(roiroa.InputError, match="no evasion attack 'Nope'"):
        roiroa.create_attack("art", attack="Nope")(mnist_model, x[:2], y[:2])


# ---------------------------------------------------------------------------------------------- one model, cache


RESNET = SHARED_DATA / "models" / "resnet20-12fca82f.th"
CIFAR = SHARED_DATA / "cifar10" / "cifar10_test_1000.npz"


@pytest.mark.slow
@pytest.mark.skipif(not RESNET.exists(), reason="the shared ResNet-20 checkpoint is absent (../shared/data)")
def test_every_command_evaluates_the_given_checkpoint(tmp_path):
    """run, defend and patches with --weights evaluate that checkpoint: the same clean accuracy on the same images."""
    config = {
        "data": {"max_test": 30, "n_fit": 20},
        "attacks": [{"name": "fgsm", "eps": 0.01}],
        "maps": {"importance": "saliency"},
        "statistics": {"bootstrap": 100, "restarts": False},
        "evaluation": SMALL["evaluation"] | {"n_test": 30, "defences": ["blur"], "run_defences": [], "run_images": 0},
        "patches": {
            "n_test": 30,
            "n_fit": 20,
            "areas": [0.05],
            "attacks": [{"name": "patch-lavan", "steps": 1}],
            "defences": ["lgs"],
            "adaptive": [],
            "adaptive_areas": [0.05],
        },
    }
    (tmp_path / "c.json").write_text(json.dumps(config))
    flags = [
        "--config",
        str(tmp_path / "c.json"),
        "--model",
        "resnet20",
        "--weights",
        str(RESNET),
        "--normalization",
        "imagenet",
        "--data",
        str(CIFAR),
        "--no-progress",
    ]
    accuracy = {}
    for command in ("run", "defend", "patches"):
        out = tmp_path / command
        assert main([command, *flags, "--out", str(out)]) == 0
        r = json.loads((out / "results.json").read_text())
        assert r["model"]["source"] == "weights" and r["model"]["checkpoint"] == str(RESNET)
        assert r["dataset"]["n_test"] == 30
        accuracy[command] = r["model"]["test_accuracy"]
    assert accuracy["run"] >= 0.8 and accuracy["run"] == accuracy["defend"] == accuracy["patches"]


def test_a_warm_cache_recomputes_nothing(trained, tmp_path):
    """Every task of run, defend and patches is cached: a second call computes no entry."""
    x, y = squares(60, seed=5)
    patches = {
        "n_test": 10,
        "n_fit": 10,
        "areas": [0.1],
        "attacks": [{"name": "patch-lavan", "steps": 1}],
        "defences": [{"name": "fragments", "label": "f", "features": ["mean", "std"]}, "lgs"],
        "adaptive": ["f"],
        "adaptive_areas": [0.1],
    }
    experiment = roiroa.Experiment(model=trained, data=(x, y), config=SMALL | {"patches": patches})
    for command in ("run", "defend", "patches"):
        first, second = StageCache(tmp_path), StageCache(tmp_path)
        for cache in (first, second):
            experiment.cache = cache
            getattr(experiment, command)()
        assert first.misses > 0 and second.misses == 0 and second.hits > 0, (command, second.misses)


def test_api_refuses_what_is_not_a_model():
    with pytest.raises(roiroa.InputError, match="torch.nn.Module"):
        roiroa.Experiment(model="resnet20")  # type: ignore[arg-type]
    with pytest.raises(roiroa.InputError, match="unknown key 'regoins'"):
        roiroa.Experiment(config={"regoins": {"q_roi": 0.3}})
