"""Handlers that misbehave on purpose, for the adversarial tests.

Loaded by the server with ``--handler PREFIX=tests.adversarial.handlers:NAME``;
each stores its files in ``$GSITRANSFER_TEST_STORE/<NAME>`` (a DirectoryStore)
and breaks one callback:

* ``hang_can_upload`` -- ``CanUpload`` returns a Deferred that never fires;
* ``hang_upload_filename`` -- ``GetUploadFilename`` never fires;
* ``hang_download`` -- ``GetDownloadFilename`` never fires;
* ``hang_complete`` -- ``CompleteUpload`` never fires (the file is already in
  place under its final name when it is called);
* ``hang_listing`` -- ``ListFiles`` never fires.

The Deferreds are kept in a module list so nothing collects them.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer

from gsitransfer.store import DirectoryStore

#: every Deferred handed out, never fired
NEVER: list[defer.Deferred[Any]] = []


def _never() -> defer.Deferred[Any]:
    waiting: defer.Deferred[Any] = defer.Deferred()
    NEVER.append(waiting)
    return waiting


def _root(name: str) -> str:
    return os.path.join(os.environ["GSITRANSFER_TEST_STORE"], name)


class HangCanUpload(DirectoryStore):
    def CanUpload(self, id_token: Any, file_info: Any) -> Any:
        return _never()


class HangUploadFilename(DirectoryStore):
    def GetUploadFilename(self, id_token: Any, file_info: Any) -> Any:
        return _never()


class HangDownload(DirectoryStore):
    def GetDownloadFilename(self, id_token: Any, url_path: str) -> Any:
        return _never()


class HangComplete(DirectoryStore):
    def CompleteUpload(self, id_token: Any, file_info: Any) -> Any:
        return _never()


class HangListing(DirectoryStore):
    def ListFiles(self, id_token: Any) -> Any:
        return _never()


def hang_can_upload() -> HangCanUpload:
    return HangCanUpload(_root("hang_can_upload"))


def hang_upload_filename() -> HangUploadFilename:
    return HangUploadFilename(_root("hang_upload_filename"))


def hang_download() -> HangDownload:
    return HangDownload(_root("hang_download"))


def hang_complete() -> HangComplete:
    return HangComplete(_root("hang_complete"))


def hang_listing() -> HangListing:
    return HangListing(_root("hang_listing"))
