"""Mutual TLS, GSI style: the server context factory and the peer's identity.

* :class:`ServerTLS` (``context``) -- an ``IOpenSSLServerConnectionCreator``
  with reloadable trust (Globus CA directory and/or CA bundle, CRLs, RFC 3820
  proxies), for ``TLSMemoryBIOFactory(creator, False, factory)``;
* :func:`identity_from_connection` (``peer``) -- the ``IdToken`` of a verified
  connection;
* :func:`server_protocol_factory` (``factory``) -- the TLS transport of a
  listening port: the bulk fast path (``_bulk``) or Twisted's own.

Nothing here decides what an identity may do; that is the core's business.
"""

from gsitransfer.tls.context import (
    CRL_POLICIES,
    ServerTLS,
    TLSConfigError,
    TrustConfig,
    load_host_credential,
    load_trust,
)
from gsitransfer.tls.factory import server_protocol_factory
from gsitransfer.tls.peer import identity_from_connection, identity_from_transport, verified_chain

__all__ = [
    "CRL_POLICIES",
    "ServerTLS",
    "TLSConfigError",
    "TrustConfig",
    "identity_from_connection",
    "identity_from_transport",
    "load_host_credential",
    "load_trust",
    "server_protocol_factory",
    "verified_chain",
]
