"""TLS over TCP for bulk transfers: Twisted's memory-BIO TLS, fewer Python round trips per byte.

What this module owns: :class:`BulkTLSProtocol` and :class:`BulkTLSFactory`, drop-in
replacements for Twisted's ``TLSMemoryBIOProtocol`` (its small-write-aggregating
``BufferingTLSTransport``) and ``TLSMemoryBIOFactory`` that change only how bytes move
between the application, OpenSSL and the TCP transport:

* **sending** -- an application write is handed to OpenSSL in slices of
  ``SEND_SLICE`` bytes, not 16 KiB, and the send BIO is drained after each slice
  with reads of ``SEND_SLICE`` plus room for the records' overhead: one
  ``transport.write`` carries many TLS records. pyOpenSSL turns on
  ``SSL_MODE_ENABLE_PARTIAL_WRITE``, with which ``SSL_write`` stops after one
  record; the protocol turns it off on its connection (through the binding
  pyOpenSSL itself uses, when present), so one ``SSL_write`` encrypts a whole
  slice. Without it the slice is still sent by a loop of ``send`` calls, and
  still drained once;
* **receiving** -- after each ``bio_write`` of what TCP brought, every record
  OpenSSL can decrypt is read (``SSL_read`` returns one record per call) and the
  plaintext is delivered to the wrapped protocol in *one* ``dataReceived``
  (the records are decrypted one after another into one buffer shared by the
  reactor thread's connections, and copied out once);
  once nothing decrypted is left in OpenSSL and no byte is left in the
  receiving BIO, the loop stops without the ``SSL_read`` that would only say
  it wants more. The
  plaintext of one delivery is therefore at most what one TCP read brought in
  plus one partial record held back from the read before;
* **writing** -- what OpenSSL produced is sent at once when the TCP transport
  has nothing queued (:func:`write_through`), instead of on the reactor's next
  turn;
* **reading** -- the TCP transport's ``bufferSize`` (bytes per ``recv``, and the
  write-buffer size above which it pauses a producer) is raised to ``read_size``.

Rules kept from Twisted, unchanged (those methods are not overridden): the
handshake (``_checkHandshakeStatus``, ``IHandshakeListener.handshakeCompleted``),
producers (``_ProducerMembrane``, ``_PullToPush``), writes buffered in
``_appSendBuffer`` while OpenSSL wants to read, ``loseConnection`` /
``abortConnection`` / ``failVerification``, ``connectionLost``. And in the two
overridden loops: nothing is written after ``_lostTLSConnection``; nothing is
delivered after ``_aborted``; plaintext that came before a ``close_notify`` or a
TLS error is delivered before the shutdown (``ZeroReturnError`` →
``_shutdownTLS`` + ``_tlsShutdownFinished(None)``; any other ``SSL.Error`` →
``_tlsShutdownFinished(Failure)``); a write interrupted by ``WantReadError``
resumes with the same slice (as OpenSSL requires when partial writes are off).
"""

from __future__ import annotations

import threading
from typing import Any

from OpenSSL.SSL import Connection, Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import providedBy
from zope.interface.declarations import Provides

#: plaintext bytes handed to one SSL_write (16 records of 16 KiB)
SEND_SLICE = 256 * 1024

#: room for the TLS overhead of a slice's records (TLS 1.3: 22 bytes a record; CBC suites more)
_SEND_SLACK = 16 * 1024

#: bytes asked of one SSL_read (one record at most is returned by OpenSSL 3/4)
RECV_SIZE = 32 * 1024

#: TCP bytes per recv() for these connections (Twisted's default is 64 KiB)
READ_SIZE = 256 * 1024


def _partial_write_off() -> Any:
    """A function clearing SSL_MODE_ENABLE_PARTIAL_WRITE on a pyOpenSSL Connection, or None.

    pyOpenSSL sets the mode on every Context and offers no public way to clear it
    on a Connection; the binding it uses does (``SSL_clear_mode``). When that is
    missing (another pyOpenSSL), sending still works, one record per ``send``.
    """
    try:
        from OpenSSL.SSL import _lib  # type: ignore[attr-defined]

        clear_mode = _lib.SSL_clear_mode
        mode = _lib.SSL_MODE_ENABLE_PARTIAL_WRITE
    except (ImportError, AttributeError):
        return None

    def clear(connection: Connection) -> bool:
        handle = getattr(connection, "_ssl", None)
        if handle is None:
            return False
        clear_mode(handle, mode)
        return True

    return clear


_clear_partial_write = _partial_write_off()


