"""The timing helper the benchmark scripts share (they import it from their own folder)."""

from __future__ import annotations

import time
from collections.abc import Callable


def seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """The best wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """The best wall time of each function over ``repeats`` rounds that call every function once in
    turn (after one warm-up round), so that a slow spell of a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
