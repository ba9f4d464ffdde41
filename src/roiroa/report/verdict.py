"""What a results folder found, per defence: its robust accuracy beside its equal-area random control and the
undefended model, non-adaptive, adaptive and in the worst case, with 95% intervals, and the oracle gap.

A pure function of a robustness table (the ``GridRow`` dicts of results.json): no model, no attack. Each
accuracy carries its 95% Wilson interval (from the table); a difference of two accuracies carries Newcombe's
hybrid score interval built from the two Wilson intervals (method 10 of Newcombe 1998), which treats the two
as independent samples: on the same images (paired) it is conservative, so "better" and "worse" are safe
words, "indistinguishable" may miss a small paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]
SETTINGS = ("non-adaptive", "adaptive", "worst-case")


@dataclass(frozen=True)
class Estimate:
    """An accuracy in [0, 1] on n images with its 95% interval [low, high]."""

    accuracy: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Difference:
    """a - b of two accuracies, in [-1, 1], with its 95% interval; ``word``: 'better', 'worse' or
    'indistinguishable' (the interval holds 0)."""

    value: float
    low: float
    high: float

    @property
    def word(self) -> str:
        return "better" if self.low > 0 else "worse" if self.high < 0 else "indistinguishable"


@dataclass(frozen=True)
class Comparison:
    """One setting of one defence: the attack that hurt the defence most there, the defence's accuracy, its
    control's and the undefended model's under that same attack, and the two differences."""

    setting: str
    attack: str
    defence: Estimate
    control: Estimate | None
    undefended: Estimate | None

    @property
    def vs_control(self) -> Difference | None:
        return None if self.control is None else difference(self.defence, self.control)

    @property
    def vs_undefended(self) -> Difference | None:
        return None if self.undefended is None else difference(self.defence, self.undefended)


@dataclass(frozen=True)
class OracleGap:
    """The oracle (each image's own S_A from the known attack) at the RoA fraction whose area is nearest the
    defence's, beside the defence's non-adaptive accuracy under the same attack: what knowing the attack buys."""

    attack: str
    q_roa: float
    area: float
    accuracy: float
    random_mask_accuracy: float
    gap: float


@dataclass(frozen=True)
class Verdict:
    """One defence of one table: kind, blocked area (None: it blocks no named positions), clean accuracy
    beside the undefended model's, its control's name, the three settings, and the oracle gap."""

    defence: str
    kind: str
    area: float | None
    control: str | None
    clean: Comparison | None
    comparisons: tuple[Comparison, ...]
    oracle: OracleGap | None


def estimate(row: Row | None) -> Estimate | None:
    """The accuracy of a grid row with its interval (the accuracy itself where the row has none)."""
    if row is None or row.get("accuracy") is None:
        return None
    acc = float(row["accuracy"])
    low, high = row.get("ci_low"), row.get("ci_high")
    return Estimate(acc, acc if low is None else float(low), acc if high is None else float(high), int(row["n_images"]))


def difference(a: Estimate, b: Estimate) -> Difference:
    """a - b with Newcombe's hybrid score interval from the two 95% intervals (see the module docstring)."""
    d = a.accuracy - b.accuracy
    low = d - math.hypot(a.accuracy - a.low, b.high - b.accuracy)
    high = d + math.hypot(a.high - a.accuracy, b.accuracy - b.low)
    return Difference(d, max(-1.0, low), min(1.0, high))


def control_of(defence: str, rows: Sequence[Row]) -> str | None:
    """The defence's equal-area control: 'random[<defence>]', else another '<control>[<defence>]', else the
    table's one unbracketed control when ``defence`` is the table's first scope (as ``roiroa patches`` does)."""
    controls = list(dict.fromkeys(str(r["defence"]) for r in rows if r.get("kind") == "control"))
    if f"random[{defence}]" in controls:
        return f"random[{defence}]"
    bracketed = [c for c in controls if c.endswith(f"[{defence}]")]
    if bracketed:
        return bracketed[0]
    scopes = [str(r["defence"]) for r in rows if r.get("kind") == "scope"]
    plain = [c for c in controls if "[" not in c]
    return plain[0] if len(plain) == 1 and scopes and scopes[0] == defence else None


def _cells(rows: Sequence[Row]) -> dict[tuple[str, str, str], Row]:
    return {(str(r["defence"]), str(r["setting"]), str(r["attack"])): r for r in rows}


def _setting_rows(cells: Mapping[tuple[str, str, str], Row], defence: str, setting: str) -> list[Row]:
    """The defence's rows of one setting; a gradient-free attack counts as both non-adaptive and adaptive."""
    wanted = {setting} if setting == "worst-case" else {setting, "gradient-free"}
    return [r for (d, s, _), r in cells.items() if d == defence and s in wanted]


def compare(cells: Mapping[tuple[str, str, str], Row], defence: str, control: str | None, setting: str) -> Any:
    """The Comparison of one setting at the attack that leaves the defence the lowest accuracy (None: no row).
    The control and the undefended model are read under the same setting and attack."""
    rows = [r for r in _setting_rows(cells, defence, setting) if r.get("accuracy") is not None]
    if not rows:
        return None
    worst = min(rows, key=lambda r: (float(r["accuracy"]), str(r["attack"])))
    s, a = str(worst["setting"]), str(worst["attack"])
    undefended = cells.get(("none", s, a)) or cells.get(("none", "non-adaptive", a))
    control_row = None if control is None else cells.get((control, s, a))
    return Comparison(setting, a, estimate(worst), estimate(control_row), estimate(undefended))  # type: ignore[arg-type]


def oracle_gap(oracle: Sequence[Row], comparison: Comparison | None, area: float | None) -> OracleGap | None:
    """The oracle row of the comparison's attack whose area is nearest ``area`` (None without such a row)."""
    if comparison is None or area is None:
        return None
    rows = [r for r in oracle if r.get("attack") == comparison.attack]
    if not rows:
        return None
    r = min(rows, key=lambda r: abs(float(r["area"]) - area))
    gap = float(r["accuracy"]) - comparison.defence.accuracy
    return OracleGap(
        str(r["attack"]),
        float(r["q_roa"]),
        float(r["area"]),
        float(r["accuracy"]),
        float(r["random_mask_accuracy"]),
        gap,
    )


def verdicts(rows: Sequence[Row], oracle: Sequence[Row] = ()) -> list[Verdict]:
    """One Verdict per defence of a table (not the undefended model, not the controls), in table order."""
    cells = _cells(rows)
    names = [d for d in dict.fromkeys(str(r["defence"]) for r in rows)]
    kinds = {str(r["defence"]): str(r.get("kind", "")) for r in rows}
    out = []
    for d in names:
        if kinds[d] in ("none", "control"):
            continue
        control = control_of(d, rows)
        clean_row = cells.get((d, "clean", "none"))
        area = None if clean_row is None or clean_row.get("area") is None else float(clean_row["area"])
        clean = estimate(clean_row)
        clean_cmp = (
            None
            if clean is None
            else Comparison(
                "clean",
                "none",
                clean,
                None if control is None else estimate(cells.get((control, "clean", "none"))),
                estimate(cells.get(("none", "clean", "none"))),
            )
        )
        comparisons = tuple(c for c in (compare(cells, d, control, s) for s in SETTINGS) if c is not None)
        nonadaptive = next((c for c in comparisons if c.setting == "non-adaptive"), None)
        out.append(Verdict(d, kinds[d], area, control, clean_cmp, comparisons, oracle_gap(oracle, nonadaptive, area)))
    return out


def tables_of(results: Mapping[str, Any]) -> list[tuple[str, list[Verdict]]]:
    """The verdicts of every robustness table of a results.json: (title, verdicts) per table."""
    oracle = results.get("oracle") or []
    found = []
    for key, title in (
        ("defence", "the run's defence (every test image)"),
        ("defence_short", "the run's short table of other defences"),
        ("table", "the defence table"),
    ):
        rows = results.get(key) or []
        if rows:
            found.append((title, verdicts(rows, oracle)))
    return [(t, v) for t, v in found if v]
