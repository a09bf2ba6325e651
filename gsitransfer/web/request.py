"""A twisted.web Request that decides what to do with a body from its headers.

twisted.web's own Request spools every body to memory or a temporary file
and only then renders. :class:`TransferRequest` instead acts in ``gotLength``
(called once all headers are in, before any body byte is read):

* the identity is established (``site.identity.identify``); a refusal is 403;
* the request is routed (:func:`routes.classify`); a bad path or method is
  answered at once;
* a file upload is handed to an :class:`UploadReceiver`, which asks the core
  (and the handler) whether the body may come, with the connection paused
  meanwhile, and then streams the body to disk; ``Expect: 100-continue`` is
  answered only once the upload is accepted;
* any other body (a manifest, or a stray body on GET) is held in memory up to
  a small limit; a larger one is refused with 413 from its Content-Length, or
  as soon as it passes the limit.

A refusal sent while a body is still arriving closes the connection after
the response (the rest of the body is never read).

A download (the usual keep-alive request) is rendered without walking the
Resource tree (``_process_download``): the route is already known, and the
tree would only lead to the root's one ``PrefixResource``.
"""

from __future__ import annotations

import functools
import io
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import NO_BODY_CODES, HTTPChannel, datetimeToString

from ..errors import TransferError
from ..identity import IdToken
from .routes import DownloadRoute, ManifestRoute, Refusal, Route, UploadRoute, classify
from .status import status_for, write_error
from .upload import UploadReceiver

#: largest body accepted on a request that is neither a manifest nor a file
SMALL_BODY_LIMIT = 64 * 1024

#: longest path whose route is remembered (routes are frozen values, a function of method and path)
_ROUTE_CACHE_PATH = 512

#: the Server header twisted.web's ``Request.process`` sets
_SERVER = server.version


def path_segments(target: bytes) -> list[bytes] | None:
    """Percent-decoded segments of a request target's path, as twisted.web's ``postpath``.

    None unless the target is an absolute path (``/...``): twisted.web would
    drop its first byte, whatever it is.
    """
    path = target.split(b"?", 1)[0]
    if not path.startswith(b"/"):
        return None
    return [unquote_to_bytes(part) for part in path[1:].split(b"/")]


def route_request(method: bytes, target: bytes) -> tuple[list[bytes] | None, Route]:
    """The path segments of a request target and its route (remembered for short targets)."""
    path = target.split(b"?", 1)[0]
    if len(path) > _ROUTE_CACHE_PATH:
        return _route(method, path)
    segments, route = _remembered_route(method, path)
    return (None if segments is None else list(segments)), route


def _route(method: bytes, path: bytes) -> tuple[list[bytes] | None, Route]:
    segments = path_segments(path)
    if segments is None:
        return None, Refusal(400, "the request target must be a path starting with /")
    return segments, classify(method, segments)


@functools.lru_cache(maxsize=1024)
def _remembered_route(method: bytes, path: bytes) -> tuple[tuple[bytes, ...] | None, Route]:
    segments, route = _route(method, path)
    return (None if segments is None else tuple(segments)), route


@functools.lru_cache(maxsize=64)
def http_date(seconds: int) -> bytes:
    """``datetimeToString(seconds)``, remembered: the current second's, and files' mtimes."""
    return datetimeToString(seconds)


def _discard(data: bytes) -> None:
    """Swallow bytes that arrive after a refusal sent before the body."""


