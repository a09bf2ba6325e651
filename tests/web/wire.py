"""HTTP bytes for the in-memory web tests: request heads to send, answers split apart.

Not a test module: the tests here import it (they never import each other).
The connection itself is :class:`gsitransfer.testing.SiteConnection`.
"""

from __future__ import annotations

from typing import Any

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
