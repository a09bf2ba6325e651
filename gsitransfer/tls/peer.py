"""The identity of the peer of a verified TLS connection.

The identity comes only from the chain OpenSSL verified during the handshake
(``SSL_get0_verified_chain``), never from anything the client can simply
type, and is derived by :func:`gsitransfer.identity.identity_from_chain`.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL

from gsitransfer.identity import IdToken, identity_from_chain


def verified_chain(connection: SSL.Connection) -> list[x509.Certificate]:
    """The peer's verified chain, leaf first; ValueError when there is none."""
    try:
        chain = connection.get_verified_chain(as_cryptography=True)
    except TypeError:  # pyOpenSSL older than 24.3: no as_cryptography
        raw = connection.get_verified_chain()
        chain = [cert.to_cryptography() for cert in raw] if raw else None
    if not chain:
        raise ValueError("the TLS connection has no verified client certificate chain")
    return list(chain)


def identity_from_connection(connection: SSL.Connection) -> IdToken:
    """The :class:`IdToken` of the client of an established, verified connection."""
    return identity_from_chain(verified_chain(connection))


def identity_from_transport(transport: object) -> IdToken:
    """Same, from a Twisted TLS transport (``TLSMemoryBIOProtocol``: ``getHandle()``)."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, SSL.Connection):
        raise ValueError("the transport is not a TLS connection")
    return identity_from_connection(handle)


__all__ = ["identity_from_connection", "identity_from_transport", "verified_chain"]
