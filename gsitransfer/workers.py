"""``--workers N``: one supervisor, N worker processes sharing its listening sockets.

The supervisor (the ``twistd`` process) binds every ``--http``/``--https``
endpoint but never accepts on them; it starts N workers with
``python -m gsitransfer.workers <the same options>``, passing the listening
sockets as file descriptors 3, 4, … (``GSITRANSFER_WORKER_FDS`` says which is
which). The kernel hands each new connection to one of the workers. Rules:

* every request of a transfer may land on any worker: the transfer table and
  the store's metadata are SQLite files (WAL) shared by all processes, and a
  file's move to ``receiving`` is one conditional UPDATE, so exactly one
  worker wins a file that two connections race for;
* the supervisor recovers the stores and resets files left ``receiving``
  before any worker starts, and it alone expires transfer keys; workers only
  serve, and re-read trust (SIGHUP is passed on; each also re-reads every
  ``--reload-interval``);
* SIGHUP never stops a process: a worker starts with it blocked (the
  supervisor spawns it so, and ``worker_main`` blocks it first thing), so one
  sent while the worker starts waits and becomes one reload once the worker
  serves; from SIGTERM on it is ignored, in the supervisor and in every worker,
  so it cannot cut the shutdown grace short;
* a worker that dies is restarted; the files it was receiving are pending
  again and its temporary files are removed (their names carry its pid);
* SIGTERM: the supervisor passes it on, each worker stops accepting and lets
  transfers in flight finish for ``--shutdown-grace`` seconds, and the
  supervisor exits once every worker has (killing stragglers 10 s after the
  grace). Workers die with the supervisor (``PR_SET_PDEATHSIG`` on Linux, and
  a check of the parent pid every second elsewhere);
* worker log lines reach the supervisor's log, prefixed ``worker N:``;
* ``--no-fast-paths`` (or ``GSITRANSFER_FAST_PATHS=off``) reaches the workers
  with the rest of the arguments (and the environment): a worker then runs
  Twisted's own reactor and lets ``Site.log`` write its access lines.

Handlers given with ``--handler`` are made in every process: with workers
they must keep their state where all processes see it (as the directory store
does), not in memory.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Callable, Protocol, Sequence, runtime_checkable

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IReactorCore,
    IReactorThreads,
)
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, eventAsText, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from . import eventloop
from .options import ConfigError, Options, fail
from .service import (
    Server,
    TransferService,
    build_servers,
    hold_sighup,
    ignore_sighup_from_now,
    metrics_of,
    release_sighup,
    sighup_held,
)

_log = Logger()

#: environment variable naming the inherited listening sockets: ``https:3,http:4``
FDS_VARIABLE = "GSITRANSFER_WORKER_FDS"
#: first descriptor number the listening sockets get in a worker
FIRST_FD = 3
#: a worker that lives less than this (seconds) failed at start
QUICK_FAILURE = 5.0
#: this many quick failures in a row and the supervisor gives up
MAX_QUICK_FAILURES = 3
#: seconds a worker gets beyond the shutdown grace before it is killed
KILL_AFTER = 10.0
#: a log line longer than this is cut
MAX_LINE = 64 * 1024
#: seconds between flushes of a worker's log lines to the supervisor
LOG_FLUSH_INTERVAL = 0.2
#: bytes of log lines a worker holds before writing them to the supervisor
LOG_BUFFER = 64 * 1024


class SupervisorReactor(Protocol):
    """What the supervisor needs of its reactor (Twisted's global one by default)."""

    @property
    def running(self) -> bool:
        """Whether the reactor runs."""

    def seconds(self) -> float:
        """The current time."""

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kwargs: object) -> IDelayedCall:
        """Call ``callable`` in ``delay`` seconds."""

    def stop(self) -> None:
        """Stop the reactor."""

    def spawnProcess(
        self,
        processProtocol: protocol.ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, int | str] | None = None,
    ) -> IProcessTransport:
        """Start a child process."""


@runtime_checkable
class SharedSocket(Protocol):
    """A listening port the workers can inherit: a descriptor whose reading can stop."""

    def fileno(self) -> int:
        """The listening socket's descriptor."""

    def stopReading(self) -> None:
        """Stop accepting in this process."""


def shared_socket(port: IListeningPort) -> SharedSocket:
    """``port`` as a socket to hand to the workers; a port of another kind is one line and exit 1."""
    if not isinstance(port, SharedSocket):
        fail(f"cannot share a {type(port).__name__} listener with worker processes", 1)
    return port


