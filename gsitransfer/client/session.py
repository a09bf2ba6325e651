"""HTTP plumbing of the client: one request, streamed bodies both ways, bounded memory.

What this module owns:

* :func:`make_http_client` -- a ``treq`` ``HTTPClient`` over a Twisted
  ``Agent`` with a persistent connection pool and, for ``https://``, the
  :class:`~gsitransfer.client.tls.GSIClientPolicy`;
* :class:`Session` -- what every operation needs: the HTTP client, a clock
  (retry delays), a way to run blocking work (MD5 of a big file) off the
  reactor thread (:class:`RunBlocking`), and :meth:`Session.request`, which
  turns every network or TLS failure into a one-line
  :class:`~gsitransfer.client.errors.ClientError`;
* :class:`IClientReactor` -- what the client needs of a reactor;
* :class:`FileBodyProducer` -- an ``IBodyProducer`` reading a file in chunks
  as the connection asks for them (pause/resume from the transport), with a
  per-chunk progress hook: the upload body never sits in memory;
* :class:`BodyReader` / :func:`stream_body` -- a response body handed chunk
  by chunk to a sink (a file), cancellable (it closes the connection), and
  :func:`read_small_body`, which refuses bodies over a limit.

``treq.collect`` would do for the body, but its Deferred cannot be
cancelled: a cancelled download must close its connection, so the reader is
our own ``Protocol``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, ParamSpec, Protocol, TypeVar, cast

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import Protocol as BodyProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from .errors import ClientError, HTTPStatusError, ProtocolError, explain

#: bytes read from a file per write to the connection
CHUNK_SIZE = 256 * 1024
#: largest error, manifest answer, listing or status body read into memory
SMALL_BODY_LIMIT = 16 * 1024 * 1024
#: seconds to wait for a TCP connection
CONNECT_TIMEOUT = 30.0

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


class IClientReactor(IReactorTCP, IReactorTime, IReactorPluggableNameResolver, IReactorThreads):
    """What the client needs of a reactor: connections and name resolution (the Agent),
    a clock (retry delays, timeouts) and a thread pool (MD5s of big files).

    Every Twisted reactor provides these; a test passes a ``MemoryReactorClock``
    with :func:`inline_runner` (then the thread pool is not used).
    """


class RunBlocking(Protocol):
    """Runs a blocking function somewhere (a thread pool, or right here); a Deferred of its result."""

    def __call__(
        self, function: Callable[_Params, _Result], /, *args: _Params.args, **kwargs: _Params.kwargs
    ) -> Deferred[_Result]: ...


class Digest(Protocol):
    """A running hash (``hashlib.md5()``)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def make_http_client(
    reactor: IClientReactor | None = None,
    *,
    tls: IPolicyForHTTPS | None = None,
    pool_size: int = 4,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> HTTPClient:
    """A treq client whose HTTPS connections use ``tls`` (an ``IPolicyForHTTPS``: a GSIClientPolicy)."""
    reactor = _reactor(reactor)
    # Twisted's HTTPConnectionPool and Agent constructors are not annotated
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(pool_size, 1)
    options: dict[str, object] = {"pool": pool, "connectTimeout": connect_timeout}
    if tls is not None:
        options["contextFactory"] = tls
    agent = Agent(reactor, **options)
    return HTTPClient(agent)


def _reactor(reactor: IClientReactor | None) -> IClientReactor:
    """``reactor``, or the global one (which provides everything IClientReactor names)."""
    if reactor is None:
        from twisted.internet import reactor as default

        return cast(IClientReactor, default)
    return reactor


def thread_runner(reactor: IClientReactor | None = None) -> RunBlocking:
    """Run blocking functions in the reactor's thread pool."""
    chosen = _reactor(reactor)

    def run(
        function: Callable[_Params, _Result], /, *args: _Params.args, **kwargs: _Params.kwargs
    ) -> Deferred[_Result]:
        return deferToThreadPool(chosen, chosen.getThreadPool(), function, *args, **kwargs)

    return run


def inline_runner(
    function: Callable[_Params, _Result], /, *args: _Params.args, **kwargs: _Params.kwargs
) -> Deferred[_Result]:
    """Run a blocking function right here (tests, or a reactor with no threads)."""
    return defer.maybeDeferred(function, *args, **kwargs)


class Session:
    """The HTTP client, clock and blocking-work runner an operation uses."""

    def __init__(
        self, http: HTTPClient, reactor: IClientReactor | None = None, run_blocking: RunBlocking | None = None
    ) -> None:
        self.http = http
        self.reactor = _reactor(reactor)
        self.run_blocking = run_blocking or thread_runner(self.reactor)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | IBodyProducer | None = None,
    ) -> IResponse:
        """Send one request; network and TLS failures become ClientErrors.

        ``body`` is bytes or an ``IBodyProducer``. Bytes are sent by our own
        producer (treq's would use the global reactor's cooperator).
        """
        producer: IBodyProducer | None
        if isinstance(body, bytes):
            producer = FileBodyProducer(io.BytesIO(body), len(body)) if body else None
        else:
            producer = body
        try:
            return await self.http.request(
                method, url, headers=_headers(headers), data=producer,
                unbuffered=True, allow_redirects=False,
                # treq's reactor type (TCP, time, name resolution) is private; IClientReactor has it all
                reactor=self.reactor,  # type: ignore[arg-type]
            )
        except defer.CancelledError:
            raise
        except Exception as error:
            raise explain(error, url) from None

    async def sleep(self, seconds: float) -> None:
        """Wait on the session's clock (cancellable)."""
        await deferLater(self.reactor, seconds, lambda: None)

    async def expect(self, response: IResponse, statuses: tuple[int, ...], method: str, url: str) -> bytes:
        """The small body of ``response`` if its status is one of ``statuses``; else HTTPStatusError."""
        try:
            body = await read_small_body(response)
        except (defer.CancelledError, ClientError):
            raise
        except Exception as error:
            raise explain(error, url) from None
        if response.code not in statuses:
            raise HTTPStatusError(response.code, _reason(body, response), method, url)
        return body

    def md5_of(self, path: Path, length: int | None = None) -> Deferred[Digest]:
        """MD5 (a hashlib object) of the first ``length`` bytes of ``path`` (all of it: None), off-thread."""
        return self.run_blocking(md5_file, path, length)


