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
