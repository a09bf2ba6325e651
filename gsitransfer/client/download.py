"""Downloading one file: streamed to a temporary file, resumed, verified, renamed into place.

::

    resume record + partial bytes?  -> GET with Range: bytes=N- and If-Range: <validator>
        206 from N, same validator  -> append
        206, another validator      -> the file changed and the server ignored If-Range: start over
        200                         -> the file changed (or no range support): start over
        416, size == N              -> already complete (unless its validator changed): verify
    no record                       -> GET, bytes to .<name>.gsitransfer-download
    body cut                        -> DownloadInterrupted (partial kept; retried ``retries`` times)
    end of body                     -> size and MD5 (Repr-Digest or the given checksum) checked,
                                       fsync, rename; a mismatch after a resume: once from scratch

The temporary file and its record are :class:`~gsitransfer.client.partial.PartialDownload`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from .errors import (
    ChecksumError,
    ClientError,
    ConnectionFailed,
    DownloadInterrupted,
    NotAFile,
    ProtocolError,
    TLSRefused,
    explain,
)
from .partial import PartialDownload, PartialMeta, same_representation
from .progress import ProgressListener
from .results import DownloadReport
from .session import Session, header, read_small_body, stream_body
from .urls import not_a_file_message


def destination(url: str, dest: str | os.PathLike[str] | None) -> Path:
    """Where a download lands: DEST, or DEST/<name> when DEST is a directory.

    A DEST ending in ``/`` means a directory, which must exist.
    """
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if dest is not None and os.fspath(dest).endswith(os.sep) and not Path(dest).is_dir():
        raise ClientError(f"cannot download to {dest}: no such directory")
    if dest is not None and not Path(dest).is_dir():
        target = Path(dest).absolute()
        if not target.parent.is_dir():
            raise ClientError(f"cannot download to {target}: directory {target.parent} does not exist")
        return target
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ClientError(f"the URL names no file to save: {url} (give a destination file)")
    return (Path(dest).absolute() if dest is not None else Path.cwd()) / name


class _StartOver(Exception):
    """The partial file cannot be resumed: fetch the whole file."""


class DownloadJob:
    """One ``download_file`` call."""

    def __init__(self, session: Session, url: str, target: Path, size: int | None,
                 checksum: str | None, progress: ProgressListener) -> None:
        self.session = session
        self.url = url
        self.target = target
        self.size = size
        self.checksum = checksum
        self.progress = progress
        self.partial = PartialDownload.beside(target)
        self.name = target.name

    async def run(self, resume: bool, retries: int, retry_delay: float) -> DownloadReport:
        if not resume:
            self.partial.discard()
        attempts = 0
        restarted = False
        interrupted = False
        while True:
            try:
                return await self._once()
            except _StartOver:
                self.partial.discard()
            except ChecksumError as error:
                if restarted or not error.resumed:
                    raise
                restarted = True
                self.progress.file_restarted(self.name, "checksum mismatch after a resume")
            except ConnectionFailed as error:
                interrupted = interrupted or isinstance(error, DownloadInterrupted)
                if isinstance(error, TLSRefused) or not interrupted or attempts >= retries:
                    raise
                attempts += 1
                self.progress.file_restarted(self.name, error.message)
                await self.session.sleep(retry_delay)

    async def _once(self) -> DownloadReport:
        offset, record = self.partial.resume_point()
        headers = {}
        if offset and record is not None and record.validator:
            headers = {"Range": f"bytes={offset}-", "If-Range": record.validator}
        response = await self.session.request("GET", self.url, headers=headers)
        if headers and response.code == 416:
            return await self._unsatisfiable(response, offset, record)
        if headers and response.code == 206:
            assert record is not None
            self._check_version(response, record)
            total = await self._check_range(response, offset)
            if total is not None and record.total is not None and total != record.total:
                stream_body(response, lambda data: None).cancel()
                self.progress.file_restarted(self.name, "the file changed size on the server")
                raise _StartOver()
        elif response.code == 200:
            if _is_listing(response):
                stream_body(response, lambda data: None).cancel()
                raise NotAFile(self.url, not_a_file_message(self.url, "a listing or a transfer's state"))
            offset = 0
            total = None if response.length is UNKNOWN_LENGTH else int(response.length)
        else:
            await self.session.expect(response, (200,), "GET", self.url)
            raise ProtocolError(f"unexpected status {response.code}")
        expected = self.checksum or _repr_digest_md5(response) or (record.md5 if offset and record else None)
        if self.size is not None and total is not None and total != self.size:
            stream_body(response, lambda data: None).cancel()
            raise ChecksumError(f"{self.url} has {total} bytes, not the expected {self.size}")
        self.partial.save(PartialMeta(self.url, header(response, "etag") or header(response, "last-modified"),
                                      total, expected))
        return await self._receive(response, offset, total, expected)

    def _check_version(self, response: IResponse, record: PartialMeta) -> None:
        """A resumed answer must be of the version the partial bytes are from; else start over.

        The server should answer a changed file's ``If-Range`` with ``200``;
        one that ignores If-Range answers ``206`` with the new version's
        validator, and splicing its bytes onto the old ones would make a file
        that never existed (undetected without an MD5).
        """
        if same_representation(record, header(response, "etag"), header(response, "last-modified")):
            return
        stream_body(response, lambda data: None).cancel()
        self.progress.file_restarted(self.name, "the file changed on the server")
        raise _StartOver()

    async def _check_range(self, response: IResponse, offset: int) -> int | None:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", header(response, "content-range") or "")
        if match is None or int(match.group(1)) != offset:
            stream_body(response, lambda data: None).cancel()
            raise ProtocolError(f"the server answered the range request for {self.url} with another range")
        return None if match.group(3) == "*" else int(match.group(3))

    async def _unsatisfiable(self, response: IResponse, offset: int, record: PartialMeta | None) -> DownloadReport:
        """416 for ``bytes=offset-``: complete already if the server's size is ``offset``."""
        await read_small_body(response)
        match = re.fullmatch(r"bytes \*/(\d+)", header(response, "content-range") or "")
        if match is None or int(match.group(1)) != offset or record is None or record.total != offset:
            raise _StartOver()
        etag, modified = header(response, "etag"), header(response, "last-modified")
        if (etag or modified) and not same_representation(record, etag, modified):
            raise _StartOver()
        digest = await self.session.md5_of(self.partial.temp)
        self.progress.file_started(self.name, offset, offset)
        return self._finish(digest.hexdigest(), offset, self.checksum or record.md5, offset)

    async def _receive(self, response: IResponse, offset: int, total: int | None,
                       expected: str | None) -> DownloadReport:
        digest = await self.session.md5_of(self.partial.temp, offset) if offset else hashlib.md5()
        self.progress.file_started(self.name, total, offset)
        received = offset
        with open(self.partial.temp, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()

            def sink(data: bytes) -> None:
                nonlocal received
                out.write(data)
                digest.update(data)
                received += len(data)
                self.progress.file_advanced(self.name, len(data))

            try:
                await stream_body(response, sink)
            except defer.CancelledError:
                raise
            except ClientError:
                raise
            except Exception as error:
                cause = explain(error, self.url)
                text = cause.message if isinstance(cause, ClientError) else str(cause)
                raise DownloadInterrupted(self.url, received, total, text) from None
        if total is not None and received != total:
            raise DownloadInterrupted(self.url, received, total, "the server closed the connection early")
        return self._finish(digest.hexdigest(), received, expected, offset)

    def _finish(self, md5: str, size: int, expected: str | None, resumed_from: int) -> DownloadReport:
        if expected and md5 != expected:
            self.partial.discard()
            error = ChecksumError(
                f"{self.name}: the downloaded bytes have MD5 {md5}, not {expected}; nothing was saved",
                resumed=resumed_from > 0,
            )
            self.progress.file_finished(self.name, error.message)
            raise error
        self.partial.commit()
        self.progress.file_finished(self.name, None)
        return DownloadReport(self.url, self.target, size, md5, bool(expected), resumed_from)


def _is_listing(response: IResponse) -> bool:
    """A JSON answer with no validator and no ranges: a listing or a transfer's state, not a stored file."""
    json_type = (header(response, "content-type") or "").split(";")[0].strip().lower() == "application/json"
    return json_type and not header(response, "etag") and not header(response, "accept-ranges")


def _repr_digest_md5(response: IResponse) -> str | None:
    """The MD5 of an RFC 9530 ``Repr-Digest: md5=:<base64>:`` header, as hex."""
    match = re.search(r"(?:^|,)\s*md5=:([A-Za-z0-9+/=]+):", header(response, "repr-digest") or "")
    if match is None:
        return None
    try:
        raw = base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


__all__ = ["DownloadJob", "destination"]
