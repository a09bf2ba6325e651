"""The handler contract: the seed's callbacks, declared once.

A handler is registered for a URL prefix with ``TransferServer.RegisterPrefix``
and decides, for that prefix, who may upload what and where downloads come
from. Every callback may return a plain value, a ``Deferred`` or a coroutine.

``file_info`` is a dict with at least ``name`` (str), ``size`` (int bytes) and
``checksum`` (MD5, 32 lowercase hex). ``CanUpload`` also gets
``transfer_size``, the sum of the manifest's sizes (to check space for the
whole transfer); the later upload callbacks get ``transfer_key`` and ``file_num``; any extra keys a client put in the manifest
section are passed through as strings.

Optional capabilities are separate interfaces, so a minimal handler (like the
seed's) implements only :class:`ITransferHandler`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Union

from zope.interface import Interface


class ITransferHandler(Interface):
    """Gates the files under one prefix (the seed's handler callbacks)."""

    def GetDownloadFilename(id_token, url_path):  # type: ignore[no-untyped-def]
        """Local pathname for ``url_path`` (percent-decoded, without the prefix).

        May instead return a :class:`DownloadTarget` to give the file's MD5.
        Raise ``FileNotFound`` or ``NotAuthorized`` to refuse.
        """

    def CanUpload(id_token, file_info):  # type: ignore[no-untyped-def]
        """True to accept this file of a posted manifest, False to refuse.

        To give the client a reason, raise ``NotAuthorized(reason)`` (or any
        ``TransferError``) instead of returning False.
        """

    def AddPendingUpload(id_token, filename):  # type: ignore[no-untyped-def]
        """The whole manifest was accepted; ``filename`` will be uploaded."""

    def GetUploadFilename(id_token, file_info):  # type: ignore[no-untyped-def]
        """Final local pathname for the arriving file, or None to refuse it."""

    def CompleteUpload(id_token, file_info):  # type: ignore[no-untyped-def]
        """The file is stored, verified and in place under its final name."""

    def CancelPendingUpload(id_token, filename):  # type: ignore[no-untyped-def]
        """A pending file will never complete (its key expired or was cancelled)."""


class IListingHandler(Interface):
    """Optional: a handler that can list its files (``GET /<prefix>/``)."""

    def ListFiles(id_token):  # type: ignore[no-untyped-def]
        """A list of JSON-serialisable dicts, one per file (name, size, ...)."""


class IBatchPendingHandler(Interface):
    """Optional: a handler that records a whole accepted manifest's files at once.

    When a handler has ``AddPendingUploads``, the core calls it once instead
    of ``AddPendingUpload`` per file (a store can then write one transaction,
    not thousands). If it raises ``NotAuthorized`` (a name was taken
    meanwhile, e.g. by another worker process), it must have recorded none of
    the names, and the manifest is refused with that reason. If it fails
    otherwise, ``CancelPendingUpload`` is called for every name, so the
    handler may leave such a failed batch half done.
    """

    def AddPendingUploads(id_token, filenames):  # type: ignore[no-untyped-def]
        """The whole manifest was accepted; each of ``filenames`` (a list) will be uploaded."""


@dataclass(frozen=True)
class DownloadTarget:
    """A richer answer from ``GetDownloadFilename``: the path and what is known of it."""

    path: str
    #: MD5 of the file's content, 32 lowercase hex, when the handler knows it
    checksum: str | None = None


DownloadAnswer = Union[str, "os.PathLike[str]", DownloadTarget]


def as_download_target(answer: Any) -> DownloadTarget:
    """Normalise what ``GetDownloadFilename`` returned to a :class:`DownloadTarget`."""
    if isinstance(answer, DownloadTarget):
        return answer
    if isinstance(answer, (str, os.PathLike)):
        return DownloadTarget(path=os.fspath(answer))
    raise TypeError(f"GetDownloadFilename returned {type(answer).__name__}, not a path")
