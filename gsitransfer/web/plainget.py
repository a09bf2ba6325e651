"""The keep-alive shortcut: a plain GET of a small file, answered from its bytes.

Most requests on a busy download server are one ``GET`` of one small file,
its head arriving whole in one read. twisted.web would split that head into
lines, make a Request with two ``Headers``, walk its state machine, render,
finish and log it: about two thirds of the server's CPU per request.
:func:`answer_plain_get` answers such a request directly from the bytes,
with the same bytes on the wire, the same handler call and the same access
log line, and declines (returns False, having sent nothing) everything else,
which then takes twisted.web's path as before.

What it takes (:func:`parse_plain_get`, which does no I/O): exactly one
request, ``GET <absolute path> HTTP/1.1``, header lines that twisted.web
would accept unchanged, none that changes the answer (``Range``,
conditionals, a body, ``Expect``, ``Transfer-Encoding``), at most one
``Connection`` header. What it answers: a download route whose handler
answers at once with a regular file of 1 byte to ``SMALL_BODY`` — 200 with
the whole file. When the handler has been asked and the answer is anything
else (a Deferred, a refusal, a larger file), the handler's answer is handed
to twisted.web's path with the request (:data:`PRERESOLVED`), so the handler
is asked once per request either way.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from ..errors import TransferError
from ..handler import DownloadTarget
from .download import entity_tag, file_headers
from .filebody import SMALL_BODY
from .request import _SERVER, http_date, route_request
from .routes import DownloadRoute

#: longest head taken (twisted.web's own limit is 16 KiB)
MAX_HEAD = 8192
#: most header lines taken (twisted.web's own limit is 500)
MAX_HEADER_LINES = 64

#: ``GET <target> HTTP/1.1``, the target an absolute path of printable ASCII (no spaces)
_REQUEST_LINE = re.compile(rb"GET (/[\x21-\x7e]*) HTTP/1\.1\r\n")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: header lines, each ``name:value`` + CRLF with a token name and a value without NUL, CR or LF
_HEADER_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[^\x00\r\n]*\r\n)*")
#: one header line: its name, and its value without the spaces and tabs around it (as twisted.web strips)
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00\r\n]*?)[ \t]*\r\n")
#: header names whose presence changes the answer, or whose handling twisted.web must do
_DECLINED = frozenset(
    {
        b"range",
        b"if-range",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
    }
)

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class PlainGet(NamedTuple):
    """A request head the shortcut can answer."""

    target: bytes
    #: the header lines, names lower-cased, in order
    headers: tuple[tuple[bytes, bytes], ...]
    #: the client asked to close the connection after this answer (``Connection: close``)
    close: bool

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), as ``Request.getHeader``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def parse_plain_get(data: bytes) -> PlainGet | None:
    """``data`` as one plain GET head, or None when twisted.web's path must take it.

    ``data`` must be exactly one head, ending with its empty line; anything
    after it (a pipelined request), any line twisted.web would reject or
    rewrite (folded, no colon, a bad name), a declined header, more than one
    ``Connection`` header or an oversized head gives None.
    """
    if len(data) > MAX_HEAD or not data.endswith(b"\r\n\r\n") or not data.startswith(b"GET /"):
        return None
    request_line = _REQUEST_LINE.match(data)
    if request_line is None:
        return None
    # the header lines, each with its CRLF (the head's final empty line left out)
    if _HEADER_BLOCK.fullmatch(data, request_line.end(), len(data) - 2) is None:
        return None
    pairs = _HEADER.findall(data, request_line.end(), len(data) - 2)
    if len(pairs) > MAX_HEADER_LINES:
        return None
    headers = tuple((name.lower(), value) for name, value in pairs)
    close = False
    connection_seen = False
    for name, value in headers:
        if name in _DECLINED:
            return None
        if name == b"connection":
            if connection_seen:
                return None
            connection_seen = True
            # as HTTPChannel.checkPersistence reads it
            close = b"close" in [token.lower() for token in value.split(b" ")]
    return PlainGet(request_line.group(1), headers, close)


class _HeadView:
    """What an identity source reads of a request, for a head the shortcut parsed.

    ``requestHeaders`` is the head itself: ``getRawHeaders`` and ``hasHeader``
    read the parsed lines; anything else builds twisted.web's ``Headers``.
    """

    __slots__ = ("channel", "_head", "_headers")

    def __init__(self, channel: Any, head: PlainGet) -> None:
        self.channel = channel
        self._head = head
        self._headers: Headers | None = None

    @property
    def requestHeaders(self) -> "_HeadView":
        return self

    def getRawHeaders(self, name: bytes, default: Any = None) -> Any:
        wanted = name.lower()
        values = [value for key, value in self._head.headers if key == wanted]
        return values or default

    def hasHeader(self, name: bytes) -> bool:
        return self._head.header(name.lower()) is not None

    def __getattr__(self, name: str) -> Any:
        # any other Headers method: twisted.web's own Headers of these lines
        if self._headers is None:
            headers = Headers()
            for key, value in self._head.headers:
                headers.addRawHeader(key, value)
            self._headers = headers
        return getattr(self._headers, name)


@dataclass(frozen=True, slots=True)
class Preresolved:
    """The handler's answer for a download the shortcut declined after asking it."""

    route: DownloadRoute
    #: a DownloadTarget, a Deferred firing with one, or the Failure the handler raised
    outcome: Any


