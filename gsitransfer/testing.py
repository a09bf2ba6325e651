"""Helpers for testing code built on gsitransfer, in memory: no sockets, no subprocess.

* :class:`SiteConnection` -- one client connection to a server's Site over
  Twisted's ``StringTransport``, driven by a ``Clock``: send bytes, read what
  the server wrote, drop the connection.
* :class:`MemoryHandler` -- a handler (the seed's callbacks) that accepts
  every file, stores uploads under a directory and records every call.
* :func:`identity_of` -- the identity a server gives a plain-HTTP client, as
  its identity source decides it (for driving the engine directly).

Used by the project's own tests (tests/web, tests/unit); they are part of the
public package so that handler authors can test theirs the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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


__all__ = ["MemoryHandler", "SiteConnection", "identity_of"]
