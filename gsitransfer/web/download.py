"""Serving one file: what twisted.web's ``static.File`` answers, plus ETag and Repr-Digest.

The answer has ``static.File``'s headers and statuses (``Accept-Ranges``,
``Last-Modified`` and ``If-Modified-Since`` -> 304, the content type from the
file name's extension, HEAD, one ``Range`` -> 206 or 416), a strong ``ETag``
from the file's stat (``If-None-Match`` -> 304) and, when the handler knows the
MD5, ``Repr-Digest: md5=:<base64>:`` (RFC 9530). ``Range`` is honoured for one
well-formed range and ignored otherwise (:func:`parse_range`), and only while
``If-Range`` (if sent) names this version of the file (:func:`if_range_holds`).

Every download carries ``X-Content-Type-Options: nosniff`` and
``Content-Security-Policy: default-src 'none'; sandbox``; a type a browser
would run or render as a page (:data:`ACTIVE_TYPES`, any ``+xml``) is served
as an attachment (:func:`safety_headers`): a stored file never runs on the
server's origin with its visitor's certificate.

``Want-Repr-Digest`` (RFC 9530) and ``Want-Digest`` (RFC 3230) are answered
with ``Repr-Digest`` and ``Digest`` (:mod:`gsitransfer.digests` parses and
formats them): the digest is found or computed once per file state by the
server's :class:`~.digesting.Digester` (a big file's on a thread: the answer
waits for it, the descriptor stays open), then the answer goes on as usual.
``Repr-Digest`` then lists the wanted algorithm first and the MD5 (when
known) after it, unless the client rated ``md5`` 0.

The file is opened once and everything comes from that descriptor's
``fstat``; the body is sent by :mod:`gsitransfer.web.filebody` (one write for a
small body, a push producer otherwise), without ``static.File``'s cooperator.
The usual answer (a plain GET of a small file, 200) takes a shortcut with the
same bytes on the wire: its header lines are rendered once per file state
(:func:`file_headers`) and go out with the body in one write.
"""

from __future__ import annotations

import base64
import errno
import functools
import math
import os
import stat
from urllib.parse import quote

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import http, static
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ..digests import MD5, WANT_FIELDS, Wanted, digest_field, repr_digest_field, wanted_digests
from ..errors import FileNotFound, NotAuthorized
from ..handler import DownloadTarget
from .digesting import DigestSource
from .filebody import SMALL_BODY, send_body, send_small
from .status import refusal_for, refuse

#: what an answer sends: the whole file (None), bytes (offset, length), or nothing (416)
Unsatisfiable = tuple[()]
UNSATISFIABLE: Unsatisfiable = ()

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


@functools.lru_cache(maxsize=1024)
def content_type(name: str) -> tuple[bytes, bytes | None]:
    """Content-Type and Content-Encoding for a file name, as ``static.File`` chooses them."""
    kind, encoding = static.getTypeAndEncoding(
        name, static.File.contentTypes, static.File.contentEncodings, "application/octet-stream"
    )
    return kind.encode("ascii"), None if encoding is None else encoding.encode("ascii")


#: types a browser would run, or render as a page of the server's origin (scripts, HTML, XML with
#: its stylesheets and SVG's scripts, Flash, XSLT): always served as attachments. Any ``+xml`` type too.
ACTIVE_TYPES = frozenset(
    {
        b"text/html",
        b"application/xhtml+xml",
        b"image/svg+xml",
        b"text/xml",
        b"application/xml",
        b"text/xsl",
        b"application/xslt+xml",
        b"text/javascript",
        b"application/javascript",
        b"application/x-javascript",
        b"application/ecmascript",
        b"text/ecmascript",
        b"application/x-shockwave-flash",
        b"text/cache-manifest",
        b"multipart/x-mixed-replace",
    }
)
#: every download: no content sniffing; nothing a rendered file may load or run (RFC 9110 leaves it to us)
NOSNIFF = b"nosniff"
DOWNLOAD_CSP = b"default-src 'none'; sandbox"


