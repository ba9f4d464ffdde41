"""The bad-input matrix: every bad input through the command line AND through the API.

Command line (``cli.main`` in process): exit code 2, exactly one line on stderr that starts with
``roiroa: error:``, no traceback (``--debug`` shows it), and nothing written beside the input files.
API: the same input raises :class:`InputError` whose message is that line. Each case also names words the
message must hold: the problem (a name, a value) and the fix.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from roiroa.attacks import create_attack
from roiroa.cache import StageCache
from roiroa.cli import main
from roiroa.data.sources import load_dataset
from roiroa.errors import InputError
from roiroa.evaluate.run import run_experiment
from roiroa.evaluate.validate import config_from_dict, load_config
from roiroa.maps import Occlusion, Saliency
from roiroa.models import create_model
from roiroa.models.loading import load_model
from roiroa.report.folder import claim_folder, release
from roiroa.utils import resolve_device


@dataclass(frozen=True)
class Case:
    """A bad input: ``make(folder)`` writes its files and returns (CLI arguments, the API call)."""

    make: Callable[[Path], tuple[list[str] | None, Callable[[], object]]]
    words: tuple[str, ...]  # the message names the problem and the fix
    skip: Callable[[], str | None] = lambda: None  # a reason why the input is not bad on this machine


# ---------------------------------------------------------------------------------------------- files


def npz(folder: Path, name: str = "d.npz", n: int = 20, size: int = 12, **arrays) -> Path:
    """A small valid dataset (2 classes) with ``arrays`` replacing or adding entries."""
    gen = np.random.default_rng(0)
    content = {"images": gen.integers(0, 256, (n, size, size), dtype=np.uint8), "labels": np.arange(n) % 2}
    content.update(arrays)
    path = folder / name
    np.savez(path, **content)
    return path


def data_case(write: Callable[[Path], Path], *words: str, labels: Callable[[Path], Path] | None = None) -> Case:
    """A bad dataset given as --data (and --labels): the API is load_dataset."""

    def make(folder: Path):
        path = write(folder)
        lab = labels(folder) if labels else None
        args = ["--data", str(path)] + (["--labels", str(lab)] if lab else [])
        return args, lambda: load_dataset(str(path), None if lab is None else str(lab))

    return Case(make, words)


def config_case(config: dict | str, *words: str, name: str = "c.json") -> Case:
    """A bad config file given as --config: the API is load_config."""

    def make(folder: Path):
        path = folder / name
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        return ["--config", str(path)], lambda: load_config(path)

    return Case(make, words)


def truncated_npz(folder: Path) -> Path:
    path = npz(folder)
    path.write_bytes(path.read_bytes()[:300])
    return path


def idx_pair(folder: Path, truncate: int = 0) -> tuple[Path, Path]:
    images = np.zeros((4, 8, 8), np.uint8)
    head = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    img = folder / "img-idx3-ubyte.gz"
    img.write_bytes(gzip.compress((head + images.tobytes())[: len(head) + images.size - truncate]))
    lab = folder / "lab-idx1-ubyte"
    lab.write_bytes(bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big") + bytes([0, 1, 0, 1]))
    return img, lab


def image_folder(folder: Path, broken: bool) -> Path:
    root = folder / "imgs"
    (root / "cat").mkdir(parents=True)
    if broken:
        (root / "cat" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def small_data_config(folder: Path, **extra) -> dict:
    return {"data": {"source": str(npz(folder)), "max_test": 4, "n_fit": 4}, **extra}


def run_case(config: Callable[[Path], dict], *words: str) -> Case:
    """A config that is valid on its own but not for its data: the API is run_experiment."""

    def make(folder: Path):
        path = folder / "c.json"
        path.write_text(json.dumps(config(folder)))
        return ["--config", str(path)], lambda: run_experiment(load_config(path), cache=StageCache(None))

    return Case(make, words)


def out_case(prepare: Callable[[Path], Path], *words: str, overwrite: bool = False, cwd: bool = False) -> Case:
    """A bad --out folder: the API is claim_folder (which every command calls before any work)."""

    def make(folder: Path):
        out = prepare(folder)
        args = ["--out", str(out)] + (["--overwrite"] if overwrite else [])

        def api():
            if cwd:
                os.chdir(folder)
            release(claim_folder(out, overwrite, [folder / "data"]))

        return args, api

    return Case(make, words)


def symlink(folder: Path) -> Path:
    (folder / "real").mkdir()
    (folder / "link").symlink_to(folder / "real")
    return folder / "link"


def data_folder(folder: Path) -> Path:
    (folder / "data").mkdir()
    np.save(folder / "data" / "keep.npy", np.zeros(3))
    return folder / "data"


def locked(folder: Path) -> Path:
    """An --out that another live process is writing: its lock file holds that process's id."""
    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (folder / ".busy.lock").write_text(str(keeper.pid))
    KEEPERS.append(keeper)
    return folder / "busy"


