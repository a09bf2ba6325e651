"""The bulk TLS transport (gsitransfer.tls._bulk): Twisted's TLS semantics, many records per call.

The tests of semantics run twice, through the bulk transport and through
Twisted's own ``TLSMemoryBIOFactory`` (both made by
``gsitransfer.tls.server_protocol_factory``); the tests of batching run
through the bulk transport only. In memory (a pyOpenSSL client against the protocol on a StringTransport) the
batching is exact; over a real 127.0.0.1 connection (a private reactor in this
thread, Python's ``ssl`` client in another) the bytes, the close, the abort, the
refused handshake and the producer pauses are checked end to end.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import socket
import ssl
import termios
import threading
from typing import Any, Callable

import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gsitransfer.testca import TestPKI
from gsitransfer.tls import ServerTLS, TrustConfig, server_protocol_factory
from gsitransfer.tls._bulk import SEND_SLICE, BulkTLSFactory, BulkTLSProtocol, send_at_once_or_queue

RECORD = 16 * 1024
MiB = 1024 * 1024


def pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike (a shifted block would be noticed)."""
    block = hashlib.sha256(b"gsitransfer").digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """Records what the TLS layer delivered; hooks let a test act on each event."""

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.digest = hashlib.sha256()
        self.handshake_done = False
        self.lost: Failure | None = None
        self.on_connect: Callable[[Recorder], None] = lambda app: None
        self.on_handshake: Callable[[Recorder], None] = lambda app: None
        self.on_data: Callable[[Recorder, bytes], None] = lambda app, data: None
        self.on_lost: Callable[[Recorder], None] = lambda app: None

    def connectionMade(self) -> None:
        self.on_connect(self)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.on_handshake(self)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(len(data))
        self.digest.update(data)
        self.on_data(self, data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason
        self.on_lost(self)


@pytest.fixture(scope="module")
def server_tls(test_pki: TestPKI) -> ServerTLS:
    return ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(ca_dir=str(test_pki.ca_dir)))


#: the two TLS transports: the fast path and Twisted's own
TRANSPORTS = ["bulk", "twisted"]


