"""The web layer driven in memory: a real TransferSite over StringTransport, no sockets.

These pin down the request life cycle (routing from headers, refusal before
the body, 100-continue, streaming to disk, dropped connections) quickly and
deterministically; tests/web/test_statuses.py proves the same over TCP.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionLost

from gsitransfer.filesink import TEMP_PREFIX
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.routes import (
    DownloadRoute,
    ItemRoute,
    ListingRoute,
    ManifestRoute,
    Refusal,
    UploadRoute,
    classify,
)

KEY = "k" * 32
BODY = b"0123456789" * 1000


class Connection:
    """One client connection to the site, in memory."""

    def __init__(self, site, clock: Clock, peer: str = "127.0.0.1") -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol = site.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        channel = getattr(self.protocol, "_channel", self.protocol)
        channel.callLater = clock.callLater
        self.clock = clock

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.clock.advance(0)

    def output(self) -> bytes:
        return self.transport.value()

    def drop(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionLost()))


@pytest.fixture
def server(tmp_path: Path) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", DirectoryStore(str(tmp_path / "store")))
    return s


@pytest.fixture
def key(server) -> str:
    manifest = Manifest.of(("f.bin", len(BODY), hashlib.md5(BODY).hexdigest())).to_ini().encode()
    outcome = server.post_manifest("data", manifest, server.identity.identify(_FakeRequest()))
    return outcome.result.transfer_key


class _FakeRequest:
    class channel:
        class transport:
            @staticmethod
            def getPeer():
                return IPv4Address("TCP", "127.0.0.1", 1)

    class requestHeaders:
        @staticmethod
        def getRawHeaders(name):
            return None


def upload_head(key: str, length: int, extra: str = "") -> bytes:
    return f"POST /data/{key}/0 HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def test_routes():
    """classify maps each method and path shape to its route."""
    assert classify(b"POST", [b"data", b"manifest"]) == ManifestRoute("data")
    assert classify(b"POST", [b"data", KEY.encode(), b"3"]) == UploadRoute("data", KEY, "3")
    assert classify(b"GET", [b"data", b""]) == ListingRoute("data")
    assert classify(b"DELETE", [b"data", KEY.encode()]) == ItemRoute("data", KEY)
    assert classify(b"GET", [b"data", b"a", b"b.txt"]) == DownloadRoute("data", "a/b.txt")
    assert classify(b"GET", [b"data", b"..", b"x"]).status == 404
    assert classify(b"GET", [b"data", b"a/b"]).status == 404
    assert classify(b"GET", [b"data", b"\xff"]).status == 400
    refusal = classify(b"PUT", [b"data", b"x"])
    assert isinstance(refusal, Refusal) and refusal.status == 405 and refusal.allow == (b"GET", b"HEAD")


def test_upload_streams_to_disk(server, key, tmp_path):
    """A body sent in pieces lands under its final name only when complete."""
    conn = Connection(server.site(), Clock())
    conn.send(upload_head(key, len(BODY)))
    conn.send(BODY[:5000])
    store = tmp_path / "store"
    assert not (store / "f.bin").exists()
    assert [p.name for p in store.iterdir() if p.name.startswith(TEMP_PREFIX)]
    conn.send(BODY[5000:])
    assert conn.output().startswith(b"HTTP/1.1 200 OK")
    assert (store / "f.bin").read_bytes() == BODY
    assert not [p for p in store.iterdir() if p.name.endswith(".part")]


def test_refusal_before_body_closes(server):
    """An unknown key is answered from the headers; the body is never read."""
    conn = Connection(server.site(), Clock())
    conn.send(upload_head("Z" * 32, 10**9))
    assert conn.output().startswith(b"HTTP/1.1 404")
    assert b"connection: close" in conn.output().lower()
    assert conn.transport.disconnecting
    conn.send(b"x" * 100000)  # late body bytes are ignored without error


def test_expect_continue_only_when_accepted(server, key):
    """100 Continue is sent after acceptance, not by the channel before it."""
    conn = Connection(server.site(), Clock())
    conn.send(upload_head(key, len(BODY), "Expect: 100-continue\r\n"))
    assert conn.output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    refused = Connection(server.site(), Clock())
    refused.send(upload_head("Z" * 32, 10, "Expect: 100-continue\r\n"))
    assert b"100 Continue" not in refused.output() and refused.output().startswith(b"HTTP/1.1 404")


def test_dropped_connection_leaves_nothing(server, key, tmp_path):
    """A client that vanishes mid-body leaves no file and no temporary; the file is pending."""
    conn = Connection(server.site(), Clock())
    conn.send(upload_head(key, len(BODY)) + BODY[:100])
    conn.drop()
    store = tmp_path / "store"
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".gsitransfer-store")) == []
    assert server.transfers.states(key)[0].value == "pending"


def test_untrusted_x_client_dn_ignored(server, key):
    """X-Client-DN from an untrusted peer is ignored: the anonymous owner may upload."""
    conn = Connection(server.site(), Clock(), peer="127.0.0.9")
    conn.send(upload_head(key, len(BODY), "X-Client-DN: /CN=Mallory\r\n") + BODY)
    assert conn.output().startswith(b"HTTP/1.1 200")


def test_trusted_proxy_header_is_the_identity(tmp_path):
    """From a trusted proxy, X-Client-DN is the identity the key is bound to."""
    server = HTTPTransferServer(trusted_proxies=["127.0.0.0/8"], public_url="http://t")
    server.RegisterPrefix("data", DirectoryStore(str(tmp_path / "s")))
    manifest = Manifest.of(("g", 1, hashlib.md5(b"g").hexdigest())).to_ini().encode()
    conn = Connection(server.site(), Clock())
    conn.send(
        b"POST /data/manifest HTTP/1.1\r\nHost: t\r\nX-Client-DN: /CN=Alice\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(manifest)
        + manifest
    )
    key = conn.output().split(b"transfer_key: ")[1].split(b"\n")[0].decode()
    assert server.transfers.get(key).owner_dn == "/CN=Alice"


def test_render_bug_is_one_plain_line(server, monkeypatch):
    """An exception escaping a renderer is a text/plain 500 with no traceback or HTML."""
    from gsitransfer.web.resources import PrefixResource

    def broken(self, request, route, id_token):
        raise RuntimeError("secret detail")

    monkeypatch.setitem(PrefixResource._renderers, ListingRoute, broken)
    conn = Connection(server.site(), Clock())
    conn.send(b"GET /data/ HTTP/1.1\r\nHost: t\r\n\r\n")
    output = conn.output()
    assert output.startswith(b"HTTP/1.1 500")
    assert b"text/plain" in output and b"secret" not in output and b"<html>" not in output
