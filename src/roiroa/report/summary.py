"""The verdict at the top of the report: for each defence of each folder, in words and numbers, its robust
accuracy against its equal-area random control and against the undefended model (non-adaptive, adaptive,
worst case) with 95% intervals, and the oracle gap. Built from :mod:`roiroa.report.verdict`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from roiroa.report.markup import e, pct, table
from roiroa.report.verdict import Comparison, Difference, Estimate, Verdict, tables_of

SETTING_WORDS = {
    "clean": "clean images",
    "non-adaptive": "the attack crafted on the undefended model",
    "adaptive": "the attack crafted through the defence",
    "worst-case": "the worst case over every attack",
}


def interval(x: Estimate | None) -> str:
    """'12.5% [9.1, 17.0]' (escaped HTML; the interval in percent)."""
    if x is None:
        return "n/a"
    return f"{pct(x.accuracy)} <span class=small>[{100 * x.low:.1f}, {100 * x.high:.1f}]</span>"


def points(d: Difference) -> str:
    """'+3.2 pts [-1.0, +7.4]' in its word's colour (escaped HTML)."""
    return (
        f'<span class="{d.word}">{100 * d.value:+.1f} pts</span> '
        f"<span class=small>[{100 * d.low:+.1f}, {100 * d.high:+.1f}]</span>"
    )


def cell(c: Comparison | None) -> str:
    """One setting: the defence's accuracy, then its control's and the undefended model's with the differences."""
    if c is None:
        return "&ndash;"
    attack = "" if c.attack in ("none", "all") else f" <span class=small>{e(c.attack)}</span>"
    lines = [f"<b>{interval(c.defence)}</b>{attack}"]
    if c.control is not None and c.vs_control is not None:
        lines.append(f"control {pct(c.control.accuracy)}: {points(c.vs_control)}")
    if c.undefended is not None and c.vs_undefended is not None:
        lines.append(f"f {pct(c.undefended.accuracy)}: {points(c.vs_undefended)}")
    return "<br>".join(lines)


def _setting(v: Verdict, setting: str) -> Comparison | None:
    return next((c for c in v.comparisons if c.setting == setting), None)


def verdict_row(v: Verdict) -> list[str]:
    gap = (
        "&ndash;"
        if v.oracle is None
        else f"<b>{100 * v.oracle.gap:+.1f} pts</b><br><span class=small>{pct(v.oracle.accuracy)} at "
        f"{pct(v.oracle.area)}</span>"
    )
    n = v.clean.defence.n if v.clean is not None else (v.comparisons[0].defence.n if v.comparisons else 0)
    blocks = "" if v.area is None else f"; blocks {pct(v.area)}"
    name = f"<b>{e(v.defence)}</b><br><span class=small>{e(v.kind)}{blocks}<br>{n} images</span>"
    settings = (cell(_setting(v, s)) for s in ("non-adaptive", "adaptive", "worst-case"))
    return [name, cell(v.clean), *settings, gap]


def verdict_table(found: Sequence[Verdict]) -> str:
    """One row per defence; the oracle gap column only where some defence has one."""
    header = ["defence", "clean", "non-adaptive", "adaptive", "worst case", "oracle gap"]
    keep = len(header) if any(v.oracle is not None for v in found) else len(header) - 1
    return table(header[:keep], (verdict_row(v)[:keep] for v in found))


SHORT_SETTING = {"non-adaptive": "Non-adaptive", "adaptive": "Adaptive", "worst-case": "Worst case over attacks"}


def _compared(c: Comparison) -> str:
    """'indistinguishable from its control (8.5%, -2.0 pts [..]) and above f (..)' for one setting."""
    out = []
    for name, x, d in (
        ("its equal-area random control", c.control, c.vs_control),
        ("the undefended model f", c.undefended, c.vs_undefended),
    ):
        if x is not None and d is not None:
            word = {"better": "above", "worse": "below", "indistinguishable": "indistinguishable from"}[d.word]
            out.append(f"<span class={d.word}>{word}</span> {name} ({pct(x.accuracy)}; {points(d)})")
    return " and ".join(out) if out else "nothing to compare it to"


