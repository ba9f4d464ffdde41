"""The HTML report: one self-contained page for any set of results folders (``run``, ``defend``, ``patches``).

A pure function of the folders' files (config.json, results.json, maps.npz, the figures): no model, no attack.
PNG images are inline data URIs, the CSS is inline, there is no script and no external asset, and a
Content-Security-Policy forbids loading anything else. Every string that comes from the user (class names,
paths, labels, config values) is HTML-escaped.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from roiroa.errors import InputError
from roiroa.report.atlas import attack_atlas, class_atlas, segment_atlas
from roiroa.report.extras import extras_section
from roiroa.report.figures import cached_png, content_key, png_bytes
from roiroa.report.markup import CSP, CSS, ci_text, e, num, pct, png_img, table
from roiroa.report.plots import class_figure, eps_figure, pareto_figure, per_image_figure, tradeoff_figure
from roiroa.report.summary import verdict_section, wrap_verdict
from roiroa.report.tables import terminal_table
from roiroa.results import CONSISTENCY_STATISTICS, DELTA_STATISTICS, MAP_STATISTICS

REPORT_NAME = "report.html"
CONSISTENCY_KINDS = {"restarts": "two random starts", "seeds": "models of other seeds (mean)"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"cannot read {path} ({err.strerror}): is this a roiroa run folder?") from None
    except ValueError as err:
        raise InputError(f"{path} is not valid JSON ({err}): the run folder is damaged; run again.") from None


# --------------------------------------------------------------------------------------------- sections


def data_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The data and model of any results folder."""
    d, m = results["dataset"], results["model"]
    provenance = {
        "trained": "trained by roiroa",
        "weights": "loaded from a weights file",
        "in-memory": "given in memory",
    }
    rows = [
        ("dataset", e(d["name"])),
        ("source", e(d["source"])),
        ("classes", e(", ".join(str(c) for c in d["classes"]))),
        ("image shape (C, H, W)", e(" x ".join(str(s) for s in d["image_shape"]))),
        ("images: train / fit / test", f"{d['n_train']} / {d['n_fit']} / {d['n_test']}"),
        ("model", e(m["name"]) + f" ({e(provenance.get(m['source'], m['source']))}, {m['parameters']:,} parameters)"),
        ("clean test accuracy", pct(m["test_accuracy"])),
        ("checkpoint", e(m.get("checkpoint") or "-") + (" (from cache)" if m.get("from_cache") else "")),
        ("seed, device, quick", e(f"{results['seed']}, {results['device']}, {results['quick']}")),
        ("versions", e(", ".join(f"{k} {v}" for k, v in results["versions"].items()))),
    ]
    if m.get("warning"):
        rows.append(("warning", f'<span class="absent">{e(m["warning"])}</span>'))
    return rows


def setup_section(config: dict[str, Any], results: dict[str, Any]) -> str:
    rows = data_rows(results)
    if results["command"] == "run":
        rows.append(("importance I", e(results["maps"]["importance"]["method"])))
        rows.append(("RoI / RoA", e(_isolation_text(results))))
    attacks = table(
        ["attack", "parameters"] + (["RoA map read from"] if results["command"] == "run" else []),
        (
            [e(a["label"]), e(", ".join(f"{k}={v}" for k, v in a["params"].items() if k not in ("batch_size",)))]
            + ([e(a["reading"])] if "reading" in a else [])
            for a in results["attacks"]
        ),
    )
    return (
        "<h2>Setup</h2>"
        + table(["", ""], rows, left=2)
        + "<p>Attacks:</p>"
        + attacks
        + f"<details><summary>config.json (repeat with <code>roiroa {e(results['command'])} "
        + "--config config.json</code>)"
        + f"</summary><pre>{e(json.dumps(config, indent=2))}</pre></details>"
    )


def _isolation_text(results: dict[str, Any]) -> str:
    r = results["regions"]
    return f"threshold {r['threshold']}; top-q fractions q_roi = {r['q_roi']}, q_roa = {r['q_roa']}"


