"""Small helpers every stage uses: batching, devices, progress bars, seeds."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from roiroa.errors import InputError

T = TypeVar("T")

PROGRESS_VARIABLE = "ROIROA_PROGRESS_INTERVAL"  # seconds between progress lines when stderr is not a terminal
DEFAULT_PROGRESS_INTERVAL = 5.0
progress_log = logging.getLogger("roiroa.progress")
_PROGRESS: dict[str, Any] = {"enabled": True, "callback": None, "bars": None}


@dataclass
class _Level:
    """One active progress loop: its label, items done of total, its unit and when it began."""

    desc: str
    total: int | None
    unit: str
    start: float = field(default_factory=time.perf_counter)
    done: int = 0

    def fraction(self, inner: float) -> float | None:
        """The share of this loop done, counting ``inner`` (the share of the current item done); None if unknown."""
        return None if not self.total else min(1.0, (self.done + inner) / self.total)


@dataclass(frozen=True)
class ProgressEvent:
    """A progress report. labels: the nested loops, outermost (the stage) first; done/total/unit/rate: the
    innermost loop's counts and units per second; elapsed: seconds since the stage began; eta: seconds left in
    ``eta_of`` (the outermost loop whose size is known), None when unknown; finished: the stage has ended."""

    labels: tuple[str, ...]
    done: int
    total: int | None
    unit: str
    rate: float
    elapsed: float
    eta: float | None
    eta_of: str
    finished: bool

    def line(self) -> str:
        """One short line, e.g. 'maps > attack pgd-linf > pgd-linf: 768/1024 images, 42.1 images/s; maps 0:34,
        attack pgd-linf ETA 1:10', or at the end 'maps: done in 1:02'."""
        where = " > ".join(self.labels)
        if self.finished:
            counted = f"{self.done} {self.unit}, {self.rate:.3g} {self.unit}/s, " if self.done else ""
            return f"{where}: {counted}done in {clock(self.elapsed)}"
        if not self.unit:  # a stage with no counted loop running
            return f"{where}: running, {clock(self.elapsed)}"
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        rate = f", {self.rate:.3g} {self.unit}/s" if self.done else ""
        eta = f", {self.eta_of} ETA {clock(self.eta)}" if self.eta is not None else ""
        return f"{where}: {count} {self.unit}{rate}; {self.labels[0]} {clock(self.elapsed)}{eta}"


_STACK: list[_Level] = []
_TICKER: dict[str, Any] = {"thread": None, "stop": None}


