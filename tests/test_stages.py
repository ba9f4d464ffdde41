"""Trustworthy runs: the stage cache (hash-checked, atomic), resuming after an interruption, SIGINT and
SIGKILL, determinism, and chunked tasks whose memory does not grow with the number of images.

Every run here uses a tiny config (24 test and 24 fitting images, FGSM and 2-step PGD, 2 chunks) on the
session's trained model, so a run takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
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

from roiroa.cache import StageCache, model_hash
from roiroa.cli import main
from roiroa.evaluate.attacking import attack_entries
from roiroa.evaluate.maps_stage import compute_maps
from roiroa.evaluate.run import run_experiment
from roiroa.evaluate.validate import config_from_dict
from roiroa.results import to_json

TINY = {
    "data": {"max_test": 24, "n_fit": 24},
    "attacks": [{"name": "fgsm", "eps": 0.15}, {"name": "pgd-linf", "eps": 0.15, "steps": 2}],
    "maps": {"window": 7, "stride": 7},
    "defence": {"oracle_q": [0.2]},
    "statistics": {"bootstrap": 200},
    "evaluation": {"run_images": 8, "run_defences": ["per_class", "bit_depth"]},
    "chunk_size": 16,
    "examples": 2,
}


def comparable(results: dict) -> dict:
    """results.json content without what may differ between equal runs (timings, whether the model was cached)."""
    r = json.loads(json.dumps(to_json(results)))
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


def test_disabled_cache_stores_nothing_on_disk_and_computes_once_per_run(tmp_path):
    calls = []
    for _ in range(2):  # two runs: each computes again (nothing was kept on disk)
        cache = StageCache(None)
        for _ in range(2):  # asked twice within one run: computed once
            cache.json("k", lambda: calls.append(1) or [1])
    assert len(calls) == 2 and cache.hits == 0 and not list(tmp_path.iterdir())


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
# runs: resume after an interruption, damaged entries, determinism


class Interrupting(StageCache):
    """A stage cache that raises KeyboardInterrupt (as Ctrl-C would) before computing its n-th new entry."""

    def __init__(self, root: Path, after: int) -> None:
        super().__init__(root)
        self.after = after

    def tensors(self, key, compute):  # type: ignore[no-untyped-def]
        path = self.root / f"{key}.safetensors"
        if not path.exists() and self.misses >= self.after:
            raise KeyboardInterrupt
        return super().tensors(key, compute)


@pytest.fixture(scope="module")
def tiny_config():
    return config_from_dict(TINY)


@pytest.fixture(scope="module")
def reference(tiny_config, mnist_model):
    """An uninterrupted run with the stage cache off."""
    return run_experiment(tiny_config, cache=StageCache(None))


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_results(tiny_config, reference, tmp_path):
    """Interrupt the same run again and again, each time further on; damage some entries; then let it finish."""
    done = 0
    for after in (3, 9):  # inside the test attacks, then inside the defence grid
        cache = Interrupting(tmp_path, after)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(tiny_config, cache=cache)
        assert cache.hits >= done  # it resumed from what the earlier run finished ...
        assert len(list(tmp_path.iterdir())) == done + after  # ... and computed no entry twice
        done += after
    # damaged entries are found and computed again; damage entries the resumed run must read (an attack entry
    # that only fed a later stage found in the cache, such as a restart for the statistics, is not read again)
    damaged = sorted(tmp_path.glob("maps-*.safetensors")) + sorted(tmp_path.glob("statistics-*.safetensors"))
    assert len(damaged) >= 3
    for entry in damaged:
        _flip_byte(entry)
    cache = StageCache(tmp_path)
    resumed = run_experiment(tiny_config, cache=cache)
    assert cache.corrupt == len(damaged) and cache.hits >= done - len(damaged)
    assert comparable(resumed.results) == comparable(reference.results)
    assert torch.equal(resumed.segments.labels(), reference.segments.labels())
    for label, attacked in reference.maps.attacked.items():
        assert torch.equal(resumed.maps.attacked[label].x_adv, attacked.x_adv)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a second run with the cache recomputes nothing
    warm = StageCache(tmp_path)
    again = run_experiment(tiny_config, cache=warm)
    assert warm.misses == 0 and comparable(again.results) == comparable(reference.results)


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results(tiny_config, reference):
    """A second run without the cache, after the global RNG was moved: every random choice is seeded by the run."""
    torch.manual_seed(12345)
    torch.rand(1000)
    again = run_experiment(tiny_config, cache=StageCache(None))
    assert comparable(again.results) == comparable(reference.results)
    assert np.array_equal(again.folder.arrays["global_mask"], reference.folder.arrays["global_mask"])


def test_seed_reaches_random_starts(tiny_config, mnist_model, mnist_splits):
    """The run's seed drives PGD's random starts; FGSM has no randomness; the same seed repeats exactly."""
    data = mnist_splits.test.subset(torch.arange(8))
    config = dataclasses.replace(tiny_config, maps=dataclasses.replace(tiny_config.maps, importance="saliency"))
    attacks = attack_entries(config.attacks, config.batch_size)
    key = model_hash(mnist_model)
    maps = {
        s: compute_maps(mnist_model, key, data, attacks, dataclasses.replace(config, seed=s), StageCache(None))
        for s in (0, 1)
    }
    again = compute_maps(mnist_model, key, data, attacks, config, StageCache(None))
    assert torch.equal(maps[0].attacked["pgd-linf"].x_adv, again.attacked["pgd-linf"].x_adv)
    assert not torch.equal(maps[0].attacked["pgd-linf"].x_adv, maps[1].attacked["pgd-linf"].x_adv)
    assert torch.equal(maps[0].attacked["fgsm"].x_adv, maps[1].attacked["fgsm"].x_adv)


def test_chunk_size_only_changes_the_random_starts(tiny_config, mnist_model, mnist_splits):
    """Deterministic attacks and maps do not depend on how the images are chunked."""
    data = mnist_splits.test.subset(torch.arange(10))
    config = dataclasses.replace(tiny_config, attacks=({"name": "fgsm", "eps": 0.1},))
    attacks = attack_entries(config.attacks, config.batch_size)
    key = model_hash(mnist_model)
    whole = compute_maps(mnist_model, key, data, attacks, dataclasses.replace(config, chunk_size=64), StageCache(None))
    parts = compute_maps(mnist_model, key, data, attacks, dataclasses.replace(config, chunk_size=3), StageCache(None))
    # FGSM's sign of the gradient: the same images, whatever the chunks (to float rounding near zero gradients)
    agree = (whole.attacked["fgsm"].x_adv == parts.attacked["fgsm"].x_adv).double().mean()
    assert agree > 0.999
    # occlusion: a sum over at most 784 products per logit in float32 -> relative error well below 1e-4
    torch.testing.assert_close(whole.importance, parts.importance, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# real signals through the command line


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, session_cache, reference):
    """The tiny config as a file, and the results folder of the uninterrupted run."""
    root = tmp_path_factory.mktemp("signals")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    reference.write(root / "reference")
    return root, config


def fresh_cache(session_cache: Path, folder: Path) -> Path:
    """A new cache folder holding only the session's trained model."""
    shutil.copytree(session_cache / "models", folder / "models")
    return folder


