"""The servers the command line asks for, and the service that runs them in one process.

:func:`build_servers` turns :class:`~gsitransfer.options.Options` into
servers (stores and handlers registered, the fast paths chosen, not yet
listening); :class:`TransferService` listens on every endpoint, keeps keys
expiring and trust fresh, reloads on SIGHUP and stops gracefully. The
supervisor and workers of ``--workers`` (:mod:`gsitransfer.workers`) build on
both; ``tap.makeService`` picks between them.

Twisted's reactor and the web and TLS modules are imported when first
needed, never at import time: a worker installs its own reactor first.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NoReturn, Protocol, TypedDict

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .fastpaths import FastPaths
from .manifest import ManifestLimits
from .options import PROGRAM, ConfigError, Options, Role, ServiceAccount, report
from .postgres.connection import is_postgres_url

if TYPE_CHECKING:
    from .events import EventFanout, EventSink
    from .metrics import Metrics
    from .keys import TransferTable
    from .tls.context import ServerTLS

#: the namespace these lines had when tap.py wrote them: log filters keep working
_log = Logger(namespace="gsitransfer.tap")


class Server(Protocol):
    """What running a server needs of it (``HTTPTransferServer`` and its GSI variant)."""

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""

    @property
    def ports(self) -> list[IListeningPort]:
        """The ports it listens on."""

    @property
    def transfers(self) -> object:
        """Its transfer table (shared by the servers of one process)."""

    def RegisterPrefix(self, prefix: str, handler: object) -> None:
        """Serve ``/<prefix>/`` through ``handler``."""

    def LookupPrefix(self, prefix: str) -> object | None:
        """The handler of ``prefix``."""

    def prefixes(self) -> list[str]:
        """The registered prefixes."""

    def listen(self, endpoint: str, reactor: object = None) -> defer.Deferred[IListeningPort]:
        """Listen on a Twisted endpoint string."""

    def adopt(self, fd: int, reactor: object = None) -> IListeningPort:
        """Accept on an inherited listening socket."""

    def maintain(self, reactor: object = None, interval: float = 60.0, expire: bool = True) -> LoopingCall:
        """Reload trust every ``interval`` seconds; expire keys (unless ``expire`` is False) every 10 seconds."""

    def reload(self, force: bool = False) -> None:
        """Re-read CAs, CRLs and the grid-mapfile."""

    def observe(self, events: "EventFanout") -> None:
        """Send every record (finished requests, expiries) to ``events``."""

    def stop(self, grace: float = 0.0, reactor: object = None) -> defer.Deferred[None]:
        """Stop listening; let transfers in flight end within ``grace`` seconds."""


class _ServerSettings(TypedDict):
    """The keyword arguments both kinds of server get from the options."""

    transfers: TransferTable
    manifest_ttl: float
    manifest_limits: ManifestLimits
    gridmap: str | None
    idle_timeout: float
    head_timeout: float
    handshake_timeout: float
    first_request_timeout: float
    keepalive_timeout: float
    max_connection_age: float | None
    min_body_rate: float
    handler_timeout: float
    timer: IReactorTime
    max_pending_files: int | None
    max_pending_bytes: int | None
    fast_paths: FastPaths
    access_line_writer: Callable[[str], object] | None


def load_factory(target: str) -> object:
    """Import ``package.module:factory`` and call the factory with no arguments."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(f"cannot import {module_name}: {error}") from None
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"{module_name} has no callable {attribute}")
    try:
        made: object = factory()
    except Exception as error:
        raise ConfigError(f"{target}() failed: {error}") from None
    return made


