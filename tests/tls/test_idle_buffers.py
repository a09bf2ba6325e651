"""Between requests an idle TLS connection gives back its memory BIOs (idle memory per connection)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gsitransfer.tls import server_protocol_factory
from gsitransfer.tls.context import ServerTLS, TrustConfig
from gsitransfer.tls.peer import release_idle_buffers
from .memory_tls import pump


def _pair(test_pki) -> tuple[SSL.Connection, SSL.Connection]:
    tls = ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(ca_dir=str(test_pki.ca_dir)))
    server = tls.serverConnectionForTLS(SimpleNamespace())
    server.set_accept_state()
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    alice = test_pki.users["alice"]
    client_context.use_certificate_file(str(alice.cert))
    client_context.use_privatekey_file(str(alice.key))
    client_context.load_verify_locations(str(test_pki.ca_file))
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    pump(client, server)
    return client, server


def _transport(connection: SSL.Connection) -> SimpleNamespace:
    return SimpleNamespace(getHandle=lambda: connection, transport=SimpleNamespace(connected=True))


def _send(sender: SSL.Connection, payload: bytes) -> None:
    """All of ``payload`` into the sender's BIO (pyOpenSSL writes one record per call)."""
    sent = 0
    for _ in range(len(payload) // 1024 + 10):
        if sent == len(payload):
            return
        sent += sender.send(payload[sent:])
    raise AssertionError("send never finished")


def _exchange(client: SSL.Connection, server: SSL.Connection, payload: bytes) -> bytes:
    _send(client, payload)
    pump(client, server)
    received = b""
    while len(received) < len(payload):
        received += server.recv(1 << 16)
    _send(server, payload[::-1])
    pump(client, server)
    back = b""
    while len(back) < len(payload):
        back += client.recv(1 << 16)
    assert back == payload[::-1]
    return received


def test_idle_connection_swaps_its_buffers_and_keeps_working(test_pki):
    """With both BIOs empty the buffers are replaced, and data still flows both ways afterwards."""
    client, server = _pair(test_pki)
    payload = bytes(range(256)) * 256
    assert _exchange(client, server, payload) == payload
    old = (server._into_ssl, server._from_ssl)
    assert release_idle_buffers(_transport(server))
    assert (server._into_ssl, server._from_ssl) != old
    assert _exchange(client, server, payload) == payload
    assert release_idle_buffers(_transport(server))


def test_buffers_holding_bytes_are_left_alone(test_pki):
    """Bytes not yet read from the receiving BIO: nothing is replaced, nothing lost."""
    client, server = _pair(test_pki)
    client.send(b"pending request")
    server.bio_write(client.bio_read(1 << 16))
    old = (server._into_ssl, server._from_ssl)
    assert not release_idle_buffers(_transport(server))
    assert (server._into_ssl, server._from_ssl) == old
    assert server.recv(100) == b"pending request"


def test_lost_or_plain_transports_are_left_alone(test_pki):
    """A transport whose TCP side is gone, or one that is not TLS, is not touched."""
    client, server = _pair(test_pki)
    lost = SimpleNamespace(getHandle=lambda: server, transport=SimpleNamespace(connected=False))
    assert not release_idle_buffers(lost)
    assert not release_idle_buffers(SimpleNamespace(getHandle=lambda: None))
    assert not release_idle_buffers(object())


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "twisted"])
def test_release_between_requests_is_safe_with_either_tls_transport(test_pki, bulk):
    """Through the bulk transport or Twisted's own, swapping the idle buffers keeps the connection working."""
    tls = ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(ca_dir=str(test_pki.ca_dir)))
    received: list[bytes] = []

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)
            self.transport.write(data[::-1])

    clock = Clock()
    factory = server_protocol_factory(tls, Factory.forProtocol(Echo), bulk=bulk, reactor=clock)
    server = factory.buildProtocol(None)
    wire = StringTransport()
    server.makeConnection(wire)
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    alice = test_pki.users["alice"]
    client_context.use_certificate_file(str(alice.cert))
    client_context.use_privatekey_file(str(alice.key))
    client = SSL.Connection(client_context, None)
    client.set_connect_state()

    def exchange(payload: bytes) -> bytes:
        back = b""
        for _ in range(20):
            try:
                client.do_handshake()
                if payload:
                    client.sendall(payload)
                    payload = b""
            except SSL.WantReadError:
                pass
            try:
                server.dataReceived(client.bio_read(1 << 20))
            except SSL.WantReadError:
                pass
            clock.advance(0)
            data = wire.value()
            wire.clear()
            if data:
                client.bio_write(data)
            try:
                back += client.recv(1 << 16)
            except SSL.WantReadError:
                pass
        return back

    assert exchange(b"first") == b"tsrif"
    assert release_idle_buffers(server)
    assert exchange(b"second") == b"dnoces"
    assert b"".join(received) == b"firstsecond"