def headline_section(results: dict[str, Any]) -> str:
    stats = results.get("statistics", {}).get("per_attack", {}).get("all", {})
    cards = [("clean accuracy of f", pct(results["model"]["test_accuracy"]), "")]
    for a in results["attacks"]:
        cards.append((f"robust accuracy under {e(a['label'])}", pct(a["robust_accuracy"]), "undefended f"))
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


def gallery_section(folder: Path, results: dict[str, Any]) -> str:
    path = folder / "examples.png"
    intro = (
        "<p>Each row is one test image. <b>Importance I</b> (where the model looks) with the "
        "<b>Region of Importance (RoI)</b>, its top positions, outlined in cyan; the <b>RoA map A</b> (where the "
        "attacks act) with the <b>Region of Attack (RoA)</b> outlined in green; the <b>four segments</b>: "
        "S_IA = RoI and RoA (critical and vulnerable), S_I = RoI only (critical, safe), S_A = RoA only "
        "(vulnerable but not needed: the one the defence blocks), S_0 = neither; then, for every attack, the "
        "attacked image, it neutralized with the global mask, and with its own S_A (an oracle that knows the "
        "attack). "
        "Predictions in green are right, in red wrong.</p>"
    )
    if not path.exists():
        return ""
    return "<h2>Gallery of examples</h2>" + intro + png_img(path.read_bytes(), "examples: input, RoI, RoA, segments")


def _draw_png(draw: Callable[[], Any]) -> bytes:
    return png_bytes(draw())


def atlas_section(folder: Path, results: dict[str, Any]) -> str:
    path = folder / "maps.npz"
    if not path.exists():
        return ""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path} is damaged ({err}): run the command again to write it anew.") from None
    classes = [str(c) for c in results["dataset"]["classes"]]
    attacks = [a["label"] for a in results["attacks"]]
    strongest = min(results["attacks"], key=lambda a: a["robust_accuracy"])["label"]
    used = [k for k in sorted(arrays) if not k.startswith(("gallery", "pred"))]
    key = content_key("atlases", classes, attacks, strongest, used, *(arrays[k] for k in used))
    figures = [
        (
            "Per class",
            f"Mean and standard deviation over the test images of each class of I, A and the perturbation |δ| of "
            f"{e(strongest)} (the strongest attack). One colour scale per row.",
            lambda: class_atlas(arrays, classes, strongest),
        ),
        (
            "Per attack",
            "Mean and standard deviation of A and |δ| for every attack, each map first scaled to unit mean per "
            "image (attacks differ in units): where each attack acts, not how strongly.",
            lambda: attack_atlas(arrays, attacks),
        ),
        (
            "Segment frequency",
            "For each segment, the share of test images in which a position falls in it (0 to 1, one scale); "
            "the four rows of a column sum to 1 at every position.",
            lambda: segment_atlas(arrays, classes),
        ),
    ]
    parts = []
    for i, (title, words, draw) in enumerate(figures):
        image = cached_png(f"{key}-{i}", partial(_draw_png, draw))
        parts.append(f"<h3>{title}</h3><p>{words}</p>{png_img(image, title)}")
    return "<h2>Atlases</h2>" + "".join(parts)


