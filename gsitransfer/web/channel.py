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

Under TLS, the handshake is not seen by the channel at all (its bytes never
reach ``dataReceived``), so a third bound covers it: ``handshake_timeout``
seconds from the TCP connection to a finished handshake
(``IHandshakeListener.handshakeCompleted``, which TLSMemoryBIOProtocol calls on
the protocol it wraps).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from zope.interface import implementer

from ..tls.peer import release_idle_buffers

_log = Logger()

#: seconds a client has to send a whole request head (request line + headers)
DEFAULT_HEAD_TIMEOUT = 30.0
#: bytes per second a request body must at least arrive at
DEFAULT_MIN_BODY_RATE = 1024.0
#: seconds a TLS client has, from the TCP connection, to finish its handshake
DEFAULT_HANDSHAKE_TIMEOUT = 30.0


class TransferChannel(HTTPChannel):
    """HTTPChannel that aborts connections whose request head arrives too slowly."""

    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    min_body_rate: float = DEFAULT_MIN_BODY_RATE
    rate_window: float = 60.0
    #: seconds from the connection to a finished TLS handshake (None: not TLS, no deadline)
    handshake_timeout: float | None = None
    _head_timer: Any = None
    _handshake_timer: Any = None
    _awaiting_head = True
    _window_start = 0.0
    _window_bytes = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.handshake_timeout:
            self._handshake_timer = self.callLater(self.handshake_timeout, self._handshake_too_slow)

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
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_head:
            if self._head_timer is None and self.head_timeout:
                self._head_timer = self.callLater(self.head_timeout, self._head_too_slow)
        elif not self._handlingRequest and self.min_body_rate and self._body_too_slow(len(data)):
            return
        super().dataReceived(data)

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
        if self.transport is not None:
            self.transport.abortConnection()
        return True

    def requestDone(self, request: Any) -> None:
        self._awaiting_head = True
        super().requestDone(request)
        if self.persistent and not self.requests and self.transport is not None:
            # idle until the next request: give back the TLS layer's I/O buffers
            release_idle_buffers(self.transport)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_head_timer()
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
        if self.transport is not None:
            self.transport.abortConnection()


@implementer(IHandshakeListener)
class _ChannelProtocol(_GenericHTTPChannelProtocol):  # type: ignore[misc]
    """twisted.web's channel wrapper, passing the end of a TLS handshake to the channel."""

    def handshakeCompleted(self) -> None:
        completed = getattr(self._channel, "handshake_completed", None)
        if completed is not None:
            completed()


def channel_protocol(
    head_timeout: float,
    min_body_rate: float,
    rate_window: float,
    handshake_timeout: float | None = None,
) -> Any:
    """A protocol for HTTPFactory.protocol: a TransferChannel behind twisted.web's wrapper.

    ``handshake_timeout`` is for channels under TLS only (None: no deadline).
    """
    channel = TransferChannel()
    channel.head_timeout = head_timeout
    channel.min_body_rate = min_body_rate
    channel.rate_window = rate_window
    channel.handshake_timeout = handshake_timeout
    return _ChannelProtocol(channel)
