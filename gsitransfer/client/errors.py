"""Every error the client raises, each a one-line message a person can act on.

The hierarchy::

    ClientError                 base; ``message`` is one line, ``exit_code`` the CLI's status
    ├── CredentialError         no usable certificate/proxy (missing, expired, wrong pass phrase)   3
    ├── TrustError              no usable trusted CAs (X509_CERT_DIR, --ca-dir, --ca-file)          3
    ├── ConnectionFailed        the server cannot be reached, or the connection broke               4
    │   ├── TLSRefused          the TLS handshake failed; ``side`` says who refused and why          4
    │   └── DownloadInterrupted the body stopped before its end (the partial file is kept)          4
    │   └── NotTLS              an https:// URL's port answered in plain HTTP (not TLS)             4
    ├── UsageError              the command cannot mean what it says (checked before any transfer)  2
    │   ├── NoPrefix            the URL names no prefix; ``prefixes`` are the server's              2
    │   └── NotAFile            a download URL names a prefix or a directory, not a file            2
    ├── HTTPStatusError         the server answered with an error status and a one-line reason      1
    ├── UploadRefused           the handler refused the manifest (``return_code: 1``); ``hints``    1
    ├── UploadIncomplete        some files of an upload failed (``report`` has each outcome)        1
    ├── ChecksumError           the bytes do not have the expected MD5                              1
    └── ProtocolError           the server's answer is not what the protocol says                   1

:func:`explain` turns whatever a Twisted request failed with (connection
errors, ``ResponseNeverReceived``'s nested reasons, OpenSSL errors) into one
of these; the words for TLS refusals come from :mod:`gsitransfer.client.handshake`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable
import re
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.python.failure import Failure

from .handshake import HandshakeTimedOut, describe_refusal, is_tls_error, speaks_no_tls

if TYPE_CHECKING:
    from .results import UploadReport

#: exit statuses of the command line (see docs/client.md)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130


class ClientError(Exception):
    """Base of every client error; ``message`` is one line of plain text."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)


class CredentialError(ClientError):
    """No usable client credential (certificate and key, or proxy)."""

    exit_code = EXIT_CREDENTIALS


