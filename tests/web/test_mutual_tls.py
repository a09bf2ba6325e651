"""Mutual TLS in memory, from the handshake to the handler: the identity is the certificate's, never a header's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from gsitransfer.fastpaths import FastPaths
from gsitransfer.manifest import Manifest
from gsitransfer.testca import TestPKI, make_test_pki
from gsitransfer.testing import MemoryHandler, MemoryTLSClient
from gsitransfer.tls import ServerTLS, TrustConfig
from gsitransfer.web import GSIHTTPTransferServer

BODY = b"bytes over mutual TLS\n" * 100


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"), users=("alice",), share_keys=True)


@pytest.fixture(params=["fast paths", "plain paths"])
def fast_paths(request: pytest.FixtureRequest) -> FastPaths:
    """Each test runs over the bulk TLS transport and the keep-alive fast path, and without them."""
    return FastPaths() if request.param == "fast paths" else FastPaths.none()


@pytest.fixture
def server(pki: TestPKI, tmp_path: Path, fast_paths: FastPaths) -> tuple[GSIHTTPTransferServer, MemoryHandler]:
    tls = ServerTLS(str(pki.server_cert), str(pki.server_key), TrustConfig(ca_dir=str(pki.ca_dir)))
    server = GSIHTTPTransferServer(tls, public_url="https://test", fast_paths=fast_paths)
    (tmp_path / "files").mkdir()
    handler = MemoryHandler(str(tmp_path / "files"))
    server.RegisterPrefix("data", handler)
    return server, handler


def connect(server: GSIHTTPTransferServer, certificate: Path, key: Path | None = None) -> MemoryTLSClient:
    clock = Clock()
    client = MemoryTLSClient(server.protocol_factory(clock), str(certificate), None if key is None else str(key), clock)
    client.handshake()
    return client


def exchange(client: MemoryTLSClient, head: bytes, body: bytes | None = None) -> bytes:
    """Send one request (``head`` without its empty line; a body with its Content-Length) and read the answer."""
    if body is None:
        client.send(head + b"\r\n")
    else:
        client.send(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return client.received()


def test_upload_and_download_as_the_certificate_says(server, pki):
    """Manifest, body and download over one mutual-TLS connection: every callback gets the certificate's DN."""
    transfer_server, handler = server
    alice = pki.users["alice"]
    client = connect(transfer_server, alice.cert, alice.key)
    manifest = Manifest.of(("f.bin", len(BODY), hashlib.md5(BODY).hexdigest())).to_ini().encode()
    forged = b"X-Client-DN: /CN=mallory\r\n"  # a header never makes an identity on TLS
    answer = exchange(client, b"POST /data/manifest HTTP/1.1\r\nHost: t\r\n" + forged, manifest)
    assert answer.startswith(b"HTTP/1.1 200") and b"return_code: 0" in answer
    key = answer.split(b"transfer_key: ")[1].split(b"\n")[0]
    stored = exchange(client, b"POST /data/" + key + b"/0 HTTP/1.1\r\nHost: t\r\n" + forged, BODY)
    assert stored.startswith(b"HTTP/1.1 200") and b"name: f.bin" in stored
    downloaded = exchange(client, b"GET /data/f.bin HTTP/1.1\r\nHost: t\r\n" + forged)
    assert downloaded.startswith(b"HTTP/1.1 200") and downloaded.endswith(BODY)
    assert {dn for _, dn, _ in handler.calls} == {alice.dn}
    assert [name for name, _, _ in handler.calls] == [
        "GetDownloadFilename", "CanUpload", "AddPendingUpload", "GetUploadFilename", "CompleteUpload",
        "GetDownloadFilename",
    ]


def test_a_proxy_is_its_user(server, pki):
    """With an RFC 3820 proxy (certificate, key and chain in one file) the handler sees the user's DN."""
    transfer_server, handler = server
    alice = pki.users["alice"]
    client = connect(transfer_server, alice.proxy)
    (Path(handler.root) / "g.txt").write_bytes(b"hello\n")
    answer = exchange(client, b"GET /data/g.txt HTTP/1.1\r\nHost: t\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
    assert handler.calls == [("GetDownloadFilename", alice.dn, "g.txt")]
