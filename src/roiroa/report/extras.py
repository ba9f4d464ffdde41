"""Parts of results.json this report does not know by name (added by a newer command, a plug-in, or a user),
shown as plain tables so that nothing a folder holds is hidden: a list of flat records becomes a table, a
flat mapping a two-column table; anything nested is shown as escaped JSON. Every key and value is escaped."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from roiroa.report.markup import e, table

# The keys of results.json the report's own sections read.
KNOWN_KEYS = frozenset(
    {
        "roiroa_results_version", "command", "seed", "quick", "device", "timings", "versions", "dataset", "model",
        "attacks", "maps", "regions", "statistics", "defence", "defence_short", "oracle", "n_test", "table",
        "notes", "n_sanity", "sweep", "sanity",
    }
)  # fmt: skip


def scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def value_text(value: Any) -> str:
    """A cell: numbers to 4 significant digits, other scalars as text, anything else as compact JSON."""
    if isinstance(value, float):
        return e(f"{value:.4g}")
    if scalar(value):
        return e("–" if value is None else value)
    return e(json.dumps(value, default=str)[:300])


def records_table(rows: list[Mapping[str, Any]]) -> str:
    """A list of records as a table, its columns in first-seen order."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return table([e(c) for c in columns], ([value_text(r.get(c)) for c in columns] for r in rows))


def extra_part(key: str, value: Any) -> str:
    """One unknown entry of results.json as HTML."""
    title = f"<h3><code>{e(key)}</code></h3>"
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return title + records_table(value)
    if isinstance(value, Mapping) and value and all(scalar(v) for v in value.values()):
        return title + table(["key", "value"], ([e(k), value_text(v)] for k, v in value.items()))
    if isinstance(value, Mapping) and value and all(isinstance(v, list) for v in value.values()):
        return title + "".join(extra_part(f"{key}.{k}", v) for k, v in value.items())
    return title + f"<pre>{e(json.dumps(value, indent=1, default=str)[:20000])}</pre>"


def extras_section(results: Mapping[str, Any]) -> str:
    """Every entry of results.json that no other section shows (nothing when there is none)."""
    extra = {k: v for k, v in results.items() if k not in KNOWN_KEYS and v not in (None, [], {})}
    if not extra:
        return ""
    intro = "<p class=note>Parts of results.json this report shows as they are, by their keys.</p>"
    return "<h2>More results</h2>" + intro + "".join(extra_part(k, v) for k, v in extra.items())
