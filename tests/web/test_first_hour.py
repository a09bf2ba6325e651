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


def fields_of(output: bytes) -> dict[str, str]:
    """The ``key: value`` lines of one answer's body."""
    return dict(line.split(": ", 1) for line in split(output)[2].decode().splitlines())


def post_manifest(conn: SiteConnection, files: list[tuple[str, bytes]], *headers: str) -> bytes:
    """The whole answer to a manifest of ``files`` (``headers``: more header lines)."""
    body = Manifest.of(*((n, len(d), hashlib.md5(d).hexdigest()) for n, d in files)).to_ini().encode()
    head = "\r\n".join(["POST /data/manifest HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *headers])
    conn.transport.clear()
    conn.send(head.encode() + b"\r\n\r\n" + body)
    return conn.output()


def post_body(conn: SiteConnection, key: str, num: int, data: bytes) -> bytes:
    """The whole answer to file ``num``'s body."""
    conn.transport.clear()
    conn.send(b"POST /data/%s/%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), num, len(data), data))
    return conn.output()


def test_already_stored_file_body_is_discarded_and_answered_as_stored(tmp_path):
    """Re-uploading an identical file: already_stored in the manifest answer; its body, posted anyway, is discarded
    with the normal 200 answer; the stored file is untouched and nothing else is written."""
    server = make_server(tmp_path, True)
    conn = SiteConnection(server.site())
    first = fields_of(post_manifest(conn, [("results.csv", BODY)]))
    first_answer = post_body(conn, first["transfer_key"], 0, BODY)
    stored = tmp_path / "store" / "results.csv"
    before = stored.stat()
    again = post_manifest(conn, [("notes.txt", b"n"), ("results.csv", BODY)])
    lines = split(again)[2].decode().splitlines()
    assert lines[0] == "return_code: 0" and lines[1].startswith("transfer_key: ") and lines[2:] == ["already_stored: 1"]
    key = lines[1].split(": ")[1]
    different = b"X" * len(BODY)  # an AccessGrid client ignoring already_stored sends its bytes: never written
    answer = post_body(conn, key, 1, different)
    assert split(answer)[0] == b"HTTP/1.1 200 OK"
    assert split(answer)[2] == split(first_answer)[2]
    after = stored.stat()
    assert (after.st_ino, after.st_mtime_ns, stored.read_bytes()) == (before.st_ino, before.st_mtime_ns, BODY)
    assert sorted(p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".gsitransfer-store")) == [
        "results.csv"
    ]
    conn.transport.clear()
    conn.send(get(f"/data/{key}"))
    assert [f["state"] for f in json.loads(split(conn.output())[2])["files"]] == ["pending", "stored"]


class Refusing(DirectoryStore):
    """A store whose CanUpload says no (False: a refusal that is no conflict)."""

    def CanUpload(self, id_token, file_info):
        return False


@pytest.mark.parametrize("prefer", ["Prefer: handling=strict", "Prefer: respond-async, HANDLING=\"Strict\"; x=1"])
def test_strict_manifest_refusals_are_statuses(tmp_path, prefer):
    """Prefer: handling=strict turns a return_code 1 refusal into 409 (name taken) or 403 (other refusal), one line,
    with Preference-Applied; a success stays 200 and says Preference-Applied too."""
    server = make_server(tmp_path, True)
    server.RegisterPrefix("no", Refusing(str(tmp_path / "no")))
    conn = SiteConnection(server.site())
    ok = post_manifest(conn, [("results.csv", BODY)], prefer)
    status, headers, _ = split(ok)
    assert status == b"HTTP/1.1 200 OK" and headers[b"preference-applied"] == b"handling=strict"
    post_body(conn, fields_of(ok)["transfer_key"], 0, BODY)
    taken = post_manifest(conn, [("results.csv", b"other bytes")], prefer)
    status, headers, body = split(taken)
    assert status == b"HTTP/1.1 409 Conflict" and headers[b"preference-applied"] == b"handling=strict"
    assert body == b"Upload error for file results.csv: a file named results.csv already exists\n"
    conn.transport.clear()
    manifest = Manifest.of(("x.csv", 1, hashlib.md5(b"x").hexdigest())).to_ini().encode()
    conn.send(b"POST /no/manifest HTTP/1.1\r\nHost: t\r\n%s\r\nContent-Length: %d\r\n\r\n%s" % (prefer.encode(), len(manifest), manifest))
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 403 Forbidden" and body == b"Upload error for file x.csv\n"


def test_without_prefer_a_refusal_stays_200_return_code_1(tmp_path):
    """AccessGrid compatibility: no Prefer header, a refused manifest is 200 with return_code 1 and no Preference-Applied."""
    server = make_server(tmp_path, True)
    conn = SiteConnection(server.site())
    post_body(conn, fields_of(post_manifest(conn, [("results.csv", BODY)]))["transfer_key"], 0, BODY)
    status, headers, body = split(post_manifest(conn, [("results.csv", b"other bytes")], "Prefer: handling=lenient"))
    assert status == b"HTTP/1.1 200 OK" and b"preference-applied" not in headers
    assert body == b"return_code: 1\nerror_reason: Upload error for file results.csv: a file named results.csv already exists\n"
