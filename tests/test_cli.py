"""The command line: an end-to-end quick run, its folder and its results schema, `roiroa config`, `roiroa list`."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from conftest import RUN_FILES
from roiroa.cli import main
from roiroa.evaluate.config import Config, quick
from roiroa.evaluate.defaults import GREY_EPS, eps_relative, open_attacks
from roiroa.evaluate.validate import load_config
from roiroa.results import schema


def check_results(path: Path) -> dict:
    """results.json: strict JSON (no NaN token) that follows the written schema."""

    def no_constants(token: str):
        raise AssertionError(f"{path.name} holds the non-JSON token {token}")

    results = json.loads(path.read_text(), parse_constant=no_constants)
    jsonschema.validate(results, schema())
    return results


# ----------------------------------------------------------------------------------------------
# end to end (in process)


def package_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that imports this checkout's roiroa (whatever the working directory)."""
    import os

    import roiroa

    src = str(Path(roiroa.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **extra}


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory, mnist_model):
    """Two quick runs: the default one (a subprocess, its stderr piped, progress every 0.2 s), and one repeated
    in process from the first's config.json."""
    root = tmp_path_factory.mktemp("e2e")
    out, out2 = root / "out", root / "out2"
    proc = subprocess.run(
        [sys.executable, "-m", "roiroa", "run", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=package_env(ROIROA_PROGRESS_INTERVAL="0.2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rc2 = main(["run", "--config", str(out / "config.json"), "--out", str(out2), "--no-progress"])
    return proc.returncode, rc2, out, out2, proc.stderr


def _in01(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


@pytest.mark.slow
def test_run_quick_writes_every_file(e2e_runs):
    rc1, _, out, _, _ = e2e_runs
    assert rc1 == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == RUN_FILES
    assert (out / ".roiroa").is_file()  # the marker: roiroa wrote this folder (--overwrite may replace it)
    for name in RUN_FILES:
        assert (out / name).stat().st_size > 0
    # no temporary folder or lock left beside the run folder
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_run_quick_results_json(e2e_runs):
    _, _, out, _, _ = e2e_runs
    r = check_results(out / "results.json")
    assert r["command"] == "run" and r["seed"] == 0 and r["quick"] is True
    assert r["dataset"]["n_test"] == 200 and r["dataset"]["n_fit"] == 200 and r["dataset"]["n_train"] == 4000
    assert r["dataset"]["image_shape"] == [1, 28, 28]
    model = r["model"]
    assert model["name"] == "mnist-cnn" and model["source"] == "trained"
    assert 0.97 <= model["test_accuracy"] <= 1.0
    assert model["from_cache"] is True  # the session's model, same data, recipe and seed

    attacks = {a["label"]: a for a in r["attacks"]}
    assert list(attacks) == ["fgsm", "pgd-linf", "pgd-l2"]
    assert attacks["pgd-linf"]["params"]["steps"] == 10 and attacks["pgd-l2"]["params"]["steps"] == 10
    assert attacks["pgd-linf"]["reading"] == "gradient" and attacks["pgd-l2"]["reading"] == "perturbation"
    assert attacks["pgd-linf"]["robust_accuracy"] < 0.5 * model["test_accuracy"]
    assert attacks["pgd-linf"]["mean_linf"] <= 0.15 + 1e-6

    # the defence table: every cell of f, the global mask and its controls, with its interval
    cells = {(row["defence"], row["setting"], row["attack"]): row for row in r["defence"]}
    for label, a in attacks.items():
        # f's non-adaptive cell is the attack on f: the same number as the attack's summary
        assert cells[("none", "non-adaptive", label)]["accuracy"] == pytest.approx(a["robust_accuracy"])
        for d in ("global", "random[global]", "random_blobs[global]"):
            for s in ("non-adaptive", "adaptive"):
                row = cells[(d, s, label)]
                assert row["ci_low"] <= row["accuracy"] <= row["ci_high"] and row["n_images"] == 200
                assert row["accuracy"] <= cells[(d, "clean", "none")]["accuracy"]
    assert 0.0 < cells[("global", "clean", "none")]["area"] < 0.2
    assert cells[("random[global]", "clean", "none")]["area"] == pytest.approx(
        cells[("global", "clean", "none")]["area"]
    )
    worst = cells[("global", "worst-case", "all")]
    assert worst["accuracy"] <= min(row["accuracy"] for k, row in cells.items() if k[0] == "global" and k[1] != "clean")

    oracle_q = Config().defence.oracle_q
    assert {(row["attack"], row["q_roa"]) for row in r["oracle"]} == {(a, q) for a in attacks for q in oracle_q}
    assert {row["defence"] for row in r["defence_short"]} >= {
        "per_class",
        "random[per_class]",
        "per_input",
        "bit_depth",
    }
    assert r["versions"]["torch"] == torch.__version__
    assert r["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.slow
def test_run_quick_metrics_and_flags_csv(e2e_runs):
    _, _, out, _, _ = e2e_runs
    with (out / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["section", "scope", "attack", "setting", "metric", "value"]
    assert all(not math.isinf(float(row["value"])) for row in rows if row["value"] != "")
    results = json.loads((out / "results.json").read_text())
    acc = [r for r in rows if r["section"] == "model" and r["metric"] == "test_accuracy"]
    assert len(acc) == 1 and float(acc[0]["value"]) == results["model"]["test_accuracy"]
    assert {r["section"] for r in rows} >= {"defence", "defence_short", "oracle", "statistics", "attacks"}
    # every accuracy of the table is the mean of the per-image flags
    with (out / "flags.csv").open(newline="") as f:
        flags = list(csv.DictReader(f))
    assert list(flags[0]) == ["image", "index", "label", "defence", "setting", "attack", "correct"]
    for row in results["defence"]:
        if row["setting"] == "worst-case":
            continue
        mine = [
            int(f["correct"])
            for f in flags
            if (f["defence"], f["setting"], f["attack"]) == (row["defence"], row["setting"], row["attack"])
        ]
        assert len(mine) == row["n_images"] and sum(mine) == row["correct"]


@pytest.mark.slow
def test_run_quick_per_image_and_maps(e2e_runs):
    _, _, out, _, _ = e2e_runs
    with (out / "per_image.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"image", "index", "label", "class", "attack", "prediction", "iou", "iou_null", "spearman"} <= columns
    assert not [c for c in columns if "[" in c], "plain column names"
    attacks = {r["attack"] for r in rows}
    assert {"clean", "fgsm", "pgd-linf", "pgd-l2", "all", "fgsm|pgd-linf"} <= attacks
    clean = [r for r in rows if r["attack"] == "clean"]
    assert len(clean) == 200
    labels = [int(r["label"]) for r in clean]
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10
    with np.load(out / "maps.npz", allow_pickle=False) as maps:
        importance, segments = maps["importance"], maps["segments"]
        assert importance.shape == (200, 28, 28) and segments.shape == (200, 28, 28)
        assert np.isfinite(importance).all() and set(np.unique(segments).tolist()) == {0, 1, 2, 3}
        assert maps["labels"].tolist() == labels
        assert maps["gallery_x"].shape == (10, 1, 28, 28)  # the gallery shows every class
        assert sorted(maps["labels"][maps["gallery_index"]].tolist()) == list(range(10))
        assert {f"gallery_oracle[{a}]" for a in ("fgsm", "pgd-linf", "pgd-l2")} <= set(maps.files)


@pytest.mark.slow
def test_run_quick_config_json_is_the_effective_config(e2e_runs):
    _, _, out, _, _ = e2e_runs
    loaded = load_config(out / "config.json")
    # quick(Config()) with the values it leaves open chosen from the (grey MNIST) data: eps, the budgets that
    # follow it, and fill
    q = quick(Config())
    grey = dataclasses.replace(q, attacks=open_attacks(q.attacks, GREY_EPS))
    grey = dataclasses.replace(grey, defence=dataclasses.replace(q.defence, fill="zero"))
    grey = dataclasses.replace(
        grey, evaluation=dataclasses.replace(q.evaluation, attacks=open_attacks(q.evaluation.attacks, GREY_EPS))
    )
    grey, _ = eps_relative(grey, GREY_EPS["linf"])
    assert loaded == grey
    assert loaded.quick is True and loaded.data.max_test == 200


@pytest.mark.slow
def test_run_repeated_from_config_json_is_identical(e2e_runs):
    _, rc2, out, out2, _ = e2e_runs
    assert rc2 == 0
    a, b = check_results(out / "results.json"), check_results(out2 / "results.json")
    for r in (a, b):
        r.pop("timings")
    # the first run chose eps and fill from the data; config.json states them, so the second has nothing to choose
    chosen_a, chosen_b = a.pop("chosen"), b.pop("chosen")
    assert {"eps", "fill"} <= set(chosen_a) and not {"eps", "fill"} & set(chosen_b)
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
    for name in ("pgd-linf", "pgd-l2", "fgsm", "occlusion", "saliency", "mnist-cnn", "per_input", "lowrank", "lgs"):
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr


def test_config_prints_the_effective_config(tmp_path, capsys):
    assert main(["config", "--quick", "--seed", "3", "--data", "mnist"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "printed.toml").write_text(text)
    loaded = load_config(tmp_path / "printed.toml")
    assert loaded.seed == 3 and loaded.quick is True and loaded == quick(Config(seed=3))


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("roiroa ")


# Bad input through the CLI (exit 2, one line, nothing written) is the matrix in test_bad_inputs.py.


@pytest.mark.slow
def test_run_piped_reports_progress_lines(e2e_runs):
    """With stderr piped, a line per stage with counts and a rate, an ETA, and the overall line at the end."""
    *_, stderr = e2e_runs
    lines = stderr.splitlines()
    assert "maps: done in" in stderr and "defence: done in" in stderr
    # a count and a rate of a loop in progress (images, chunks, steps or epochs: which loops are caught between
    # two lines depends on the machine's speed; the defence table's loop over its chunks lasts several lines)
    counted = [line for line in lines if re.search(r"\d+/\d+ [a-z]+, [\d.e+-]+ [a-z]+/s", line)]
    assert counted, stderr[-2000:]
    assert any("ETA" in line for line in lines)
    assert not any("LinfPGD" in line or "L2PGD" in line for line in lines)  # the attack's name, not its class
    assert lines[-1].startswith("run: finished in ") and "test images/s" in lines[-1]
    assert "\r" not in stderr  # no bars when piped


# ----------------------------------------------------------------------------------------------
# flags: --set, global flags after the command, examples in --help, --device


def test_set_overrides_apply_as_a_config_file_would(capsys):
    argv = ["config", "--format", "json", "--set", "attacks.0.eps=0.1", "--set", "evaluation.n_test=50"]
    argv += ["--set", "maps.importance=saliency", "--set", 'regions.threshold="top_q"', "--set", "device=cpu"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["attacks"][0] == {"name": "fgsm", "eps": 0.1} and data["evaluation"]["n_test"] == 50
    assert data["maps"]["importance"] == "saliency" and data["device"] == "cpu"
    assert data["regions"]["threshold"] == "top_q"


def test_set_appends_a_list_entry(capsys):
    entry = '{name = "pgd-linf", label = "pgd-small", eps = 0.05}'
    assert main(["config", "--format", "json", "--set", f"attacks.3={entry}"]) == 0
    assert json.loads(capsys.readouterr().out)["attacks"][3] == {"name": "pgd-linf", "label": "pgd-small", "eps": 0.05}


@pytest.mark.parametrize(
    "setting, message",
    [
        ("attacks.9.eps=0.1", "attacks is a list of 3"),
        ("seed.x=1", "seed is a value, not a section"),
        ("nonsense=1", "unknown key 'nonsense'"),
        ("attacks.0.eps=2", "eps"),
        ("evaluation.n_test=many", "n_test"),
        ("no-equals-sign", "write KEY=VALUE"),
    ],
)
def test_set_errors_are_one_line(setting, message, capsys):
    assert main(["config", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roiroa: error: ") and message in err[0], err


def test_global_flags_after_the_command():
    from roiroa.errors import InputError

    with pytest.raises(InputError):  # --debug after the command shows the traceback
        main(["config", "--set", "nonsense=1", "--debug"])
    with pytest.raises(InputError):
        main(["--debug", "config", "--set", "nonsense=1"])


def test_every_help_has_an_example():
    from roiroa.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert "example" in parser.format_help()
    for name, command in sub.choices.items():
        assert "example" in command.format_help(), name
    for name in ("run", "defend", "patches"):
        text = sub.choices[name].format_help()
        for flag in ("--data", "--model", "--weights", "--device", "--out", "--no-cache", "--seed", "--set"):
            assert flag in text, (name, flag)


def test_device_cuda_index_is_understood(capsys):
    """--device cuda:N passes the parser; without that GPU the error names the devices there are."""
    import torch

    code = main(["config", "--device", "cuda:1"])
    err = capsys.readouterr().err
    if torch.cuda.device_count() >= 2:
        assert code == 0
    else:
        assert code == 2 and "cuda:1" in err and "must be" not in err


# ----------------------------------------------------------------------------------------------
# progress


PIPED_SCRIPT = """
import logging, time
logging.basicConfig(level=logging.WARNING, format="%(message)s")
logging.getLogger("roiroa.progress").setLevel(logging.INFO)
from roiroa.utils import progress, progress_stage
with progress_stage("maps"):
    for _ in progress(range(2), "attack pgd-linf eps=0.1", unit="chunks"):
        for _ in progress(range(4), "pgd-linf", unit="images", sizes=[8, 8, 8, 6]):
            time.sleep(0.15)
"""


def test_progress_lines_when_stderr_is_piped():
    proc = subprocess.run(
        [sys.executable, "-c", PIPED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=package_env(ROIROA_PROGRESS_INTERVAL="0.2"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    ticks = [line for line in lines if line.startswith("maps > attack pgd-linf eps=0.1 (") and "/30 images" in line]
    assert len(ticks) >= 3, proc.stderr  # ~1.2 s of work, a line every 0.2 s
    assert any(" images/s" in line and "ETA" in line for line in ticks), proc.stderr
    assert lines[-1].startswith("maps: done in "), proc.stderr


def test_progress_callback_and_quiet(monkeypatch):
    """The API reports to a callback (ProgressEvent) every interval and at the end; off means nothing."""
    import time

    from roiroa.utils import progress, progress_stage, set_progress

    monkeypatch.setenv("ROIROA_PROGRESS_INTERVAL", "0.05")
    events: list = []
    set_progress(True, events.append)
    try:
        with progress_stage("stage"):
            for _ in progress(range(5), "loop", unit="images", sizes=[2] * 5):
                time.sleep(0.04)
        assert events[-1].finished and events[-1].labels == ("stage",)
        ticks = [e for e in events if not e.finished]
        assert ticks and all(e.labels[-1] == "loop" and e.total == 10 and e.unit == "images" for e in ticks)
        assert all(0 <= e.done <= 10 for e in ticks)
        events.clear()
        set_progress(False, events.append)
        for _ in progress(range(3), "loop"):
            time.sleep(0.06)
        assert events == []
    finally:
        set_progress(True)


def test_progress_interval_is_checked(monkeypatch):
    from roiroa.errors import InputError
    from roiroa.utils import progress_interval

    monkeypatch.setenv("ROIROA_PROGRESS_INTERVAL", "soon")
    with pytest.raises(InputError, match="ROIROA_PROGRESS_INTERVAL"):
        progress_interval()
    monkeypatch.setenv("ROIROA_PROGRESS_INTERVAL", "0.5")
    assert progress_interval() == 0.5
