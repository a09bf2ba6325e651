"""The two servers users build: ``HTTPTransferServer`` and ``GSIHTTPTransferServer``.

Each is a :class:`TransferServer` (the core) that knows how to make a
twisted.web Site over itself and listen on Twisted endpoints::

    server = HTTPTransferServer(transfers=SQLiteTransferTable("transfers.db"))
    server.RegisterPrefix("data", DirectoryStore("/srv/data"))
    server.listen("tcp:8080:interface=127.0.0.1")
    reactor.run()

The HTTP variant's identity is anonymous unless a trusted proxy says
otherwise (``X-Client-DN``); the GSI variant speaks mutual TLS and takes the
identity from the client certificate chain.
"""

from __future__ import annotations

import dataclasses
import socket
import weakref
from typing import Any, Callable, Iterable

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.web import server as web_server
from twisted.web import http
from twisted.web.http import combinedLogFormatter

from ..core import TransferServer
from ..errors import StateUnavailable
from ..fastpaths import FastPaths
from ..tls.factory import server_protocol_factory
from ..events import EventFanout
from .accesslog import AccessLineWriter, ClassicLogWriter, access_line, emit_access_line, plain_get_line
from .events import request_event
from .channel import (
    DEFAULT_FIRST_REQUEST_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HEAD_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTION_AGE,
    DEFAULT_MIN_BODY_RATE,
    TransferChannel,
    channel_protocol,
)
from .digesting import Digester
from .exchange import Serving
from .identity_sources import CertificateIdentity, GridMapAuthorizer, IdentitySource, TrustedProxyIdentity
from .offload import OFFLOAD_THRESHOLD, UploadDiscards
from .request import TransferRequest
from .smallfiles import SmallFiles
from .table import RouteTable

_log = Logger()

#: seconds a connection may stay silent (headers, body or between requests)
DEFAULT_IDLE_TIMEOUT = 300
#: seconds between expiry sweeps (SPEC 9.2: an expired key's pending files are cancelled within 15 s)
EXPIRY_INTERVAL = 10.0


