"""Revocation, a removed CA and expiry reach connections that are already open (issue 12, finding 2)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.task import Clock

from gsitransfer.fastpaths import FastPaths
from gsitransfer.testca import TestPKI, make_test_pki, revoke
from gsitransfer.testing import MemoryHandler, MemoryTLSClient
from gsitransfer.tls import ServerTLS, TrustConfig
from gsitransfer.web import GSIHTTPTransferServer
from tests.tls.conftest import copy_pki

GET = b"GET /data/g.txt HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def minted(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"), users=("alice", "bob"), share_keys=True)


@pytest.fixture
def pki(minted: TestPKI, tmp_path: Path) -> TestPKI:
    """A fresh copy of the test PKI (tests revoke and remove in it)."""
    return copy_pki(minted, tmp_path / "pki")


@pytest.fixture(params=["fast paths", "plain paths"])
def fast_paths(request: pytest.FixtureRequest) -> FastPaths:
    """Each test runs over the bulk TLS transport and the keep-alive fast path, and without them."""
    return FastPaths() if request.param == "fast paths" else FastPaths.none()


class TestClock:
    """The time the server judges validity at, moved by the test."""

    __test__ = False

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now


def serve(pki: TestPKI, tmp_path: Path, fast_paths: FastPaths, clock: TestClock | None = None) -> GSIHTTPTransferServer:
    tls = ServerTLS(str(pki.server_cert), str(pki.server_key), TrustConfig(ca_dir=str(pki.ca_dir)), clock=clock)
    server = GSIHTTPTransferServer(tls, public_url="https://test", fast_paths=fast_paths)
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    (files / "g.txt").write_bytes(b"hello\n")
    server.RegisterPrefix("data", MemoryHandler(str(files)))
    return server


def connect(server: GSIHTTPTransferServer, certificate: Path, key: Path | None = None) -> MemoryTLSClient:
    clock = Clock()
    client = MemoryTLSClient(server.protocol_factory(clock), str(certificate), None if key is None else str(key), clock)
    client.handshake()
    return client


def get(client: MemoryTLSClient) -> bytes:
    client.send(GET)
    return client.received()


def assert_refused_and_closed(client: MemoryTLSClient, answer: bytes, reason: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), answer
    assert b"connection: close" in head.lower()
    assert reason in body and body.count(b"\n") == 1
    # the server closed its side: its close_notify followed the answer
    assert client.connection.get_shutdown() & SSL.RECEIVED_SHUTDOWN


def test_revoked_user_refused_on_an_open_connection_after_reload(pki, tmp_path, fast_paths, log_lines):
    """After alice's certificate is revoked and the trust reloaded, her open connection's next request is 403 and closed."""
    server = serve(pki, tmp_path, fast_paths)
    alice = connect(server, pki.users["alice"].cert, pki.users["alice"].key)
    bob = connect(server, pki.users["bob"].proxy)
    assert get(alice).startswith(b"HTTP/1.1 200")
    assert get(bob).startswith(b"HTTP/1.1 200")
    revoke(pki.directory, "alice")
    server.reload()
    assert_refused_and_closed(alice, get(alice), b"certificate revoked")
    assert get(bob).startswith(b"HTTP/1.1 200")  # judged again too, and still trusted
    refusals = [line for line in log_lines if "client certificate refused" in line]
    assert len(refusals) == 1 and pki.users["alice"].dn in refusals[0]


def test_revoked_proxy_user_refused_on_an_open_connection(pki, tmp_path, fast_paths):
    """A proxy's connection is refused when the end-entity certificate it comes from is revoked."""
    server = serve(pki, tmp_path, fast_paths)
    alice = connect(server, pki.users["alice"].proxy)
    assert get(alice).startswith(b"HTTP/1.1 200")
    revoke(pki.directory, "alice")
    server.reload(force=True)
    assert_refused_and_closed(alice, get(alice), b"certificate revoked")


def test_removed_ca_refuses_its_open_connections(pki, tmp_path, fast_paths):
    """Removing the root CA from the trusted directory refuses the open connections of the users it issued."""
    server = serve(pki, tmp_path, fast_paths)
    alice = connect(server, pki.users["alice"].cert, pki.users["alice"].key)
    assert get(alice).startswith(b"HTTP/1.1 200")
    for path in pki.ca_dir.glob(f"{pki.root.hash}.*"):
        path.unlink()
    server.reload()
    assert_refused_and_closed(alice, get(alice), b"no longer trusted")


def test_reload_that_changes_nothing_keeps_connections(pki, tmp_path, fast_paths):
    """A forced reload of the same files changes no generation: nothing is judged again, nothing refused."""
    server = serve(pki, tmp_path, fast_paths)
    alice = connect(server, pki.users["alice"].cert, pki.users["alice"].key)
    assert get(alice).startswith(b"HTTP/1.1 200")
    generation = server.tls.generation
    server.reload(force=True)
    assert server.tls.generation == generation
    assert get(alice).startswith(b"HTTP/1.1 200")


def test_proxy_expired_mid_connection_is_refused(pki, tmp_path, fast_paths):
    """A request after the chain's earliest not-after (the proxy's) is 403 and the connection closed."""
    clock = TestClock()
    server = serve(pki, tmp_path, fast_paths, clock)
    alice = connect(server, pki.users["alice"].proxy)
    assert get(alice).startswith(b"HTTP/1.1 200")
    proxy = x509.load_pem_x509_certificates(pki.users["alice"].proxy.read_bytes())[0]
    clock.now = proxy.not_valid_after_utc - datetime.timedelta(seconds=1)
    assert get(alice).startswith(b"HTTP/1.1 200")
    clock.now = proxy.not_valid_after_utc + datetime.timedelta(seconds=1)
    assert_refused_and_closed(alice, get(alice), b"expired")


def test_chains_are_judged_once_per_connection_per_reload_not_per_request(pki, tmp_path, fast_paths):
    """Policies judge a chain once for all its connections; a changing reload re-judges each open connection once."""
    server = serve(pki, tmp_path, fast_paths)
    judged: list[bool] = []
    judge = server.tls.chain_refusal

    def counting(chain, reverify):  # type: ignore[no-untyped-def]
        judged.append(reverify)
        return judge(chain, reverify)

    server.tls.chain_refusal = counting
    first = connect(server, pki.users["alice"].cert, pki.users["alice"].key)
    second = connect(server, pki.users["alice"].cert, pki.users["alice"].key)
    for client in (first, second, first, second):
        assert get(client).startswith(b"HTTP/1.1 200")
    assert judged == [False]
    revoke(pki.directory, "bob")
    server.reload()
    for client in (first, second, first, second):
        assert get(client).startswith(b"HTTP/1.1 200")
    assert judged == [False, True, True]
