"""The Ray executor: a local cluster of 2 CPU workers gives the same results.json as the in-process run, stores
every task in the stage cache, and a second run on that cache computes nothing."""

from __future__ import annotations

import json
import sys

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray executor's tests need ray (pip install 'roiroa[ray]')")

import roiroa  # noqa: E402
from roiroa.cache import StageCache  # noqa: E402
from roiroa.evaluate.executors import LocalExecutor, RayExecutor, use_executor  # noqa: E402
from roiroa.evaluate.tasks import Task, run_tasks  # noqa: E402
from test_engine import SMALL, TwoSquares, squares, train_two_squares  # noqa: E402, F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPU workers; the test modules travel by value (workers cannot import them)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules["test_engine"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model() -> TwoSquares:
    return train_two_squares()


def without_timings(results: dict) -> dict:
    """results.json with the seconds of each stage and the executor left out."""
    return {k: v for k, v in json.loads(json.dumps(results)).items() if k != "timings"}


def test_ray_run_equals_the_in_process_run(cluster, model, tmp_path):
    x, y = squares(48, seed=2)
    config = SMALL | {"chunk_size": 8}
    local = roiroa.Experiment(model=model, data=(x, y), config=config, cache=False).run().results
    cache = tmp_path / "cache"
    ray_config = config | {"executor": "ray"}
    remote = roiroa.Experiment(model=model, data=(x, y), config=ray_config, cache=cache)
    assert without_timings(remote.run().results) == without_timings(local)
    stored = StageCache(cache / "stages")
    again = roiroa.Experiment(model=model, data=(x, y), config=ray_config, cache=cache)
    again.cache = stored
    assert without_timings(again.run().results) == without_timings(local)
    assert stored.misses == 0 and stored.hits > 0  # resumed: every task read from the cache


def test_tasks_run_on_the_workers_and_in_order(cluster, tmp_path):
    cache = StageCache(tmp_path)
    tasks = [Task(f"t{i}", lambda i=i: {"v": torch.full((3,), float(i))}) for i in range(6)]
    with use_executor(RayExecutor()):
        out = run_tasks(tasks, cache, "test")
    assert [float(r["v"][0]) for r in out] == [0, 1, 2, 3, 4, 5] and cache.misses == 6
    with use_executor(LocalExecutor()):
        assert [float(r["v"][1]) for r in run_tasks(tasks, cache)] == [0, 1, 2, 3, 4, 5]
    assert cache.misses == 6 and cache.hits == 6


@pytest.mark.parametrize("executor", [LocalExecutor, RayExecutor])
def test_reduce_keeps_part_of_each_result_and_the_cache_keeps_all(cluster, tmp_path, executor):
    """With ``reduce``, each task's result, read from the cache or computed, is reduced with its index, in
    order; what is stored stays the whole result."""
    cache = StageCache(tmp_path)
    tasks = [Task(f"t{i}", lambda i=i: {"v": torch.full((3,), float(i))}) for i in range(5)]
    run_tasks(tasks[:2], cache)  # two cached, three to compute

    def keep(i: int, result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"i": torch.tensor([i]), "sum": result["v"].sum(0, keepdim=True)}

    with use_executor(executor()):
        out = run_tasks(tasks, cache, "test", reduce=keep)
    assert [(int(r["i"]), float(r["sum"])) for r in out] == [(i, 3.0 * i) for i in range(5)]
    assert all(set(r) == {"i", "sum"} for r in out)
    assert all(torch.equal(cache.stored(f"t{i}")["v"], torch.full((3,), float(i))) for i in range(5))


def test_a_worker_keeps_the_model_of_its_tasks(cluster, model, tmp_path):
    """The model a stage's tasks capture is shipped once and kept by each worker, so per-model caches (the folded
    copy, the occlusion engine) survive from task to task: a worker's second task sees its first task's mark."""

    x, _ = squares(1, seed=3)

    def visit(i: int) -> dict[str, torch.Tensor]:
        model.visits = getattr(model, "visits", 0) + 1  # type: ignore[attr-defined]
        with torch.no_grad():
            return {"visits": torch.tensor([model.visits]), "logits": model(x)}

    tasks = [Task(f"v{i}", lambda i=i: visit(i)) for i in range(6)]
    with use_executor(RayExecutor()):
        out = run_tasks(tasks, StageCache(tmp_path), "test")
    visits = [int(r["visits"]) for r in out]
    assert max(visits) >= 2  # 6 tasks on 2 workers: rebuilding the model for every task would give all 1s
    assert all(torch.equal(r["logits"], out[0]["logits"]) for r in out)


def test_the_packer_ships_each_module_once():
    from roiroa.evaluate.executors import ModulePacker

    put: list[bytes] = []
    packer = ModulePacker(lambda data: put.append(data) or len(put) - 1)
    net = torch.nn.Linear(64, 64)
    payloads = [packer.dumps(lambda k=k: {"y": net(torch.ones(1, 64)) * k}) for k in range(3)]
    assert len(put) == 1 and all(refs == {next(iter(packer.refs)): 0} for _, refs in payloads)
    assert all(len(p) < len(put[0]) / 4 for p, _ in payloads)  # the weights travel once, not in each closure


def test_the_packer_sends_a_view_without_its_whole_storage():
    from roiroa.evaluate.executors import ModulePacker

    images = torch.rand(100, 3, 16, 16)
    chunk = images[10:12]  # a chunk sliced from the whole set shares its storage
    payload, _ = ModulePacker(lambda data: None).dumps(lambda: {"x": chunk * 2})
    assert len(payload) < images.numel()  # about 2 images' bytes (6 KB), not 100 images' (300 KB)
    assert torch.equal(ray.cloudpickle.loads(payload)()["x"], chunk * 2)


def test_a_chunk_of_an_image_folder_is_decoded_on_the_worker(cluster, tmp_path):
    """The grid on image files decoded lazily: each task ships its chunk's file names (not its pixels), the worker
    decodes them, and the flags equal the in-process run's on the same images decoded up front."""
    from roiroa.data.imagenet import list_labelled_files
    from roiroa.data.lazy import lazy_dataset
    from roiroa.evaluate.attacking import attack_entries
    from roiroa.evaluate.executors import ModulePacker
    from roiroa.evaluate.grid import Defence, GridContext, evaluate_grid, standard_cells
    from roiroa.evaluate.tasks import chunks
    from test_lazy_images import write_folder

    folder = write_folder(tmp_path / "images")
    files = list_labelled_files(folder, folder / "labels.csv", resize=40, crop=32)
    data, eager = lazy_dataset(files), files.decode()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    model = torch.nn.Sequential(*model, torch.nn.Linear(16, 3)).eval()
    chunk = chunks(data.images, data.labels, 6)[0]
    payload, _ = ModulePacker(lambda b: None).dumps(lambda: {"x": chunk.x})
    assert len(payload) < chunk.x.numel()  # file names travel, not the 74 kB of decoded pixels
    f = Defence("none", "none", "f", model, model, "exact", "f")
    attacks = attack_entries(({"name": "fgsm", "eps": 0.05},), 4)
    cells = standard_cells([f], attacks)

    def flags(images, executor, cache):
        with use_executor(executor):
            found = evaluate_grid(GridContext(model, "m", cache, 0), [f], attacks, cells, images, data.labels, 5)
        return {c: r.correct.tolist() for c, r in found.items()}

    remote = flags(data.images, RayExecutor(), StageCache(tmp_path / "cache"))
    assert remote == flags(eager.images, LocalExecutor(), StageCache(None))
