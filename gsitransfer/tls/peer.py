"""The identity of the peer of a verified TLS connection.

The identity comes only from the chain OpenSSL verified during the handshake
(``SSL_get0_verified_chain``), never from anything the client can simply
type, and is derived by :func:`gsitransfer.identity.identity_from_chain`.
A :class:`ChainTokens` set as the ``SSL.Context``'s app data (``ServerTLS``
does) remembers the token of each chain recently verified on that context, so
a client reconnecting with the same chain costs a lookup by the chain's DER
(~25 us), not a parse (~330 us, a tenth of a new-connection GET's server CPU).

:func:`release_idle_buffers` gives back the I/O buffers of a connection
between requests (idle connections are most of a busy server's connections).
"""

from __future__ import annotations

import datetime
from typing import Protocol, Sequence

from cryptography import x509
from OpenSSL import SSL, crypto

from gsitransfer._internals import replace_idle_memory_bios, verified_chain_der_from_openssl
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


def verified_chain_der(connection: SSL.Connection) -> tuple[bytes, ...]:
    """The DER of each certificate of the peer's verified chain, leaf first; ValueError when there is none.

    Cheaper than :func:`verified_chain` (no ``cryptography`` objects):
    pyOpenSSL's ``X509`` wrappers only take a reference to OpenSSL's.
    """
    direct = verified_chain_der_from_openssl(connection)
    if direct is not None:
        return direct
    chain = connection.get_verified_chain()
    if not chain:
        raise ValueError("the TLS connection has no verified client certificate chain")
    return tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) for cert in chain)


class ChainJudge(Protocol):
    """The trust in force now (``ServerTLS``), which judges chains verified earlier."""

    @property
    def generation(self) -> int:
        """Bumped by each reload that changed the trust."""

    def now(self) -> datetime.datetime:
        """The time validity is judged at."""

    def chain_refusal(self, chain: Sequence[x509.Certificate], reverify: bool) -> str | None:
        """Why the chain is refused now (None: accepted); ``reverify``: against the current CAs and CRLs too."""


class ChainTokens:
    """The :class:`IdToken` of each verified chain recently seen, looked up by the chain's DER.

    A token is a function of the chain's bytes alone (its fields come from
    the certificates, nothing from the connection or the clock), so an equal
    chain gets the very same token without parsing its names and extensions
    again. The key is the whole chain, byte for byte: nothing a different
    chain could share. The cache saves the derivation, never the
    verification, which every handshake still does; it is asked only about
    established connections, whose chain OpenSSL verified (the web layer
    runs after the handshake succeeded).
    At most ``size`` chains are kept, the least recently used one goes first.
    One belongs to one ``SSL.Context`` (its app data): a reload, which builds
    a new context, starts with an empty one.

    ``judge`` (set by ``ServerTLS``) is the trust in force now and
    ``generation`` the trust generation this context was built under: a
    connection made on it was verified under that generation.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._tokens: dict[tuple[bytes, ...], IdToken] = {}
        self.judge: ChainJudge | None = None
        self.generation = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def token(self, chain_der: Sequence[bytes]) -> IdToken:
        """The token of the chain (DER, leaf first); ValueError as :func:`identity_from_chain`."""
        key = tuple(chain_der)
        tokens = self._tokens
        token = tokens.pop(key, None)
        if token is None:
            token = identity_from_chain([x509.load_der_x509_certificate(der) for der in key])
            if len(tokens) >= self.size:
                del tokens[next(iter(tokens))]
        tokens[key] = token
        return token


def identity_from_connection(connection: SSL.Connection) -> IdToken:
    """The :class:`IdToken` of the client of an established, verified connection.

    Through the context's :class:`ChainTokens` when it has one.
    """
    tokens = connection.get_context().get_app_data()
    if isinstance(tokens, ChainTokens):
        return tokens.token(verified_chain_der(connection))
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
    marked the old receiving BIO at end of data). Safe with the bulk
    transport and with Twisted's own ``TLSMemoryBIOProtocol`` alike: both
    reach the BIOs only through the connection, which holds the new pair.
    """
    connection = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(connection, SSL.Connection):
        return False
    if not getattr(getattr(transport, "transport", None), "connected", False):
        return False
    return replace_idle_memory_bios(connection)


def chain_tokens_of(connection: object) -> ChainTokens | None:
    """The :class:`ChainTokens` of the connection's context, if it is a connection and has one."""
    if not isinstance(connection, SSL.Connection):
        return None
    tokens = connection.get_context().get_app_data()
    return tokens if isinstance(tokens, ChainTokens) else None


__all__ = ["ChainJudge", "ChainTokens", "chain_tokens_of", "identity_from_connection", "identity_from_transport", "release_idle_buffers", "verified_chain",
           "verified_chain_der"]
