"""Uploading files: MD5s, the manifest, then every body, ``jobs`` at a time, resumed where the server stopped.

::

    URL without a prefix     -> GET / for the server's prefixes -> NoPrefix
    URL /<prefix>/NAME       -> one file stored as NAME (several files: UsageError)
    files on disk --MD5 (off the reactor thread)--> manifest --POST /<prefix>/manifest-->
        return_code 1        -> UploadRefused(error_reason lines; a taken name adds a hint)
        already_stored: N..  -> those files are not sent: the server has them (same name, size, MD5)
        resume_from: N=B ..  -> the server holds B bytes of file N (an earlier run's): PATCH from B
        transfer key         -> POST /<prefix>/<key>/<n> per other file (FileBodyProducer)
            422              -> the file still has its announced MD5? send it again from 0, once;
                                else it changed: fail that file
            network broke,   -> pause (1, 2, 4, 8, 16 s), HEAD the file URL for the bytes the server
            500/502/503/504     holds, PATCH the rest from there (``retries`` times in a row without
                                the server gaining bytes; a 409 "offset does not match": HEAD again)
            HEAD/PATCH 405   -> an older server: whole POSTs from then on (said once)
            other refusal    -> fail that file (status and reason kept)
    any file failed          -> UploadIncomplete(report)

With ``resume=False`` (``--no-resume``) there is no HEAD and no PATCH: a
file is always sent whole, as before resumable uploads. With an existing
transfer key the manifest step is replaced by reading the transfer's state:
files already stored are skipped, pending ones are sent (from their
``offset``). No journal is kept on disk: the server's offsets are the record,
and re-running the same command posts a manifest that takes the names over
(SPEC 7.3) and answers ``resume_from``.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, BinaryIO, Callable, Sequence, TypeVar
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ..errors import ManifestError
from ..manifest import Manifest
from .errors import (
    ClientError,
    ConnectionFailed,
    HTTPStatusError,
    ProtocolError,
    TLSRefused,
    UploadIncomplete,
    UploadRefused,
)
from .progress import ProgressListener, human_size, notify
from .queries import fetch_status, require_prefix
from .results import UploadedFile, UploadReport
from .resume import (
    NotResumable,
    OffsetMismatch,
    backoff,
    check_patch_answer,
    offset_after,
    patch_headers,
    probe,
    resume_points,
    transient,
)
from .session import FileBodyProducer, Session, parse_fields
from .urls import upload_destination

#: opens the body of one upload attempt: (path, attempt number from 1) -> binary stream
OpenBody = Callable[[Path, int], BinaryIO]


def open_for_upload(path: Path, attempt: int) -> BinaryIO:
    """The file itself, unbuffered (the producer reads 256 KiB at a time)."""
    return open(path, "rb", buffering=0)  # noqa: SIM115 -- closed by the upload


@dataclass(frozen=True)
class _Item:
    path: Path
    name: str
    size: int
    checksum: str
    num: int
    #: bytes the server said it holds when the upload began (resume_from, or the transfer's offset)
    held: int = 0


@dataclass
class _Tally:
    """What one file's sending did so far."""

    attempts: int = 0
    sent: int = 0
    #: the offset the first body started from (an earlier run's bytes)
    resumed_from: int = 0


