"""The HTTP channel: twisted.web's HTTPChannel with bounds on slow clients.

twisted.web's idle timeout is reset by every byte, so a client sending one
byte per (timeout - 1) seconds keeps a connection — and, mid-upload, a
temporary file and a file in the receiving state — for hours.
:class:`TransferChannel` adds two bounds:

* the time from the first byte of a request head to its end (``head_timeout``);
* while a body arrives, at least ``min_body_rate`` bytes per second, measured
  over windows of ``rate_window`` seconds (time the server itself paused the
  body, waiting for a handler, does not count).

Past either, the connection is aborted. The idle timeout still covers silence.
The head deadline is set only when a read leaves a head incomplete (most heads
arrive in one read: no timer to make and cancel for them).

Between keep-alive requests the TLS layer's I/O buffers are given back
(``release_idle_buffers``): at once after a connection's first request (or
one after a quiet spell), and on a connection whose requests follow each other
within ``release_after`` seconds, only once it has been quiet that long (one
timer per connection, which waits again when it fires too early), rather than a release and
a regrowth of the buffers for every request.

A plain GET of a small file whose head arrives in one read, between
requests, is answered by the keep-alive fast path
(:mod:`gsitransfer.web._keepalive`) without making a twisted.web Request,
unless the site's ``FastPaths.keepalive_get`` is off; anything else takes
twisted.web's path. When the fast path asked the handler but could not
answer, the handler's answer is handed over (:meth:`TransferChannel.hand_over`)
to the request twisted.web makes of the same head, and taken by it
(:meth:`TransferChannel.take_handler_answer`) when its head is complete.

On a plain-HTTP listener, a connection whose first byte starts a TLS
handshake record (a client speaking TLS to the plain port) is answered at
once, ``400`` with one line saying the port speaks plain HTTP, and closed, as
nginx does: the client fails at once instead of waiting for a timeout.

A request refused before its body arrived closes the connection, and the
bytes still arriving are dropped (:meth:`TransferChannel.discard_input`):
never parsed as a request.

Under TLS, the handshake is not seen by the channel at all (its bytes never
reach ``dataReceived``), so a third bound covers it: ``handshake_timeout``
seconds from the TCP connection to a finished handshake
(``IHandshakeListener.handshakeCompleted``, which TLSMemoryBIOProtocol calls on
the protocol it wraps).
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from ..tls.peer import release_idle_buffers
from ._keepalive import answer_plain_get
from .exchange import HandlerAnswer, ServingSite
from .heads import SERVER_HEADER, http_date
from .status import BadRequest, BodyTooLarge, HeadTooLarge, RequestError, head_refusal

_log = Logger()

#: seconds a client has to send a whole request head (request line + headers)
DEFAULT_HEAD_TIMEOUT = 30.0
#: bytes per second a request body must at least arrive at
DEFAULT_MIN_BODY_RATE = 1024.0
#: seconds a TLS client has, from the TCP connection, to finish its handshake
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
#: most digits of a Content-Length read as a number (Python refuses int() past 4300)
MAX_LENGTH_DIGITS = 100
#: bytes of one read handed to twisted.web's line parser at a time while a head is parsed (see ``_read_head``)
HEAD_SLICE = 16 * 1024
#: seconds a keep-alive connection waits for its next request before its TLS buffers are released
DEFAULT_RELEASE_AFTER = 0.25
#: the first byte of a TLS record carrying a handshake (a ClientHello)
TLS_HANDSHAKE_RECORD = b"\x16"
#: the answer to a TLS ClientHello sent to a plain-HTTP listener (as nginx answers one)
NOT_TLS_HERE = "this port speaks plain HTTP, not TLS: use http:// (or the server's TLS port for https://)"
#: seconds from the connection (after the TLS handshake) to the first byte of its first request (nginx's
#: ``client_header_timeout``)
DEFAULT_FIRST_REQUEST_TIMEOUT = 60.0
#: seconds a connection may wait, between requests, for the next one (nginx's ``keepalive_timeout``)
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
#: seconds after which a connection is closed once its current request is answered (0: no limit)
DEFAULT_MAX_CONNECTION_AGE = 3600.0


class _ConnectionTransport(Protocol):
    """What the channel uses of its transport (TCP, the TLS layer over it, or a test's StringTransport)."""

    def getPeer(self) -> IAddress: ...
    def write(self, data: bytes) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def abortConnection(self) -> None: ...


@implementer(IHandshakeListener)
class TransferChannel(HTTPChannel):
    """HTTPChannel that aborts connections whose request head arrives too slowly."""

    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    min_body_rate: float = DEFAULT_MIN_BODY_RATE
    rate_window: float = 60.0
    #: seconds from the connection to a finished TLS handshake (None: not TLS, no deadline)
    handshake_timeout: float | None = None
    #: seconds without a request after which an idle keep-alive connection's TLS buffers are released
    release_after: float = DEFAULT_RELEASE_AFTER
    site: ServingSite
    _head_timer: DelayedCall | None = None
    _release_timer: DelayedCall | None = None
    #: the buffers were kept after a request (a busy connection): release them when it goes quiet
    _buffers_held = False
    #: when the last request whose buffers were kept ended (the release timer's clock)
    _last_request_end = 0.0
    _handshake_timer: DelayedCall | None = None
    _awaiting_head = True
    _window_start = 0.0
    _window_bytes = 0
    #: answer plain GETs of small files without twisted.web's request machinery (``_keepalive``)
    plain_gets = True
    _peer_address: Any = None
    #: the handler's answer for the request being parsed, when the fast path asked it
    _handed_over: HandlerAnswer | None = None
    #: the rest of the input is an unread body of a refused request: dropped
    _discarding = False
    #: the period of twisted.web's one connection timer (TimeoutMixin's), in seconds (it says int)
    timeOut: float | None  # type: ignore[assignment]
    #: seconds from the connection (after the handshake) to the first byte of the first request
    first_request_timeout: float | None = None
    #: seconds between requests (from an answer's end to the next request's first byte)
    keepalive_timeout: float | None = None
    #: seconds of silence inside a request or its answer (twisted.web's idle timeout, the site's)
    idle_timeout: float | None = None
    #: seconds after which the connection is closed once no request is in progress (None: no limit)
    max_age: float | None = None
    _age_timer: DelayedCall | None = None
    #: the connection is older than ``max_age``: closed after the current answer
    _too_old = False
    #: bytes and lines of the request head being parsed (twisted.web's bounds, answered 431 here)
    _head_bytes = 0
    _head_lines = 0
    #: aborts a connection refused at its head whose peer never finishes closing
    _closing_timer: DelayedCall | None = None
    #: the connection is plain HTTP (no TLS under the channel): a ClientHello gets a 400 at once
    plain_listener = False
    #: no byte of the connection has arrived yet
    _first_read = True

    def connectionMade(self) -> None:
        # the waits for a request, never longer than the idle timeout (set on the channel by the site)
        idle = self.idle_timeout = self.timeOut
        if self.first_request_timeout:
            self.first_request_timeout = _at_most(self.first_request_timeout, idle)
            if not self.handshake_timeout:
                # plain HTTP: the wait for the first request starts now (under TLS: after the handshake)
                self.timeOut = self.first_request_timeout
        if self.keepalive_timeout:
            self.keepalive_timeout = _at_most(self.keepalive_timeout, idle)
        super().connectionMade()
        if self.handshake_timeout:
            self._handshake_timer = self.callLater(self.handshake_timeout, self._handshake_too_slow)
        if self.max_age:
            self._age_timer = self.callLater(self.max_age, self._old_enough)

    def peer_address(self) -> Any:
        """The client's address (the transport's ``getPeer()``, asked once per connection)."""
        peer = self._peer_address
        if peer is None:
            peer = self._peer_address = self._tcp().getPeer()
        return peer

    def handshakeCompleted(self) -> None:
        """``IHandshakeListener``: the TLS layer finished its handshake; the wait for a first request begins."""
        self.handshake_completed()
        if self.first_request_timeout and self._between_requests() and self.timeOut is not None:
            self.setTimeout(self.first_request_timeout)

    def handshake_completed(self) -> None:
        """The TLS handshake finished: its deadline no longer applies."""
        if self._handshake_timer is not None:
            if self._handshake_timer.active():
                self._handshake_timer.cancel()
            self._handshake_timer = None

    def _between_requests(self) -> bool:
        """No request is being read or answered (the connection waits for the next one)."""
        return self._awaiting_head and not self._buffer and not self.requests

    def _handshake_too_slow(self) -> None:
        self._handshake_timer = None
        peer = self.transport.getPeer() if self.transport is not None else None
        _log.info(
            "TLS handshake not complete after {t}s, closing {peer}", t=self.handshake_timeout, peer=peer
        )
        self.abort()

    def _tcp(self) -> "_ConnectionTransport":
        """The connection's transport (TCP, or the TLS layer over it)."""
        transport = self.transport
        assert transport is not None
        return cast(_ConnectionTransport, transport)

    def abort(self) -> None:
        """Close the connection at once, dropping what is unsent."""
        if self.transport is not None:
            self._tcp().abortConnection()

    def pause_reading(self) -> None:
        """Stop reading from the connection."""
        self._tcp().pauseProducing()

    def resume_reading(self) -> None:
        """Read from the connection again."""
        self._tcp().resumeProducing()

    def write_raw(self, data: bytes) -> None:
        """Write ``data`` to the connection, outside any request's answer (``100 Continue``)."""
        self._tcp().write(data)

    def hand_over(self, answer: HandlerAnswer) -> None:
        """The fast path asked the handler and declined: the next request made takes ``answer``."""
        self._handed_over = answer

    def take_handler_answer(self) -> HandlerAnswer | None:
        """The handler's answer handed over for the request whose head is complete, if any."""
        answer, self._handed_over = self._handed_over, None
        return answer

    def discard_input(self) -> None:
        """Drop every byte from now on (the unread body of a refused request)."""
        self._discarding = True

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._first_read:
            self._first_read = False
            if self.plain_listener and data[:1] == TLS_HANDSHAKE_RECORD:
                # a TLS client on the plain port: answered now, not after its handshake times out
                self.refuse_head(BadRequest(NOT_TLS_HERE))
                return
        if self._awaiting_head:
            if (
                self.plain_gets
                and data[:4] == b"GET "
                and not self._buffer
                and not self.requests
                and self.persistent
                and not self._handlingRequest
            ):
                # answered at once: the wait for the next request starts again
                self.timeOut = self.keepalive_timeout or self.idle_timeout
                self.resetTimeout()
                try:
                    if answer_plain_get(self, data):
                        if self.persistent:
                            self._release_buffers_when_idle()
                        return
                    # a request to read and answer: silence inside it is bounded by the idle timeout
                    self.timeOut = self.idle_timeout
                    self._read_head(data)
                finally:
                    self._handed_over = None
            else:
                if not self._buffer and not self.requests and self.timeOut is not None:
                    self.timeOut = self.idle_timeout  # (super() resets the timer with it)
                self._read_head(data)
            # a head still incomplete after these bytes gets its deadline now (most heads arrive whole)
            if self._awaiting_head and self._head_timer is None and self.head_timeout and self._head_begun():
                self._head_timer = self.callLater(self.head_timeout, self._head_too_slow)
            return
        if not self._handlingRequest and self.min_body_rate and self._body_too_slow(len(data)):
            return
        super().dataReceived(data)

    def _read_head(self, data: bytes) -> None:
        """``data`` to twisted.web's parser, in slices of ``HEAD_SLICE`` bytes while a head is parsed.

        ``LineReceiver`` splits its whole buffer once per line, so one large
        read of many short lines costs lines x read size (quadratic); fed in
        slices, a line costs at most a slice. Once the head is complete the
        rest goes in one piece (a body is not split into lines).
        """
        if len(data) <= HEAD_SLICE:
            super().dataReceived(data)
            return
        start = 0
        while start < len(data):
            if self._discarding or self.transport is None or getattr(self.transport, "disconnecting", False):
                return
            if not self._awaiting_head:
                super().dataReceived(data[start:])
                return
            super().dataReceived(data[start : start + HEAD_SLICE])
            start += HEAD_SLICE

    def lineReceived(self, line: bytes) -> None:
        """A line of a request head: counted against twisted.web's bounds, refused with 431 past them.

        twisted.web's own checks answer a bare ``400`` without a reason and
        count folded lines only by their bytes; here every line counts, and
        the answer is ``431`` with one line saying which bound was passed.
        """
        self._head_bytes += len(line)
        self._head_lines += 1
        if self._head_bytes > self.totalHeadersSize:
            self.refuse_head(HeadTooLarge(f"request head is larger than {self.totalHeadersSize} bytes"))
            return
        if self._head_lines > self.maxHeaders + 1:
            self.refuse_head(HeadTooLarge(f"request head has more than {self.maxHeaders} header lines"))
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line of a request head longer than ``MAX_LENGTH``: 431, then the connection closes."""
        self.refuse_head(HeadTooLarge(f"request header line is longer than {self.MAX_LENGTH} bytes"))

    def headerReceived(self, line: bytes) -> bool:
        """twisted.web's, except a ``Content-Length`` of more than ``MAX_LENGTH_DIGITS`` digits: 413
        (twisted.web's ``int()`` of thousands of digits raises, an unhandled error that dropped the
        connection). Shorter absurd lengths are the verbs' to judge, as before."""
        if len(line) > MAX_LENGTH_DIGITS + 15:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                value = value.strip(b" \t")
                if value.isdigit() and len(value) > MAX_LENGTH_DIGITS:
                    self.refuse_head(BodyTooLarge(f"Content-Length of {len(value)} digits"))
                    return False
        accepted: bool = super().headerReceived(line)
        return accepted

    def refuse_head(self, error: RequestError) -> None:
        """Answer a head the channel will not parse with ``error``, drop the rest of the input, close.

        Closed by ``HTTPChannel.loseConnection``, which first unregisters the
        channel as its transport's producer: ``LineReceiver``'s own
        ``transport.loseConnection()`` left Twisted's TLS transports (both
        ``TLSMemoryBIOProtocol`` and the bulk one) waiting for that producer
        before sending their ``close_notify``, so the connection stayed open
        until the idle timeout. A peer that never finishes closing is aborted
        after ``abortTimeout`` seconds.
        """
        self.discard_input()
        self._cancel_head_timer()
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        self.persistent = False
        self.write_raw(head_refusal(error, http_date(int(time.time())), SERVER_HEADER))
        self.loseConnection()
        if self.abortTimeout is not None and self._closing_timer is None:
            self._closing_timer = self.callLater(self.abortTimeout, self.abort)

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        """twisted.web's answer, except that a connection past its maximum age is not kept."""
        persistent: bool = super().checkPersistence(request, version)
        if persistent and self._too_old:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return persistent

    def _old_enough(self) -> None:
        """``max_age`` has passed: close now if no request is in progress, else after its answer."""
        self._age_timer = None
        self._too_old = True
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        if self._between_requests():
            _log.info("connection older than {t}s, closing {peer}", t=self.max_age, peer=self.peer_address())
            self.loseConnection()
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])

    def _head_begun(self) -> bool:
        """Part of a request head is here: a partial line, or a request line read (its Request made)."""
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return False
        return bool(self._buffer or self.requests)

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
        self._head_bytes = self._head_lines = 0
        self._cancel_head_timer()
        self.restart_rate_window()
        super().allHeadersReceived()

    def restart_rate_window(self) -> None:
        """Start measuring the body rate afresh (after the server paused the body)."""
        self._window_start = time.monotonic()
        self._window_bytes = 0

    def _body_too_slow(self, received: int) -> bool:
        self._window_bytes += received
        elapsed = time.monotonic() - self._window_start
        if elapsed < self.rate_window:
            return False
        if self._window_bytes >= self.min_body_rate * elapsed:
            self.restart_rate_window()
            return False
        _log.info(
            "request body slower than {rate} B/s ({n} bytes in {t:.0f}s), closing {peer}",
            rate=self.min_body_rate,
            n=self._window_bytes,
            t=elapsed,
            peer=self.transport.getPeer() if self.transport is not None else None,
        )
        self.abort()
        return True

    def requestDone(self, request: http.Request) -> None:
        self._awaiting_head = True
        super().requestDone(request)
        if self.persistent and not self.requests and self.transport is not None:
            if not self._buffer and self.keepalive_timeout and self.timeOut is not None:
                # no next request begun: the wait between requests
                self.setTimeout(self.keepalive_timeout)
            self._release_buffers_when_idle()

    def _release_buffers_when_idle(self) -> None:
        """Give back the TLS layer's I/O buffers now, or, on a busy connection, after a quiet spell.

        A request ending less than ``release_after`` s after the previous one
        keeps the buffers for the next (a release and a regrowth for every
        keep-alive request would cost more than the request's own Python); the
        request's end is noted and the connection's one timer, when it fires,
        waits again until ``release_after`` seconds after the last request
        (no timer is touched per request).
        Otherwise (the first request, or one after a quiet spell) they are
        released at once: buffers held for a while by many connections leave
        the heap fragmented, and idle connections' memory is what counts.
        """
        timer = self._release_timer
        if timer is not None:
            self._last_request_end = timer.seconds()
            self._buffers_held = True
            return
        release_idle_buffers(self.transport)
        self._buffers_held = False
        self._release_timer = self.callLater(self.release_after, self._release_if_idle)

    def _release_if_idle(self) -> None:
        timer, self._release_timer = self._release_timer, None
        if not self._buffers_held or timer is None:
            return
        now = timer.seconds()
        if now - self._last_request_end < self.release_after:
            self._release_timer = self.callLater(
                self._last_request_end + self.release_after - now, self._release_if_idle
            )
            return
        if self._awaiting_head and not self.requests and not self._buffer and self.transport is not None:
            release_idle_buffers(self.transport)
            self._buffers_held = False

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_head_timer()
        for timer in (self._age_timer, self._closing_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._age_timer = self._closing_timer = None
        if self._release_timer is not None:
            if self._release_timer.active():
                self._release_timer.cancel()
            self._release_timer = None
        self.handshake_completed()
        super().connectionLost(reason)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        peer = self.transport.getPeer() if self.transport is not None else None
        _log.info("request head not complete after {t}s, closing {peer}", t=self.head_timeout, peer=peer)
        self.abort()


def _at_most(seconds: float, idle: float | None) -> float:
    """``seconds``, never longer than the idle timeout ``idle`` (when there is one)."""
    return min(seconds, idle) if idle else seconds


def channel_protocol(
    head_timeout: float,
    min_body_rate: float,
    rate_window: float,
    handshake_timeout: float | None = None,
    plain_gets: bool = True,
    first_request_timeout: float | None = DEFAULT_FIRST_REQUEST_TIMEOUT,
    keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT,
    max_age: float | None = DEFAULT_MAX_CONNECTION_AGE,
    plain_listener: bool = False,
) -> TransferChannel:
    """A protocol for HTTPFactory.protocol: a TransferChannel.

    Served directly, without the wrapper twisted.web puts around its channels
    to switch to HTTP/2 after ALPN (this server offers no ALPN): one object
    and one call fewer per connection and per read.
    ``handshake_timeout`` is for channels under TLS only (None: no deadline).
    ``first_request_timeout`` and ``keepalive_timeout`` (each at most the
    site's idle timeout) bound the waits for the first and for each next
    request; ``max_age`` (None or 0: none) closes the connection between
    requests once it is that old.
    """
    channel = TransferChannel()
    channel.head_timeout = head_timeout
    channel.min_body_rate = min_body_rate
    channel.rate_window = rate_window
    channel.handshake_timeout = handshake_timeout
    channel.plain_gets = plain_gets
    channel.first_request_timeout = first_request_timeout
    channel.keepalive_timeout = keepalive_timeout
    channel.max_age = max_age or None
    channel.plain_listener = plain_listener
    return channel
