"""TLS over TCP for bulk transfers: Twisted's memory-BIO TLS, fewer Python round trips per byte.

What this module owns: :class:`BulkTLSProtocol` and :class:`BulkTLSFactory`, drop-in
replacements for Twisted's ``TLSMemoryBIOProtocol`` (its small-write-aggregating
``BufferingTLSTransport``) and ``TLSMemoryBIOFactory`` that change only how bytes move
between the application, OpenSSL and the TCP transport, and what the connections of
one factory share (:class:`SharedBuffers`, :class:`DeclarationCache`). Build them
through :func:`gsitransfer.tls.factory.server_protocol_factory`: the protocol's
public-named steps are bound onto Twisted's private hooks by
:func:`gsitransfer._internals.with_twisted_tls_hooks`, after the check that those
hooks exist.

* **sending** (``write_in_slices``, ``send_pending_records``) -- an application
  write is handed to OpenSSL in slices of ``SEND_SLICE`` bytes, not 16 KiB, and
  what OpenSSL encrypted is drained after each slice: one ``transport.write``
  carries many TLS records. pyOpenSSL turns on ``SSL_MODE_ENABLE_PARTIAL_WRITE``,
  with which ``SSL_write`` stops after one record; the protocol turns it off on
  its connection (:func:`gsitransfer._internals.clear_partial_write`), so one
  ``SSL_write`` encrypts a whole slice. Without it the slice is still sent by a
  loop of ``send`` calls, and still drained once;
* **receiving** (``receive_records``) -- after each ``bio_write`` of what TCP
  brought, every record OpenSSL can decrypt is read (``SSL_read`` returns one
  record per call) and the plaintext is delivered to the wrapped protocol in
  *one* ``dataReceived`` (the records are decrypted one after another into the
  factory's shared receive buffer, and copied out once); once nothing decrypted
  is left in OpenSSL and no byte is left in the receiving BIO, the loop stops
  without the ``SSL_read`` that would only say it wants more. The plaintext of
  one delivery is therefore at most what one TCP read brought in plus one
  partial record held back from the read before;
* **writing** -- what OpenSSL produced is sent at once when the TCP transport
  has nothing queued (:func:`send_at_once_or_queue`), instead of on the
  reactor's next turn;
* **reading** -- the TCP transport's ``bufferSize`` (bytes per ``recv``, and the
  write-buffer size above which it pauses a producer) is raised to ``read_size``.

Rules kept from Twisted, unchanged (those methods are not overridden): the
handshake's step (``twisted_handshake_step``, ``IHandshakeListener.handshakeCompleted``),
producers, writes buffered while OpenSSL wants to read, ``loseConnection`` /
``abortConnection`` / ``failVerification``, ``connectionLost``. And in the
overridden loops: nothing is written after the TLS connection is lost; nothing
is delivered after an abort; plaintext that came before a ``close_notify`` or a
TLS error is delivered before the shutdown (``ZeroReturnError``: Twisted's TLS
shutdown then its clean end; any other ``SSL.Error``: its end with the failure);
a write interrupted by ``WantReadError`` resumes with the same slice (as OpenSSL
requires when partial writes are off).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol as TypingProtocol, cast

from OpenSSL.SSL import Connection, Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import providedBy
from zope.interface.declarations import Provides

from gsitransfer._internals import OpenSSLBuffer, clear_partial_write, openssl_buffer, tcp_send_queue_empty

#: plaintext bytes handed to one SSL_write (16 records of 16 KiB)
SEND_SLICE = 256 * 1024

#: room for the TLS overhead of a slice's records (TLS 1.3: 22 bytes a record; CBC suites more)
SEND_SLACK = 16 * 1024

#: bytes asked of one SSL_read (one record at most is returned by OpenSSL 3/4)
RECV_SIZE = 32 * 1024

#: TCP bytes per recv() for these connections (Twisted's default is 64 KiB)
READ_SIZE = 256 * 1024


class _TwistedTLSSteps(TypingProtocol):
    """The steps of Twisted's ``TLSMemoryBIOProtocol`` this module calls, with types (Twisted leaves them unannotated)."""

    def makeConnection(self, transport: Any) -> None: ...

    def _bufferedWrite(self, octets: bytes) -> None: ...

    def _shutdownTLS(self) -> None: ...

    def _tlsShutdownFinished(self, reason: Failure | None) -> None: ...


