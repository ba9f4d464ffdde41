"""ImageNet-scale speed, as ratios measured in one run on the same inputs (MobileNetV1 x0.25, 224x224).

    python benchmarks/imagenet.py [--images 2] [--repeats 1] [--device cpu] [--skip-ray] [--only ray]

Prints:
1. occlusion maps (16x16 windows, stride 8: 729 windows per image, zero baseline, softmax drop): ours against
   Captum's ``Occlusion`` at its fastest ``perturbations_per_eval`` (64 to 512 are tried), the speed-up and
   the largest relative difference between the maps;
2. PGD L-inf (eps 4/255, 10 steps, no random start) on 16 images: ours against a bare loop of 10
   forward+backward passes (the floor of any 10-step gradient attack) and against torchattacks' PGD;
3. the Ray executor: the same chunk tasks (occlusion maps of one image each) on 2 single-thread Ray workers
   against 1 in-process single-thread run, both warmed up (each process has built its copy of the model), the
   two taking turns, the best of at least 2 rounds: throughput ratio and scaling efficiency (ratio / 2).
Times are the best of ``--repeats`` rounds after a warm-up round; the candidates take turns in each round.
The model is the pretrained checkpoint of /work/shared/data/imagenet (or $ROIROA_SHARED) where present, else a
random init (the timing is the same); the images are the shared validation images where present, else noise.
On a machine shared with other work the Ray figure measures the machine as much as the executor: run it idle.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from timing import interleaved_seconds
from torch import nn

from roiroa.attacks import LinfPGD
from roiroa.cache import StageCache
from roiroa.data import load_dataset
from roiroa.evaluate.executors import LocalExecutor, RayExecutor
from roiroa.evaluate.tasks import Task
from roiroa.maps import Occlusion
from roiroa.models import create_model
from roiroa.models.loading import load_model
from roiroa.models.normalize import NORMALIZATIONS, Normalized
from roiroa.utils import set_progress

SHARED = Path(os.environ.get("ROIROA_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
IMAGENET = SHARED / "data" / "imagenet"


def mobilenet_and_images(n: int, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """MobileNetV1 x0.25 (pretrained where the shared checkpoint exists) and n images (n, 3, 224, 224)."""
    weights = IMAGENET / "models" / "mobilenetV1X0.25_pretrain.tar"
    stats = NORMALIZATIONS["imagenet"]
    if weights.exists():
        model = load_model(
            "mobilenet_v1_025", weights, image_shape=(3, 224, 224), num_classes=1000, normalization=stats
        )
        folder = IMAGENET / "val1300"
        data = load_dataset(str(folder), str(folder / "labels.csv"), resize=256, crop=224)
        x, y, source = data.images[:n], data.labels[:n], "pretrained, shared validation images"
    else:
        model = Normalized(create_model("mobilenet_v1_025"), *stats)
        gen = torch.Generator().manual_seed(0)
        x, y, source = torch.rand(n, 3, 224, 224, generator=gen), torch.randint(0, 1000, (n,), generator=gen), "random"
    return model.to(device).eval(), x.to(device), y.to(device), source


def compare_occlusion(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
    from captum.attr import Occlusion as CaptumOcclusion

    captum = CaptumOcclusion(lambda inp: model(inp).softmax(1))

    def reference(per_eval: int) -> torch.Tensor:
        with torch.no_grad():
            attr = captum.attribute(
                x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0.0, target=y,
                perturbations_per_eval=per_eval,
            )  # fmt: skip
        return attr[:, 0]

    ours = Occlusion(window=16, stride=8, baseline=0.0, batch_size=256)
    per_evals = (64, 128, 256, 512)
    fns = {f"captum@{k}": (lambda k=k: reference(k)) for k in per_evals} | {"ours": lambda: ours(model, x, y)}
    times = interleaved_seconds(fns, repeats)  # type: ignore[arg-type]
    best_k = min(per_evals, key=lambda k: times[f"captum@{k}"])
    ref = reference(best_k)
    rel = float((ours(model, x, y) - ref).abs().max() / ref.abs().max())
    t_ref, t_ours = times[f"captum@{best_k}"], times["ours"]
    print(
        f"   ours {t_ref / t_ours:.2f}x faster than Captum at its fastest perturbations_per_eval={best_k} (goal >= 3x)"
    )
    print(
        f"   max |ours - Captum| / max |Captum| = {rel:.1e}; "
        f"images/s: ours {len(x) / t_ours:.2f}, Captum {len(x) / t_ref:.2f}"
    )
    print("   Captum's other settings relative to its fastest: " + ", ".join(
        f"{k}: {t_ref / times[f'captum@{k}']:.2f}" for k in per_evals))  # fmt: skip


def bare_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """The floor of a 10-step gradient attack: forward, backward, a signed step and the projection."""
    step, x_adv = 2.5 * eps / steps, x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def compare_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
    eps, steps = 4 / 255, 10
    ours = LinfPGD(eps=eps, steps=steps, random_start=False, batch_size=len(x))
    fns = {"ours": lambda: ours(model, x, y), "bare": lambda: bare_loop(model, x, y, eps, steps)}
    try:
        import torchattacks

        theirs = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=False)
        fns["torchattacks"] = lambda: theirs(x, y)
    except ImportError:
        print("   (torchattacks not installed: left out)")
    times = interleaved_seconds(fns, repeats)  # type: ignore[arg-type]
    print(f"   ours / bare forward+backward loop = {times['ours'] / times['bare']:.2f} (goal <= 1.1)")
    if "torchattacks" in times:
        print(f"   torchattacks PGD / ours = {times['torchattacks'] / times['ours']:.2f}")
    print(f"   images/s: ours {len(x) / times['ours']:.1f}, bare loop {len(x) / times['bare']:.1f}")


def single_thread(compute):  # type: ignore[no-untyped-def]
    """``compute`` run with one intra-op thread (in this process or on a Ray worker)."""

    def run():  # type: ignore[no-untyped-def]
        torch.set_num_threads(1)
        return compute()

    return run


def compare_ray(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tasks_n: int, repeats: int) -> None:
    import ray

    occlusion = Occlusion(window=16, stride=8, baseline=0.0, batch_size=64)  # the maps of part 1
    xc, yc, mc = x.cpu(), y.cpu(), model.cpu()

    def tasks(tag: str) -> list[Task]:
        i = lambda k: k % len(xc)  # noqa: E731
        make = lambda k: single_thread(lambda: {"map": occlusion(mc, xc[i(k)][None], yc[i(k)][None])})  # noqa: E731
        return [Task(f"{tag}-{k}", make(k)) for k in range(tasks_n)]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    remote, local, threads = RayExecutor(), LocalExecutor(), torch.get_num_threads()

    def in_process(tag: str) -> list[dict[str, torch.Tensor]]:
        torch.set_num_threads(1)
        try:
            return local.run(tasks(tag), StageCache(None))
        finally:
            torch.set_num_threads(threads)

    # warm-up: both workers start and build their copy of the model once, and so does this process
    remote.run(tasks("warm"), StageCache(None))
    in_process("warm")
    times: dict[str, list[float]] = {"local": [], "ray": []}
    outputs: dict[str, list[dict[str, torch.Tensor]]] = {}
    for r in range(repeats):  # the two take turns; the best of each
        for name, run in (("local", in_process), ("ray", lambda tag: remote.run(tasks(tag), StageCache(None)))):
            start = time.perf_counter()
            out = run(f"{name}-{r}")
            times[name].append(time.perf_counter() - start)
            outputs[name] = out
    ray.shutdown()
    t_local, t_ray = min(times["local"]), min(times["ray"])
    same = all(torch.equal(a["map"], b["map"]) for a, b in zip(outputs["local"], outputs["ray"], strict=True))
    print(
        f"   {tasks_n} tasks, best of {repeats}: 1 in-process thread {t_local:.1f} s, "
        f"2 single-thread Ray workers {t_ray:.1f} s"
    )
    print(f"   throughput ratio {t_local / t_ray:.2f}, scaling efficiency {t_local / t_ray / 2:.2f} (goal >= 0.8); "
          f"same maps: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images of the occlusion comparison")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ray-tasks", type=int, default=8)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--only", choices=["occlusion", "pgd", "ray"], help="run one comparison only")
    args = parser.parse_args()
    run = lambda part: args.only in (None, part)  # noqa: E731
    set_progress(False)
    device = torch.device(args.device)
    model, x, y, source = mobilenet_and_images(max(args.images, 16), device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; MobileNetV1 x0.25 ({source}), 224x224\n")
    if run("occlusion"):
        print(f"1. occlusion, 16x16 windows, stride 8 (729 per image), {args.images} images")
        compare_occlusion(model, x[: args.images], y[: args.images], args.repeats)
    if run("pgd"):
        print("\n2. PGD L-inf eps 4/255, 10 steps, 16 images")
        compare_pgd(model, x[:16], y[:16], args.repeats)
    if run("ray") and not args.skip_ray:
        print("\n3. Ray executor, occlusion tasks (16x16 windows, stride 8) of one image each")
        compare_ray(model, x, y, args.ray_tasks, max(args.repeats, 2))


if __name__ == "__main__":
    main()
