"""Self-contained HTML pages: inline CSS, plots embedded as base64 PNG, no external assets, every piece of
user text escaped. Small builders that return HTML strings; `page` wraps them.

    write_text_atomic(out / "eval.html", page("eval", [heading("Metrics"), table(headers, rows), image(png)]))
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .5rem 0; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td pre { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 12px; }
.better { color: #1a7f37; } .worse { color: #cf222e; } .hit { background: #dafbe1; }
img { max-width: 100%; } .meta { color: #59636e; }
"""


def esc(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{esc(text)}</h{level}>"


def paragraph(text: str, cls: str = "") -> str:
    return f"<p{f' class={esc(cls)!r}' if cls else ''}>{esc(text)}</p>"


def cell(value: object, cls: str = "", pre: bool = False) -> str:
    """A <td>; `pre` keeps whitespace (generations, prompts)."""
    inner = f"<pre>{esc(value)}</pre>" if pre else esc(value)
    return f"<td{f' class={esc(cls)!r}' if cls else ''}>{inner}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """`rows` hold ready-made cells (from `cell`), so callers can mark some."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def page(title: str, parts: Iterable[str]) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{chr(10).join(parts)}\n</body></html>\n")
