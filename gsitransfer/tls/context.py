"""The server side of GSI-style mutual TLS: the pyOpenSSL context and its trust.

What this module owns:

* reading the host certificate and key (they must match and be in their
  validity period) and the trusted CAs: a Globus-style directory (only files
  named ``<8 hex>.<digits>`` are read as certificates and ``<8 hex>.r<digits>``
  as CRLs, loaded explicitly into the store) and/or a PEM bundle file;
* the verification rules: TLS 1.2 or newer, a client certificate required,
  RFC 3820 proxies allowed, CRLs of every chain member checked when any CRL is
  present (``crl_policy``, see :class:`TrustConfig`), a chain-depth limit, no
  session resumption (every connection is verified against the current trust);
* :class:`ServerTLS`, an ``IOpenSSLServerConnectionCreator`` for
  ``TLSMemoryBIOFactory(creator, False, factory)``, whose :meth:`ServerTLS.reload`
  swaps in a context freshly built from disk for new connections;
* the trust *generation*, bumped by each reload that changed the CAs, CRLs or
  signing policies, and :meth:`ServerTLS.chain_refusal`, which judges a chain
  verified earlier (an open connection's) against the trust in force now;
* the CAs' signing policies and namespaces (:mod:`gsitransfer.tls.policy`,
  ``signing_policy`` in :class:`TrustConfig`);
* logging a refused handshake once per connection, with the reason and the
  subject DN of the certificate that failed;
* each context's app data: a :class:`~gsitransfer.tls.peer.ChainTokens`, the
  identity of the chains recently verified on it.

Any start-up problem raises :class:`TLSConfigError` with one line naming the file.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from gsitransfer._internals import connection_info_callback
from gsitransfer.identity import format_dn, is_proxy
from gsitransfer.tls.peer import ChainTokens
from gsitransfer.tls.policy import SIGNING_POLICY_MODES, SigningPolicies, load_policies, policy_file_names

log = Logger(namespace="gsitransfer.tls")

#: accepted values of ``TrustConfig.crl_policy``
CRL_POLICIES = ("if-present", "strict")

_CA_CERT_FILE = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")
_CA_CRL_FILE = re.compile(r"^[0-9a-f]{8}\.r[0-9]+$")

X509_V_ERR_UNABLE_TO_GET_CRL = 3

#: OpenSSL's texts for the verification errors a client certificate commonly meets
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    3: "unable to get certificate CRL",
    4: "unable to decrypt certificate's signature",
    7: "certificate signature failure",
    8: "CRL signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    11: "CRL is not yet valid",
    12: "CRL has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "issuer certificate doesn't have a public key",
    25: "path length constraint exceeded",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
    32: "key usage does not include certificate signing",
    33: "unable to get CRL issuer certificate",
    34: "unhandled critical extension",
    35: "key usage does not include CRL signing",
    37: "invalid non-CA certificate (has CA markings)",
    38: "proxy path length constraint exceeded",
    39: "key usage does not include digital signature",
    40: "proxy certificates not allowed",
    41: "invalid or inconsistent certificate extension",
    72: "proxy subject name violation",
    79: "invalid CA certificate",
}

#: TLS alert descriptions (RFC 8446 section 6) the server may send when refusing
_ALERTS = {
    10: "unexpected message", 20: "bad record MAC", 40: "handshake failure",
    42: "bad certificate", 43: "unsupported certificate", 44: "certificate revoked",
    45: "certificate expired", 46: "certificate unknown", 47: "illegal parameter",
    48: "unknown CA", 49: "access denied", 50: "decode error", 51: "decrypt error",
    70: "protocol version", 71: "insufficient security", 80: "internal error",
    86: "inappropriate fallback", 109: "missing extension", 110: "unsupported extension",
    112: "unrecognized name", 116: "certificate required", 120: "no application protocol",
}


class TLSConfigError(ValueError):
    """The TLS configuration cannot be used; the message is one line naming the file."""


def verify_error_text(code: int) -> str:
    """OpenSSL's text for a certificate verification error code."""
    return _VERIFY_ERRORS.get(code, f"certificate verify error {code}")


