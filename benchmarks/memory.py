"""Peak memory of a stage against the number of test images, with the images of an ImageNet folder decoded up
front (one (N, 3, 224, 224) float32 tensor, 602 kB per image) or lazily, one chunk at a time.

    python benchmarks/memory.py [--sizes 100 300 1000] [--chunk-size 50] [--stage grid|maps]

Each (N, mode) runs in its own process (so each peak is its own): MobileNetV1 x0.25 (pretrained) on the first N
images of the shared ImageNet validation folder (resize 256, centre crop 224), on a stage cache in a temporary
folder, ``chunk_size`` images per task. Stage 'grid': the undefended model's grid cells (clean, and FGSM at 2/255
crafted on f), as in every table of ``defend`` and ``patches``; 'maps': the maps stage (FGSM's trace and its
vulnerability map, gradient saliency as the importance map).
'decoded' is the path of roiroa before lazy decoding (``LabelledFiles.decode``: every test image decoded at
once); 'lazy' is today's (:func:`roiroa.data.lazy.lazy_dataset`). Prints, per N and mode, the process's peak
resident memory (``ru_maxrss``), the resident memory after the model is loaded and before any image (the
baseline), their difference, and the tensor storage reachable at the end of the stage, while its output is alive
(the images and outputs it holds, apart from what the memory allocator keeps), beside the size of the decoded test
set. Needs
the shared data (/work/shared/data/imagenet, or $ROIROA_SHARED/data/imagenet).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(os.environ.get("ROIROA_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
IMAGENET = SHARED / "data" / "imagenet"
IMAGE_BYTES = 3 * 224 * 224 * 4  # one decoded image, float32


def peak_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    """This process's resident memory now, in MB (from /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def held_mb() -> float:
    """MB of tensor storage Python can reach now (each storage once): what the process holds, whatever the
    allocator has not given back."""
    import gc

    import torch

    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 2**20


def child(n: int, mode: str, chunk_size: int, stage: str) -> dict[str, Any]:
    """Run the stage on the first n images in this process; its memory figures."""
    import torch

    from roiroa.cache import StageCache, model_hash
    from roiroa.data.imagenet import list_labelled_files
    from roiroa.data.lazy import lazy_dataset
    from roiroa.models.loading import load_model
    from roiroa.models.normalize import NORMALIZATIONS

    torch.set_num_threads(1)
    weights = IMAGENET / "models" / "mobilenetV1X0.25_pretrain.tar"
    model = load_model(
        "mobilenet_v1_025",
        weights,
        image_shape=(3, 224, 224),
        num_classes=1000,
        normalization=NORMALIZATIONS["imagenet"],
    ).eval()
    folder = IMAGENET / "val1300"
    files = list_labelled_files(folder, folder / "labels.csv", IMAGENET / "imagenet_class_index.json", 256, 224)
    files = files.subset(torch.arange(n))
    baseline = current_mb()
    start = time.perf_counter()
    data = files.decode() if mode == "decoded" else lazy_dataset(files)
    key = model_hash(model)
    with tempfile.TemporaryDirectory() as tmp:
        cache = StageCache(Path(tmp))
        figures, found = (
            run_grid(model, key, data, cache, chunk_size)
            if stage == "grid"
            else run_maps(model, key, data, cache, chunk_size)
        )
        figures |= {"held_mb": held_mb()}  # while the stage's output is still alive
        del found
    seconds = time.perf_counter() - start
    figures |= {"seconds": seconds}
    return {"n": n, "mode": mode, "baseline_mb": baseline, "peak_mb": peak_mb()} | figures


def run_grid(model: Any, key: str, data: Any, cache: Any, chunk_size: int) -> tuple[dict[str, float], Any]:
    """The undefended model's grid cells (clean; FGSM crafted on f): accuracy per setting, and the cells."""
    from roiroa.evaluate.attacking import attack_entries
    from roiroa.evaluate.grid import Defence, GridContext, evaluate_grid, standard_cells

    f = Defence("none", "none", "f", model, model, "exact", key)
    attacks = attack_entries(({"name": "fgsm", "eps": 2 / 255},), chunk_size)
    context = GridContext(model, key, cache, 0)
    found = evaluate_grid(context, [f], attacks, standard_cells([f], attacks), data.images, data.labels, chunk_size)
    return {c.setting: float(r.correct.double().mean()) for c, r in found.items()}, found


def run_maps(model: Any, key: str, data: Any, cache: Any, chunk_size: int) -> tuple[dict[str, float], Any]:
    """The maps stage (FGSM's trace and vulnerability map, saliency as the importance map): the maps' means, and
    the maps (with what they keep of the attack)."""
    from roiroa.evaluate.attacking import attack_entries
    from roiroa.evaluate.maps_stage import compute_maps
    from roiroa.evaluate.validate import config_from_dict

    config = config_from_dict({"chunk_size": chunk_size, "maps": {"importance": "saliency"}})
    attacks = attack_entries(({"name": "fgsm", "eps": 2 / 255},), chunk_size)
    maps = compute_maps(model, key, data, attacks, config, cache)
    return {"importance": float(maps.importance.mean()), "roa_map": float(maps.roa_map.mean())}, maps


def run_child(n: int, mode: str, chunk_size: int, stage: str) -> dict[str, Any]:
    """One child process's figures (the benchmark's own command with --child)."""
    args = [sys.executable, __file__, "--child", "--n", str(n), "--mode", mode, "--chunk-size", str(chunk_size)]
    out = subprocess.run([*args, "--stage", stage], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"N={n} {mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--stage", choices=["grid", "maps"], default="grid")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["decoded", "lazy"], help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        print(json.dumps(child(a.n, a.mode, a.chunk_size, a.stage)))
        return
    if not (IMAGENET / "val1300" / "labels.csv").exists():
        raise SystemExit(f"needs the shared ImageNet sample under {IMAGENET}; set ROIROA_SHARED")
    print(f"stage: {a.stage}, chunk_size {a.chunk_size}, MobileNetV1 x0.25, FGSM 2/255; memory in MB (RSS)")
    head = ("N", "decoded set", "mode", "baseline", "peak", "peak - baseline", "tensors held", "seconds")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (6, 12, 8, 9, 8, 16, 13, 8), strict=True)))
    for n in a.sizes:
        for mode in ("decoded", "lazy"):
            r = run_child(n, mode, a.chunk_size, a.stage)
            size = n * IMAGE_BYTES / 2**20
            print(
                f"{n:>6} {size:>12.0f} {mode:>8} {r['baseline_mb']:>9.0f} {r['peak_mb']:>8.0f} "
                f"{r['peak_mb'] - r['baseline_mb']:>16.0f} {r['held_mb']:>13.0f} {r['seconds']:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
