"""Every exception gsitransfer raises or accepts from a handler.

The hierarchy (the seed's names are the public contract)::

    TransferError                    base of everything below; ``reason`` is plain text
    ├── FileNotFound                 unknown prefix, transfer key, file number or file
    ├── NotAuthorized                the identity may not do this (handler or grid-mapfile)
    │   ├── NameTaken                a file of that name exists, or is being uploaded (a conflict)
    │   └── NoSpaceForFile           the handler refuses a file for lack of free space
    ├── UploadFailed                 an upload could not be accepted or completed
    │   ├── ManifestError            the manifest breaks a rule (unparsable, unsafe name, ...)
    │   │   └── ManifestTooLarge     the manifest body is over the size limit
    │   ├── UploadConflict           the file is already stored or arriving elsewhere
    │   │   └── OffsetMismatch       a resumed piece does not start at the bytes held
    │   ├── LengthRequired           no Content-Length was sent for a file body
    │   ├── LengthMismatch           Content-Length differs from the manifest's size
    │   ├── BeyondLength             a resumed piece would pass the manifest's size
    │   ├── ChecksumMismatch         the received bytes do not have the manifest's MD5
    │   ├── InsufficientStorage      not enough free space for the file
    │   └── QuotaExceeded            the identity has too many files or bytes pending
    ├── DownloadFailed               a download could not be served
    ├── HandlerTimeout               a handler callback did not answer in time
    └── StateUnavailable             the shared state database (PostgreSQL --state) cannot be reached now

The core raises these; the web layer maps each to an HTTP status in one table
(``gsitransfer.web.status``). Nothing here knows about HTTP.
"""

from __future__ import annotations


class TransferError(Exception):
    """Base of every gsitransfer error; ``reason`` is a one-line plain-text message."""

    default_reason = "transfer error"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason if reason else self.default_reason
        super().__init__(self.reason)


class FileNotFound(TransferError):
    """The prefix, transfer key, file number or file does not exist (or expired)."""

    default_reason = "not found"


class NotAuthorized(TransferError):
    """The identity is not allowed to do this."""

    default_reason = "not authorized"


class NameTaken(NotAuthorized):
    """The name is taken: a (different) file of that name exists or is being uploaded.

    A handler's ``CanUpload`` or ``AddPendingUpload`` raises it, rather than
    plain NotAuthorized, so that a strict client is told ``409`` (a conflict)
    rather than ``403``.
    """

    default_reason = "a file of that name exists"


class NoSpaceForFile(NotAuthorized):
    """A handler refuses a file because the store has not enough free space for it.

    A refusal like any other in a manifest's answer (``return_code: 1``); a
    ``PUT`` or a strict client is told ``507`` rather than ``403``.
    """

    default_reason = "not enough free space for the file"


class CredentialRefused(NotAuthorized):
    """The client's certificate chain is not accepted (now): revoked, untrusted, expired, or outside its CA's policy."""

    default_reason = "the client certificate is not accepted"


class UploadFailed(TransferError):
    """An upload could not be accepted or completed."""

    default_reason = "upload failed"


class ManifestError(UploadFailed):
    """A manifest that cannot be parsed or breaks a rule."""

    default_reason = "bad manifest"


class ManifestTooLarge(ManifestError):
    """The manifest body is larger than the configured limit."""

    default_reason = "manifest too large"


class UploadConflict(UploadFailed):
    """The file is already stored, or is arriving on another connection."""

    default_reason = "file already stored or being uploaded"


class OffsetMismatch(UploadConflict):
    """A resumed piece (``PATCH``) starts elsewhere than at the bytes the server holds (``held``)."""

    default_reason = "offset does not match the bytes held"

    def __init__(self, offset: int, held: int) -> None:
        super().__init__(f"offset {offset} does not match the {held} bytes held")
        self.offset = offset
        self.held = held


class BeyondLength(UploadFailed):
    """A resumed piece would take the file past its manifest size."""

    default_reason = "the body would pass the manifest size"


class LengthRequired(UploadFailed):
    """A file body was sent without a Content-Length."""

    default_reason = "Content-Length is required"


class LengthMismatch(UploadFailed):
    """The announced body length differs from the manifest's size."""

    default_reason = "Content-Length differs from the manifest size"


class ChecksumMismatch(UploadFailed):
    """The received bytes do not have the MD5 announced in the manifest."""

    default_reason = "checksum mismatch"


class InsufficientStorage(UploadFailed):
    """There is not enough free space to store the file."""

    default_reason = "not enough free space"


class QuotaExceeded(UploadFailed):
    """The identity already has too many files or bytes announced and not yet stored."""

    default_reason = "too much pending for this identity"


class DownloadFailed(TransferError):
    """A download could not be served."""

    default_reason = "download failed"


class HandlerTimeout(TransferError):
    """A handler callback did not answer within the configured time."""

    default_reason = "the handler did not answer in time"


class StateUnavailable(TransferError):
    """The shared state database cannot be reached now (``503``; the request may be repeated later)."""

    default_reason = "the transfer database is not reachable"


class TableBusy(Exception):
    """A table call found a lock held by another process (a person's quota lock) and did nothing.

    Not an answer: the caller makes the call again after a pause
    (:class:`~gsitransfer.tablecalls.TableCalls`), so the one thread that runs
    a process's statements never waits for another node.
    """


__all__ = [
    "TransferError",
    "FileNotFound",
    "NotAuthorized",
    "NameTaken",
    "NoSpaceForFile",
    "CredentialRefused",
    "UploadFailed",
    "ManifestError",
    "ManifestTooLarge",
    "UploadConflict",
    "OffsetMismatch",
    "BeyondLength",
    "LengthRequired",
    "LengthMismatch",
    "ChecksumMismatch",
    "InsufficientStorage",
    "QuotaExceeded",
    "DownloadFailed",
    "HandlerTimeout",
    "StateUnavailable",
    "TableBusy",
]