@contextlib.contextmanager
def acting_as(account: ServiceAccount | None) -> Iterator[None]:
    """Run the block with ``account``'s effective uid, gid and groups (then root's again).

    What the block creates (the stores' and the transfer table's SQLite
    files, a handler's own files) belongs to the account twistd's
    ``--uid``/``--gid`` will switch to after binding the ports, and what it
    cannot open as that account fails here, at start-up, as one line. Outside
    root, or without an account, the block runs as it is.
    """
    if account is None or os.geteuid() != 0:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(account.groups())
    os.setegid(account.gid)
    os.seteuid(account.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def _runner(account: ServiceAccount | None) -> str:
    """How a line names the account the server runs as."""
    if account is None:
        return f"this process (uid {os.geteuid()})"
    return f"{account.describe()}, which --uid/--gid run the server as"


def _directories(options: Options) -> list[tuple[str, str]]:
    """Each directory the server writes in, with how an error line names it."""
    named = [(os.path.abspath(directory), f"store directory {os.path.abspath(directory)}")
             for _, directory in options["stores"]]
    if options["state"] is not None and not is_postgres_url(options["state"]):
        state_dir = os.path.dirname(os.path.abspath(options["state"]))
        named.append((state_dir, f"directory {state_dir} of --state"))
    elif not options["stores"]:
        named.append((os.path.abspath("."), f"working directory {os.path.abspath('.')} (the default --state)"))
    return named


def create_directory(path: str, account: ServiceAccount | None) -> None:
    """Create ``path`` and its missing parents: mode 0750, owned by ``account`` when given (as root)."""
    missing: list[str] = []
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        os.mkdir(directory, 0o750)
        os.chmod(directory, 0o750)  # whatever the umask
        if account is not None and os.geteuid() == 0:
            os.chown(directory, account.uid, account.gid)


def prepare_directories(options: Options, account: ServiceAccount | None) -> None:
    """Check (with ``--create-store``: create) every directory the server writes in.

    A missing one is an error naming ``--create-store``; one that is not a
    directory, or that the account the server runs as cannot write in, is an
    error too (:class:`ConfigError`, one line).
    """
    for directory, name in _directories(options):
        if not os.path.lexists(directory):
            if not options["create-store"]:
                raise ConfigError(f"{name} does not exist (create it, or give --create-store)")
            try:
                create_directory(directory, account)
            except OSError as error:
                raise ConfigError(f"cannot create {name}: {error.strerror}") from None
        if not os.path.isdir(directory):
            raise ConfigError(f"{name} is not a directory")
        with acting_as(account):
            usable = os.access(directory, os.R_OK | os.W_OK | os.X_OK, effective_ids=True)
        if not usable:
            raise ConfigError(f"{name} is not readable and writable by {_runner(account)}")


def check_rereadable(options: Options, account: ServiceAccount | None) -> None:
    """The files trust reloads re-read must be readable by the account the server runs as.

    Read once as root at start-up, they are read again on SIGHUP and every
    ``--reload-interval`` after the switch to ``--uid``/``--gid`` (and by
    ``--workers``' workers when they start): an unreadable one would make
    every reload fail. Nothing to check when the server does not switch.
    """
    if account is None or os.geteuid() != 0:
        return
    files = [("--cert", options["cert"]), ("--key", options["key"]),
             ("--ca-file", options["ca-file"]), ("--gridmap", options["gridmap"])]
    if not options["https"]:
        files = [("--gridmap", options["gridmap"])]
    with acting_as(account):
        unreadable = [(option, path) for option, path in files
                      if path is not None and not os.access(path, os.R_OK, effective_ids=True)]
        ca_dir = options["ca-dir"] if options["https"] else None
        if ca_dir is not None and not os.access(ca_dir, os.R_OK | os.X_OK, effective_ids=True):
            unreadable.append(("--ca-dir", ca_dir))
    if unreadable:
        option, path = unreadable[0]
        raise ConfigError(
            f"{option} {path} is not readable by {_runner(account)}: trust reloads (SIGHUP, "
            f"--reload-interval) re-read it as that account (make it owned by it, mode 0400)"
        )


def build_servers(
    options: Options,
    role: Role = "single",
    *,
    fast_paths: FastPaths | None = None,
    access_line_writer: Callable[[str], object] | None = None,
) -> list[Server]:
    """The configured servers, handlers registered, not yet listening.

    ``fast_paths``: the fast paths every server uses (default: as the options
    and the environment say). ``access_line_writer``: where access lines
    meant for the global log go as text instead (a worker's stdout).

    A ``worker`` neither cleans up the stores nor resets files left receiving:
    its supervisor did that before starting any worker.
    """
    recovering = role != "worker"
    if fast_paths is None:
        fast_paths = options.fast_paths()
    from twisted.internet import reactor

    from .web.servers import GSIHTTPTransferServer, HTTPTransferServer
    # imported here, as the process's own account: _open_state runs as the service account
    from . import store, transfers_db  # noqa: F401

    # run as root with --uid/--gid: what is created now belongs to that account
    account = options.service_account() if role != "worker" else None
    prepare_directories(options, account)
    check_rereadable(options, account)
    with acting_as(account):
        handlers, transfers = _open_state(options, recovering)

    common = _ServerSettings(
        transfers=transfers,
        manifest_ttl=options["manifest-ttl"],
        manifest_limits=ManifestLimits(
            max_bytes=options["max-manifest-bytes"],
            max_files=options["max-files"],
            max_total_size=options["max-transfer-size"],
        ),
        gridmap=options["gridmap"],
        idle_timeout=options["idle-timeout"],
        head_timeout=options["head-timeout"],
        handshake_timeout=options["handshake-timeout"],
        first_request_timeout=options["first-request-timeout"],
        keepalive_timeout=options["keepalive-timeout"],
        max_connection_age=options["max-connection-age"] or None,
        min_body_rate=options["min-body-rate"],
        handler_timeout=options["handler-timeout"],
        timer=reactor,
        max_pending_files=options["max-pending-files"] or None,
        max_pending_bytes=options["max-pending-bytes"] or None,
        fast_paths=fast_paths,
        access_line_writer=access_line_writer,
    )
    servers: list[Server] = []
    try:
        if options["https"]:
            servers.append(
                GSIHTTPTransferServer(_server_tls(options), public_url=options["public-url"], **common)
            )
        if options["http"]:
            public = None if options["https"] else options["public-url"]
            servers.append(
                HTTPTransferServer(
                    trusted_proxies=options["trusted_proxies"], public_url=public, **common
                )
            )
    except (ValueError, OSError) as error:
        raise ConfigError(str(error)) from None
    for server in servers:
        for prefix, handler in handlers:
            server.RegisterPrefix(prefix, handler)
    if recovering and servers:
        _finish_batches(servers[0])
    _observe(options, servers, account)
    return servers


def _observe(options: Options, servers: list[Server], account: ServiceAccount | None) -> None:
    """Give the servers their event sinks: the audit log (``--audit-log``, opened as the service
    account) and the metrics (``--metrics``; every process counts, the listener is the service's)."""
    from .events import EventFanout

    sinks: list[EventSink] = []
    counting: "Metrics | None" = None
    path = options["audit-log"]
    if path:
        from .audit import AuditError, AuditLog

        try:
            with acting_as(account):
                sinks.append(AuditLog(path))
        except AuditError as error:
            raise ConfigError(str(error)) from None
    if options["metrics"]:
        from .metrics import Metrics

        metrics = counting = Metrics()
        sinks.append(metrics)
        for server in servers:
            tls = getattr(server, "tls", None)
            if tls is not None:
                tls.on_refusal = metrics.handshake_failed
    if sinks:
        events = EventFanout(tuple(sinks))
        if counting is not None:
            counting.before_exposition = events.flush
        for server in servers:
            server.observe(events)


def metrics_of(servers: list[Server]) -> "Metrics | None":
    """The servers' metrics sink (``--metrics``), if any."""
    from .metrics import Metrics

    return next((sink for sink in event_sinks(servers) if isinstance(sink, Metrics)), None)


def event_fanouts(servers: list[Server]) -> list["EventFanout"]:
    """The distinct fanouts the servers send their records to (to close at the end)."""
    from .events import EventFanout

    fanouts: list[EventFanout] = []
    for server in servers:
        fanout = getattr(server, "events", None)
        if isinstance(fanout, EventFanout) and fanout.sinks and all(fanout is not known for known in fanouts):
            fanouts.append(fanout)
    return fanouts


def event_sinks(servers: list[Server]) -> list[object]:
    """The distinct sinks the servers send their records to (to reopen on SIGUSR1)."""
    return [sink for fanout in event_fanouts(servers) for sink in fanout.sinks]


def _open_state(options: Options, recovering: bool) -> tuple[list[tuple[str, object]], TransferTable]:
    """The handlers (stores opened, factories called) and the transfer table.

    ``--state postgresql://…`` keeps the transfer table and every store's
    metadata in that database (one connection pool per process), for nodes
    sharing it (SPEC 9); otherwise SQLite files (the default).
    """
    from .store import DirectoryStore, StoreError
    from .transfers_db import SQLiteTransferTable, TransferDBError

    state_url = options["state"]
    shared = None
    transfers: TransferTable
    if is_postgres_url(state_url):
        from .postgres import PostgresState, PostgresTransferTable, StateConfigError

        try:
            shared = PostgresState(state_url)
            if recovering:
                shared.release_dead_on_this_host()
        except StateConfigError as error:
            raise ConfigError(str(error)) from None
        transfers = PostgresTransferTable(shared)

    handlers: list[tuple[str, object]] = []
    for prefix, directory in options["stores"]:
        metadata = None
        if shared is not None:
            from .postgres import PostgresStoreMetadata

            metadata = PostgresStoreMetadata(shared, os.path.abspath(directory))
        try:
            store = DirectoryStore(
                directory,
                pending_ttl=options["manifest-ttl"],
                recover=recovering,
                listing_owners=options["listing-owners"],
                metadata=metadata,
            )
        except StoreError as error:
            raise ConfigError(str(error)) from None
        if shared is None:
            handlers.append((prefix, store))
        else:
            from .postgres import OffReactorStore

            handlers.append((prefix, OffReactorStore(store, shared)))
    for prefix, target in options["handlers"]:
        handlers.append((prefix, load_factory(target)))
    if shared is not None:
        return handlers, transfers

    state_path = state_url
    if state_path is None:
        first_dir = options["stores"][0][1] if options["stores"] else "."
        state_path = os.path.join(first_dir, ".gsitransfer-transfers.sqlite")
    try:
        transfers = SQLiteTransferTable(state_path, reset_receiving=recovering)
    except TransferDBError as error:
        raise ConfigError(str(error)) from None
    return handlers, transfers


def _finish_batches(server: Server) -> None:
    """Before listening: finish the atomic batches a crash left half published (SPEC 7.4).

    A handler that answers at once (the directory store) is done before this
    returns; one that answers later finishes once the reactor runs.
    """
    from .batch import finish_batches

    engine = getattr(server, "engine", None)
    if engine is not None:
        finish_batches(engine).addErrback(lambda failure: _log.failure("finishing batches", failure))


def _server_tls(options: Options) -> ServerTLS:
    from .tls.context import ServerTLS, TLSConfigError, TrustConfig

    try:
        return ServerTLS(
            options["cert"],
            options["key"],
            TrustConfig(
                ca_dir=options["ca-dir"],
                ca_file=options["ca-file"],
                crl_policy=options["crl-policy"],
                signing_policy=options["signing-policy"],
            ),
        )
    except TLSConfigError as error:
        raise ConfigError(str(error)) from None


def endpoints_of(options: Options, servers: list[Server]) -> list[tuple[Server, str]]:
    """Each ``--https``/``--http`` endpoint with the server that listens on it."""
    by_scheme = {server.scheme: server for server in servers}
    endpoints = [(by_scheme["https"], endpoint) for endpoint in options["https"]]
    endpoints += [(by_scheme["http"], endpoint) for endpoint in options["http"]]
    return endpoints


def hold_sighup() -> None:
    """Block SIGHUP in this thread: one sent before the service's handler is installed waits.

    Until :meth:`TransferService.startService` installs the reload handler,
    SIGHUP's default action would kill the process (a ``fetch-crl`` cron job
    at the wrong second). Blocked, it stays pending and is delivered, as one
    reload, when :func:`release_sighup` unblocks it. The mask is kept across
    ``fork`` and ``exec``: a worker spawned meanwhile starts with it blocked too.
    SIGUSR1 (reopen the logs: logrotate) is held the same way, for the same reason.
    """
    if hasattr(signal, "SIGHUP") and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR1})


