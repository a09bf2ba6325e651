"""The directory store for nodes: its callbacks on the state's calls thread, never on the reactor.

With a PostgreSQL ``--state`` the directory store's metadata is a database
on another host: each callback (``CanUpload``, ``AddPendingUpload``, …,
``ListFiles``) asks it, and does file system work on a shared filesystem
besides. :class:`OffReactorStore` wraps a
:class:`~gsitransfer.store.DirectoryStore` and answers each callback with a
Deferred from :meth:`PostgresState.deferred` — the same one thread, in
order, as the engine's table calls — which the handler contract allows
(``gsitransfer.handler``: a callback may return a Deferred).

One exception keeps downloads fast: ``GetDownloadFilename`` answers at once
when the store remembers the file's MD5 for its present state
(:meth:`DirectoryStore.cached_download`: a ``stat``, no statement), and goes
to the thread only otherwise. ``KnownDigests``/``KeepDigests`` must answer at
once, so this wrapper does not offer them: the server keeps other digests
(sha-256, adler32) in its own bounded cache, per process.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..handler import DownloadTarget, IBatchPendingHandler, IDeleteHandler, IListingHandler, ITransferHandler
from ..identity import IdToken
from ..store import DirectoryStore
from .connection import PostgresState


@implementer(ITransferHandler, IListingHandler, IBatchPendingHandler, IDeleteHandler)
class OffReactorStore:
    """A DirectoryStore whose callbacks run on ``state``'s calls thread."""

    def __init__(self, store: DirectoryStore, state: PostgresState) -> None:
        self.store = store
        self.state = state

    @property
    def root(self) -> str:
        """The store's directory (``--store PREFIX=DIR``)."""
        return self.store.root

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def GetDownloadFilename(self, id_token: IdToken, url_path: str) -> DownloadTarget | Deferred[DownloadTarget]:
        """Seed ``GetDownloadFilename``: at once when the MD5 is remembered, else on the calls thread."""
        found = self.store.cached_download(url_path)
        if found is not None:
            return found
        return self.state.deferred(self.store.GetDownloadFilename, id_token, url_path)

    def CanUpload(self, id_token: IdToken, file_info: Mapping[str, Any]) -> Deferred[bool]:
        """Seed ``CanUpload``, on the calls thread."""
        return self.state.deferred(self.store.CanUpload, id_token, file_info)

    def AddPendingUpload(self, id_token: IdToken, filename: str) -> Deferred[None]:
        """Seed ``AddPendingUpload``, on the calls thread."""
        return self.state.deferred(self.store.AddPendingUpload, id_token, filename)

    def AddPendingUploads(self, id_token: IdToken, filenames: list[str]) -> Deferred[None]:
        """``AddPendingUploads`` (all or none), on the calls thread."""
        return self.state.deferred(self.store.AddPendingUploads, id_token, filenames)

    def GetUploadFilename(self, id_token: IdToken, file_info: Mapping[str, Any]) -> Deferred[str | None]:
        """Seed ``GetUploadFilename``, on the calls thread."""
        return self.state.deferred(self.store.GetUploadFilename, id_token, file_info)

    def CompleteUpload(self, id_token: IdToken, file_info: Mapping[str, Any]) -> Deferred[None]:
        """Seed ``CompleteUpload``, on the calls thread."""
        return self.state.deferred(self.store.CompleteUpload, id_token, file_info)

    def CancelPendingUpload(self, id_token: IdToken, filename: str) -> Deferred[None]:
        """Seed ``CancelPendingUpload``, on the calls thread."""
        return self.state.deferred(self.store.CancelPendingUpload, id_token, filename)

    def DeleteFile(self, id_token: IdToken, url_path: str) -> Deferred[None]:
        """``DeleteFile`` (WebDAV ``DELETE``), on the calls thread."""
        return self.state.deferred(self.store.DeleteFile, id_token, url_path)

    def ListFiles(self, id_token: IdToken) -> Deferred[list[dict[str, Any]]]:
        """``ListFiles``, on the calls thread."""
        return self.state.deferred(self.store.ListFiles, id_token)
