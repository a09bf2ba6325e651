"""A stand-in for the server's issue-13 answers, to test the client in memory without them.

:class:`ContractRoot` is a plain twisted.web resource answering what the wire
contract says a server answers (``GET /`` with ``{"prefixes": [...]}``,
``already_stored`` in the manifest answer) -- or, with ``lists=False``, what
an older server answers (``404`` for ``GET /``). It records every request as
``(method, path)``. Served by ``tests.client.memory.MemoryAgent``.
"""

from __future__ import annotations

import json

from twisted.web import resource, server
from twisted.web.server import Request

KEY = "k" * 32


class ContractRoot(resource.Resource):
    """``/`` and ``/data/...``: the prefixes, a manifest answer with ``already_stored``, uploads."""

    isLeaf = True

    def __init__(self, prefixes: list[str], lists: bool = True, already_stored: str = "") -> None:
        super().__init__()
        self.prefixes = prefixes
        self.lists = lists
        self.already_stored = already_stored
        self.seen: list[tuple[str, str]] = []

    def render(self, request: Request) -> bytes:
        method, path = request.method.decode(), request.path.decode()
        self.seen.append((method, path))
        request.content.read()
        if path == "/" and method == "GET":
            if not self.lists:
                request.setResponseCode(404)
                return b"no prefix in the path: use /<prefix>/\n"
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"prefixes": self.prefixes}).encode()
        if path == "/data/manifest" and method == "POST":
            stored = f"already_stored: {self.already_stored}\n" if self.already_stored else ""
            return f"return_code: 0\ntransfer_key: {KEY}\n{stored}".encode()
        if path.startswith(f"/data/{KEY}/") and method == "POST":
            return b"return_code: 0\nurl: http://test/data/sent\n"
        request.setResponseCode(404)
        return b"not in this stand-in\n"


def contract_site(root: ContractRoot) -> server.Site:
    """A Site for ``root`` (MemoryAgent sets its reactor)."""
    return server.Site(root)


__all__ = ["KEY", "ContractRoot", "contract_site"]
