"""Finding a file's digests for a download: kept ones first, else computed once, off the reactor.

A :class:`Digester` belongs to one server (``HTTPTransferServer.digester``,
handed to its sites in :class:`~.exchange.Serving`). For each file state —
its identity ``(st_dev, st_ino, st_size, st_mtime_ns)``, so a replaced or
rewritten file is a new state — a digest is computed at most once:

1. what the handler's answer says (``DownloadTarget.checksum``: the MD5);
2. what is kept: by the handler when it keeps digests
   (:class:`~gsitransfer.handler.IDigestKeeper`, e.g. the directory store,
   beside its MD5), else in the server's own :class:`DigestCache` (bounded,
   oldest forgotten first);
3. else computed from the open file in one pass for every missing
   algorithm: on the reactor thread for a file of at most ``inline_limit``
   bytes, on the reactor's thread pool otherwise (at most ``concurrency``
   files at once; a second request for the same file state waits for the
   first computation instead of starting its own), then kept. When the
   reactor shuts down, computations on threads stop at their next chunk
   (the pool would otherwise hold the shutdown until they end).

:attr:`Digester.computed` counts the computations (one per file state and
set of algorithms), and each is logged (``computed sha-256 of ...``).
At an upload's publish, the digests the upload hashed on the way (the MD5,
and those the client's digest fields named) are kept the same way
(:meth:`Digester.keep_uploaded`), so a later ``Want-Digest`` finds them.
"""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..digests import (
    MD5,
    WANT_CONTENT_DIGEST,
    BodyHashers,
    DigestError,
    NoUsableDigest,
    Stopped,
    body_hashers,
    digest_file,
    expected_digests,
)
from ..filesink import FileSink
from ..handler import HandlerAdapter
from .status import BadRequest

if TYPE_CHECKING:
    from twisted.web.server import Request

FileIdentity = tuple[int, int, int, int]

#: file states whose digests the server's own cache remembers
CACHE_SIZE = 4096
#: files at most this large are hashed on the reactor thread (less than a millisecond)
INLINE_LIMIT = 64 * 1024
#: files hashed at once on the thread pool
CONCURRENCY = 2

_log = Logger()


def file_identity(file_stat: os.stat_result) -> FileIdentity:
    """The identity a digest holds for: device, inode, size, mtime (ns)."""
    return (file_stat.st_dev, file_stat.st_ino, file_stat.st_size, file_stat.st_mtime_ns)


