"""The client for scripts: plain blocking calls, with the Twisted reactor in a daemon thread.

::

    from gsitransfer.client import sync

    report = sync.upload_files("https://grid.example.org:8443/data", ["a.csv", "b.csv"])
    sync.download_file("https://grid.example.org:8443/data/a.csv", "copy.csv")

How it works: the first call starts the global reactor in a daemon thread
(``reactor.run(installSignalHandlers=False)``); every call then runs the
Twisted-native function of :mod:`gsitransfer.client.api` on that thread
(``reactor.callFromThread``) and waits for its Deferred. Results are returned
and failures raised in the calling thread. Ctrl-C (``KeyboardInterrupt``)
while waiting cancels the operation (its connections are closed, a partial
download is kept for resuming) and is then re-raised. Calls from several
threads at once are fine; progress callbacks run on the reactor thread.

Do not use this module inside a program that runs the reactor itself: call
:mod:`gsitransfer.client.api` there. ``twisted.internet.task.react`` was not
chosen because the reactor cannot be restarted: a script could make only one
call.

Credentials are looked up and loaded in the calling thread (a pass phrase is
asked there), see :func:`client_for`.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Callable, Iterable, Mapping, ParamSpec, TypeVar, cast, overload

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.python.failure import Failure

import gsitransfer.client.api as api  # the module itself (its names are ours too), not the package

from .credentials import PassphrasePrompt, terminal_prompt
from .results import DownloadReport, Listing, TransferStatus, UploadReport
from .session import IClientReactor, RunBlocking, make_http_client
from .tls import GSIClientPolicy
from .upload import OpenBody

#: seconds a cancelled call may take to wind down after Ctrl-C
CANCEL_GRACE = 10.0

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


class IScriptReactor(IClientReactor, IReactorCore):
    """The reactor this module runs in its thread: the client's reactor, started and stopped here."""


