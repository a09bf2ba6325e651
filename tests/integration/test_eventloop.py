"""The workers' reactor (gsitransfer.eventloop): Twisted's epoll reactor without a log context per event, or Twisted's own."""

from __future__ import annotations

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python import log

from gsitransfer._internals import EVENT_LOOP, InternalsReport
from gsitransfer.eventloop import DirectDispatchReactor, make_reactor


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("a protocol bug")
        self.transport.write(data)


class Client(Protocol):
    def __init__(self, payload: bytes, done: list[object]) -> None:
        self.payload, self.done, self.received = payload, done, b""

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload):
            self.done.append(self.received)
            self.transport.loseConnection()

    def connectionLost(self, reason: object) -> None:
        if not self.done or self.done[-1] is not self.received:
            self.done.append(reason)


def _exchange(reactor: EPollReactor, payload: bytes) -> object:
    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    done: list[object] = []

    class Connector(ClientFactory):
        def buildProtocol(self, addr: object) -> Protocol:
            return Client(payload, done)

    reactor.connectTCP("127.0.0.1", port.getHost().port, Connector())

    def check() -> None:
        if done:
            reactor.stop()
        else:
            reactor.callLater(0.01, check)

    reactor.callLater(0, check)
    reactor.callLater(30, reactor.stop)  # liveness only: a stuck test ends
    reactor.run(installSignalHandlers=False)
    port.stopListening()
    return done[0] if done else None


def test_reads_and_writes_are_dispatched() -> None:
    """Bytes echoed over 127.0.0.1 through the reactor come back whole."""
    payload = bytes(range(256)) * 4096
    assert _exchange(DirectDispatchReactor(), payload) == payload


def test_a_protocol_exception_is_logged_and_the_loop_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in dataReceived is logged, that connection is dropped, the reactor keeps running."""
    logged: list[object] = []
    monkeypatch.setattr(log, "err", lambda *args, **kwargs: logged.append(args))
    reactor = DirectDispatchReactor()
    outcome = _exchange(reactor, b"boom")
    assert logged and outcome is not None and outcome != b"boom"


def _close(reactor: EPollReactor) -> None:
    """Give back the reactor's descriptors (it never ran)."""
    reactor._poller.close()  # type: ignore[attr-defined]


def test_the_direct_dispatch_reactor_when_enabled_and_available(log_lines: list[str]) -> None:
    """make_reactor(True) with the internals present: DirectDispatchReactor, nothing logged."""
    reactor = make_reactor(True)
    assert type(reactor) is DirectDispatchReactor and log_lines == []
    _close(reactor)


def test_twisteds_reactor_when_disabled(log_lines: list[str]) -> None:
    """make_reactor(False): Twisted's own EPollReactor, nothing logged; it still echoes."""
    reactor = make_reactor(False)
    assert type(reactor) is EPollReactor and log_lines == []
    assert _exchange(reactor, b"plain") == b"plain"


def test_twisteds_reactor_and_one_log_line_when_the_internals_are_missing(log_lines: list[str]) -> None:
    """Enabled but the check found the poller missing: Twisted's EPollReactor and one line saying why."""
    report = InternalsReport("26.0.0", "26.0.0", {EVENT_LOOP: ("missing: _poller",)})
    reactor = make_reactor(True, report)
    assert type(reactor) is EPollReactor
    assert len(log_lines) == 1 and "event_loop" in log_lines[0] and "_poller" in log_lines[0]
    _close(reactor)
