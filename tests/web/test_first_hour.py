"""Issue 13 in memory: unknown prefixes are 404 naming the real ones, the root lists them, a TLS
ClientHello on the plain port is answered at once, and answers name the host the client used."""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path

import pytest

from gsitransfer.fastpaths import FastPaths
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.urls import valid_host

from .wire import KEY_SHAPED, get, split

NO_DTA = b"no such prefix /dta/; this server has /data/ /more/\n"
NOT_TLS = b"this port speaks plain HTTP, not TLS: use http:// (or the server's TLS port for https://)\n"
BODY = b"first hour\n"


def make_server(tmp_path: Path, fast: bool, public_url: str | None = "http://test") -> HTTPTransferServer:
    s = HTTPTransferServer(public_url=public_url, fast_paths=FastPaths() if fast else FastPaths.none())
    s.RegisterPrefix("more", DirectoryStore(str(tmp_path / "more")))
    s.RegisterPrefix("data", DirectoryStore(str(tmp_path / "store")))
    return s


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> HTTPTransferServer:
    return make_server(tmp_path, request.param)


@pytest.mark.parametrize(
    "head",
    [
        get("/dta/"),
        get("/dta"),
        get("/dta/x.bin"),
        get("/dta/sub/x.bin"),
        get(f"/dta/{KEY_SHAPED}"),
        get("/dta/x.bin", method="HEAD"),
        get("/dta/", method="OPTIONS"),
        get(f"/dta/{KEY_SHAPED}", method="DELETE"),
        get("/dta/x.bin", method="PUT"),
        b"POST /dta/manifest HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        f"POST /dta/{KEY_SHAPED}/0 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc".encode(),
    ],
    ids=lambda head: head.split(b"\r\n")[0].decode(),
)
def test_unknown_prefix_is_404_naming_the_prefixes(server, head):
    """Every method on an unknown prefix is 404 with the one line naming the server's prefixes (was 500 for a listing)."""
    conn = SiteConnection(server.site())
    conn.send(head)
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 404 Not Found"
    if not head.startswith(b"HEAD"):
        assert body == NO_DTA
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"


def test_a_server_without_prefixes_says_so(tmp_path):
    """With no prefix registered, the 404 says the server has none; the root lists none."""
    s = HTTPTransferServer(public_url="http://test")
    conn = SiteConnection(s.site())
    conn.send(get("/data/"))
    assert split(conn.output())[2] == b"no such prefix /data/; this server has no prefixes\n"
    conn = SiteConnection(s.site())
    conn.send(get("/"))
    assert json.loads(split(conn.output())[2]) == {"prefixes": []}


def test_root_lists_the_prefixes(server):
    """GET / is 200 JSON with every prefix, sorted, slashes on both sides; HEAD / the same head, no body."""
    conn = SiteConnection(server.site())
    conn.send(get("/"))
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"prefixes": ["/data/", "/more/"]}
    conn = SiteConnection(server.site())
    conn.send(get("/", method="HEAD"))
    status, head_headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK" and body == b""
    assert head_headers[b"content-length"] == headers[b"content-length"]


def test_root_takes_no_post(server):
    """POST / is 405 with the root's Allow (GET, HEAD, OPTIONS)."""
    conn = SiteConnection(server.site())
    conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    assert split(conn.output())[0].startswith(b"HTTP/1.1 405")
    assert b"\r\nAllow: GET, HEAD, OPTIONS\r\n" in conn.output()


def client_hello() -> bytes:
    """The first bytes a real TLS client (Python's ssl) sends: its ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_tls_client_hello_on_the_plain_port_is_answered_at_once(server):
    """A ClientHello as a plain connection's first bytes: 400 saying the port is plain HTTP, and the connection closes."""
    conn = SiteConnection(server.site())
    conn.send(client_hello())
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 400 Bad Request"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert headers[b"connection"] == b"close"
    assert body == NOT_TLS
    assert conn.transport.disconnecting
    assert conn.clock.seconds() == 0  # answered on the first read: no time passed, no timer fired


def test_only_the_first_bytes_count(server):
    """A 0x16 byte later on a connection is just data: a request's own bytes are never taken for TLS."""
    conn = SiteConnection(server.site())
    conn.send(get("/"))
    assert split(conn.output())[0] == b"HTTP/1.1 200 OK"
    assert not conn.transport.disconnecting


def upload(conn: SiteConnection, server: HTTPTransferServer, host: str) -> dict[str, str]:
    """Post a manifest and the file's body with ``Host: host``; the upload answer's fields."""
    name = f"r{abs(hash(host))}.csv"
    manifest = Manifest.of((name, len(BODY), hashlib.md5(BODY).hexdigest())).to_ini().encode()
    conn.send(
        b"POST /data/manifest HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (host.encode(), len(manifest), manifest)
    )
    key = dict(line.split(": ", 1) for line in split(conn.output())[2].decode().splitlines())["transfer_key"]
    conn.transport.clear()
    conn.send(b"POST /data/%s/0 HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), host.encode(), len(BODY), BODY))
    fields = dict(line.split(": ", 1) for line in split(conn.output())[2].decode().splitlines())
    conn.transport.clear()
    conn.send(get(f"/data/{key}").replace(b"Host: t", b"Host: " + host.encode()))
    fields["state_url"] = json.loads(split(conn.output())[2])["files"][0]["url"]
    conn.transport.clear()
    return fields


@pytest.mark.parametrize(
    "host, origin",
    [
        ("localhost:8443", "http://localhost:8443"),
        ("LocalHost:8080", "http://localhost:8080"),
        ("data.example.org", "http://data.example.org"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("evil.org/x?", None),
        ("a b", None),
        ("user@evil.org", None),
        ("host:99999", None),
        ("[not-v6]:80", None),
    ],
)
def test_urls_name_the_host_the_client_used(tmp_path, host, origin):
    """Without --public-url, url: lines name the valid Host the client sent, else the listener's address."""
    server = make_server(tmp_path, True, public_url=None)
    conn = SiteConnection(server.site())
    if origin is None:  # the address of the connection's own end
        origin = f"http://{conn.transport.getHost().host}:{conn.transport.getHost().port}"
    fields = upload(conn, server, host)
    assert fields["return_code"] == "0"
    assert fields["url"] == f"{origin}/data/{fields['name']}"
    assert fields["state_url"] == fields["url"]


def test_a_given_public_url_wins(tmp_path):
    """With --public-url, every URL names it, whatever Host the client sent."""
    server = make_server(tmp_path, True, public_url="https://data.example.org:8443")
    fields = upload(SiteConnection(server.site()), server, "localhost:9")
    assert fields["url"] == f"https://data.example.org:8443/data/{fields['name']}"


@pytest.mark.parametrize("value", ["", "a..b", "-a.org", "a.org:", "a.org:0", "a.org:+80", "é.org", "a" * 300, "[::1", "h:80:80"])
def test_host_values_not_believed(value):
    """Host values that are not a valid host[:port] are refused (None)."""
    assert valid_host(value) is None