@pytest.fixture(params=TRANSPORTS)
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Each TLS transport in turn (for the tests of semantics)."""
    return str(request.param)


# ---------------------------------------------------------------------------
# In memory: a pyOpenSSL client, the protocol on a StringTransport
# ---------------------------------------------------------------------------


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)

    def take(self) -> bytes:
        data = self.value()
        self.clear()
        return data


class MemoryPair:
    """The server protocol and a pyOpenSSL client connected through memory."""

    def __init__(self, server_tls: ServerTLS, pki: TestPKI, app: Recorder, handshake: bool = True,
                 kind: str = "bulk", factory: Any = None) -> None:
        self.app = app
        self.clock = Clock()
        if factory is None:
            factory = server_protocol_factory(server_tls, Factory.forProtocol(lambda: app), bulk=kind == "bulk",
                                              reactor=self.clock)
        self.factory = factory
        self.server = factory.buildProtocol(None)
        assert isinstance(self.server, BulkTLSProtocol) == (kind == "bulk")
        self.transport = CountingTransport()
        self.server.makeConnection(self.transport)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.use_certificate_file(str(pki.users["alice"].cert))
        context.use_privatekey_file(str(pki.users["alice"].key))
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()
        if handshake:
            for _ in range(10):
                try:
                    self.client.do_handshake()
                except SSL.WantReadError:
                    pass
                self.to_server()
                self.to_client()
            assert self.server._handshakeDone

    def to_server(self) -> None:
        """Everything the client has written, in one TCP read."""
        data = b""
        while True:
            try:
                data += self.client.bio_read(4 * MiB)
            except SSL.WantReadError:
                break
        if data:
            self.server.dataReceived(data)

    def to_client(self) -> None:
        data = self.transport.take()
        if data:
            self.client.bio_write(data)

    def client_read_all(self) -> bytes:
        """What the client can decrypt now; stops at close_notify."""
        received = []
        while True:
            try:
                received.append(self.client.recv(MiB))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return b"".join(received)


def test_records_of_one_read_reach_the_protocol_in_one_call(server_tls: ServerTLS, test_pki: TestPKI) -> None:
    """Forty records arriving in one TCP read are delivered by one dataReceived, bytes intact."""
    pair = MemoryPair(server_tls, test_pki, Recorder())
    body = pattern(40 * RECORD + 123)
    pair.client.sendall(body)
    pair.to_server()
    assert pair.app.chunks == [len(body)]
    assert pair.app.digest.digest() == hashlib.sha256(body).digest()


def test_one_transport_write_per_slice(server_tls: ServerTLS, test_pki: TestPKI) -> None:
    """A 1 MiB write goes out as one transport write per 256 KiB slice (with OpenSSL writing whole slices)."""
    pair = MemoryPair(server_tls, test_pki, Recorder())
    pair.transport.writes.clear()
    body = pattern(4 * SEND_SLICE)
    pair.server.write(body)
    assert pair.server.whole_slices, "SSL_MODE_ENABLE_PARTIAL_WRITE could not be cleared: one record per SSL_write"
    assert len(pair.transport.writes) == 4
    pair.to_client()
    assert pair.client_read_all() == body


def test_data_before_close_notify_is_delivered_and_answered_first(
    server_tls: ServerTLS, test_pki: TestPKI, transport_kind: str,
) -> None:
    """Data and close_notify in one read: the data arrives, the answer to it is sent, then the TLS close.

    (A small answer would wait in Twisted's write aggregator for the next
    reactor turn and be dropped after the close, as with Twisted's own
    protocol; a large one is written at once.)
    """
    answer = pattern(100_000)
    app = Recorder()
    app.on_data = lambda app, data: app.transport.write(answer)
    pair = MemoryPair(server_tls, test_pki, app, kind=transport_kind)
    pair.client.sendall(b"q" * (3 * RECORD))
    try:
        pair.client.shutdown()
    except SSL.Error:
        pass
    pair.to_server()
    assert app.chunks == ([3 * RECORD] if transport_kind == "bulk" else [RECORD] * 3)
    assert pair.transport.disconnecting  # the TLS close was answered and TCP is closing
    pair.to_client()
    assert pair.client_read_all() == answer * len(app.chunks)  # each delivery answered, before the close
    assert pair.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN


def test_writes_before_the_handshake_go_out_after_it_in_order(
    server_tls: ServerTLS, test_pki: TestPKI, transport_kind: str,
) -> None:
    """Writes made before the handshake are buffered, then sent in the order they were made."""
    first, second = b"first:" + pattern(SEND_SLICE + 5), b"second"
    app = Recorder()
    app.on_connect = lambda app: (app.transport.write(first), app.transport.write(second))
    pair = MemoryPair(server_tls, test_pki, app, kind=transport_kind)
    pair.to_client()
    pair.server._aggregator.flush()  # the small write waits for the (fake) clock otherwise
    pair.to_client()
    assert pair.client_read_all() == first + second


def test_abort_stops_delivery(server_tls: ServerTLS, test_pki: TestPKI, transport_kind: str) -> None:
    """After abortConnection nothing more is delivered, even records already received."""
    app = Recorder()
    app.on_data = lambda app, data: app.transport.abortConnection()
    pair = MemoryPair(server_tls, test_pki, app, kind=transport_kind)
    pair.client.sendall(b"a" * RECORD)
    pair.to_server()
    pair.client.sendall(b"b" * RECORD)
    pair.to_server()
    assert app.chunks == [RECORD]
    assert pair.transport.disconnecting


# ---------------------------------------------------------------------------
# Over 127.0.0.1: a private reactor here, Python's ssl client in a thread
# ---------------------------------------------------------------------------


class Loopback:
    """Serves ``app`` through the ``kind`` of TLS transport on 127.0.0.1 until it loses its connection."""

    def __init__(self, server_tls: ServerTLS, app: Recorder, kind: str = "bulk") -> None:
        self.reactor = SelectReactor()
        self.app = app
        previous = app.on_lost

        def lost(app: Recorder) -> None:
            previous(app)
            self.reactor.callLater(0, self.reactor.stop)

        app.on_lost = lost
        factory = server_protocol_factory(server_tls, Factory.forProtocol(lambda: app), bulk=kind == "bulk",
                                          reactor=self.reactor)
        assert isinstance(factory, BulkTLSFactory) == (kind == "bulk")
        self.port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.client_error: BaseException | None = None
        self.client_result: Any = None

    def run(self, client: Callable[[int], Any]) -> Any:
        def target() -> None:
            try:
                self.client_result = client(self.port.getHost().port)
            except BaseException as error:  # reported in this thread below
                self.client_error = error

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        # liveness only (nothing is timed): a stuck test ends instead of hanging
        self.reactor.callLater(60, self.reactor.stop)
        self.reactor.run(installSignalHandlers=False)
        thread.join(10)
        assert not thread.is_alive(), "the client thread did not finish"
        if self.client_error is not None:
            raise self.client_error
        return self.client_result


def client_context(pki: TestPKI, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca_file))
    if with_certificate:
        context.load_cert_chain(str(pki.users["alice"].cert), str(pki.users["alice"].key))
    return context


def connect(pki: TestPKI, port: int, with_certificate: bool = True) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return client_context(pki, with_certificate).wrap_socket(raw, server_hostname="localhost")


def queued_bytes(app: Recorder) -> int:
    """Bytes waiting in the kernel for the server's TCP socket."""
    count = array.array("i", [0])
    fcntl.ioctl(app.transport.transport.socket.fileno(), termios.FIONREAD, count)
    return count[0]