@functools.lru_cache(maxsize=1024)
def safety_headers(name: str) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every download carries for a file called ``name``: nosniff, a CSP, and for a
    type a browser would run, ``Content-Disposition: attachment`` with the name (RFC 6266, RFC 8187)."""
    headers = [(b"X-Content-Type-Options", NOSNIFF), (b"Content-Security-Policy", DOWNLOAD_CSP)]
    kind, _ = content_type(name)
    if kind in ACTIVE_TYPES or kind.endswith(b"+xml"):
        # (a name that is not UTF-8, from a handler: its bytes, percent-encoded)
        encoded = quote(name, safe="!#$&+^`|~", errors="surrogateescape").encode("ascii")
        headers.append((b"Content-Disposition", b"attachment; filename*=UTF-8''" + encoded))
    return tuple(headers)


def repr_digest(md5_hex: str) -> bytes:
    """The RFC 9530 ``Repr-Digest`` value for an MD5 given as hex."""
    return b"md5=:" + base64.b64encode(bytes.fromhex(md5_hex)) + b":"


def entity_tag(file_stat: os.stat_result) -> bytes:
    """A strong ETag that changes whenever the file's content may have changed."""
    return b'"%x-%x-%x"' % (file_stat.st_mtime_ns, file_stat.st_size, file_stat.st_ino)


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """The one byte range to send of a ``size``-byte file: (offset, length), UNSATISFIABLE or None.

    None means the whole file with 200: no header, a malformed one, another
    unit, or several ranges (RFC 9110 lets a server ignore ``Range``; served
    overlapping and in full, several ranges would be a cheap way to make the
    server send many times the file). A suffix longer than the file means the
    whole file (206); a range starting at or beyond the end is UNSATISFIABLE
    (416).
    """
    if header is None:
        return None
    unit, _, spec = header.partition(b"=")
    parts = [part.strip() for part in spec.split(b",") if part.strip()]
    if unit.strip().lower() != b"bytes" or len(parts) != 1:
        return None
    first, dash, last = parts[0].partition(b"-")
    if not dash:
        return None
    if not first:
        if not last.isdigit():
            return None
        start, end = max(0, size - _offset(last)), size
    elif not first.isdigit() or (last and (not last.isdigit() or _offset(last) < _offset(first))):
        return None
    else:
        start, end = _offset(first), min(_offset(last) + 1, size) if last else size
    if start >= size:
        return UNSATISFIABLE
    return start, end - start


#: larger than any file: what an offset of more digits than this reads as
_BEYOND_ANY_FILE = 10**19


def _offset(digits: bytes) -> int:
    """A byte offset from ASCII digits; past 19 digits, larger than any file (``int`` of thousands
    of digits is slow, and refused past Python's limit)."""
    digits = digits.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= 19 else _BEYOND_ANY_FILE


def if_range_holds(validator: bytes | None, etag: bytes, mtime: float) -> bool:
    """Whether a ``Range`` may be honoured under ``If-Range: validator`` (RFC 9110 §13.1.5).

    No ``If-Range``: yes. An entity tag: only the file's own strong ETag
    (a weak one never matches). A date: only exactly the file's
    ``Last-Modified``. Anything else does not match: the whole file is sent.
    """
    if validator is None:
        return True
    validator = validator.strip(b" \t")
    if validator.startswith(b'"') or validator.startswith(b"W/"):
        return validator == etag
    try:
        when: int = http.stringToDatetime(validator)
    except Exception:  # twisted.web's date parser raises whatever its input leads it to: not a date
        return False
    return when == int(math.ceil(mtime))


@functools.lru_cache(maxsize=256)
def file_headers(
    name: str, size: int, mtime: float, etag: bytes, checksum: str | None
) -> bytes:
    """The header lines of a whole file's 200 answer, as ``serve_file`` sets them, rendered once.

    Rendered by twisted.web's ``Headers`` (names capitalised and values checked
    as for any answer), in the order ``serve_file`` sets them.
    """
    headers = Headers()
    if checksum:
        headers.setRawHeaders(b"repr-digest", [repr_digest(checksum)])
    headers.setRawHeaders(b"accept-ranges", [b"bytes"])
    kind, encoding = content_type(name)
    headers.setRawHeaders(b"content-type", [kind])
    if encoding is not None:
        headers.setRawHeaders(b"content-encoding", [encoding])
    for header, value in safety_headers(name):
        headers.setRawHeaders(header, [value])
    headers.setRawHeaders(b"content-length", [b"%d" % size])
    headers.setRawHeaders(b"Last-Modified", [http.datetimeToString(int(math.ceil(mtime)))])
    headers.setRawHeaders(b"ETag", [etag])
    return b"".join(
        b"%s: %s\r\n" % (key, value) for key, values in headers.getAllRawHeaders() for value in values
    )


def _plain_get(request: Request) -> bool:
    """A GET with nothing that changes its answer: no Range, no conditions."""
    headers = request.requestHeaders
    return (
        request.method == b"GET"
        and not headers.hasHeader(b"range")
        and not headers.hasHeader(b"if-none-match")
        and not headers.hasHeader(b"if-modified-since")
    )


def _wanted(request: Request) -> Wanted | None:
    """The digests the request asks for, or None (the usual case: no Want-* field, no work)."""
    headers = request.requestHeaders
    if not any(headers.hasHeader(name) for name in WANT_FIELDS):
        return None
    return wanted_digests(headers.getRawHeaders) or None


def digest_headers(
    wanted: Wanted, found: dict[str, str], checksum: str | None
) -> list[tuple[bytes, bytes]]:
    """``Repr-Digest`` and ``Digest`` for what ``wanted`` asks, from the digests ``found`` (hex)."""
    headers = []
    order = [wanted.repr_digest] if wanted.repr_digest is not None else []
    if checksum and not wanted.md5_refused and MD5 not in order:
        order.append(MD5)
        found = {MD5: checksum, **found}
    value = repr_digest_field(found, [name for name in order if name is not None])
    if value:
        headers.append((b"repr-digest", value))
    if wanted.digest is not None and wanted.digest in found:
        headers.append((b"digest", digest_field(wanted.digest, found[wanted.digest])))
    return headers