class TransferSite(web_server.Site):
    """A Site whose requests route and stream as ``TransferRequest`` does; its resource is the route table."""

    requestFactory = TransferRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        serving: Serving,
        identity: IdentitySource,
        timeout: float = DEFAULT_IDLE_TIMEOUT,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        min_body_rate: float = DEFAULT_MIN_BODY_RATE,
        handshake_timeout: float | None = None,
        fast_paths: FastPaths = FastPaths(),
        access_line_writer: AccessLineWriter | None = None,
        first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        max_connection_age: float | None = DEFAULT_MAX_CONNECTION_AGE,
        under_tls: bool = False,
    ) -> None:
        """``handshake_timeout`` is for a site served under TLS (None: no deadline);
        ``under_tls`` says the site is served under TLS (else a TLS ClientHello
        on a connection is answered ``400`` at once).

        ``first_request_timeout`` (from the connection, or the end of its TLS
        handshake, to its first request) and ``keepalive_timeout`` (between
        requests) are never longer than ``timeout``, the idle timeout, which
        bounds silence inside a request or its answer; ``max_connection_age``
        (None or 0: none) closes a connection once it is that old, between
        requests (never during one).

        ``access_line_writer``: where access lines meant for the global log go
        as text instead (a worker's stdout); by default twistd's own log file
        (``ClassicLogWriter``). Used when ``fast_paths.access_log_writer``.
        """
        self.serving = serving
        super().__init__(RouteTable(), timeout=timeout, reactor=serving.reactor)
        self.identity = identity
        self.fast_paths = fast_paths
        self.small_files = SmallFiles() if fast_paths.keepalive_get and fast_paths.small_file_cache else None
        self.access_line_writer: AccessLineWriter | None = None
        if fast_paths.access_log_writer:
            self.access_line_writer = access_line_writer or ClassicLogWriter()
        #: never longer than the idle timeout
        self.head_timeout = min(head_timeout, timeout)
        self.handshake_timeout = None if handshake_timeout is None else min(handshake_timeout, timeout)
        self.first_request_timeout = min(first_request_timeout, timeout)
        self.keepalive_timeout = min(keepalive_timeout, timeout)
        self.max_connection_age = max_connection_age or None
        self.under_tls = under_tls
        self.min_body_rate = min_body_rate
        #: the body rate is judged over windows as long as the idle timeout (at most 60 s)
        self.rate_window = min(timeout, 60.0)
        #: requests of this site being answered now (graceful shutdown waits for them)
        self.active_requests = 0
        #: protocols of the connections made (closed gracefully at shutdown)
        self.connections: weakref.WeakSet[TransferChannel] = weakref.WeakSet()
        #: where each finished request's record goes (the audit log, the metrics); empty: none is made
        self.events = EventFanout()

    @property
    def reactor(self) -> Any:
        """The reactor of this site's connections, and of its verbs (``serving.reactor``)."""
        return self._reactor

    @reactor.setter
    def reactor(self, reactor: Any) -> None:
        # set by HTTPFactory's constructor, and by tests that run a site on their own clock:
        # the verbs then use the same reactor (for its threads, or for none)
        self._reactor = reactor
        serving: Serving | None = self.__dict__.get("serving")
        if serving is not None and serving.reactor is not reactor:
            self.serving = dataclasses.replace(serving, reactor=reactor)

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.connections.add(protocol)
        return protocol

    def close_connections(self) -> None:
        """Close every connection once what was written to it is sent (shutdown)."""
        for channel in list(self.connections):
            transport = channel.transport
            if transport is not None and not getattr(transport, "disconnecting", False):
                # the channel's own loseConnection unregisters it as its transport's producer first:
                # under TLS, that is what lets the TLS layer send close_notify and close
                channel.loseConnection()

    def protocol(self) -> TransferChannel:  # type: ignore[override]
        """Each connection's protocol: a TransferChannel (deadline on request heads)."""
        return channel_protocol(
            self.head_timeout,
            self.min_body_rate,
            self.rate_window,
            self.handshake_timeout,
            plain_gets=self.fast_paths.keepalive_get,
            first_request_timeout=self.first_request_timeout,
            keepalive_timeout=self.keepalive_timeout,
            max_age=self.max_connection_age,
            plain_listener=not self.under_tls,
        )

    def log(self, request: http.Request) -> None:
        """The access log line ``Site.log`` writes; with the fast writer, formatted and emitted more cheaply.

        Also the one place every finished request passes: its record goes to :attr:`events`.
        """
        if self.events.sinks:
            event = request_event(request, self.serving.engine)
            if event is not None:
                self.events.emit(event)
        log_file = self._logFile
        if log_file is not None:
            if self.fast_paths.access_log_writer and self._logFormatter is combinedLogFormatter:
                emit_access_line(log_file, access_line(self._logDateTime, request), self.access_line_writer)
            else:
                super().log(request)

    def plain_access_log(self) -> bool:
        """True when ``log_plain_get`` can log (no log file, or the combined format written by the fast writer)."""
        return self._logFile is None or (
            self.fast_paths.access_log_writer and self._logFormatter is combinedLogFormatter
        )

    def log_plain_get(
        self, channel: TransferChannel, target: bytes, sent: int, referrer: bytes | None, agent: bytes | None
    ) -> None:
        """The access log line of a GET answered 200 by the keep-alive shortcut (``plainget``)."""
        log_file = self._logFile
        if log_file is not None:
            line = plain_get_line(self._logDateTime, channel.peer_address(), target, sent, referrer, agent)
            emit_access_line(log_file, line, self.access_line_writer)


