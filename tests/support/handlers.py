"""Handlers for tests, loaded by the server with ``--handler PREFIX=tests.support.handlers:NAME``.

``recording`` wraps a DirectoryStore and appends one JSON line per callback
(callback name, DN, username, proxy flags, argument) to the file named by
``GSITRANSFER_TEST_RECORD``, so a test can assert what the handler saw.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor

from gsitransfer.identity import IdToken
from gsitransfer.store import DirectoryStore


class RecordingStore:
    def __init__(self, inner: DirectoryStore, record_path: str) -> None:
        self.inner = inner
        self.record_path = record_path

    def _record(self, callback: str, token: IdToken, argument: Any) -> None:
        line = {
            "callback": callback,
            "dn": token.dn,
            "username": token.username,
            "proxy": token.proxy,
            "limited_proxy": token.limited_proxy,
            "argument": argument if isinstance(argument, str) else argument.get("name"),
        }
        with open(self.record_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    def __getattr__(self, callback: str) -> Any:
        if callback == "AddPendingUploads":  # record the seed's per-file AddPendingUpload calls
            raise AttributeError(callback)
        inner_method = getattr(self.inner, callback)

        def call(token: IdToken, argument: Any) -> Any:
            self._record(callback, token, argument)
            return inner_method(token, argument)

        return call


def recording() -> RecordingStore:
    root = os.environ["GSITRANSFER_TEST_STORE"]
    return RecordingStore(DirectoryStore(root), os.environ["GSITRANSFER_TEST_RECORD"])


class SlowStore(DirectoryStore):
    """GetUploadFilename answers after GSITRANSFER_TEST_DELAY seconds (a Deferred)."""

    def GetUploadFilename(self, id_token: IdToken, file_info: dict[str, Any]) -> Any:
        delay = float(os.environ.get("GSITRANSFER_TEST_DELAY", "1"))
        answer = super().GetUploadFilename(id_token, file_info)
        return defer.Deferred.fromCoroutine(_later(delay, answer))


async def _later(delay: float, value: Any) -> Any:
    from twisted.internet.task import deferLater

    await deferLater(reactor, delay, lambda: None)
    return value


def slow() -> SlowStore:
    return SlowStore(os.environ["GSITRANSFER_TEST_STORE"])


class BrokenStore(DirectoryStore):
    """CanUpload raises an unexpected error (a bug in a handler)."""

    def CanUpload(self, id_token: IdToken, file_info: dict[str, Any]) -> bool:
        raise RuntimeError("handler bug: secret detail")


def broken() -> BrokenStore:
    return BrokenStore(os.environ["GSITRANSFER_TEST_STORE"])


class PermissiveStore(DirectoryStore):
    """Accepts any manifest (no free-space check at the manifest), to reach 507 at upload."""

    def CanUpload(self, id_token: IdToken, file_info: dict[str, Any]) -> bool:
        return True


def permissive() -> PermissiveStore:
    return PermissiveStore(os.environ["GSITRANSFER_TEST_STORE"] + "-permissive")


class NoUploadFilenameStore(DirectoryStore):
    """GetUploadFilename refuses every file (returns None)."""

    def GetUploadFilename(self, id_token: IdToken, file_info: dict[str, Any]) -> None:
        return None


def no_filename() -> NoUploadFilenameStore:
    return NoUploadFilenameStore(os.environ["GSITRANSFER_TEST_STORE"] + "-nofilename")
