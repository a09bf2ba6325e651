"""HTTP bytes for the in-memory web tests: request heads to send, answers split apart.

Not a test module: the tests here import it (they never import each other).
The connection itself is :class:`gsitransfer.testing.SiteConnection`.
"""

from __future__ import annotations

from typing import Any

from gsitransfer.identity import IdToken
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection

#: a name shaped like a transfer key (no transfer has it)
KEY_SHAPED = "k" * 32


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    """A request head without a body: ``method path`` with ``Host`` and ``headers``."""
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: t", *headers]) + "\r\n\r\n").encode()


def upload_head(key: str, length: int, extra: str = "") -> bytes:
    """The head of file 0's upload for transfer ``key`` (``extra``: more header lines, each with CRLF)."""
    return f"POST /data/{key}/0 HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def split(output: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One answer as (status line, headers with lower-case names and values, body)."""
    head, _, body = output.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, dict(line.lower().split(b": ", 1) for line in lines), body


def channel(conn: SiteConnection) -> Any:
    """The connection's HTTP channel (``TransferChannel``), under any protocol wrapper."""
    return getattr(conn.protocol, "_channel", conn.protocol)


def answers(output: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Every answer in ``output`` (interim 100s too): (status line, headers lower-cased, body)."""
    found = []
    while output:
        head, _, rest = output.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        fields = {name.lower(): value for name, value in (line.split(b": ", 1) for line in lines)}
        length = int(fields.get(b"content-length", b"0")) if not status.startswith(b"HTTP/1.1 1") else 0
        found.append((status, fields, rest[:length]))
        output = rest[length:]
    return found


class Seen(DirectoryStore):
    """A DirectoryStore that keeps the file_info CanUpload and CompleteUpload were given."""

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def CanUpload(self, id_token: IdToken, file_info: Any) -> bool:
        self.seen.append(("CanUpload", dict(file_info)))
        return super().CanUpload(id_token, file_info)

    def CompleteUpload(self, id_token: IdToken, file_info: Any) -> None:
        self.seen.append(("CompleteUpload", dict(file_info)))
        super().CompleteUpload(id_token, file_info)