# ---------------------------------------------------------------------------
# Configuration and what is read from disk
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustConfig:
    """Where the trusted CAs come from and how revocation is enforced.

    ``crl_policy``:

    * ``"if-present"`` (default): when any CRL is found, every certificate of
      the chain is checked against its CA's CRL; a CA that has no CRL is
      accepted (its certificates cannot be checked);
    * ``"strict"``: CRL checking is always on and every CA must have a CRL:
      a chain through a CA without one is refused.

    A CRL past its nextUpdate is an error in both modes (OpenSSL's "CRL has
    expired"), as with Globus: keep the CRLs fresh (fetch-crl).

    ``signing_policy``: how the CAs' ``<hash>.signing_policy`` and
    ``<hash>.namespaces`` files are enforced (:mod:`gsitransfer.tls.policy`):
    ``"if-present"`` (default), ``"require"`` or ``"ignore"``.
    """

    ca_dir: str | None = None
    ca_file: str | None = None
    crl_policy: str = "if-present"
    #: the longest chain accepted (leaf, proxies and CAs) is depth + 2 certificates
    verify_depth: int = 10
    signing_policy: str = "if-present"

    def __post_init__(self) -> None:
        if self.crl_policy not in CRL_POLICIES:
            raise TLSConfigError(
                f"unknown CRL policy {self.crl_policy!r} (choose one of: {', '.join(CRL_POLICIES)})"
            )
        if self.signing_policy not in SIGNING_POLICY_MODES:
            raise TLSConfigError(
                f"unknown signing policy mode {self.signing_policy!r} "
                f"(choose one of: {', '.join(SIGNING_POLICY_MODES)})"
            )
        if self.verify_depth < 1:
            raise TLSConfigError(f"verify depth must be at least 1, not {self.verify_depth}")


@dataclass(frozen=True)
class TrustMaterial:
    """The CA certificates and CRLs read for one context."""

    cas: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]

    def cas_without_crl(self) -> list[str]:
        """One-line DNs of the CAs that have no CRL here."""
        issuers = {crl.issuer for crl in self.crls}
        return [format_dn(ca.subject) for ca in self.cas if ca.subject not in issuers]

    def summary(self) -> str:
        """``3 CA certificates, 2 CRLs``."""
        return f"{len(self.cas)} CA certificate{'s' * (len(self.cas) != 1)}, " \
               f"{len(self.crls)} CRL{'s' * (len(self.crls) != 1)}"


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise TLSConfigError(f"{what} {os.fspath(path)}: {error.strerror or error}") from None