class DigestCache:
    """The server's own memory of digests, for handlers that keep none: by file identity, bounded."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: collections.OrderedDict[FileIdentity, dict[str, str]] = collections.OrderedDict()

    def known(self, identity: FileIdentity) -> dict[str, str]:
        """The digests kept for ``identity`` (a copy; empty when none)."""
        entry = self._entries.get(identity)
        if entry is None:
            return {}
        self._entries.move_to_end(identity)
        return dict(entry)

    def keep(self, identity: FileIdentity, digests: Mapping[str, str]) -> None:
        """Remember ``digests`` for ``identity`` (added to what is kept)."""
        entry = self._entries.get(identity)
        if entry is None:
            self._entries[identity] = dict(digests)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            entry.update(digests)
            self._entries.move_to_end(identity)

    def __len__(self) -> int:
        return len(self._entries)


class Keeper(Protocol):
    """Where one prefix's digests are kept: its handler, or the server's cache."""

    def known(self, path: str, identity: FileIdentity) -> dict[str, str]: ...

    def keep(self, path: str, identity: FileIdentity, digests: Mapping[str, str]) -> None: ...


@dataclass(frozen=True)
class _CacheKeeper:
    cache: DigestCache

    def known(self, path: str, identity: FileIdentity) -> dict[str, str]:
        return self.cache.known(identity)

    def keep(self, path: str, identity: FileIdentity, digests: Mapping[str, str]) -> None:
        self.cache.keep(identity, digests)


@dataclass(frozen=True)
class _HandlerKeeper:
    adapter: HandlerAdapter

    def known(self, path: str, identity: FileIdentity) -> dict[str, str]:
        try:
            return self.adapter.known_digests(path, identity)
        except Exception:
            _log.failure("KnownDigests failed for {path}", path=path)
            return {}

    def keep(self, path: str, identity: FileIdentity, digests: Mapping[str, str]) -> None:
        try:
            self.adapter.keep_digests(path, identity, dict(digests))
        except Exception:
            _log.failure("KeepDigests failed for {path}", path=path)


class Digester:
    """One server's digest finding: the cache, the computations running, their count."""

    def __init__(
        self, cache_size: int = CACHE_SIZE, inline_limit: int = INLINE_LIMIT, concurrency: int = CONCURRENCY
    ) -> None:
        self.cache = DigestCache(cache_size)
        self.inline_limit = inline_limit
        #: computations made (one per file state and set of missing algorithms)
        self.computed = 0
        self._limit = defer.DeferredSemaphore(concurrency)
        #: set when the reactor shuts down: computations on threads stop at their next chunk
        self._stopping = threading.Event()
        self._watching_shutdown = False
        #: (identity, algorithms) -> the requests waiting for that computation
        self._waiting: dict[tuple[FileIdentity, frozenset[str]], list[defer.Deferred[dict[str, str]]]] = {}

    def keeper(self, adapter: HandlerAdapter | None) -> Keeper:
        """Where digests of files under ``adapter``'s prefix are kept."""
        if adapter is not None and adapter.keeps_digests:
            return _HandlerKeeper(adapter)
        return _CacheKeeper(self.cache)

    def source(self, adapter: HandlerAdapter | None, reactor: Any) -> "DigestSource":
        """What a download under ``adapter``'s prefix finds its digests with."""
        return DigestSource(self, self.keeper(adapter), reactor)

    def keep_uploaded(
        self, adapter: HandlerAdapter | None, path: str, identity: FileIdentity, md5: str, more: Mapping[str, str]
    ) -> None:
        """An upload was published as ``identity`` at ``path``; ``md5`` and ``more`` were hashed on the way.

        A handler that keeps digests is given ``more`` only, if any (it had
        the MD5 as ``CompleteUpload``'s checksum: an upload without digest
        fields costs it nothing more); the server's cache keeps both.
        """
        if adapter is not None and adapter.keeps_digests:
            if more:
                _HandlerKeeper(adapter).keep(path, identity, more)
        else:
            self.cache.keep(identity, {MD5: md5, **more})

    def find(
        self,
        keeper: Keeper,
        path: str,
        fd: int,
        file_stat: os.stat_result,
        algorithms: frozenset[str],
        known: Mapping[str, str],
        reactor: Any,
    ) -> dict[str, str] | defer.Deferred[dict[str, str]]:
        """The digests of ``algorithms`` of the file open on ``fd`` (plus ``known``): now, or a
        Deferred (never failing: a digest that cannot be computed is left out, and logged).

        ``fd`` stays the caller's: a computation on a thread reads a duplicate of it.
        """
        found = {name: value for name, value in known.items() if value}
        if algorithms <= found.keys():
            return found
        identity = file_identity(file_stat)
        found.update({k: v for k, v in keeper.known(path, identity).items() if k not in found})
        missing = frozenset(algorithms - found.keys())
        if not missing:
            return found
        if file_stat.st_size <= self.inline_limit or not IReactorThreads.providedBy(reactor):
            try:
                computed = digest_file(fd, missing)
            except OSError as error:
                _log.warn("cannot compute digests of {path}: {error}", path=path, error=error.strerror)
                return found
            self._computed(keeper, path, identity, missing, computed)
            return {**found, **computed}
        waiter: defer.Deferred[dict[str, str]] = defer.Deferred()
        key = (identity, missing)
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(waiter)
        else:
            try:
                copy = os.dup(fd)
            except OSError as error:
                _log.warn("cannot compute digests of {path}: {error}", path=path, error=error.strerror)
                return found
            self._waiting[key] = [waiter]
            self._watch_shutdown(reactor)
            running = self._limit.run(
                threads.deferToThreadPool, reactor, reactor.getThreadPool(), _digest_and_stat, copy, missing,
                self._stopping.is_set,
            )
            running.addBoth(self._thread_done, keeper, path, identity, missing, key)
        waiter.addCallback(lambda computed: {**found, **computed})
        return waiter

    def _watch_shutdown(self, reactor: Any) -> None:
        """Once: stop computations on threads when ``reactor`` shuts down (its pool waits for them)."""
        if not self._watching_shutdown and IReactorCore.providedBy(reactor):
            self._watching_shutdown = True
            reactor.addSystemEventTrigger("before", "shutdown", self._stopping.set)

    def _thread_done(
        self,
        outcome: tuple[dict[str, str], FileIdentity] | Failure,
        keeper: Keeper,
        path: str,
        identity: FileIdentity,
        missing: frozenset[str],
        key: tuple[FileIdentity, frozenset[str]],
    ) -> None:
        computed: dict[str, str] = {}
        if isinstance(outcome, Failure):
            if outcome.check(Stopped) is None:
                _log.failure("cannot compute digests of {path}", outcome, path=path)
        elif outcome[1] != identity:
            _log.warn("{path} changed while its digests were computed: not served", path=path)
        else:
            computed = outcome[0]
            self._computed(keeper, path, identity, missing, computed)
        for waiter in self._waiting.pop(key, []):
            waiter.callback(dict(computed))

    def _computed(
        self, keeper: Keeper, path: str, identity: FileIdentity, missing: frozenset[str], computed: dict[str, str]
    ) -> None:
        self.computed += 1
        _log.info(
            "computed {algorithms} of {path} ({size} bytes)",
            algorithms=", ".join(sorted(missing)),
            path=path,
            size=identity[2],
        )
        keeper.keep(path, identity, computed)