def test_upload_over_loopback_arrives_intact_in_fewer_larger_calls(
    server_tls: ServerTLS, test_pki: TestPKI, transport_kind: str,
) -> None:
    """8 MiB from a Python ssl client arrive intact (bulk: in calls bigger than one record); close_notify is a clean close."""
    body = pattern(8 * MiB + 1000)
    app = Recorder()
    polls = [0]

    def hold_reading(app: Recorder) -> None:
        # Let some records pile up in the kernel, so that at least one TCP read
        # brings several: that read must reach the application in one call.
        app.transport.pauseProducing()

        def check() -> None:
            polls[0] += 1
            if queued_bytes(app) >= 4 * RECORD or polls[0] > 500:
                waiting.stop()
                app.transport.resumeProducing()

        waiting = LoopingCall(check)
        waiting.clock = loop.reactor
        waiting.start(0.01)

    app.on_handshake = hold_reading
    loop = Loopback(server_tls, app, transport_kind)

    def client(port: int) -> None:
        with connect(test_pki, port) as tls:
            tls.sendall(body)
            tls.unwrap()

    loop.run(client)
    assert app.handshake_done
    assert app.digest.digest() == hashlib.sha256(body).digest()
    if transport_kind == "bulk":
        assert max(app.chunks) > RECORD
        assert len(app.chunks) < len(body) / RECORD
    assert app.lost is not None and app.lost.check(ConnectionDone)


@implementer(IPushProducer)
class PatternProducer:
    """Writes ``total`` bytes in 256 KiB chunks while not paused, then closes."""

    def __init__(self, app: Recorder, body: bytes) -> None:
        self.app, self.body, self.offset = app, body, 0
        self.paused = False
        self.pauses = self.resumes = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        self.produce()

    def stopProducing(self) -> None:
        self.paused = True

    def produce(self) -> None:
        while not self.paused and self.offset < len(self.body):
            chunk = self.body[self.offset:self.offset + SEND_SLICE]
            self.offset += len(chunk)
            self.app.transport.write(chunk)
        if self.offset >= len(self.body) and self.app.transport is not None:
            self.app.transport.unregisterProducer()
            self.app.transport.loseConnection()
            self.offset += 1  # once


def test_download_over_loopback_is_paced_and_batched(
    server_tls: ServerTLS, test_pki: TestPKI, transport_kind: str,
) -> None:
    """8 MiB written by a push producer reach a Python ssl client intact; it is paused and resumed; bulk: few TCP writes."""
    body = pattern(8 * MiB + 777)
    app = Recorder()
    tcp_writes: list[int] = []

    def start(app: Recorder) -> None:
        tcp = app.transport.transport
        write = tcp.write

        def counting(data: bytes) -> None:
            tcp_writes.append(len(data))
            write(data)

        tcp.write = counting
        app.producer = PatternProducer(app, body)
        app.transport.registerProducer(app.producer, True)
        app.producer.produce()

    app.on_handshake = start
    loop = Loopback(server_tls, app, transport_kind)

    def client(port: int) -> str:
        digest = hashlib.sha256()
        with connect(test_pki, port) as tls:
            tls.sendall(b"go")  # TLS 1.3: the server's handshake completes on the client's Finished
            while data := tls.recv(MiB):
                digest.update(data)
            tls.unwrap()  # answer the server's close_notify: a clean close on both sides
        return digest.hexdigest()

    assert loop.run(client) == hashlib.sha256(body).hexdigest()
    producer = app.producer
    assert producer.pauses >= 1 and producer.resumes >= 1
    if transport_kind == "bulk":
        assert len(tcp_writes) < len(body) / (4 * RECORD)
    assert app.lost is not None and app.lost.check(ConnectionDone)