class TrustError(ClientError):
    """No usable trusted CA certificates."""

    exit_code = EXIT_CREDENTIALS


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke."""

    exit_code = EXIT_NETWORK


class TLSRefused(ConnectionFailed):
    """The TLS handshake failed; ``side`` is ``"server"`` or ``"client"`` (us)."""

    def __init__(self, side: str, reason: str) -> None:
        self.side = side
        self.reason = reason
        who = "the server refused us" if side == "server" else "we refused the server"
        super().__init__(f"TLS: {who}: {reason}")


class NotTLS(TLSRefused):
    """An ``https://`` URL's port does not speak TLS: it answered in plain HTTP, or (``silent_for``
    seconds) did not answer the handshake at all."""

    def __init__(self, where: str, plain_url: str, silent_for: float | None = None) -> None:
        self.where = where
        self.plain_url = plain_url
        self.silent_for = silent_for
        if silent_for is None:
            text = f"{where} answered in plain HTTP, not TLS: use {plain_url} (or the server's TLS port)"
        else:
            text = (f"{where} did not answer the TLS handshake in {silent_for:g} s: if it speaks plain HTTP, "
                    f"use {plain_url} (or the server's TLS port)")
        ConnectionFailed.__init__(self, text)
        self.side = "client"
        self.reason = self.message

    @classmethod
    def at(cls, url: str, silent_for: float | None = None) -> "NotTLS":
        """The error for ``url`` (``https://``): its ``host:port`` and the same URL with ``http://``."""
        return cls(_where(url), urlunsplit(("http", *urlsplit(url)[1:])), silent_for)

    def for_url(self, url: str) -> "NotTLS":
        """The same error told with the URL the user gave (not the request's, ``.../manifest``)."""
        return NotTLS.at(url, self.silent_for) if urlsplit(url).scheme == "https" else self


class DownloadInterrupted(ConnectionFailed):
    """The download stopped at ``received`` of ``total`` bytes; the partial file is kept."""

    def __init__(self, url: str, received: int, total: int | None, cause: str) -> None:
        self.url = url
        self.received = received
        self.total = total
        of_total = f" of {total}" if total is not None else ""
        super().__init__(
            f"download interrupted after {received}{of_total} bytes ({cause}); "
            "run the same command again to resume"
        )


class UsageError(ClientError):
    """What was asked cannot work as written (a URL of the wrong kind, options that conflict)."""

    exit_code = EXIT_USAGE


#: what follows the prefix URL in a command's example, by command
_EXAMPLE_TAIL = {"upload": " FILE", "download": "/NAME DEST", "ls": "", "status": "/KEY", "cancel": "/KEY"}


class NoPrefix(UsageError):
    """``url`` names no prefix; ``prefixes`` are the ones the server lists (None: it did not say).

    The message ends with an example of ``command`` with the first prefix:
    ``https://localhost:8443/ names no prefix; this server has /data/ — e.g.
    gsitransfer upload https://localhost:8443/data FILE``.
    """

    def __init__(self, url: str, origin: str, prefixes: tuple[str, ...] | None, command: str) -> None:
        self.url = url
        self.prefixes = prefixes
        if prefixes is None:
            has = "the server does not list its prefixes: add one to the URL, e.g. " \
                  f"gsitransfer {command} {origin}/PREFIX{_EXAMPLE_TAIL.get(command, '')}"
        elif prefixes:
            example = f"{origin}/{prefixes[0].strip('/')}{_EXAMPLE_TAIL.get(command, '')}"
            has = f"this server has {' '.join(prefixes)} \u2014 e.g. gsitransfer {command} {example}"
        else:
            has = "this server has no prefixes"
        super().__init__(f"{url} names no prefix; {has}")


class NotAFile(UsageError):
    """A download URL names a prefix (or a directory, or a listing) instead of a file."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(message)


class HTTPStatusError(ClientError):
    """The server answered ``status`` with the one-line ``reason``."""

    def __init__(self, status: int, reason: str, method: str = "", url: str = "") -> None:
        self.status = status
        self.reason = " ".join(reason.split()) or "(no reason given)"
        self.method = method
        self.url = url
        where = f" ({method} {url})" if url else ""
        super().__init__(f"{status} {self.reason}{where}")


#: the handler's reason when another file is stored under a manifest's name
_NAME_TAKEN = re.compile(r"a file named .+ already exists")

#: what to do about a name that another file already has (there is no DELETE of files yet)
NAME_TAKEN_HINT = ("hint: a different file is stored under that name: upload under another name "
                   "(--as NEWNAME) or ask the server's administrator to remove it")


class UploadRefused(ClientError):
    """The handler refused the manifest; ``reasons`` has one ``error_reason`` per refused file.

    ``hints`` are lines saying what to do about the refusal, when known (a
    taken name: :data:`NAME_TAKEN_HINT`).
    """

    def __init__(self, reasons: Iterable[str]) -> None:
        self.reasons = tuple(reasons) or ("the server refused the upload (no reason given)",)
        self.hints = (NAME_TAKEN_HINT,) if any(_NAME_TAKEN.search(r) for r in self.reasons) else ()
        super().__init__("; ".join(self.reasons))


class UploadIncomplete(ClientError):
    """Some files of an upload failed; ``report.files`` says which and why."""

    def __init__(self, report: "UploadReport") -> None:
        self.report = report
        failed = [f for f in report.files if f.error is not None]
        super().__init__(
            f"{len(failed)} of {len(report.files)} files failed "
            f"(transfer {report.transfer_key}: "
            f"re-send them with: gsitransfer upload --transfer-key={report.transfer_key} URL FILE...)"
        )


class ChecksumError(ClientError):
    """The data's MD5 (or size) is not the expected one; ``resumed``: the data was a resumed download."""

    def __init__(self, message: str, resumed: bool = False) -> None:
        super().__init__(message)
        self.resumed = resumed


class ProtocolError(ClientError):
    """The server's answer does not follow the protocol."""


# ---------------------------------------------------------------------------
# Failures of Twisted requests -> ClientError
# ---------------------------------------------------------------------------


def explain(failure: Failure | BaseException, url: str) -> BaseException:
    """The :class:`ClientError` for what a request to ``url`` failed with.

    Errors that are already ClientErrors and programming errors are returned
    unchanged, a cancellation (even wrapped by the Agent) as CancelledError;
    the caller raises what it gets.
    """
    value = _exception_of(failure)
    if isinstance(value, ClientError):
        return value
    if _cancelled(value):
        return defer.CancelledError()
    tls = _first_tls_error(value)
    if tls is not None:
        if isinstance(tls, HandshakeTimedOut):
            return NotTLS.at(url, tls.seconds)
        if urlsplit(url).scheme == "https" and speaks_no_tls(tls):
            return NotTLS.at(url)
        return tls_refused(tls)
    return _explain_network(value, url)


def tls_refused(error: BaseException) -> TLSRefused:
    """The TLSRefused for a failed handshake: which side refused and why."""
    refusal = describe_refusal(error)
    return TLSRefused(refusal.side, refusal.reason)


def _exception_of(failure: Failure | BaseException) -> BaseException:
    """The exception a Failure holds (a Failure without one stands for itself)."""
    if isinstance(failure, Failure) and failure.value is not None:
        return failure.value
    return failure


def _nested(value: BaseException) -> list[BaseException]:
    """The exceptions wrapped by Twisted's ``_WrapperException`` types (reasons lists)."""
    reasons: object = getattr(value, "reasons", None) or []
    if not isinstance(reasons, (list, tuple)):
        return []
    return [_exception_of(r) for r in reasons if isinstance(r, BaseException)]


def _cancelled(value: BaseException) -> bool:
    """True when the request failed because it was cancelled (possibly wrapped by the Agent)."""
    if isinstance(value, defer.CancelledError):
        return True
    return any(_cancelled(inner) for inner in _nested(value))


def _first_tls_error(value: BaseException) -> BaseException | None:
    if is_tls_error(value):
        return value
    for inner in _nested(value):
        found = _first_tls_error(inner)
        if found is not None:
            return found
    return None


def _where(url: str) -> str:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or default}"