def serve_file(request: Request, target: DownloadTarget, digests: DigestSource | None = None) -> None:
    """Answer a GET or HEAD with the file ``target`` names (with the digests a ``Want-*`` field
    asks for, found through ``digests``)."""
    try:
        fd = os.open(target.path, _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.EACCES:
            refuse(request, NotAuthorized("the file cannot be read"))
        else:
            refuse(request, FileNotFound("no such file"))
        return
    try:
        file_stat = os.fstat(fd)
        if not stat.S_ISREG(file_stat.st_mode):
            os.close(fd)
            refuse(request, FileNotFound("no such file"))
            return
    except BaseException:
        os.close(fd)
        raise
    wanted = None if digests is None else _wanted(request)
    if wanted is None:
        _answer(request, target, fd, file_stat, None)
        return
    assert digests is not None
    known = {MD5: target.checksum} if target.checksum else {}
    try:
        found = digests.find(target.path, fd, file_stat, wanted.algorithms(), known)
    except BaseException:
        os.close(fd)
        raise
    if isinstance(found, defer.Deferred):
        found.addCallback(lambda values: _answer_found(request, target, fd, file_stat, wanted, values))
        found.addErrback(_failed_after_digests, request)
        return
    _answer(request, target, fd, file_stat, digest_headers(wanted, found, target.checksum))


def _answer_found(
    request: Request,
    target: DownloadTarget,
    fd: int,
    file_stat: os.stat_result,
    wanted: Wanted,
    found: dict[str, str],
) -> None:
    """The digests were computed (on a thread): answer, unless the client has gone meanwhile."""
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        os.close(fd)
        return
    _answer(request, target, fd, file_stat, digest_headers(wanted, found, target.checksum))


def _failed_after_digests(failure: Failure, request: Request) -> None:
    """A bug while answering after the digests came: logged; a 500 if nothing was sent yet."""
    error = refusal_for(failure, "serving a file with its digests")
    if not (request.startedWriting or getattr(request, "_disconnected", False) or request.finished):
        refuse(request, error)


def _answer(
    request: Request,
    target: DownloadTarget,
    fd: int,
    file_stat: os.stat_result,
    digest_lines: list[tuple[bytes, bytes]] | None,
) -> None:
    """Answer from the open file ``fd``: headers and status as ``static.File``, then the body.

    ``digest_lines``: the ``Repr-Digest``/``Digest`` a ``Want-*`` field asked
    for (None: the usual ``Repr-Digest: md5`` when the MD5 is known).
    """
    size = file_stat.st_size
    name = os.path.basename(target.path)
    if (
        digest_lines is None
        and 0 < size <= SMALL_BODY
        and hasattr(request, "write_with_head")
        and _plain_get(request)
    ):
        # the usual answer: 200 with the whole file, its headers rendered once per file state
        block = file_headers(name, size, file_stat.st_mtime, entity_tag(file_stat), target.checksum)
        send_small(request, fd, 0, size, block)
        return
    for header, value in safety_headers(name):
        request.setHeader(header, value)
    if digest_lines is None:
        if target.checksum:
            request.setHeader(b"repr-digest", repr_digest(target.checksum))
    else:
        for header, value in digest_lines:
            request.setHeader(header, value)
    etag = entity_tag(file_stat)
    if request.setETag(etag) is http.CACHED:
        os.close(fd)
        request.finish()
        return
    request.setHeader(b"accept-ranges", b"bytes")
    if request.setLastModified(file_stat.st_mtime) is http.CACHED:
        os.close(fd)
        request.finish()
        return
    wanted = parse_range(request.getHeader(b"range"), size)
    if wanted is not None and not if_range_holds(request.getHeader(b"if-range"), etag, file_stat.st_mtime):
        wanted = None  # the client's part is of another version of the file: the whole of this one
    if wanted is None:
        offset, length = 0, size
    elif len(wanted) == 0:  # UNSATISFIABLE
        request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
        request.setHeader(b"content-range", b"bytes */%d" % size)
        offset = length = 0
    else:
        offset, length = wanted
        request.setResponseCode(http.PARTIAL_CONTENT)
        request.setHeader(b"content-range", b"bytes %d-%d/%d" % (offset, offset + length - 1, size))
    kind, encoding = content_type(name)
    request.setHeader(b"content-type", kind)
    if encoding is not None:
        request.setHeader(b"content-encoding", encoding)
    request.setHeader(b"content-length", b"%d" % length)
    if request.method == b"HEAD" or not length:
        os.close(fd)
        request.finish()
        return
    send_body(request, fd, offset, length)
