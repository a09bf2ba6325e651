"""The keep-alive fast path: a plain GET of a small file, answered from its head's bytes.

Private to :mod:`gsitransfer.web.channel`, its one caller; the reference path
it must match byte for byte is twisted.web's (``TransferRequest`` and the
``get_file`` verb), which also answers everything it declines. Turned off by
``FastPaths.keepalive_get`` (``GSITRANSFER_FAST_PATHS=off``).

Most requests on a busy download server are one ``GET`` of one small file,
its head arriving whole in one read. twisted.web would split that head into
lines, make a Request with two ``Headers``, walk its state machine, render,
finish and log it: about two thirds of the server's CPU per request.
:func:`answer_plain_get` answers such a request directly from the bytes,
with the same bytes on the wire, the same handler call and the same access
log line, and declines (returns False, having sent nothing) everything else,
which then takes twisted.web's path.

What it takes (:func:`parse_plain_get`, which does no I/O): exactly one
request, ``GET <absolute path> HTTP/1.1``, header lines that twisted.web
would accept unchanged, none that changes the answer (``Range``,
conditionals, a body, ``Expect``, ``Transfer-Encoding``, ``Want-Digest``,
``Want-Repr-Digest``), at most one
``Connection`` header. What it answers: a request the route table
(:func:`~.table.select`) gives to the file verb, whose handler answers at
once with a regular file of 1 byte to ``SMALL_BODY`` — 200 with the whole
file. When the handler has been asked and the answer is anything else (a
Deferred, a refusal, a larger file), the handler's answer
(:class:`~.exchange.HandlerAnswer`) is handed to the request twisted.web
makes next, so the handler is asked once per request either way.
"""

from __future__ import annotations

import os
import stat
import time
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Protocol

from twisted.web.http_headers import Headers

from ..errors import TransferError
from ..handler import DownloadTarget
from .download import entity_tag, file_headers
from .events import peer_host, plain_get_event
from .exchange import HandlerAnswer, ServingSite
from .filebody import SMALL_BODY
from .heads import SERVER_HEADER, answer_with_head, http_date
from .routes import FileRoute
from .smallfiles import SmallFiles
from .table import FILE_VERB, select
from .verbs import resolve_file

#: longest head taken (twisted.web's own limit is 16 KiB)
MAX_HEAD = 8192
#: most header lines taken (twisted.web's own limit is 500)
MAX_HEADER_LINES = 64

#: the bytes a request target may hold (printable ASCII, no space), deleted by ``bytes.translate``
_TARGET_BYTES = bytes(range(0x21, 0x7F))
#: the bytes a header name (an RFC 9110 token) may hold
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: header names clients send most, as they spell them, lower-cased (a token: no check needed)
_COMMON_NAMES: Mapping[bytes, bytes] = MappingProxyType(
    {
        name: name.lower()
        for name in (
            b"Host", b"User-Agent", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Connection",
            b"Referer", b"Authorization", b"Cookie", b"X-Client-DN", b"Cache-Control",
            b"host", b"user-agent", b"accept", b"accept-encoding", b"connection", b"referer",
        )
    }
)
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
        # a digest to find or compute (maybe on a thread): twisted.web's path answers it
        b"want-digest",
        b"want-repr-digest",
    }
)



class KeepAliveChannel(Protocol):
    """What the fast path uses of the channel (:class:`~.channel.TransferChannel`)."""

    site: ServingSite
    transport: Any
    persistent: int

    def loseConnection(self) -> None:
        """Close once what was written is sent."""

    def hand_over(self, answer: HandlerAnswer) -> None:
        """Give the next request twisted.web makes the handler's answer."""

    def peer_address(self) -> Any:
        """The client's address."""

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
    # linear by construction: a fixed number of bytes methods (split, count, partition, strip,
    # translate), each one pass over its input; no regular expression, nothing that backtracks
    line_end = data.find(b"\r\n")
    if line_end < 14 or not data.startswith(b" HTTP/1.1", line_end - 9):
        return None
    target = data[4 : line_end - 9]
    if not target or target.translate(None, _TARGET_BYTES):
        return None
    # the header lines, each with its CRLF (the head's final empty line left out)
    block = data[line_end + 2 : -2]
    count = block.count(b"\r\n")
    if count > MAX_HEADER_LINES:
        return None
    if count and (block.count(b"\r") != count or block.count(b"\n") != count or b"\x00" in block):
        return None  # a CR or LF outside a line end, or a NUL: twisted.web's path refuses it
    lines = block.split(b"\r\n")
    lines.pop()  # (what follows the last line's CRLF: nothing)
    pairs = []
    for line in lines:
        name, colon, value = line.partition(b":")
        lower = _COMMON_NAMES.get(name)
        if lower is None or not colon:
            if not colon or not name or name.translate(None, _TOKEN_BYTES):
                return None
            lower = name.lower()
        # the value without the spaces and tabs around it, as twisted.web strips it
        pairs.append((lower, value.strip(b" \t")))
    headers = tuple(pairs)
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
    return PlainGet(target, headers, close)