def _explain_network(value: BaseException, url: str) -> BaseException:
    where = _where(url)
    if isinstance(value, net_error.ConnectionRefusedError):
        return ConnectionFailed(f"cannot connect to {where}: connection refused (is the server running there?)")
    if isinstance(value, net_error.DNSLookupError):
        return ConnectionFailed(f"cannot connect to {where}: unknown host name")
    if isinstance(value, (net_error.TimeoutError, net_error.TCPTimedOutError)):
        return ConnectionFailed(f"cannot connect to {where}: no answer (timed out)")
    if isinstance(value, net_error.NoRouteError):
        return ConnectionFailed(f"cannot connect to {where}: no route to host")
    if isinstance(value, net_error.ConnectError):
        return ConnectionFailed(f"cannot connect to {where}: {_short(value)}")
    inner = _nested(value)
    if inner:
        explained = _explain_network(inner[0], url)
        if isinstance(explained, ClientError) and not _is_closed(inner[0]):
            return explained
        if _is_closed(inner[0]) and type(value).__name__ == "ResponseNeverReceived":
            return ConnectionFailed(f"{where} closed the connection without answering{_scheme_hint(url)}")
        return ConnectionFailed(f"connection to {where} lost: {_short(inner[0])}")
    if _is_closed(value):
        return ConnectionFailed(f"connection to {where} lost: the server closed it")
    return value


def _is_closed(value: BaseException) -> bool:
    return isinstance(value, (net_error.ConnectionLost, net_error.ConnectionDone))


def _scheme_hint(url: str) -> str:
    if urlsplit(url).scheme == "http":
        return " (if it speaks TLS there, use https://)"
    return " (if it speaks plain HTTP there, use http://)"


def _short(value: BaseException) -> str:
    if isinstance(value, (net_error.ConnectionLost, net_error.ConnectionDone)):
        return "the server closed the connection"
    text = " ".join(str(value).split())
    return text or type(value).__name__


__all__ = [
    "EXIT_CREDENTIALS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_USAGE",
    "ChecksumError",
    "ClientError",
    "ConnectionFailed",
    "CredentialError",
    "DownloadInterrupted",
    "HTTPStatusError",
    "NAME_TAKEN_HINT",
    "NoPrefix",
    "NotAFile",
    "NotTLS",
    "ProtocolError",
    "TLSRefused",
    "TrustError",
    "UploadIncomplete",
    "UploadRefused",
    "UsageError",
    "explain",
    "tls_refused",
]