class WorkerProcess(protocol.ProcessProtocol):
    """The supervisor's side of one worker: its log lines and its end."""

    def __init__(self, supervisor: "SupervisorService", index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.started = 0.0
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial[:MAX_LINE])
            self._partial = b""
        prefix = f"worker {self.index}: "
        text = "\n".join(
            prefix + line.decode("utf-8", "replace").rstrip() for line in lines if line.strip()
        )
        if text:
            # one event per read, not per line: relaying a busy worker's access log
            # line by line cost the supervisor a fifth of the server's CPU
            _log.info("{lines}", lines=text)

    def processEnded(self, reason: Failure) -> None:
        if self._partial.strip():
            self.childDataReceived(1, b"\n")
        status = reason.value
        code = getattr(status, "exitCode", None)
        signum = getattr(status, "signal", None)
        self.supervisor.worker_ended(self, code, signum)
        self.ended.callback(None)

    def signal(self, name: str | int) -> None:
        """Send ``name`` (``TERM``, ``HUP``, ``KILL``, or a signal number) if the worker still runs."""
        if self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass


class SupervisorService(TransferService):
    """Binds the listeners, starts and restarts the workers, expires keys."""

    def __init__(
        self,
        servers: list[Server],
        endpoints: list[tuple[Server, str]],
        reload_interval: float,
        shutdown_grace: float = 30.0,
        *,
        workers: int,
        argv: list[str],
        reactor: SupervisorReactor | None = None,
        metrics_endpoint: str | None = None,
        store_dirs: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            servers, endpoints, reload_interval, shutdown_grace, metrics_endpoint=metrics_endpoint, store_dirs=store_dirs
        )
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor: SupervisorReactor = reactor
        self.worker_count = workers
        self.argv = argv
        self.workers: dict[int, WorkerProcess] = {}
        self.stopping = False
        self._quick_failures = 0

    def privilegedStartService(self) -> None:
        """Bind every endpoint (and stop accepting on it here: the workers accept)."""
        super().privilegedStartService()
        for server in self.servers:
            for port in server.ports:
                shared_socket(port).stopReading()

    def startService(self) -> None:
        """Start housekeeping (the supervisor alone expires keys), SIGHUP, and the workers.

        SIGHUP, held since ``makeService``, is released once the handler is in
        place and the workers are spawned (each starts with it blocked).
        """
        service.MultiService.startService(self)
        for server in self.servers:
            server.maintain(self.reactor, interval=self.reload_interval)
        if hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: IReactorThreads(self.reactor).callFromThread(self.reload)
            )
        self.catch_sigusr1(self.reactor)
        self.start_sampling(self.reactor)
        _log.info("starting {n} worker processes", n=self.worker_count)
        for index in range(1, self.worker_count + 1):
            self.spawn(index)
        release_sighup()

    def listening_fds(self) -> tuple[dict[int, int], str]:
        """Parent descriptor per child descriptor, and the ``scheme:fd`` list for the child."""
        mapping: dict[int, int] = {}
        named: list[str] = []
        child_fd = FIRST_FD
        for server in self.servers:
            for port in server.ports:
                mapping[child_fd] = shared_socket(port).fileno()
                named.append(f"{server.scheme}:{child_fd}")
                child_fd += 1
        return mapping, ",".join(named)

    def spawn(self, index: int) -> WorkerProcess:
        """Start worker ``index`` with the supervisor's options and listening sockets."""
        mapping, named = self.listening_fds()
        worker = WorkerProcess(self, index)
        worker.started = self.reactor.seconds()
        env = dict(os.environ)
        env[FDS_VARIABLE] = named
        env["GSITRANSFER_WORKER_INDEX"] = str(index)
        env["GSITRANSFER_SUPERVISOR_PID"] = str(os.getpid())
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        child_fds.update(mapping)
        # the worker inherits SIGHUP blocked: until its handler is installed one waits, never kills
        with sighup_held():
            self.reactor.spawnProcess(
                worker,
                sys.executable,
                [sys.executable, "-m", "gsitransfer.workers", *self.argv],
                env=env,
                childFDs=child_fds,
            )
        self.workers[index] = worker
        _log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)
        return worker

    def worker_ended(self, worker: WorkerProcess, code: int | None, signum: int | None) -> None:
        """A worker is gone: give back its files in flight; restart it unless stopping."""
        how = f"signal {signum}" if signum else f"status {code}"
        if worker.pid is not None:
            self._release(worker.pid)
            metrics = metrics_of(self.servers)
            if metrics is not None:
                metrics.process_ended(worker.pid)
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.stopping:
            _log.info("worker {index} (pid {pid}) stopped ({how})", index=worker.index, pid=worker.pid, how=how)
            return
        lived = self.reactor.seconds() - worker.started
        self._quick_failures = self._quick_failures + 1 if lived < QUICK_FAILURE else 0
        if self._quick_failures >= MAX_QUICK_FAILURES:
            _log.error(
                "worker {index} exited ({how}) {n} times right after starting: stopping",
                index=worker.index,
                how=how,
                n=self._quick_failures,
            )
            self.reactor.callLater(0, self._give_up)
            return
        _log.warn(
            "worker {index} (pid {pid}) exited ({how}); restarting it",
            index=worker.index,
            pid=worker.pid,
            how=how,
        )
        self.reactor.callLater(1.0 * self._quick_failures, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self.spawn(index)

    def _give_up(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def _release(self, pid: int) -> None:
        """Files the dead worker ``pid`` was receiving are pending again; its temporaries go."""
        from .filesink import remove_stale_temporaries

        tables = {id(server.transfers): server.transfers for server in self.servers}
        for table in tables.values():
            release = getattr(table, "release_holder", None)
            if release is not None:
                try:
                    released = release(pid)
                except Exception:
                    _log.failure("cannot release the files of worker pid {pid}", pid=pid)
                    continue
                if released:
                    _log.info("{n} file(s) worker pid {pid} was receiving are pending again", n=released, pid=pid)
        self._finish_batches_of(pid)
        roots = {
            getattr(handler, "root", None)
            for server in self.servers
            for handler in (server.LookupPrefix(p) for p in server.prefixes())
        }
        for root in roots:
            if isinstance(root, str):
                removed = remove_stale_temporaries(root, pid=pid)
                if removed:
                    _log.info("removed {n} temporary file(s) of worker pid {pid}", n=len(removed), pid=pid)

    def _finish_batches_of(self, pid: int) -> None:
        """The atomic batches the dead worker ``pid`` was publishing are finished here (SPEC 7.4)."""
        from .batch import finish_batches

        for server in self.servers:
            engine = getattr(server, "engine", None)
            if engine is not None:
                finish_batches(engine, holder=pid).addErrback(
                    lambda failure: _log.failure("finishing the batches of worker pid {pid}", failure, pid=pid)
                )
                return

    def reload(self) -> None:
        """SIGHUP: re-read here and in every worker (one still starting reloads once it serves)."""
        if self.stopping:
            return
        super().reload()
        for worker in list(self.workers.values()):
            worker.signal("HUP")

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the log files here and in every worker."""
        super().reopen_logs()
        for worker in list(self.workers.values()):
            worker.signal(signal.SIGUSR1)  # Twisted names only TERM, HUP, INT and KILL

    def stopService(self) -> defer.Deferred[None]:
        """Pass SIGTERM on, wait for the workers (killing stragglers), then stop; SIGHUP ignored from now."""
        self.stopping = True
        self.draining = True
        ignore_sighup_from_now(self._previous_sighup)
        self._previous_sighup = None
        return defer.Deferred.fromCoroutine(self._stop_workers())

    async def _stop_workers(self) -> None:
        # close the supervisor's listening sockets first: once every worker has
        # closed its duplicate too, new connections are refused
        for server in self.servers:
            await server.stop(0, self.reactor)
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        if workers:
            ended = defer.DeferredList([w.ended for w in workers], consumeErrors=True)
            deadline = self.shutdown_grace + KILL_AFTER
            timer = self.reactor.callLater(deadline, self._kill, workers)
            await ended
            if timer.active():
                timer.cancel()
        await self.stop_observing()
        await service.MultiService.stopService(self)

    @staticmethod
    def _kill(workers: list[WorkerProcess]) -> None:
        for worker in workers:
            if not worker.ended.called:
                _log.warn("worker {index} did not stop in time: killing it", index=worker.index)
                worker.signal("KILL")


class WorkerService(TransferService):
    """One worker: serves on inherited sockets; its supervisor expires the keys."""

    expire_keys = False

    def __init__(
        self,
        servers: list[Server],
        listeners: list[tuple[Server, int]],
        reload_interval: float,
        shutdown_grace: float,
    ) -> None:
        super().__init__(servers, [], reload_interval, shutdown_grace)
        self.listeners = listeners

    def startService(self) -> None:
        """Accept on the inherited sockets, then run as a single process would (without expiring keys)."""
        from twisted.internet import reactor

        for server, fd in self.listeners:
            server.adopt(fd, reactor)
        _log.info("gsitransfer worker serving (pid {pid})", pid=os.getpid())
        super().startService()


def parse_listeners(text: str, servers: list[Server]) -> list[tuple[Server, int]]:
    """``https:3,http:4`` → (server, fd) pairs."""
    by_scheme = {server.scheme: server for server in servers}
    listeners: list[tuple[Server, int]] = []
    for item in filter(None, text.split(",")):
        scheme, _, fd = item.partition(":")
        if scheme not in by_scheme or not fd.isdigit():
            raise ConfigError(f"{FDS_VARIABLE}: cannot use {item!r}")
        listeners.append((by_scheme[scheme], int(fd)))
    return listeners


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when the supervisor dies (no orphan keeps the port)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        raise SystemExit(1)


@implementer(ILogObserver)
class StdoutLines:
    """A log observer writing each event's text as one line; warnings and failures flushed at once."""

    def __init__(self, stream: io.TextIOWrapper) -> None:
        self.stream = stream

    def __call__(self, event: LogEvent) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        self.stream.write(text.rstrip("\n") + "\n")
        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level >= LogLevel.warn):
            self.stream.flush()


def _log_to_stdout(reactor: IReactorCore) -> io.TextIOWrapper:
    """Worker events as plain lines on stdout: the supervisor stamps and logs them.

    Lines are flushed every ``LOG_FLUSH_INTERVAL`` seconds or when 64 KiB
    are waiting (warnings, errors and failures at once, and everything at
    shutdown), not one write per line. Returns the stream: access log lines
    may skip the event formatting and be written to it as text.
    """
    stream = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(sys.stdout.fileno(), "w", closefd=False), LOG_BUFFER),
        encoding="utf-8",
        errors="backslashreplace",
    )
    sys.stdout = stream
    globalLogBeginner.beginLoggingTo([StdoutLines(stream)], redirectStandardIO=False)
    LoopingCall(stream.flush).start(LOG_FLUSH_INTERVAL, now=False)
    reactor.addSystemEventTrigger("after", "shutdown", stream.flush)
    return stream