class HTTPTransferServer(TransferServer):
    """The seed's HTTPTransferServer: plain HTTP, anonymous or behind a trusted proxy."""

    scheme = "http"

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str] = (),
        gridmap: str | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        min_body_rate: float = DEFAULT_MIN_BODY_RATE,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        fast_paths: FastPaths | None = None,
        access_line_writer: Callable[[str], object] | None = None,
        first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        max_connection_age: float | None = DEFAULT_MAX_CONNECTION_AGE,
        **core_options: Any,
    ) -> None:
        """``fast_paths``: which fast paths to use (default: ``FastPaths.from_environment()``).
        ``access_line_writer``: where access lines meant for the global log go as
        text instead (a worker's stdout), if anywhere."""
        super().__init__(**core_options)
        self.fast_paths = FastPaths.from_environment() if fast_paths is None else fast_paths
        self.access_line_writer = access_line_writer
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        #: applies to the TLS (GSI) variant only
        self.handshake_timeout = handshake_timeout
        self.min_body_rate = min_body_rate
        self.first_request_timeout = first_request_timeout
        self.keepalive_timeout = keepalive_timeout
        #: seconds after which a connection is closed between requests (None: no limit)
        self.max_connection_age = max_connection_age
        self.identity: IdentitySource = self._base_identity(tuple(trusted_proxies))
        self.gridmap: GridMapAuthorizer | None = None
        if gridmap is not None:
            from ..gridmap import load_gridmap

            self.gridmap = GridMapAuthorizer(self.identity, gridmap, load_gridmap)
            self.identity = self.gridmap
        self.ports: list[IListeningPort] = []
        self._sites: list[TransferSite] = []
        self._sweepers: list[LoopingCall] = []
        self._discards_finished_at_shutdown = False
        #: the upload writer threads told to discard (waited for after the reactor's shutdown)
        self.discards = UploadDiscards()
        #: bodies larger than this are written by worker threads (None: never)
        self.offload_threshold: int | None = OFFLOAD_THRESHOLD
        #: the digests downloads ask for: kept, or computed once per file state (every site shares it)
        self.digester = Digester()
        #: where the records of finished requests and expiries go (``observe``); empty: none is made
        self.events = EventFanout()

    def observe(self, events: EventFanout) -> None:
        """Send every record of this server (each finished request, each expiry) to ``events``."""
        self.events = events
        self.engine.events = events
        for site in self._sites:
            site.events = events

    def _base_identity(self, trusted_proxies: tuple[str, ...]) -> IdentitySource:
        return TrustedProxyIdentity(trusted_proxies)

    def serving(self, reactor: Any = None) -> Serving:
        """What this server's sites answer with: its engine, its URLs, its upload writers."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        return Serving(
            engine=self.engine,
            locate=self.download_url,
            reactor=reactor,
            offload_threshold=self.offload_threshold,
            discards=self.discards,
            scheme=self.scheme,
            digester=self.digester,
        )

    def site(self, reactor: Any = None) -> TransferSite:
        """A twisted.web Site serving this server (one per listener is fine), on ``reactor`` (default: the global one)."""
        site = TransferSite(
            self.serving(reactor),
            self.identity,
            timeout=self.idle_timeout,
            head_timeout=self.head_timeout,
            min_body_rate=self.min_body_rate,
            handshake_timeout=self.handshake_timeout if self.scheme == "https" else None,
            fast_paths=self.fast_paths,
            access_line_writer=self.access_line_writer,
            first_request_timeout=self.first_request_timeout,
            keepalive_timeout=self.keepalive_timeout,
            max_connection_age=self.max_connection_age,
            under_tls=self.scheme == "https",
        )
        site.events = self.events
        self._sites.append(site)
        return site

    def open_connections(self) -> int:
        """Client connections open now, over every site (the metrics' gauge)."""
        return sum(len(site.connections) for site in self._sites)

    def busy(self) -> int:
        """Uploads in flight plus requests being answered, over every site."""
        return self.engine.uploads_in_flight() + sum(site.active_requests for site in self._sites)

    def protocol_factory(self, reactor: Any = None) -> IProtocolFactory:
        """The protocol factory to listen with on ``reactor`` (the Site; TLS-wrapped in the GSI variant)."""
        return self.site(reactor)

    def listen(self, endpoint: str | IStreamServerEndpoint, reactor: Any = None) -> defer.Deferred[IListeningPort]:
        """Listen on a Twisted endpoint (object or string such as ``tcp:8080``)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        where = serverFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
        self._finish_discards_at_shutdown(reactor)
        listening: defer.Deferred[IListeningPort] = where.listen(self.protocol_factory(reactor))
        listening.addCallback(self._listening)
        return listening

    def adopt(self, fd: int, reactor: Any = None) -> IListeningPort:
        """Accept on a listening socket inherited from a supervisor (``--workers``).

        ``fd`` stays open for the caller; the port accepts on its own duplicate.
        """
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        probe = socket.socket(fileno=fd)
        try:
            family = probe.family
        finally:
            probe.detach()
        self._finish_discards_at_shutdown(reactor)
        port: IListeningPort = reactor.adoptStreamPort(fd, family, self.protocol_factory(reactor))
        self.ports.append(port)
        self._learn_public_url(port)
        return port

    def _finish_discards_at_shutdown(self, reactor: Any) -> None:
        """Once per server: after the reactor's shutdown, let abandoned uploads' writers clean up."""
        if not self._discards_finished_at_shutdown:
            self._discards_finished_at_shutdown = True
            reactor.addSystemEventTrigger("after", "shutdown", self.discards.finish)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.ports.append(port)
        address = port.getHost()
        host = str(getattr(address, "host", "localhost"))
        port_number = getattr(address, "port", "?")
        _log.info(
            "gsitransfer listening: {scheme}://{host}:{port}",
            scheme=self.scheme,
            host=f"[{host}]" if ":" in host else host,
            port=port_number,
        )
        self._learn_public_url(port)
        return port

    def _learn_public_url(self, port: IListeningPort) -> None:
        """Without ``public_url``, descriptors use the first listener's address."""
        address = port.getHost()
        host = str(getattr(address, "host", "localhost"))
        port_number = getattr(address, "port", "?")
        if self.public_url is None:
            if host in ("0.0.0.0", "::", ""):
                host = "localhost"
            self.public_url = f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port_number}"

    def maintain(self, reactor: Any = None, interval: float = 60.0, expire: bool = True) -> LoopingCall:
        """Reload trust every ``interval`` seconds and expire transfer keys every
        :data:`EXPIRY_INTERVAL` seconds (SPEC 9.2: an expired key's files are
        cancelled within 15 s), both starting now; the reload's LoopingCall.

        ``expire=False`` only reloads: with ``--workers`` the supervisor alone expires keys.
        """
        self._sweepers = []
        if expire:
            self._sweepers.append(self._every(EXPIRY_INTERVAL, self.expire, reactor))
        reloader = self._every(interval, self.reload, reactor)
        self._sweepers.append(reloader)
        return reloader

    @staticmethod
    def _every(interval: float, work: Callable[[], object], reactor: Any) -> LoopingCall:
        call = LoopingCall(work)
        if reactor is not None:
            call.clock = reactor
        call.start(interval, now=True).addErrback(lambda failure: _log.failure("maintenance stopped", failure))
        return call

    @defer.inlineCallbacks
    def expire(self) -> Any:
        """One expiry sweep: forget expired keys, cancelling their unstored files (each exactly once)."""
        try:
            expired = yield self.engine.expire_transfers()
            if expired:
                _log.info("{n} transfer key(s) expired", n=expired)
        except StateUnavailable:
            pass  # said once where the database went away; the next sweep tries again
        except Exception:
            _log.failure("expiring transfer keys failed")

    @defer.inlineCallbacks
    def maintenance(self) -> Any:
        """One round of housekeeping: expire keys, re-read the grid-mapfile."""
        yield self.expire()
        self.reload()

    def reload(self, force: bool = False) -> None:
        """Re-read changed configuration files (grid-mapfile; TLS trust in the GSI variant).

        ``force`` re-reads them even if no file looks changed (SIGHUP).
        """
        if self.gridmap is not None:
            self.gridmap.reload(force)

    @defer.inlineCallbacks
    def stop(self, grace: float = 0.0, reactor: Any = None) -> Any:
        """Stop listening and housekeeping, then let transfers in flight end.

        Waits at most ``grace`` seconds for bodies already accepted to be
        stored (or to fail) and for answers being sent (downloads); whatever
        is still going after that is abandoned when the connections close (an
        upload's temporary file is removed).
        """
        for sweeper in self._sweepers:
            if sweeper.running:
                sweeper.stop()
        ports, self.ports = self.ports, []
        for port in ports:
            yield port.stopListening()
        if grace <= 0 or not self.busy():
            return None
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        _log.info("waiting up to {grace}s for {n} transfer(s) in flight", grace=grace, n=self.busy())
        deadline = reactor.seconds() + grace
        while self.busy() and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.1, lambda: None)
        if self.busy():
            _log.warn("{n} transfer(s) abandoned at shutdown", n=self.busy())
            return None
        # the last answers may still sit in transport buffers: let them go out
        for site in self._sites:
            site.close_connections()
        yield deferLater(reactor, min(0.5, max(0.0, deadline - reactor.seconds())), lambda: None)
        return None


class GSIHTTPTransferServer(HTTPTransferServer):
    """The seed's GSIHTTPTransferServer: mutual TLS, identity from the client certificate.

    ``tls`` is a server TLS configuration from ``gsitransfer.tls`` (certificate,
    key, trusted CAs and CRLs) providing ``IOpenSSLServerConnectionCreator``.
    """

    scheme = "https"

    def __init__(self, tls: Any, **options: Any) -> None:
        if options.get("trusted_proxies"):
            raise ValueError("trusted proxies do not apply to a mutual-TLS server")
        self.tls = tls
        super().__init__(**options)

    def _base_identity(self, trusted_proxies: tuple[str, ...]) -> IdentitySource:
        return CertificateIdentity()

    def protocol_factory(self, reactor: Any = None) -> IProtocolFactory:
        """The Site wrapped in the TLS transport the fast paths choose (``tls.server_protocol_factory``)."""
        return server_protocol_factory(self.tls, self.site(reactor), bulk=self.fast_paths.bulk_tls, reactor=reactor)

    def reload(self, force: bool = False) -> None:
        """Re-read CAs, CRLs and the grid-mapfile; new connections see the new trust."""
        super().reload(force)
        self.tls.reload(force=force)