def release_sighup() -> None:
    """Unblock SIGHUP and SIGUSR1 in this thread (a pending one is delivered now, to the handler just installed)."""
    if hasattr(signal, "SIGHUP") and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGUSR1})


@contextlib.contextmanager
def sighup_held() -> Iterator[None]:
    """SIGHUP and SIGUSR1 blocked in this thread for the block's duration (a child spawned inside inherits them blocked)."""
    if not (hasattr(signal, "SIGHUP") and hasattr(signal, "pthread_sigmask")):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR1})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignore_sighup_from_now(previous: signal.Handlers | int | Callable[..., object] | None) -> None:
    """On stop: SIGHUP may no longer reload, and must not kill the process either.

    The handler the service replaced comes back if it was a function (a test
    harness's); the default action or none becomes "ignore" until the process
    exits, so a SIGHUP during the shutdown grace cannot cut the transfers the
    grace is for.
    """
    if not hasattr(signal, "SIGHUP"):
        return
    signal.signal(signal.SIGHUP, previous if callable(previous) else signal.SIG_IGN)


def cannot_listen(endpoint: str, scheme: str, failure: Failure) -> str:
    """The line for an endpoint that cannot be bound: the reason in plain words and what to change."""
    cause = getattr(failure.value, "socketError", None)
    number = getattr(cause, "errno", None)
    option = f"--{scheme}"
    if number == errno.EADDRINUSE:
        variable = "HTTPS_PORT" if scheme == "https" else "HTTP_PORT"
        hint = f"choose another with {option}, or {variable}=... scripts/serve"
    elif number == errno.EACCES:
        hint = f"ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another with {option}"
    elif number == errno.EADDRNOTAVAIL:
        hint = f"no interface of this host has that address; change interface= in {option}"
    else:
        return f"cannot listen on {endpoint}: {failure.getErrorMessage()}"
    return f"cannot listen on {endpoint}: {os.strerror(number).lower()} ({hint})"


