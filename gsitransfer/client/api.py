"""The client's operations, Twisted-native: each returns a cancellable ``Deferred``.

::

    upload_files(url, paths)        MD5 each file, POST the manifest, POST the files
                                    (``jobs`` at once), PATCH the rest of a file the server
                                    holds part of, re-send a file refused with 422
    download_file(url, dest)        GET into .<name>.gsitransfer-download, resume with
                                    Range/If-Range, verify the MD5, then rename into place
    list_files(url)                 GET /<prefix>/            -> Listing
    transfer_status(url)            GET /<prefix>/<key>       -> TransferStatus
    cancel_transfer(url)            DELETE /<prefix>/<key>    -> the server's line

Every function takes ``http``, a ``treq.client.HTTPClient`` (so tests and
applications inject their own agent; see :func:`make_http_client` and
:func:`globus_policy`), a ``reactor`` (clock and thread pool) and a
``progress`` listener or callback (:mod:`gsitransfer.client.progress`).
Cancelling the returned Deferred stops the transfer and closes its
connections; a partial download stays on disk, to be resumed.

Failures are :mod:`gsitransfer.client.errors` values with one-line messages.
Memory stays bounded whatever the file size: upload bodies are produced from
the file chunk by chunk; download bodies go chunk by chunk to disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable, Mapping, TypeVar
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred

from .credentials import DEFAULT_PROXY_DIR, PassphrasePrompt, find_credential, find_trust, load_credential
from .download import DownloadJob, destination
from .errors import ClientError
from .progress import ProgressListener, as_listener
from .queries import cancel, fetch_listing, fetch_status, require_prefix
from .results import (
    DownloadReport,
    Listing,
    RemoteFile,
    TransferFile,
    TransferStatus,
    UploadedFile,
    UploadReport,
)
from .session import IClientReactor, RunBlocking, Session, make_http_client
from .tls import HANDSHAKE_TIMEOUT, GSIClientPolicy
from .upload import OpenBody, UploadJob, open_for_upload
from .urls import download_source

#: a progress listener, a plain ``callback(name, done_bytes, total_bytes)``, or None
Progress = ProgressListener | Callable[[str, int, int | None], object] | None


# ---------------------------------------------------------------------------
# Building a client
# ---------------------------------------------------------------------------


def globus_policy(
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    uid: int | None = None,
    cert: str | None = None,
    key: str | None = None,
    proxy: str | None = None,
    ca_dir: str | None = None,
    ca_file: str | None = None,
    passphrase: PassphrasePrompt | None = None,
    proxy_dir: Path = DEFAULT_PROXY_DIR,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> GSIClientPolicy:
    """The TLS policy a Globus user expects: credential and trust found as Globus finds them.

    ``env``, ``home``, ``uid`` and ``proxy_dir`` default to the process's own
    (``os.environ``, ``$HOME``, ``os.getuid()``, ``/tmp``); tests inject them.
    """
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home()) if home is None else home
    uid = os.getuid() if uid is None else uid
    credential = find_credential(env, home=home, uid=uid, cert=cert, key=key, proxy=proxy,
                                 proxy_dir=proxy_dir)
    trust = find_trust(env, home=home, ca_dir=ca_dir, ca_file=ca_file)
    return GSIClientPolicy(load_credential(credential, passphrase=passphrase), trust,
                           handshake_timeout=handshake_timeout)


def _session(url: str, http: HTTPClient | None, reactor: IClientReactor | None, run_blocking: RunBlocking | None,
             pool_size: int = 4) -> Session:
    if http is None:
        tls = globus_policy() if urlsplit(url).scheme == "https" else None
        http = make_http_client(reactor, tls=tls, pool_size=pool_size)
    return Session(http, reactor, run_blocking)


def _base(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"not an http:// or https:// URL: {url}")
    return url.rstrip("/")


_Result = TypeVar("_Result")


def _run(coroutine: Coroutine[Deferred[Any], Any, _Result]) -> Deferred[_Result]:
    """The operation's coroutine as a (cancellable) Deferred."""
    return Deferred.fromCoroutine(coroutine)


async def _with_prefix(session: Session, url: str, command: str,
                       work: Coroutine[Deferred[Any], Any, _Result]) -> _Result:
    """``work``'s result, once ``url`` is known to name a prefix (NoPrefix otherwise)."""
    try:
        await require_prefix(session, url, command)
    except BaseException:
        work.close()
        raise
    return await work


# ---------------------------------------------------------------------------
# Operations (the work is done by upload.py, download.py and queries.py)
# ---------------------------------------------------------------------------


