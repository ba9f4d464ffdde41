"""The command line: an end-to-end quick run, `roiroa list`, and bad input that ends cleanly with exit code 2."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from roiroa.cli import main
from roiroa.evaluate.config import RunConfig, load_config, quick
from roiroa.report.run_folder import RUN_FILES

# ----------------------------------------------------------------------------------------------
# end to end (in process)


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory, mnist_model):
    """Two quick runs: the default one, and one repeated from the first's config.json."""
    root = tmp_path_factory.mktemp("e2e")
    out, out2 = root / "out", root / "out2"
    rc1 = main(["run", "--quick", "--out", str(out), "--no-progress"])
    rc2 = main(["run", "--config", str(out / "config.json"), "--out", str(out2), "--no-progress"])
    return rc1, rc2, out, out2


def _strict_json(path: Path):
    def no_constants(token: str):
        raise AssertionError(f"{path.name} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=no_constants)


def _in01(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


@pytest.mark.slow
def test_run_quick_writes_every_file(e2e_runs):
    rc1, _, out, _ = e2e_runs
    assert rc1 == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
    for name in ("config.json", "results.json", "metrics.csv", "per_image.csv", "maps.npz", "examples.png"):
        assert (out / name).stat().st_size > 0
    # no temporary folder left beside the run folder
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_run_quick_results_json(e2e_runs):
    _, _, out, _ = e2e_runs
    r = _strict_json(out / "results.json")
    for key in ("dataset", "model", "attacks", "regions", "defence", "oracle", "timings", "versions", "seed"):
        assert key in r, key
    assert r["seed"] == 0 and r["quick"] is True

    assert r["dataset"]["n_test"] == 200 and r["dataset"]["n_fit"] == 200 and r["dataset"]["n_train"] == 4000
    assert r["dataset"]["image_shape"] == [1, 28, 28]

    model = r["model"]
    assert model["name"] == "mnist-cnn"
    assert 0.97 <= model["test_accuracy"] <= 1.0
    assert model["from_cache"] is True  # the session's model, same data, recipe and seed

    attacks = r["attacks"]
    assert list(attacks) == ["fgsm", "pgd-linf", "pgd-l2"]
    for label, a in attacks.items():
        assert a["params"]["attack"] == label
        assert _in01(a["robust_accuracy"]), label
        assert a["robust_accuracy"] <= model["test_accuracy"]
    assert attacks["pgd-linf"]["params"]["steps"] == 10 and attacks["pgd-l2"]["params"]["steps"] == 10
    assert attacks["pgd-linf"]["params"]["eps"] == 0.15 and attacks["pgd-l2"]["params"]["eps"] == 2.0
    assert attacks["pgd-linf"]["robust_accuracy"] < model["test_accuracy"]
    assert attacks["pgd-l2"]["robust_accuracy"] < model["test_accuracy"]
    assert attacks["pgd-linf"]["mean_linf"] <= 0.15 + 1e-6

    assert {"correlation", "overlap", "segments"} <= set(r["regions"])

    assert [row["attack"] for row in r["defence"]] == list(attacks)
    for row in r["defence"]:
        assert 0.0 < row["area"] < 1.0
        for m in ("clean_accuracy", "nonadaptive_accuracy", "adaptive_accuracy", "random_mask_accuracy"):
            assert _in01(row[m]), (row["attack"], m)
        assert row["undefended_accuracy"] == attacks[row["attack"]]["robust_accuracy"]

    oracle_q = RunConfig().defence.oracle_q
    assert len(r["oracle"]) == len(attacks) * len(oracle_q)
    assert {(row["attack"], row["q_roa"]) for row in r["oracle"]} == {(a, q) for a in attacks for q in oracle_q}
    for row in r["oracle"]:
        assert _in01(row["accuracy"]) and _in01(row["area"])

    assert r["timings"] and all(v >= 0 for v in r["timings"].values())
    assert set(r["versions"]) >= {"roiroa", "torch", "python"}
    assert r["versions"]["torch"] == torch.__version__
    assert r["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.slow
def test_run_quick_metrics_csv(e2e_runs):
    _, _, out, _ = e2e_runs
    with (out / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["section", "scope", "attack", "metric", "value"]
    assert rows
    for row in rows:
        v = float(row["value"])
        assert not math.isinf(v)
    results = _strict_json(out / "results.json")
    acc = [r for r in rows if r["section"] == "model" and r["metric"] == "test_accuracy"]
    assert len(acc) == 1 and float(acc[0]["value"]) == results["model"]["test_accuracy"]
    pgd = [
        r for r in rows if r["section"] == "attacks" and r["attack"] == "pgd-linf" and r["metric"] == "robust_accuracy"
    ]
    assert len(pgd) == 1
    assert float(pgd[0]["value"]) == results["attacks"]["pgd-linf"]["robust_accuracy"]


@pytest.mark.slow
def test_run_quick_per_image_and_maps(e2e_runs):
    _, _, out, _ = e2e_runs
    with (out / "per_image.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 200
    assert {"index", "label", "pred[clean]", "pred[pgd-linf]"} <= set(rows[0])
    labels = [int(r["label"]) for r in rows]
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10

    with np.load(out / "maps.npz", allow_pickle=False) as maps:
        importance, segments = maps["importance"], maps["segments"]
        assert importance.shape == (200, 28, 28) and segments.shape == (200, 28, 28)
        assert np.isfinite(importance).all()
        assert set(np.unique(segments).tolist()) <= {0, 1, 2, 3}
        assert len(np.unique(segments)) > 1
        assert maps["labels"].tolist() == labels
        assert maps["index"].tolist() == [int(r["index"]) for r in rows]


@pytest.mark.slow
def test_run_quick_examples_png(e2e_runs):
    from PIL import Image

    _, _, out, _ = e2e_runs
    with Image.open(out / "examples.png") as pic:
        pic.verify()
    with Image.open(out / "examples.png") as pic:
        assert pic.format == "PNG"
        w, h = pic.size
    assert w > 500 and h > 500


@pytest.mark.slow
def test_run_quick_config_json_is_the_effective_config(e2e_runs):
    _, _, out, _ = e2e_runs
    loaded = load_config(out / "config.json")
    assert loaded == quick(RunConfig())
    assert loaded.quick is True and loaded.data.max_test == 200


@pytest.mark.slow
def test_run_repeated_from_config_json_is_identical(e2e_runs):
    _, rc2, out, out2 = e2e_runs
    assert rc2 == 0
    a, b = _strict_json(out / "results.json"), _strict_json(out2 / "results.json")
    for r in (a, b):
        r.pop("timings")
        r["model"].pop("from_cache")
    assert a == b
    assert (out2 / "config.json").read_text() == (out / "config.json").read_text()
    with np.load(out / "maps.npz") as m1, np.load(out2 / "maps.npz") as m2:
        assert np.array_equal(m1["segments"], m2["segments"])


# ----------------------------------------------------------------------------------------------
# console script


def test_list_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "roiroa", "list"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("pgd-linf", "pgd-l2", "fgsm", "occlusion", "saliency", "mnist-cnn"):
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# bad input through the CLI: exit 2, one line on stderr, nothing written


def _nan_npz(folder: Path) -> Path:
    images = np.zeros((10, 28, 28), np.float32)
    images[3, 5, 5] = np.nan
    path = folder / "nan.npz"
    np.savez(path, images=images, labels=np.arange(10) % 2)
    return path


def _case_args(case: str, folder: Path) -> list[str] | None:
    """The `roiroa run` arguments of a case (None: not runnable here); --out is always folder/out."""
    out = ["--out", str(folder / "out")]
    if case == "missing-config":
        return ["--config", str(folder / "missing.toml"), *out]
    if case == "unknown-key":
        (folder / "bad.toml").write_text('seed = 1\n[data]\nsorce = "mnist"\n')
        return ["--config", str(folder / "bad.toml"), *out]
    if case == "missing-data":
        return ["--data", str(folder / "missing.npz"), *out]
    if case == "nan-data":
        return ["--data", str(_nan_npz(folder)), *out]
    if case == "cuda-unavailable":
        return None if torch.cuda.is_available() else ["--device", "cuda", *out]
    if case == "out-not-empty":
        (folder / "out").mkdir()
        (folder / "out" / "keep.txt").write_text("mine")
        return out
    if case == "out-read-only":
        if os.geteuid() == 0:
            return None
        locked = folder / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return ["--out", str(locked / "out")]
    raise AssertionError(case)


SKIP_REASONS = {
    "cuda-unavailable": "CUDA is available here, so --device cuda is valid input",
    "out-read-only": "running as root: root ignores folder permissions",
}
CASES = [
    "missing-config",
    "unknown-key",
    "missing-data",
    "nan-data",
    "cuda-unavailable",
    "out-not-empty",
    "out-read-only",
]


@pytest.fixture(scope="module")
def cli_failures(tmp_path_factory, session_cache):
    """Run every case at once (in parallel subprocesses) and return case -> (folder, before, proc)."""
    env = dict(os.environ, ROIROA_CACHE=os.environ["ROIROA_CACHE"], TQDM_DISABLE="1")
    started = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp(f"cli-{case}")
        args = _case_args(case, folder)
        if args is None:
            continue
        before = sorted(p.name for p in folder.iterdir())
        cmd = [sys.executable, "-m", "roiroa", "run", *args]
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[case] = (folder, before, proc)
    results = {}
    for case, (folder, before, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[case] = (folder, before, proc.returncode, stdout, stderr)
    yield results
    for folder, *_ in results.values():
        for p in folder.iterdir():
            p.chmod(0o755)


def _result(cli_failures, case):
    if case not in cli_failures:
        pytest.skip(SKIP_REASONS[case])
    return cli_failures[case]


@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input_fails_cleanly(cli_failures, case):
    folder, before, rc, stdout, stderr = _result(cli_failures, case)
    assert rc == 2, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("roiroa: error:")]
    assert len(errors) == 1, stderr
    assert len(errors[0]) > len("roiroa: error: ") + 10
    assert lines[-1] == errors[0]
    # it failed before any training or attacking
    for stage in ("model", "attacks_test", "importance_test"):
        assert not any(line.split()[:1] == [stage] for line in lines), stderr
    # nothing new was written: no run folder, no hidden temporary folder, no default roiroa-runs/
    after = sorted(p.name for p in folder.iterdir())
    assert after == before, after
    assert not any(name.startswith(".") and name.endswith(".tmp") for name in after)
    if case == "out-not-empty":
        assert sorted(p.name for p in (folder / "out").iterdir()) == ["keep.txt"]
        assert (folder / "out" / "keep.txt").read_text() == "mine"
    if case == "out-read-only":
        assert list((folder / "locked").iterdir()) == []


@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input_prints_exactly_one_line(cli_failures, case):
    _, _, rc, _, stderr = _result(cli_failures, case)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("roiroa: error:")


def test_cli_error_messages_name_the_problem(cli_failures):
    messages = {case: r[4].strip().splitlines()[-1] for case, r in cli_failures.items()}
    assert "missing.toml" in messages["missing-config"]
    assert "data.sorce" in messages["unknown-key"]
    assert "missing.npz" in messages["missing-data"] and "not found" in messages["missing-data"]
    assert "NaN" in messages["nan-data"]
    assert "not empty" in messages["out-not-empty"] and "--overwrite" in messages["out-not-empty"]
    if "cuda-unavailable" in messages:
        assert "cuda" in messages["cuda-unavailable"].lower()
