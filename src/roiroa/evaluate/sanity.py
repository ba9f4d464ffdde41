"""Sanity checks that catch weak attacks (Carlini et al. 2019; Tramer et al. 2020), as verdicts in every output.

- robust accuracy falls with eps and is about 0 unbounded (from the sanity rows of ``defend``);
- the per-image worst case is at most each attack's robust accuracy (by construction; checked);
- more steps and restarts do not lower robust accuracy below the interval of the attack as run ('converged');
- transfer attacks (crafted on f) are not stronger than the best gradient attack through the defence beyond its
  interval, and gradient-free ones (Square) do not break, beyond the interval, images that every gradient attack
  left ('no gradient masking').
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from roiroa.evaluate.attacking import AttackEntry, attack_entry
from roiroa.evaluate.grid import Cell, CellResult, Defence, interval, worst_case
from roiroa.results import SanityRow, Verdict

UNBOUNDED_MAX = 0.05  # robust accuracy 'about 0' at the largest sanity eps


def _acc(result: CellResult) -> float:
    return _acc_of(result.correct)


def _acc_of(flags: torch.Tensor) -> float:
    """The accuracy of flags (N,) bool."""
    return float(flags.double().mean())


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def eps_verdicts(rows: Sequence[SanityRow]) -> list[Verdict]:
    """'falls with eps' and 'about 0 unbounded' for every sanity row."""
    out = []
    for r in rows:
        accs = ", ".join(f"{e:g}: {_pct(a)}" for e, a in zip(r.eps, r.accuracy, strict=True))
        out.append(Verdict(r.defence, "falls with eps", r.falls, f"{r.attack} at eps {accs}"))
        ok = r.unbounded_accuracy <= UNBOUNDED_MAX
        words = f"{_pct(r.unbounded_accuracy)} at eps {r.unbounded_eps:g} (at most {_pct(UNBOUNDED_MAX)} expected)"
        out.append(Verdict(r.defence, "about 0 unbounded", ok, words))
    return out


def worst_verdicts(defences: Sequence[Defence], results: dict[Cell, CellResult]) -> list[Verdict]:
    """'worst case <= every attack': the per-image worst case against each attacked cell's accuracy."""
    out = []
    for d in defences:
        worst = worst_case(results, d.name)
        cells = {c.label + f" ({c.setting})": _acc(r) for c, r in results.items() if c.defence == d.name}
        cells.pop("none (clean)", None)
        if worst is None or not cells:
            continue
        w = float(worst.double().mean())
        weakest = min(cells, key=cells.__getitem__)
        ok = w <= min(cells.values()) + 1e-12
        out.append(Verdict(d.name, "worst case <= every attack", ok, f"worst {_pct(w)}; strongest cell {weakest}"))
    return out


def masking_verdicts(defences: Sequence[Defence], results: dict[Cell, CellResult]) -> list[Verdict]:
    """'no gradient masking', per defence with an adaptive cell: no transfer cell (crafted on f) is below the 95%
    interval of the best adaptive cell, and no gradient-free cell lowers the worst case of the gradient cells
    below that worst case's interval (it broke images every gradient attack left)."""
    out = []
    for d in defences:
        mine = {c: r for c, r in results.items() if c.defence == d.name}
        adaptive = {c: r for c, r in mine.items() if c.setting == "adaptive"}
        transfer = {c: r for c, r in mine.items() if c.setting == "non-adaptive" and d.kind != "none"}
        free = {c: r for c, r in mine.items() if c.setting == "gradient-free"}
        if not adaptive or not (transfer or free):
            continue
        best = min(adaptive, key=lambda c: _acc(adaptive[c]))
        low = _low(adaptive[best].correct)
        stronger = [f"{c.label} (non-adaptive) {_pct(_acc(r))}" for c, r in transfer.items() if _acc(r) < low]
        detail = (
            f"best gradient attack through the defence: {best.label} {_pct(_acc(adaptive[best]))} (95% low {_pct(low)})"
        )
        if free:
            gradient = torch.stack([r.correct for c, r in mine.items() if c.setting in ("adaptive", "non-adaptive")])
            words, found = _free_check(gradient.all(0), free)
            detail, stronger = f"{detail}; {words}", stronger + found
        if stronger:
            detail += "; stronger: " + ", ".join(stronger) + ": suspect gradient masking"
        out.append(Verdict(d.name, "no gradient masking", not stronger, detail))
    return out


def _free_check(gradient_worst: torch.Tensor, free: dict[Cell, CellResult]) -> tuple[str, list[str]]:
    """The gradient attacks' per-image worst case (N,) bool against each gradient-free cell: (words, the cells
    that lower it below its 95% interval)."""
    low, before = _low(gradient_worst), _acc_of(gradient_worst)
    words, found = [], []
    for c, r in free.items():
        joint = gradient_worst & r.correct
        extra = int((gradient_worst & ~r.correct).sum())
        words.append(f"{c.label} broke {extra} of the {int(gradient_worst.sum())} images the gradient attacks left")
        if float(joint.double().mean()) < low:
            found.append(
                f"{c.label} (gradient-free) lowers their worst case from {_pct(before)} to {_pct(_acc_of(joint))}"
            )
    return "; ".join(words), found


def _low(flags: torch.Tensor) -> float:
    """The lower end of the 95% Wilson interval of the accuracy of flags (N,) bool."""
    return interval(int(flags.sum()), len(flags))[0]


def stronger_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The convergence check's attack: the spec with twice its steps (or queries) and twice its restarts."""
    out = dict(spec)
    for key in ("steps", "queries", "restarts"):
        if isinstance(spec.get(key), int):
            out[key] = 2 * spec[key]
    return out | {"label": f"{spec.get('label', spec['name'])}-x4"}


def convergence_entries(spec: dict[str, Any], batch_size: int) -> tuple[AttackEntry, AttackEntry]:
    """(the attack as run, the same with twice the steps and twice the restarts); restarts default to 1."""
    base = {"restarts": 1} | spec if "restarts" in attack_entry(spec, batch_size).params else spec
    return attack_entry(base, batch_size), attack_entry(stronger_spec(base), batch_size)


def convergence_verdicts(
    defences: Sequence[Defence], pair: tuple[AttackEntry, AttackEntry], results: dict[Cell, CellResult]
) -> list[Verdict]:
    """'converged': the stronger attack's adaptive accuracy is not below the interval of the attack as run."""
    out = []
    for d in defences:
        run, more = (results[Cell(d.name, "adaptive", a.label)] for a in pair)
        low, _ = interval(int(run.correct.sum()), len(run.correct))
        ok = _acc(more) >= low
        words = f"{pair[0].label} {_pct(_acc(run))} (95% low {_pct(low)}); 2x steps, 2x restarts: {_pct(_acc(more))}"
        out.append(Verdict(d.name, "converged", ok, words + ("" if ok else ": not converged")))
    return out
