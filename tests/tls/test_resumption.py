"""TLS session resumption stays off, and the facts that decided it (docs/security.md).

* ServerTLS never resumes a session: a client offering its previous session
  (TLS 1.3 or 1.2) gets a full handshake and a freshly verified chain.
* The facts, checked on a plain pyOpenSSL context with tickets on (not
  ServerTLS's): a resumed TLS 1.3 session has no verified chain (only the
  leaf), a new context -- what every trust reload builds -- does not resume a
  ticket of the old one, and OpenSSL resumes a session whose client proxy has
  expired (resumption re-verifies nothing).
"""

from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import lib

from gsitransfer.testca import Issued, TestPKI, make_proxy, write_proxy

from .conftest import TIMEOUT, EchoServer


def reconnect_twice(port: int, pki: TestPKI, version: ssl.TLSVersion) -> list[tuple[bool, str]]:
    """Two connections, the second offering the first's session: (session_reused, identity text)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.users["alice"].proxy))
    context.minimum_version = context.maximum_version = version
    session, seen = None, []
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                seen.append((bool(tls.session_reused), data.decode()))
                session = tls.session
    return seen


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_an_offered_session_is_never_resumed(echo_server: EchoServer, test_pki: TestPKI, version: ssl.TLSVersion) -> None:
    """Every connection is a full handshake: the chain is verified against the trust in force."""
    for reused, text in reconnect_twice(echo_server.port, test_pki, version):
        assert not reused
        assert f"dn: {test_pki.users['alice'].dn}\n" in text
        assert "chain: 3\n" in text  # proxy, user, root CA: a verified chain, every time


# ---------------------------------------------------------------------------
# The facts, on a plain context with session tickets on
# ---------------------------------------------------------------------------


def ticket_context(pki: TestPKI, errors: list[int] | None = None) -> SSL.Context:
    """A server context like ServerTLS's but with TLS 1.3 tickets and a session cache;
    verification error codes go to ``errors``."""

    def verify(conn: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
        if not ok and errors is not None:
            errors.append(code)
        return bool(ok)

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_session_id(b"resumption-test")
    context.use_certificate_file(str(pki.server_cert))
    context.use_privatekey_file(str(pki.server_key))
    store = context.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pki.root.cert.read_bytes())))
    store.set_flags(crypto.X509StoreFlags.ALLOW_PROXY_CERTS)
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return context


def client_context(pki: TestPKI, credential: Path | None) -> SSL.Context:
    assert credential is not None
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.use_certificate_chain_file(str(credential))
    context.use_privatekey_file(str(credential))
    context.load_verify_locations(str(pki.ca_file))
    context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, code, depth, ok: bool(ok))
    return context


def handshake(server_ctx: SSL.Context, client_ctx: SSL.Context,
              session: SSL.Session | None = None) -> tuple[SSL.Connection, SSL.Connection]:
    """A handshake through memory BIOs; the client also reads the server's session tickets."""
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    if session is not None:
        client.set_session(session)
    done = set()
    for _ in range(10):
        for name, conn, other in (("client", client, server), ("server", server, client)):
            try:
                conn.do_handshake()
                done.add(name)
            except SSL.WantReadError:
                pass
            try:
                while True:
                    other.bio_write(conn.bio_read(65536))
            except SSL.WantReadError:
                pass
        if done == {"client", "server"}:
            break
    assert done == {"client", "server"}
    try:
        client.recv(1)  # processes the NewSessionTicket messages
    except SSL.WantReadError:
        pass
    return server, client


def reused(connection: SSL.Connection) -> bool:
    return bool(lib.SSL_session_reused(connection._ssl))


def test_a_resumed_tls13_session_has_no_verified_chain(test_pki: TestPKI) -> None:
    """On resumption only the leaf is known: identity_from_chain has nothing to walk."""
    server_ctx, client_ctx = ticket_context(test_pki), client_context(test_pki, test_pki.users["alice"].proxy)
    full, client = handshake(server_ctx, client_ctx)
    assert not reused(full) and len(full.get_verified_chain() or ()) == 3
    resumed, _ = handshake(server_ctx, client_ctx, client.get_session())
    assert reused(resumed)
    assert resumed.get_verified_chain() is None
    assert resumed.get_peer_cert_chain() is None
    leaf = resumed.get_peer_certificate(as_cryptography=True)
    assert leaf == full.get_peer_certificate(as_cryptography=True)  # the proxy, not the user


def test_a_new_context_does_not_resume_an_old_ticket(test_pki: TestPKI) -> None:
    """Ticket keys are per SSL_CTX: after a reload (new context) the old ticket gets a full handshake."""
    client_ctx = client_context(test_pki, test_pki.users["alice"].proxy)
    _, client = handshake(ticket_context(test_pki), client_ctx)
    fresh, _ = handshake(ticket_context(test_pki), client_ctx, client.get_session())
    assert not reused(fresh)
    assert len(fresh.get_verified_chain() or ()) == 3


def test_openssl_resumes_a_session_whose_proxy_has_expired(test_pki: TestPKI, tmp_path: Path) -> None:
    """Resumption re-checks no validity date: why resumption would need expiry rules of its own.

    The server's verification clock is moved past the proxy's not-after
    (``X509Store.set_time``) instead of waiting for it.
    """
    alice = test_pki.users["alice"]
    user = Issued(x509.load_pem_x509_certificate(alice.cert.read_bytes()),
                  serialization.load_pem_private_key(alice.key.read_bytes(), password=None))  # type: ignore[arg-type]
    now = datetime.datetime.now(datetime.timezone.utc)
    proxy = make_proxy(user, user.key, not_before=now - datetime.timedelta(hours=1),  # type: ignore[arg-type]
                       not_after=now + datetime.timedelta(hours=1))
    errors: list[int] = []
    server_ctx = ticket_context(test_pki, errors)
    client_ctx = client_context(test_pki, write_proxy(tmp_path / "proxy.pem", proxy))
    _, client = handshake(server_ctx, client_ctx)
    store = server_ctx.get_cert_store()
    assert store is not None
    store.set_time(now + datetime.timedelta(hours=2))
    with pytest.raises(SSL.Error):  # a full handshake is refused now
        handshake(server_ctx, client_ctx)
    assert errors == [10]  # certificate has expired
    resumed, _ = handshake(server_ctx, client_ctx, client.get_session())
    assert reused(resumed)
    assert resumed.get_peer_certificate(as_cryptography=True) == proxy.cert