KEEPERS: list[subprocess.Popen] = []


def user_module(folder: Path, body: str) -> str:
    """A module of user code in ``folder`` (put on sys.path), named uniquely; returns its import name."""
    name = f"usercode_{abs(hash(str(folder))) % 10**8}"
    (folder / f"{name}.py").write_text(body)
    sys.path.insert(0, str(folder))
    return name


def raising_factory(folder: Path):
    name = user_module(folder, "def net(num_classes):\n    raise RuntimeError('the factory broke')\n")
    weights = folder / "w.pt"
    torch.save(create_model("mnist-cnn", num_classes=2, image_size=12).state_dict(), weights)
    data = npz(folder)
    spec = f"{name}:net"
    api = lambda: load_model(spec, weights, image_shape=(1, 12, 12), num_classes=2)  # noqa: E731
    return ["--data", str(data), "--model", spec, "--weights", str(weights)], api


def normalization_case(mean: str, std: str, *words: str) -> Case:
    """A bad --mean/--std beside good weights and data: the API is config_from_dict."""

    def make(folder: Path):
        data, weights = npz(folder), folder / "w.pt"
        torch.save(create_model("mnist-cnn", num_classes=2, image_size=12).state_dict(), weights)
        model = {"weights": str(weights), "mean": [float(mean)], "std": [float(std)]}
        args = ["--data", str(data), "--weights", str(weights), "--mean", mean, "--std", std]
        return args, lambda: config_from_dict({"data": {"source": str(data)}, "model": model})

    return Case(make, words)


def nan_weights(folder: Path) -> Path:
    state = create_model("mnist-cnn", num_classes=2, image_size=12).state_dict()
    state[next(iter(state))][0] = float("nan")
    torch.save(state, folder / "nan.pt")
    return folder / "nan.pt"


def huge_images(folder: Path) -> Path:
    path = folder / "big.npz"
    np.savez_compressed(path, images=np.zeros((20, 1000, 1000), np.uint8), labels=np.arange(20) % 2)
    return path


def file_parent(folder: Path) -> Path:
    (folder / "a-file").write_text("x")
    return folder / "a-file" / "out"


def existing_file(folder: Path) -> Path:
    (folder / "out.txt").write_text("x")
    return folder / "out.txt"


def non_empty(folder: Path) -> Path:
    (folder / "full").mkdir()
    (folder / "full" / "keep.txt").write_text("mine")
    return folder / "full"


class ThreeClasses(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] * 10


def model_case(call: Callable[[nn.Module, torch.Tensor, torch.Tensor], object]) -> Case:
    """A model object with 3 outputs for labels up to 9, given to an attack or an estimator."""

    def make(folder: Path):
        x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 9, 2, 1])
        return None, lambda: call(ThreeClasses(), x, y)

    return Case(make, ("3 outputs", "labels go up to 9", "one output per class"))


def read_only(folder: Path) -> Path:
    (folder / "locked").mkdir()
    (folder / "locked").chmod(0o555)
    return folder / "locked" / "out"


def if_root() -> str | None:
    return "running as root: root ignores folder permissions" if os.geteuid() == 0 else None


def if_cuda() -> str | None:
    return "CUDA is available here, so --device cuda is valid input" if torch.cuda.is_available() else None


