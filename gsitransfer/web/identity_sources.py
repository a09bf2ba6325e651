"""Who is asking: the identity of a request, per kind of listener.

* :class:`TrustedProxyIdentity` (plain HTTP): anonymous, except that the
  ``X-Client-DN`` header is believed from peers listed as trusted
  TLS-terminating proxies; from anyone else it is ignored.
* :class:`CertificateIdentity` (mutual TLS): the verified client chain, via
  ``gsitransfer.tls.peer``. Headers are never consulted. The chain is judged
  again on every request: its earliest not-after, and, after a trust reload
  that changed something, the current CAs, CRLs and signing policies; a
  refused chain gets 403 and its connection is closed after the answer.
* :class:`GridMapAuthorizer` wraps either: with a grid-mapfile, a DN that is
  not in it is refused (403) before any handler callback, and the token
  carries the first mapped account as ``username``.

Each source's ``identify(request)`` returns an :class:`IdToken` or raises
``NotAuthorized``; it is called once per request, when its headers are in.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

from twisted.logger import Logger

from ..errors import CredentialRefused, NotAuthorized
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


@dataclass(slots=True)
class _Admitted:
    """A connection's identity and what its chain was last judged by."""

    token: IdToken
    #: the trust in force (``ServerTLS``), None for a connection made elsewhere
    judge: tls_peer.ChainJudge | None
    #: the trust generation the chain was last judged under
    generation: int
    #: the earliest not-after of the chain's certificates
    not_after: datetime.datetime | None
    #: why the chain is refused (for good: every later request of the connection too)
    refused: str | None = None


class CertificateIdentity:
    """Mutual TLS: the identity of the verified client certificate chain.

    It is derived once per connection and remembered for the connection's
    later requests: the verified chain cannot change on a connection
    (renegotiation is refused, TLS 1.3 post-handshake authentication is not
    offered), and deriving it costs a fifth of a keep-alive GET.

    What is not remembered is that the chain is acceptable. Each request
    checks the chain's earliest not-after (a proxy that expired while the
    connection was open is refused); the first request, and the first one
    after each trust reload that changed something (``ServerTLS.generation``),
    also has the chain judged by the trust in force (``chain_refusal``: the
    CAs' signing policies; after a reload the current CAs and CRLs too). A
    refusal is 403 with the reason, for that request and every later one on
    the connection, which is closed after the answer; it is logged once.

    Connections presenting the same chain share one token (and one copy of
    the chain's parsed certificates, several KiB): a client's many
    connections cost one identity, not one each.
    """

    def __init__(self) -> None:
        #: the attribute of a connection object its record is kept in (one per source)
        self._attribute = f"_gsitransfer_identity_{id(self):x}"
        #: records of connections that take no attribute
        self._known: weakref.WeakKeyDictionary[Any, _Admitted] = weakref.WeakKeyDictionary()
        #: the token of each distinct (chain, fields) in use, held only by the connections' tokens
        self._shared: weakref.WeakValueDictionary[tuple[Any, ...], IdToken] = weakref.WeakValueDictionary()
        #: id(shared token) -> (the token, weakly; the generation; the policies' verdict on its chain)
        self._verdicts: dict[int, tuple[weakref.ref[IdToken], int, str | None]] = {}

    def identify(self, request: IdentifiableRequest) -> IdToken:
        transport = request.channel.transport
        handle = getattr(transport, "getHandle", None)
        connection = handle() if handle is not None else None
        if connection is None:
            raise NotAuthorized("no TLS connection")
        known = getattr(connection, self._attribute, None)
        if known is None:
            known = self._known.get(connection)
        fresh = known is None
        if known is None:
            known = self._admit(connection)
            try:
                # kept on the connection object: read back with one getattr, gone with it
                setattr(connection, self._attribute, known)
            except AttributeError:
                self._known[connection] = known
        newly_refused = fresh and known.refused is not None
        if known.refused is None:
            judge = known.judge
            if judge is not None and judge.generation != known.generation:
                known.generation = judge.generation
                known.refused = judge.chain_refusal(known.token.chain, reverify=True)
            if known.refused is None and known.not_after is not None:
                now = judge.now() if judge is not None else datetime.datetime.now(datetime.timezone.utc)
                if now > known.not_after:
                    known.refused = (f"the client certificate chain expired on "
                                     f"{known.not_after:%Y-%m-%d %H:%M:%S} UTC")
            newly_refused = known.refused is not None
        if newly_refused:
            _log.warn("client certificate refused from {peer} ({dn}): {reason}; closing the connection",
                      peer=peer_host(request), dn=known.token.dn, reason=known.refused)
        if known.refused is not None:
            _close_after_answer(request)
            raise CredentialRefused(known.refused)
        return known.token

    def _admit(self, connection: Any) -> _Admitted:
        """The record of a connection's first request: its token, judged by the trust in force."""
        try:
            token = tls_peer.identity_from_connection(connection)
        except Exception as error:  # a chain we cannot read is no identity
            _log.warn("cannot read the client chain: {error}", error=error)
            raise NotAuthorized("no verified client certificate") from None
        token = self._shared.setdefault(_sharing_key(token), token)
        tokens = tls_peer.chain_tokens_of(connection)
        judge = tokens.judge if tokens is not None else None
        not_after = min((cert.not_valid_after_utc for cert in token.chain), default=token.not_after)
        if judge is None:
            return _Admitted(token, None, 0, not_after)
        assert tokens is not None
        if tokens.generation != judge.generation:  # a reload came between its handshake and now
            refused = judge.chain_refusal(token.chain, reverify=True)
        else:
            refused = self._policy_verdict(token, judge)
        return _Admitted(token, judge, judge.generation, not_after, refused)

    def _policy_verdict(self, token: IdToken, judge: tls_peer.ChainJudge) -> str | None:
        """The CA policies' verdict on a shared token's chain, judged once per generation (~50 us saved a connection)."""
        key = id(token)
        known = self._verdicts.get(key)
        if known is not None and known[0]() is token and known[1] == judge.generation:
            return known[2]
        refused = judge.chain_refusal(token.chain, reverify=False)
        verdicts = self._verdicts
        self._verdicts[key] = (weakref.ref(token, lambda _: verdicts.pop(key, None)), judge.generation, refused)
        return refused


def _close_after_answer(request: IdentifiableRequest) -> None:
    """Have the connection closed once this request's refusal is sent (``Connection: close``).

    Only for twisted.web's requests (they have response headers): the
    keep-alive fast path's parsed head is declined and comes back as one,
    and a channel marked not persistent before that would drop it unanswered.
    """
    headers = getattr(request, "responseHeaders", None)
    if headers is None:
        return
    headers.setRawHeaders(b"connection", [b"close"])
    channel = request.channel
    if hasattr(channel, "persistent"):  # twisted.web's HTTPChannel: closes after the answer
        setattr(channel, "persistent", False)


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
