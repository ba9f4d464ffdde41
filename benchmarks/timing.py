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