def worker_main(argv: list[str]) -> None:
    """Entry point of a worker process (``python -m gsitransfer.workers OPTIONS``)."""
    # before anything slow: a SIGHUP now waits for the handler startService installs
    # (the supervisor spawns workers with it blocked already; this covers any other start)
    hold_sighup()
    parent = int(os.environ.get("GSITRANSFER_SUPERVISOR_PID", "0") or 0)
    if parent:
        _die_with_parent(parent)
    options = Options()
    options.parseOptions(argv)
    fast_paths = options.fast_paths()
    if fast_paths.event_loop and "twisted.internet.reactor" not in sys.modules:
        eventloop.install()  # the epoll reactor without a log context per event
    from twisted.internet import reactor

    stream = _log_to_stdout(reactor)
    # access lines are already text: with the fast path they go to stdout as they are
    access_line_writer = stream.write if fast_paths.access_log_writer else None
    try:
        servers = build_servers(
            options, role="worker", fast_paths=fast_paths, access_line_writer=access_line_writer
        )
        listeners = parse_listeners(os.environ.get(FDS_VARIABLE, ""), servers)
    except ConfigError as problem:
        fail(str(problem), 1)
    if not listeners:
        fail(f"no listening sockets given ({FDS_VARIABLE})", 1)
    worker = WorkerService(servers, listeners, options["reload-interval"], options["shutdown-grace"])
    if parent:
        LoopingCall(_stop_if_orphaned, parent, reactor).start(1.0, now=False)
    reactor.callWhenRunning(worker.startService)
    reactor.addSystemEventTrigger("before", "shutdown", worker.stopService)
    reactor.run()


def _stop_if_orphaned(parent: int, reactor: IReactorCore) -> None:
    if os.getppid() != parent and reactor.running:
        reactor.stop()


if __name__ == "__main__":
    worker_main(sys.argv[1:])