class _Retry(Exception):
    """This try failed in a way worth another (after a pause); ``message`` says how."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class UploadJob:
    """One ``upload_files`` call."""

    def __init__(self, session: Session, url: str, progress: ProgressListener, jobs: int,
                 retries: int, open_body: OpenBody, resume: bool = True, atomic: bool = False) -> None:
        self.session = session
        self.url = url
        #: the prefix URL (known once ``run`` has split ``url``)
        self.base = url.rstrip("/")
        self.progress = progress
        self.jobs = jobs
        self.retries = retries
        self.open_body = open_body
        #: False: whole POSTs only (asked for, or the server does not resume uploads)
        self.resume = resume
        #: True: the manifest asks for an atomic batch (``commit = atomic``: all files appear together)
        self.atomic = atomic
        self.key = ""

    async def run(self, paths: list[Path], transfer_key: str | None, name: str | None = None) -> UploadReport:
        target = await require_prefix(self.session, self.url, "upload")
        self.base, name = upload_destination(target, len(paths), name)
        local = [_local_file(path, name) for path in paths]
        if not local:
            raise ClientError("no files to upload")
        done: list[UploadedFile] = []
        if transfer_key is None:
            items, done = await self._announce(local)
        else:
            items, done = await self._continue(transfer_key, local)
        self.progress.transfer_started([(item.name, item.size) for item in items])
        outcomes = await _pool(items, self.jobs, self._send_with_retries)
        by_path = {f.path: f for f in [*done, *outcomes]}
        report = UploadReport(self.base, self.key, tuple(by_path[p] for p, _, _ in local))
        if not report.ok:
            raise UploadIncomplete(report)
        return report

    async def _announce(self, local: list[tuple[Path, str, int]]) -> tuple[list[_Item], list[UploadedFile]]:
        total = sum(size for _, _, size in local)
        self.progress.phase(f"computing MD5 of {len(local)} file{'s' * (len(local) != 1)} ({human_size(total)})")
        sums = [(await self.session.md5_of(path)).hexdigest() for path, _, _ in local]
        try:
            manifest = Manifest.of(*((name, size, md5) for (_, name, size), md5 in zip(local, sums)))
            if self.atomic:
                manifest = dataclasses.replace(manifest, commit="atomic")
        except ManifestError as error:
            raise ClientError(f"cannot upload: {error.reason}") from None
        self.progress.phase("posting the manifest")
        url = f"{self.base}/manifest"
        response = await self.session.request(
            "POST", url, body=manifest.to_ini().encode("utf-8"),
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        fields = parse_fields(await self.session.expect(response, (200,), "POST", url))
        if fields.get("return_code") != ["0"] or not fields.get("transfer_key"):
            if fields.get("error_reason"):
                raise UploadRefused(fields["error_reason"])
            raise ProtocolError(f"unexpected answer to the manifest from {url}")
        self.key = fields["transfer_key"][0]
        stored = _already_stored(fields, len(local), url)
        held = resume_points(fields, [size for _, _, size in local], url)
        items: list[_Item] = []
        done: list[UploadedFile] = []
        for num, ((path, name, size), md5) in enumerate(zip(local, sums)):
            if num in stored:
                done.append(UploadedFile(path, name, size, md5, self._file_url(name), 0,
                                         already_stored=True))
            else:
                items.append(_Item(path, name, size, md5, num, held.get(num, 0)))
        return items, done

    async def _continue(
        self, transfer_key: str, local: list[tuple[Path, str, int]]
    ) -> tuple[list[_Item], list[UploadedFile]]:
        status = await fetch_status(self.session, f"{self.base}/{transfer_key}")
        self.key = status.transfer_key
        entries = {f.name: f for f in status.files}
        items: list[_Item] = []
        done: list[UploadedFile] = []
        for path, name, size in local:
            entry = entries.get(name)
            if entry is None:
                raise ClientError(f"{name} is not a file of transfer {transfer_key}")
            if entry.size != size:
                raise ClientError(f"{path} has {size} bytes but transfer {transfer_key} announced {entry.size}")
            if entry.state == "stored":
                done.append(UploadedFile(path, name, size, entry.checksum, entry.url, 0))
            else:
                held = entry.offset if entry.offset is not None and entry.offset < size else 0
                items.append(_Item(path, name, size, entry.checksum, entry.file_num, held))
        return items, done

    # -- one file ------------------------------------------------------------------------

    async def _send_with_retries(self, item: _Item) -> UploadedFile:
        """Send ``item`` until it is stored, it is refused, or ``retries`` tries in a row gained nothing."""
        tally = _Tally()
        offset = item.held if self.resume else 0
        tally.resumed_from = offset
        ask_first = False  # HEAD before the next body: after a break, the server may hold more than we know
        failures = 0  # tries in a row after which the server held no more bytes than before
        broke = False  # a try of this file broke: a 409 "already arriving" may be our own old connection
        resent_after_422 = False
        known = offset
        while True:
            try:
                if ask_first:
                    ask_first = False
                    offset = await self._held(item)
                    if offset > known:
                        failures, known = 0, offset
                    if offset == item.size:
                        return self._stored(item, tally, None)
                tally.attempts += 1
                if offset:
                    notify(self.progress, f"{item.name}: resumed at {offset / item.size * 100:.1f}% "
                                          f"({human_size(offset)} held by the server)")
                self.progress.file_started(item.name, item.size, offset)
                if offset == 0:
                    return self._stored(item, tally, await self._post(item, tally))
                await self._patch(item, offset, tally)
                return self._stored(item, tally, None)
            except NotResumable as refusal:
                self._no_resume(refusal)
                if refusal.method == "PATCH":  # its bar was started
                    self.progress.file_restarted(item.name, f"{refusal}: the whole file")
                offset = tally.resumed_from = 0  # every byte is sent after all
                continue
            except OffsetMismatch:
                failure = _Retry("the server holds another number of bytes than we sent from")
            except HTTPStatusError as error:
                if error.status == 422:
                    retry, message = await self._after_checksum_refusal(item, error, tally, resent_after_422)
                    if not retry:
                        return self._failed(item, tally, message, error.status)
                    resent_after_422 = True
                    self.progress.file_restarted(item.name, message)
                    offset = known = tally.resumed_from = 0  # the server threw the bytes it held away
                    continue
                if not (transient(error.status) or (error.status == 409 and broke)):
                    return self._failed(item, tally, f"{error.status} {error.reason}", error.status)
                failure = _Retry(f"{error.status} {error.reason}", error.status)
            except TLSRefused as error:
                return self._failed(item, tally, error.message)
            except ConnectionFailed as error:
                failure = _Retry(error.message)
            except ClientError as error:
                return self._failed(item, tally, error.message)
            failures += 1
            broke = True
            if failures > self.retries:
                tries = f" (after {failures} tries in a row)" if failures > 1 else ""
                return self._failed(item, tally, failure.message + tries, failure.status)
            pause = backoff(failures)
            self.progress.file_restarted(item.name, f"{failure.message} -- pausing {pause:g} s")
            await self.session.sleep(pause)
            ask_first = True

    async def _held(self, item: _Item) -> int:
        """The bytes of ``item`` the server holds (``HEAD``); 0 when it does not resume uploads."""
        if not self.resume:
            return 0
        return await probe(self.session, self._num_url(item), item.size)

    def _no_resume(self, refusal: NotResumable) -> None:
        """From now on whole POSTs only; said once."""
        if self.resume:
            self.resume = False
            # an older server takes HEAD /<prefix>/<key>/<n> for a download (404); so may a newer one whose key
            # has just expired (the whole POST then says so)
            what = "does not resume uploads, or no longer knows the transfer" if refusal.status == 404 \
                else "does not resume uploads"
            notify(self.progress, f"the server {what} ({refusal}): a file that is cut off is sent again whole")

    async def _after_checksum_refusal(self, item: _Item, error: HTTPStatusError, tally: _Tally,
                                      resent: bool) -> tuple[bool, str]:
        """(send again from 0?, message) after a 422: once, if the file still has its announced MD5."""
        message = f"{error.status} {error.reason}"
        current = (await self.session.md5_of(item.path)).hexdigest()
        if current != item.checksum:
            return False, (f"{message} -- {item.path} is not the file the manifest announced "
                           "(did it change after its MD5 was taken?)")
        if resent:
            return False, f"{message} (after {tally.attempts} attempts)"
        return True, message

    def _stored(self, item: _Item, tally: _Tally, url: str | None) -> UploadedFile:
        self.progress.file_finished(item.name, None)
        return UploadedFile(item.path, item.name, item.size, item.checksum, url or self._file_url(item.name),
                            tally.attempts, resumed_from=tally.resumed_from, bytes_sent=tally.sent)

    def _failed(self, item: _Item, tally: _Tally, message: str, status: int | None = None) -> UploadedFile:
        self.progress.file_finished(item.name, message)
        return UploadedFile(item.path, item.name, item.size, item.checksum, None, tally.attempts, message, status,
                            resumed_from=tally.resumed_from, bytes_sent=tally.sent)

    def _file_url(self, name: str) -> str:
        """Where a stored file is downloaded."""
        return f"{self.base}/{quote(name)}"

    def _num_url(self, item: _Item) -> str:
        """The file's upload URL, ``/<prefix>/<key>/<n>``."""
        return f"{self.base}/{self.key}/{item.num}"

    def _producer(self, item: _Item, offset: int, tally: _Tally) -> FileBodyProducer:
        """The bytes of ``item`` from ``offset`` on, counted in ``tally`` and the progress."""
        try:
            stream = self.open_body(item.path, tally.attempts)
            if offset:
                stream.seek(offset)
        except OSError as error:
            raise ClientError(f"cannot read {item.path}: {error.strerror or error}") from None

        def moved(n: int) -> None:
            tally.sent += n
            self.progress.file_advanced(item.name, n)

        return FileBodyProducer(stream, item.size - offset, moved)

    async def _post(self, item: _Item, tally: _Tally) -> str | None:
        """The whole file (``POST``); the URL the server names for it."""
        url = self._num_url(item)
        producer = self._producer(item, 0, tally)
        try:
            response = await self.session.request(
                "POST", url, body=producer, headers={"Content-Type": "application/octet-stream"}
            )
            fields = parse_fields(await self.session.expect(response, (200,), "POST", url))
        finally:
            # an early answer (a refusal before the body) leaves the producer registered with
            # the connection until it closes: it must not read the closed file then
            producer.close()
        urls = fields.get("url") or []
        return urls[0] if urls else None

    async def _patch(self, item: _Item, offset: int, tally: _Tally) -> None:
        """The rest of the file from ``offset`` (``PATCH``); the server stores it when it has every byte."""
        url = self._num_url(item)
        producer = self._producer(item, offset, tally)
        try:
            response = await self.session.request("PATCH", url, body=producer, headers=patch_headers(offset))
            await check_patch_answer(response)
            await self.session.expect(response, (200, 204), "PATCH", url)
        finally:
            producer.close()
        reached = offset_after(response, item.size, url)
        if reached != item.size:
            raise ProtocolError(f"the server holds {reached} of {item.size} bytes after PATCH {url} sent them all")


