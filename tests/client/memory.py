"""Twisted's real HTTP client talking to a real TransferSite in memory (no sockets, no threads).

:class:`MemoryAgent` is an ``IAgent``: Twisted's own ``Agent`` whose TCP
connections are joined by ``twisted.test.iosim`` pumps to protocols of the
site under test, all on one ``MemoryReactorClock``. treq's
``RequestTraversalAgent`` does the same for a plain ``Site``; uploads need
the ``TransferSite`` (its request class streams bodies), hence this one.
:meth:`MemoryAgent.settle` pumps bytes and advances the clock until a
Deferred has fired.

twisted.web streams an upload's pull producers through
``twisted.internet.task.cooperate`` -- the global reactor's cooperator.
:meth:`MemoryAgent.cooperate` is a replacement on our clock; tests install it
with ``monkeypatch.setattr(twisted.internet._producer_helpers, "cooperate",
agent.cooperate)`` (the ``memory`` fixture does). The clock is a
:class:`NextTurnClock`: a zero-delay call made while the clock advances runs
at the next advance, as a real reactor runs it at its next iteration (after
I/O), so a download's producer turns are pumped to the client one by one.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer


class NextTurnClock(MemoryReactorClock):
    """A MemoryReactorClock whose ``callLater(0, …)`` waits for the next ``advance``."""

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        return super().callLater(max(delay, 1e-6), callable, *args, **kw)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class MemoryAgent:
    """An Agent whose every connection goes, in memory, to ``site``."""

    def __init__(self, site: Any) -> None:
        self.reactor = NextTurnClock()
        site.reactor = self.reactor  # its channels' timers run on our clock
        self.site = site
        self._agent = Agent.usingEndpointFactory(self.reactor, _Endpoints(self.reactor))
        self.pumps: list[iosim.IOPump] = []
        self.requests: list[tuple[bytes, bytes, dict[bytes, list[bytes]]]] = []
        # one step per settle round: a downloaded file arrives in several chunks, as from a socket
        self._cooperator = Cooperator(
            terminationPredicateFactory=lambda: lambda: True,
            scheduler=lambda work: self.reactor.callLater(0.001, work),
        )

    def cooperate(self, iterator: Any) -> Any:
        """``task.cooperate`` on this agent's clock."""
        return self._cooperator.cooperate(iterator)

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Deferred[Any]:
        sent = {k.lower(): v for k, v in headers.getAllRawHeaders()} if headers is not None else {}
        self.requests.append((method, uri, sent))
        answer = self._agent.request(method, uri, headers, bodyProducer)
        if not self.reactor.tcpClients:
            return answer
        _, _, factory, _, _ = self.reactor.tcpClients.pop()
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))
        server_address = IPv4Address("TCP", "127.0.0.1", 443)
        server = self.site.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        self.pumps.append(iosim.connect(
            server, iosim.FakeTransport(server, isServer=True, hostAddress=server_address,
                                        peerAddress=client_address),
            client, iosim.FakeTransport(client, isServer=False, hostAddress=client_address,
                                        peerAddress=server_address),
            greet=False, clock=self.reactor,
        ))
        return answer

    def flush(self) -> None:
        for pump in list(self.pumps):
            pump.flush()

    def settle(self, deferred: Deferred[Any], rounds: int = 2000) -> Any:
        """Pump until ``deferred`` fires; its result (a failure is raised)."""
        outcome: list[Any] = []
        deferred.addBoth(outcome.append)
        for _ in range(rounds):
            if outcome:
                break
            self.flush()
            self.reactor.advance(0.05)
        assert outcome, "the operation did not finish"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    def client(self) -> HTTPClient:
        return HTTPClient(self)