def answer_plain_get(channel: Any, data: bytes) -> bool:
    """Answer ``data`` (a whole request head) on ``channel`` if it is a plain GET of a small file.

    True: answered (and logged); the connection is closing if the client
    asked (``channel.persistent`` is then false). False: nothing was sent; ``channel.preresolved`` may
    hold the handler's answer for twisted.web's path to use.
    """
    head = parse_plain_get(data)
    if head is None:
        return False
    site = channel.site
    root = getattr(site, "resource", None)
    prefixes = getattr(root, "prefixes", None)
    if prefixes is None or root.children or not site.plain_access_log():
        return False
    _, route = route_request(b"GET", head.target)
    if type(route) is not DownloadRoute:
        return False
    try:
        id_token = site.identity.identify(_HeadView(channel, head))
    except TransferError:
        return False  # refused on twisted.web's path, with its answer
    try:
        target = site.transfer_server.resolve_download_now(route.prefix, route.url_path, id_token)
    except Exception:
        channel.preresolved = Preresolved(route, Failure())
        return False
    answer = _small_file_answer(target, head.close) if isinstance(target, DownloadTarget) else None
    if answer is None:
        channel.preresolved = Preresolved(route, target)
        return False
    response, sent = answer
    channel.transport.write(response)
    site.log_plain_get(channel, head.target, sent, head.header(b"referer"), head.header(b"user-agent"))
    if head.close:
        channel.persistent = False
        channel.loseConnection()
    return True


def _small_file_answer(target: Any, close: bool) -> tuple[bytes, int] | None:
    """The whole 200 answer for ``target`` if it is a regular file of 1 to SMALL_BODY bytes."""
    try:
        fd = os.open(target.path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        file_stat = os.fstat(fd)
        size = file_stat.st_size
        if not stat.S_ISREG(file_stat.st_mode) or not 0 < size <= SMALL_BODY:
            return None
        data = os.pread(fd, size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) != size:
        return None
    block = file_headers(
        os.path.basename(target.path), size, file_stat.st_mtime, entity_tag(file_stat), target.checksum
    )
    # the head Request.write makes: Connection (from checkPersistence), Server and Date (process)
    first = b"HTTP/1.1 200 OK\r\nConnection: close\r\nServer: " if close else b"HTTP/1.1 200 OK\r\nServer: "
    return b"".join((first, _SERVER, b"\r\nDate: ", http_date(int(time.time())), b"\r\n", block, b"\r\n", data)), size