def statistics_section(results: dict[str, Any]) -> str:
    st = results.get("statistics")
    if not st:
        return ""
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
    header = ["statistic", "meaning"] + [e(label if label != "all" else "the run's RoA map") for label in labels]
    parts = ["<h2>Statistics</h2>", intro, "<h3>RoI and RoA, per attack</h3>", table(header, rows, left=2)]
    words = {"attacks": "two attacks", "restarts": "another random start", "seeds": "models of other seeds (mean)"}
    cons_rows = [
        [
            e(kind),
            e(pair.replace("|", " vs ") if kind == "attacks" else f"{pair}: {words[kind]}"),
            ci_text(s["value"]),
            f'<span class="null">{ci_text(s["null"])}</span>',
        ]
        for kind, entries in st["consistency"].items()
        for pair, s in entries.items()
    ]
    parts.append("<h3>Consistency of the RoA</h3>")
    parts.append(
        "<p>IoU of the RoA masks of two attacks on the same image; of an attack and a second run of it from "
        "another random start; of an attack on the run's model and on models trained with other seeds.</p>"
    )
    parts.append(table(["across", "which", "IoU", "null"], cons_rows, left=2))
    parts.append("<h3>Per class (the run's RoA map)</h3>" + class_table(st["per_class"]))
    glossary = {**MAP_STATISTICS, **DELTA_STATISTICS, **CONSISTENCY_STATISTICS}
    parts.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in glossary.items()) + "</dl>")
    return "".join(parts)


def class_table(per_class: dict[str, Any]) -> str:
    """The per-class statistics: one row per class, each statistic with its interval and its null."""
    names = [k for k in (*MAP_STATISTICS, *CONSISTENCY_STATISTICS) if any(k in v for v in per_class.values())]
    rows = [
        [e(c)]
        + [
            f'{ci_text(v[k]["value"])}<br><span class="null">{ci_text(v[k]["null"])}</span>' if k in v else "&ndash;"
            for k in names
        ]
        for c, v in per_class.items()
    ]
    return table(["class"] + [e(k) for k in names], rows)


def grid_table(rows: list[dict[str, Any]]) -> str:
    """A robustness table: defence, kind, setting, attack, accuracy with its 95% interval, n, area."""
    return table(
        ["defence", "kind", "setting", "attack", "accuracy", "95% interval", "images", "area", "how the attack ran"],
        (
            [
                e(r["defence"]),
                e(r["kind"]),
                e(r["setting"]),
                e(r["attack"]),
                pct(r["accuracy"]),
                f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]",
                e(r["n_images"]),
                pct(r.get("area")),
                e(r["attack_params"]),
            ]
            for r in rows
        ),
        left=4,
    )


def oracle_table(rows: list[dict[str, Any]]) -> str:
    return table(
        ["attack", "q_roa", "accuracy", "clean accuracy", "random mask", "area", "images"],
        (
            [
                e(r["attack"]),
                e(r["q_roa"]),
                pct(r["accuracy"]),
                pct(r["clean_accuracy"]),
                pct(r["random_mask_accuracy"]),
                pct(r["area"]),
                e(r["n_images"]),
            ]
            for r in rows
        ),
    )


def terminal_section(results: dict[str, Any], opened: bool = False) -> str:
    """The table the command printed in the terminal, as it printed it."""
    command = e(results["command"])
    return (
        f"<details{' open' if opened else ''}><summary>The table <code>roiroa {command}</code> printed</summary>"
        f"<pre>{e(terminal_table(results))}</pre></details>"
    )


def run_defence_section(results: dict[str, Any]) -> str:
    parts = [
        "<h2>Defence</h2><p>Robust accuracy on the test images: an image counts only if the model is right on the "
        "clean and on the attacked image. none: the undefended f; global: f&#8728;N with the global mask S_A; "
        "random[global]: a random mask of the same area (the control); non-adaptive: the attack crafted on f; "
        "adaptive: crafted through the defence; worst-case: per image over every attack.</p>",
        terminal_section(results, opened=True),
        grid_table(results["defence"]),
    ]
    if results.get("defence_short"):
        parts += [
            "<h3>Other defences (short form; <code>roiroa defend</code> has the full table)</h3>",
            grid_table(results["defence_short"]),
        ]
    if results.get("oracle"):
        parts += [
            "<h3>Oracle analysis</h3><p>Each image's own S_A from the known attack: it needs the attack, so it is an "
            "analysis, not a defence.</p>",
            oracle_table(results["oracle"]),
        ]
    return "".join(parts)


