"""TLS handshake failures in words: which side refused, and why, in one line.

What this module owns:

* :class:`ServerCertificateRejected` -- raised by our verify callback
  (:mod:`gsitransfer.client.tls`) when we refuse the server's certificate; a
  subclass of ``OpenSSL.SSL.Error``, so pyOpenSSL re-raises it out of the
  handshake and Twisted hands it to whoever made the request;
* :class:`HandshakeTimedOut` -- raised into a connection whose server did not
  answer our ClientHello in time (an older plain-HTTP port waits for a line);
* :func:`describe_refusal` -- an OpenSSL error turned into a
  :class:`Refusal`: the side that refused and the plain reason (our
  verification failure, or the meaning of the server's alert: unknown CA,
  certificate expired or revoked, certificate required, ...).

It depends on nothing else in the client: :mod:`gsitransfer.client.errors`
turns a :class:`Refusal` into a ``TLSRefused``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from OpenSSL import SSL

#: what the server's alert means for us, by OpenSSL's alert text
_SERVER_ALERTS = {
    "unknown ca": "it does not trust the CA that issued our certificate (unknown CA)",
    "certificate expired": "it says our certificate has expired (certificate expired)",
    "certificate revoked": "our certificate has been revoked (certificate revoked)",
    "certificate required": "it requires a client certificate (certificate required)",
    "bad certificate": "it refused our certificate (bad certificate)",
    "certificate unknown": "it refused our certificate (certificate unknown)",
    "unsupported certificate": "it cannot use our certificate (unsupported certificate)",
    "access denied": "access denied",
    "protocol version": "no TLS version in common (we need TLS 1.2 or newer)",
    "handshake failure": "handshake failure (no cipher or key type in common)",
    "decrypt error": "our signature did not verify (decrypt error: does the key match the certificate?)",
}

_NOT_TLS = ("wrong version number", "packet length too long", "record layer failure",
            "unknown protocol", "http request")


class ServerCertificateRejected(SSL.Error):
    """We refused the server's certificate; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        # shaped like OpenSSL's own errors: a list of (library, function, reason)
        super().__init__([("gsitransfer", "verify server certificate", reason)])
        self.reason = reason


class HandshakeTimedOut(SSL.Error):
    """The server sent nothing back to our ClientHello within ``seconds`` (a port that does not speak TLS)."""

    def __init__(self, seconds: float) -> None:
        super().__init__([("gsitransfer", "handshake", f"no answer to the TLS handshake in {seconds:g} s")])
        self.seconds = seconds


@dataclass(frozen=True)
class Refusal:
    """Who refused a handshake (``"server"``, or ``"client"``: us) and why, in one line."""

    side: Literal["server", "client"]
    reason: str


def is_tls_error(error: BaseException) -> bool:
    """True for the errors OpenSSL (or our verify callback) raises."""
    return isinstance(error, SSL.Error)


def speaks_no_tls(error: BaseException) -> bool:
    """True when the handshake failed because the peer's answer is not TLS (plain HTTP, say).

    OpenSSL says ``wrong version number`` (or ``packet length too long``,
    ``record layer failure``) when the first bytes it reads are not a TLS
    record, as when a plain-HTTP port answers ``HTTP/1.1 400``.
    """
    if isinstance(error, ServerCertificateRejected):
        return False
    texts = _openssl_reasons(error)
    if any("alert " in text for text in texts):
        return False
    joined = "; ".join(texts) or str(error)
    return any(marker in joined for marker in _NOT_TLS)


def describe_refusal(error: BaseException) -> Refusal:
    """Which side refused the handshake that failed with ``error``, and why."""
    if isinstance(error, ServerCertificateRejected):
        return Refusal("client", error.reason)
    texts = _openssl_reasons(error)
    for text in texts:
        if "alert " in text:
            alert = text.split("alert ", 1)[1].replace("_", " ").strip()
            return Refusal("server", _SERVER_ALERTS.get(alert, f"TLS alert: {alert}"))
    joined = "; ".join(texts) or str(error)
    if any(marker in joined for marker in _NOT_TLS):
        return Refusal("client", f"the server does not speak TLS on this port ({joined}); is it an http:// URL?")
    return Refusal("client", f"TLS handshake failed: {joined}")


def _openssl_reasons(error: BaseException) -> list[str]:
    """The reason strings of an ``OpenSSL.SSL.Error`` (its args hold (lib, func, reason) triples)."""
    texts: list[str] = []
    for arg in error.args:
        entries = arg if isinstance(arg, list) else [arg]
        for entry in entries:
            if isinstance(entry, tuple) and entry:
                texts.append(str(entry[-1]))
            elif isinstance(entry, str):
                texts.append(entry)
    return [" ".join(text.split()).lower() for text in texts if text]


__all__ = ["HandshakeTimedOut", "Refusal", "ServerCertificateRejected", "describe_refusal", "is_tls_error", "speaks_no_tls"]