def test_refused_handshake_reaches_the_application_as_a_tls_error(
    server_tls: ServerTLS, test_pki: TestPKI, transport_kind: str,
) -> None:
    """A client without a certificate: no handshakeCompleted, no data, connectionLost with the SSL error."""
    app = Recorder()
    loop = Loopback(server_tls, app, transport_kind)

    def client(port: int) -> str:
        try:
            with connect(test_pki, port, with_certificate=False) as tls:
                tls.sendall(b"hello")
                tls.recv(100)
        except (ssl.SSLError, OSError) as error:
            return type(error).__name__
        return "no error"

    assert loop.run(client) != "no error"
    assert not app.handshake_done
    assert app.chunks == []
    assert app.lost is not None and app.lost.check(SSL.Error)


def test_abort_over_loopback_ends_the_connection_and_delivery(
    server_tls: ServerTLS, test_pki: TestPKI, transport_kind: str,
) -> None:
    """The application aborts on its first data: nothing more is delivered and the client's sending fails."""
    app = Recorder()
    app.on_data = lambda app, data: app.transport.abortConnection()
    loop = Loopback(server_tls, app, transport_kind)

    def client(port: int) -> str:
        block = pattern(MiB)
        try:
            with connect(test_pki, port) as tls:
                for _ in range(64):
                    tls.sendall(block)
        except (ssl.SSLError, OSError) as error:
            return type(error).__name__
        return "no error"

    assert loop.run(client) != "no error"
    assert len(app.chunks) == 1
    assert app.lost is not None


def test_an_answer_leaves_in_its_write_when_the_socket_has_room(server_tls: ServerTLS, test_pki: TestPKI) -> None:
    """A reply written on an idle connection is sent by the write itself: nothing queued for the reactor's next turn."""
    reply = pattern(70 * 1024)
    app = Recorder()
    queued_after_write: list[int] = []

    def answer(app: Recorder, data: bytes) -> None:
        tcp = app.transport.transport
        app.transport.write(reply)
        queued_after_write.append(len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen)
        app.transport.loseConnection()

    app.on_data = answer
    loop = Loopback(server_tls, app)

    def client(port: int) -> bytes:
        received = []
        with connect(test_pki, port) as tls:
            tls.sendall(b"ask")
            while data := tls.recv(MiB):
                received.append(data)
            tls.unwrap()
        return b"".join(received)

    assert loop.run(client) == reply
    assert queued_after_write == [0]


def test_send_at_once_queues_what_the_socket_did_not_take_in_order() -> None:
    """The bytes send() did not take are queued after the sent ones; with bytes already queued, nothing is sent early."""

    class Socketish:
        connected, _writeDisconnected, _tempDataLen, dataBuffer, offset = True, False, 0, b"", 0

        def __init__(self, room: int) -> None:
            self.room, self.sent, self.queued = room, b"", []

        def writeSomeData(self, data: bytes) -> int:
            taken = bytes(data[: self.room])
            self.room -= len(taken)
            self.sent += taken
            return len(taken)

        def write(self, data: bytes) -> None:
            self.queued.append(bytes(data))
            self._tempDataLen += len(data)

    partial = Socketish(room=10)
    send_at_once_or_queue(partial, b"0123456789abcdef")
    send_at_once_or_queue(partial, b"ghij")
    assert partial.sent == b"0123456789" and partial.queued == [b"abcdef", b"ghij"]
    full = Socketish(room=0)
    send_at_once_or_queue(full, b"xyz")
    assert full.sent == b"" and full.queued == [b"xyz"]


