"""The web layer driven in memory: a real TransferSite over StringTransport, no sockets.

These pin down the request life cycle (routing from headers, refusal before
the body, 100-continue, streaming to disk, dropped connections) quickly and
deterministically; tests/integration/test_statuses.py proves the same over TCP.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gsitransfer.errors import FileNotFound
from gsitransfer.filesink import TEMP_PREFIX
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.routes import (
    FileRoute,
    ListingRoute,
    ManifestRoute,
    TransferRoute,
    UploadRoute,
    classify,
)
from gsitransfer.web.status import BadRequest, MethodNotAllowed, status_for
from gsitransfer.web.table import select

from .wire import KEY_SHAPED as KEY, upload_head

BODY = b"0123456789" * 1000


@pytest.fixture
def server(tmp_path: Path) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", DirectoryStore(str(tmp_path / "store")))
    return s


@pytest.fixture
def key(engine, anonymous) -> str:
    manifest = Manifest.of(("f.bin", len(BODY), hashlib.md5(BODY).hexdigest())).to_ini().encode()
    outcome = engine.post_manifest("data", manifest, anonymous)
    return outcome.result.transfer_key


def refusal_status(method: bytes, segments: list[bytes]) -> int:
    """The status of the refusal ``classify`` raises for a path naming no route."""
    with pytest.raises((FileNotFound, BadRequest)) as refused:
        classify(method, segments)
    return status_for(refused.value)


def test_routes():
    """classify maps each method and path shape to its route; the table refuses a method with 405 and Allow."""
    assert classify(b"POST", [b"data", b"manifest"]) == ManifestRoute("data")
    assert classify(b"POST", [b"data", KEY.encode(), b"3"]) == UploadRoute("data", KEY, "3")
    assert classify(b"GET", [b"data", b""]) == ListingRoute("data")
    assert classify(b"DELETE", [b"data", KEY.encode()]) == TransferRoute("data", KEY)
    assert classify(b"GET", [b"data", b"a", b"b.txt"]) == FileRoute("data", "a/b.txt")
    assert refusal_status(b"GET", [b"data", b"..", b"x"]) == 404
    assert refusal_status(b"GET", [b"data", b"a/b"]) == 404
    assert refusal_status(b"GET", [b"data", b"\xff"]) == 400
    with pytest.raises(MethodNotAllowed) as refusal:
        select(b"PATCH", b"/data/x")
    assert status_for(refusal.value) == 405 and refusal.value.allow == (b"GET", b"HEAD", b"PUT", b"DELETE", b"PROPFIND", b"OPTIONS")


def test_upload_streams_to_disk(server, key, tmp_path):
    """A body sent in pieces lands under its final name only when complete."""
    conn = SiteConnection(server.site())
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
    conn = SiteConnection(server.site())
    conn.send(upload_head("Z" * 32, 10**9))
    assert conn.output().startswith(b"HTTP/1.1 404")
    assert b"connection: close" in conn.output().lower()
    assert conn.transport.disconnecting
    conn.send(b"x" * 100000)  # late body bytes are ignored without error


def test_expect_continue_only_when_accepted(server, key):
    """100 Continue is sent after acceptance, not by the channel before it."""
    conn = SiteConnection(server.site())
    conn.send(upload_head(key, len(BODY), "Expect: 100-continue\r\n"))
    assert conn.output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    refused = SiteConnection(server.site())
    refused.send(upload_head("Z" * 32, 10, "Expect: 100-continue\r\n"))
    assert b"100 Continue" not in refused.output() and refused.output().startswith(b"HTTP/1.1 404")


def test_dropped_connection_keeps_what_arrived(server, key, tmp_path):
    """A client that vanishes mid-body leaves no file, only its hidden partial with the bytes that arrived
    (their offset recorded); the file is pending."""
    conn = SiteConnection(server.site())
    conn.send(upload_head(key, len(BODY)) + BODY[:100])
    conn.drop()
    store = tmp_path / "store"
    left = sorted(p for p in store.iterdir() if not p.name.startswith(".gsitransfer-store"))
    assert [p.name.endswith(".partial") and p.name.startswith(".gsitransfer-") for p in left] == [True]
    assert left[0].read_bytes() == BODY[:100]
    assert server.transfers.states(key)[0].value == "pending"
    assert server.transfers.progress(key)[0][0] == 100


def test_untrusted_x_client_dn_ignored(server, key):
    """X-Client-DN from an untrusted peer is ignored: the anonymous owner may upload."""
    conn = SiteConnection(server.site(), peer="127.0.0.9")
    conn.send(upload_head(key, len(BODY), "X-Client-DN: /CN=Mallory\r\n") + BODY)
    assert conn.output().startswith(b"HTTP/1.1 200")


def test_trusted_proxy_header_is_the_identity(tmp_path):
    """From a trusted proxy, X-Client-DN is the identity the key is bound to."""
    server = HTTPTransferServer(trusted_proxies=["127.0.0.0/8"], public_url="http://t")
    server.RegisterPrefix("data", DirectoryStore(str(tmp_path / "s")))
    manifest = Manifest.of(("g", 1, hashlib.md5(b"g").hexdigest())).to_ini().encode()
    conn = SiteConnection(server.site())
    conn.send(
        b"POST /data/manifest HTTP/1.1\r\nHost: t\r\nX-Client-DN: /CN=Alice\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(manifest)
        + manifest
    )
    key = conn.output().split(b"transfer_key: ")[1].split(b"\n")[0].decode()
    assert server.transfers.get(key).owner_dn == "/CN=Alice"


def test_render_bug_is_one_plain_line(server, monkeypatch):
    """An exception escaping a verb's answer is a text/plain 500 with no traceback or HTML."""

    def list_files(prefix, id_token):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server.engine, "list_files", list_files)  # raised inside get_listing, as a bug would
    conn = SiteConnection(server.site())
    conn.send(b"GET /data/ HTTP/1.1\r\nHost: t\r\n\r\n")
    output = conn.output()
    assert output.startswith(b"HTTP/1.1 500")
    assert b"text/plain" in output and b"secret" not in output and b"<html>" not in output