def defend_section(folder: Path, results: dict[str, Any]) -> str:
    parts = [
        f"<h2>Defence table ({results['n_test']} test images)</h2>",
        "<p>Every defence on the same model, attacks and images; each accuracy with its 95% Wilson interval.</p>",
        grid_table(results["table"]),
        terminal_section(results),
    ]
    if results.get("oracle"):
        parts += ["<h3>Oracle analysis</h3>", oracle_table(results["oracle"])]
    sanity = results.get("sanity", [])
    if sanity:
        eps = sanity[0]["eps"]
        parts.append(f"<h3>Sanity check: adaptive robust accuracy against eps ({results['n_sanity']} images)</h3>")
        parts.append(
            table(
                ["defence", *(f"eps {x:g}" for x in eps), "falls", "unbounded ~0"],
                (
                    [
                        e(r["defence"]),
                        *(pct(a) for a in r["accuracy"]),
                        e(r["falls"]),
                        e(r["unbounded_accuracy"] <= 0.05),
                    ]
                    for r in sanity
                ),
            )
        )
    parts += [f'<p class="note">{e(n)}</p>' for n in results.get("notes", [])]
    return "".join(parts)


def patches_section(folder: Path, results: dict[str, Any]) -> str:
    rows = results["table"]
    parts = [f"<h2>Patch attacks ({results['n_test']} test images)</h2>", grid_table(rows), terminal_section(results)]
    if (folder / "patches.png").exists():
        parts.append(png_img((folder / "patches.png").read_bytes(), "accuracy against patch area"))
    return "".join(parts)


def files_section(folder: Path, results: dict[str, Any], shown: str) -> str:
    names = sorted({p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} | {REPORT_NAME})
    timings = ", ".join(f"{e(k)} {v:.1f} s" for k, v in results.get("timings", {}).items())
    return (
        f"<h3>Files and timings</h3><p>Folder: <code>{e(shown)}</code>: {e(', '.join(names))}</p>"
        f'<p class="note">time per stage: {timings}</p>'
    )


def _per_image_rows(folder: Path) -> list[dict[str, str]]:
    """per_image.csv's rows of the run's RoA map (attack 'all'); none when the file is absent."""
    path = folder / "per_image.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("attack") == "all"]


def chart(key: str, draw: Callable[[], Any], alt: str) -> str:
    """A chart as an inline PNG, drawn once per content (the figure cache)."""
    return png_img(cached_png(key, partial(_draw_png, draw)), alt)


def figures_section(folder: Path, results: dict[str, Any]) -> str:
    """The charts of a folder that has their data: accuracy against eps, accuracy against blocked area, the
    sweep's Pareto front, per-class statistics, per-image statistics against the null."""
    rows = _per_image_rows(folder)
    per_class = (results.get("statistics") or {}).get("per_class")
    candidates = [
        ("eps", results.get("sanity"), eps_figure, EPS_WORDS),
        ("area", results.get("oracle") or results.get("sweep"), tradeoff_figure, AREA_WORDS),
        ("pareto", results.get("sweep"), pareto_figure, PARETO_WORDS),
        ("class", per_class, class_figure, CLASS_WORDS),
    ]
    parts = []
    for name, data, draw, words in candidates:
        if data:
            key = content_key("chart", name, data, results.get("defence"), results.get("table"))
            parts.append(f"<p>{words}</p>" + chart(key, partial(draw, results), name))
    if rows:
        key = content_key("chart", "per-image", rows)
        parts.append(f"<p>{PER_IMAGE_WORDS}</p>" + chart(key, partial(per_image_figure, rows), "per image"))
    return "<h2>Figures</h2>" + "".join(parts) if parts else ""