class TransferService(service.MultiService):
    """Listens on every endpoint, keeps keys expiring and trust fresh."""

    #: False in a ``--workers`` worker: its supervisor expires the keys
    expire_keys = True
    #: twistd's own options (``statusPipe`` once it has daemonized), set by ``tap.makeService``
    twistd_config: Mapping[str, object] | None = None

    def __init__(
        self,
        servers: list[Server],
        endpoints: list[tuple[Server, str]],
        reload_interval: float,
        shutdown_grace: float = 30.0,
        *,
        metrics_endpoint: str | None = None,
        store_dirs: tuple[str, ...] = (),
    ) -> None:
        """``metrics_endpoint``: where the metrics listener listens (``--metrics``; a worker has none);
        ``store_dirs``: the ``--store`` directories ``/healthz`` checks."""
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.application.service is untyped
        self.servers = servers
        self.endpoints = endpoints
        self.reload_interval = reload_interval
        self.shutdown_grace = shutdown_grace
        self.metrics_endpoint = metrics_endpoint
        self.store_dirs = store_dirs
        #: True from SIGTERM on (``/readyz`` answers 503)
        self.draining = False
        self._metrics_port: Any = None
        self._sampler: LoopingCall | None = None
        self._previous_sighup: signal.Handlers | int | Callable[..., object] | None = None

    def privilegedStartService(self) -> None:
        """Bind every endpoint before the reactor runs; a failure is one line and exit 1."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        from twisted.internet import reactor

        for server, endpoint in self.endpoints:
            failures: list[Failure] = []
            try:
                parsed = serverFromString(reactor, endpoint)
            except (ValueError, TypeError, KeyError) as error:
                self.refuse(f"--{server.scheme} {endpoint}: not a Twisted endpoint string ({error})")
            listening = server.listen(parsed, reactor)
            listening.addCallbacks(
                lambda port, url=endpoint: _log.info("listening on {endpoint}", endpoint=url),
                failures.append,
            )
            if failures:
                self.refuse(cannot_listen(endpoint, server.scheme, failures[0]))
        if self.metrics_endpoint:
            self._listen_metrics(reactor, self.metrics_endpoint)

    def _listen_metrics(self, reactor: Any, endpoint: str) -> None:
        """The metrics listener (``/metrics``, ``/healthz``, ``/readyz``), bound before the reactor runs."""
        from .metrics import MetricsSite

        metrics = metrics_of(self.servers)
        assert metrics is not None, "--metrics gives the servers a Metrics sink"
        try:
            parsed = serverFromString(reactor, endpoint)
        except (ValueError, TypeError, KeyError) as error:
            self.refuse(f"--metrics {endpoint}: not a Twisted endpoint string ({error})")
        failures: list[Failure] = []
        listening = parsed.listen(MetricsSite(metrics, self.health_problems, lambda: self.draining))
        listening.addCallbacks(self._metrics_listening, failures.append, callbackArgs=(endpoint,))
        if failures:
            self.refuse(cannot_listen(endpoint, "metrics", failures[0]))

    def _metrics_listening(self, port: Any, endpoint: str) -> None:
        self._metrics_port = port
        host = port.getHost()
        _log.info("metrics listening: http://{host}:{port}/metrics (/healthz, /readyz) on {endpoint}",
                  host=getattr(host, "host", "?"), port=getattr(host, "port", "?"), endpoint=endpoint)

    def health_problems(self) -> list[str]:
        """Why the server is not healthy (``/healthz``): stores, the transfer database, CRLs; empty: healthy."""
        from .metrics import crl_problems, store_problems

        problems = store_problems(self.store_dirs)
        for server in self.servers[:1]:  # the servers share one transfer table
            ping = getattr(getattr(server, "transfers", None), "ping", None)
            if ping is not None:
                try:
                    ping()
                except Exception as error:
                    problems.append(f"the transfer database does not answer: {error}")
        problems += crl_problems(self._crl_updates())
        return problems

    def _crl_updates(self) -> list[tuple[str, float]]:
        """(issuer DN, nextUpdate as Unix time) of every CRL in force."""
        from .identity import format_dn

        updates: dict[str, float] = {}
        for server in self.servers:
            material = getattr(getattr(server, "tls", None), "material", None)
            for crl in getattr(material, "crls", ()):
                next_update = crl.next_update_utc
                if next_update is not None:
                    updates[format_dn(crl.issuer)] = next_update.timestamp()
        return sorted(updates.items())

    def sample_metrics(self) -> None:
        """Set the metrics' gauges: open connections here; pending totals and CRLs where keys expire."""
        metrics = metrics_of(self.servers)
        if metrics is None:
            return
        connections = sum(getattr(server, "open_connections", lambda: 0)() for server in self.servers)
        if not self.expire_keys:
            metrics.sample(connections, None, ())
            return
        table = getattr(self.servers[0], "transfers", None) if self.servers else None
        summary = getattr(table, "pending_summary", None)
        deferred_call = getattr(table, "deferred_call", None)
        if summary is None or deferred_call is None:
            metrics.sample(connections, self._pending(), self._crl_updates())
            return
        # a shared database: one statement, off the reactor
        counted = deferred_call(summary, time.time())
        counted.addCallback(lambda pending: metrics.sample(connections, pending, self._crl_updates()))
        counted.addErrback(lambda _: metrics.sample(connections, None, self._crl_updates()))

    def _pending(self) -> tuple[int, int]:
        """Files and bytes announced and not yet stored, over every live transfer."""
        from .keys import SETTLED

        files = size = 0
        table = getattr(self.servers[0], "transfers", None) if self.servers else None
        now = time.time()
        for record in getattr(table, "records", lambda: ())():
            if record.expired(now):
                continue
            states = table.states(record.key)  # type: ignore[union-attr]
            for entry in record.manifest.files:
                if states.get(entry.num) not in SETTLED and entry.num not in record.already_stored:
                    files += 1
                    size += entry.counted_size
        return files, size

    def refuse(self, message: str) -> NoReturn:
        """Stop the start-up with one error line (a daemon's twistd parent is told it too).

        twistd's parent of a daemon waits for a status on its pipe and never
        sees the pipe close (it holds the writing end itself): without this
        word it would wait for ever.
        """
        report(message)  # first: the parent exits as soon as it reads the pipe
        pipe = None if self.twistd_config is None else self.twistd_config.get("statusPipe")
        if isinstance(pipe, int):
            with contextlib.suppress(OSError):
                os.write(pipe, f"1 {PROGRAM}: error: {message}".encode("ascii", "backslashreplace")[:100])
                os.close(pipe)
        raise SystemExit(1)

    def startService(self) -> None:
        """Start housekeeping and the SIGHUP reload; freeze what start-up made out of GC."""
        super().startService()  # type: ignore[no-untyped-call]
        from twisted.internet import reactor

        for server in self.servers:
            server.maintain(reactor, interval=self.reload_interval, expire=self.expire_keys)
        if hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: IReactorThreads(reactor).callFromThread(self.reload)
            )
        self.catch_sigusr1(reactor)
        self.start_sampling(reactor)
        # held since makeService (or the worker's first line): a SIGHUP sent meanwhile reloads now
        release_sighup()
        # what start-up made lives as long as the process: keep it out of every GC pass
        gc.freeze()

    def start_sampling(self, reactor: Any) -> None:
        """Sample the metrics' gauges every few seconds (with ``--metrics``)."""
        from .metrics import SAMPLE_SECONDS

        if metrics_of(self.servers) is None:
            return
        self._sampler = LoopingCall(self.sample_metrics)
        self._sampler.clock = reactor
        self._sampler.start(SAMPLE_SECONDS, now=True)

    def catch_sigusr1(self, reactor: object) -> None:
        """SIGUSR1 reopens the log files this process writes (the audit log), for logrotate."""
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, lambda *_: IReactorThreads(reactor).callFromThread(self.reopen_logs))

    def reopen_logs(self) -> None:
        """Reopen every log file by its name (SIGUSR1)."""
        for sink in event_sinks(self.servers):
            reopen = getattr(sink, "reopen", None)
            if reopen is not None:
                reopen()
        _log.info("log files reopened")

    def reload(self) -> None:
        """Re-read CAs, CRLs and the grid-mapfile (SIGHUP)."""
        _log.info("reloading trust and grid-mapfile")
        for server in self.servers:
            try:
                server.reload(force=True)
            except Exception:
                _log.failure("reload failed")
        metrics = metrics_of(self.servers)
        if metrics is not None:
            metrics.reloaded()

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting, give uploads in flight ``shutdown_grace`` seconds, then stop.

        From here SIGHUP is ignored (never its default action, which would kill
        the uploads the grace is for).
        """
        ignore_sighup_from_now(self._previous_sighup)
        self.draining = True
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await defer.DeferredList(
            [server.stop(self.shutdown_grace) for server in self.servers], consumeErrors=True
        )
        await self.stop_observing()
        await service.MultiService.stopService(self)

    async def stop_observing(self) -> None:
        """After the drain: close the event sinks, stop sampling, close the metrics listener."""
        for fanout in event_fanouts(self.servers):
            fanout.close()
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
        if self._metrics_port is not None:  # up through the drain: /readyz said 503 meanwhile
            await defer.maybeDeferred(self._metrics_port.stopListening)


__all__ = [
    "Server",
    "TransferService",
    "acting_as",
    "build_servers",
    "cannot_listen",
    "check_rereadable",
    "create_directory",
    "endpoints_of",
    "hold_sighup",
    "ignore_sighup_from_now",
    "load_factory",
    "prepare_directories",
    "release_sighup",
    "sighup_held",
]
