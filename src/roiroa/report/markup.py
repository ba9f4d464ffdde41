"""The HTML building blocks of the report: escaping, number formats, tables, inline images, and the page's CSS
and Content-Security-Policy. Cells given to :func:`table` are already-escaped HTML; every user string goes
through :func:`e`."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; margin: .2em 0; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; } td { white-space: nowrap; } td.l { white-space: normal; }
.wide { overflow-x: auto; }
.null { color: #777; } .note { color: #555; font-size: .9em; } .absent { color: #a33; }
.headline { display: flex; flex-wrap: wrap; gap: .8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 12em; }
.card .v { font-size: 1.5em; font-weight: 600; } .card .k { color: #555; font-size: .85em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
dt { font-weight: 600; } dd { margin: 0 0 .5em 1.5em; }
body > .intro { margin: 0 0 .4em; }
.verdict { border: 2px solid #bbb; border-radius: 8px; padding: .2em 1em .4em; margin: .4em 0 1.2em; }
.verdict h2 { margin-top: .3em; border: 0; font-size: 1.3em; } .verdict h3 { margin: .5em 0 .2em; font-size: 1.05em; }
.verdict p { margin: .3em 0; } .verdict table { margin: .3em 0 .6em; font-size: .85em; }
.verdict td { line-height: 1.3; padding: .2em .45em; } .verdict ul { margin: .2em 0 .4em; padding-left: 1.4em; }
.better { color: #17702a; font-weight: 600; } .worse { color: #b0261d; font-weight: 600; }
.indistinguishable { color: #666; }
.small { font-size: .85em; color: #555; }
"""


def e(value: Any) -> str:
    """Any value as escaped HTML text (quotes too)."""
    return html.escape(str(value), quote=True)


def pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def ci_text(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """'mean [low, high]' of a bootstrap_ci dict."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("low") is None:
        return num(stat["mean"], digits)
    return f"{num(stat['mean'], digits)} [{num(stat['low'], digits)}, {num(stat['high'], digits)}]"


def png_img(data: bytes, alt: str) -> str:
    """An <img> with the PNG inline as a base64 data URI."""
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """An HTML table; header and cells are already-escaped HTML; the first ``left`` columns align left."""

    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
