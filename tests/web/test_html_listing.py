"""The browser listing in memory: content negotiation, escaping, links, headers."""

from __future__ import annotations

import html.parser
from pathlib import Path

import pytest

from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.html_listing import render_listing, wants_html

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize("accept, html", [
    (BROWSER, True),
    ("text/html", True),
    ("*/*", False),
    (None, False),
    ("application/json", False),
    ("application/json, text/html;q=0.5", False),
    ("text/html;q=0", False),
    ("text/html;q=0.9, application/json;q=0.9", True),
    ("text/html;q=bogus", False),
])
def test_only_a_client_preferring_html_gets_the_page(accept, html):
    """Browsers get the page; curl's */*, no Accept, or JSON ranked higher get JSON."""
    assert wants_html(None if accept is None else accept.encode()) is html


class Links(html.parser.HTMLParser):
    """The links and the text of a page, as a browser would read them."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []
        self._href: str | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._href is not None:
            self.links.append((self._href, data))
            self._href = None


def test_names_are_text_and_links_are_encoded():
    """A name with markup, quotes, & and UTF-8 is text in the page; its link is percent-encoded."""
    name = "<script>alert(1)</script>&\"'ü 日.txt"
    page = render_listing("data", [{"name": name, "size": 2048, "owner": "/CN=<b>", "uploaded": "2026-12-05T01:00:00Z",
                                    "checksum": None}])
    parser = Links()
    parser.feed(page)
    assert "script" not in parser.tags and "b" not in parser.tags
    assert parser.links == [("/data/%3Cscript%3Ealert%281%29%3C%2Fscript%3E%26%22%27%C3%BC%20%E6%97%A5.txt", name)]
    assert "/CN=<b>" in parser.text and "2.0 KiB" in parser.text


def test_the_page_is_served_to_a_browser_with_a_strict_csp(tmp_path: Path):
    """GET /data/ with a browser's Accept: the HTML page, CSP default-src 'none', nosniff, Vary: Accept."""
    store = DirectoryStore(str(tmp_path / "store"))
    (tmp_path / "store" / "a b.txt").write_bytes(b"x" * 10)
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("data", store)
    for accept, kind in ((BROWSER, b"text/html; charset=utf-8"), ("*/*", b"application/json")):
        conn = SiteConnection(server.site())
        conn.send(f"GET /data/ HTTP/1.1\r\nHost: t\r\nAccept: {accept}\r\n\r\n".encode())
        out = conn.output()
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"\r\nContent-Type: " + kind in head
        assert b"\r\nVary: Accept" in head
        if kind.startswith(b"text/html"):
            assert b"\r\nContent-Security-Policy: default-src 'none'; style-src 'unsafe-inline'" in head
            assert b"\r\nX-Content-Type-Options: nosniff" in head
            assert b'<a href="/data/a%20b.txt">a b.txt</a>' in body