class ReactorThread:
    """The global reactor, running in a daemon thread once started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def reactor(self) -> IScriptReactor:
        """The global reactor (it provides everything IScriptReactor names)."""
        from twisted.internet import reactor

        return cast(IScriptReactor, reactor)

    def start(self) -> IScriptReactor:
        """Start the reactor thread (once); the reactor."""
        with self._lock:
            if self._thread is None:
                reactor = self.reactor
                if reactor.running or getattr(reactor, "_startedBefore", False):
                    raise RuntimeError("the reactor is running or has run in this process: "
                                       "use gsitransfer.client.api from it")
                started = threading.Event()
                reactor.callWhenRunning(started.set)
                self._thread = threading.Thread(
                    target=reactor.run, kwargs={"installSignalHandlers": False},
                    name="gsitransfer-reactor", daemon=True,
                )
                self._thread.start()
                if not started.wait(30):
                    raise RuntimeError("the reactor thread did not start")
                atexit.register(self.stop)
        return self.reactor

    def stop(self) -> None:
        """Stop the reactor (at interpreter exit)."""
        if self._thread is not None and self._thread.is_alive():
            self.reactor.callFromThread(self.reactor.stop)
            self._thread.join(5)

    @overload
    def call(
        self, function: Callable[_Params, Deferred[_Result]], *args: _Params.args, **kwargs: _Params.kwargs
    ) -> _Result: ...

    @overload
    def call(self, function: Callable[_Params, _Result], *args: _Params.args, **kwargs: _Params.kwargs) -> _Result: ...

    def call(
        self, function: Callable[_Params, Deferred[_Result] | _Result], *args: _Params.args, **kwargs: _Params.kwargs
    ) -> _Result:
        """Run ``function`` (returning a value or a Deferred) on the reactor thread; its result."""
        reactor = self.start()
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking call on the reactor thread would never return: use the Deferred API")
        done = threading.Event()
        started: list[Deferred[_Result]] = []
        outcomes: list[_Result | Failure] = []

        def finished(outcome: _Result | Failure) -> None:
            outcomes.append(outcome)
            done.set()

        def begin() -> None:
            result = cast("Deferred[_Result]", defer.maybeDeferred(function, *args, **kwargs))
            started.append(result)
            result.addBoth(finished)

        def cancel() -> None:
            for deferred in started:
                deferred.cancel()

        reactor.callFromThread(begin)
        try:
            while not done.wait(0.25):
                pass
        except KeyboardInterrupt:
            reactor.callFromThread(cancel)
            done.wait(CANCEL_GRACE)
            raise
        outcome = outcomes[0]
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome


_REACTOR_THREAD = ReactorThread()


@overload
def call(function: Callable[_Params, Deferred[_Result]], *args: _Params.args, **kwargs: _Params.kwargs) -> _Result: ...


@overload
def call(function: Callable[_Params, _Result], *args: _Params.args, **kwargs: _Params.kwargs) -> _Result: ...


def call(
    function: Callable[_Params, Deferred[_Result] | _Result], *args: _Params.args, **kwargs: _Params.kwargs
) -> _Result:
    """Run a Deferred-returning function on the reactor thread and wait for it (its result, or it raises)."""
    # the implementation's union does not pick an overload of the method: its result is the same _Result
    return cast(_Result, _REACTOR_THREAD.call(function, *args, **kwargs))


def client_for(
    url: str,
    *,
    cert: str | None = None,
    key: str | None = None,
    proxy: str | None = None,
    ca_dir: str | None = None,
    ca_file: str | None = None,
    passphrase: PassphrasePrompt | None = None,
    env: Mapping[str, str] | None = None,
    pool_size: int = 4,
) -> HTTPClient:
    """An HTTP client for ``url``: with a Globus credential and trust for https://, plain for http://.

    An encrypted key's pass phrase is asked with ``passphrase``, else on the
    terminal when there is one.
    """
    policy: GSIClientPolicy | None = None
    if url.startswith("https:"):
        policy = api.globus_policy(cert=cert, key=key, proxy=proxy, ca_dir=ca_dir, ca_file=ca_file,
                                   passphrase=passphrase or terminal_prompt(), env=env)
    reactor = _REACTOR_THREAD.start()
    return call(lambda: make_http_client(reactor, tls=policy, pool_size=pool_size))


def _client(url: str, http: HTTPClient | None, pool_size: int = 4) -> HTTPClient:
    return http if http is not None else client_for(url, pool_size=pool_size)


def upload_files(
    url: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    http: HTTPClient | None = None,
    jobs: int = 4,
    progress: api.Progress = None,
    retries: int = 5,
    transfer_key: str | None = None,
    name: str | None = None,
    resume: bool = True,
    reactor: IClientReactor | None = None,
    run_blocking: RunBlocking | None = None,
    open_body: OpenBody | None = None,
    atomic: bool = False,
) -> UploadReport:
    """Blocking :func:`gsitransfer.client.api.upload_files` (the same keywords)."""
    client = _client(url, http, jobs)
    return call(api.upload_files, url, list(paths), http=client, jobs=jobs, progress=progress, retries=retries,
                transfer_key=transfer_key, name=name, resume=resume, reactor=reactor, run_blocking=run_blocking,
                open_body=open_body, atomic=atomic)


def download_file(
    url: str,
    dest: str | os.PathLike[str] | None = None,
    size: int | None = None,
    checksum: str | None = None,
    *,
    http: HTTPClient | None = None,
    progress: api.Progress = None,
    resume: bool = True,
    retries: int = 2,
    retry_delay: float = 2.0,
    reactor: IClientReactor | None = None,
    run_blocking: RunBlocking | None = None,
) -> DownloadReport:
    """Blocking :func:`gsitransfer.client.api.download_file` (the same keywords)."""
    client = _client(url, http)
    return call(api.download_file, url, dest, size, checksum, http=client, progress=progress, resume=resume,
                retries=retries, retry_delay=retry_delay, reactor=reactor, run_blocking=run_blocking)


def list_files(url: str, *, http: HTTPClient | None = None) -> Listing:
    """Blocking :func:`gsitransfer.client.api.list_files`."""
    return call(api.list_files, url, http=_client(url, http))


def transfer_status(url: str, *, http: HTTPClient | None = None) -> TransferStatus:
    """Blocking :func:`gsitransfer.client.api.transfer_status`."""
    return call(api.transfer_status, url, http=_client(url, http))


def cancel_transfer(url: str, *, http: HTTPClient | None = None) -> str:
    """Blocking :func:`gsitransfer.client.api.cancel_transfer`."""
    return call(api.cancel_transfer, url, http=_client(url, http))


__all__ = [
    "ReactorThread",
    "call",
    "cancel_transfer",
    "client_for",
    "download_file",
    "list_files",
    "transfer_status",
    "upload_files",
]