def start_run(config: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, ROIROA_CACHE=str(cache), TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "roiroa", "--verbose", "run", "--config", str(config), "--out", str(out)]
    cmd += ["--no-progress"]
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
    cases = {"SIGINT": (signal.SIGINT, "maps"), "SIGKILL": (signal.SIGKILL, "statistics")}
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
        # no results folder and no half-written temporary folder (a killed run cannot remove its lock: the next does)
        left = {"SIGINT": ["cache"], "SIGKILL": [".out.lock", "cache"]}[name]
        assert sorted(p.name for p in folder.iterdir()) == left, (name, lines)
        assert not any("Traceback" in line for line in lines), lines
        if sig == signal.SIGINT:
            assert rc == 130
            assert [line for line in lines if not line.startswith("  ")] == [
                "roiroa: interrupted; no results folder was written (run the same command again to resume)."
            ]
            assert any(p.name.startswith("attack-") for p in (folder / "cache" / "stages").iterdir())
            continue  # resuming is the same after either signal: once is enough (it costs a run)
        assert rc == -signal.SIGKILL
        # started again with the same config: resumes from the cached stages, same results.json
        os.environ["ROIROA_CACHE"] = str(folder / "cache")
        try:
            assert main(["run", "--config", str(config), "--out", str(folder / "out"), "--no-progress"]) == 0
        finally:
            os.environ["ROIROA_CACHE"] = str(session_cache)
        assert read_results(folder / "out") == read_results(root / "reference")
        assert sorted(p.name for p in folder.iterdir()) == ["cache", "out"]  # the stale lock is gone
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
from roiroa.cache import StageCache
from roiroa.data.readers import load_bundled_mnist
from roiroa.evaluate.attacking import attack_entries, attack_task
from roiroa.evaluate.maps_stage import importance_task
from roiroa.evaluate.tasks import chunks
from roiroa.evaluate.validate import config_from_dict
from roiroa.models.train import seeded_model

torch.set_num_threads(1)
n = int(sys.argv[1])
data = load_bundled_mnist().subset(torch.arange(n))
model = seeded_model("mnist-cnn", {"in_channels": 1, "num_classes": 10, "image_size": 28}, 0, torch.device("cpu"))
config = config_from_dict({"attacks": [{"name": "fgsm"}], "maps": {"importance": "saliency"},
                           "chunk_size": 500, "batch_size": 250})
fgsm = attack_entries(config.attacks, config.batch_size)[0]
count = 0
with tempfile.TemporaryDirectory() as folder:
    cache = StageCache(Path(folder))
    for chunk in chunks(data.images, data.labels, config.chunk_size):
        for task in (attack_task(cache, fgsm, model, "m", chunk, 0), importance_task(cache, model, "m", chunk, config)):
            out = cache.tensors(task.key, task.compute)
        count += len(out["importance"])
        del out
    written = len(list(Path(folder).iterdir()))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, written, count)
"""


@pytest.mark.slow
def test_peak_memory_of_chunk_tasks_does_not_grow_with_the_number_of_images(tmp_path):
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
        assert count == n and written == 2 * (n // 500)  # every chunk's attack and maps went to disk
        peak[n] = rss_kb
    assert peak[5000] < 1.2 * peak[1000], peak