def _already_stored(fields: dict[str, list[str]], count: int, url: str) -> set[int]:
    """The file numbers of the manifest answer's ``already_stored: 0 2`` line (none without it)."""
    numbers: set[int] = set()
    for line in fields.get("already_stored", []):
        for word in line.split():
            if not word.isdigit() or int(word) >= count:
                raise ProtocolError(f"unexpected already_stored line in the answer to the manifest from {url}")
            numbers.add(int(word))
    return numbers


def _local_file(path: Path, name: str | None = None) -> tuple[Path, str, int]:
    """(path, the name to store it under: ``name`` or its own, its size); a ClientError if it cannot be read."""
    try:
        status = path.stat()
    except OSError as error:
        raise ClientError(f"cannot upload {path}: {error.strerror or error}") from None
    if not path.is_file():
        raise ClientError(f"cannot upload {path}: not a regular file")
    return path, name if name is not None else path.name, status.st_size


_Task = TypeVar("_Task")
_Outcome = TypeVar("_Outcome")


async def _pool(items: Sequence[_Task], jobs: int, work: Callable[[_Task], Awaitable[_Outcome]]) -> list[_Outcome]:
    """``work(item)`` for every item, at most ``jobs`` at a time; results in item order."""
    results: dict[int, _Outcome] = {}
    pending = list(enumerate(items))

    async def worker() -> None:
        while pending:
            index, item = pending.pop(0)
            results[index] = await work(item)

    workers = [Deferred.fromCoroutine(worker()) for _ in range(min(jobs, len(items)))]
    try:
        await defer.gatherResults(workers, consumeErrors=True)
    except defer.FirstError as error:
        error.subFailure.raiseException()
    return [results[index] for index in range(len(items))]


__all__ = ["OpenBody", "UploadJob", "open_for_upload"]