def write_through(transport: Any, data: bytes | memoryview) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued before it.

    Twisted's TCP transport never sends from ``write``: it queues the bytes,
    asks epoll for writability and sends on the next turn of the reactor,
    then asks epoll to stop watching — two ``epoll_ctl`` calls and a reactor
    turn for every answer, though the socket's buffer almost always has room.
    Here, when the transport holds no unsent bytes, ``send`` is tried first
    (``writeSomeData``: at most ``SEND_LIMIT`` bytes, 0 when the socket is
    full) and only what it did not take is queued the usual way; the order of
    bytes is kept because nothing was queued. An error leaves the bytes to
    ``write``, whose next attempt reports the lost connection as Twisted does.
    ``data`` may be a memoryview of a buffer about to be reused: what is
    queued is always a copy.
    """
    send = getattr(transport, "writeSomeData", None)
    if (
        send is None
        or not getattr(transport, "connected", False)
        or getattr(transport, "_writeDisconnected", True)
        or getattr(transport, "_tempDataLen", 1)
        or len(getattr(transport, "dataBuffer", b"x")) != getattr(transport, "offset", -1)
    ):
        transport.write(bytes(data))
        return
    sent = send(data)
    if isinstance(sent, BaseException) or sent <= 0:
        transport.write(bytes(data))
    elif sent < len(data):
        transport.write(bytes(data[sent:]))


class _SharedBuffer:
    """One buffer, shared by every connection of the reactor thread, that OpenSSL reads or decrypts into.

    Sending, what OpenSSL encrypted is read from the memory BIO into it
    (:meth:`read_bio`) and sent from it; receiving, each record is decrypted
    straight into it after the previous one (:meth:`read_ssl`) and the whole
    is copied out once (:meth:`take`). pyOpenSSL's ``bio_read`` and ``recv``
    allocate a buffer per call and copy out of it, and the records of one TCP
    read were then joined: a copy or two of every byte more.
    """

    def __init__(self, ffi: Any, lib: Any, size: int) -> None:
        self.size = size
        self._buffer = bytearray(size)
        self._pointer = ffi.from_buffer(self._buffer)
        self._bio_read = lib.BIO_read
        self._ssl_read = lib.SSL_read
        self._mem_data = lib.BIO_get_mem_data
        self._null = ffi.NULL

    def pending(self, bio: Any) -> int:
        """Bytes waiting in the memory BIO ``bio``."""
        return int(self._mem_data(bio, self._null))

    def read_bio(self, bio: Any) -> int:
        """Read what ``bio`` holds (at most ``size`` bytes) into the buffer; the count read."""
        return max(0, int(self._bio_read(bio, self._pointer, self.size)))

    def read_ssl(self, ssl: Any, offset: int, count: int) -> int:
        """``SSL_read`` of at most ``count`` bytes into the buffer at ``offset``; SSL_read's result."""
        return int(self._ssl_read(ssl, self._pointer + offset, count))

    def view(self, count: int) -> memoryview:
        """The first ``count`` bytes of the buffer (valid until the buffer is next used)."""
        return memoryview(self._buffer)[:count]

    def take(self, count: int) -> bytes:
        """The first ``count`` bytes of the buffer, as bytes of their own."""
        return bytes(memoryview(self._buffer)[:count]) if count else b""


def _make_shared_buffer(size: int) -> _SharedBuffer | None:
    """A shared buffer over pyOpenSSL's binding, or None when it lacks what is used."""
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:
        return None
    if not all(hasattr(lib, name) for name in ("BIO_read", "SSL_read", "BIO_get_mem_data")):
        return None
    return _SharedBuffer(ffi, lib, size)


#: what a connection sends: one slice's records
_send_buffer = _make_shared_buffer(SEND_SLICE + _SEND_SLACK)
#: what a connection received: the plaintext of one TCP read (and of a record held back from the last)
_receive_buffer = _make_shared_buffer(READ_SIZE + 4 * RECV_SIZE)
#: the one thread that uses the shared buffers (the first to run a connection: the reactor's);
#: connections run by any other thread take pyOpenSSL's per-call buffers
_buffers_thread: list[int] = []


def _owns_shared_buffers() -> bool:
    """True on the thread the shared buffers belong to (claimed by the first thread asking)."""
    ident = threading.get_ident()
    if not _buffers_thread:
        _buffers_thread.append(ident)
    return _buffers_thread[0] == ident


#: the declaration of what a protocol class provides over a kind of transport (see makeConnection)
_PROVIDES: dict[tuple[type, Any], Any] = {}
_PROVIDES_LIMIT = 64


