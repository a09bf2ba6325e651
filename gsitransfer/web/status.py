"""Errors to HTTP statuses, in one table, and plain-text answers.

Every refusal the server sends is a status and a one-line plain-text reason,
and every status comes from :data:`STATUS_FOR_ERROR`: the core's errors
(:mod:`gsitransfer.errors`) and the edge's own (:class:`BadRequest`,
:class:`MethodNotAllowed`, :class:`BodyTooLarge`, :class:`Unidentified`,
:class:`HeadTooLarge`),
raised wherever a request is judged and answered here by :func:`refuse`.
An exception that is not a :class:`TransferError` is a bug: it is logged with
its traceback and the client gets ``500`` and a generic line, never the
traceback.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest

from .. import errors

_log = Logger()


class RequestError(errors.TransferError):
    """A request the HTTP edge refuses before (or without) asking the core."""


class BadRequest(RequestError):
    """The request cannot be understood (a target that is not a path, a path that is not UTF-8)."""

    default_reason = "bad request"


class MethodNotAllowed(RequestError):
    """The route exists, but not for this method; ``allow`` lists the methods it takes."""

    default_reason = "method not allowed here"

    def __init__(self, allow: tuple[bytes, ...], reason: str | None = None) -> None:
        super().__init__(reason)
        self.allow = allow


class BodyTooLarge(RequestError):
    """The request body is (or announces itself) larger than this route takes."""

    default_reason = "request body is too large"


class Unidentified(RequestError):
    """A request reached an answer without an identity: refused, never served as anonymous."""

    default_reason = "the request has no identity"


class HeadTooLarge(RequestError):
    """A request head over the channel's bounds (a line, the header bytes or the header lines): answered and closed."""

    default_reason = "request header fields too large"


class TusVersionUnsupported(RequestError):
    """A tus request names a protocol version this server does not speak (``Tus-Version`` says which)."""

    default_reason = "unsupported Tus-Resumable version: this server speaks 1.0.0"


class DepthNotSupported(RequestError):
    """A ``PROPFIND`` asks for ``Depth: infinity`` (or sends no ``Depth``, which means it: RFC 4918 §9.1)."""

    default_reason = "Depth: infinity is not supported: send Depth: 0 or Depth: 1"


class PreconditionFailed(RequestError):
    """A request's precondition (``If-None-Match: *`` on a name that exists) does not hold."""

    default_reason = "precondition failed"


class UnsupportedMediaType(RequestError):
    """A body of a type this route does not take (a ``PATCH`` not ``application/offset+octet-stream``)."""

    default_reason = "unsupported Content-Type"


class PieceChecksumMismatch(RequestError):
    """A ``PATCH`` body does not match its ``Upload-Checksum`` (tus checksum extension): its bytes are dropped."""

    default_reason = "checksum mismatch"


class InternalError(RequestError):
    """A bug while answering (logged with its traceback where it happened): one generic line."""

    default_reason = "internal server error (logged on the server)"


#: most specific class first; the first isinstance match wins
STATUS_FOR_ERROR: tuple[tuple[type[errors.TransferError], int], ...] = (
    (BadRequest, 400),
    (MethodNotAllowed, 405),
    (BodyTooLarge, 413),
    (Unidentified, 403),
    (HeadTooLarge, 431),
    (TusVersionUnsupported, 412),
    (PreconditionFailed, 412),
    (DepthNotSupported, 403),
    (UnsupportedMediaType, 415),
    (PieceChecksumMismatch, 460),
    (InternalError, 500),
    (errors.ManifestTooLarge, 413),
    (errors.ManifestError, 400),
    (errors.FileNotFound, 404),
    (errors.NameTaken, 409),
    (errors.NoSpaceForFile, 507),
    (errors.NotAuthorized, 403),
    (errors.BeyondLength, 413),
    (errors.UploadConflict, 409),
    (errors.LengthRequired, 411),
    (errors.LengthMismatch, 400),
    (errors.ChecksumMismatch, 422),
    (errors.InsufficientStorage, 507),
    (errors.QuotaExceeded, 429),
    (errors.HandlerTimeout, 503),
    (errors.StateUnavailable, 503),
    (errors.UploadFailed, 500),
    (errors.DownloadFailed, 500),
    (errors.TransferError, 500),
)


def status_for(error: errors.TransferError) -> int:
    """The HTTP status for an error raised by the core or a handler."""
    for error_class, status in STATUS_FOR_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


#: reason phrases twisted.web's ``http.RESPONSES`` lacks
_PHRASES: dict[int, bytes] = {431: b"Request Header Fields Too Large", 460: b"Checksum Mismatch"}

#: the tus protocol version this server speaks (``Tus-Resumable``, ``Tus-Version``)
TUS_VERSION = b"1.0.0"


def headers_for(error: errors.TransferError) -> tuple[tuple[bytes, bytes], ...]:
    """Header lines a refusal carries besides its status: where a resumed file stands, which tus version."""
    if isinstance(error, errors.OffsetMismatch):
        return ((b"upload-offset", b"%d" % error.held),)
    if isinstance(error, TusVersionUnsupported):
        return ((b"tus-version", TUS_VERSION),)
    return ()


def head_refusal(error: errors.TransferError, date: bytes, server: bytes) -> bytes:
    """The whole answer to a request head refused by the channel itself (no Request made): status,
    one plain-text line, ``Connection: close``."""
    status = status_for(error)
    phrase = _PHRASES.get(status) or http.RESPONSES.get(status, b"Error")
    body = (_one_line(error.reason) + "\n").encode("utf-8")
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            b"Server: %s\r\nDate: %s\r\n" % (server, date),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            body,
        )
    )


def refusal_for(failure: Failure, what: str) -> errors.TransferError:
    """The error to answer a failure with; one that is not a TransferError is logged (a bug)."""
    error = failure.value
    if isinstance(error, errors.TransferError):
        return error
    _log.failure("unexpected error while {what}", failure, what=what)
    return InternalError()


def refuse(request: IRequest, error: errors.TransferError) -> None:
    """Answer ``request`` with ``error``'s status and reason (and ``Allow`` for a 405)."""
    allow = error.allow if isinstance(error, MethodNotAllowed) else ()
    if getattr(request, "audit_started", None) is not None:  # the site records events: the reason goes in
        setattr(request, "audit_reason", error.reason)
    for name, value in headers_for(error):
        request.setHeader(name, value)
    write_error(request, status_for(error), error.reason, allow)


def write_error(
    request: IRequest, status: int, reason: str, allow: tuple[bytes, ...] = ()
) -> None:
    """Answer ``request`` with ``status`` and ``reason`` as plain text, and finish it."""
    write_text(request, status, _one_line(reason) + "\n", allow=allow)


def write_text(
    request: IRequest,
    status: int,
    text: str,
    content_type: bytes = b"text/plain; charset=utf-8",
    allow: tuple[bytes, ...] = (),
) -> None:
    """Answer ``request`` with a small text body and finish it (unless it is gone)."""
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    body = text.encode("utf-8")
    request.setResponseCode(status, _PHRASES.get(status))
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"cache-control", b"no-store")
    if allow:
        request.setHeader(b"allow", b", ".join(allow))
    request.write(body)
    request.finish()


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "error"


def write_empty(request: IRequest, status: int, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Answer ``request`` with ``status`` (a 204, or a HEAD's 200), ``headers`` and no body; finish it."""
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    request.setResponseCode(status, _PHRASES.get(status))
    for name, value in headers:
        request.setHeader(name, value)
    request.setHeader(b"cache-control", b"no-store")
    request.finish()
