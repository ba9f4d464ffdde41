"""The run's dataset statistics, the atlases and the HTML report, end to end on a small run whose class
names, attack label and data path hold HTML; the report rendered in headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import RUN_FILES
from roiroa.cli import main
from roiroa.errors import InputError
from roiroa.report.atlas import group_mean_std, segment_frequency
from roiroa.report.html import CSP, render_report

EVIL = "<script>alert(1)</script>"
CLASSES = [EVIL, "one & <b>only</b>", 'two "quoted" $\\foo$']
EVIL_LABEL = "<img src=x onerror=alert(2)>"
Q = 0.2


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A small run (3 MNIST classes, 30 test images) on a .npz with HTML in its name and class names."""
    from roiroa.data.readers import bundled_mnist_arrays

    x, y = bundled_mnist_arrays()
    keep = np.concatenate([np.flatnonzero(y == c)[:50] for c in range(3)])
    root = tmp_path_factory.mktemp("report")
    data = root / "digits <i>&amp;.npz"
    np.savez(data, images=x[keep].reshape(-1, 28, 28).astype(np.uint8), labels=y[keep], classes=np.array(CLASSES))
    config = {
        "data": {"source": str(data), "test_fraction": 0.2, "n_fit": 30},
        "model": {"training": {"epochs": 2}},
        "attacks": [
            {"name": "fgsm", "eps": 0.15},
            {"name": "pgd-linf", "eps": 0.15, "steps": 3},
            {"name": "pgd-l2", "label": EVIL_LABEL, "eps": 2.0, "steps": 3},
        ],
        "regions": {"q_roi": Q, "q_roa": Q},
        "statistics": {"bootstrap": 300, "seed_models": 1},
        "examples": 3,
    }
    (root / "config.json").write_text(json.dumps(config))
    out = root / "run"
    assert main(["run", "--config", str(root / "config.json"), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def small_defend(small_run) -> Path:
    """``roiroa defend`` on the same data and model as the small run (its config), on 12 images."""
    config = json.loads((small_run.parent / "config.json").read_text())
    config["evaluation"] = {
        "n_test": 12,
        "defences": ["global", {"name": "bit_depth", "bits": 1}],
        "attacks": [{"name": "pgd-linf", "eps": 0.15, "steps": 2}, {"name": "square", "eps": 0.15, "queries": 5}],
        "sweep_q_roa": [0.2],
        "sweep_dilation": [0],
        "sweep_fills": ["zero"],
        "sweep_scopes": ["global"],
        "n_sanity": 6,
        "sanity_eps": [0.1, 1.0],
        "run_defences": ["bit_depth"],
    }
    path = small_run.parent / "defend.json"
    path.write_text(json.dumps(config))
    out = small_run.parent / "defend"
    assert main(["defend", "--config", str(path), "--out", str(out), "--no-progress"]) == 0
    return out


def test_run_writes_the_report_inside_the_atomic_folder(small_run):
    assert sorted(p.name for p in small_run.iterdir() if not p.name.startswith(".")) == RUN_FILES
    assert [p.name for p in small_run.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_run_statistics_have_intervals_and_a_sane_null(small_run):
    results = json.loads((small_run / "results.json").read_text())
    st = results["statistics"]
    assert st["method"]["ci_method"] == "BCa" and st["method"]["bootstrap_resamples"] == 300
    assert set(st["per_attack"]) == {"fgsm", "pgd-linf", EVIL_LABEL, "all"}
    for label, stats in st["per_attack"].items():
        assert ("moran_delta" in stats) == (label != "all")
        for name, pair in stats.items():
            for kind in ("value", "null"):
                ci = pair[kind]
                if ci["low"] is not None:
                    assert ci["low"] <= ci["mean"] <= ci["high"], (label, name, kind)
        # the null has no spatial pattern: shuffled A puts the RoI's area share of its mass in the RoI,
        # its RoA overlaps the RoI like a random set of equal area, its Moran's I is about 0
        assert stats["relevance_mass"]["null"]["mean"] == pytest.approx(Q, abs=0.05)
        assert stats["iou"]["null"]["mean"] == pytest.approx(Q / (2 - Q), abs=0.05)
        assert abs(stats["moran_a"]["null"]["mean"]) < 0.05
        assert abs(stats["moran_a_z"]["null"]["mean"]) < 1.0
        # and the real maps are spatially clustered and overlap the RoI more than chance
        assert stats["moran_a"]["value"]["mean"] > 0.1
        assert stats["moran_a_z"]["value"]["mean"] > 3
        assert stats["relevance_mass"]["value"]["mean"] > stats["relevance_mass"]["null"]["mean"]
    consistency = st["consistency"]
    assert set(consistency["attacks"]) == {"fgsm|pgd-linf", f"fgsm|{EVIL_LABEL}", f"pgd-linf|{EVIL_LABEL}"}
    assert set(consistency["restarts"]) == {"pgd-linf", EVIL_LABEL, "all"}  # FGSM has no random start
    assert set(consistency["seeds"]) == {"fgsm", "pgd-linf", EVIL_LABEL, "all"}  # a second model, seed 1
    for kind in ("attacks", "restarts", "seeds"):
        for pair in consistency[kind].values():
            assert pair["value"]["mean"] > pair["null"]["mean"], kind
            assert pair["value"]["mean"] < 1.0  # a second run or model is not a copy
    assert list(st["per_class"]) == CLASSES
    assert all(v["iou"]["value"]["n"] == 10 for v in st["per_class"].values())
    assert all({"roa_iou_attacks", "roa_iou_restarts", "roa_iou_seeds"} <= set(v) for v in st["per_class"].values())


def test_run_statistics_per_image_and_metrics(small_run):
    with (small_run / "per_image.csv").open() as f:
        table = list(csv.DictReader(f))
    by_attack = {a: [r for r in table if r["attack"] == a] for a in {r["attack"] for r in table}}
    assert all(len(rows) == 30 for rows in by_attack.values())
    assert {"moran_a", "moran_a_null", "pointing_game", "roa_iou"} <= set(table[0])
    assert by_attack["fgsm|pgd-linf"][0]["roa_iou"] != "" and by_attack["fgsm"][0]["pointing_game"] != ""
    rows = by_attack["all"]
    assert {r["pointing_game"] for r in rows} <= {"0.0", "1.0"}
    # the per-class means are the means of the per-image values of that class
    results = json.loads((small_run / "results.json").read_text())
    labels = np.array([int(r["label"]) for r in rows])
    values = np.array([float(r["iou"]) for r in rows])
    for c, name in enumerate(CLASSES):
        assert results["statistics"]["per_class"][name]["iou"]["value"]["mean"] == pytest.approx(
            values[labels == c].mean()
        )
    with (small_run / "metrics.csv").open() as f:
        metrics = [r for r in csv.DictReader(f) if r["section"] == "statistics"]
    names = {(r["scope"], r["attack"], r["metric"]) for r in metrics}
    assert ("statistics", "all", "iou_ci_low") in names and ("statistics:null", "all", "iou") in names
    assert ("consistency:restarts", "pgd-linf", "roa_iou") in names


# --------------------------------------------------------------------------------------------- atlases


def test_group_mean_std_and_segment_frequency():
    rng = np.random.default_rng(0)
    maps = rng.random((20, 4, 5))
    groups = np.arange(20) % 3
    mean, std = group_mean_std(maps, groups, 4)
    for g in range(3):
        np.testing.assert_allclose(mean[g], maps[groups == g].mean(0))
        np.testing.assert_allclose(std[g], maps[groups == g].std(0), atol=1e-12)
    assert np.isnan(mean[3]).all()  # an empty group
    segments = rng.integers(0, 4, (20, 4, 5))
    freq = segment_frequency(segments, groups, 3)
    assert freq.shape == (3, 4, 4, 5)
    np.testing.assert_allclose(freq.sum(1), 1.0)
    np.testing.assert_allclose(freq[1, 2], (segments[groups == 1] == 2).mean(0))


# --------------------------------------------------------------------------------------------- the page


class _Page(HTMLParser):
    """Tags, attributes and visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def _headline_strings(results) -> list[str]:
    st = results["statistics"]["per_attack"]["all"]
    return [
        f"{100 * results['model']['test_accuracy']:.1f}%",
        f"{st['iou']['value']['mean']:.3f}",
        f"{st['moran_a']['value']['mean']:.3f}",
        f"{100 * next(a for a in results['attacks'] if a['label'] == 'pgd-linf')['robust_accuracy']:.1f}%",
    ]


def test_report_is_self_contained_and_escaped(small_run):
    page = (small_run / "report.html").read_text()
    parsed = _parse(page)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "iframe" not in tags and "link" not in tags
    assert EVIL not in page and EVIL_LABEL not in page and "<b>only</b>" not in page
    text = "".join(parsed.text)
    for s in (EVIL, EVIL_LABEL, "one & <b>only</b>", 'two "quoted"', "digits <i>&amp;.npz"):
        assert s in text, s  # shown as text
    assert any(a.get("content") == CSP for t, a in parsed.tags if t == "meta")
    images = [a["src"] for t, a in parsed.tags if t == "img"]
    assert len(images) >= 4  # gallery and three atlases
    for src in images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.width > 100 and im.height > 100
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    results = json.loads((small_run / "results.json").read_text())
    for s in _headline_strings(results):
        assert s in text, s
    assert ".tmp" not in text and str(small_run.resolve()) in text  # the folder is shown by its final path
    assert "is absent" not in text and "The table roiroa run printed" in text


def test_one_report_of_a_run_and_a_defend_folder(small_run, small_defend, tmp_path, capsys):
    """`roiroa report RUN DEFEND` writes one page holding both, from the folders alone (no model is loaded)."""
    run = tmp_path / "copy"
    shutil.copytree(small_run, run)
    (run / "report.html").unlink()
    out = tmp_path / "both.html"
    assert main(["report", str(run), str(small_defend), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    text = "".join(_parse(page).text)
    assert "roiroa run:" in text and "roiroa defend:" in text and "Defence table (12 test images)" in text
    assert EVIL not in page and page.count(html_escape(EVIL)) >= 3
    defend = json.loads((small_defend / "results.json").read_text())
    for row in defend["table"]:  # every row of the defence table, with its interval
        assert f"[{100 * row['ci_low']:.1f}%, {100 * row['ci_high']:.1f}%]" in text
    images = page.count("data:image/png;base64,")
    alone = [(f / "report.html").read_text().count("data:image/png") for f in (small_run, small_defend)]
    assert images == sum(alone) and alone[1] == 3  # the defend folder's charts: eps, blocked area, sweep
    assert (
        defend["model"]["test_accuracy"]
        == json.loads((small_run / "results.json").read_text())["model"]["test_accuracy"]
    )


def html_escape(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_report_bad_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "results.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage",
    ["no statistics key", "model is a list", "truncated maps.npz", "not json", "other command", "missing config"],
)
def test_report_on_a_damaged_folder_is_one_line_exit_2(small_run, tmp_path, capsys, damage):
    run = tmp_path / "damaged"
    shutil.copytree(small_run, run)
    results = json.loads((run / "results.json").read_text())
    if damage == "no statistics key":
        del results["defence"]
    elif damage == "model is a list":
        results["model"] = [1, 2]
    elif damage == "other command":
        results["command"] = "train"
    (run / "results.json").write_text(json.dumps(results) if damage != "not json" else "{")
    if damage == "truncated maps.npz":
        (run / "maps.npz").write_bytes((run / "maps.npz").read_bytes()[:1000])
    if damage == "missing config":
        (run / "config.json").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roiroa: error:") and "Traceback" not in err[0], err
    assert (
        not (run / "report.html").exists()
        or (small_run / "report.html").read_bytes() == (run / "report.html").read_bytes()
    )


def test_render_report_without_optional_parts(small_run, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(small_run, run)
    results = json.loads((run / "results.json").read_text())
    del results["statistics"]
    (run / "results.json").write_text(json.dumps(results))
    (run / "maps.npz").unlink()
    text = "".join(_parse(render_report([run])).text)
    assert "Statistics" not in text and "Atlases" not in text and "Defence" in text


# --------------------------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const out = {
    images: imgs.length,
    decoded: imgs.filter((i) => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length,
    scripts: document.scripts.length,
    verdictBottom: document.querySelector(".verdict ul").getBoundingClientRect().bottom + window.scrollY,
    pageWidth: document.documentElement.scrollWidth,
    smallestFont: Math.min(...Array.from(document.querySelectorAll("body *"))
      .filter((n) => Array.from(n.childNodes).some((c) => c.nodeType === 3 && c.textContent.trim()))
      .map((n) => parseFloat(getComputedStyle(n).fontSize))),
    resources: performance.getEntriesByType("resource").map((r) => r.name),
    text: document.body.innerText,
  };
  const pre = document.createElement("pre");
  pre.id = "roiroa-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(page: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--window-size=1400,900",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_report_in_headless_chromium(small_run, small_defend, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("ROIROA_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed but ROIROA_REQUIRE_CHROMIUM is set (CI): install it")
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    page = tmp_path / "both.html"
    assert main(["report", str(small_run), str(small_defend), "--out", str(page)]) == 0
    # 1. the report as written: it loads with no console message at all (no script error, no blocked asset)
    plain = _chromium(page, tmp_path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "</html>" in plain.stdout
    console = [line for line in plain.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    # 2. a copy with a checking script (the CSP that forbids scripts removed): images decoded, text as expected
    checked = tmp_path / "checked.html"
    source = page.read_text()
    source = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", source)
    checked.write_text(source.replace("</body>", CHECK_SCRIPT + "</body>"))
    run = _chromium(checked, tmp_path)
    match = re.search(r'<pre id="roiroa-check">(.*?)</pre>', run.stdout, re.S)
    assert match, run.stderr[-2000:]
    import html

    out = json.loads(html.unescape(match.group(1)))
    assert out["images"] >= 5 and out["decoded"] == out["images"]
    assert out["scripts"] == 1  # only the checking script: the class names did not become scripts
    assert out["verdictBottom"] <= 900  # the first screen (1,400 x 900) holds the verdict on the first defence
    assert out["pageWidth"] <= 1400  # wide tables scroll inside their box, not the page
    assert out["smallestFont"] >= 10, out["smallestFont"]
    assert [r for r in out["resources"] if not r.startswith("data:")] == []
    headline = _headline_strings(json.loads((small_run / "results.json").read_text()))
    for s in (EVIL, EVIL_LABEL, "one & <b>only</b>", *headline):
        assert s in out["text"], s
    assert "Headline numbers" in out["text"] and "Atlases" in out["text"] and "Defence table" in out["text"]
    assert out["text"].index("Verdict") < out["text"].index("Setup")


# ------------------------------------------------------------------------------- verdict, figures, notebook
# Fast tests on hand-made results (no run): the verdict's numbers, every figure's title, labels and text size,
# the notebook's summary and show_maps.


def _grid(defence, kind, setting, attack, correct, n=100, area=None):
    """A grid row as results.json holds it, with its Wilson interval."""
    from roiroa.evaluate.grid import interval

    low, high = interval(correct, n)
    return dict(
        defence=defence,
        kind=kind,
        settings="",
        area=area,
        setting=setting,
        attack=attack,
        attack_params="",
        n_images=n,
        correct=correct,
        accuracy=correct / n,
        ci_low=low,
        ci_high=high,
    )


def _table():
    """f, a masking defence 'mask' (area 0.1) and its control, and a baseline; two attacks."""
    rows = []
    for d, kind, area, clean, acc in (
        ("none", "none", None, 98, {"a": (30, 30), "b": (10, 10), "worst": 8}),
        ("mask", "scope", 0.1, 95, {"a": (60, 40), "b": (50, 20), "worst": 15}),
        ("random[mask]", "control", 0.1, 97, {"a": (35, 30), "b": (12, 11), "worst": 9}),
        ("blur", "baseline", None, 90, {"a": (70, 50), "b": (65, 45), "worst": 40}),
    ):
        rows.append(_grid(d, kind, "clean", "none", clean, area=area))
        for attack in ("a", "b"):
            rows.append(_grid(d, kind, "non-adaptive", attack, acc[attack][0], area=area))
            rows.append(_grid(d, kind, "adaptive", attack, acc[attack][1], area=area))
        rows.append(_grid(d, kind, "worst-case", "all", acc["worst"]))
    return rows


ORACLE = [
    {
        "attack": "b",
        "q_roi": 0.2,
        "q_roa": q,
        "area": area,
        "accuracy": acc,
        "clean_accuracy": 0.99,
        "random_mask_accuracy": 0.12,
        "n_images": 100,
    }
    for q, area, acc in ((0.05, 0.03, 0.4), (0.1, 0.09, 0.7), (0.2, 0.2, 0.8))
]


def test_verdict_numbers_from_a_table():
    from roiroa.report.verdict import difference, verdicts

    found = verdicts(_table(), ORACLE)
    assert [v.defence for v in found] == ["mask", "blur"]  # not f, not the control
    mask, blur = found
    assert mask.control == "random[mask]" and blur.control is None and mask.area == 0.1
    by = {c.setting: c for c in mask.comparisons}
    # the attack that hurt the defence most in each setting, compared under the same setting and attack
    assert (by["non-adaptive"].attack, by["adaptive"].attack, by["worst-case"].attack) == ("b", "b", "all")
    adaptive = by["adaptive"]
    assert (adaptive.defence.accuracy, adaptive.control.accuracy, adaptive.undefended.accuracy) == (0.2, 0.11, 0.1)
    # Newcombe's interval from the two Wilson intervals, by hand
    d, a, b = adaptive.vs_control, adaptive.defence, adaptive.control
    assert d.value == pytest.approx(0.09)
    assert d.low == pytest.approx(0.09 - ((a.accuracy - a.low) ** 2 + (b.high - b.accuracy) ** 2) ** 0.5)
    assert d.high == pytest.approx(0.09 + ((a.high - a.accuracy) ** 2 + (b.accuracy - b.low) ** 2) ** 0.5)
    assert d.low < 0 < d.high and d.word == "indistinguishable"
    assert by["non-adaptive"].vs_undefended.word == "better"  # 50% against 10% on 100 images each
    assert difference(a, a).value == 0 and difference(a, a).word == "indistinguishable"
    # the oracle row at the nearest area (0.09 to the mask's 0.1) under the non-adaptive attack b
    assert mask.oracle.q_roa == 0.1 and mask.oracle.gap == pytest.approx(0.7 - 0.5)
    assert blur.oracle is None  # blocks no named positions


def test_verdict_in_metrics_and_control_of_patches():
    from roiroa.report.tables import verdict_metric_rows
    from roiroa.report.verdict import control_of

    rows = verdict_metric_rows({"table": _table(), "oracle": ORACLE})
    got = {(r["scope"], r["attack"], r["setting"], r["metric"]): r["value"] for r in rows}
    assert got[("mask", "b", "adaptive", "diff_control")] == pytest.approx(0.09)
    assert got[("mask", "b", "adaptive", "undefended_accuracy")] == 0.1
    assert got[("mask", "b", "oracle", "oracle_gap")] == pytest.approx(0.2)
    patches = [
        {"defence": "frag", "kind": "scope"},
        {"defence": "random-block", "kind": "control"},
        {"defence": "frag2", "kind": "scope"},
    ]
    assert control_of("frag", patches) == "random-block" and control_of("frag2", patches) is None


def _fake_results():
    """results.json of a run and a defend folder with every part the charts draw."""
    classes = ["zero", "one <b>", "two"]

    def ci(mean):
        return {"mean": mean, "low": mean - 0.05, "high": mean + 0.05, "n": 10}

    per_class = {c: {k: {"value": ci(0.4), "null": ci(0.1)} for k in ("iou", "spearman")} for c in classes}
    sweep = [
        {
            "scope": "global",
            "threshold": "top_q",
            "q_roi": 0.2,
            "q_roa": q,
            "dilation": 0,
            "fill": "zero",
            "area": q / 2,
            "clean_accuracy": 1 - q / 3,
            "nonadaptive_accuracy": 0.3,
            "adaptive_accuracy": 0.1 + q,
            "attack": "b",
            "n_images": 100,
            "pareto": q > 0.1,
        }
        for q in (0.05, 0.1, 0.2)
    ]
    sanity = [
        {
            "defence": d,
            "eps": [0.05, 0.1, 1.0],
            "accuracy": [0.8, 0.4, 0.0],
            "falls": True,
            "unbounded_eps": 1.0,
            "unbounded_accuracy": 0.0,
            "attack": "b",
            "n_images": 20,
        }
        for d in ("none", "mask")
    ]
    table = _table()
    run = {"command": "run", "defence": table, "oracle": ORACLE, "statistics": {"per_class": per_class}}
    defend = {"command": "defend", "table": table, "oracle": ORACLE, "sweep": sweep, "sanity": sanity, "n_test": 100}
    per_image = [
        {"attack": "all", "iou": str(0.3 + i / 100), "iou_null": str(0.1), "spearman": str(0.4), "spearman_null": "0.0"}
        for i in range(30)
    ]
    return classes, run, defend, per_image


def _fake_arrays(n_classes=3, attacks=("a", "b")):
    rng = np.random.default_rng(0)
    n = 6
    arrays = {
        "labels": np.arange(n) % n_classes,
        "importance": rng.random((n, 8, 8)),
        "roa_map": rng.random((n, 8, 8)),
        "segments": rng.integers(0, 4, (n, 8, 8)).astype(np.uint8),
        "gallery_index": np.arange(n_classes),
        "gallery_x": rng.random((n_classes, 1, 8, 8)),
        "gallery_pred": np.arange(n_classes),
    }
    for a in attacks:
        arrays[f"vulnerability[{a}]"] = rng.random((n, 8, 8))
        arrays[f"perturbation[{a}]"] = rng.random((n, 8, 8))
        for k in ("adv", "global", "oracle"):
            arrays[f"gallery_{k}[{a}]"] = rng.random((n_classes, 1, 8, 8))
            arrays[f"gallery_pred_{k}[{a}]"] = np.zeros(n_classes, dtype=np.int64)
    return arrays


def _all_figures():
    """(name, kind, Figure) of every figure function: 'chart' (axes with x and y) or 'grid' (images)."""
    import torch

    from roiroa.report import atlas, figures, plots
    from roiroa.report.notebook import show_maps

    classes, run, defend, per_image = _fake_results()
    arrays = _fake_arrays()
    x = torch.rand(2, 3, 8, 8)
    ci = {"mean": 0.3, "low": 0.2, "high": 0.4}
    many = {"statistics": {"per_class": {f"c{i}": {"iou": {"value": ci, "null": ci}} for i in range(30)}}}
    return [
        ("eps", "chart", plots.eps_figure(defend)),
        ("area (run)", "chart", plots.tradeoff_figure(run)),
        ("area (defend)", "chart", plots.tradeoff_figure(defend)),
        ("pareto", "chart", plots.pareto_figure(defend)),
        ("class", "chart", plots.class_figure(run)),
        ("per image", "chart", plots.per_image_figure(per_image)),
        ("class atlas", "grid", atlas.class_atlas(arrays, classes, "b")),
        ("attack atlas", "grid", atlas.attack_atlas(arrays, ["a", "b"])),
        ("segment atlas", "grid", atlas.segment_atlas(arrays, classes)),
        ("gallery", "grid", figures.draw_gallery(arrays, classes, ["a", "b"])),
        ("class atlas, 30 classes", "grid", atlas.class_atlas(arrays, [f"class {i}" for i in range(30)], "b")),
        ("segment atlas, 30 classes", "grid", atlas.segment_atlas(arrays, [f"class {i}" for i in range(30)])),
        ("class, 30 classes", "chart", plots.class_figure(many)),
        ("show_maps", "grid", show_maps(x, torch.rand(2, 8, 8), torch.rand(2, 8, 8), torch.randint(0, 4, (2, 8, 8)))),
    ]


def test_every_figure_has_a_title_and_labelled_axes():
    for name, kind, fig in _all_figures():
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert axes, name
        if kind == "chart":
            for ax in axes:
                assert ax.get_title() or suptitle, name
                assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_xlabel(), ax.get_ylabel())
        else:  # a grid of images: a title, every column titled on its first row, every row named on its left
            assert suptitle, name
            axes = [ax for ax in axes if ax.images]  # not the colour bars
            left = min(ax.get_position().x0 for ax in axes)
            top = max(ax.get_position().y1 for ax in axes)
            assert all(ax.get_title() for ax in axes if abs(ax.get_position().y1 - top) < 1e-6), name
            assert all(ax.get_ylabel() for ax in axes if abs(ax.get_position().x0 - left) < 1e-6), name
        from matplotlib import pyplot

        pyplot.close(fig)


def test_no_text_under_10_px_in_the_report_column():
    """Each figure is saved at effective_dpi: a text of s points is s * dpi / 72 px on the page, and the image
    is shown at its own size in the 1,200 px column."""
    from matplotlib import pyplot
    from matplotlib.text import Text

    from roiroa.report.figures import PAGE_PX, effective_dpi

    for name, _, fig in _all_figures():
        dpi = effective_dpi(fig)
        assert fig.get_figwidth() * dpi <= PAGE_PX + 1, name
        fig.canvas.draw()  # tick labels exist once drawn
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        small = {t.get_text() for t in texts if t.get_fontsize() * dpi / 72 < 10}
        assert not small, (name, sorted(small)[:5])
        pyplot.close(fig)


def test_show_maps_on_tensors_and_its_errors():
    import torch

    from roiroa import Segments, show_maps

    x = torch.rand(3, 1, 10, 12)
    imp, vul = torch.randn(3, 10, 12), torch.rand(3, 1, 10, 12)
    seg = Segments(torch.rand(3, 10, 12) > 0.5, torch.rand(3, 10, 12) > 0.5)
    fig = show_maps(x, imp, vul, seg, labels=["cat <i>", "dog", "$x$"])
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 12  # 3 rows: input, I, A, segments
    shown = images[3].images[0].get_array()
    np.testing.assert_array_equal(shown, seg.labels()[0].numpy())  # segments drawn as given
    assert images[1].images[0].get_array().max() == pytest.approx(1.0, abs=1e-12) or (
        images[1].images[0].get_array().min() == pytest.approx(-1.0, abs=1e-12)
    )  # each map scaled to its largest magnitude
    assert len([ax for ax in show_maps(x[:1], imp[:1], vul[:1]).axes if ax.images]) == 3
    with pytest.raises(InputError, match="vulnerability must have shape"):
        show_maps(x, imp, vul[:2])
    with pytest.raises(InputError, match="x must be images"):
        show_maps(x[0], imp, vul)
    with pytest.raises(InputError, match="1 to 32 images"):
        show_maps(torch.rand(40, 1, 4, 4), torch.rand(40, 4, 4), torch.rand(40, 4, 4))
    from matplotlib import pyplot

    pyplot.close("all")


def test_repr_html_of_a_result_is_its_verdict_escaped():
    from roiroa.evaluate.outputs import CommandResult
    from roiroa.results import ResultsFolder

    results = {
        "command": "defend",
        "dataset": {"name": EVIL, "n_test": 100},
        "model": {"name": "m", "test_accuracy": 0.98},
        "attacks": [{"label": EVIL_LABEL, "robust_accuracy": 0.1}],
        "table": _table(),
        "oracle": ORACLE,
    }
    result = CommandResult()
    result.folder = ResultsFolder("defend", results, {})
    page = result._repr_html_()
    assert EVIL not in page and EVIL_LABEL not in page and html_escape(EVIL) in page
    text = "".join(_parse(page).text)
    assert "<script" not in page and "mask" in text and "random" not in text.split("mask")[0]
    assert "20.0% [" in text and "+9.0 pts" in text  # the adaptive cell of 'mask': 20% against 11% (control)
    assert "+20.0 pts" in text  # the oracle gap


def test_report_shows_unknown_parts_and_skips_absent_ones(small_defend, tmp_path):
    """A newer command's fields (a list of records, a mapping, nested lists) are shown escaped by their keys; a
    folder without oracle, sweep and sanity renders without their charts."""
    folder = tmp_path / "newer"
    shutil.copytree(small_defend, folder)
    results = json.loads((folder / "results.json").read_text())
    results["comparisons"] = [{"defence": EVIL, "p_value": 0.0123456, "significant": True}]
    results["certified"] = {"accuracy": 0.5, "method": EVIL_LABEL}
    results["per_attack"] = {"pgd": [{"eps": 0.1, "accuracy": 0.2}]}
    for key in ("oracle", "sweep", "sanity"):
        del results[key]
    (folder / "results.json").write_text(json.dumps(results))
    page = render_report([folder])
    text = "".join(_parse(page).text)
    assert EVIL not in page and EVIL_LABEL not in page
    assert "comparisons" in text and "0.01235" in text and EVIL in text and EVIL_LABEL in text
    assert "per_attack.pgd" in text and "Verdict" in text
    assert page.count("data:image/png") == 0  # no chart without its data
