"""Errors to HTTP statuses, in one table, and plain-text error responses.

Every refusal the server sends is a status and a one-line plain-text reason.
An exception that is not a :class:`TransferError` is a bug: it is logged with
its traceback and the client gets ``500`` and a generic line, never the
traceback.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from .. import errors

_log = Logger()

#: most specific class first; the first isinstance match wins
STATUS_FOR_ERROR: tuple[tuple[type[errors.TransferError], int], ...] = (
    (errors.ManifestTooLarge, 413),
    (errors.ManifestError, 400),
    (errors.FileNotFound, 404),
    (errors.NotAuthorized, 403),
    (errors.UploadConflict, 409),
    (errors.LengthRequired, 411),
    (errors.LengthMismatch, 400),
    (errors.ChecksumMismatch, 422),
    (errors.InsufficientStorage, 507),
    (errors.QuotaExceeded, 429),
    (errors.HandlerTimeout, 503),
    (errors.UploadFailed, 500),
    (errors.DownloadFailed, 500),
    (errors.TransferError, 500),
)


def status_for(error: BaseException) -> int:
    """The HTTP status for an error raised by the core or a handler."""
    for error_class, status in STATUS_FOR_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


def describe_failure(failure: Failure, what: str) -> tuple[int, str]:
    """Status and reason for a failure; unexpected ones are logged with their traceback."""
    error = failure.value
    if isinstance(error, errors.TransferError):
        return status_for(error), error.reason
    _log.failure("unexpected error while {what}", failure, what=what)
    return 500, "internal server error (logged on the server)"


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
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"cache-control", b"no-store")
    if allow:
        request.setHeader(b"allow", b", ".join(allow))
    request.write(body)
    request.finish()


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "error"
