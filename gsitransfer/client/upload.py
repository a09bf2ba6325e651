"""Uploading files: MD5s, the manifest, then every body, ``jobs`` at a time, with retries.

::

    URL without a prefix     -> GET / for the server's prefixes -> NoPrefix
    URL /<prefix>/NAME       -> one file stored as NAME (several files: UsageError)
    files on disk --MD5 (off the reactor thread)--> manifest --POST /<prefix>/manifest-->
        return_code 1        -> UploadRefused(error_reason lines; a taken name adds a hint)
        already_stored: N..  -> those files are not sent: the server has them (same name, size, MD5)
        transfer key         -> POST /<prefix>/<key>/<n> per other file (FileBodyProducer)
            422              -> the file still has its announced MD5? send it again
                                (``retries`` times); else it changed: fail that file
            network broke    -> send it again after a pause (``retries`` times)
            other refusal    -> fail that file (status and reason kept)
    any file failed          -> UploadIncomplete(report)

With an existing transfer key the manifest step is replaced by reading the
transfer's state: files already stored are skipped, pending ones are sent.
"""

from __future__ import annotations

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
from .progress import ProgressListener, human_size
from .queries import fetch_status, require_prefix
from .results import UploadedFile, UploadReport
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


class UploadJob:
    """One ``upload_files`` call."""

    def __init__(self, session: Session, url: str, progress: ProgressListener, jobs: int,
                 retries: int, open_body: OpenBody) -> None:
        self.session = session
        self.url = url
        #: the prefix URL (known once ``run`` has split ``url``)
        self.base = url.rstrip("/")
        self.progress = progress
        self.jobs = jobs
        self.retries = retries
        self.open_body = open_body
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
        items: list[_Item] = []
        done: list[UploadedFile] = []
        for num, ((path, name, size), md5) in enumerate(zip(local, sums)):
            if num in stored:
                done.append(UploadedFile(path, name, size, md5, f"{self.base}/{quote(name)}", 0,
                                         already_stored=True))
            else:
                items.append(_Item(path, name, size, md5, num))
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
                items.append(_Item(path, name, size, entry.checksum, entry.file_num))
        return items, done

    async def _send_with_retries(self, item: _Item) -> UploadedFile:
        attempt = 0
        while True:
            attempt += 1
            self.progress.file_started(item.name, item.size)
            try:
                fields = await self._send(item, attempt)
            except HTTPStatusError as error:
                retry, message = await self._after_refusal(item, error, attempt)
                if not retry:
                    return self._failed(item, attempt, message, error.status)
                self.progress.file_restarted(item.name, f"{error.status} {error.reason}")
                continue
            except TLSRefused as error:
                return self._failed(item, attempt, error.message)
            except ConnectionFailed as error:
                if attempt > self.retries:
                    return self._failed(item, attempt, error.message)
                self.progress.file_restarted(item.name, error.message)
                await self.session.sleep(min(attempt, 5))
                continue
            except ClientError as error:
                return self._failed(item, attempt, error.message)
            self.progress.file_finished(item.name, None)
            urls = fields.get("url") or []
            return UploadedFile(item.path, item.name, item.size, item.checksum, urls[0] if urls else None, attempt)

    async def _after_refusal(self, item: _Item, error: HTTPStatusError, attempt: int) -> tuple[bool, str]:
        """(retry?, message) after a refused body: only a checksum mismatch is worth another try."""
        message = f"{error.status} {error.reason}"
        if error.status != 422:
            return False, message
        current = (await self.session.md5_of(item.path)).hexdigest()
        if current != item.checksum:
            return False, (f"{message} -- {item.path} is not the file the manifest announced "
                           "(did it change after its MD5 was taken?)")
        if attempt > self.retries:
            return False, f"{message} (after {attempt} attempts)"
        return True, message

    def _failed(self, item: _Item, attempts: int, message: str, status: int | None = None) -> UploadedFile:
        self.progress.file_finished(item.name, message)
        return UploadedFile(item.path, item.name, item.size, item.checksum, None, attempts, message, status)

    async def _send(self, item: _Item, attempt: int) -> dict[str, list[str]]:
        url = f"{self.base}/{self.key}/{item.num}"
        try:
            stream = self.open_body(item.path, attempt)
        except OSError as error:
            raise ClientError(f"cannot read {item.path}: {error.strerror or error}") from None
        producer = FileBodyProducer(stream, item.size, lambda n: self.progress.file_advanced(item.name, n))
        try:
            response = await self.session.request(
                "POST", url, body=producer, headers={"Content-Type": "application/octet-stream"}
            )
            return parse_fields(await self.session.expect(response, (200,), "POST", url))
        finally:
            # an early answer (a refusal before the body) leaves the producer registered with
            # the connection until it closes: it must not read the closed file then
            producer.close()


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
