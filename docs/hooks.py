"""MkDocs hook: generate the reference pages from the code, so they cannot drift from it.

- ``reference/cli.md`` from the argparse parser of ``roiroa.cli`` (every command's help, options and examples);
- ``reference/config.md`` from the ``Config`` dataclasses (every section and key, its type, default and bounds);
- ``reference/results-schema.md`` from ``roiroa/schema/results.schema.json``.

Registered in mkdocs.yml under ``hooks:``; the pages are created in memory at build time (nothing is written
into docs/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def cli_reference() -> str:
    """The CLI page: the top-level help, then each command's help text as argparse prints it."""
    from roiroa.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [
        "# Command-line reference",
        "",
        "Generated from the parser in `roiroa/cli.py` when the documentation is built: what `roiroa --help` and",
        "`roiroa <command> --help` print. [Commands](../commands.md) explains what each command computes.",
        "",
        "## roiroa",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, command in sub.choices.items():
        parts += ["", f"## roiroa {name}", "", "```text", command.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def type_name(annotation: Any) -> str:
    """A readable type: 'int', 'float | None', 'tuple[float, ...]'."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory), or the marker 'required'."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "required"


def bounds_of(f: dataclasses.Field) -> str:
    """'[1, 65536]', '(0, 0.99]', 'a registered importance estimator', or ''."""
    meta = f.metadata
    if "registry" in meta:
        return f"a registered {meta['registry']} name, or `package.module:callable`"
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    left = "(" if meta.get("open_low") else "["
    right = "inf)" if high is None else f"{high}]"
    return f"{left}{'-inf' if low is None else low}, {right}"


def cell(value: Any) -> str:
    """A value as one table cell (JSON, pipes escaped, long lists shortened)."""
    text = json.dumps(value, default=str) if not isinstance(value, str) else json.dumps(value)
    if len(text) > 160:
        text = text[:157] + "..."
    return "`" + text.replace("|", "\\|") + "`"


def section(cls: type, prefix: str, depth: int) -> list[str]:
    """One config section: its docstring, a table of its plain keys, then its subsections."""
    hints = typing.get_type_hints(cls)
    title = f"`[{prefix}]`" if prefix else "Top level"
    lines = ["#" * depth + f" {title}", "", (cls.__doc__ or "").strip().replace("\n    ", "\n"), ""]
    lines += ["| key | type | default | allowed |", "| --- | --- | --- | --- |"]
    nested = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            nested.append((hints[f.name], f"{prefix}.{f.name}" if prefix else f.name))
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        lines.append(f"| `{key}` | `{type_name(hints[f.name])}` | {cell(default_of(f))} | {bounds_of(f)} |")
    for sub_cls, sub_prefix in nested:
        lines += [""] + section(sub_cls, sub_prefix, 3 if depth == 2 else depth)
    return lines


def config_reference() -> str:
    """The config page: every section of ``Config`` with its keys, types, defaults and bounds."""
    from roiroa.evaluate.config import Config

    intro = [
        "# Configuration reference",
        "",
        "Generated from the `Config` dataclasses in `roiroa/evaluate/config.py` when the documentation is built.",
        "A config file (TOML or JSON), `--set section.key=value` on the command line and `config=` in Python all",
        "go through the same checks. [Configuration](../configuration.md) explains the sections with examples;",
        "`roiroa config` prints the effective config.",
        "",
    ]
    return "\n".join(intro + section(Config, "", 2)) + "\n"


def schema_reference() -> str:
    """The results schema page: each top-level key of results.json and its description, then the schema."""
    from roiroa.results import schema

    data = schema()
    lines = [
        "# results.json schema",
        "",
        "Generated from `roiroa/schema/results.schema.json` (JSON Schema) when the documentation is built; the",
        "tests validate every command's results.json against it. [Results](../results.md) explains the files.",
        "",
        "| key | type | description |",
        "| --- | --- | --- |",
    ]
    required = set(data.get("required", []))
    for key, spec in data.get("properties", {}).items():
        kind = spec.get("type", "object" if "properties" in spec else "")
        text = (spec.get("description") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{key}`{' (required)' if key in required else ''} | {kind} | {text} |")
    lines += ["", "## The schema", "", "```json", json.dumps(data, indent=2), "```"]
    return "\n".join(lines) + "\n"


PAGES = {
    "reference/cli.md": cli_reference,
    "reference/config.md": config_reference,
    "reference/results-schema.md": schema_reference,
}


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site (MkDocs >= 1.6: ``File.generated``)."""
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
