"""The handler contract: the seed's callbacks, declared once.

A handler is registered for a URL prefix with ``TransferServer.RegisterPrefix``
and decides, for that prefix, who may upload what and where downloads come
from. Every callback may return a plain value, a ``Deferred`` or a coroutine.

``file_info`` is a dict with at least ``name`` (str), ``size`` (int bytes) and
``checksum`` (MD5, 32 lowercase hex). A file announced without an MD5 (a tus
creation without ``md5`` metadata) has ``checksum`` None in ``CanUpload`` and
``GetUploadFilename``; ``CompleteUpload`` gets the MD5 the server computed of
the bytes it stored; such a file also has ``upload_metadata``, the tus
``Upload-Metadata`` header as sent. A file sent by a ``PUT`` without
``Content-Length`` (a chunked body, as ``globus-url-copy`` sends) has ``size``
None in ``CanUpload`` and ``GetUploadFilename`` (the server enforces its
limits while the body arrives) and the bytes stored in ``CompleteUpload``.
``CanUpload`` also gets
``transfer_size``, the sum of the manifest's sizes (to check space for the
whole transfer); the later upload callbacks get ``transfer_key`` and ``file_num``; any other
keys a client put in the manifest section are passed through as strings. A
manifest naming ``transfer_key``, ``file_num`` or ``transfer_size`` in a file's
section is refused (400), so those keys always come from the server.

Optional capabilities are separate interfaces, so a minimal handler (like the
seed's) implements only :class:`ITransferHandler`.

The engine never calls a handler directly: :class:`HandlerAdapter` wraps it
once, when its prefix is registered, decides then which callbacks it has
(from the interfaces its class declares, else from the methods it has), and gives
the engine typed methods that each return a ``Deferred``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, Mapping, Protocol, Union, cast

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import Interface
from zope.interface.interface import InterfaceClass

from .errors import FileNotFound
from .identity import IdToken


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


class IDeleteHandler(Interface):
    """Optional: a handler that lets a client delete a file (``DELETE /<prefix>/<path>``, WebDAV).

    A handler without it answers ``DELETE`` with ``405``. It raises
    FileNotFound (``404``), NotAuthorized (``403``) or UploadConflict
    (``409``: the file is being uploaded) to refuse, with the reason.
    """

    def DeleteFile(id_token, url_path):  # type: ignore[no-untyped-def]
        """Remove the file behind ``url_path`` for ``id_token``, or raise the refusal."""


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


class IDigestKeeper(Interface):
    """Optional: a handler that keeps its files' digests (sha-256, adler32, ...) with their metadata.

    The server computes a digest a download asks for (``Want-Digest``,
    ``Want-Repr-Digest``) at most once per file: it asks the handler first and
    gives it what it computed, and at an upload's publish what it hashed on
    the way beyond the MD5 (the digests the client's fields named; the MD5
    is ``CompleteUpload``'s ``checksum``). ``identity`` is the file's ``(st_dev, st_ino, st_size,
    st_mtime_ns)``: a digest holds only while the file has that identity.
    Digests are lowercase hex by algorithm (``md5``, ``sha-256``, ``sha-512``,
    ``adler32``). Both are called on the reactor thread and must answer at
    once (no Deferred). Handlers without it: the server keeps the digests in
    a bounded cache of its own.
    """

    def KnownDigests(path, identity):  # type: ignore[no-untyped-def]
        """The digests kept for the file at ``path`` while it has ``identity`` (a dict, maybe empty)."""

    def KeepDigests(path, identity, digests):  # type: ignore[no-untyped-def]
        """Remember ``digests`` for the file at ``path`` while it has ``identity``."""


@dataclass(frozen=True)
class DownloadTarget:
    """A richer answer from ``GetDownloadFilename``: the path and what is known of it."""

    path: str
    #: MD5 of the file's content, 32 lowercase hex, when the handler knows it
    checksum: str | None = None


DownloadAnswer = Union[str, "os.PathLike[str]", DownloadTarget]


def file_state(status: os.stat_result) -> tuple[int, int, int, int, int]:
    """What a remembered answer about a file (its MD5, its bytes) holds for: device, inode, size, and
    modification and change times in nanoseconds. A file renamed into place (a new inode) or written
    changes it; the times are the kernel's clock (a few milliseconds)."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def as_download_target(answer: Any) -> DownloadTarget:
    """Normalise what ``GetDownloadFilename`` returned to a :class:`DownloadTarget`."""
    if isinstance(answer, DownloadTarget):
        return answer
    if isinstance(answer, (str, os.PathLike)):
        return DownloadTarget(path=os.fspath(answer))
    raise TypeError(f"GetDownloadFilename returned {type(answer).__name__}, not a path")


class _SeedCallbacks(Protocol):
    """The callbacks as the adapter calls them: each one only when the handler has it."""

    def GetDownloadFilename(self, id_token: IdToken, url_path: str) -> object: ...

    def CanUpload(self, id_token: IdToken, file_info: dict[str, object]) -> object: ...

    def AddPendingUpload(self, id_token: IdToken, filename: str) -> object: ...

    def AddPendingUploads(self, id_token: IdToken, filenames: list[str]) -> object: ...

    def GetUploadFilename(self, id_token: IdToken, file_info: dict[str, object]) -> object: ...

    def CompleteUpload(self, id_token: IdToken, file_info: dict[str, object]) -> object: ...

    def CancelPendingUpload(self, id_token: IdToken, filename: str) -> object: ...

    def ListFiles(self, id_token: IdToken) -> object: ...

    def DeleteFile(self, id_token: IdToken, url_path: str) -> object: ...

    def KnownDigests(self, path: str, identity: tuple[int, int, int, int]) -> object: ...

    def KeepDigests(self, path: str, identity: tuple[int, int, int, int], digests: dict[str, str]) -> object: ...


def _has_callback(handler: object, interface: InterfaceClass, callback: str) -> bool:
    """True when ``handler``'s class declares ``interface`` (``@implementer``), else when it has ``callback``.

    The class is asked, not the instance: ``providedBy`` looks up attributes
    on the instance, which a delegating handler (``__getattr__``) answers with
    anything.
    """
    return bool(interface.implementedBy(type(handler))) or getattr(handler, callback, None) is not None


def _as_deferred(answer: object) -> defer.Deferred[object]:
    """A callback's answer as a Deferred: a Deferred as is, a coroutine run, a value fired."""
    return defer.maybeDeferred(lambda: answer)


class HandlerAdapter:
    """One registered handler, adapted once: its capabilities and typed callbacks.

    Capabilities are decided here, at registration: a callback the handler
    gains later is not called, while a callback it has and replaces later is
    (the current method is called, as a seed handler expects). Every callback
    may answer with a value, a Deferred or a coroutine; the methods here
    return a Deferred either way (the engine adds the handler timeout).
    Callbacks the handler lacks answer as the seed's did: the pending and
    completion notices do nothing, ``GetUploadFilename`` answers None (the
    file is refused), downloads and listings are FileNotFound.
    """

    def __init__(self, handler: object) -> None:
        self.handler = handler
        self._callbacks = cast(_SeedCallbacks, handler)
        seed = ITransferHandler
        #: True when the handler decides, file by file, whether a manifest may be uploaded
        self.gates_uploads = _has_callback(handler, seed, "CanUpload")
        #: True when the handler records a whole manifest's names in one call
        self.batches_pending = _has_callback(handler, IBatchPendingHandler, "AddPendingUploads")
        #: True when the handler can list its files
        self.can_list = _has_callback(handler, IListingHandler, "ListFiles")
        #: the handler lets clients delete files (``DELETE``)
        self.can_delete = _has_callback(handler, IDeleteHandler, "DeleteFile")
        #: True when the handler serves downloads
        self.serves_downloads = _has_callback(handler, seed, "GetDownloadFilename")
        self._notes_pending = _has_callback(handler, seed, "AddPendingUpload")
        self._names_uploads = _has_callback(handler, seed, "GetUploadFilename")
        self._notes_completion = _has_callback(handler, seed, "CompleteUpload")
        self._notes_cancel = _has_callback(handler, seed, "CancelPendingUpload")
        #: True when the handler keeps its files' digests (else the server's cache does)
        self.keeps_digests = _has_callback(handler, IDigestKeeper, "KeepDigests")

    def __repr__(self) -> str:
        return f"HandlerAdapter({self.handler!r})"

    # -- downloads and listing -------------------------------------------------

    def get_download_filename_now(self, id_token: IdToken, url_path: str) -> object:
        """``GetDownloadFilename`` answered at once when the handler answers at once.

        A plain value is returned as it is, and an exception raised by the
        handler propagates (no Deferred is made); a Deferred, a coroutine or a
        Failure comes back as a Deferred firing with the answer.
        """
        if not self.serves_downloads:
            raise FileNotFound("this prefix serves no downloads")
        answer = self._callbacks.GetDownloadFilename(id_token, url_path)
        if isinstance(answer, (defer.Deferred, CoroutineType, Failure)):
            return _as_deferred(answer)
        return answer

    def get_download_filename(self, id_token: IdToken, url_path: str) -> defer.Deferred[object]:
        """``GetDownloadFilename``: the local path (or DownloadTarget) for ``url_path``."""
        return defer.maybeDeferred(self.get_download_filename_now, id_token, url_path)

    def list_files(self, id_token: IdToken) -> defer.Deferred[object]:
        """``ListFiles``: the handler's listing; FileNotFound when it cannot list."""
        if not self.can_list:
            return defer.fail(FileNotFound("this prefix cannot be listed"))
        return defer.maybeDeferred(self._callbacks.ListFiles, id_token)

    def delete_file(self, id_token: IdToken, url_path: str) -> defer.Deferred[object]:
        """``DeleteFile``: remove the file behind ``url_path``; FileNotFound when the handler cannot delete."""
        if not self.can_delete:
            return defer.fail(FileNotFound("this prefix does not delete files"))
        return defer.maybeDeferred(self._callbacks.DeleteFile, id_token, url_path)

    def known_digests(self, path: str, identity: tuple[int, int, int, int]) -> dict[str, str]:
        """``KnownDigests``: the digests the handler keeps for this file state (only if it keeps any)."""
        known = self._callbacks.KnownDigests(path, identity)
        if not isinstance(known, Mapping):
            return {}
        return {str(name): str(value) for name, value in known.items() if value}

    def keep_digests(self, path: str, identity: tuple[int, int, int, int], digests: dict[str, str]) -> None:
        """``KeepDigests``: give the handler digests of this file state (only if it keeps any)."""
        self._callbacks.KeepDigests(path, identity, dict(digests))

    # -- uploads ----------------------------------------------------------------

    def can_upload(self, id_token: IdToken, file_info: dict[str, object]) -> defer.Deferred[object]:
        """``CanUpload``: truthy to accept the file (True when the handler does not gate)."""
        if not self.gates_uploads:
            return defer.succeed(True)
        return defer.maybeDeferred(self._callbacks.CanUpload, id_token, file_info)

    def add_pending_upload(self, id_token: IdToken, filename: str) -> defer.Deferred[object]:
        """``AddPendingUpload``: ``filename`` of an accepted manifest will be uploaded."""
        if not self._notes_pending:
            return defer.succeed(None)
        return defer.maybeDeferred(self._callbacks.AddPendingUpload, id_token, filename)

    def add_pending_uploads(self, id_token: IdToken, filenames: list[str]) -> defer.Deferred[object]:
        """``AddPendingUploads``: every name of an accepted manifest, in one call.

        Only for a handler that :attr:`batches_pending`; the engine calls
        :meth:`add_pending_upload` per file for the others.
        """
        if not self.batches_pending:
            raise TypeError(f"{self.handler!r} does not record pending uploads in batches")
        return defer.maybeDeferred(self._callbacks.AddPendingUploads, id_token, filenames)

    def get_upload_filename(self, id_token: IdToken, file_info: dict[str, object]) -> defer.Deferred[object]:
        """``GetUploadFilename``: the final local path of the arriving file, or None to refuse."""
        if not self._names_uploads:
            return defer.succeed(None)
        return defer.maybeDeferred(self._callbacks.GetUploadFilename, id_token, file_info)

    def complete_upload(self, id_token: IdToken, file_info: dict[str, object]) -> defer.Deferred[object]:
        """``CompleteUpload``: the file is stored, verified and in place."""
        if not self._notes_completion:
            return defer.succeed(None)
        return defer.maybeDeferred(self._callbacks.CompleteUpload, id_token, file_info)

    def cancel_pending_upload(self, id_token: IdToken, filename: str) -> defer.Deferred[object]:
        """``CancelPendingUpload``: a pending file will never complete."""
        if not self._notes_cancel:
            return defer.succeed(None)
        return defer.maybeDeferred(self._callbacks.CancelPendingUpload, id_token, filename)
