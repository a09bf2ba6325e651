"""Helpers for testing code built on gsitransfer, in memory: no sockets, no subprocess.

* :class:`SiteConnection` -- one client connection to a server's Site over
  Twisted's ``StringTransport``, driven by a ``Clock``: send bytes, read what
  the server wrote, drop the connection.
* :class:`MemoryHandler` -- a handler (the seed's callbacks) that accepts
  every file, stores uploads under a directory and records every call.
* :func:`identity_of` -- the identity a server gives a plain-HTTP client, as
  its identity source decides it (for driving the engine directly).
* :class:`MemoryTLSClient` -- a pyOpenSSL client (a certificate and key, a
  proxy file too) connected in memory to a server's TLS protocol factory
  (``GSIHTTPTransferServer.protocol_factory()``): the whole mutual-TLS path,
  handshake to handler, without a socket.

Used by the project's own tests (tests/web, tests/unit); they are part of the
public package so that handler authors can test theirs the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from .identity import IdToken

if TYPE_CHECKING:
    from .web.servers import HTTPTransferServer


class SiteConnection:
    """One client connection to ``site`` (a protocol factory), in memory."""

    def __init__(self, site: IProtocolFactory, clock: Clock | None = None, peer: str = "127.0.0.1") -> None:
        self.clock = Clock() if clock is None else clock
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        protocol = site.buildProtocol(IPv4Address("TCP", peer, 40000))
        assert protocol is not None
        self.protocol: Any = protocol
        self.protocol.makeConnection(self.transport)
        channel: Any = getattr(self.protocol, "_channel", self.protocol)
        channel.callLater = self.clock.callLater

    def send(self, data: bytes) -> None:
        """The client sends ``data``; the reactor then takes one turn."""
        self.protocol.dataReceived(data)
        self.clock.advance(0)

    def output(self) -> bytes:
        """Everything the server wrote so far."""
        return bytes(self.transport.value())

    def drop(self) -> None:
        """The client goes away."""
        self.protocol.connectionLost(Failure(ConnectionLost()))


@dataclass
class MemoryHandler:
    """A handler accepting every file, storing uploads under ``root``, recording each callback."""

    root: str
    #: (callback name, DN, argument) of every call, in order
    calls: list[tuple[str, str | None, Any]] = field(default_factory=list)

    def _record(self, callback: str, id_token: IdToken, argument: Any) -> None:
        self.calls.append((callback, id_token.dn, argument))

    def GetDownloadFilename(self, id_token: IdToken, url_path: str) -> str:
        self._record("GetDownloadFilename", id_token, url_path)
        return os.path.join(self.root, url_path)

    def CanUpload(self, id_token: IdToken, file_info: dict[str, Any]) -> bool:
        self._record("CanUpload", id_token, file_info["name"])
        return True

    def AddPendingUpload(self, id_token: IdToken, filename: str) -> None:
        self._record("AddPendingUpload", id_token, filename)

    def GetUploadFilename(self, id_token: IdToken, file_info: dict[str, Any]) -> str:
        self._record("GetUploadFilename", id_token, file_info["name"])
        return os.path.join(self.root, file_info["name"])

    def CompleteUpload(self, id_token: IdToken, file_info: dict[str, Any]) -> None:
        self._record("CompleteUpload", id_token, file_info["name"])

    def CancelPendingUpload(self, id_token: IdToken, filename: str) -> None:
        self._record("CancelPendingUpload", id_token, filename)


class _TCPStringTransport(StringTransport):
    """A StringTransport that takes the TCP options twisted.web's channel sets."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        """No Nagle here: nothing to do."""


class MemoryTLSClient:
    """A TLS client, in memory, of one connection to ``factory`` (a TLS-wrapping protocol factory)."""

    #: most rounds of bytes moved back and forth before a handshake is given up
    HANDSHAKE_ROUNDS = 20

    def __init__(
        self, factory: IProtocolFactory, certificate: str, key: str | None = None, clock: Clock | None = None
    ) -> None:
        """``certificate`` (and ``key``, unless the same PEM file holds it, as a proxy does) is the client's.

        ``clock`` must be the reactor ``factory`` was made with
        (``server.protocol_factory(clock)``): it runs the server's timers and
        Twisted's flush of small TLS writes.
        """
        self.clock = Clock() if clock is None else clock
        self.transport = _TCPStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        self.protocol: Any = protocol
        self.protocol.makeConnection(self.transport)
        channel: Any = getattr(self.protocol, "wrappedProtocol", self.protocol)
        channel.callLater = self.clock.callLater
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.use_certificate_chain_file(certificate)
        context.use_privatekey_file(key or certificate)
        self.connection = SSL.Connection(context, None)
        self.connection.set_connect_state()

    def handshake(self) -> None:
        """Run the TLS handshake to its end (AssertionError if it does not end)."""
        for _ in range(self.HANDSHAKE_ROUNDS):
            try:
                self.connection.do_handshake()
                self._to_server()
                self._to_client()
                return
            except SSL.WantReadError:
                pass
            self._to_server()
            self._to_client()
        raise AssertionError("the TLS handshake did not finish")

    def send(self, data: bytes) -> None:
        """The client sends ``data`` (encrypted); the server reads it and the reactor takes one turn."""
        self.connection.sendall(data)
        self._to_server()
        self.clock.advance(0)
        self._to_client()

    def received(self) -> bytes:
        """Everything the client can decrypt now."""
        self._to_client()
        parts = []
        while True:
            try:
                parts.append(self.connection.recv(1 << 20))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return b"".join(parts)

    def _to_server(self) -> None:
        while True:
            try:
                data = self.connection.bio_read(1 << 20)
            except SSL.WantReadError:
                return
            self.protocol.dataReceived(data)

    def _to_client(self) -> None:
        data = bytes(self.transport.value())
        self.transport.clear()
        if data:
            self.connection.bio_write(data)


class _PlainClientRequest:
    """What an identity source reads of a plain-HTTP request from ``peer`` with ``headers``."""

    def __init__(self, peer: str, headers: Headers) -> None:
        self.requestHeaders = headers
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.channel = type("Channel", (), {"transport": transport})()


def identity_of(
    server: "HTTPTransferServer", peer: str = "127.0.0.1", headers: dict[bytes, bytes] | None = None
) -> IdToken:
    """The identity ``server``'s identity source gives a plain-HTTP request from ``peer``."""
    raw = Headers({name: [value] for name, value in (headers or {}).items()})
    return server.identity.identify(_PlainClientRequest(peer, raw))


__all__ = ["MemoryHandler", "MemoryTLSClient", "SiteConnection", "identity_of"]
