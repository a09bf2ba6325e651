"""Serving one file: twisted.web's ``static.File`` semantics plus ETag and Repr-Digest.

``static.File`` already streams with a producer (constant memory), answers
HEAD, ``Range`` (206, multipart for several ranges, 416), ``If-Modified-Since``
(304) and sets ``Accept-Ranges`` and ``Last-Modified``. Here we add a strong
``ETag`` from the file's stat (``If-None-Match`` -> 304) and, when the handler
knows the MD5, ``Repr-Digest: md5=:<base64>:`` (RFC 9530). ``Range`` is
narrowed to one well-formed range first (:func:`normalise_range`).

The file is read in ``DOWNLOAD_CHUNK`` pieces (``static.File`` reads 64 KiB):
fewer, larger writes cost less Python per byte on the way to the TLS layer.
"""

from __future__ import annotations

import base64
import os
import stat

from twisted.web import http, static
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from ..handler import DownloadTarget
from .status import write_error

#: bytes read from the file per producer step (measured: 256 KiB beats 64 KiB, 128 KiB,
#: 512 KiB and 1 MiB over TLS on loopback; see docs/benchmarks.md)
DOWNLOAD_CHUNK = 256 * 1024


class _File(static.File):
    """``static.File`` whose producers read ``DOWNLOAD_CHUNK`` bytes at a time."""

    def makeProducer(self, request, fileForReading):  # type: ignore[no-untyped-def]
        producer = super().makeProducer(request, fileForReading)
        producer.bufferSize = DOWNLOAD_CHUNK
        return producer


def repr_digest(md5_hex: str) -> bytes:
    """The RFC 9530 ``Repr-Digest`` value for an MD5 given as hex."""
    return b"md5=:" + base64.b64encode(bytes.fromhex(md5_hex)) + b":"


def entity_tag(file_stat: os.stat_result) -> bytes:
    """A strong ETag that changes whenever the file's content may have changed."""
    return b'"%x-%x-%x"' % (file_stat.st_mtime_ns, file_stat.st_size, file_stat.st_ino)


def normalise_range(request: IRequest, size: int) -> None:
    """Leave ``static.File`` only one well-formed byte range, or none.

    RFC 9110 lets a server ignore ``Range``; we do for a malformed header and
    for several ranges (which ``static.File`` would serve overlapping and in
    full, a cheap way to make the server send many times the file). A suffix
    longer than the file means the whole file.
    """
    header = request.getHeader(b"range")
    if header is None:
        return
    unit, _, spec = header.partition(b"=")
    parts = [part.strip() for part in spec.split(b",") if part.strip()]
    first, dash, last = parts[0].partition(b"-") if len(parts) == 1 else (b"", b"", b"")
    if unit.strip().lower() != b"bytes" or not dash:
        request.requestHeaders.removeHeader(b"range")
        return
    if not first:
        if not last.isdigit():
            request.requestHeaders.removeHeader(b"range")
        elif int(last) >= size:
            request.requestHeaders.setRawHeaders(b"range", [b"bytes=0-"])
        return
    if not first.isdigit() or (last and (not last.isdigit() or int(last) < int(first))):
        request.requestHeaders.removeHeader(b"range")


def serve_file(request: IRequest, target: DownloadTarget) -> None:
    """Answer a GET or HEAD with the file ``target`` names."""
    try:
        file_stat = os.stat(target.path)
    except OSError:
        write_error(request, 404, "no such file")
        return
    if not stat.S_ISREG(file_stat.st_mode):
        write_error(request, 404, "no such file")
        return
    if target.checksum:
        request.setHeader(b"repr-digest", repr_digest(target.checksum))
    if request.setETag(entity_tag(file_stat)) is http.CACHED:
        request.finish()
        return
    normalise_range(request, file_stat.st_size)
    resource = _File(target.path, defaultType="application/octet-stream")
    body = resource.render(request)
    if body is not NOT_DONE_YET:
        request.write(body)
        request.finish()
