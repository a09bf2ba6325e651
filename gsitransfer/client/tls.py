"""The client side of GSI-style mutual TLS, for Twisted's HTTP ``Agent``.

What this module owns:

* :class:`GSIClientPolicy` -- an ``IPolicyForHTTPS`` whose connection creators
  (``IOpenSSLClientConnectionCreator``) speak TLS 1.2 or newer, present the
  client credential with its **whole chain** (leaf, then every issuing
  certificate in the file: a ``grid-proxy-init`` proxy sends proxy and user
  certificate), and verify the server against the trusted CAs -- a Globus
  directory whose ``<hash>.N`` certificates and ``<hash>.rN`` CRLs are loaded
  explicitly, and/or a CA file -- with every chain member checked against its
  CRL when CRLs are present, and the host name (or IP address) checked with
  ``service_identity``;
* the words for our verification failures (unknown CA, expired or revoked
  server certificate, name mismatch).

Our refusals are raised from the verify callback as
:class:`~gsitransfer.client.handshake.ServerCertificateRejected`, a subclass
of ``OpenSSL.SSL.Error``: pyOpenSSL re-raises it out of the handshake and
Twisted hands it, as the connection's loss reason, to whoever made the
request. :func:`explain_tls_error` (which side refused and why) is kept here for
its callers; the words are in :mod:`gsitransfer.client.handshake`.
"""

from __future__ import annotations

import ipaddress
import weakref
from dataclasses import dataclass
from typing import Callable, cast

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ..identity import format_dn
from ..tls.context import TLSConfigError, TrustConfig, TrustMaterial, load_trust, verify_error_text
from .credentials import LoadedCredential, Trust
from .errors import ClientError, TrustError, tls_refused
from .handshake import HandshakeTimedOut, ServerCertificateRejected

#: chain depth accepted from the server (host certificate, intermediates, root)
VERIFY_DEPTH = 10
#: seconds a server has to finish the TLS handshake (it answers in one round trip or two)
HANDSHAKE_TIMEOUT = 10.0

_UNABLE_TO_GET_CRL = 3
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}

def load_trust_material(trust: Trust) -> TrustMaterial:
    """The CA certificates and CRLs ``trust`` points at, or :class:`TrustError`."""
    config = TrustConfig(
        ca_dir=str(trust.ca_dir) if trust.ca_dir is not None else None,
        ca_file=str(trust.ca_file) if trust.ca_file is not None else None,
    )
    try:
        return load_trust(config)
    except TLSConfigError as error:
        hint = " (set X509_CERT_DIR or give --ca-dir)" if trust.source == "default" else ""
        raise TrustError(f"{error}{hint}") from None


@dataclass(frozen=True)
class _Expected:
    """What one connection expects of the server."""

    hostname: str
    trust: str


VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


