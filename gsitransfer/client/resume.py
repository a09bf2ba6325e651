"""Resuming an upload: the server's offsets (tus 1.0 core on ``/<prefix>/<key>/<n>``), retry pauses.

What this module owns (the upload, :mod:`gsitransfer.client.upload`, decides
when to use them):

* :func:`resume_points` -- the manifest answer's ``resume_from: 0=1048576 2=4096``
  line: file number -> the bytes the server already holds of it;
* :func:`probe` -- ``HEAD`` on a file URL: the server's durable offset;
  :class:`NotResumable` when the server does not resume uploads (an older
  one answers ``405``); other refusals are HTTPStatusErrors;
* :func:`patch_headers` and :func:`offset_after` -- a ``PATCH`` from an
  offset and the offset its ``204`` reports;
* :func:`check_patch_answer` -- what a ``PATCH`` answer means:
  :class:`OffsetMismatch` for a ``409`` that carries ``Upload-Offset`` (ask
  again with ``HEAD``), :class:`NotResumable` for ``405``/``412``/``501``;
* :func:`transient` -- statuses worth another try after a pause (``500``,
  ``502``, ``503``, ``504``), and :func:`backoff`, the pause before try ``n``:
  1, 2, 4, 8, 16 s, then 16 s each.

Nothing here keeps state between calls; nothing needs a journal on disk: the
server's offsets are the record (SPEC 7.1, 7.3).
"""

from __future__ import annotations

from twisted.web.iweb import IResponse

from .errors import HTTPStatusError, ProtocolError
from .session import Session, header, read_small_body

#: the tus protocol version spoken
TUS_VERSION = "1.0.0"
#: the PATCH body's media type (tus 1.0 core)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
#: the longest pause between tries, in seconds
BACKOFF_CAP = 16.0
#: statuses that say "not now" rather than "no": tried again after a pause
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
#: statuses a server that does not resume uploads gives to HEAD or PATCH on a file URL
NOT_RESUMABLE_STATUSES = frozenset({405, 412, 501})


def backoff(failures: int) -> float:
    """Seconds to wait before the next try after ``failures`` failures in a row (1, 2, 4, 8, 16, 16 ...)."""
    return min(2.0 ** max(failures - 1, 0), BACKOFF_CAP)


def transient(status: int) -> bool:
    """Whether a refusal with ``status`` may go away by itself (an overloaded or restarting server)."""
    return status in TRANSIENT_STATUSES


def resume_points(fields: dict[str, list[str]], sizes: list[int], url: str) -> dict[int, int]:
    """File number -> bytes held, from ``resume_from: 0=1048576 2=4096`` (none without the line).

    A number that is not a file of the manifest, or an offset that is not
    below the file's size, is a ProtocolError (the server is not following
    the contract; resuming from it could only corrupt the file).
    """
    points: dict[int, int] = {}
    for line in fields.get("resume_from", []):
        for word in line.split():
            num, sep, offset = word.partition("=")
            if not (sep and num.isdigit() and offset.isdigit()) or int(num) >= len(sizes) \
                    or int(offset) > sizes[int(num)]:
                raise ProtocolError(f"unexpected resume_from line in the answer to the manifest from {url}")
            points[int(num)] = int(offset)
    return points


def _offset(response: IResponse, size: int | None = None) -> int | None:
    """The answer's ``Upload-Offset`` (None when absent); a ProtocolError when it is not a byte count."""
    text = header(response, "upload-offset")
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or (size is not None and int(text) > size):
        raise ProtocolError(f"the server's Upload-Offset is not a byte count of the file: {text[:40]!r}")
    return int(text)


async def probe(session: Session, url: str, size: int) -> int:
    """``HEAD url``: the bytes the server holds (durably) of a file of ``size`` bytes (all: it is stored).

    NotResumable when the server does not resume uploads: it answers
    405/412/501, or a success without ``Upload-Offset``, or a 404 without
    ``Tus-Resumable`` (an older server takes the URL for a download's). Other
    refusals raise HTTPStatusError (403: not our transfer; 404: the key
    expired; 5xx: see :func:`transient`).
    """
    response = await session.request("HEAD", url, headers={"Tus-Resumable": TUS_VERSION})
    await read_small_body(response)
    code = response.code
    if code in NOT_RESUMABLE_STATUSES or (code == 404 and header(response, "tus-resumable") is None):
        raise NotResumable("HEAD", code)
    if 200 <= code < 300:
        offset = _offset(response, size)
        if offset is None:
            raise NotResumable("HEAD", code)
        return offset
    raise HTTPStatusError(code, (response.phrase or b"").decode("latin-1", "replace"), "HEAD", url)


def patch_headers(offset: int) -> dict[str, str]:
    """The headers of a ``PATCH`` that appends at ``offset``."""
    return {"Content-Type": OFFSET_OCTET_STREAM, "Upload-Offset": str(offset), "Tus-Resumable": TUS_VERSION}


def offset_after(response: IResponse, size: int, url: str) -> int:
    """The offset a successful ``PATCH`` answer reports (a ProtocolError when it has none)."""
    offset = _offset(response, size)
    if offset is None:
        raise ProtocolError(f"the server's answer to PATCH {url} has no Upload-Offset")
    return offset


class OffsetMismatch(Exception):
    """A PATCH was refused because the server holds another number of bytes (``409`` + ``Upload-Offset``)."""


class NotResumable(Exception):
    """The server does not resume uploads: ``method`` (HEAD or PATCH) on a file URL got ``status`` (405...)."""

    def __init__(self, method: str, status: int) -> None:
        super().__init__(method, status)
        self.method = method
        self.status = status

    def __str__(self) -> str:
        return f"{self.method} answered {self.status}"


async def check_patch_answer(response: IResponse) -> None:
    """Raise OffsetMismatch or NotResumable for those answers (their small body read); else nothing."""
    if response.code == 409 and header(response, "upload-offset") is not None:
        await read_small_body(response)
        raise OffsetMismatch()
    if response.code in NOT_RESUMABLE_STATUSES:
        await read_small_body(response)
        raise NotResumable("PATCH", response.code)


__all__ = [
    "BACKOFF_CAP",
    "NOT_RESUMABLE_STATUSES",
    "OFFSET_OCTET_STREAM",
    "TRANSIENT_STATUSES",
    "TUS_VERSION",
    "NotResumable",
    "OffsetMismatch",
    "backoff",
    "check_patch_answer",
    "offset_after",
    "patch_headers",
    "probe",
    "resume_points",
    "transient",
]
