"""The listing page in a real headless browser (Debian's chromium) over plain HTTP."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

from .helpers import running, server_args

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Anchors(html.parser.HTMLParser):
    """The anchors of a DOM dump, and every element's tag."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[str, str]] = []
        self.tags: set[str] = set()
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "a":
            self._href = dict(attrs).get("href") or ""

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.anchors.append((self._href, data))
            self._href = None


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_headless_chromium_reads_the_listing(tmp_path: Path) -> None:
    """chromium --dump-dom of /data/: each name a link's text (a <script> name stays text), the links download the bytes."""
    assert CHROMIUM is not None
    store = tmp_path / "store"
    store.mkdir()
    files = {"plain.txt": b"plain", "<script>alert(1)<script>.txt": b"evil", "Zürich data.bin": b"z" * 3000}
    for name, data in files.items():
        (store / name).write_bytes(data)
    with running(ServerProcess(tmp_path, server_args(store))) as server:
        base = server.url("http")
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--dump-dom", base + "/data/"],
            capture_output=True, text=True, timeout=120,
        )
        assert dom.returncode == 0, dom.stderr[-2000:]
        parser = Anchors()
        parser.feed(dom.stdout)
        assert "script" not in parser.tags
        texts = {text: href for href, text in parser.anchors}
        assert set(texts) == set(files)
        for name, data in files.items():
            with urllib.request.urlopen(urllib.parse.urljoin(base + "/data/", texts[name]), timeout=30) as answer:
                assert answer.read() == data