EPS_WORDS = (
    "Adaptive robust accuracy against the attack's budget eps, per defence: a sound evaluation sees it fall, "
    "and reach about 0 at an unbounded eps; a curve that stays up points at gradient masking, not robustness."
)
AREA_WORDS = (
    "The trade-off the method is about: robust accuracy against the blocked fraction of the image. Solid: "
    "the oracle (each image's own S_A from the known attack, over q_roa); dotted: a random mask of the same "
    "area; dots: the mask sweep under the adaptive attack with its Pareto front; stars: the table's masking "
    "defences, crosses: their equal-area controls, under each attack crafted on f (in that attack's colour) "
    "and in the worst case over attacks (black)."
)
PARETO_WORDS = "Every mask setting of the sweep: clean accuracy against adaptive robust accuracy, with the front."
CLASS_WORDS = (
    "Per class: how much the RoI and the RoA overlap (IoU) and how I and A are ranked alike (Spearman), with "
    "95% intervals, beside the null (A shuffled over positions)."
)
PER_IMAGE_WORDS = "Per test image, the same two statistics against their null: the distribution, not only the mean."


def load_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results.json, config.json) of a results folder, checked to be one of this version's commands."""
    results, config = _read_json(folder / "results.json"), _read_json(folder / "config.json")
    command = results.get("command") if isinstance(results, dict) else None
    if command not in ("run", "defend", "patches"):
        raise InputError(f"{folder}/results.json is not a roiroa results file of this version: run the command again.")
    return results, config


def guarded(folder: Path, draw: Callable[[], str]) -> str:
    """``draw()``, with a damaged results.json (a key missing, a value of the wrong type) as one InputError."""
    try:
        return draw()
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise InputError(
            f"{folder}/results.json is damaged ({type(err).__name__}: {err}): run the command again."
        ) from None


def folder_sections(folder: Path, shown: str, results: dict[str, Any], config: dict[str, Any]) -> str:
    """The sections of one results folder."""
    command = results["command"]
    head = f"<h1>roiroa {e(command)}: {e(results['dataset']['name'])}, {e(results['model']['name'])}</h1>"
    body = [head, f'<p class="note">Folder <code>{e(shown)}</code></p>', setup_section(config, results)]
    if command == "run":
        body += [
            headline_section(results),
            gallery_section(folder, results),
            atlas_section(folder, results),
            statistics_section(results),
            figures_section(folder, results),
            run_defence_section(results),
        ]
    elif command == "defend":
        body += [figures_section(folder, results), defend_section(folder, results)]
    else:
        body.append(patches_section(folder, results))
    return "".join(body) + extras_section(results) + files_section(folder, results, shown)


# --------------------------------------------------------------------------------------------- the page


def render_report(folders: Sequence[str | Path], shown_as: Sequence[str] | None = None) -> str:
    """One self-contained HTML page for the results folders (a string): the verdict first, then each folder."""
    paths = [Path(f) for f in folders]
    for path in paths:
        if not path.is_dir():
            raise InputError(
                f"results folder {path} does not exist: give a folder that roiroa run, defend or patches wrote."
            )
    shown = list(shown_as) if shown_as is not None else [str(p.resolve()) for p in paths]
    loaded = [load_folder(p) for p in paths]
    intro = (
        '<h1>roiroa report</h1><p class="note intro">Where the model looks (Region of Importance, RoI), where '
        "attacks act (Region of Attack, RoA), how the two line up over the dataset, and what blocking "
        "S_A = RoA minus RoI buys.</p>"
    )
    verdicts = "".join(
        guarded(p, partial(verdict_section, [(r, name)])) for p, (r, _), name in zip(paths, loaded, shown, strict=True)
    )
    sections = "".join(
        guarded(p, partial(folder_sections, p, name, r, c))
        for p, (r, c), name in zip(paths, loaded, shown, strict=True)
    )
    title = "roiroa report: " + ", ".join(shown)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>{intro}{wrap_verdict(verdicts)}{sections}"
        "</body></html>\n"
    )


def write_report(folders: Sequence[str | Path], path: str | Path, shown_as: Sequence[str] | None = None) -> Path:
    """Write the report of ``folders`` to ``path`` (atomically: a temporary name, then a rename)."""
    path = Path(path)
    page = render_report(folders, shown_as)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path} ({err.strerror}): choose a writable place for the report.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
