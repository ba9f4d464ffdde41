"""Write the README's quick start from the script that it shows: runs examples/quickstart.py and puts its code
and its printed output between the README's ``<!-- quickstart:begin -->`` and ``<!-- quickstart:end -->``.

    PYTHONPATH=src python docs/gen_readme.py            # runs the quick start (minutes on a CPU)
    PYTHONPATH=src python docs/gen_readme.py --output FILE   # uses an output saved from an earlier run

The output's last line "time: ... s" is left out: it is this machine's time, not a claim.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "quickstart.py"
README = ROOT / "README.md"
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"


def block(code: str, output: str) -> str:
    """The README text between the markers: the code, then what it printed."""
    printed = "\n".join(line for line in output.rstrip().splitlines() if not line.startswith("time: "))
    code_block = f"```python\n{code.rstrip()}\n```"
    return f"{BEGIN}\n{code_block}\n\nprints (`examples/quickstart.py`, CPU):\n\n```text\n{printed}\n```\n{END}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="the quick start's saved output, instead of running it")
    args = parser.parse_args()
    if args.output:
        output = args.output.read_text()
    else:
        output = subprocess.run([sys.executable, str(SCRIPT)], check=True, capture_output=True, text=True).stdout
    text = README.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"{README} has no {BEGIN} ... {END} block")
    README.write_text(pattern.sub(lambda _: block(SCRIPT.read_text(), output), text))
    print(f"wrote the quick start into {README}")


if __name__ == "__main__":
    main()
