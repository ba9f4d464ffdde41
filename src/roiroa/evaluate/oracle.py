"""The oracle analysis, framed fairly: each image's own S_A beside equal-area controls, filled and restored.

The oracle mask S_A = (top-q RoA of the attack's own vulnerability map) minus the RoI of the true class: it
knows the true label and the attack's gradient trajectory, so it is an analysis, not a defence. How much of
its accuracy comes from where S_A lies, and how much from merely blocking that many pixels outside the RoI, or
from the fill erasing strokes the adversarial class uses? Each control blocks the same number of positions per
image as S_A, chosen with less (or other) knowledge:
- 'random': anywhere; 'random outside RoI': outside the RoI (the oracle's allowed region);
- 'top-|delta|': where the attack changed the pixels most; 'top-|delta| outside RoI': the same, outside the RoI;
- 'RoA ignoring RoI': the top of the attack's vulnerability map, RoI included;
- 'random inside RoA': random positions of the RoA.
Every mask is applied twice: 'fill' (the blocked positions get the defence's fill, in the clean and the attacked
image; an image counts if both are classified right) and 'restore' (the attacked image's blocked positions get
the clean pixels back; counts if f is right on the clean image and on the restored one). Ties in a score break at
random (seeded), not by position.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from roiroa.cache import StageCache
from roiroa.defence.fills import Fill
from roiroa.evaluate.analysis import mask_flags
from roiroa.evaluate.config import Config
from roiroa.evaluate.grid import interval
from roiroa.evaluate.maps_stage import MapSet
from roiroa.evaluate.significance import mcnemar_exact
from roiroa.regions.segments import Segments
from roiroa.regions.thresholds import isolate, top_q_mask
from roiroa.results import OracleControlRow
from roiroa.utils import stage_seed

ORACLE = "oracle S_A"
KNOWS = {
    ORACLE: "true label (RoI) + attack's gradient trajectory (RoA)",
    "random": "the oracle's area per image only",
    "random outside RoI": "true label (RoI)",
    "top-|delta|": "the attack's final perturbation",
    "top-|delta| outside RoI": "the attack's final perturbation + true label (RoI)",
    "RoA ignoring RoI": "attack's gradient trajectory (RoA)",
    "random inside RoA": "attack's gradient trajectory (RoA)",
}
ORACLE_NOTE = (
    "The oracle is an analysis, not a defence: it uses the true label (its RoI is the importance of the true "
    "class) and the attack's own gradient trajectory (its RoA); each control blocks the same number of pixels per "
    "image as the oracle."
)


def top_k_masks(
    scores: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """(N, H, W) bool: the k[i] highest-scoring allowed positions of each map of ``scores`` (N, H, W) (fewer where
    fewer are allowed), ties broken at random."""
    n = scores.shape[0]
    flat = scores.reshape(n, -1).double().cpu()
    if allowed is not None:
        flat = flat.masked_fill(~allowed.reshape(n, -1).cpu(), float("-inf"))
    shuffle = torch.rand(flat.shape, generator=generator).argsort(dim=1)
    order = torch.gather(shuffle, 1, torch.gather(flat, 1, shuffle).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    keep = (ranks < k.reshape(n, 1).cpu()) & torch.isfinite(flat)
    return keep.view(scores.shape)


def control_masks(
    segments: Segments, vulnerability: torch.Tensor, delta: torch.Tensor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The oracle's S_A and its equal-area controls, each (N, H, W) bool; delta: (N, H, W) |x_adv - x| (L2 over
    channels)."""
    s_a, roi, roa = segments.s_a, segments.roi, segments.roa
    k = s_a.flatten(1).sum(1)
    noise = torch.rand(s_a.shape, generator=generator)
    masks = {ORACLE: s_a}
    masks["random"] = top_k_masks(noise, k, None, generator)
    masks["random outside RoI"] = top_k_masks(noise, k, ~roi, generator)
    masks["top-|delta|"] = top_k_masks(delta, k, None, generator)
    masks["top-|delta| outside RoI"] = top_k_masks(delta, k, ~roi, generator)
    masks["RoA ignoring RoI"] = top_k_masks(vulnerability, k, None, generator)
    masks["random inside RoA"] = top_k_masks(noise, k, roa, generator)
    return masks