def _pem_certificates(data: bytes, path: str | os.PathLike[str], what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSConfigError(f"{what} {os.fspath(path)}: no PEM certificate could be read")
    return certs


def _crl(data: bytes, path: Path) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise TLSConfigError(f"CRL {path}: not a CRL (PEM or DER)") from None


def load_ca_directory(directory: str) -> TrustMaterial:
    """CA certificates (``<hash>.N``) and CRLs (``<hash>.rN``) of a Globus trusted directory."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise TLSConfigError(f"CA directory {directory}: {error.strerror or error}") from None
    base = Path(directory)
    cas = [cert for name in names if _CA_CERT_FILE.match(name)
           for cert in _pem_certificates(_read(base / name, "CA certificate"), base / name, "CA certificate")]
    if not cas:
        raise TLSConfigError(f"CA directory {directory}: no CA certificates (<hash>.0 files) in it")
    crls = [_crl(_read(base / name, "CRL"), base / name) for name in names if _CA_CRL_FILE.match(name)]
    return TrustMaterial(tuple(cas), tuple(crls))


def load_trust(config: TrustConfig) -> TrustMaterial:
    """Everything the config points at; at least one CA certificate."""
    if not config.ca_dir and not config.ca_file:
        raise TLSConfigError("no trusted CA: give a CA directory (--ca-dir) or a CA file (--ca-file)")
    cas: list[x509.Certificate] = []
    crls: list[x509.CertificateRevocationList] = []
    if config.ca_dir:
        material = load_ca_directory(config.ca_dir)
        cas += material.cas
        crls += material.crls
    if config.ca_file:
        cas += _pem_certificates(_read(config.ca_file, "CA file"), config.ca_file, "CA file")
    return TrustMaterial(tuple(_unique(cas)), tuple(crls))


def _unique(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    out = []
    for cert in certs:
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint not in seen:
            seen.add(fingerprint)
            out.append(cert)
    return out


@dataclass(frozen=True)
class HostCredential:
    """The server's certificate (with any chain after it) and its private key."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes


def load_host_credential(
    cert_file: str, key_file: str, now: datetime.datetime | None = None
) -> HostCredential:
    """Read the host certificate and key; they must match and the certificate be valid ``now``."""
    chain = _pem_certificates(_read(cert_file, "server certificate"), cert_file, "server certificate")
    data = _read(key_file, "server key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"server key {key_file}: encrypted keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"server key {key_file}: not a PEM private key") from None
    if key.public_key() != chain[0].public_key():
        raise TLSConfigError(f"server key {key_file} does not match the certificate {cert_file}")
    _check_validity(chain[0], cert_file, now or datetime.datetime.now(datetime.timezone.utc))
    return HostCredential(tuple(chain), key)


def _check_validity(cert: x509.Certificate, path: str, now: datetime.datetime) -> None:
    if cert.not_valid_after_utc < now:
        raise TLSConfigError(f"server certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if cert.not_valid_before_utc > now:
        raise TLSConfigError(
            f"server certificate {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )


# ---------------------------------------------------------------------------
# The context
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyFailure:
    """The first certificate verification failure of a connection."""

    depth: int
    code: int
    reason: str
    subject: str


@dataclass
class _Handshake:
    """Per-connection bookkeeping for the refusal log line.

    It holds the TLS protocol only weakly: the protocol holds the connection,
    which is this record's weak key, and must stay collectable.
    """

    protocol: Callable[[], object]
    failure: VerifyFailure | None = None
    #: the server has sent its CertificateRequest
    asked_certificate: bool = False
    logged: bool = False

    def peer(self) -> str:
        transport = getattr(self.protocol(), "transport", None)
        address = transport.getPeer() if transport is not None else None
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else "unknown peer"


def build_context(
    credential: HostCredential,
    trust: TrustMaterial,
    config: TrustConfig,
    verify_callback: Callable[[SSL.Connection, crypto.X509, int, int, int], bool],
    info_callback: Callable[[SSL.Connection, int, int], None] | None,
) -> SSL.Context:
    """A server context requiring a client certificate verified against ``trust``.

    ``info_callback`` (None: none) watches every connection's handshake.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET
        | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
    )
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # free each connection's 16+ KiB record buffers while it is idle (as nginx does)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_session_id(b"gsitransfer")
    context.use_certificate(credential.chain[0])
    for extra in credential.chain[1:]:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    context.use_privatekey(credential.key)  # type: ignore[arg-type]
    context.check_privatekey()
    store = context.get_cert_store()
    assert store is not None
    for ca in trust.cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    for crl in trust.crls:
        store.add_crl(crl)
    flags = crypto.X509StoreFlags.ALLOW_PROXY_CERTS
    if trust.crls or config.crl_policy == "strict":
        flags |= crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL
    store.set_flags(flags)
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify_callback)
    context.set_verify_depth(config.verify_depth)
    if info_callback is not None:
        context.set_info_callback(info_callback)
    return context


def ca_policies(material: TrustMaterial, trust: TrustConfig) -> SigningPolicies:
    """The signing policies and namespaces of the trusted CAs (``<hash>.signing_policy``, ``<hash>.namespaces``)."""
    cas = [(format_dn(ca.subject), f"{crypto.X509.from_cryptography(ca).subject_name_hash():08x}")
           for ca in material.cas]
    return load_policies(trust.ca_dir, cas, trust.signing_policy)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates the server side of each TLS connection, with reloadable trust.

    Use it as ``TLSMemoryBIOFactory(ServerTLS(...), False, factory)``. The
    constructor reads everything and raises :class:`TLSConfigError` on any
    problem; :meth:`reload` re-reads host credential, CAs and CRLs for new
    connections when any of those files changed (cheap enough to call on a
    timer) and keeps the current context if that fails.
    """

    def __init__(
        self, cert_file: str, key_file: str, trust: TrustConfig,
        *, clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.trust = trust
        self._clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self._handshakes: weakref.WeakKeyDictionary[SSL.Connection, _Handshake] = weakref.WeakKeyDictionary()
        #: told the reason of each handshake refused (the metrics: ``--metrics``), after it is logged
        self.on_refusal: Callable[[str], None] | None = None
        #: the info callback set on each connection whose transport does not report its handshake
        self._connection_info = connection_info_callback(self._info)
        self._stamp = self._files_stamp()
        #: bumped by each reload that changed the trust (CAs, CRLs, signing policies)
        self._generation = 0
        self._recheck_store: crypto.X509Store | None = None
        self._context, self.material, self.policies = self._build()
        self._trust_digest = _trust_digest(self.material, self.policies)
        self._adopt(self._context)

    @property
    def context(self) -> SSL.Context:
        """The context new connections get."""
        return self._context

    @property
    def generation(self) -> int:
        """The trust generation: bumped by each reload that changed the CAs, CRLs or signing policies."""
        return self._generation

    def now(self) -> datetime.datetime:
        """The time certificates' validity is judged at (the clock given, or the system's)."""
        return self._clock()

    def _adopt(self, context: SSL.Context) -> None:
        """Stamp a context built for the current generation (its app data: a ChainTokens)."""
        tokens = context.get_app_data()
        if isinstance(tokens, ChainTokens):
            tokens.judge, tokens.generation = self, self._generation

    def _build(self) -> tuple[SSL.Context, TrustMaterial, SigningPolicies]:
        credential = load_host_credential(self.cert_file, self.key_file, self._clock())
        material = load_trust(self.trust)
        if self.trust.crl_policy == "strict":
            for dn in material.cas_without_crl():
                log.warn("CRL policy strict: CA {ca} has no CRL, the certificates it issued are refused", ca=dn)
        policies = self._load_policies(material)
        try:
            # with a per-connection callback available, the context has none: transports
            # that report the end of each handshake (handshake_completed / handshake_failed)
            # spare their connections the ~23 calls from C into Python of every handshake
            context = build_context(
                credential, material, self.trust, self._verify,
                None if self._connection_info is not None else self._info,
            )
        except (SSL.Error, crypto.Error) as error:
            raise TLSConfigError(f"server certificate {self.cert_file}: OpenSSL refused it ({error})") from None
        context.set_app_data(ChainTokens())
        return context, material, policies

    def _load_policies(self, material: TrustMaterial) -> SigningPolicies:
        policies = ca_policies(material, self.trust)
        for policy in policies.by_ca.values():
            if policy.broken is not None:
                log.error("signing policy unreadable, the CA's certificates are refused: {reason}",
                          reason=policy.broken)
        if self.trust.signing_policy == "require":
            for dn in policies.without_policy():
                log.warn("signing policy require: CA {ca} has no signing_policy or namespaces file, "
                         "the certificates it issued are refused", ca=dn)
        return policies

    def reload(self, force: bool = False) -> bool:
        """Rebuild the context from disk for new connections if a file changed (or ``force``).

        Returns True when a new context is in force. When the rebuild fails the
        current context stays, one line is logged, and the same files are not
        tried again until one of them changes.
        """
        stamp = self._files_stamp()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            context, material, policies = self._build()
        except TLSConfigError as error:
            log.error("TLS reload failed, keeping the previous trust: {error}", error=str(error))
            return False
        digest = _trust_digest(material, policies)
        if digest != self._trust_digest:
            # open connections re-judge their chains at their next request
            self._generation += 1
            self._trust_digest = digest
            self._recheck_store = None
        self._context, self.material, self.policies = context, material, policies
        self._adopt(context)
        log.info("TLS trust reloaded: {summary}", summary=self.material.summary())
        return True

    def chain_refusal(self, chain: Sequence[x509.Certificate], reverify: bool) -> str | None:
        """Why a chain OpenSSL verified earlier (leaf first, anchor last) is refused now; None: accepted.

        The CAs' signing policies are always applied. With ``reverify`` (the
        chain was verified under an older generation) the chain is verified
        again against the current CAs (a removed CA: refused) and every
        certificate checked against the current CRLs (``crl_policy`` as at a
        handshake), at the time of this object's clock.
        """
        if reverify:
            reason = self._untrusted(chain) or self._revoked(chain)
            if reason is not None:
                return reason
        return self.policies.refusal(chain)

    def _untrusted(self, chain: Sequence[x509.Certificate]) -> str | None:
        store = self._recheck_store
        if store is None:
            store = self._recheck_store = trust_store(self.material)
        failure = chain_failure(store, chain, self._clock())
        if failure is None:
            return None
        return f"the certificate chain is no longer trusted ({failure.reason})"

    def _revoked(self, chain: Sequence[x509.Certificate]) -> str | None:
        return revocation_refusal(chain, self.material, self.trust.crl_policy, self._clock())

    def _files_stamp(self) -> tuple[tuple[str, int, int, int, int], ...]:
        """(path, mtime, ctime, size, inode) of every file a build reads; missing files count too."""
        paths = [self.cert_file, self.key_file, self.trust.ca_file or ""]
        if self.trust.ca_dir:
            try:
                names = sorted(os.listdir(self.trust.ca_dir))
            except OSError:
                names = []
            policy_files = set(policy_file_names(names))
            paths += [os.path.join(self.trust.ca_dir, name) for name in names
                      if _CA_CERT_FILE.match(name) or _CA_CRL_FILE.match(name) or name in policy_files]
        return tuple(_file_stamp(path) for path in paths if path)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A new server-side connection on the current context.

        A transport whose ``reports_handshakes`` is true tells
        :meth:`handshake_completed` or :meth:`handshake_failed` how its
        handshake ended; any other gets the info callback that watches it.
        """
        connection = SSL.Connection(self._context, None)
        self._handshakes[connection] = _Handshake(_weak(tlsProtocol))
        if self._connection_info is not None and not getattr(tlsProtocol, "reports_handshakes", False):
            self._connection_info.install(connection)
        return connection

    def _refused(self, state: _Handshake, alert: str) -> None:
        """Log a refused handshake, and tell :attr:`on_refusal` its reason (the verify error, else the alert)."""
        _log_refusal(state, alert)
        if self.on_refusal is not None:
            self.on_refusal(state.failure.reason if state.failure is not None else alert)

    def handshake_completed(self, connection: SSL.Connection) -> None:
        """A reporting transport's handshake succeeded: its record is not kept (idle memory)."""
        self._handshakes.pop(connection, None)

    def handshake_failed(self, connection: SSL.Connection, failure: object) -> None:
        """A reporting transport's handshake failed with ``failure``: log the refusal as :meth:`_info` would.

        What the info callback learns from the fatal alert the server sends is
        read from OpenSSL's reason instead; a handshake the peer abandoned
        (end of data, a reset: no alert sent) is not logged, as before.
        """
        state = self._handshakes.pop(connection, None)
        if state is None or state.logged:
            return
        reasons = _error_reasons(failure)
        if state.failure is None and (not reasons or reasons & _NO_ALERT_REASONS):
            return
        state.logged = True
        tls13 = connection.get_protocol_version_name() == "TLSv1.3"
        if _NO_CERTIFICATE_REASON in reasons:
            alert = f"no client certificate ({_ALERTS[116] if tls13 else _ALERTS[40]})"
        else:
            alert = next((_REASON_ALERTS[r] for r in reasons if r in _REASON_ALERTS), None) or sorted(reasons)[0]
        self._refused(state, alert)

    # -- callbacks (never raise: pyOpenSSL would re-raise out of the handshake) --

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
        if ok:
            return True
        if code == X509_V_ERR_UNABLE_TO_GET_CRL and self.trust.crl_policy == "if-present":
            return True
        state = self._handshakes.get(connection)
        if state is not None and state.failure is None:
            state.failure = VerifyFailure(depth, code, verify_error_text(code), _subject(cert))
        return False

    def _info(self, connection: SSL.Connection, where: int, value: int) -> None:
        state = self._handshakes.get(connection)
        if state is None or state.logged:
            return
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            # accepted: alerts after this (a client closing without close_notify) are no
            # refusal, and the record is not kept for the connection's life (idle memory)
            del self._handshakes[connection]
            return
        if where & SSL.SSL_CB_LOOP and not state.asked_certificate:
            state.asked_certificate = b"certificate request" in connection.get_state_string()
        if not where & SSL.SSL_CB_WRITE_ALERT or value >> 8 != 2:  # only fatal alerts we send
            return
        state.logged = True
        alert = _ALERTS.get(value & 0xFF, f"alert {value & 0xFF}")
        if state.failure is None and state.asked_certificate and connection.get_peer_certificate() is None:
            alert = f"no client certificate ({alert})"
        self._refused(state, alert)


def trust_store(material: TrustMaterial) -> crypto.X509Store:
    """An X509Store of the trusted CAs that takes RFC 3820 proxies (as the server's contexts do)."""
    store = crypto.X509Store()
    for ca in material.cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    store.set_flags(crypto.X509StoreFlags.ALLOW_PROXY_CERTS)
    return store


def chain_failure(store: crypto.X509Store, chain: Sequence[x509.Certificate], when: datetime.datetime) -> VerifyFailure | None:
    """Why OpenSSL does not verify ``chain`` (leaf first) against ``store`` at ``when``; None: it does."""
    store.set_time(when)
    leaf = crypto.X509.from_cryptography(chain[0])
    others = [crypto.X509.from_cryptography(cert) for cert in chain[1:]]
    try:
        crypto.X509StoreContext(store, leaf, others).verify_certificate()
    except crypto.X509StoreContextError as error:
        code = error.errors[0] if error.errors and isinstance(error.errors[0], int) else -1
        depth = error.errors[1] if len(error.errors) > 1 and isinstance(error.errors[1], int) else -1
        subject = _subject(error.certificate) if error.certificate is not None else "(unknown)"
        return VerifyFailure(depth, code, verify_error_text(code), subject)
    return None


def verified_chain_of(
    store: crypto.X509Store, chain: Sequence[x509.Certificate], when: datetime.datetime
) -> list[x509.Certificate]:
    """The chain OpenSSL builds from ``chain`` to a trusted CA (leaf first, the CA last), as a handshake's
    verified chain is; :func:`chain_failure` must have found nothing wrong."""
    store.set_time(when)
    leaf = crypto.X509.from_cryptography(chain[0])
    others = [crypto.X509.from_cryptography(cert) for cert in chain[1:]]
    built = crypto.X509StoreContext(store, leaf, others).get_verified_chain()
    return [cert.to_cryptography() for cert in built]


def revocation_refusal(
    chain: Sequence[x509.Certificate], material: TrustMaterial, crl_policy: str, now: datetime.datetime
) -> str | None:
    """Why the CRLs refuse ``chain`` (revoked, a CRL expired, none under ``strict``); None: they do not."""
    crls: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
    for crl in material.crls:
        crls.setdefault(crl.issuer, []).append(crl)
    checking = bool(material.crls) or crl_policy == "strict"
    if not checking:
        return None
    for index, cert in enumerate(chain):
        if cert.issuer == cert.subject:
            continue
        issuer = chain[index + 1] if index + 1 < len(chain) else None
        found = [crl for crl in crls.get(cert.issuer, ())
                 if issuer is not None and _crl_signed_by(crl, issuer)]
        if not found:
            if crl_policy == "strict" and not is_proxy(cert):
                return f"no CRL for the CA of {format_dn(cert.subject)} (CRL policy strict)"
            continue
        for crl in found:
            next_update = crl.next_update_utc
            if next_update is not None and next_update < now:
                return f"the CRL of {format_dn(crl.issuer)} has expired"
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return f"certificate revoked: {format_dn(cert.subject)}"
    return None


def _trust_digest(material: TrustMaterial, policies: SigningPolicies) -> bytes:
    """A digest of what a chain is judged by: the CAs, the CRLs and the signing policies."""
    digest = hashlib.sha256()
    for der in sorted(ca.public_bytes(serialization.Encoding.DER) for ca in material.cas):
        digest.update(der)
    digest.update(b"--crls--")
    for der in sorted(crl.public_bytes(serialization.Encoding.DER) for crl in material.crls):
        digest.update(der)
    digest.update(b"--policies--")
    digest.update(repr((policies.mode, sorted(policies.by_ca.items()))).encode("utf-8", "surrogateescape"))
    return digest.digest()


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    public_key = issuer.public_key()
    try:
        return crl.issuer == issuer.subject and crl.is_signature_valid(public_key)  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _file_stamp(path: str) -> tuple[str, int, int, int, int]:
    try:
        status = os.stat(path)
    except OSError:
        return (path, -1, -1, -1, -1)
    return (path, status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino)


def _weak(value: object) -> Callable[[], object]:
    try:
        return weakref.ref(value)
    except TypeError:  # not weak-referenceable: keep no reference at all
        return lambda: None


def _subject(cert: crypto.X509) -> str:
    try:
        return format_dn(cert.to_cryptography().subject)
    except Exception:  # a certificate cryptography cannot parse
        return "(unparsable subject)"


def _log_refusal(state: _Handshake, alert: str) -> None:
    failure = state.failure
    if failure is None:
        log.warn("TLS handshake refused from {peer}: {alert}", peer=state.peer(), alert=alert)
        return
    log.warn(
        "TLS client certificate refused from {peer}: {reason} (verify error {code} at depth {depth}, "
        "subject {subject})",
        peer=state.peer(), reason=failure.reason, code=failure.code, depth=failure.depth,
        subject=failure.subject,
    )


#: OpenSSL's reason when a client sent no certificate
_NO_CERTIFICATE_REASON = "peer did not return a certificate"
#: reasons for which the server sends no alert (the info callback saw none: nothing was logged)
_NO_ALERT_REASONS = frozenset({"unexpected eof while reading", "http request", "https proxy request"})
#: the alert OpenSSL sends for a reason (RFC 8446 names, as the info callback logs them)
_REASON_ALERTS = {
    "unsupported protocol": _ALERTS[70],
    "wrong version number": _ALERTS[70],
    "no shared cipher": _ALERTS[40],
    "no suitable signature algorithm": _ALERTS[40],
    "no suitable key share": _ALERTS[40],
    "certificate verify failed": _ALERTS[42],
    "inappropriate fallback": _ALERTS[86],
    "missing extension": _ALERTS[109],
    "unsupported extension": _ALERTS[110],
    "bad extension": _ALERTS[47],
    "decryption failed or bad record mac": _ALERTS[20],
    "unexpected message": _ALERTS[10],
    "length mismatch": _ALERTS[50],
    "bad packet length": _ALERTS[50],
}


def _error_reasons(failure: object) -> frozenset[str]:
    """OpenSSL's reason strings in a failed handshake's ``SSL.Error`` (empty: not an OpenSSL error)."""
    error = getattr(failure, "value", failure)
    if not isinstance(error, SSL.Error) or isinstance(error, SSL.SysCallError):
        return frozenset()
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return frozenset(str(entry[2]) for entry in entries if isinstance(entry, tuple) and len(entry) == 3)


__all__ = [
    "CRL_POLICIES",
    "HostCredential",
    "ServerTLS",
    "TLSConfigError",
    "TrustConfig",
    "TrustMaterial",
    "VerifyFailure",
    "build_context",
    "ca_policies",
    "chain_failure",
    "verified_chain_of",
    "revocation_refusal",
    "trust_store",
    "load_ca_directory",
    "load_host_credential",
    "load_trust",
    "verify_error_text",
]
