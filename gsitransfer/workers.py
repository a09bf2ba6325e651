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
* a worker that dies is restarted; the files it was receiving are pending
  again and its temporary files are removed (their names carry its pid);
* SIGTERM: the supervisor passes it on, each worker stops accepting and lets
  transfers in flight finish for ``--shutdown-grace`` seconds, and the
  supervisor exits once every worker has (killing stragglers 10 s after the
  grace). Workers die with the supervisor (``PR_SET_PDEATHSIG`` on Linux, and
  a check of the parent pid every second elsewhere);
* worker log lines reach the supervisor's log, prefixed ``worker N:``.

Handlers given with ``--handler`` are made in every process: with workers
they must keep their state where all processes see it (as the directory store
does), not in memory.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel, eventAsText, globalLogBeginner

from .tap import ConfigError, Options, TransferService, build_servers, fail
from . import eventloop
from .web import accesslog

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
        self.pid = self.transport.pid  # type: ignore[union-attr]

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

    def processEnded(self, reason: Any) -> None:
        if self._partial.strip():
            self.childDataReceived(1, b"\n")
        status = reason.value
        code = getattr(status, "exitCode", None)
        signum = getattr(status, "signal", None)
        self.supervisor.worker_ended(self, code, signum)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        """Send ``name`` (``TERM``, ``HUP``, ``KILL``) if the worker still runs."""
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except (error.ProcessExitedAlready, OSError):
            pass


class SupervisorService(TransferService):
    """Binds the listeners, starts and restarts the workers, expires keys."""

    def __init__(
        self,
        servers: list[Any],
        endpoints: list[tuple[Any, str]],
        reload_interval: float,
        shutdown_grace: float = 30.0,
        *,
        workers: int,
        argv: list[str],
        reactor: Any = None,
    ) -> None:
        super().__init__(servers, endpoints, reload_interval, shutdown_grace)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
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
                port.stopReading()

    def startService(self) -> None:
        service.MultiService.startService(self)
        for server in self.servers:
            server.maintain(self.reactor, interval=self.reload_interval)
        if hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload)
            )
        _log.info("starting {n} worker processes", n=self.worker_count)
        for index in range(1, self.worker_count + 1):
            self.spawn(index)

    def listening_fds(self) -> tuple[dict[int, int], str]:
        """Parent descriptor per child descriptor, and the ``scheme:fd`` list for the child."""
        mapping: dict[int, int] = {}
        named: list[str] = []
        child_fd = FIRST_FD
        for server in self.servers:
            for port in server.ports:
                mapping[child_fd] = port.fileno()
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
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        child_fds.update(mapping)
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

    def reload(self) -> None:
        """SIGHUP: re-read here and in every worker."""
        super().reload()
        for worker in list(self.workers.values()):
            worker.signal("HUP")

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Pass SIGTERM on, wait for the workers (killing stragglers), then stop."""
        self.stopping = True
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        # close the supervisor's listening sockets first: once every worker has
        # closed its duplicate too, new connections are refused
        for server in self.servers:
            yield server.stop(0, self.reactor)
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        if workers:
            ended = defer.DeferredList([w.ended for w in workers], consumeErrors=True)
            deadline = self.shutdown_grace + KILL_AFTER
            timer = self.reactor.callLater(deadline, self._kill, workers)
            yield ended
            if timer.active():
                timer.cancel()
        yield service.MultiService.stopService(self)

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
        servers: list[Any],
        listeners: list[tuple[Any, int]],
        reload_interval: float,
        shutdown_grace: float,
    ) -> None:
        super().__init__(servers, [], reload_interval, shutdown_grace)
        self.listeners = listeners

    def startService(self) -> None:
        from twisted.internet import reactor

        for server, fd in self.listeners:
            server.adopt(fd, reactor)
        _log.info("gsitransfer worker serving (pid {pid})", pid=os.getpid())
        super().startService()


def parse_listeners(text: str, servers: list[Any]) -> list[tuple[Any, int]]:
    """``https:3,http:4`` → (server, fd) pairs."""
    by_scheme = {server.scheme: server for server in servers}
    listeners: list[tuple[Any, int]] = []
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


def _log_to_stdout(reactor: Any) -> None:
    """Worker events as plain lines on stdout: the supervisor stamps and logs them.

    Lines are flushed every ``LOG_FLUSH_INTERVAL`` seconds or when 64 KiB
    are waiting (warnings, errors and failures at once, and everything at
    shutdown), not one write per line. Access log lines skip the event
    formatting: they are already text (``accesslog.write_lines_to``).
    """
    stream = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(sys.stdout.fileno(), "w", closefd=False), LOG_BUFFER),
        encoding="utf-8",
        errors="backslashreplace",
    )
    sys.stdout = stream

    def observer(event: dict[str, Any]) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        stream.write(text.rstrip("\n") + "\n")
        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level >= LogLevel.warn):
            stream.flush()

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    accesslog.write_lines_to(stream.write)
    LoopingCall(stream.flush).start(LOG_FLUSH_INTERVAL, now=False)
    reactor.addSystemEventTrigger("after", "shutdown", stream.flush)


def worker_main(argv: list[str]) -> None:
    """Entry point of a worker process (``python -m gsitransfer.workers OPTIONS``)."""
    parent = int(os.environ.get("GSITRANSFER_SUPERVISOR_PID", "0") or 0)
    if parent:
        _die_with_parent(parent)
    options = Options()
    options.parseOptions(argv)
    if "twisted.internet.reactor" not in sys.modules:
        eventloop.install()  # the epoll reactor without a log context per event
    from twisted.internet import reactor

    _log_to_stdout(reactor)
    try:
        servers = build_servers(options, role="worker")
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


def _stop_if_orphaned(parent: int, reactor: Any) -> None:
    if os.getppid() != parent and reactor.running:
        reactor.stop()


if __name__ == "__main__":
    worker_main(sys.argv[1:])
