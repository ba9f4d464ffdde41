"""The unit of work: a task is a pure function of its inputs on one chunk of images, content-addressed in the
stage cache, safe to compute twice. Stages only build tasks; ``run_tasks`` hands them to the current executor.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from roiroa.cache import StageCache, hash_tensors
from roiroa.data.dataset import Images, ImageSource
from roiroa.evaluate.executors import Reduce, current_executor
from roiroa.utils import batch_slices, progress_stage, stage_seed

log = logging.getLogger(__name__)


class Timings(dict):
    """Seconds per stage; ``with timings('stage'):`` adds the time spent inside and logs it (if it succeeds)."""

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        with progress_stage(stage):
            yield
        elapsed = time.perf_counter() - start
        self[stage] = round(self.get(stage, 0.0) + elapsed, 3)
        log.info("  %-16s %6.1f s", stage, elapsed)


@dataclass(frozen=True)
class Task:
    """One cached unit of work: ``compute()`` returns tensors; ``key`` names its stage-cache entry."""

    key: str
    compute: Callable[[], dict[str, torch.Tensor]]


def run_tasks(
    tasks: Sequence[Task], cache: StageCache, desc: str = "", reduce: Reduce | None = None
) -> list[dict[str, torch.Tensor]]:
    """Every task's tensors, read from the cache or computed (and stored), in order, on the current executor
    (in-process unless a command runs with ``executor = 'ray'``; see :mod:`roiroa.evaluate.executors`).

    ``reduce(i, tensors)``, where given, is what is kept of the i-th task, taken as each result arrives, so a stage
    whose tasks return images can keep only what it reads of them (the images stay in the cache)."""
    return current_executor().run(tasks, cache, desc, reduce)


@dataclass(frozen=True)
class Chunk:
    """A chunk of images: its position in the whole set, its images (a tensor, or image files decoded when a task
    computes: they travel to a worker as their file names), y (n,), and its content hash."""

    index: int
    where: slice
    images: Images
    y: torch.Tensor
    digest: str

    @property
    def x(self) -> torch.Tensor:
        """(n, C, H, W) float32 in [0, 1]; image files are decoded here (the last chunk decoded is kept, so the tasks
        of one chunk decode it once)."""
        return self.images if isinstance(self.images, torch.Tensor) else _decoded(self.images)


@functools.lru_cache(maxsize=1)
def _decoded(images: ImageSource) -> torch.Tensor:
    return images[:]


def chunks(x: Images, y: torch.Tensor, chunk_size: int) -> list[Chunk]:
    """x: (N, C, H, W) and y: (N,) cut into chunks of at most ``chunk_size`` images; image files are not decoded
    (their chunks' hashes are their files' bytes, see :meth:`roiroa.data.lazy.ImageFiles.digest`)."""
    return [
        Chunk(i, s, x[s], y[s], hash_tensors(x[s], y[s]))
        if isinstance(x, torch.Tensor)
        else Chunk(i, s, x.subset(s), y[s], x.digest(y[s], s))
        for i, s in enumerate(batch_slices(len(x), chunk_size))
    ]


def content_digest(x: Images, y: torch.Tensor) -> str:
    """The content hash of images x: (N, C, H, W) with labels y: (N,) (image files: by their bytes, not decoded)."""
    return hash_tensors(x, y) if isinstance(x, torch.Tensor) else x.digest(y)


def subchunk(chunk: Chunk, idx: torch.Tensor) -> Chunk:
    """The images of ``chunk`` at positions ``idx`` (1-D int64, within the chunk) as a chunk of their own, with
    its own content hash; ``where`` stays the parent chunk's place in the whole set."""
    x, y = chunk.x[idx], chunk.y[idx]
    return Chunk(chunk.index, chunk.where, x, y, hash_tensors(x, y))


def task_seed(seed: int, purpose: str, *parts: Any) -> int:
    """The seed of a task from the run's seed, its purpose and what it works on (e.g. an attack and a chunk's
    hash), so the same work on the same images draws the same random numbers in every command."""
    return stage_seed(seed, ":".join([purpose, *map(str, parts)]))


def concat(results: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
    """The tensors stored under ``key`` in every chunk's result, concatenated along the first axis."""
    return torch.cat([r[key] for r in results])