def clock(seconds: float) -> str:
    """Seconds as m:ss (h:mm:ss from an hour)."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def set_progress(enabled: bool, callback: Callable[[ProgressEvent], None] | None = None) -> None:
    """Turn roiroa's progress reports on or off, and choose where they go.

    On a terminal, loops show tqdm bars on stderr. Elsewhere (piped output, a notebook, a log file), or when a
    callback is given, a :class:`ProgressEvent` is reported every ``ROIROA_PROGRESS_INTERVAL`` seconds (default 5)
    and when a stage ends: to ``callback`` (called from a background thread) or, without one, as an INFO record of
    the ``roiroa.progress`` logger (``logging.basicConfig(level=logging.INFO)`` shows them).
    """
    _PROGRESS["enabled"] = enabled
    _PROGRESS["callback"] = callback


def progress_interval() -> float:
    """Seconds between progress reports: ROIROA_PROGRESS_INTERVAL (a positive number), else 5."""
    text = os.environ.get(PROGRESS_VARIABLE, "").strip()
    try:
        value = float(text) if text else DEFAULT_PROGRESS_INTERVAL
    except ValueError:
        raise InputError(f"{PROGRESS_VARIABLE}={text!r} is not a number of seconds; set e.g. 5 or unset it.") from None
    if not value > 0:
        raise InputError(f"{PROGRESS_VARIABLE}={text!r} must be positive; set e.g. 5 or unset it.")
    return value


def _event(finished: bool = False) -> ProgressEvent | None:
    """The state of the active loops as one event (None when no loop is active)."""
    stack = list(_STACK)
    if not stack:
        return None
    now, inner = time.perf_counter(), stack[-1]
    share, known = 0.0, None
    for level in reversed(stack):  # the share done, from the innermost loop out, as far as sizes are known
        f = level.fraction(share)
        if f is None:
            break
        share, known = f, level
    eta = (now - known.start) * (1 - share) / share if known is not None and share > 0 else None
    rate = inner.done / max(now - inner.start, 1e-9)
    labels = tuple(f"{v.desc} ({v.done}/{v.total} {v.unit})" if v.total else v.desc for v in stack[:-1])
    labels += (inner.desc,)
    eta_of = known.desc if known is not None else ""
    return ProgressEvent(labels, inner.done, inner.total, inner.unit, rate, now - stack[0].start, eta, eta_of, finished)


def _report(event: ProgressEvent | None) -> None:
    """Send an event to the callback, or log it on 'roiroa.progress'."""
    if event is None:
        return
    callback = _PROGRESS["callback"]
    if callback is not None:
        callback(event)
    else:
        progress_log.info("%s", event.line())


def _lines_wanted() -> bool:
    """Time-based lines: with a callback, or when bars are not shown (stderr not a terminal)."""
    if _PROGRESS["callback"] is not None:
        return True
    bars = _PROGRESS["bars"]
    return not (sys.stderr.isatty() if bars is None else bars)


def _start_ticker() -> None:
    """A daemon thread that reports the active loops every interval until the outermost loop ends."""
    stop, interval = threading.Event(), progress_interval()

    def tick() -> None:
        while not stop.wait(interval):
            _report(_event())

    _TICKER["stop"] = stop
    _TICKER["thread"] = threading.Thread(target=tick, name="roiroa-progress", daemon=True)
    _TICKER["thread"].start()


def _stop_ticker() -> None:
    if _TICKER["stop"] is not None:
        _TICKER["stop"].set()
        _TICKER["thread"].join()
    _TICKER["stop"] = _TICKER["thread"] = None


def _push(level: _Level) -> bool:
    """Make ``level`` the innermost active loop; True when it reports by lines (not a bar)."""
    lines = _lines_wanted()
    _STACK.append(level)
    if lines and len(_STACK) == 1:
        _start_ticker()
    return lines


def _pop(level: _Level, lines: bool, finished: bool) -> None:
    """End ``level``; the outermost loop reports its end (when it finished) and stops the ticker."""
    if lines and finished and _STACK and _STACK[0] is level:
        _report(_event(finished=True))
    _STACK.remove(level)
    if lines and not _STACK:
        _stop_ticker()


@contextmanager
def progress_stage(desc: str) -> Iterator[None]:
    """A named stage of work of unknown size: loops inside it report under its name, and when output is not a
    terminal a line comes every few seconds while it runs and one when it ends (see :func:`set_progress`)."""
    if not _PROGRESS["enabled"] or os.environ.get("TQDM_DISABLE"):
        yield
        return
    level = _Level(desc, None, "")
    lines, finished = _push(level), False
    try:
        yield
        finished = True
    finally:
        _pop(level, lines, finished)


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "steps", sizes: Sequence[int] | None = None
) -> Iterator[T]:
    """Iterate ``iterable``, reporting progress under the label ``desc``: a tqdm bar on a terminal, else a line every
    few seconds (see :func:`set_progress`). ``sizes``: how many ``unit`` each item counts (e.g. images per batch);
    ``total`` defaults to their sum or ``len(iterable)``. Loops nest: an inner loop's line names its outer loops."""
    if not _PROGRESS["enabled"] or os.environ.get("TQDM_DISABLE"):
        yield from iterable
        return
    if total is None:
        total = sum(sizes) if sizes is not None else len(iterable) if isinstance(iterable, Sized) else None
    level = _Level(desc, total, unit)
    lines, finished = _push(level), False
    bar = None if lines else tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False, dynamic_ncols=True)
    try:
        for i, item in enumerate(iterable):
            yield item
            step = sizes[i] if sizes is not None else 1
            level.done += step
            if bar is not None:
                bar.update(step)
        finished = True
    finally:
        if bar is not None:
            bar.close()
        _pop(level, lines, finished)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive int; got {batch_size}.")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA where available, else CPU; 'cpu', 'cuda' and 'cuda:N' as given (that GPU must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = name.partition(":")[2]
    if not (name == "cuda" or (name.startswith("cuda:") and index.isdigit())):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}.")
    if not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but PyTorch sees no CUDA GPU: use --device cpu.")
    if index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InputError(f"device {name!r}: PyTorch sees {count} GPU(s), cuda:0..cuda:{count - 1}; choose one of them.")
    return torch.device(name)


def stage_seed(seed: int, stage: str) -> int:
    """A seed for one named stage, derived from the run's seed, so every stage is reproducible on its own."""
    digest = hashlib.sha256(f"{seed}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_all(seed: int) -> None:
    """Seed torch's global generators (CPU and CUDA)."""
    torch.manual_seed(seed)
