"""The values the client's operations fire with: frozen dataclasses, no behaviour.

:class:`UploadReport` (of :class:`UploadedFile`), :class:`DownloadReport`,
:class:`Listing` (of :class:`RemoteFile`), :class:`TransferStatus` (of
:class:`TransferFile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class UploadedFile:
    """The outcome of one file of an upload."""

    path: Path
    name: str
    size: int
    checksum: str
    #: where it can be downloaded (None if it failed)
    url: str | None = None
    #: how many times its body was sent (0: it was already stored)
    attempts: int = 0
    #: one line saying why it failed (None: stored)
    error: str | None = None
    #: the HTTP status of the last refusal, if any
    status: int | None = None
    #: True when the server already had this file (same name, size and MD5) and it was not sent
    already_stored: bool = False
    #: bytes the server held when this upload began (an earlier run's, found by the server): not sent again
    resumed_from: int = 0
    #: body bytes this upload sent for the file, every attempt counted
    bytes_sent: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class UploadReport:
    """An upload: its transfer key and each file's outcome, in the order given."""

    url: str
    transfer_key: str
    files: tuple[UploadedFile, ...]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)


@dataclass(frozen=True)
class DownloadReport:
    """A completed download."""

    url: str
    path: Path
    size: int
    #: MD5 of what was written (hex)
    checksum: str
    #: True when it was compared with Repr-Digest or the given checksum
    verified: bool
    #: bytes that were already on disk from an earlier attempt
    resumed_from: int = 0


@dataclass(frozen=True)
class RemoteFile:
    """One file of a listing."""

    name: str
    size: int
    checksum: str | None
    owner: str | None
    modified: str | None
    uploaded: str | None
    url: str


@dataclass(frozen=True)
class Listing:
    prefix: str
    url: str
    files: tuple[RemoteFile, ...]


@dataclass(frozen=True)
class TransferFile:
    file_num: int
    name: str
    size: int
    checksum: str
    #: pending, receiving or stored
    state: str
    url: str | None
    #: bytes the server holds (durable) of a file not yet stored; None: the server did not say
    offset: int | None = None


@dataclass(frozen=True)
class TransferStatus:
    """The state of a transfer (``GET /<prefix>/<key>``); ``raw`` is the server's JSON."""

    transfer_key: str
    prefix: str
    owner: str | None
    created: float
    expires: float
    complete: bool
    files: tuple[TransferFile, ...]
    raw: Mapping[str, Any]


__all__ = [
    "DownloadReport",
    "Listing",
    "RemoteFile",
    "TransferFile",
    "TransferStatus",
    "UploadReport",
    "UploadedFile",
]
