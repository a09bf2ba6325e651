"""A tiny mutual-TLS server for the tests, run as a subprocess.

It listens on 127.0.0.1 (port chosen by the system) through
``server_protocol_factory(ServerTLS, factory, bulk=...)``: Twisted's
``TLSMemoryBIOFactory``, or with ``--bulk`` gsitransfer's bulk transport,
whose connections report their handshakes to ``ServerTLS`` instead of an
info callback (unless ``GSITRANSFER_FAST_PATHS=off``, which the server
honours as the GSI server does) and, once a handshake
completes, writes back the client's identity as ``key: value`` lines and
closes. Protocol with the parent on stdin/stdout:

* prints ``port: <n>`` once listening;
* a ``reload`` line on stdin calls ``ServerTLS.reload()`` and prints
  ``reloaded: True|False``;
* end of stdin stops the server.

Twisted's log goes to stderr, one event a line.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor, stdio
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from gsitransfer.fastpaths import FastPaths
from gsitransfer.tls import ServerTLS, TrustConfig, identity_from_transport, server_protocol_factory


@implementer(IHandshakeListener)
class IdentityEcho(Protocol):
    """Writes the peer's identity once the handshake is done, then closes."""

    def handshakeCompleted(self) -> None:
        token = identity_from_transport(self.transport)
        lines = [
            f"dn: {token.dn}",
            f"proxy: {token.proxy}",
            f"limited: {token.limited_proxy}",
            f"issuer: {token.issuer}",
            f"chain: {len(token.chain)}",
        ]
        self.transport.write(("\n".join(lines) + "\n").encode("utf-8"))
        self.transport.loseConnection()


class Control(LineReceiver):
    """Reads commands from the parent on stdin."""

    delimiter = b"\n"

    def __init__(self, creator: ServerTLS) -> None:
        self.creator = creator

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"reload":
            self.sendLine(f"reloaded: {self.creator.reload()}".encode())

    def connectionLost(self, reason: object = None) -> None:
        if reactor.running:
            reactor.stop()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca-dir")
    parser.add_argument("--ca-file")
    parser.add_argument("--crl-policy", default="if-present")
    parser.add_argument("--bulk", action="store_true",
                        help="serve through gsitransfer's bulk TLS transport (as the GSI server does)")
    options = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    creator = ServerTLS(options.cert, options.key,
                        TrustConfig(options.ca_dir, options.ca_file, options.crl_policy))
    control = Control(creator)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    bulk = options.bulk and FastPaths.from_environment().bulk_tls
    factory = server_protocol_factory(creator, Factory.forProtocol(IdentityEcho), bulk=bulk)
    print(f"transport: {type(factory).__name__}", flush=True)

    def listening(port: object) -> None:
        stdio.StandardIO(control)
        control.sendLine(f"port: {port.getHost().port}".encode())  # type: ignore[attr-defined]

    endpoint.listen(factory).addCallbacks(listening, lambda failure: (failure.printTraceback(), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