def _current_failure() -> Failure:
    """A ``Failure`` of the exception being handled."""
    return Failure()


def send_at_once_or_queue(transport: Any, data: bytes | memoryview) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued before it.

    Twisted's TCP transport never sends from ``write``: it queues the bytes,
    asks epoll for writability and sends on the next turn of the reactor,
    then asks epoll to stop watching -- two ``epoll_ctl`` calls and a reactor
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
    if send is None or not tcp_send_queue_empty(transport):
        transport.write(bytes(data))
        return
    sent = send(data)
    if isinstance(sent, BaseException) or sent <= 0:
        transport.write(bytes(data))
    elif sent < len(data):
        transport.write(bytes(data[sent:]))


class SharedBuffers:
    """The buffers the connections of one factory encrypt and decrypt into, used by one thread.

    ``send`` holds one slice's records on their way to the socket; ``receive``
    the plaintext of one TCP read (and of a record held back from the last).
    They belong to the first thread that asks (:meth:`owned_here`: the
    reactor's); connections run by any other thread take pyOpenSSL's per-call
    buffers. Each buffer is None when pyOpenSSL's binding lacks what it uses.
    """

    def __init__(self, send_size: int = SEND_SLICE + SEND_SLACK, receive_size: int = READ_SIZE + 4 * RECV_SIZE) -> None:
        self.send: OpenSSLBuffer | None = openssl_buffer(send_size)
        self.receive: OpenSSLBuffer | None = openssl_buffer(receive_size)
        self._owner: int | None = None

    def owned_here(self) -> bool:
        """True on the thread the buffers belong to (claimed by the first thread asking)."""
        ident = threading.get_ident()
        if self._owner is None:
            self._owner = ident
        return self._owner == ident


