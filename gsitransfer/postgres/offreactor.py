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
to the thread only otherwise.

Other digests (``KnownDigests``/``KeepDigests``, sha-256, adler32…) must be
answered at once: they are answered from a bounded memory of this process
(shared by its listeners), written through to the database on the calls
thread, and read from the database into that memory whenever a download goes
to the calls thread — so a digest computed by one node (or before a restart)
is found by the others without being computed again.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..handler import (
    DownloadTarget,
    IBatchPendingHandler,
    IDeleteHandler,
    IDigestKeeper,
    IListingHandler,
    ITransferHandler,
)
from ..identity import IdToken
from ..store import DirectoryStore
from .connection import PostgresState


#: (path, file identity) -> digests remembered per process (each entry a few hundred bytes)
DIGESTS_REMEMBERED = 10_000

Identity = tuple[int, int, int, int]


@implementer(ITransferHandler, IListingHandler, IBatchPendingHandler, IDeleteHandler, IDigestKeeper)
class OffReactorStore:
    """A DirectoryStore whose callbacks run on ``state``'s calls thread."""

    def __init__(self, store: DirectoryStore, state: PostgresState) -> None:
        self.store = store
        self.state = state
        #: digests by (path, identity): read by the reactor, filled by it and by the calls thread
        self._digests: OrderedDict[tuple[str, Identity], dict[str, str]] = OrderedDict()
        self._digests_lock = threading.Lock()

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
        return self.state.deferred(self._download_with_digests, id_token, url_path)

    def _download_with_digests(self, id_token: IdToken, url_path: str) -> DownloadTarget:
        """(The calls thread) the download's target, and the digests kept for the file remembered."""
        target = self.store.GetDownloadFilename(id_token, url_path)
        try:
            status = os.stat(target.path)
        except OSError:
            return target
        identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        kept = self.store.KnownDigests(target.path, identity)
        if kept:
            self._remember(target.path, identity, kept)
        return target

    def _remember(self, path: str, identity: Identity, digests: Mapping[str, str]) -> None:
        with self._digests_lock:
            known = self._digests.setdefault((path, identity), {})
            known.update(digests)
            self._digests.move_to_end((path, identity))
            while len(self._digests) > DIGESTS_REMEMBERED:
                self._digests.popitem(last=False)

    def KnownDigests(self, path: str, identity: Identity) -> dict[str, str]:
        """``IDigestKeeper``: what this process remembers for the file (at once, no statement)."""
        with self._digests_lock:
            return dict(self._digests.get((path, identity), {}))

    def KeepDigests(self, path: str, identity: Identity, digests: dict[str, str]) -> None:
        """``IDigestKeeper``: remembered now, written to the database on the calls thread."""
        self._remember(path, identity, digests)
        written = self.state.deferred(self.store.KeepDigests, path, identity, dict(digests))
        written.addErrback(lambda _: None)  # only a cache: computed again where it is missing

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
