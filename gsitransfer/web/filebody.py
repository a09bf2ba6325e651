"""Sending part of an open file as an answer's body: in one write, or with a push producer.

Rules:

* a body of at most ``SMALL_BODY`` bytes is read with one ``pread`` and sent
  with one ``request.write`` (``write_with_head`` where the request has it: the
  head goes in the same transport write): no producer, no cooperator, nothing
  scheduled;
* a larger body is sent by :class:`FileBodyProducer`, a push producer that
  writes chunks until the transport pauses it. A chunk is larger than a TCP
  transport's buffer, so each write pauses it: one chunk in memory per answer,
  whatever the size of the file. A transport that never pauses gets at most
  ``CHUNKS_PER_TURN`` chunks per reactor turn (the rest follows on later
  turns), so memory stays bounded there too. It starts paused when the channel
  is already waiting for its transport (a transport that is paused says so
  only once);
* the file descriptor is closed when the body is complete, when the
  connection is lost, and on any error; a file that shrank under us ends the
  connection (the client was promised ``Content-Length`` bytes).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

#: bytes read from the file per producer step (measured: see docs/benchmarks.md)
DOWNLOAD_CHUNK = 256 * 1024

#: bodies up to this size are sent in one write, without a producer
SMALL_BODY = DOWNLOAD_CHUNK

#: most chunks written in one reactor turn when the transport does not pause
CHUNKS_PER_TURN = 4


def send_small(request: Request, fd: int, offset: int, length: int, head_lines: bytes = b"") -> None:
    """Read ``length`` bytes at ``offset`` and send them as the whole body; closes ``fd``.

    ``head_lines`` are header lines (``Name: value\r\n`` each) sent after the
    request's own response headers, by ``write_with_head`` (which it needs).
    """
    try:
        data = os.pread(fd, length, offset) if length else b""
    except OSError:
        data = None
    finally:
        os.close(fd)
    if data is None or len(data) != length:
        request.loseConnection()
        return
    if head_lines:
        getattr(request, "write_with_head")(data, head_lines)  # TransferRequest's: head and body in one write
    elif data:
        getattr(request, "write_with_head", request.write)(data)
    request.finish()


@implementer(IPushProducer)
class FileBodyProducer:
    """Writes bytes ``[offset, offset + length)`` of ``fd``, one chunk per transport request."""

    def __init__(self, request: Request, fd: int, offset: int, length: int, chunk: int = DOWNLOAD_CHUNK) -> None:
        self.request = request
        self._fd: int | None = fd
        self._offset = offset
        self._left = length
        self._chunk = chunk
        self._writing = False
        self._paused = False
        self._scheduled: Any = None

    def start(self) -> None:
        """Register with the request and send the first chunk."""
        self.request.registerProducer(self, True)
        if not getattr(self.request.channel, "_waitingForTransport", False):
            self.resumeProducing()

    def resumeProducing(self) -> None:
        """The transport's buffer has drained: send chunks until paused (or finish)."""
        self._paused = False
        for _ in range(CHUNKS_PER_TURN):
            if self._paused or self._fd is None or self._writing:
                return
            self._send_chunk(self._fd)
        if not self._paused and self._fd is not None and self._scheduled is None:
            self._scheduled = self.request.channel.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._scheduled = None
        if not self._paused:
            self.resumeProducing()

    def _send_chunk(self, fd: int) -> None:
        try:
            data = os.pread(fd, min(self._chunk, self._left), self._offset)
        except OSError:
            data = b""
        if not data:  # the file shrank (or cannot be read): the promised length cannot be kept
            self._close()
            self.request.unregisterProducer()
            self.request.loseConnection()
            return
        self._offset += len(data)
        self._left -= len(data)
        self._writing = True
        try:
            self.request.write(data)
        finally:
            self._writing = False
        if self._left == 0 and self._fd is not None:
            self._close()
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        """The transport's buffer is full: no more chunks until it has drained."""
        self._paused = True

    def stopProducing(self) -> None:
        """The connection is gone: close the file, write nothing more."""
        self._close()

    def _close(self) -> None:
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def send_body(request: Request, fd: int, offset: int, length: int) -> None:
    """Send ``length`` bytes of ``fd`` from ``offset`` as the body, then finish; ``fd`` is taken over."""
    if length <= SMALL_BODY:
        send_small(request, fd, offset, length)
    else:
        FileBodyProducer(request, fd, offset, length).start()