class DeclarationCache:
    """The declaration of what a protocol class provides over a kind of transport, made once per pair."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._declarations: dict[tuple[type, Any], Any] = {}

    def provides_like(self, protocol_class: type, transport: object) -> Any:
        """``Provides(protocol_class, providedBy(transport))``, remembered; None if not to be remembered."""
        spec = providedBy(transport)
        key = (protocol_class, spec)
        try:
            return self._declarations[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable declaration
            return None
        if len(self._declarations) >= self.limit:
            return None
        provides = self._declarations[key] = Provides(protocol_class, spec)
        return provides


class BulkTLSProtocol(BufferingTLSTransport):
    """Twisted's TLS protocol moving many TLS records per Python call (see the module rules)."""

    send_slice = SEND_SLICE
    recv_size = RECV_SIZE
    #: True once SSL_write on this connection encrypts a whole slice in one call
    whole_slices = False
    #: send at once when the TCP transport has nothing queued (see :func:`send_at_once_or_queue`)
    send_at_once = True
    #: Twisted's own step of the handshake (bound by ``with_twisted_tls_hooks``)
    twisted_handshake_step: Callable[[], None]

    @property
    def twisted(self) -> _TwistedTLSSteps:
        """This protocol, seen through the typed steps of Twisted's that it calls."""
        return cast(_TwistedTLSSteps, self)

    @property
    def bulk_factory(self) -> BulkTLSFactory | None:
        """The factory, when it is a :class:`BulkTLSFactory`."""
        factory = self.factory
        return factory if isinstance(factory, BulkTLSFactory) else None

    def makeConnection(self, transport: Any) -> None:
        """``TLSMemoryBIOProtocol.makeConnection``, with the transport's interfaces declared once.

        Twisted declares them with one ``directlyProvides`` per interface and
        then once more for all of them (zope.interface normalises the
        arguments each time: ~5 % of a new connection's Python); the result,
        this class providing what the transport provides, is the same for
        every connection over one kind of transport and is reused.
        """
        factory = self.bulk_factory
        read_size = factory.read_size if factory is not None else None
        if read_size and hasattr(transport, "bufferSize"):
            transport.bufferSize = read_size
        provides = factory.declarations.provides_like(type(self), transport) if factory is not None else None
        if provides is None or factory is None:
            cast(_TwistedTLSSteps, super()).makeConnection(transport)
        else:
            self._tlsConnection = factory._creatorCallable(self)
            self._appSendBuffer = []
            self.__provides__ = provides
            Protocol.makeConnection(self, transport)
            factory.registerProtocol(self)  # type: ignore[no-untyped-call]  # unannotated in Twisted
            if self._connectWrapped:
                # ProtocolWrapper.makeConnection, its declaration already made
                self.wrappedProtocol.makeConnection(self)
            self.step_handshake()
        # Only now does the Connection exist. No application data can have reached
        # SSL_write before the handshake completed: a write so far was buffered.
        connection = self._tlsConnection
        if connection is not None:
            self.whole_slices = clear_partial_write(connection)

    @property
    def reports_handshakes(self) -> bool:
        """True when the connection's creator learns how the handshake ended from here (no info callback)."""
        factory = self.bulk_factory
        return factory is not None and factory.handshake_reports is not None

    def step_handshake(self) -> None:
        """Twisted's step of the handshake, telling the creator how it ended when it takes reports.

        ``ServerTLS`` then watches the handshake without an info callback
        (``handshake_completed``, ``handshake_failed``): the refusal is logged
        from OpenSSL's reason, before the connection is shut down, as the info
        callback logged it from the alert while the handshake failed.
        """
        factory = self.bulk_factory
        reports = factory.handshake_reports if factory is not None else None
        if reports is None:
            self.twisted_handshake_step()
            return
        if self._aborted:
            return
        try:
            self._tlsConnection.do_handshake()
        except WantReadError:
            self.send_pending_records()
        except Error:
            failure = _current_failure()
            try:
                reports.handshake_failed(self._tlsConnection, failure)
            finally:
                self.twisted._tlsShutdownFinished(failure)
        else:
            self._handshakeDone = True
            reports.handshake_completed(self._tlsConnection)
            if IHandshakeListener.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.handshakeCompleted()

    def write_in_slices(self, data: Any) -> None:
        """Hand ``data`` to OpenSSL a slice at a time; one transport write per slice."""
        if self._lostTLSConnection:
            return
        if self._appSendBuffer:
            # an earlier write waits for OpenSSL to read: keep the order, and the
            # interrupted SSL_write is retried with its own buffer, not this one
            self.twisted._bufferedWrite(bytes(data))
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
                self.send_pending_records()
                self.twisted._bufferedWrite(bytes(view[done:]))
                return
            except Error:
                # as Twisted: the error reaches the application's connectionLost
                self.twisted._tlsShutdownFinished(_current_failure())
                return
            self.send_pending_records()

    def _shared_buffers(self) -> SharedBuffers | None:
        """The factory's shared buffers, when this thread owns them."""
        factory = self.bulk_factory
        if factory is None or not factory.buffers.owned_here():
            return None
        return factory.buffers

    def send_pending_records(self) -> None:
        """Move everything OpenSSL has encrypted for the peer to the transport in one write."""
        buffers = self._shared_buffers() if self.send_at_once else None
        if (
            buffers is not None and buffers.send is not None
            and self.send_slice + SEND_SLACK <= buffers.send.size
            and self.send_from_shared_buffer(buffers.send)
        ):
            return
        connection = self._tlsConnection
        size = self.send_slice + SEND_SLACK
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
            transport: Any = self.transport
            if self.send_at_once:
                send_at_once_or_queue(transport, data)
            else:
                transport.write(data)

    def send_from_shared_buffer(self, buffer: OpenSSLBuffer) -> bool:
        """Send what OpenSSL encrypted straight from the factory's send buffer; False: not done.

        pyOpenSSL's ``bio_read`` allocates a buffer per call and copies the
        bytes out of it; here they are read into one reusable buffer and sent
        from it (:func:`send_at_once_or_queue`), and only what the socket does
        not take is copied, to be queued. The buffer is free again before
        anything else can run (the remainder is copied before
        ``transport.write``), and one thread uses it. More bytes than the
        buffer holds, or a connection without what the buffer reads, is left to
        the other path.
        """
        connection = self._tlsConnection
        if not buffer.usable_with(connection):
            return False
        pending = buffer.bytes_to_send(connection)
        if pending <= 0:
            return True  # nothing to send
        if pending > buffer.size:
            return False
        count = buffer.read_to_send(connection)
        if count != pending:
            raise RuntimeError(f"memory BIO gave {count} of {pending} pending bytes")
        send_at_once_or_queue(self.transport, buffer.view(count))
        return True

    def receive_records(self) -> None:
        """Decrypt every complete record OpenSSL has received; deliver the plaintext at once."""
        connection = self._tlsConnection
        buffers = self._shared_buffers()
        buffer = buffers.receive if buffers is not None else None
        if buffer is None or not buffer.usable_with(connection):
            self.receive_records_by_recv()
            return
        size = self.recv_size
        parts: list[bytes] = []  # what did not fit in the shared buffer (a read larger than READ_SIZE)
        filled = 0
        while not self._lostTLSConnection:
            if buffer.size - filled < size:
                parts.append(buffer.take(filled))
                filled = 0
            try:
                filled += buffer.decrypt_into(connection, filled, size)
                if not connection.pending() and buffer.bytes_received(connection) <= 0:
                    # nothing decrypted left and no byte of another record: SSL_read would want more
                    break
            except WantReadError:
                break
            except ZeroReturnError:
                # close_notify: what came before it first, then Twisted's shutdown
                self.deliver(parts + [buffer.take(filled)])
                parts, filled = [], 0
                if not self._lostTLSConnection:
                    self.twisted._shutdownTLS()
                    self.twisted._tlsShutdownFinished(None)
            except Error:
                failure = _current_failure()
                self.deliver(parts + [buffer.take(filled)])
                parts, filled = [], 0
                if not self._lostTLSConnection:
                    self.twisted._tlsShutdownFinished(failure)
        self.deliver(parts + [buffer.take(filled)])
        # the records may have needed an answer (handshake messages, alerts)
        self.send_pending_records()

    def receive_records_by_recv(self) -> None:
        """:meth:`receive_records` through pyOpenSSL's ``recv`` (another thread, or a binding without what is used)."""
        connection = self._tlsConnection
        size = self.recv_size
        chunks: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                chunks.append(connection.recv(size))
            except WantReadError:
                break
            except ZeroReturnError:
                self.deliver(chunks)
                chunks = []
                if not self._lostTLSConnection:
                    self.twisted._shutdownTLS()
                    self.twisted._tlsShutdownFinished(None)
            except Error:
                failure = _current_failure()
                self.deliver(chunks)
                chunks = []
                if not self._lostTLSConnection:
                    self.twisted._tlsShutdownFinished(failure)
        self.deliver(chunks)
        self.send_pending_records()

    def deliver(self, chunks: list[bytes]) -> None:
        """Hand the plaintext ``chunks`` to the wrapped protocol in one ``dataReceived`` (not after an abort)."""
        if chunks and not self._aborted:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if data:  # (an empty read of the shared buffer: nothing to deliver)
                self.wrappedProtocol.dataReceived(data)


