"""A second `roiroa run --quick` with a warm cache against the first, cold one: the ratio of their CPU times.

Both runs are separate processes on the same machine, one after the other, with the same fresh cache folder
(the first trains the model, attacks, maps and evaluates everything; the second should recompute nothing). CPU
time is user + system time of the child process (it does not depend on what else the machine runs as much as
wall time does). The goal of issue 13: the warm run costs under 15% of the cold one.

    python benchmarks/warm_cache.py [--command run] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def cpu_seconds(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    """User + system CPU seconds of one child process (it must exit 0)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", default="run", choices=("run", "defend", "patches"))
    parser.add_argument("--repeats", type=int, default=1, help="cold/warm pairs, each with a fresh cache")
    args = parser.parse_args()
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            env = dict(os.environ, ROIROA_CACHE=str(Path(root) / "cache"), TQDM_DISABLE="1")
            cmd = [sys.executable, "-m", "roiroa", args.command, "--quick", "--no-progress"]
            cold = cpu_seconds([*cmd, "--out", "cold"], env, Path(root))
            warm = cpu_seconds([*cmd, "--out", "warm"], env, Path(root))
            stages = json.loads((Path(root) / "warm" / "results.json").read_text())["timings"]
            print(
                f"{args.command} --quick, pair {i + 1}: cold {cold:.1f} s CPU, warm {warm:.1f} s CPU, "
                f"ratio {warm / cold:.3f} (goal < 0.15); warm stages {sum(stages.values()):.2f} s: {stages}"
            )


if __name__ == "__main__":
    main()
