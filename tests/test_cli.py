"""The command line: an end-to-end quick run, `roiroa list`, and bad input that ends cleanly with exit code 2."""

from __future__ import annotations

import csv
import json
import math
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


# Bad input through the CLI (exit 2, one line, nothing written) is the matrix in test_bad_inputs.py.