def test_declares_what_twisteds_tls_protocol_declares(server_tls: ServerTLS) -> None:
    """Over the same kind of transport, the protocol provides exactly the interfaces Twisted's own would."""
    from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
    from zope.interface import providedBy

    def declared(factory: Any) -> set[str]:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return {interface.__identifier__ for interface in providedBy(protocol)}

    bulk = server_protocol_factory(server_tls, Factory.forProtocol(Protocol), bulk=True, reactor=Clock())
    assert isinstance(bulk, BulkTLSFactory)
    ours = declared(bulk)
    twisted = TLSMemoryBIOFactory(server_tls, False, Factory.forProtocol(Protocol), clock=Clock())
    assert twisted.protocol is BufferingTLSTransport
    assert ours == declared(twisted)
    assert "twisted.internet.interfaces.IPushProducer" in ours
    assert declared(bulk) == ours  # a second connection: the remembered declaration


def test_connections_of_another_thread_leave_the_shared_buffers_alone(server_tls: ServerTLS, test_pki: TestPKI) -> None:
    """A factory's shared buffers belong to one thread; a connection run by another still sends and receives intact."""
    first = MemoryPair(server_tls, test_pki, Recorder())
    body = pattern(10 * RECORD + 5)
    first.client.sendall(body)
    first.to_server()  # this thread claims the factory's buffers
    assert first.app.chunks == [len(body)]
    factory = first.factory
    assert isinstance(factory, BulkTLSFactory) and factory.buffers.owned_here()
    outcome: list[object] = []

    def elsewhere() -> None:
        try:
            assert not factory.buffers.owned_here()
            app = Recorder()
            factory.wrappedFactory = Factory.forProtocol(lambda: app)
            pair = MemoryPair(server_tls, test_pki, app, factory=factory)
            pair.client.sendall(body)
            pair.to_server()
            pair.app.transport.write(body)
            pair.to_client()
            outcome.append((pair.app.chunks, pair.client_read_all() == body))
        except BaseException as error:  # reported below
            outcome.append(error)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(30)
    assert outcome == [([10 * RECORD + 5], True)]


def test_factories_do_not_share_buffers(server_tls: ServerTLS, test_pki: TestPKI) -> None:
    """Each bulk factory owns its buffers and declarations: nothing is shared between two servers."""
    one, two = (server_protocol_factory(server_tls, Factory.forProtocol(Protocol), bulk=True, reactor=Clock())
                for _ in range(2))
    assert isinstance(one, BulkTLSFactory) and isinstance(two, BulkTLSFactory)
    assert one.buffers is not two.buffers and one.declarations is not two.declarations


def _scripted_exchange(server_tls: ServerTLS, pki: TestPKI, kind: str) -> tuple[bytes, bytes, bool]:
    """One scripted conversation through ``kind``: (what the application got, what the client got, clean close)."""
    received = bytearray()
    finale = pattern(3 * SEND_SLICE + 17)

    def answer(app: Recorder, data: bytes) -> None:
        received.extend(data)
        app.transport.write(bytes(b ^ 0x5A for b in data))  # byte for byte: independent of how data is cut
        if received.endswith(b"END"):
            app.transport.write(finale)
            app.transport.loseConnection()

    app = Recorder()
    app.on_data = answer
    pair = MemoryPair(server_tls, pki, app, kind=kind)
    got = bytearray()
    for message in (b"hello", pattern(40 * RECORD + 123), b"x", pattern(SEND_SLICE + 1)[::-1], b"END"):
        pair.client.sendall(message)
        pair.to_server()
        pair.clock.advance(0)  # Twisted's aggregated small writes
        pair.to_client()
        got += pair.client_read_all()
    pair.clock.advance(0)
    pair.to_client()
    got += pair.client_read_all()
    return bytes(received), bytes(got), bool(pair.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN)


def test_both_transports_carry_the_same_application_bytes(server_tls: ServerTLS, test_pki: TestPKI) -> None:
    """The same conversation through the bulk transport and Twisted's own: identical bytes both ways, same close."""
    bulk = _scripted_exchange(server_tls, test_pki, "bulk")
    twisted = _scripted_exchange(server_tls, test_pki, "twisted")
    assert bulk[0] == twisted[0] and bulk[1] == twisted[1] and bulk[2] == twisted[2]
    assert bulk[2] and bulk[0].endswith(b"END") and len(bulk[1]) == len(bulk[0]) + 3 * SEND_SLICE + 17