def _digest_and_stat(
    fd: int, algorithms: frozenset[str], stop: Callable[[], bool]
) -> tuple[dict[str, str], FileIdentity]:
    """On a pool thread: the digests of the file on ``fd``, and its identity after reading (then closed)."""
    try:
        digests = digest_file(fd, algorithms, stop=stop)
        return digests, file_identity(os.fstat(fd))
    finally:
        os.close(fd)


def body_hashers_for(request: Request) -> BodyHashers | None:
    """The hashers for the digests ``request``'s fields name for its body (None: no digest field).

    A malformed field, or fields naming no supported algorithm: BadRequest
    (400); the latter answer says what may be sent (``Want-Content-Digest``,
    ``Want-Repr-Digest``, RFC 9530 §4).
    """
    fields = request.requestHeaders.getRawHeaders
    try:
        return body_hashers(expected_digests(fields))
    except NoUsableDigest as error:
        request.setHeader(b"want-content-digest", WANT_CONTENT_DIGEST)
        request.setHeader(b"want-repr-digest", WANT_CONTENT_DIGEST)
        raise BadRequest(str(error)) from None
    except DigestError as error:
        raise BadRequest(str(error)) from None


def keep_upload_digests(
    digester: Digester, adapter: HandlerAdapter | None, path: str, sink: FileSink, hashers: BodyHashers | None
) -> None:
    """An upload was published at ``path``: keep what was hashed on the way (the MD5, and the
    digests its fields named), so a later ``Want-Digest`` finds them without reading the file."""
    identity = sink.committed_identity
    if identity is None:
        return
    more = {} if hashers is None else hashers.digests()
    digester.keep_uploaded(adapter, path, identity, sink.hexdigest(), more)


@dataclass(frozen=True)
class DigestSource:
    """What a download finds its digests with: the server's digester, the prefix's keeper, the reactor."""

    digester: Digester
    keeper: Keeper
    reactor: Any

    def find(
        self, path: str, fd: int, file_stat: os.stat_result, algorithms: frozenset[str], known: Mapping[str, str]
    ) -> dict[str, str] | defer.Deferred[dict[str, str]]:
        """:meth:`Digester.find` for this prefix."""
        return self.digester.find(self.keeper, path, fd, file_stat, algorithms, known, self.reactor)


__all__ = [
    "BodyHashers",
    "CACHE_SIZE",
    "DigestCache",
    "DigestSource",
    "Digester",
    "FileIdentity",
    "Keeper",
    "body_hashers_for",
    "file_identity",
    "keep_upload_digests",
]
