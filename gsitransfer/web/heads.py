"""Pieces of response heads shared by twisted.web's path and the keep-alive fast path."""

from __future__ import annotations

import functools
from typing import Iterable

from twisted.web import server
from twisted.web.http import datetimeToString

#: the Server header twisted.web's ``Request.process`` sets
SERVER_HEADER: bytes = server.version


@functools.lru_cache(maxsize=64)
def http_date(seconds: int) -> bytes:
    """``datetimeToString(seconds)``, remembered (a pure function): the current second's, and files' mtimes."""
    date: bytes = datetimeToString(seconds)
    return date


def answer_with_head(
    status_line: bytes, headers: Iterable[tuple[bytes, bytes]], rendered: bytes, body: bytes
) -> bytes:
    """A whole answer as one write: ``status_line`` (with its CRLF), each header, the ``rendered``
    header lines (each ending in CRLF), the empty line, ``body``.

    The one place this server renders a response head itself (the request
    path's ``write_with_head`` and the keep-alive fast path); every other head
    is twisted.web's ``Request.write``. Lines as twisted.web writes them.
    """
    parts = [status_line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (rendered, b"\r\n", body)
    return b"".join(parts)


__all__ = ["SERVER_HEADER", "answer_with_head", "http_date"]
