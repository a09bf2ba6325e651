"""What the engine tests share: identities, a manifest, a clock, a handler that records its callbacks."""

from __future__ import annotations

from typing import Any

from gsitransfer.errors import FileNotFound, NotAuthorized
from gsitransfer.identity import IdToken
from gsitransfer.manifest import Manifest

MD5_A = "a" * 32
ALICE = IdToken(dn="/C=US/O=Grid Test/CN=Alice")
BOB = IdToken(dn="/C=US/O=Grid Test/CN=Bob")
MANIFEST = Manifest.of(("a.txt", 3, MD5_A), ("b.txt", 0, "d41d8cd98f00b204e9800998ecf8427e")).to_ini().encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingHandler:
    """Accepts everything except names in ``refuse``; records every callback."""

    def __init__(self, refuse: dict[str, str | None] | None = None) -> None:
        self.refuse = refuse or {}
        self.calls: list[tuple[str, Any, Any]] = []

    def CanUpload(self, id_token: IdToken, file_info: dict[str, Any]) -> bool:
        self.calls.append(("CanUpload", id_token.dn, file_info["name"]))
        reason = self.refuse.get(file_info["name"], "")
        if reason is None:
            return False
        if reason:
            raise NotAuthorized(reason)
        return True

    def AddPendingUpload(self, id_token: IdToken, name: str) -> None:
        self.calls.append(("AddPendingUpload", id_token.dn, name))

    def GetUploadFilename(self, id_token: IdToken, file_info: dict[str, Any]) -> str:
        self.calls.append(("GetUploadFilename", id_token.dn, file_info["name"]))
        return "/srv/" + file_info["name"]

    def CompleteUpload(self, id_token: IdToken, file_info: dict[str, Any]) -> None:
        self.calls.append(("CompleteUpload", id_token.dn, file_info["name"]))

    def CancelPendingUpload(self, id_token: IdToken, name: str) -> None:
        self.calls.append(("CancelPendingUpload", id_token.dn, name))

    def GetDownloadFilename(self, id_token: IdToken, url_path: str) -> str:
        self.calls.append(("GetDownloadFilename", id_token.dn, url_path))
        if url_path == "missing":
            raise FileNotFound("no such file")
        return "/srv/" + url_path

    def names(self, callback: str) -> list[str]:
        return [name for kind, _, name in self.calls if kind == callback]