class ParsedHeadRequest:
    """What an identity source reads of a request, for a head the fast path parsed.

    ``requestHeaders`` is the head itself: ``getRawHeaders`` and ``hasHeader``
    read the parsed lines; anything else builds twisted.web's ``Headers``.
    """

    __slots__ = ("channel", "_head", "_headers")

    def __init__(self, channel: KeepAliveChannel, head: PlainGet) -> None:
        self.channel = channel
        self._head = head
        self._headers: Headers | None = None

    @property
    def requestHeaders(self) -> "ParsedHeadRequest":
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


def answer_plain_get(channel: KeepAliveChannel, data: bytes) -> bool:
    """Answer ``data`` (a whole request head) on ``channel`` if it is a plain GET of a small file.

    True: answered (and logged); the connection is closing if the client
    asked (``channel.persistent`` is then false). False: nothing was sent; the
    channel may have been handed the handler's answer for the request
    twisted.web makes of ``data``.
    """
    head = parse_plain_get(data)
    if head is None:
        return False
    site = channel.site
    if not site.plain_access_log():
        return False
    try:
        route, verb = select(b"GET", head.target, site.serving.engine)
    except TransferError:
        return False  # refused on twisted.web's path, with its answer
    if verb is not FILE_VERB:
        return False
    assert isinstance(route, FileRoute)
    try:
        id_token = site.identity.identify(ParsedHeadRequest(channel, head))
    except TransferError:
        return False  # refused on twisted.web's path, with its answer
    target = resolve_file(site.serving, route, id_token)
    answer = _small_file_answer(target, head.close, site.small_files) if isinstance(target, DownloadTarget) else None
    if answer is None:
        channel.hand_over(HandlerAnswer(route.prefix, route.url_path, target))
        return False
    response, sent = answer
    channel.transport.write(response)
    site.log_plain_get(channel, head.target, sent, head.header(b"referer"), head.header(b"user-agent"))
    if site.events.sinks:  # the record the plain path's Site.log makes of the same answer
        site.events.emit_later(
            plain_get_event, (peer_host(channel.peer_address()), route.prefix, route.url_path, sent, id_token.dn),
            time.time(),
        )
    if head.close:
        channel.persistent = False
        channel.loseConnection()
    return True


def _small_file_answer(target: DownloadTarget, close: bool, kept: SmallFiles | None) -> tuple[bytes, int] | None:
    """The whole 200 answer for ``target`` if it is a regular file of 1 to SMALL_BODY bytes.

    ``kept``: the site's small files (the ``small_file_cache`` fast path), or None to read the file each time.
    """
    found = kept.get(target.path, target.checksum) if kept is not None else None
    if found is not None:
        block, data = found
    else:
        read = _read_small_file(target)
        if read is None:
            return None
        file_stat, data = read
        block = file_headers(
            os.path.basename(target.path), len(data), file_stat.st_mtime, entity_tag(file_stat), target.checksum
        )
        if kept is not None:
            kept.keep(target.path, file_stat, target.checksum, block, data)
    # the head Request.write makes: Connection (from checkPersistence), Server and Date (process)
    headers: tuple[tuple[bytes, bytes], ...] = ((b"Server", SERVER_HEADER), (b"Date", http_date(int(time.time()))))
    if close:
        headers = ((b"Connection", b"close"),) + headers
    size = len(data)
    return answer_with_head(b"HTTP/1.1 200 OK\r\n", headers, block, data), size


def _read_small_file(target: DownloadTarget) -> tuple[os.stat_result, bytes] | None:
    """The file's ``fstat`` and whole content if it is a regular file of 1 to SMALL_BODY bytes."""
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
    return file_stat, data
