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
from typing import Any, Callable, Iterable, Mapping

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.python.failure import Failure

import gsitransfer.client.api as api  # the module itself (its names are ours too), not the package

from .credentials import PassphrasePrompt, terminal_prompt
from .session import make_http_client
from .tls import GSIClientPolicy

#: seconds a cancelled call may take to wind down after Ctrl-C
CANCEL_GRACE = 10.0


class ReactorThread:
    """The global reactor, running in a daemon thread once started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    def start(self) -> Any:
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

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` (returning a value or a Deferred) on the reactor thread; its result."""
        reactor = self.start()
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking call on the reactor thread would never return: use the Deferred API")
        done = threading.Event()
        box: dict[str, Any] = {}

        def finished(outcome: Any) -> None:
            box["outcome"] = outcome
            done.set()

        def begin() -> None:
            result = defer.maybeDeferred(function, *args, **kwargs)
            box["deferred"] = result
            result.addBoth(finished)

        reactor.callFromThread(begin)
        try:
            while not done.wait(0.25):
                pass
        except KeyboardInterrupt:
            reactor.callFromThread(lambda: box["deferred"].cancel() if "deferred" in box else None)
            done.wait(CANCEL_GRACE)
            raise
        outcome = box["outcome"]
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome


_REACTOR_THREAD = ReactorThread()


def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a Deferred-returning function on the reactor thread and wait for it."""
    return _REACTOR_THREAD.call(function, *args, **kwargs)


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


def upload_files(url: str, paths: Iterable[str | os.PathLike[str]], *, http: HTTPClient | None = None,
                 jobs: int = 4, **options: Any) -> api.UploadReport:
    """Blocking :func:`gsitransfer.client.api.upload_files`."""
    client = _client(url, http, jobs)
    return call(api.upload_files, url, list(paths), http=client, jobs=jobs, **options)


def download_file(url: str, dest: str | os.PathLike[str] | None = None, size: int | None = None,
                  checksum: str | None = None, *, http: HTTPClient | None = None,
                  **options: Any) -> api.DownloadReport:
    """Blocking :func:`gsitransfer.client.api.download_file`."""
    client = _client(url, http)
    return call(api.download_file, url, dest, size, checksum, http=client, **options)


def list_files(url: str, *, http: HTTPClient | None = None) -> api.Listing:
    """Blocking :func:`gsitransfer.client.api.list_files`."""
    return call(api.list_files, url, http=_client(url, http))


def transfer_status(url: str, *, http: HTTPClient | None = None) -> api.TransferStatus:
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
