"""The listing of a prefix as a page for browsers (``GET /<prefix>/`` with ``Accept: text/html``, SPEC §10).

JSON stays the answer for every other client: curl and requests send
``Accept: */*``, which names no type, and a client that ranks
``application/json`` at least as high as ``text/html`` gets JSON. A browser
sends ``text/html,…,*/*;q=0.8`` and gets this page.

The page is one self-contained HTML5 document: no script, a small inline
style, names and owners escaped (:func:`html.escape`), links percent-encoded,
served with ``Content-Security-Policy: default-src 'none'; style-src
'unsafe-inline'`` and ``X-Content-Type-Options: nosniff``, so that no name a
client uploaded can become markup or script.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

#: the page's headers beside its Content-Type
PAGE_HEADERS = (
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"),
    (b"x-content-type-options", b"nosniff"),
)
HTML_TYPE = b"text/html; charset=utf-8"
#: the most media ranges of an Accept field looked at (the field is bounded by the head's size anyway)
_MAX_RANGES = 64

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "th,td{padding:.25em 1em;text-align:left;border-bottom:1px solid #ddd}"
    "td.size{text-align:right;font-variant-numeric:tabular-nums}"
)


def _quality(parameters: Sequence[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return max(0.0, min(1.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0


def wants_html(accept: bytes | None) -> bool:
    """True when ``accept`` (an ``Accept`` field) names ``text/html`` and ranks it at least as high as JSON.

    Only types named outright count (``*/*`` prefers nothing); linear in the field.
    """
    if not accept:
        return False
    html_q = json_q = 0.0
    for media_range in accept.decode("latin-1").split(",")[:_MAX_RANGES]:
        kind, *parameters = media_range.split(";")
        kind = kind.strip().lower()
        if kind in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, _quality(parameters))
        elif kind == "application/json":
            json_q = max(json_q, _quality(parameters))
    return html_q > 0 and html_q >= json_q


def _size(value: object) -> str:
    if not isinstance(value, int):
        return ""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover - the loop always returns


def _cell(value: object) -> str:
    return "" if value is None else html.escape(str(value))


def render_listing(prefix: str, files: Sequence[Mapping[str, Any]]) -> str:
    """The page listing ``files`` (the handler's listing entries) of ``/<prefix>/``."""
    title = html.escape(f"/{prefix}/")
    rows = []
    for entry in files:
        name = str(entry.get("name", ""))
        link = f"/{quote(prefix, safe='')}/{quote(name, safe='')}"
        rows.append(
            "<tr>"
            f'<td><a href="{html.escape(link)}">{html.escape(name)}</a></td>'
            f'<td class="size" title="{_cell(entry.get("size"))} bytes">{_size(entry.get("size"))}</td>'
            f"<td>{_cell(entry.get('uploaded') or entry.get('modified'))}</td>"
            f"<td>{_cell(entry.get('owner'))}</td>"
            f"<td><code>{_cell(entry.get('checksum'))}</code></td>"
            "</tr>"
        )
    body = "\n".join(rows) if rows else '<tr><td colspan="5">no files</td></tr>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>\n'
        f"<body><h1>{title}</h1>\n"
        f"<p>{len(files)} file{'s' if len(files) != 1 else ''}</p>\n"
        "<table><thead><tr><th>name</th><th>size</th><th>uploaded (UTC)</th><th>owner</th><th>MD5</th></tr></thead>\n"
        f"<tbody>\n{body}\n</tbody></table>\n"
        "</body></html>\n"
    )


__all__ = ["HTML_TYPE", "PAGE_HEADERS", "render_listing", "wants_html"]
