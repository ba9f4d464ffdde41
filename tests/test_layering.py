"""The package's shape: data flows one way, no import cycle anywhere, short functions in the engine.

Imports are read from the source with ``ast`` (every ``import`` statement, at module level or inside a
function, except those under ``if TYPE_CHECKING``), so a cycle hidden in a function body counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "roiroa"

# The layers, lowest first: a module may import its own layer and the layers below, never above.
LAYERS = [
    {"errors", "utils", "validation", "registry", "cache", "files", "filters", "geometry", "results", "version"},
    {"data"},
    {"models"},
    {"attacks"},
    {"maps"},
    {"regions"},
    {"defence"},
    {"report"},
    {"evaluate"},
    {"cli", "__init__", "__main__"},
]
# report/ draws from results folders alone: it may import only these (and itself).
REPORT_MAY_IMPORT = {"errors", "files", "results", "report", "version"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def imports_of(path: Path) -> set[str]:
    """The roiroa modules a file imports (absolute names)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("roiroa")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("roiroa"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (names resolved to existing modules)."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    out = {}
    for name, path in files.items():
        targets = {t for t in imports_of(path) if t in files}
        out[name] = {t for t in targets if t != name}
    return out


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top(module) in names)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])


def test_data_flows_one_way():
    bad = [
        f"{m} imports {t}"
        for m, targets in graph().items()
        for t in targets
        if top(m) != top(t) and layer(t) > layer(m)
    ]
    assert not bad, "imports against the flow data -> models -> attacks -> maps -> regions -> defence: " + "; ".join(
        bad
    )


def test_maps_do_not_import_regions_and_report_runs_no_model():
    g = graph()
    assert not [t for m, ts in g.items() if top(m) == "maps" for t in ts if top(t) == "regions"]
    report = {t for m, ts in g.items() if top(m) == "report" for t in ts}
    assert {top(t) for t in report} <= REPORT_MAY_IMPORT, sorted(report)


def test_commands_never_import_each_other():
    commands = {"roiroa.evaluate.run", "roiroa.evaluate.defend", "roiroa.evaluate.patches"}
    g = graph()
    assert not [(c, t) for c in commands for t in g[c] if t in commands]


def test_engine_functions_are_short():
    """evaluate/ holds no function over 50 lines (its docstring included)."""
    long = []
    for path in (SRC / "evaluate").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 50:
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert not long, long


def test_one_neutralized_model_one_fill_registry_one_scope_protocol():
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    neutralized = [p.name for p, s in sources.items() if "class Neutraliz" in s]
    assert neutralized == ["neutralizer.py"]
    assert sum('Registry("fill")' in s for s in sources.values()) == 1
    assert sum("class MaskScope(Protocol)" in s for s in sources.values()) == 1
    assert sum("class Preprocessed(nn.Module)" in s for s in sources.values()) == 1