def build_client_context(
    credential: LoadedCredential | None, material: TrustMaterial, verify: VerifyCallback
) -> SSL.Context:
    """A client context: TLS >= 1.2, our chain and key, the server verified against ``material``."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION)
    if credential is not None:
        context.use_certificate(credential.chain[0])
        for extra in credential.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(credential.key)  # type: ignore[arg-type]
        context.check_privatekey()
    store = context.get_cert_store()
    assert store is not None
    for ca in material.cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    for crl in material.crls:
        store.add_crl(crl)
    if material.crls:
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
    context.set_verify(SSL.VERIFY_PEER, verify)
    context.set_verify_depth(VERIFY_DEPTH)
    return context


@implementer(IPolicyForHTTPS)
class GSIClientPolicy:
    """The TLS policy of every HTTPS connection the client makes.

    ``credential`` is presented to the server (None: no client certificate);
    ``trust`` says which CAs may have issued the server's certificate. What
    each connection expects (its host name) is kept in a weak mapping from
    the ``SSL.Connection`` (Twisted uses the connection's app data itself).
    A server that does not finish the handshake within ``handshake_timeout``
    seconds (on ``reactor``'s clock; default the global reactor) fails the
    connection with :class:`HandshakeTimedOut` -- a port that does not speak
    TLS may otherwise keep us waiting for its own timeout.
    """

    def __init__(
        self, credential: LoadedCredential | None, trust: Trust, material: TrustMaterial | None = None,
        *, handshake_timeout: float = HANDSHAKE_TIMEOUT, reactor: IReactorTime | None = None,
    ) -> None:
        self.credential = credential
        self.trust = trust
        self.handshake_timeout = handshake_timeout
        self.reactor = reactor
        self.material = material if material is not None else load_trust_material(trust)
        self._expected: weakref.WeakKeyDictionary[SSL.Connection, _Expected] = weakref.WeakKeyDictionary()
        self.context = build_client_context(credential, self.material, self._verify)

    def creatorForNetloc(self, hostname: bytes, port: int) -> "ClientConnectionCreator":
        """A connection creator for ``hostname``."""
        host = hostname.decode("ascii") if isinstance(hostname, bytes) else str(hostname)
        return ClientConnectionCreator(self, _Expected(host.strip("[]"), self.trust.describe()))

    def new_connection(self, expected: _Expected) -> SSL.Connection:
        """A client connection that sends SNI (for names) and checks the server against ``expected``."""
        connection = SSL.Connection(self.context, None)
        self._expected[connection] = expected
        if not _is_ip(expected.hostname):
            connection.set_tlsext_host_name(expected.hostname.encode("idna"))
        connection.set_connect_state()
        return connection

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
        """OpenSSL's verdict on one certificate of the server's chain, plus the name check at depth 0.

        Raises only ServerCertificateRejected (an SSL.Error, which Twisted
        reports as the connection's loss reason).
        """
        try:
            expected = self._expected[connection]
            if not ok:
                if code == _UNABLE_TO_GET_CRL:
                    return True  # a CA without a CRL: nothing to check its certificates against
                raise ServerCertificateRejected(_verify_failure(cert.to_cryptography(), code, depth, expected))
            if depth == 0:
                _check_name(cert.to_cryptography(), expected.hostname)
            return True
        except ServerCertificateRejected:
            raise
        except Exception as error:  # never let a bug escape as a non-SSL error
            raise ServerCertificateRejected(f"cannot check the server's certificate: {error}") from None


@implementer(IOpenSSLClientConnectionCreator)
class ClientConnectionCreator:
    """Creates the client side of each TLS connection to one host."""

    def __init__(self, policy: GSIClientPolicy, expected: _Expected) -> None:
        self.policy = policy
        self.expected = expected

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = self.policy.new_connection(self.expected)
        _HandshakeWatch(self.policy, tlsProtocol, connection)
        return connection


class _HandshakeWatch:
    """Fails a connection whose handshake has not finished ``policy.handshake_timeout`` seconds after it began."""

    def __init__(self, policy: GSIClientPolicy, tls_protocol: object, connection: SSL.Connection) -> None:
        self.tls_protocol = tls_protocol
        self.seconds = policy.handshake_timeout
        self.done = False
        connection.set_info_callback(self._info)
        self.timer = _clock(policy.reactor).callLater(self.seconds, self._expire)

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_HANDSHAKE_DONE and not self.done:
            self.done = True
            if self.timer.active():
                self.timer.cancel()

    def _expire(self) -> None:
        transport = getattr(self.tls_protocol, "transport", None)
        if self.done or transport is None or getattr(transport, "disconnected", False):
            return
        fail = getattr(self.tls_protocol, "failVerification", None)
        if fail is not None:
            fail(Failure(HandshakeTimedOut(self.seconds)))


def _clock(reactor: IReactorTime | None) -> IReactorTime:
    """``reactor``, or the global one."""
    if reactor is None:
        from twisted.internet import reactor as default

        return cast(IReactorTime, default)
    return reactor


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# Verification failures, in words
# ---------------------------------------------------------------------------


def _verify_failure(cert: x509.Certificate, code: int, depth: int, expected: _Expected) -> str:
    subject = format_dn(cert.subject)
    if code in _UNKNOWN_ISSUER:
        return (f"the server's certificate was issued by a CA we do not trust "
                f"(issuer {format_dn(cert.issuer)}; {expected.trust})")
    if code == 10:
        return f"the server's certificate {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if code == 9:
        return f"the server's certificate {subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if code == 23:
        return f"the server's certificate {subject} is revoked (certificate revoked, depth {depth})"
    if code == 12:
        return f"the CRL of {format_dn(cert.issuer)} has expired: refresh it (fetch-crl) in {expected.trust}"
    return f"the server's certificate {subject}: {verify_error_text(code)} (verify error {code} at depth {depth})"


def _check_name(cert: x509.Certificate, hostname: str) -> None:
    try:
        if _is_ip(hostname):
            verify_certificate_ip_address(cert, hostname)
        else:
            verify_certificate_hostname(cert, hostname)
    except (VerificationError, CertificateError):
        raise ServerCertificateRejected(
            f"the server's certificate is for {_names(cert)}, not {hostname} (server name mismatch)"
        ) from None


def _names(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return f"{format_dn(cert.subject)} (no subjectAltName)"
    names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(names) or "no host name"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def explain_tls_error(error: BaseException) -> ClientError:
    """One line saying which side refused the handshake and why (a TLSRefused)."""
    return tls_refused(error)


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "GSIClientPolicy",
    "ClientConnectionCreator",
    "ServerCertificateRejected",
    "build_client_context",
    "explain_tls_error",
    "load_trust_material",
]
