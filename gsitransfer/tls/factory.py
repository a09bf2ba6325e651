"""The seam between a server and its TLS transport: the bulk fast path or Twisted's own.

What this module owns: :func:`server_protocol_factory`, the one place that
decides which TLS transport serves a listening port. With ``bulk`` and the
private Twisted and pyOpenSSL internals it needs present
(:func:`gsitransfer._internals.check_internals`), it is the bulk transport of
:mod:`gsitransfer.tls._bulk`; otherwise Twisted's ``TLSMemoryBIOFactory``,
with one log line when the internals were missing. Either way ``ServerTLS``
learns how each handshake ended: the bulk transport reports it, Twisted's
connections get ``ServerTLS``'s info callback.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.protocols.tls import TLSMemoryBIOFactory

from gsitransfer._internals import BULK_TLS, InternalsReport, check_internals, log_unavailable, with_twisted_tls_hooks
from gsitransfer.tls._bulk import BulkTLSFactory, BulkTLSProtocol


def server_protocol_factory(
    tls: Any, wrapped: IProtocolFactory, *, bulk: bool,
    reactor: IReactorTime | None = None, internals: InternalsReport | None = None,
) -> TLSMemoryBIOFactory:
    """The server-side TLS factory over ``wrapped`` with ``tls`` (a ``ServerTLS`` or other connection creator).

    ``bulk``: the bulk transport when ``internals`` (checked now when None)
    says it can run, else Twisted's ``TLSMemoryBIOFactory`` and one log line
    saying why. ``reactor`` is the clock of Twisted's small-write aggregation
    (None: the global reactor).
    """
    if bulk:
        report = internals if internals is not None else check_internals()
        if report.available(BULK_TLS):
            return BulkTLSFactory(tls, False, wrapped, reactor,
                                  protocol_class=with_twisted_tls_hooks(BulkTLSProtocol))
        log_unavailable(report, BULK_TLS, "Twisted's TLSMemoryBIOFactory")
    return TLSMemoryBIOFactory(tls, False, wrapped, reactor)


__all__ = ["server_protocol_factory"]
