"""The identity of the peer of a verified TLS connection.

The identity comes only from the chain OpenSSL verified during the handshake
(``SSL_get0_verified_chain``), never from anything the client can simply
type, and is derived by :func:`gsitransfer.identity.identity_from_chain`.

:func:`release_idle_buffers` gives back the I/O buffers of a connection
between requests (idle connections are most of a busy server's connections).
"""

from __future__ import annotations

import functools
from typing import Any

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


def release_idle_buffers(transport: object) -> bool:
    """Free the memory BIOs of an idle TLS connection: True if they were replaced.

    Twisted's TLS layer talks to OpenSSL through two memory BIOs, whose
    buffers grow to the largest flight they ever held (a 16 KiB record of a
    response: 22 KiB) and never shrink. ``SSL_MODE_RELEASE_BUFFERS`` frees
    OpenSSL's own record buffers between records, not these. Between two
    requests both BIOs are empty, so they are swapped for fresh ones
    (``SSL_set_bio`` frees the old pair). A BIO still holding bytes, a
    transport that is not a memory-BIO TLS connection, or a pyOpenSSL
    without the attributes used here leaves everything as it was; so does a
    connection whose TCP side is already lost (pyOpenSSL's ``bio_shutdown``
    marked the old receiving BIO at end of data).
    """
    connection = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(connection, SSL.Connection):
        return False
    if not getattr(getattr(transport, "transport", None), "connected", False):
        return False
    into_ssl = getattr(connection, "_into_ssl", None)
    from_ssl = getattr(connection, "_from_ssl", None)
    ssl = getattr(connection, "_ssl", None)
    if into_ssl is None or from_ssl is None or ssl is None:
        return False
    ffi, lib = _binding()
    if lib is None:
        return False
    # BIO_get_mem_data returns the bytes still unread in a memory BIO
    if lib.BIO_get_mem_data(into_ssl, ffi.NULL) or lib.BIO_get_mem_data(from_ssl, ffi.NULL):
        return False
    new_into = lib.BIO_new(lib.BIO_s_mem())
    if new_into == ffi.NULL:
        return False
    new_from = lib.BIO_new(lib.BIO_s_mem())
    if new_from == ffi.NULL:
        lib.BIO_free(new_into)
        return False
    lib.SSL_set_bio(ssl, new_into, new_from)  # takes both, frees the old pair
    connection._into_ssl, connection._from_ssl = new_into, new_from
    return True


@functools.cache
def _binding() -> tuple[Any, Any]:
    """pyOpenSSL's cffi ``(ffi, lib)``, or ``(None, None)`` if it lacks what release_idle_buffers uses."""
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:
        return None, None
    wanted = ("BIO_get_mem_data", "BIO_new", "BIO_s_mem", "BIO_free", "SSL_set_bio")
    if not all(hasattr(lib, name) for name in wanted):
        return None, None
    return ffi, lib


__all__ = ["identity_from_connection", "identity_from_transport", "release_idle_buffers", "verified_chain"]