def decomposition_rows(
    label: str, q: tuple[float, float], masks: dict[str, torch.Tensor], flags: dict[tuple[str, str], torch.Tensor]
) -> list[OracleControlRow]:
    """One row per (mask, replacement), with its Wilson interval and McNemar's test against the oracle's mask."""
    rows = []
    for (name, how), f in flags.items():
        oracle = flags[(ORACLE, how)]
        n10, n01 = int((f & ~oracle).sum()), int((~f & oracle).sum())
        hits, n = int(f.sum()), len(f)
        low, high = interval(hits, n)
        versus = (None, None) if name == ORACLE else ((n10 - n01) / n, mcnemar_exact(n10, n01))
        area = float(masks[name].double().mean())
        rows.append(OracleControlRow(label, *q, name, how, KNOWS[name], area, n, hits, hits / n, low, high, *versus))
    return rows


def _decomposition(model: nn.Module, maps: MapSet, fill: Fill, config: Config, q_roa: float) -> list[dict[str, Any]]:
    """Per attack: the oracle's S_A and its equal-area controls, each with the blocked pixels filled ('fill': clean
    and attacked image both right) or restored to the clean ones ('restore': clean image and restored attacked
    image both right), read one chunk of images at a time."""
    r = config.regions
    gen = torch.Generator().manual_seed(stage_seed(config.seed, "oracle-decomposition"))
    roi = isolate(maps.importance, r.threshold, r.q_roi)
    rows = []
    for label, attacked in maps.attacked.items():
        vulnerability = maps.vulnerability[label]
        segments = Segments(roi, top_q_mask(vulnerability, q_roa))
        masks = control_masks(segments, vulnerability, attacked.perturbation, gen)
        found = mask_flags(model, attacked, masks, fill, restore=True)
        flags = {}
        for name, f in found.masked.items():
            flags[(name, "fill")] = f["clean"] & f["attacked"]
            flags[(name, "restore")] = found.clean & f["restored"]
        rows += [row.__dict__ for row in decomposition_rows(label, (r.q_roi, q_roa), masks, flags)]
    return rows


def oracle_decomposition(
    model: nn.Module, model_key: str, maps: MapSet, fill: Fill, fill_key: str, config: Config, cache: StageCache
) -> list[OracleControlRow]:
    """The decomposition table for every attack of ``maps`` at the run's RoA fraction (cached; the images are those
    the maps were made on, identified by the maps' cache keys)."""
    r = config.regions
    inputs: dict[str, Any] = {"model": model_key, "maps": list(maps.keys), "fill": fill_key}
    inputs |= {"q_roi": r.q_roi, "q_roa": r.q_roa, "threshold": r.threshold, "seed": config.seed}
    inputs |= {"vulnerability": config.maps.vulnerability}
    compute = partial(_decomposition, model, maps, fill, config, r.q_roa)
    return [OracleControlRow(**row) for row in cache.json(cache.key("oracle-decomposition", inputs), compute)]


def oracle_lines(results: dict[str, Any]) -> list[str]:
    """Terminal lines of results.json's 'oracle_decomposition'."""
    rows = results.get("oracle_decomposition", [])
    if not rows:
        return []
    lines = [
        "",
        "oracle decomposition (equal-area controls, accuracy [95% CI] with the blocked pixels filled or restored;",
        "  the oracle is an analysis that knows the true label and the attack, not a defence):",
    ]
    lines.append(f"  {'attack':<12}{'mask':<26}{'fill':>18}{'restore':>18}   knows")
    by = {(r["attack"], r["mask"], r["replacement"]): r for r in rows}
    for attack, mask in dict.fromkeys((r["attack"], r["mask"]) for r in rows):
        cells = []
        for how in ("fill", "restore"):
            r = by.get((attack, mask, how))
            cells.append(
                f"{100 * r['accuracy']:5.1f} [{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}]" if r else "-"
            )
        n = by[(attack, mask, "fill")]["n_images"]
        lines.append(f"  {attack:<12}{mask:<26}{cells[0]:>18}{cells[1]:>18}   {KNOWS.get(mask, '')} (n={n})")
    return lines
