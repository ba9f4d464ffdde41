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
    assert ".tmp" not in text  # the folder is shown by its final name


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
    assert images == (small_run / "report.html").read_text().count("data:image/png") + 1  # + defence.png
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
    assert [r for r in out["resources"] if not r.startswith("data:")] == []
    headline = _headline_strings(json.loads((small_run / "results.json").read_text()))
    for s in (EVIL, EVIL_LABEL, "one & <b>only</b>", *headline):
        assert s in out["text"], s
    assert "Headline numbers" in out["text"] and "Atlases" in out["text"] and "Defence table" in out["text"]
