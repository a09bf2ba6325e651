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

_log = Logger()

#: seconds a client has to send a whole request head (request line + headers)
DEFAULT_HEAD_TIMEOUT = 30.0
#: bytes per second a request body must at least arrive at
DEFAULT_MIN_BODY_RATE = 1024.0
#: seconds a TLS client has, from the TCP connection, to finish its handshake
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
#: seconds a keep-alive connection waits for its next request before its TLS buffers are released
DEFAULT_RELEASE_AFTER = 0.25


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

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.handshake_timeout:
            self._handshake_timer = self.callLater(self.handshake_timeout, self._handshake_too_slow)

    def peer_address(self) -> Any:
        """The client's address (the transport's ``getPeer()``, asked once per connection)."""
        peer = self._peer_address
        if peer is None:
            peer = self._peer_address = self._tcp().getPeer()
        return peer

    def handshakeCompleted(self) -> None:
        """``IHandshakeListener``: the TLS layer finished its handshake."""
        self.handshake_completed()

    def handshake_completed(self) -> None:
        """The TLS handshake finished: its deadline no longer applies."""
        if self._handshake_timer is not None:
            if self._handshake_timer.active():
                self._handshake_timer.cancel()
            self._handshake_timer = None

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
        if self._awaiting_head:
            if (
                self.plain_gets
                and data[:4] == b"GET "
                and not self._buffer
                and not self.requests
                and self.persistent
                and not self._handlingRequest
            ):
                self.resetTimeout()
                try:
                    if answer_plain_get(self, data):
                        if self.persistent:
                            self._release_buffers_when_idle()
                        return
                    super().dataReceived(data)
                finally:
                    self._handed_over = None
            else:
                super().dataReceived(data)
            # a head still incomplete after these bytes gets its deadline now (most heads arrive whole)
            if self._awaiting_head and self._head_timer is None and self.head_timeout and self._head_begun():
                self._head_timer = self.callLater(self.head_timeout, self._head_too_slow)
            return
        if not self._handlingRequest and self.min_body_rate and self._body_too_slow(len(data)):
            return
        super().dataReceived(data)

    def _head_begun(self) -> bool:
        """Part of a request head is here: a partial line, or a request line read (its Request made)."""
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return False
        return bool(self._buffer or self.requests)

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
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


def channel_protocol(
    head_timeout: float,
    min_body_rate: float,
    rate_window: float,
    handshake_timeout: float | None = None,
    plain_gets: bool = True,
) -> TransferChannel:
    """A protocol for HTTPFactory.protocol: a TransferChannel.

    Served directly, without the wrapper twisted.web puts around its channels
    to switch to HTTP/2 after ALPN (this server offers no ALPN): one object
    and one call fewer per connection and per read.
    ``handshake_timeout`` is for channels under TLS only (None: no deadline).
    """
    channel = TransferChannel()
    channel.head_timeout = head_timeout
    channel.min_body_rate = min_body_rate
    channel.rate_window = rate_window
    channel.handshake_timeout = handshake_timeout
    channel.plain_gets = plain_gets
    return channel
