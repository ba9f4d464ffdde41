"""Executors: where the engine's tasks run. In-process (the default) or as Ray tasks on a cluster.

A task (:class:`roiroa.evaluate.tasks.Task`) is a pure function of its inputs with a content-addressed key in
the stage cache, so it is safe to compute twice. Every executor first reads what the cache already holds and
computes only the rest; each result is stored in the cache as soon as it arrives, so an interrupted run
resumes where it stopped. On Ray, a task is a remote call that returns its tensors to the driver, which
writes them through the same :class:`~roiroa.cache.StageCache`: workers need no shared folder. A task whose
worker dies is retried by Ray (``max_retries``). Each task asks for one GPU where the cluster has GPUs and
the run's device is not the CPU; a worker's GPU is its ``cuda`` (Ray sets ``CUDA_VISIBLE_DEVICES``).

The executor of a command is chosen by ``config.executor`` ('local' or 'ray') and ``config.ray_address``;
:func:`uses_executor` sets it for the duration of a command, and :func:`current_executor` is what
:func:`roiroa.evaluate.tasks.run_tasks` uses.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch

from roiroa.cache import StageCache
from roiroa.errors import InputError
from roiroa.utils import progress

Result = dict[str, torch.Tensor]
F = TypeVar("F", bound=Callable[..., Any])
RAY_RETRIES = 3


class Work(Protocol):
    """What an executor runs: a cache key and a function computing the tensors stored under it."""

    @property
    def key(self) -> str: ...
    @property
    def compute(self) -> Callable[[], Result]: ...


class LocalExecutor:
    """Runs the tasks one after another in this process (the default)."""

    name = "local"

    def run(self, tasks: Sequence[Work], cache: StageCache, desc: str = "") -> list[Result]:
        """Every task's tensors, read from the cache or computed (and stored), in order."""
        return [cache.tensors(t.key, t.compute) for t in progress(tasks, desc, total=len(tasks), unit="chunks")]


def _compute_on_worker(compute: Callable[[], Result]) -> Result:
    """Runs on a Ray worker: the task's tensors, on the CPU (to travel back to the driver)."""
    return {k: v.detach().cpu() for k, v in compute().items()}


class RayExecutor:
    """Runs the tasks the cache lacks as Ray remote calls, storing each result as it arrives.

    Args:
        address: a running cluster's address ('auto', 'ray://host:10001', 'host:6379'); None: the cluster
            this process already joined (``ray.init`` called before), else a new local one.
        device: the run's device ('auto', 'cpu', 'cuda', 'cuda:N'): not 'cpu' and a cluster with GPUs gives
            each task one GPU.
        max_retries: times Ray runs a task again after its worker died.
    """

    name = "ray"

    def __init__(self, address: str | None = None, device: str = "auto", max_retries: int = RAY_RETRIES) -> None:
        self.ray = connect_ray(address)
        gpus = self.ray.cluster_resources().get("GPU", 0) > 0 and device != "cpu"
        remote = self.ray.remote(_compute_on_worker)
        self.remote = remote.options(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=max_retries)

    def run(self, tasks: Sequence[Work], cache: StageCache, desc: str = "") -> list[Result]:
        """Every task's tensors, in order: cached ones read, the others computed on the cluster and stored."""
        out: list[Result | None] = [cache.stored(t.key) for t in tasks]
        pending = {self.remote.remote(t.compute): i for i, t in enumerate(tasks) if out[i] is None}
        done = iter(range(len(pending)))
        for _ in progress(done, desc, total=len(pending), unit="chunks"):
            ready, _rest = self.ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            value = self.ray.get(ready[0])
            out[i] = cache.tensors(tasks[i].key, lambda value=value: value)  # type: ignore[misc]
        return [r for r in out if r is not None]


def connect_ray(address: str | None) -> Any:
    """The ``ray`` module, connected to ``address`` (or to the running or a new local cluster)."""
    try:
        import ray
    except ImportError:
        raise InputError("executor 'ray' needs Ray: pip install 'roiroa[ray]' (or pip install ray).") from None
    if not ray.is_initialized():
        env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if os.environ.get("PYTHONPATH") else None
        try:
            ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=False)
        except ConnectionError as err:
            raise InputError(f"cannot reach the Ray cluster at {address!r} ({err}); start it with ray start.") from None
    return ray


Executor = LocalExecutor | RayExecutor
_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("roiroa_executor", default=None)


def current_executor() -> Executor:
    """The executor set by :func:`use_executor` (in a command), else the in-process one."""
    return _CURRENT.get() or LocalExecutor()


def make_executor(kind: str, address: str | None = None, device: str = "auto") -> Executor:
    """'local' -> :class:`LocalExecutor`; 'ray' -> :class:`RayExecutor` on ``address``."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address, device)
    raise InputError(f"executor must be 'local' or 'ray'; got {kind!r}.")


@contextmanager
def use_executor(executor: Executor) -> Iterator[Executor]:
    """Run the tasks of the body on ``executor``."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)


def uses_executor(command: F) -> F:
    """Decorate a command ``f(config, ...)``: its tasks run on ``config.executor`` (at ``config.ray_address``)."""

    @functools.wraps(command)
    def wrapped(config: Any, *args: Any, **kwargs: Any) -> Any:
        if config.executor == "local":  # in-process, or the executor an API caller set with use_executor
            return command(config, *args, **kwargs)
        with use_executor(make_executor(config.executor, config.ray_address, config.device)):
            return command(config, *args, **kwargs)

    return wrapped  # type: ignore[return-value]
