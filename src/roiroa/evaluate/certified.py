"""The certified reference point of ``roiroa patches``: PatchCleanser double masking at every patch area.

For each area of ``patches.areas`` the patch side is the patch attacks' own (round(sqrt(area H W))); the mask set
has ``patches.certified_masks`` masks per axis; masked positions get the per-channel mean of the fitting images
(a fixed value, as certification needs). Clean accuracy is the double-masking output's; certified robust
accuracy is the share of images whose every two-mask prediction is the true label: no patch of that size,
anywhere, with any pixels, changes their output, so no attack can lower it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from roiroa.attacks.patch import patch_side
from roiroa.cache import StageCache
from roiroa.data.dataset import ImageDataset
from roiroa.defence.patchcleanser import PatchCleanser
from roiroa.evaluate.grid import interval
from roiroa.evaluate.tasks import chunks, content_digest
from roiroa.results import CertifiedRow

NOTE = (
    "PatchCleanser double masking (Xiang et al., USENIX Security 2022): certified accuracy is a lower bound no "
    "patch of the stated side can lower, whatever the attack."
)


def _flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, side: int, k: int, fill: tuple[float, ...]) -> Any:
    pc = PatchCleanser(model, (x.shape[-2], x.shape[-1]), side, k=k, fill=fill)
    correct, certified = pc.evaluate(x, y)
    return {"correct": correct.tolist(), "certified": certified.tolist(), "masks": len(pc.masks)} | {
        "mask_side": list(pc.mask_side)
    }


def _chunked_flags(
    model: nn.Module, data: ImageDataset, side: int, k: int, fill: tuple[float, ...], chunk_size: int
) -> Any:
    """:func:`_flags` of the test images, image files decoded one chunk at a time (a tensor: in one pass)."""
    if isinstance(data.images, torch.Tensor):
        return _flags(model, data.images, data.labels, side, k, fill)
    found = [_flags(model, c.x, c.y, side, k, fill) for c in chunks(data.images, data.labels, chunk_size)]
    flags = {key: [v for f in found for v in f[key]] for key in ("correct", "certified")}
    return found[0] | flags


def certified_row(area: float, side: int, k: int, found: dict[str, Any], fill: tuple[float, ...]) -> CertifiedRow:
    """One area's row: clean and certified accuracy with their 95% Wilson intervals."""
    n = len(found["correct"])
    clean, cert = sum(found["correct"]), sum(found["certified"])
    return CertifiedRow(
        "patchcleanser",
        area,
        side,
        found["mask_side"],
        found["masks"],
        k,
        [round(v, 6) for v in fill],
        n,
        clean,
        clean / n,
        list(interval(clean, n)),
        cert,
        cert / n,
        list(interval(cert, n)),
    )


def flag_rows(area: float, found: dict[str, Any], data: ImageDataset) -> list[dict[str, Any]]:
    """flags.csv rows of one area: setting 'clean' (double masking right) and 'certified', attack 'any patch@area'."""
    index, labels = data.index.tolist(), data.labels.tolist()
    return [
        {"image": i, "index": index[i], "label": labels[i], "defence": "patchcleanser"}
        | {"setting": setting, "attack": f"any patch@{area:g}", "correct": int(ok)}
        for setting in ("clean", "certified")
        for i, ok in enumerate(found["correct" if setting == "clean" else "certified"])
    ]


def certified_rows(
    model: nn.Module,
    model_key: str,
    data: tuple[ImageDataset, ImageDataset],
    areas: tuple[float, ...],
    k: int,
    cache: StageCache,
    chunk_size: int = 1024,
) -> tuple[list[CertifiedRow], list[dict[str, Any]]]:
    """PatchCleanser's row at every area (cached per area) on the test images of data = (test, fit), its mask
    value the fitting images' per-channel mean; and the per-image flags.csv rows. Nothing when k is 0. Test images
    from image files are decoded ``chunk_size`` at a time."""
    test, fit = data
    if k == 0:
        return [], []
    _, h, w = test.image_shape
    fill = tuple(float(v) for v in fit.pixels().double().mean((0, 2, 3)))
    rows, flags = [], []
    for area in sorted(set(areas)):
        side = patch_side(h, w, area)
        inputs = {"model": model_key, "data": content_digest(test.images, test.labels), "side": side, "k": k}
        compute = partial(_chunked_flags, model, test, side, k, fill, chunk_size)
        found = cache.json(cache.key("patchcleanser", inputs | {"fill": list(fill)}), compute)
        rows.append(certified_row(area, side, k, found, fill))
        flags += flag_rows(area, found, test)
    return rows, flags


def certified_lines(results: dict[str, Any]) -> list[str]:
    """Terminal lines of results.json's 'certified' rows."""
    rows = results.get("certified", [])
    if not rows:
        return []
    lines = ["", f"certified reference: {results.get('certified_note', NOTE)}"]
    for r in rows:
        clean, cert = (
            f"{100 * r[k]:5.1f}% [{100 * r[c][0]:.1f}, {100 * r[c][1]:.1f}]"
            for k, c in (("clean_accuracy", "clean_ci"), ("certified_accuracy", "certified_ci"))
        )
        lines.append(
            f"  {r['defence']} patch {r['patch_side']}px (area {r['area']:g}), {r['masks']} masks of "
            f"{r['mask_side'][0]}x{r['mask_side'][1]}: clean {clean}, certified {cert} (n={r['n_images']})"
        )
    return lines