class TransferRequest(server.Request):
    """A Request that routes and refuses from its headers and streams uploads."""

    _parsePOSTFormSubmission = False

    route: Route | None = None
    #: the path's percent-decoded segments (None: not a path)
    _segments: list[bytes] | None = None
    id_token: IdToken | None = None
    upload_receiver: UploadReceiver | None = None
    _length: int | None = 0
    _body_limit: int | None = None
    _body_seen = 0
    _body_received = False
    _pending_refusal: tuple[int, str, tuple[bytes, ...]] | None = None
    _answered = False
    #: the site whose ``active_requests`` counts this request until it ends
    _counted_on: Any = None
    #: the channel's idle timeout while pause_body holds it off (0: there was none)
    _idle_timeout_held: float | None = None

    # -- called by the channel ------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        """All headers are in: identify, route and choose where the body goes."""
        self._length = length
        self.content = io.BytesIO()
        self._prime_request_line()
        site = self.channel.site
        try:
            self.id_token = site.identity.identify(self)
        except TransferError as error:
            self.refuse(status_for(error), error.reason)
            return
        self._segments, self.route = route_request(self.method, self.uri)
        if isinstance(self.route, Refusal):
            self.refuse(self.route.status, self.route.reason, self.route.allow)
        elif isinstance(self.route, UploadRoute):
            expects_continue = self._take_over_expect()
            self.upload_receiver = UploadReceiver(
                self, site.transfer_server, self.route, length, expects_continue
            )
            self.upload_receiver.start()
        else:
            limit = (
                site.transfer_server.manifest_limits.max_bytes
                if isinstance(self.route, ManifestRoute)
                else SMALL_BODY_LIMIT
            )
            self._body_limit = limit
            if length is not None and length > limit:
                self.refuse(413, f"request body is larger than {limit} bytes")

    def handleContentChunk(self, data: bytes) -> None:
        """A piece of body: to the upload, or to the bounded in-memory buffer."""
        if self._answered or self._pending_refusal is not None:
            return
        if self.upload_receiver is not None:
            self.upload_receiver.data_received(data)
            return
        self._body_seen += len(data)
        if self._body_limit is not None and self._body_seen > self._body_limit:
            self.refuse(413, f"request body is larger than {self._body_limit} bytes")
            return
        self.content.write(data)

    def process(self) -> None:
        """The whole body is in: answer a pending refusal, or render as usual."""
        self._body_received = True
        if self._answered:
            return
        self._count_while_answered()
        if self._pending_refusal is not None:
            self._set_default_headers()
            status, reason, allow = self._pending_refusal
            self._answered = True
            write_error(self, status, reason, allow)
            return
        if type(self.route) is DownloadRoute and self._process_download():
            return
        super().process()

    def _process_download(self) -> bool:
        """``Request.process`` for a download, without walking the Resource tree; False if it must.

        The tree would lead to the root's one ``PrefixResource`` (the root has
        no static children); the request is left as that walk leaves it
        (``site``, ``prepath``/``postpath``, the default headers), then rendered.
        """
        site: Any = self.channel.site
        root: Any = getattr(site, "resource", None)
        prefixes = getattr(root, "prefixes", None)
        if prefixes is None or root.children or self._segments is None:
            return False
        self.site = site
        headers = self.responseHeaders
        headers.setRawHeaders(b"Server", [_SERVER])
        headers.setRawHeaders(b"Date", [http_date(int(time.time()))])
        self.sitepath: list[bytes] = []
        self.prepath = self._segments[:1]
        self.postpath = self._segments[1:]
        try:
            self.render(prefixes)
        except BaseException:
            self.processingFailed(Failure())
        return True

    def processingFailed(self, reason: Any) -> Any:
        """A bug while rendering: logged with its traceback; the client gets one plain line."""
        self._log.failure("unexpected error while answering {uri}", failure=reason, uri=self.uri)
        if self.startedWriting or self.finished or self._disconnected:
            if not self.finished and not self._disconnected:
                self.loseConnection()
            return reason
        self._answered = True
        write_error(self, 500, "internal server error (logged on the server)")
        return reason

    def _count_while_answered(self) -> None:
        """Count this request as active on its site until it is finished or lost."""
        site = self.channel.site
        if hasattr(site, "active_requests"):
            site.active_requests += 1
            self._counted_on = site

    def _uncount(self) -> None:
        site, self._counted_on = self._counted_on, None
        if site is not None:
            site.active_requests -= 1

    def _cleanup(self) -> None:
        """The answer is complete (what notifyFinish fires on): no longer active."""
        try:
            super()._cleanup()
        finally:
            self._uncount()

    def write(self, data: bytes) -> None:
        """Send part of the answer, with the idle timeout on and reset by each write.

        twisted.web switches the idle timeout off while a request is answered
        (handler time is bounded by the handler timeout instead); once the
        answer is being written it is back on, so a client that stops reading
        is cut off after the idle timeout.
        """
        self._idle_timeout_on()
        super().write(data)

    def _idle_timeout_on(self) -> None:
        channel = self.channel
        if channel is not None:
            if channel.timeOut is None:
                idle = getattr(channel.site, "timeOut", None)
                if idle:
                    channel.setTimeout(idle)
            else:
                channel.resetTimeout()

    def write_with_head(self, data: bytes, head_lines: bytes = b"") -> None:
        """The first write of an answer with a Content-Length: head and ``data`` in one transport write.

        The head is the one twisted.web's ``Request.write`` makes (``Last-Modified``
        and ``ETag`` from ``setLastModified``/``setETag``), followed by
        ``head_lines`` (header lines already rendered, which must then include
        Content-Type and Content-Length); one write instead of two lets the TLS
        layer send it without scheduling a flush of a small write. Anything
        unusual (HEAD, no Content-Length, an encoder, cookies...) takes the
        ordinary ``write``; ``head_lines`` then go into the response headers.
        """
        headers = self.responseHeaders
        if head_lines and (self.startedWriting or self.code != 200):
            raise RuntimeError("rendered header lines need a 200 answer not yet started")
        if (
            self.startedWriting
            or self.finished
            or self._disconnected
            or self.method == b"HEAD"
            or self.code in NO_BODY_CODES
            or self._encoder is not None
            or self._inFakeHead
            or self.cookies
            or not (head_lines or headers.hasHeader(b"content-length") and headers.hasHeader(b"content-type"))
            or type(self.channel).writeHeaders is not HTTPChannel.writeHeaders
        ):
            for line in head_lines.splitlines():
                name, _, value = line.partition(b": ")
                headers.addRawHeader(name, value)
            self.write(data)
            return
        self._idle_timeout_on()
        if self.lastModified is not None and not headers.hasHeader(b"last-modified"):
            headers.setRawHeaders(b"Last-Modified", [http_date(self.lastModified)])
        if self.etag is not None:
            headers.setRawHeaders(b"ETag", [self.etag])
        self.startedWriting = 1
        head = [self.clientproto, b" %d " % self.code, self.code_message, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head += (head_lines, b"\r\n", data)
        self.sentLength += len(data)
        self.channel.write(b"".join(head))

    def connectionLost(self, reason: Any) -> None:
        """The client went away: an upload in progress is abandoned, a download's file closed."""
        if self.upload_receiver is not None:
            self.upload_receiver.connection_lost()
        producer = self.producer
        super().connectionLost(reason)
        self._uncount()
        if producer is not None:
            producer.stopProducing()

    # -- refusals ---------------------------------------------------------------

    def refuse(self, status: int, reason: str, allow: tuple[bytes, ...] = ()) -> None:
        """Answer with an error, whether or not the body has arrived.

        After the body, the answer goes out now. Before it, reading stops and
        the answer goes out on the next turn of the reactor (never from inside
        the channel's body parser), then the connection is closed: the rest of
        the body is never read. If the body completes meanwhile (or there is
        none), ``process`` answers instead and the connection may stay open.
        """
        if self._answered or self._disconnected or self._pending_refusal is not None:
            return
        if self._body_received:
            self._answered = True
            write_error(self, status, reason, allow)
            return
        self._pending_refusal = (status, reason, allow)
        self.requestHeaders.removeHeader(b"expect")
        if self._length != 0:
            self.channel.transport.pauseProducing()
            self.channel.callLater(0, self._refuse_before_body)

    def _refuse_before_body(self) -> None:
        if self._answered or self._disconnected or self._body_received:
            return
        assert self._pending_refusal is not None
        status, reason, allow = self._pending_refusal
        self._answered = True
        channel = self.channel
        channel.persistent = False
        # the unread body must never be parsed as a request: drop what still comes
        channel.dataReceived = _discard
        self._set_default_headers()
        self.setHeader(b"connection", b"close")
        write_error(self, status, reason, allow)

    # -- helpers ------------------------------------------------------------------

    def _prime_request_line(self) -> None:
        """Make method, URI and version available before the body (twisted sets them after)."""
        channel = self.channel
        self.method = getattr(channel, "_command", self.method)
        self.uri = getattr(channel, "_path", self.uri)
        self.clientproto = getattr(channel, "_version", self.clientproto)
        self.path = self.uri.split(b"?", 1)[0]

    def _take_over_expect(self) -> bool:
        """Remove ``Expect: 100-continue`` so the channel does not answer it; True if present."""
        values = self.requestHeaders.getRawHeaders(b"expect") or []
        if not values:
            return False
        self.requestHeaders.removeHeader(b"expect")
        return values[0].lower() == b"100-continue" and self.clientproto == b"HTTP/1.1"

    def send_continue(self) -> None:
        """Tell the client to send the body (``100 Continue``)."""
        if not self._disconnected and not self._answered:
            self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def pause_body(self) -> None:
        """Stop reading the body from the network, and the idle timer with it.

        While the server itself holds the body back (waiting for its handler,
        or for the disk), the client is not idle: ``--handler-timeout`` bounds
        the wait instead.
        """
        if self._idle_timeout_held is None:
            self._idle_timeout_held = self.channel.setTimeout(None) or 0
        self.channel.transport.pauseProducing()

    def resume_body(self) -> None:
        """Read the body again (the body-rate window restarts: the pause was ours)."""
        if not self._disconnected and not self._answered:
            restart = getattr(self.channel, "restart_rate_window", None)
            if restart is not None:
                restart()
            if self._idle_timeout_held is not None:
                held, self._idle_timeout_held = self._idle_timeout_held, None
                if held:
                    self.channel.setTimeout(held)
            self.channel.transport.resumeProducing()

    def _set_default_headers(self) -> None:
        self.site = self.channel.site
        self.setHeader(b"server", b"gsitransfer")
        self.setHeader(b"date", http_date(int(time.time())))