def _provides_like(protocol_class: type, transport: Any) -> Any:
    """``Provides(protocol_class, providedBy(transport))``, remembered; None if not to be remembered."""
    spec = providedBy(transport)
    key = (protocol_class, spec)
    try:
        return _PROVIDES[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable declaration
        return None
    if len(_PROVIDES) >= _PROVIDES_LIMIT:
        return None
    provides = _PROVIDES[key] = Provides(protocol_class, spec)
    return provides


class BulkTLSProtocol(BufferingTLSTransport):
    """Twisted's TLS protocol moving many TLS records per Python call (see the module rules)."""

    send_slice = SEND_SLICE
    recv_size = RECV_SIZE
    #: True once SSL_write on this connection encrypts a whole slice in one call
    whole_slices = False
    #: send at once when the TCP transport has nothing queued (see :func:`write_through`)
    write_through = True

    def makeConnection(self, transport: Any) -> None:
        """``TLSMemoryBIOProtocol.makeConnection``, with the transport's interfaces declared once.

        Twisted declares them with one ``directlyProvides`` per interface and
        then once more for all of them (zope.interface normalises the
        arguments each time: ~5 % of a new connection's Python); the result,
        this class providing what the transport provides, is the same for
        every connection over one kind of transport and is reused.
        """
        read_size = getattr(self.factory, "read_size", None)
        if read_size and hasattr(transport, "bufferSize"):
            transport.bufferSize = read_size
        provides = _provides_like(type(self), transport)
        if provides is None or not hasattr(self.factory, "_creatorCallable"):
            super().makeConnection(transport)
        else:
            self._tlsConnection = self.factory._creatorCallable(self)
            self._appSendBuffer = []
            self.__provides__ = provides
            Protocol.makeConnection(self, transport)
            self.factory.registerProtocol(self)
            if self._connectWrapped:
                # ProtocolWrapper.makeConnection, its declaration already made
                self.wrappedProtocol.makeConnection(self)
            self._checkHandshakeStatus()
        # Only now does the Connection exist. No application data can have reached
        # SSL_write before the handshake completed: a write so far was buffered.
        connection = self._tlsConnection
        if connection is not None and _clear_partial_write is not None:
            self.whole_slices = _clear_partial_write(connection)

    @property
    def reports_handshakes(self) -> bool:
        """True when the connection's creator learns how the handshake ended from here (no info callback)."""
        return getattr(self.factory, "handshake_reports", None) is not None

    def _checkHandshakeStatus(self) -> None:
        """Twisted's step of the handshake, telling the creator how it ended when it takes reports.

        ``ServerTLS`` then watches the handshake without an info callback
        (``handshake_completed``, ``handshake_failed``): the refusal is logged
        from OpenSSL's reason, before the connection is shut down, as the info
        callback logged it from the alert while the handshake failed.
        """
        reports = getattr(self.factory, "handshake_reports", None)
        if reports is None:
            super()._checkHandshakeStatus()
            return
        if self._aborted:
            return
        try:
            self._tlsConnection.do_handshake()
        except WantReadError:
            self._flushSendBIO()
        except Error:
            failure = Failure()
            try:
                reports.handshake_failed(self._tlsConnection, failure)
            finally:
                self._tlsShutdownFinished(failure)
        else:
            self._handshakeDone = True
            reports.handshake_completed(self._tlsConnection)
            if IHandshakeListener.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.handshakeCompleted()

    def _write(self, data: Any) -> None:
        """Hand ``data`` to OpenSSL a slice at a time; one transport write per slice."""
        if self._lostTLSConnection:
            return
        if self._appSendBuffer:
            # an earlier write waits for OpenSSL to read: keep the order, and the
            # interrupted SSL_write is retried with its own buffer, not this one
            self._bufferedWrite(bytes(data))
            return
        view = memoryview(data).cast("B")
        total = len(view)
        slice_size = self.send_slice
        send = self._tlsConnection.send
        done = 0
        while done < total:
            end = min(done + slice_size, total)
            try:
                while done < end:
                    done += send(view[done:end])
            except WantReadError:
                # Buffered from `done`, the start of the interrupted slice when
                # whole_slices: the retry passes OpenSSL the same slice again.
                self._flushSendBIO()
                self._bufferedWrite(bytes(view[done:]))
                return
            except Error:
                # as Twisted: the error reaches the application's connectionLost
                self._tlsShutdownFinished(Failure())
                return
            self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        """Move everything in the send BIO to the transport in one write."""
        if (
            self.write_through
            and _send_buffer is not None
            and self.send_slice + _SEND_SLACK <= _send_buffer.size
            and _owns_shared_buffers()
        ):
            if self._send_from_shared_buffer():
                return
        connection = self._tlsConnection
        size = self.send_slice + _SEND_SLACK
        chunks = []
        while True:
            try:
                chunk = connection.bio_read(size)
            except WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < size:
                break
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self.write_through:
                write_through(self.transport, data)
            else:
                self.transport.write(data)

    def _send_from_shared_buffer(self) -> bool:
        """Send what the BIO holds straight from one buffer shared by all connections; False: not done.

        pyOpenSSL's ``bio_read`` allocates a buffer per call and copies the
        bytes out of it; here they are read into one reusable buffer and sent
        from it (``write_through``), and only what the socket does not take is
        copied, to be queued. The buffer is free again before anything else can
        run (the remainder is copied before ``transport.write``), and one
        reactor thread uses it. A BIO holding more than the buffer, or a
        connection without the attributes used, is left to the other path.
        """
        from_ssl = getattr(self._tlsConnection, "_from_ssl", None)
        reader = _send_buffer
        if from_ssl is None or reader is None:
            return False
        pending = reader.pending(from_ssl)
        if pending <= 0:
            return True  # nothing to send
        if pending > reader.size:
            return False
        count = reader.read_bio(from_ssl)
        if count != pending:
            raise RuntimeError(f"memory BIO gave {count} of {pending} pending bytes")
        write_through(self.transport, reader.view(count))
        return True

    def _flushReceiveBIO(self) -> None:
        """Decrypt every complete record now in the receive BIO; deliver the plaintext at once."""
        connection = self._tlsConnection
        reader = _receive_buffer
        ssl = getattr(connection, "_ssl", None)
        into_ssl = getattr(connection, "_into_ssl", None)
        raise_error = getattr(connection, "_raise_ssl_error", None)
        if reader is None or ssl is None or into_ssl is None or raise_error is None or not _owns_shared_buffers():
            self._flush_receive_by_recv()
            return
        size = self.recv_size
        parts: list[bytes] = []  # what did not fit in the shared buffer (a read larger than READ_SIZE)
        filled = 0
        while not self._lostTLSConnection:
            if reader.size - filled < size:
                parts.append(reader.take(filled))
                filled = 0
            try:
                count = reader.read_ssl(ssl, filled, size)
                if count <= 0:
                    raise_error(ssl, count)
                    break  # not reached: raise_error raises
                filled += count
                if not connection.pending() and reader.pending(into_ssl) <= 0:
                    # nothing decrypted left and no byte of another record: SSL_read would want more
                    break
            except WantReadError:
                break
            except ZeroReturnError:
                # close_notify: what came before it first, then Twisted's shutdown
                self._deliver(parts + [reader.take(filled)])
                parts, filled = [], 0
                if not self._lostTLSConnection:
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
            except Error:
                failure = Failure()
                self._deliver(parts + [reader.take(filled)])
                parts, filled = [], 0
                if not self._lostTLSConnection:
                    self._tlsShutdownFinished(failure)
        self._deliver(parts + [reader.take(filled)])
        # the records may have needed an answer (handshake messages, alerts)
        self._flushSendBIO()

    def _flush_receive_by_recv(self) -> None:
        """:meth:`_flushReceiveBIO` through pyOpenSSL's ``recv`` (a pyOpenSSL without the attributes used)."""
        connection = self._tlsConnection
        size = self.recv_size
        chunks: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                chunks.append(connection.recv(size))
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(chunks)
                chunks = []
                if not self._lostTLSConnection:
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
            except Error:
                failure = Failure()
                self._deliver(chunks)
                chunks = []
                if not self._lostTLSConnection:
                    self._tlsShutdownFinished(failure)
        self._deliver(chunks)
        self._flushSendBIO()

    def _deliver(self, chunks: list[bytes]) -> None:
        if chunks and not self._aborted:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if data:  # (an empty read of the shared buffer: nothing to deliver)
                self.wrappedProtocol.dataReceived(data)


class BulkTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building :class:`BulkTLSProtocol` connections.

    ``read_size`` is the TCP transport's ``bufferSize`` for these connections
    (None: leave Twisted's).
    """

    protocol = BulkTLSProtocol

    def __init__(
        self, contextFactory: Any, isClient: bool, wrappedFactory: Any,
        clock: IReactorTime | None = None, *, read_size: int | None = READ_SIZE,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self.read_size = read_size
        #: the connection creator, when it takes reports of each handshake's end (ServerTLS does)
        self.handshake_reports = (
            contextFactory
            if not isClient and callable(getattr(contextFactory, "handshake_failed", None))
            and callable(getattr(contextFactory, "handshake_completed", None))
            else None
        )
