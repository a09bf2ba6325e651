"""The route table: OPTIONS and 405 list a route's methods; a request it never routed is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.table import RouteTable, allowed_methods

from .wire import KEY_SHAPED, get, split

FILE_METHODS = b"GET, HEAD, PUT, DELETE, PROPFIND, OPTIONS"
TRANSFER_METHODS = b"GET, HEAD, DELETE, PROPFIND, OPTIONS"
POST_TOO = b"GET, HEAD, POST, PROPFIND, OPTIONS"
#: /<prefix>/manifest: a manifest's POST, or a file named "manifest" (GET, PUT, DELETE, PROPFIND)
MANIFEST_METHODS = b"GET, HEAD, POST, PUT, DELETE, PROPFIND, OPTIONS"
#: a file of a transfer: its body (POST), its offset (HEAD), a piece (PATCH), tus termination (DELETE); GET is 405
UPLOAD_METHODS = b"HEAD, POST, PATCH, DELETE, OPTIONS"


@pytest.fixture
def server(tmp_path: Path) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", DirectoryStore(str(tmp_path / "store")))
    return s


@pytest.mark.parametrize(
    "path, allow",
    [
        ("/data/x.bin", FILE_METHODS),
        ("/data/sub/x.bin", FILE_METHODS),
        (f"/data/{KEY_SHAPED}", TRANSFER_METHODS),
        ("/data/manifest", MANIFEST_METHODS),
        (f"/data/{KEY_SHAPED}/0", UPLOAD_METHODS),
        ("/", b"GET, HEAD, OPTIONS"),
    ],
)
def test_options_answers_allow_for_the_route(server, path, allow):
    """OPTIONS on any route (the root too) is 200 with Allow listing its methods and no body."""
    conn = SiteConnection(server.site())
    conn.send(get(path, method="OPTIONS"))
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK"
    assert b"\r\nAllow: " + allow + b"\r\n" in conn.output()
    assert headers[b"content-length"] == b"0" and body == b""
    assert not conn.transport.disconnecting  # the connection stays open for the next request


@pytest.mark.parametrize("path", ["/data/", "/data"])
def test_options_on_a_prefix_is_204_with_allow_and_tus(server, path):
    """OPTIONS on a prefix is 204 (tus discovery) with Allow (POST too: tus creation) and no body."""
    conn = SiteConnection(server.site())
    conn.send(get(path, method="OPTIONS"))
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 204 No Content" and body == b""
    assert b"\r\nAllow: " + POST_TOO + b"\r\n" in conn.output()
    assert headers[b"tus-version"] == b"1.0.0"
    assert not conn.transport.disconnecting


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("PUT", "/data/", POST_TOO),
        ("PATCH", "/data/x.bin", FILE_METHODS),
        ("MKCOL", "/data/x.bin", FILE_METHODS),
        ("PATCH", f"/data/{KEY_SHAPED}", TRANSFER_METHODS),
        ("MKCOL", "/data/manifest", MANIFEST_METHODS),
        ("PUT", f"/data/{KEY_SHAPED}/0", UPLOAD_METHODS),
    ],
)
def test_method_not_allowed_lists_options_too(server, method, path, allow):
    """A method the route lacks is 405, its Allow the same list OPTIONS answers."""
    conn = SiteConnection(server.site())
    conn.send(get(path, method=method))
    assert split(conn.output())[0].startswith(b"HTTP/1.1 405")
    assert b"\r\nAllow: " + allow + b"\r\n" in conn.output()
    assert b", ".join(allowed_methods(method.encode(), path.encode())) == allow


def test_options_on_no_route_is_refused(server):
    """OPTIONS on a target naming no route is refused as any method would be (404 unknown prefix, 400 not a path)."""
    conn = SiteConnection(server.site())
    conn.send(get("/nope/x.bin", method="OPTIONS"))
    assert split(conn.output())[0].startswith(b"HTTP/1.1 404")
    conn = SiteConnection(server.site())
    conn.send(get("/data/%ff", method="OPTIONS"))
    assert split(conn.output())[0].startswith(b"HTTP/1.1 400")


def test_unrouted_request_is_refused_not_served():
    """A request reaching the route table without an exchange (never routed or identified) is 403, never anonymous."""
    request = DummyRequest([b"data", b"x.bin"])
    request.method = b"GET"
    assert RouteTable().render(request) is NOT_DONE_YET
    assert request.responseCode == 403
    assert request.finished
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]
    assert b"".join(request.written) == b"this resource serves only the server's own requests\n"