def sentence(v: Verdict) -> str:
    """The verdict on one defence in words, with its numbers: one line per setting, then the oracle gap."""
    blocks = "" if v.area is None else f" blocks {pct(v.area)} of the image"
    items = []
    for c in v.comparisons:
        attack = "" if c.attack in ("none", "all") else f" ({e(c.attack)})"
        items.append(f"<li>{SHORT_SETTING[c.setting]}{attack}: {interval(c.defence)}, {_compared(c)}.</li>")
    if v.oracle is not None:
        o = v.oracle
        items.append(
            f"<li>Oracle gap: <b>{100 * o.gap:+.1f} pts</b>: the oracle, which knows the attack, keeps "
            f"{pct(o.accuracy)} at {pct(o.area)} blocked (q_roa {o.q_roa:g}; a random mask of that area "
            f"{pct(o.random_mask_accuracy)}).</li>"
        )
    return f"<p>{in_short(v)}</p><p><b>{e(v.defence)}</b>{blocks}:</p><ul>{''.join(items)}</ul>"


def in_short(v: Verdict) -> str:
    """One sentence: the defence against its control and f under the adaptive attack, and the oracle gap."""
    c = _setting(v, "adaptive") or (v.comparisons[-1] if v.comparisons else None)
    if c is None:
        return f"<b>In short:</b> {e(v.defence)} has no attacked accuracy in this table."
    words = {"better": "beats", "worse": "is beaten by", "indistinguishable": "does not differ from"}
    names = (("its equal-area random control", c.vs_control), ("the undefended model", c.vs_undefended))
    pairs = [(n, d.word) for n, d in names if d is not None]
    if len(pairs) == 2 and pairs[0][1] == pairs[1][1]:
        joiner = "nor from" if pairs[0][1] == "indistinguishable" else "and"
        against = [f"{words[pairs[0][1]]} {pairs[0][0]} {joiner} {pairs[1][0]}"]
    else:
        against = [f"{words[w]} {n}" for n, w in pairs]
    setting = {"adaptive": "an adaptive attacker", "worst-case": "the worst case"}.get(c.setting, c.setting)
    gap = "" if v.oracle is None else f"; an oracle that knew the attack would keep {100 * v.oracle.gap:.1f} pts more"
    return f"<b>In short:</b> against {setting}, {e(v.defence)} {' and '.join(against) or 'stands alone'}{gap}."


def folder_verdict(results: Mapping[str, Any], shown: str | None) -> str:
    """The verdict block of one folder: a sentence on its first defence, then a table of every defence."""
    found = tables_of(results)
    if not found:
        return ""
    head = "" if shown is None else f"<h3>roiroa {e(results.get('command', ''))}: <code>{e(shown)}</code></h3>"
    first = found[0][1][0]
    parts = [head, sentence(first)]
    for title, verdicts in found:
        parts.append(f"<p class=small>{e(title)}:</p>" if len(found) > 1 else "")
        parts.append(verdict_table(verdicts))
    return "".join(parts)


def verdict_section(folders: Sequence[tuple[Mapping[str, Any], str]]) -> str:
    """The verdict blocks of folders (results, shown name); empty for folders without a robustness table."""
    return "".join(folder_verdict(results, shown) for results, shown in folders)


def wrap_verdict(blocks: str) -> str:
    """The verdict box around the folders' blocks, with its legend (nothing when there is no block)."""
    if not blocks:
        return ""
    legend = (
        "<p class=small>Robust accuracy (an image counts if the model is right on it clean and attacked) with "
        "its 95% Wilson interval; differences in percentage points with a 95% interval (Newcombe, unpaired: "
        'conservative on the same images): <span class="better">green</span> above, <span class="worse">red'
        '</span> below, <span class="indistinguishable">grey</span> the interval holds 0. Non-adaptive and '
        "adaptive: the attack that left the defence the least accuracy. Oracle gap: the oracle's accuracy "
        "at the nearest area minus the defence's non-adaptive accuracy under that attack.</p>"
    )
    return f'<section class="verdict"><h2>Verdict</h2>{blocks}{legend}</section>'