def _headers(headers: Mapping[str, str] | None) -> Headers:
    return Headers({name: [value] for name, value in (headers or {}).items()})


def _reason(body: bytes, response: IResponse) -> str:
    text = body.decode("utf-8", "replace").strip()
    line = text.splitlines()[0] if text else ""
    return line[:300] or (response.phrase or b"").decode("latin-1", "replace")


def md5_file(path: Path, length: int | None = None, chunk: int = 1024 * 1024) -> Digest:
    """A hashlib MD5 over the first ``length`` bytes of ``path`` (the whole file when None)."""
    digest = hashlib.md5()
    remaining = length
    with open(path, "rb") as stream:
        while remaining is None or remaining > 0:
            data = stream.read(chunk if remaining is None else min(chunk, remaining))
            if not data:
                break
            digest.update(data)
            if remaining is not None:
                remaining -= len(data)
    return digest


def header(response: IResponse, name: str) -> str | None:
    """The last value of header ``name``, as text, or None."""
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[-1].decode("latin-1") if values else None


def parse_fields(body: bytes) -> dict[str, list[str]]:
    """The seed's ``key: value`` lines (a key may repeat: error_reason)."""
    fields: dict[str, list[str]] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), []).append(value.strip())
    return fields


# ---------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------


@implementer(IBodyProducer)
class FileBodyProducer:
    """Streams ``length`` bytes of an open file, a chunk per write, as fast as the connection takes them.

    ``on_bytes(n)`` is called after each chunk handed to the connection. A
    file that ends early fails the body (the request is aborted).
    """

    def __init__(
        self, stream: BinaryIO, length: int, on_bytes: Callable[[int], None] = lambda n: None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.length = length
        self._stream = stream
        self._remaining = length
        self._on_bytes = on_bytes
        self._chunk_size = chunk_size
        self._consumer: IConsumer | None = None
        self._finished: Deferred[None] | None = None
        self._paused = False
        self._stopped = False
        self._pumping = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._finished = Deferred()
        self._pump()
        return self._finished

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The request is over (answered early, cancelled, connection lost): produce nothing more."""
        self._stopped = True

    def close(self) -> None:
        """Stop for good and close the file (the transport may still ask for more: it gets nothing)."""
        self._stopped = True
        self._stream.close()

    def _pump(self) -> None:
        if self._pumping or self._consumer is None or self._finished is None or self._finished.called:
            return
        self._pumping = True
        try:
            while not self._paused and not self._stopped and self._remaining > 0:
                data = self._stream.read(min(self._chunk_size, self._remaining))
                if not data:
                    self._stopped = True
                    self._finished.errback(ClientError(
                        f"{getattr(self._stream, 'name', 'the file')} became shorter while it was being sent"
                    ))
                    return
                self._remaining -= len(data)
                self._consumer.write(data)
                self._on_bytes(len(data))
            if self._remaining == 0 and not self._stopped:
                self._stopped = True
                self._finished.callback(None)
        finally:
            self._pumping = False


class BodyReader(BodyProtocol):
    """Hands a response body to ``sink`` chunk by chunk; ``done`` fires at its end.

    Cancelling ``done`` closes the connection. If ``sink`` raises, the
    connection is closed and ``done`` fails with that error.
    """

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.done: Deferred[None] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            self.sink(data)
        except BaseException as error:
            self._close()
            if not self.done.called:
                self.done.errback(error)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """The body ended (ResponseDone; None: likewise) or broke (the reason fails ``done``)."""
        if self.done.called:
            return
        if reason is None or isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def _cancel(self, _: Deferred[None]) -> None:
        self._close()

    def _close(self) -> None:
        """Stop the body: stopping the response's transport (a push producer) closes the connection."""
        transport = self.transport
        if transport is not None:
            cast(IPushProducer, transport).stopProducing()


def stream_body(response: IResponse, sink: Callable[[bytes], None]) -> Deferred[None]:
    """Deliver the body of ``response`` to ``sink``; fires at its end (cancellable)."""
    if response.length == 0:
        return defer.succeed(None)
    reader = BodyReader(sink)
    response.deliverBody(reader)
    return reader.done


async def read_small_body(response: IResponse, limit: int = SMALL_BODY_LIMIT) -> bytes:
    """The whole body of a response that should be small (an error, a listing, a status)."""
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        stream_body(response, lambda data: None).cancel()
        raise ProtocolError(f"the server's answer is too large ({response.length} bytes)")
    chunks: list[bytes] = []
    size = 0

    def keep(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise ProtocolError(f"the server's answer is larger than {limit} bytes")
        chunks.append(data)

    await stream_body(response, keep)
    return b"".join(chunks)


__all__ = [
    "CHUNK_SIZE",
    "BodyReader",
    "Digest",
    "FileBodyProducer",
    "IClientReactor",
    "RunBlocking",
    "Session",
    "header",
    "inline_runner",
    "make_http_client",
    "md5_file",
    "parse_fields",
    "read_small_body",
    "stream_body",
    "thread_runner",
]