def upload_files(
    url: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    http: HTTPClient | None = None,
    progress: Progress = None,
    jobs: int = 4,
    retries: int = 5,
    transfer_key: str | None = None,
    name: str | None = None,
    resume: bool = True,
    reactor: IClientReactor | None = None,
    run_blocking: RunBlocking | None = None,
    open_body: OpenBody | None = None,
    atomic: bool = False,
) -> "Deferred[UploadReport]":
    """Upload ``paths`` to ``url`` (``https://host:8443/<prefix>``); fires with an UploadReport.

    The files keep their base names; one file may be stored under another
    ``name``, or under the last segment of ``https://host:8443/<prefix>/NAME``.
    A file the server reports already stored (same name, size and MD5: the
    manifest answer's ``already_stored``) is not sent and counts as success.
    ``jobs`` bodies are sent at once. A file the server holds part of (the
    manifest answer's ``resume_from``: an earlier, interrupted upload of the
    same file by the same person) is continued with ``PATCH`` from there. A
    body cut by the network or answered 500/502/503/504 is continued after
    a pause (1, 2, 4, 8, 16 s) from what the server holds (``HEAD``), up to
    ``retries`` times in a row without the server gaining bytes; a body
    refused with ``422`` (checksum mismatch) is sent again whole, once.
    ``resume=False``: no HEAD, no PATCH, whole bodies only. ``atomic=True``
    asks for an atomic batch (``commit = atomic``): no file appears until
    every one is verified, then all do (a new manifest only). With
    ``transfer_key`` the files are sent as the pending files of that
    existing transfer (no new manifest; files it already stored are
    skipped, the others continued from their offsets). Fails with
    UploadRefused when the handler refuses the manifest, UploadIncomplete
    when some file failed.
    """
    try:
        session = _session(url, http, reactor, run_blocking, pool_size=jobs)
        _base(url)
        job = UploadJob(session, url, as_listener(progress), max(jobs, 1), max(retries, 0),
                        open_body or open_for_upload, resume, atomic)
    except Exception:
        return defer.fail()
    return _run(job.run([Path(p) for p in paths], transfer_key, name))


def download_file(
    url: str,
    dest: str | os.PathLike[str] | None = None,
    size: int | None = None,
    checksum: str | None = None,
    *,
    http: HTTPClient | None = None,
    progress: Progress = None,
    resume: bool = True,
    retries: int = 2,
    retry_delay: float = 2.0,
    reactor: IClientReactor | None = None,
    run_blocking: RunBlocking | None = None,
) -> "Deferred[DownloadReport]":
    """Download ``url`` to ``dest`` (a file, a directory, or None: the current directory).

    A URL that names no file -- no prefix, a prefix, a path ending in ``/``,
    or one the server answers with a listing -- is refused (``NoPrefix``,
    ``NotAFile``) and nothing is saved.

    The body goes to ``.<name>.gsitransfer-download`` beside the destination
    and is renamed into place only when complete and its MD5 matches
    ``checksum`` (or the server's ``Repr-Digest``). An interrupted download
    is resumed (``Range``/``If-Range``) by the next call, and within this
    call up to ``retries`` times, ``retry_delay`` seconds apart. ``size``,
    when given, must be the server's size.
    """
    try:
        session = _session(url, http, reactor, run_blocking, pool_size=1)
        base = _base(url)
    except Exception:
        return defer.fail()

    async def run() -> DownloadReport:
        download_source(await require_prefix(session, url, "download"))
        job = DownloadJob(session, base, destination(url, dest), size,
                          checksum.lower() if checksum else None, as_listener(progress))
        return await job.run(resume, max(retries, 0), retry_delay)

    return _run(run())


def list_files(url: str, *, http: HTTPClient | None = None, reactor: IClientReactor | None = None) -> "Deferred[Listing]":
    """The files of a prefix (``GET /<prefix>/``), when its handler can list them."""
    try:
        session = _session(url, http, reactor, None)
        base = _base(url)
    except Exception:
        return defer.fail()
    return _run(_with_prefix(session, url, "ls", fetch_listing(session, base)))


def transfer_status(url: str, *, http: HTTPClient | None = None, reactor: IClientReactor | None = None) -> "Deferred[TransferStatus]":
    """The state of each file of a transfer (``url`` is ``.../<prefix>/<transfer_key>``)."""
    try:
        session = _session(url, http, reactor, None)
        base = _base(url)
    except Exception:
        return defer.fail()
    return _run(_with_prefix(session, url, "status", fetch_status(session, base)))


def cancel_transfer(url: str, *, http: HTTPClient | None = None, reactor: IClientReactor | None = None) -> "Deferred[str]":
    """Cancel a transfer (``DELETE .../<prefix>/<transfer_key>``); fires with the server's line."""
    try:
        session = _session(url, http, reactor, None)
        base = _base(url)
    except Exception:
        return defer.fail()
    return _run(_with_prefix(session, url, "cancel", cancel(session, base)))


__all__ = [
    "DownloadReport",
    "Listing",
    "OpenBody",
    "Progress",
    "RemoteFile",
    "TransferFile",
    "TransferStatus",
    "UploadReport",
    "UploadedFile",
    "cancel_transfer",
    "download_file",
    "globus_policy",
    "list_files",
    "make_http_client",
    "transfer_status",
    "upload_files",
]
