"""A twisted.web Request that is routed, identified and judged from its head, then streams its body.

twisted.web's own Request spools every body to memory or a temporary file
and only then renders. :class:`TransferRequest` instead acts in ``gotLength``
(called once all headers are in, before any body byte is read):

* the identity is established (``site.identity.identify``); a refusal is 403;
* the request is routed once, against the route table
  (:func:`~.table.select`): a bad path, an unknown prefix or a method the
  path does not take is answered at once;
* the verb the table chose starts the exchange and returns the receiver of
  the body: bounded in memory for most verbs (413 from Content-Length, or as
  soon as the body passes the limit), streamed to disk for a file upload
  (whose verb decides, with the connection paused, whether the body may
  come; ``Expect: 100-continue`` is answered only once it is accepted).

Once the body is complete, ``process`` renders through twisted.web: the Site's
one resource, the route table, finishes the exchange (the receiver answers).
A refusal sent while a body is still arriving closes the connection after
the response (the rest of the body is never read).

To the verbs, the request is a :class:`~.exchange.BodyControl` (pause,
resume, continue, refuse) and the twisted.web Request their answer is written
to; nothing else of it.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any, cast

from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import NO_BODY_CODES, HTTPChannel

from ..errors import TransferError
from ..identity import IdToken
from .exchange import BodyReceiver, Exchange, Serving
from .heads import answer_with_head, http_date
from .status import InternalError, refuse
from .table import select

if TYPE_CHECKING:
    from .channel import TransferChannel

class TransferRequest(server.Request):
    """A Request that routes and refuses from its headers and streams uploads."""

    _parsePOSTFormSubmission = False
    channel: "TransferChannel"

    id_token: IdToken | None = None
    exchange: Exchange | None = None
    #: takes the body; answers once it is complete
    receiver: BodyReceiver | None = None
    _length: int | None = 0
    _body_received = False
    _pending_refusal: TransferError | None = None
    _answered = False
    #: the site whose ``active_requests`` counts this request until it ends
    _counted_on: Any = None
    #: the channel's idle timeout while pause_body holds it off (0: there was none)
    _idle_timeout_held: float | None = None
    #: for the request's record (``web/events.py``), set only while the site records events: when its head
    #: was in (monotonic), the refusal's reason, the stored file (name, size, MD5), the body bytes stored
    audit_started: float | None = None
    audit_reason: str | None = None
    audit_file: tuple[str, int | None, str | None] | None = None
    audit_received: int | None = None

    # -- called by the channel ------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        """All headers are in: identify, route, and let the verb choose where the body goes."""
        self._length = length
        # twisted.web reads ``content`` once the body is in; the body itself goes to the receiver
        self.content = io.BytesIO()
        self._prime_request_line()
        site = self.channel.site
        if site.events.sinks:
            self.audit_started = time.monotonic()
        handler_answer = self.channel.take_handler_answer()
        try:
            self.id_token = site.identity.identify(self)
            route, verb = select(self.method, self.uri, site.serving.engine)
        except TransferError as error:
            self.refuse(error)
            return
        expects_continue = self._take_over_expect() if verb.streams else False
        serving: Serving = site.serving
        self.exchange = Exchange(self, route, self.id_token, serving, length, expects_continue, handler_answer)
        self.receiver = verb.start(self.exchange, self)

    def handleContentChunk(self, data: bytes) -> None:
        """A piece of body: to the verb's receiver."""
        if self._answered or self._pending_refusal is not None or self.receiver is None:
            return
        self.receiver.data_received(data)

    def process(self) -> None:
        """The whole body is in: answer a pending refusal, or render through the route table."""
        self._body_received = True
        if self._answered:
            return
        self._count_while_answered()
        if self._pending_refusal is not None:
            self._set_default_headers()
            self._answered = True
            refuse(self, self._pending_refusal)
            return
        super().process()

    def finish_exchange(self) -> None:
        """Called by the route table's render: the body's receiver answers."""
        if self.receiver is not None:
            self.receiver.body_complete()

    def processingFailed(self, reason: Failure) -> Any:
        """A bug while rendering: logged with its traceback; the client gets one plain line."""
        self._log.failure("unexpected error while answering {uri}", failure=reason, uri=self.uri)
        if self.startedWriting or self.finished or self._disconnected:
            if not self.finished and not self._disconnected:
                self.loseConnection()
            return reason
        self._answered = True
        refuse(self, InternalError())
        return reason

    def _count_while_answered(self) -> None:
        """Count this request as active on its site until it is finished or lost."""
        site = self.channel.site
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
                idle = channel.site.timeOut
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
            headers.setRawHeaders(b"Last-Modified", [http_date(int(self.lastModified))])
        if self.etag is not None:
            headers.setRawHeaders(b"ETag", [self.etag])
        self.startedWriting = 1
        status_line = b"%s %d %s\r\n" % (self.clientproto, self.code, self.code_message)
        pairs = ((name, value) for name, values in headers.getAllRawHeaders() for value in values)
        self.sentLength += len(data)
        self.channel.write(answer_with_head(status_line, pairs, head_lines, data))

    def connectionLost(self, reason: Failure) -> None:
        """The client went away: an upload in progress is abandoned, a download's file closed."""
        if self.receiver is not None:
            self.receiver.connection_lost()
        producer = self.producer
        super().connectionLost(reason)
        self._uncount()
        if producer is not None:
            producer.stopProducing()

    # -- BodyControl: what a verb may ask of the request ----------------------------

    def refuse(self, error: TransferError) -> None:
        """Answer with ``error``'s status and reason, whether or not the body has arrived.

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
            refuse(self, error)
            return
        self._pending_refusal = error
        self.requestHeaders.removeHeader(b"expect")
        if self._length != 0:
            self.channel.pause_reading()
            self.channel.callLater(0, self._refuse_before_body)

    def _refuse_before_body(self) -> None:
        if self._answered or self._disconnected or self._body_received:
            return
        assert self._pending_refusal is not None
        self._answered = True
        channel = self.channel
        channel.persistent = False
        # the unread body must never be parsed as a request
        channel.discard_input()
        self._set_default_headers()
        self.setHeader(b"connection", b"close")
        refuse(self, self._pending_refusal)

    def send_continue(self, fields: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Tell the client to send the body (``100 Continue``, with header ``fields``: values the server made)."""
        if not self._disconnected and not self._answered:
            head = b"".join(b"%s: %s\r\n" % field for field in fields)
            self.channel.write_raw(b"HTTP/1.1 100 Continue\r\n" + head + b"\r\n")

    def pause_body(self) -> None:
        """Stop reading the body from the network, and the idle timer with it.

        While the server itself holds the body back (waiting for its handler,
        or for the disk), the client is not idle: ``--handler-timeout`` bounds
        the wait instead.
        """
        if self._idle_timeout_held is None:
            self._idle_timeout_held = self.channel.setTimeout(None) or 0
        self.channel.pause_reading()

    def resume_body(self) -> None:
        """Read the body again (the body-rate window restarts: the pause was ours)."""
        if not self._disconnected and not self._answered:
            self.channel.restart_rate_window()
            if self._idle_timeout_held is not None:
                held, self._idle_timeout_held = self._idle_timeout_held, None
                if held:
                    self.channel.setTimeout(held)
            self.channel.resume_reading()

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

    def _set_default_headers(self) -> None:
        self.site = cast(server.Site, self.channel.site)
        self.setHeader(b"server", b"gsitransfer")
        self.setHeader(b"date", http_date(int(time.time())))


__all__ = ["TransferRequest"]
