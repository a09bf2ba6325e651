"""Who is asking: the identity of a request, per kind of listener.

* :class:`TrustedProxyIdentity` (plain HTTP): anonymous, except that the
  ``X-Client-DN`` header is believed from peers listed as trusted
  TLS-terminating proxies; from anyone else it is ignored.
* :class:`CertificateIdentity` (mutual TLS): the verified client chain, via
  ``gsitransfer.tls.peer``. Headers are never consulted.
* :class:`GridMapAuthorizer` wraps either: with a grid-mapfile, a DN that is
  not in it is refused (403) before any handler callback, and the token
  carries the first mapped account as ``username``.

Each source's ``identify(request)`` returns an :class:`IdToken` or raises
``NotAuthorized``; it is called once per request, when its headers are in.
"""

from __future__ import annotations

import ipaddress
import os
import weakref
from typing import Any, Callable, Iterable, Protocol, Sequence

from twisted.logger import Logger

from ..errors import NotAuthorized
from ..identity import ANONYMOUS, IdToken
from ..tls import peer as tls_peer

_log = Logger()

CLIENT_DN_HEADER = b"x-client-dn"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HeaderLines(Protocol):
    """The request's header lines (twisted.web's ``Headers``, or the fast path's parsed head)."""

    def getRawHeaders(self, name: bytes) -> Sequence[bytes] | None:
        """Every value of header ``name``, or None."""


class ConnectionOf(Protocol):
    """The request's connection: its transport (TCP, TLS, or a test's)."""

    @property
    def transport(self) -> Any:
        """The transport (``getPeer()``; under TLS, the TLS layer)."""


class IdentifiableRequest(Protocol):
    """What an identity source reads of a request: its headers and its connection's transport."""

    @property
    def requestHeaders(self) -> HeaderLines:
        """The header lines."""

    @property
    def channel(self) -> ConnectionOf:
        """The connection the request came on."""


class IdentitySource(Protocol):
    def identify(self, request: IdentifiableRequest) -> IdToken:
        """The identity of ``request``'s client; raise NotAuthorized to refuse it."""


def peer_host(request: IdentifiableRequest) -> str | None:
    """The client's IP address as text, or None for a non-IP transport."""
    transport = request.channel.transport
    peer = transport.getPeer()
    return getattr(peer, "host", None)


def parse_networks(addresses: Iterable[str]) -> tuple[Network, ...]:
    """Parse ``--trusted-proxy`` values (addresses or CIDR networks); ValueError names the bad one."""
    networks = []
    for text in addresses:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {text!r}") from None
    return tuple(networks)


class TrustedProxyIdentity:
    """Plain HTTP: anonymous, or the ``X-Client-DN`` of a trusted proxy's request."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self.trusted = parse_networks(trusted_proxies)

    def is_trusted(self, host: str | None) -> bool:
        """True when ``host`` is one of the trusted TLS-terminating proxies."""
        if host is None or not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def identify(self, request: IdentifiableRequest) -> IdToken:
        values = request.requestHeaders.getRawHeaders(CLIENT_DN_HEADER)
        if not values or not self.is_trusted(peer_host(request)):
            return ANONYMOUS
        if len(values) > 1:
            raise NotAuthorized("more than one X-Client-DN header")
        try:
            dn = values[0].decode("ascii")
        except UnicodeDecodeError:
            raise NotAuthorized("X-Client-DN is not ASCII (use \\xHH escapes)") from None
        if not dn.startswith("/"):
            raise NotAuthorized("X-Client-DN is not a one-line DN (/C=../CN=..)")
        return IdToken(dn=dn)


class CertificateIdentity:
    """Mutual TLS: the identity of the verified client certificate chain.

    It is derived once per connection and remembered for the connection's
    later requests: the verified chain cannot change on a connection
    (renegotiation is refused, TLS 1.3 post-handshake authentication is not
    offered), and deriving it costs a fifth of a keep-alive GET.

    Connections presenting the same chain share one token (and one copy of
    the chain's parsed certificates, several KiB): a client's many
    connections cost one identity, not one each.
    """

    def __init__(self) -> None:
        #: the attribute of a connection object its token is kept in (one per source)
        self._attribute = f"_gsitransfer_identity_{id(self):x}"
        #: tokens of connections that take no attribute
        self._known: weakref.WeakKeyDictionary[Any, IdToken] = weakref.WeakKeyDictionary()
        #: the token of each distinct (chain, fields) in use, held only by the connections' tokens
        self._shared: weakref.WeakValueDictionary[tuple[Any, ...], IdToken] = weakref.WeakValueDictionary()

    def identify(self, request: IdentifiableRequest) -> IdToken:
        transport = request.channel.transport
        handle = getattr(transport, "getHandle", None)
        connection = handle() if handle is not None else None
        if connection is None:
            raise NotAuthorized("no TLS connection")
        known = getattr(connection, self._attribute, None)
        if known is None:
            known = self._known.get(connection)
        if known is not None:
            return known
        try:
            token = tls_peer.identity_from_connection(connection)
        except Exception as error:  # a chain we cannot read is no identity
            _log.warn("cannot read the client chain: {error}", error=error)
            raise NotAuthorized("no verified client certificate") from None
        token = self._shared.setdefault(_sharing_key(token), token)
        try:
            # kept on the connection object: read back with one getattr, gone with it
            setattr(connection, self._attribute, token)
        except AttributeError:
            self._known[connection] = token
        return token


def _sharing_key(token: IdToken) -> tuple[Any, ...]:
    """Every field of ``token``, the chain included (certificates compare by their DER)."""
    return (
        token.dn, token.chain, token.proxy, token.limited_proxy, token.issuer, token.not_after, token.username
    )


class GridMapAuthorizer:
    """Refuse DNs missing from the grid-mapfile; map the others to an account.

    The file is re-read when ``reload()`` is called (periodically) if it
    changed, and always when ``reload(force=True)`` is (SIGHUP); a file that
    fails to parse on reload keeps the previous map and logs one line.
    "Changed" is judged as for the TLS trust: by the file's inode, ctime,
    mtime and size, so an edit that keeps the size and the mtime (``cp -p``,
    ``rsync -t``) still changes the inode or the ctime.
    """

    def __init__(self, source: IdentitySource, path: str, loader: Callable[[str], Any]) -> None:
        self.source = source
        self.path = path
        self._loader = loader
        self._stamp: tuple[int, int, int, int] | None = None
        self._stamp = self._file_stamp()
        self._map = loader(path)

    def _file_stamp(self) -> tuple[int, int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_ctime_ns, stat.st_mtime_ns, stat.st_size)

    def reload(self, force: bool = False) -> bool:
        """Re-read the grid-mapfile if it changed (or ``force``); True when a new map is in force."""
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return False
        try:
            new_map = self._loader(self.path)
        except Exception as error:
            _log.error("grid-mapfile not reloaded, keeping the old one: {error}", error=error)
            return False
        self._map, self._stamp = new_map, stamp
        _log.info("grid-mapfile {path} reloaded", path=self.path)
        return True

    def identify(self, request: IdentifiableRequest) -> IdToken:
        token = self.source.identify(request)
        if token.dn is None:
            raise NotAuthorized("an identity is required (grid-mapfile in force)")
        accounts = self._map.lookup(token.dn)
        if not accounts:
            raise NotAuthorized(f"{token.dn} is not in the grid-mapfile")
        return token.with_username(accounts[0])