class HandshakeReports:
    """What a connection creator that takes reports of each handshake's end provides (``ServerTLS`` does)."""

    def __init__(self, creator: Any) -> None:
        self.handshake_completed: Callable[[Connection], None] = creator.handshake_completed
        self.handshake_failed: Callable[[Connection, Failure], None] = creator.handshake_failed


class BulkTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building ``protocol_class`` connections (a bound :class:`BulkTLSProtocol`).

    ``read_size`` is the TCP transport's ``bufferSize`` for these connections
    (None: leave Twisted's). The factory owns what its connections share: the
    encrypt/decrypt buffers and the interface declarations.
    """

    def __init__(
        self, contextFactory: Any, isClient: bool, wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None, *, protocol_class: type[BulkTLSProtocol],
        read_size: int | None = READ_SIZE,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self.protocol = protocol_class
        self.read_size = read_size
        self.buffers = SharedBuffers()
        self.declarations = DeclarationCache()
        #: the connection creator's reports of each handshake's end, when it takes them (ServerTLS does)
        self.handshake_reports = (
            HandshakeReports(contextFactory)
            if not isClient and callable(getattr(contextFactory, "handshake_failed", None))
            and callable(getattr(contextFactory, "handshake_completed", None))
            else None
        )


__all__ = [
    "READ_SIZE",
    "RECV_SIZE",
    "SEND_SLACK",
    "SEND_SLICE",
    "BulkTLSFactory",
    "BulkTLSProtocol",
    "DeclarationCache",
    "SharedBuffers",
    "send_at_once_or_queue",
]
