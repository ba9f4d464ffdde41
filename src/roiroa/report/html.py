"""The HTML report of a run folder: one self-contained file, report.html.

Everything comes from the run folder alone (config.json, results.json, maps.npz, examples.png and,
where present, the defence files): PNG images are inline data URIs, the CSS is inline, there is no
script and no external asset, and a Content-Security-Policy forbids loading anything else. Every
string that comes from the user (class names, paths, labels, config values) is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roiroa.errors import InputError
from roiroa.evaluate.dataset_statistics import CONSISTENCY_STATISTICS, DELTA_STATISTICS, MAP_STATISTICS
from roiroa.report.atlas import attack_atlas, class_atlas, figure_png, segment_atlas

REPORT_NAME = "report.html"
CONSISTENCY_KINDS = {"restarts": "two random starts", "seeds": "models of other seeds (mean)"}
DEFENCE_FILES = ("defence.csv", "defence.json", "defence.png")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; } td { white-space: nowrap; } td.l { white-space: normal; }
.wide { overflow-x: auto; }
.null { color: #777; } .note { color: #555; font-size: .9em; } .absent { color: #a33; }
.headline { display: flex; flex-wrap: wrap; gap: .8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 12em; }
.card .v { font-size: 1.5em; font-weight: 600; } .card .k { color: #555; font-size: .85em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
dt { font-weight: 600; } dd { margin: 0 0 .5em 1.5em; }
"""


def e(value: Any) -> str:
    """Any value as escaped HTML text (quotes too)."""
    return html.escape(str(value), quote=True)


def pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def ci_text(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """'mean [low, high]' of a bootstrap_ci dict."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("low") is None:
        return num(stat["mean"], digits)
    return f"{num(stat['mean'], digits)} [{num(stat['low'], digits)}, {num(stat['high'], digits)}]"


def png_img(data: bytes, alt: str) -> str:
    """An <img> with the PNG inline as a base64 data URI."""
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """An HTML table; header and cells are already-escaped HTML; the first ``left`` columns align left."""

    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"cannot read {path} ({err.strerror}): is this a roiroa run folder?") from None
    except ValueError as err:
        raise InputError(f"{path} is not valid JSON ({err}): the run folder is damaged; run again.") from None


# --------------------------------------------------------------------------------------------- sections


def setup_section(config: dict[str, Any], results: dict[str, Any]) -> str:
    d, m = results["dataset"], results["model"]
    data_rows = [
        ("dataset", e(d["name"])),
        ("source", e(d["source"])),
        ("classes", e(", ".join(str(c) for c in d["classes"]))),
        ("image shape (C, H, W)", e(" x ".join(str(s) for s in d["image_shape"]))),
        ("images: train / fit / test", f"{d['n_train']} / {d['n_fit']} / {d['n_test']}"),
        ("model", e(m["name"])),
        ("parameters", f"{m['parameters']:,}"),
        ("clean test accuracy", pct(m["test_accuracy"])),
        ("checkpoint", e(m["checkpoint"]) + (" (from cache)" if m.get("from_cache") else " (trained in this run)")),
        ("importance I", e(results["maps"]["importance"]["method"])),
        ("RoI / RoA", e(_isolation_text(results))),
        ("seed", e(results["seed"])),
        ("device", e(results["device"])),
        ("quick", e(results["quick"])),
        ("versions", e(", ".join(f"{k} {v}" for k, v in results["versions"].items()))),
    ]
    attacks = table(
        ["attack", "norm", "eps", "steps", "random start", "restarts"],
        (
            (
                e(label),
                e(a["params"].get("norm")),
                e(a["params"].get("eps")),
                e(a["params"].get("steps")),
                e(a["params"].get("random_start")),
                e(a["params"].get("restarts")),
            )
            for label, a in results["attacks"].items()
        ),
    )
    vuln = results["maps"]["vulnerability"]["per_attack"]
    return (
        "<h2>Setup</h2>"
        + table(["", ""], data_rows, left=2)
        + "<p>Attacks (vulnerability A of each: "
        + e(", ".join(f"{k}: {v}" for k, v in vuln.items()))
        + "; the RoA of the run is the mean of the attacks' maps, each at unit mean):</p>"
        + attacks
        + "<details><summary>config.json (repeat the run with <code>roiroa run --config config.json</code>)"
        + f"</summary><pre>{e(json.dumps(config, indent=2))}</pre></details>"
    )


def _isolation_text(results: dict[str, Any]) -> str:
    top = results["regions"]["overlap"]["top_q"]
    threshold = results["regions"]["segments"]["threshold"]
    return f"threshold {threshold}; top-q fractions q_roi = {top['q_roi']}, q_roa = {top['q_roa']}"


def headline_section(results: dict[str, Any]) -> str:
    stats = results.get("statistics", {}).get("per_attack", {}).get("all", {})
    cards = [("clean accuracy of f", pct(results["model"]["test_accuracy"]), "")]
    for label, a in results["attacks"].items():
        cards.append((f"robust accuracy under {e(label)}", pct(a["robust_accuracy"]), "undefended f"))
    for key, title in (
        ("iou", "IoU of RoI and RoA"),
        ("spearman", "Spearman of I and A"),
        ("moran_a", "Moran's I of A"),
    ):
        if key in stats:
            s = stats[key]
            cards.append(
                (title, num(s["value"]["mean"]), f"95% CI {ci_text(s['value'])}; null {num(s['null']['mean'])}")
            )
    body = "".join(
        f'<div class="card"><div class="k">{t}</div><div class="v">{v}</div><div class="note">{n}</div></div>'
        for t, v, n in cards
    )
    return f'<h2>Headline numbers</h2><div class="headline">{body}</div>'


def gallery_section(run_dir: Path, results: dict[str, Any]) -> str:
    path = run_dir / "examples.png"
    intro = (
        "<p>Each row is one test image. <b>Importance I</b> (where the model looks) with the "
        "<b>Region of Importance (RoI)</b>, its top positions, outlined in cyan; <b>vulnerability A</b> (where the "
        "attacks act) with the <b>Region of Attack (RoA)</b> outlined in green; the <b>four segments</b>: "
        "S_IA = RoI and RoA (critical and vulnerable), S_I = RoI only (critical, safe), S_A = RoA only "
        "(vulnerable but not needed: the one the defence blocks), S_0 = neither; then the attacked image, the "
        "image neutralized with the global mask, and with its own S_A (an oracle that knows the attack). "
        "Predictions in green are right, in red wrong.</p>"
    )
    if not path.exists():
        return "<h2>Gallery of examples</h2>" + intro + '<p class="absent">examples.png is absent from this run.</p>'
    return "<h2>Gallery of examples</h2>" + intro + png_img(path.read_bytes(), "examples: input, RoI, RoA, segments")


def atlas_section(run_dir: Path, results: dict[str, Any]) -> str:
    path = run_dir / "maps.npz"
    if not path.exists():
        return '<h2>Atlases</h2><p class="absent">maps.npz is absent: no atlases.</p>'
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    classes = [str(c) for c in results["dataset"]["classes"]]
    attacks = list(results["attacks"])
    strongest = min(attacks, key=lambda a: results["attacks"][a]["robust_accuracy"])
    figures = [
        (
            "Per class",
            f"Mean and standard deviation over the test images of each class of I, A and the perturbation |δ| of "
            f"{e(strongest)} (the strongest attack). One colour scale per row.",
            class_atlas(arrays, classes, strongest),
        ),
        (
            "Per attack",
            "Mean and standard deviation of A and |δ| for every attack, each map first scaled to unit mean per "
            "image (attacks differ in units): where each attack acts, not how strongly.",
            attack_atlas(arrays, attacks),
        ),
        (
            "Segment frequency",
            "For each segment, the share of test images in which a position falls in it (0 to 1, one scale); "
            "the four rows of a column sum to 1 at every position.",
            segment_atlas(arrays, classes),
        ),
    ]
    parts = [f"<h3>{t}</h3><p>{text}</p>{png_img(figure_png(fig), t)}" for t, text, fig in figures]
    return "<h2>Atlases</h2>" + "".join(parts)


def statistics_section(results: dict[str, Any]) -> str:
    st = results.get("statistics")
    if not st:
        return '<h2>Statistics</h2><p class="absent">This run has no dataset statistics (made by an older roiroa).</p>'
    m = st["method"]
    intro = (
        f"<p>Each number is the mean over test images with its {e(m['interval'])} in brackets "
        f'({m["bootstrap_resamples"]} resamples). <span class="null">Grey: the null</span>, the same statistic '
        f"with A (or |δ|) shuffled over positions in each image: what the number would be if there were no "
        f"spatial pattern. RoI and RoA: {e(m['threshold'])}, q_roi = {e(m['q_roi'])}, q_roa = {e(m['q_roa'])}; "
        f"Moran's I with {e(m['contiguity'])} contiguity.</p>"
    )
    labels = list(st["per_attack"])
    rows = []
    for stat, meaning in {**MAP_STATISTICS, **DELTA_STATISTICS}.items():
        cells = [e(stat), e(meaning)]
        for label in labels:
            s = st["per_attack"][label].get(stat)
            cells.append(f'{ci_text(s["value"])}<br><span class="null">{ci_text(s["null"])}</span>' if s else "&ndash;")
        rows.append(cells)
    header = ["statistic", "meaning"] + [e(label if label != "all" else "all (mean A)") for label in labels]
    parts = ["<h2>Statistics</h2>", intro, "<h3>RoI and RoA, per attack</h3>", table(header, rows, left=2)]
    cons_rows = []
    missing = {
        "restarts": "not computed (statistics.restarts = false, or no attack with a random start)",
        "seeds": "not computed (statistics.seed_models = 0: no model trained with another seed)",
    }
    for kind in ("attacks", "restarts", "seeds"):
        entries = st["consistency"].get(kind, {})
        for pair, s in entries.items():
            which = pair.replace("|", " vs ") if kind == "attacks" else f"{pair}: {CONSISTENCY_KINDS[kind]}"
            cons_rows.append(
                [e(kind), e(which), ci_text(s["value"]), f'<span class="null">{ci_text(s["null"])}</span>']
            )
        if not entries and kind in missing:
            cons_rows.append([e(kind), f'<span class="absent">{e(missing[kind])}</span>', "", ""])
    parts.append("<h3>Consistency of the RoA</h3>")
    parts.append(
        "<p>IoU of the RoA masks of two attacks on the same image; of an attack and a second run of it from "
        "another random start; of an attack on the run's model and on models trained with other seeds.</p>"
    )
    parts.append(table(["across", "which", "IoU", "null"], cons_rows, left=2))
    class_stats = [
        k
        for k in (
            "iou",
            "share_roa_in_roi",
            "spearman",
            "pointing_game",
            "relevance_mass",
            "moran_a",
            *CONSISTENCY_STATISTICS,
        )
        if any(k in v for v in st["per_class"].values())
    ]
    class_rows = [
        [e(c)]
        + [
            f'{ci_text(v[k]["value"])}<br><span class="null">{ci_text(v[k]["null"])}</span>' if k in v else "&ndash;"
            for k in class_stats
        ]
        for c, v in st["per_class"].items()
    ]
    parts.append("<h3>Per class (mean A of all attacks)</h3>")
    parts.append(table(["class"] + [e(k) for k in class_stats], class_rows))
    glossary = {**MAP_STATISTICS, **DELTA_STATISTICS, **CONSISTENCY_STATISTICS}
    parts.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in glossary.items()) + "</dl>")
    return "".join(parts)


def defence_section(run_dir: Path, results: dict[str, Any]) -> str:
    parts = ["<h2>Defence</h2>"]
    rows = results.get("defence", [])
    if rows:
        parts.append(
            "<p>Robust accuracy on the test images. f: undefended; f&#8728;N: the global-mask neutralization, attack "
            "crafted on f (non-adaptive) or through f&#8728;N (adaptive); random: a random mask of the same area "
            "(the control).</p>"
        )
        cols = [
            ("undefended_accuracy", "f"),
            ("clean_accuracy", "f&#8728;N clean"),
            ("nonadaptive_accuracy", "f&#8728;N"),
            ("adaptive_accuracy", "f&#8728;N adaptive"),
            ("random_mask_accuracy", "random"),
            ("random_mask_adaptive_accuracy", "random adaptive"),
            ("area", "area"),
        ]
        parts.append(
            table(
                ["attack", "mask", "fill"] + [h for _, h in cols],
                ([e(r["attack"]), e(r.get("mask")), e(r.get("fill"))] + [pct(r.get(k)) for k, _ in cols] for r in rows),
                left=3,
            )
        )
    oracle = results.get("oracle", [])
    if oracle:
        parts.append(
            "<p>Oracle analysis (each image's own S_A from the known attack; not a defence):</p>"
            + table(
                ["attack", "q_roa", "accuracy", "clean accuracy", "random mask", "area"],
                (
                    [
                        e(r["attack"]),
                        e(r["q_roa"]),
                        pct(r["accuracy"]),
                        pct(r["clean_accuracy"]),
                        pct(r["random_mask_accuracy"]),
                        pct(r["area"]),
                    ]
                    for r in oracle
                ),
            )
        )
    parts.append(defence_files_section(run_dir))
    return "".join(parts)


def defence_files_section(run_dir: Path) -> str:
    """defence.csv / defence.json / defence.png of the defence evaluation, where the run folder has them."""
    present = [name for name in DEFENCE_FILES if (run_dir / name).exists()]
    if not present:
        return (
            '<h3>Defence evaluation files</h3><p class="absent">The defence evaluation (defence.csv, defence.json, '
            "defence.png) is absent from this run folder.</p>"
        )
    parts = ["<h3>Defence evaluation files</h3>"]
    if (run_dir / "defence.csv").exists():
        with (run_dir / "defence.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            parts.append(table([e(h) for h in rows[0]], ([e(c) for c in r] for r in rows[1:])))
    if (run_dir / "defence.png").exists():
        parts.append(png_img((run_dir / "defence.png").read_bytes(), "defence"))
    if (run_dir / "defence.json").exists():
        parts.append(
            f"<details><summary>defence.json</summary><pre>{e((run_dir / 'defence.json').read_text())}</pre></details>"
        )
    return "".join(parts)


def files_section(run_dir: Path, results: dict[str, Any]) -> str:
    names = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    timings = ", ".join(f"{e(k)} {v:.1f} s" for k, v in results.get("timings", {}).items())
    return (
        "<h2>Files and timings</h2><p>Run folder: <code>"
        + e(run_dir.resolve())
        + "</code></p><p>"
        + e(", ".join(names + ([REPORT_NAME] if REPORT_NAME not in names else [])))
        + f'</p><p class="note">time per stage: {timings}</p>'
    )


# --------------------------------------------------------------------------------------------- the page


def render_report(run_dir: str | Path) -> str:
    """The report of a run folder as one self-contained HTML page (a string)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run folder {run_dir} does not exist: give the folder that `roiroa run` wrote.")
    results = _read_json(run_dir / "results.json")
    config = _read_json(run_dir / "config.json")
    title = f"roiroa report: {results['dataset']['name']}, {results['model']['name']}"
    body = "".join(
        [
            f"<h1>{e(title)}</h1>",
            '<p class="note">Where the model looks (Region of Importance, RoI), where attacks act (Region of '
            "Attack, RoA), how the two line up over the dataset, and what blocking S_A = RoA minus RoI buys.</p>",
            setup_section(config, results),
            headline_section(results),
            gallery_section(run_dir, results),
            atlas_section(run_dir, results),
            statistics_section(results),
            defence_section(run_dir, results),
            files_section(run_dir, results),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically: a temporary name, then a rename) and return its path."""
    run_dir = Path(run_dir)
    page = render_report(run_dir)
    tmp = run_dir / f".{REPORT_NAME}.{os.getpid()}.tmp"  # beside the target: the rename is atomic
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, run_dir / REPORT_NAME)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"cannot write {run_dir / REPORT_NAME} ({err.strerror}): copy the folder somewhere writable."
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return run_dir / REPORT_NAME
