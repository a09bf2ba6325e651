"""Pieces of response heads shared by twisted.web's path and the keep-alive fast path."""

from __future__ import annotations

import functools

from twisted.web import server
from twisted.web.http import datetimeToString

#: the Server header twisted.web's ``Request.process`` sets
SERVER_HEADER: bytes = server.version


@functools.lru_cache(maxsize=64)
def http_date(seconds: int) -> bytes:
    """``datetimeToString(seconds)``, remembered (a pure function): the current second's, and files' mtimes."""
    date: bytes = datetimeToString(seconds)
    return date


__all__ = ["SERVER_HEADER", "http_date"]