class Payload:
    """Unpickling this calls open(marker, 'w'): the marker file exists afterwards iff code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def weights_case(write: Callable[[Path], Path], *words: str, size: int = 12) -> Case:
    """A bad --weights file for the mnist-cnn architecture and a 2-class dataset: the API is load_model."""

    def make(folder: Path):
        data, weights = npz(folder, size=size), write(folder)

        def api():
            return load_model("mnist-cnn", weights, image_shape=(1, size, size), num_classes=2)

        return ["--data", str(data), "--weights", str(weights)], api

    return Case(make, words)


def other_architecture(folder: Path) -> Path:
    torch.save(nn.Linear(4, 2).state_dict(), folder / "linear.pt")
    return folder / "linear.pt"


def ten_classes(folder: Path) -> Path:
    torch.save(create_model("mnist-cnn").state_dict(), folder / "ten.pt")
    return folder / "ten.pt"


def malicious(folder: Path) -> Path:
    torch.save({"state_dict": {}, "x": Payload(folder / "pwned")}, folder / "evil.pt")
    return folder / "evil.pt"


def truncated_checkpoint(folder: Path) -> Path:
    torch.save(create_model("mnist-cnn", num_classes=2, image_size=12).state_dict(), folder / "cut.pt")
    (folder / "cut.pt").write_bytes((folder / "cut.pt").read_bytes()[:5000])
    return folder / "cut.pt"


CASES: dict[str, Case] = {
    # missing, unreadable, truncated or corrupt files
    "config missing": Case(
        lambda f: (["--config", str(f / "missing.json")], lambda: load_config(f / "missing.json")),
        ("cannot read config", "missing.json", "check the path"),
    ),
    "config is a folder": Case(
        lambda f: ((f / "dir.toml").mkdir() or ["--config", str(f / "dir.toml")], lambda: load_config(f / "dir.toml")),
        ("cannot read config", "dir.toml"),
    ),
    "config corrupt JSON": config_case('{"seed": 1,', "not valid JSON"),
    "config corrupt TOML": config_case("seed = = 1\n", "not valid TOML", name="c.toml"),
    "data missing": data_case(lambda f: f / "missing.npz", "missing.npz", "not found", "give an existing"),
    "npz truncated": data_case(truncated_npz, "d.npz", "cannot read it as .npz", "complete"),
    "npz not a zip": data_case(
        lambda f: (f / "g.npz").write_bytes(b"garbage" * 10) and f / "g.npz", "g.npz", "not a zip", "complete"
    ),
    "npz with pickled objects": data_case(
        lambda f: npz(f, labels=np.array([object()] * 20)), "d.npz", "plain numeric arrays"
    ),
    "IDX truncated": data_case(
        lambda f: idx_pair(f, truncate=5)[0], "truncated or corrupt", labels=lambda f: f / "lab-idx1-ubyte"
    ),
    "IDX labels file missing": data_case(
        lambda f: idx_pair(f)[0], "labels file", "not found", labels=lambda f: f / "nope-idx1-ubyte"
    ),
    "broken image in folder": data_case(lambda f: image_folder(f, broken=True), "a.png", "cannot read this image"),
    # empty data
    "npz with no images": data_case(
        lambda f: npz(f, images=np.zeros((0, 12, 12), np.uint8), labels=np.zeros(0, np.int64)), "empty", "at least one"
    ),
    "image folder with no images": data_case(lambda f: image_folder(f, broken=False), "no images found"),
    # values
    "NaN pixel": data_case(
        lambda f: npz(f, images=np.where(np.eye(12)[None] > 0, np.nan, 0.5).repeat(20, 0).astype(np.float32)),
        "NaN",
        "clean the images",
    ),
    "floats 0..255": data_case(
        lambda f: npz(f, images=np.full((20, 12, 12), 200.0, np.float32)), "reach 200", "divide by 255"
    ),
    "negative pixels": data_case(
        lambda f: npz(f, images=np.full((20, 12, 12), -0.5, np.float32)), "outside [0, 1]", "scale the images"
    ),
    # shapes
    "images of rank 2": data_case(lambda f: npz(f, images=np.zeros((20, 144), np.uint8)), "(20, 144)", "expected"),
    "two channels": data_case(
        lambda f: npz(f, images=np.zeros((20, 2, 12, 12), np.uint8)), "(20, 2, 12, 12)", "C = 1 or 3"
    ),
    # labels
    "label out of range": data_case(
        lambda f: npz(f, labels=np.arange(20) % 5, classes=np.array(["a", "b"])), "label 4", "2 classes", "0..K-1"
    ),
    "negative label": data_case(lambda f: npz(f, labels=np.arange(20) % 2 - 1), "negative label", "0..K-1"),
    "fewer labels than images": data_case(lambda f: npz(f, labels=np.arange(7) % 2), "20 images but 7 labels"),
    "model with 3 outputs for 10 classes (attack)": model_case(lambda m, x, y: create_attack("pgd-linf")(m, x, y)),
    "model with 3 outputs for 10 classes (occlusion)": model_case(lambda m, x, y: Occlusion()(m, x, y)),
    "model with 3 outputs for 10 classes (saliency)": model_case(lambda m, x, y: Saliency()(m, x, y)),
    # checkpoints
    "checkpoint of another architecture": weights_case(other_architecture, "do not fit the architecture MnistCNN"),
    "checkpoint with 10 classes for 2-class data": weights_case(
        ten_classes, "shape mismatches", "(10,", "(2,", "its number of classes", size=28
    ),
    "checkpoint with a code payload (pickle)": weights_case(malicious, "pickled Python objects", "refuses"),
    "truncated checkpoint": weights_case(truncated_checkpoint, "cut.pt", "truncated"),
    # names
    "unknown attack": config_case({"attacks": [{"name": "pgd"}]}, "unknown attack 'pgd'", "choose one of"),
    "unknown importance estimator": config_case({"maps": {"importance": "shap"}}, "maps.importance", "'shap'"),
    "unknown vulnerability reading": config_case({"maps": {"vulnerability": "lrp"}}, "maps.vulnerability", "'lrp'"),
    "unknown fill": config_case({"defence": {"fill": "plaid"}}, "defence.fill", "'plaid'"),
    "unknown threshold": config_case({"regions": {"threshold": "median"}}, "regions.threshold", "'median'"),
    "unknown model": config_case({"model": {"arch": "resnet"}}, "model.arch", "mnist-cnn", "'resnet'"),
    # parameter values
    "negative eps": config_case({"attacks": [{"name": "fgsm", "eps": -0.1}]}, "'eps'", "(0, 1]", "-0.1"),
    "absurd L-inf eps": config_case({"attacks": [{"name": "pgd-linf", "eps": 30}]}, "'eps'", "(0, 1]", "30"),
    "zero steps": config_case({"attacks": [{"name": "pgd-l2", "steps": 0}]}, "'steps'", "Got 0"),
    "window larger than the image": run_case(
        lambda f: small_data_config(f, maps={"window": 16, "stride": 2}), "maps.window (16)", "12x12", "smaller window"
    ),
    "stride 0": config_case({"maps": {"stride": 0}}, "maps.stride", "Got 0"),
    "stride larger than window": config_case(
        {"maps": {"window": 3, "stride": 4}}, "maps.stride (4)", "stride <= window"
    ),
    "q 0": config_case({"regions": {"q_roi": 0}}, "regions.q_roi", "(0, 1]", "Got 0"),
    "q above 1": config_case({"regions": {"q_roa": 1.5}}, "regions.q_roa", "(0, 1]", "Got 1.5"),
    "oracle q 0": config_case({"defence": {"oracle_q": [0.0]}}, "defence.oracle_q", "(0, 1]"),
    "chunk size 0": config_case({"chunk_size": 0}, "chunk_size", "Got 0"),
    "negative seed": Case(lambda f: (["--seed", "-1"], lambda: config_from_dict({"seed": -1})), ("'seed'", "Got -1")),
    "cuda without a GPU": Case(
        lambda f: (["--device", "cuda"], lambda: resolve_device("cuda")), ("cuda", "--device cpu"), if_cuda
    ),
    # output folder
    "output folder not empty": out_case(non_empty, "not empty", "--overwrite"),
    "output path is a file": out_case(existing_file, "not a folder", "choose another --out"),
    "output parent is a file": out_case(file_parent, "cannot write in", "writable --out"),
    "output is the current folder": out_case(
        lambda f: Path("."), "current folder", "new folder", overwrite=True, cwd=True
    ),
    "output holds the input data": Case(
        lambda f: (
            ["--data", str(data_folder(f)), "--out", str(f / "data"), "--overwrite"],
            lambda: release(claim_folder(f / "data", True, [f / "data"])),
        ),
        ("holds the input data", "another folder"),
    ),
    "overwrite a folder roiroa did not write": out_case(
        non_empty, "not written by roiroa", "choose another --out", overwrite=True
    ),
    "output is a symbolic link": out_case(symlink, "symbolic link", "real folder"),
    "output locked by another process": out_case(locked, "another roiroa process", "wait for it"),
    "output folder read-only": Case(out_case(read_only, "").make, ("cannot write in", "writable --out"), if_root),
    # config structure
    "config unknown key": config_case({"data": {"sorce": "mnist"}}, "unknown key 'data.sorce'", "valid keys"),
    "config wrong type": config_case({"seed": "one"}, "'seed' must be an int", "'one'"),
    "patches config wrong type": config_case({"patches": {"areas": "big"}}, "'patches.areas' must be a list"),
    "attack labelled clean": config_case(
        {"attacks": [{"name": "fgsm", "label": "clean"}]}, "'clean' is reserved", "label"
    ),
    "attack labelled all": config_case({"attacks": [{"name": "fgsm", "label": "all"}]}, "'all' is reserved"),
    "steps without bound": config_case(
        {"attacks": [{"name": "pgd-linf", "steps": 10**9}]}, "limits.max_steps", "raise"
    ),
    "restarts without bound": config_case(
        {"attacks": [{"name": "pgd-linf", "restarts": 10**6}]}, "limits.max_restarts"
    ),
    "occlusion windows without bound": run_case(
        lambda f: {"data": {"source": str(huge_images(f))}, "limits": {"max_image_side": 2000}},
        "limits.max_windows",
        "raise",
    ),
    "images above the size limit": run_case(
        lambda f: {"data": {"source": str(huge_images(f))}, "limits": {"max_image_side": 512}},
        "1000x1000",
        "limits.max_image_side",
    ),
    # non-finite numbers
    "NaN in the checkpoint": weights_case(nan_weights, "nan.pt", "NaN"),
    "normalization mean NaN": normalization_case("nan", "0.3", "mean"),
    "normalization std 1e-50": normalization_case("0.5", "1e-50", "std", "1e-50"),
    "normalization std inf": normalization_case("0.5", "inf", "std"),
    # users' code and data
    "model factory that raises": Case(raising_factory, ("the factory broke", "RuntimeError")),
    "duplicate class names": data_case(lambda f: npz(f, classes=np.array(["cat", "cat"])), "'cat'", "2 times"),
    "a single class": data_case(lambda f: npz(f, labels=np.zeros(20, np.int64)), "only one class", "two or more"),
    "config attacks not a list": config_case({"attacks": "fgsm"}, "'attacks' must be a list"),
    "config top level not a table": config_case("[1, 2]", "table of settings"),
}


def test_matrix_is_large_enough():
    assert len(CASES) >= 70


@pytest.fixture(autouse=True, scope="module")
def stop_keepers():
    yield
    for keeper in KEEPERS:
        keeper.kill()


@pytest.fixture
def case_setup(request, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    args, api = CASES[request.param].make(folder)
    return folder, args, api


def api_message(api: Callable[[], object]) -> str:
    with pytest.raises(InputError) as info:
        api()
    message = str(info.value)
    assert "\n" not in message and len(message) > 20
    return message


@pytest.mark.parametrize("case_setup", list(CASES), indirect=True, ids=list(CASES))
def test_bad_input(case_setup, request, capsys):
    folder, args, api = case_setup
    name = request.node.callspec.id
    if CASES[name].skip():
        pytest.skip(CASES[name].skip())
    before = snapshot(folder)
    here = os.getcwd()
    try:
        message = api_message(api)
    finally:
        os.chdir(here)
    for word in CASES[name].words:
        assert word in message, (word, message)
    assert snapshot(folder) == before  # nothing written (and no payload ran)
    if args is None:
        return  # API only: a model object (the CLI loads models by --model and --weights, rows above)
    capsys.readouterr()
    argv = ["run", *args, "--no-progress"] + ([] if "--out" in args else ["--out", str(folder / "out")])
    here = os.getcwd()
    try:
        os.chdir(folder)
        assert main(argv) == 2
    finally:
        os.chdir(here)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines == [f"roiroa: error: {message}"]
    # nothing was written: no run folder, no temporary folder, nothing changed among the input files
    assert snapshot(folder) == before


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with the content of its files."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", ["config unknown key", "npz truncated"])
def test_debug_shows_the_traceback(name, tmp_path):
    args, _ = CASES[name].make(tmp_path)
    with pytest.raises(InputError):
        main(["--debug", "run", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    assert not (tmp_path / "out").exists()


SUBPROCESS_CASES = [  # a few of different kinds; every process spends seconds importing torch
    "checkpoint with a code payload (pickle)",
    "NaN pixel",
    "window larger than the image",
    "output folder not empty",
    "output folder read-only",
    "NaN in the checkpoint",
    "output holds the input data",
    "attack labelled clean",
]


def test_console_script_exits_2_with_one_line(tmp_path):
    """Rows through a real process: exit code 2, one line on stderr, no traceback, no stage run, nothing written."""
    env = dict(os.environ, TQDM_DISABLE="1")
    procs = {}
    for name in SUBPROCESS_CASES:
        if CASES[name].skip():
            continue
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        args, api = CASES[name].make(folder)
        assert args is not None
        before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
        argv = args  # no --out: the default roiroa-runs/ must not appear
        cmd = [sys.executable, "-m", "roiroa", "run", *argv]
        proc = subprocess.Popen(cmd, env=env, cwd=folder, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs[name] = (folder, before, api_message(api), proc)
    for name, (folder, before, message, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        # one line: no traceback, and no stage log line (it failed before any training or attacking)
        assert [line for line in err.splitlines() if line.strip()] == [f"roiroa: error: {message}"], name
        assert out == ""
        # nothing new: no run folder, no hidden temporary folder, no default roiroa-runs/
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before, name
    for folder, *_ in procs.values():
        for p in folder.iterdir():
            p.chmod(0o755)
