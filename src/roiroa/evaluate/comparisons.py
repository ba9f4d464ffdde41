"""Every defence against the undefended model and against its equal-area control, cell by cell, with the
significance of the difference (:mod:`roiroa.evaluate.significance`); their CSV table and terminal lines.

A defence is compared on each of its cells (clean, each attack and setting) with the same cell of the other
model (the undefended model's 'adaptive' cell is its attack crafted on f itself), and on the per-image worst
case over its attacked cells. Only images both were evaluated on enter, so the pairs are the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from roiroa.evaluate.grid import Cell, CellResult, Defence, worst_case
from roiroa.evaluate.significance import MARGIN, compare
from roiroa.results import ALL, Comparison, to_json
from roiroa.utils import stage_seed

WORST = ("worst-case", ALL)


def _cell_flags(results: dict[Cell, CellResult], defence: str) -> dict[tuple[str, str], torch.Tensor]:
    """(setting, attack) -> (N,) bool flags of one defence, with its worst case over the attacked cells."""
    out: dict[tuple[str, str], torch.Tensor] = {}
    for c, r in results.items():
        if c.defence == defence:
            out[(c.setting, c.attack or "none")] = r.correct
    worst = worst_case(results, defence)
    if worst is not None:
        out[WORST] = worst
    return out


def _pairs(defences: Sequence[Defence]) -> list[tuple[Defence, str, str]]:
    """(defence a, name of b, relation) for every defence against 'none' and every scope against its controls."""
    names = {d.name for d in defences}
    pairs = [(d, "none", "undefended") for d in defences if d.name != "none" and "none" in names]
    by_name = {d.name: d for d in defences}
    pairs += [(by_name[c.control_of], c.name, "control") for c in defences if c.control_of in by_name]
    return pairs


def comparisons(
    defences: Sequence[Defence], results: dict[Cell, CellResult], margin: float = MARGIN, seed: int = 0
) -> list[Comparison]:
    """Each pair of :func:`_pairs` on every (setting, attack) both have, in the order of the defences."""
    flags = {d.name: _cell_flags(results, d.name) for d in defences}
    out = []
    for a, b, relation in _pairs(defences):
        for where, fa in flags[a.name].items():
            fb = flags[b].get(where)
            if fb is None and b == "none" and where[0] == "adaptive":
                fb = flags[b].get(("non-adaptive", where[1]))  # f's own attack is both
            if fb is None:
                continue
            pair_seed = stage_seed(seed, f"bootstrap:{a.name}:{b}:{where}")
            out.append(compare(fa, fb, (a.name, b), relation, where, margin, pair_seed))
    return out


COLUMNS = ["a", "b", "relation", "setting", "attack", "n_images", "acc_a", "acc_b", "diff", "diff_ci_low"]
COLUMNS += ["diff_ci_high", "n10", "n01", "p_value", "margin", "p_equivalent", "p_no_better", "verdict"]


def comparison_table(rows: Sequence[Comparison]) -> tuple[list[str], list[dict[str, Any]]]:
    """comparisons.csv: one row per comparison, plain columns (the difference's Agresti-Min interval)."""
    out = []
    for r in rows:
        row = to_json(r)
        row["diff_ci_low"], row["diff_ci_high"] = r.diff_ci
        out.append({k: row[k] for k in COLUMNS})
    return COLUMNS, out


def comparison_lines(results: dict[str, Any], settings: tuple[str, ...] = ("worst-case",)) -> list[str]:
    """Terminal lines of results.json's 'comparisons': every defence (not its controls) against f and against
    its controls, on the worst case; the rest is in comparisons.csv and the report."""
    rows = results.get("comparisons", [])
    controls = {r["b"] for r in rows if r["relation"] == "control"}
    rows = [r for r in rows if r["setting"] in settings and r["a"] not in controls]
    if not rows:
        return []
    lines = ["", "significance on the worst case (same images; McNemar's exact test; 95% interval of the difference):"]
    for r in rows:
        low, high = (100 * v for v in r["diff_ci"])
        lines.append(
            f"  {r['a']:<22} vs {r['b']:<22} {r['setting']:<11} {100 * r['acc_a']:5.1f}% vs {100 * r['acc_b']:5.1f}%"
            f"  diff {100 * r['diff']:+5.1f} [{low:+.1f}, {high:+.1f}]  {r['n10']}:{r['n01']}  {r['verdict']}"
        )
    return lines
