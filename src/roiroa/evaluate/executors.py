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
import hashlib
import io
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from roiroa.cache import StageCache
from roiroa.errors import InputError
from roiroa.utils import progress

Result = dict[str, torch.Tensor]
Reduce = Callable[[int, Result], Result]
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

    def run(
        self, tasks: Sequence[Work], cache: StageCache, desc: str = "", reduce: Reduce | None = None
    ) -> list[Result]:
        """Every task's tensors, read from the cache or computed (and stored), in order; with ``reduce``,
        ``reduce(i, tensors)`` of the i-th task instead, taken as each arrives (the full tensors stay in the cache)."""
        keep = reduce or _whole
        counted = progress(tasks, desc, total=len(tasks), unit="chunks")
        return [keep(i, cache.tensors(t.key, t.compute)) for i, t in enumerate(counted)]


def _whole(_i: int, result: Result) -> Result:
    return result


# Ray pickles a task's closure with every call, so a model captured by the closures of a stage would travel, and
# be rebuilt on the worker, once per task; and a rebuilt model is a new object, so the per-model caches (the
# batch-norm-folded traced copy, the incremental occlusion engine) would miss on every task. So each distinct
# module a stage's closures capture goes through the object store once, and each worker keeps the last
# WORKER_MODULES modules it received, keyed by the hash of their bytes: the tasks of a stage, and of later stages
# with the same model, share one object per worker.
WORKER_MODULES = 4
_MODULES: OrderedDict[str, nn.Module] = OrderedDict()  # on a worker: key -> module


def _worker_module(key: str) -> nn.Module:
    """On a worker, while a task unpickles: the module stored under ``key`` (see :class:`ModulePacker`)."""
    return _MODULES[key]


def _compute_on_worker(payload: bytes, modules: dict[str, Any]) -> Result:
    """Runs on a Ray worker: the task's tensors, on the CPU (to travel back to the driver).

    Args:
        payload: the task's ``compute``, pickled by :class:`ModulePacker` (its modules replaced by keys).
        modules: key -> object-store reference of each module's pickled bytes; fetched only when not held.
    """
    import ray
    from ray import cloudpickle

    for key, ref in modules.items():
        if key not in _MODULES:
            _MODULES[key] = cloudpickle.loads(ray.get(ref))
        _MODULES.move_to_end(key)
    while len(_MODULES) > max(WORKER_MODULES, len(modules)):
        _MODULES.popitem(last=False)
    compute = cloudpickle.loads(payload)
    return {k: compact(v.detach().cpu()) for k, v in compute().items()}


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied when it is a view of a larger storage: pickling a view sends the whole storage (a chunk of
    images sliced from the test set would carry the whole test set)."""
    if t.untyped_storage().nbytes() <= t.numel() * t.element_size():
        return t
    copy = t.detach().clone()
    return copy.requires_grad_() if t.requires_grad and t.is_leaf else copy


def _same(value: Any) -> Any:
    return value


class ModulePacker:
    """Pickles task closures for Ray with every ``nn.Module`` they capture replaced by a key (each module is
    pickled once per packer and put in the object store once: ``refs``) and every tensor view compacted."""

    def __init__(self, put: Callable[[bytes], Any]) -> None:
        self.put = put
        self.keys: dict[int, str] = {}  # id(module) -> key
        self.refs: dict[str, Any] = {}  # key -> object-store reference of the module's bytes

    def key(self, module: nn.Module) -> str:
        """The key of ``module``: the SHA-256 of its pickled bytes (stored the first time)."""
        from ray import cloudpickle

        if id(module) not in self.keys:
            data = cloudpickle.dumps(module)
            key = hashlib.sha256(data).hexdigest()
            self.keys[id(module)] = key
            self.refs.setdefault(key, self.put(data))
        return self.keys[id(module)]

    def dumps(self, compute: Callable[[], Result]) -> tuple[bytes, dict[str, Any]]:
        """(the pickled closure, key -> reference of every module it needs)."""
        from ray import cloudpickle

        used: set[str] = set()
        packer = self

        class Pickler(cloudpickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, nn.Module):
                    key = packer.key(obj)
                    used.add(key)
                    return _worker_module, (key,)
                if isinstance(obj, torch.Tensor) and compact(obj) is not obj:
                    return _same, (compact(obj),)
                return super().reducer_override(obj)

        buffer = io.BytesIO()
        Pickler(buffer).dump(compute)
        return buffer.getvalue(), {k: self.refs[k] for k in used}


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

    def run(
        self, tasks: Sequence[Work], cache: StageCache, desc: str = "", reduce: Reduce | None = None
    ) -> list[Result]:
        """Every task's tensors, in order: cached ones read, the others computed on the cluster and stored; with
        ``reduce``, ``reduce(i, tensors)`` of the i-th task instead, taken as each arrives."""
        keep = reduce or _whole
        out: list[Result | None] = [
            None if (r := cache.stored(t.key)) is None else keep(i, r) for i, t in enumerate(tasks)
        ]
        packer = ModulePacker(self.ray.put)
        pending = {self.remote.remote(*packer.dumps(t.compute)): i for i, t in enumerate(tasks) if out[i] is None}
        done = iter(range(len(pending)))
        for _ in progress(done, desc, total=len(pending), unit="chunks"):
            ready, _rest = self.ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            value = self.ray.get(ready[0])
            out[i] = keep(i, cache.tensors(tasks[i].key, lambda value=value: value))  # type: ignore[misc]
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
