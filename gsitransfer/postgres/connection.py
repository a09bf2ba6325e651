"""The connection to a PostgreSQL ``--state`` (SPEC 9.1): a bounded pool, the schema, availability, liveness.

One :class:`PostgresState` per process and ``--state`` URL. Everything that
keeps state in PostgreSQL (the transfer table, its batch log, each directory
store's metadata) runs its statements through :meth:`PostgresState.run`,
which takes a connection from a bounded pool (autocommit; a transaction where
a step needs several statements) and turns every failure to reach the
database into :class:`StateUnavailable` — a ``503`` with the reason.

Availability: when a statement cannot reach the database, the state is
marked unavailable and every later call fails at once with the same reason
(no request waits for a dead server), until the background thread's probe
(every :data:`PROBE_INTERVAL` seconds while it is down) gets an answer: then
the server serves again, without a restart.

Liveness (SPEC 9.2): each process is a *holder* — a random 63-bit number
recorded in table ``holders`` with its host, pid and the database's time of
its last heartbeat (every :data:`HEARTBEAT_INTERVAL` seconds, from the same
thread). A file a process is receiving carries its holder; a file whose
holder has not been seen for :data:`HOLDER_TIMEOUT` seconds (a node killed
mid-upload, a host gone) is made pending again by whichever node's thread
sees it first — one ``UPDATE``, so exactly once — and can be resumed through
any node.

Schema (:data:`MIGRATIONS`): versioned steps, applied at start-up under a
transaction-level advisory lock, so nodes starting together on an empty
database apply each step exactly once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..errors import StateUnavailable

if TYPE_CHECKING:
    import psycopg

#: seconds between a holder's heartbeats (and between sweeps for dead holders' files)
HEARTBEAT_INTERVAL = 5.0
#: a holder not seen for this long is dead: its receiving files are pending again (SPEC 9.2: within 30 s)
HOLDER_TIMEOUT = 20.0
#: seconds between probes while the database is away
PROBE_INTERVAL = 1.0
#: seconds a call waits for a pooled connection (or a new one) before the database counts as away
POOL_TIMEOUT = 1.0
#: seconds a new connection may take (libpq ``connect_timeout``; also the start-up wait)
CONNECT_TIMEOUT = 5
#: connections per process (the reactor thread, the heartbeat thread, the metrics and health checks)
POOL_SIZE = 4
#: any statement taking longer is cancelled by the server (milliseconds)
STATEMENT_TIMEOUT_MS = 10_000

T = TypeVar("T")

_log = Logger()

#: the advisory lock key that serialises schema migrations (any constant shared by all versions)
_MIGRATION_LOCK = 0x6773697472616E73  # "gsitrans"

#: version -> statements bringing the schema from the version before to it
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE transfers (
    key TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    owner_dn TEXT,
    manifest TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    already_stored TEXT NOT NULL DEFAULT ''
);
CREATE INDEX transfers_expires ON transfers (expires);
CREATE INDEX transfers_owner ON transfers (owner_dn);
CREATE TABLE transfer_files (
    key TEXT NOT NULL REFERENCES transfers (key) ON DELETE CASCADE,
    num INTEGER NOT NULL,
    state TEXT NOT NULL,
    holder BIGINT,
    received BIGINT NOT NULL DEFAULT 0,
    partial TEXT NOT NULL DEFAULT '',
    counted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key, num)
);
CREATE INDEX transfer_files_holder ON transfer_files (holder) WHERE holder IS NOT NULL;
CREATE TABLE batch_held (
    key TEXT NOT NULL,
    num INTEGER NOT NULL,
    held TEXT NOT NULL,
    final TEXT NOT NULL,
    PRIMARY KEY (key, num)
);
CREATE TABLE batch_intents (
    key TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    owner_dn TEXT,
    files TEXT NOT NULL,
    completed TEXT NOT NULL DEFAULT '',
    holder BIGINT
);
CREATE TABLE holders (
    holder BIGINT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    seen TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE store_files (
    store TEXT NOT NULL,
    name TEXT NOT NULL,
    owner_dn TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'stored')),
    created DOUBLE PRECISION NOT NULL,
    completed DOUBLE PRECISION,
    size BIGINT,
    md5 TEXT,
    mtime_ns BIGINT,
    transfer_key TEXT,
    file_num INTEGER,
    PRIMARY KEY (store, name)
);
CREATE INDEX store_files_state ON store_files (store, state, created);
CREATE TABLE store_digests (
    store TEXT NOT NULL,
    name TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    value TEXT NOT NULL,
    dev BIGINT NOT NULL,
    ino BIGINT NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    PRIMARY KEY (store, name, algorithm)
)
""",
}
SCHEMA_VERSION = max(MIGRATIONS)


class StateConfigError(ValueError):
    """The ``--state`` database cannot be used at start-up (one line, names the URL without its password)."""


def is_postgres_url(state: str | None) -> bool:
    """True for a libpq URI (``postgresql://`` or ``postgres://``)."""
    return state is not None and state.startswith(("postgresql://", "postgres://"))


def shown_url(url: str) -> str:
    """``url`` as a line may show it: any password replaced by ``***``."""
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}{at}{host}"


class PostgresState:
    """A bounded connection pool to one PostgreSQL database, its schema, and this process's holder."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, heartbeat: bool = True) -> None:
        """Connect, migrate the schema and register this process as a holder.

        Raises :class:`StateConfigError` (one line) when the database cannot
        be reached or its schema is newer than this gsitransfer's.
        """
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:  # pragma: no cover - the dependency is declared
            raise StateConfigError("--state postgresql://… needs psycopg 3: pip install 'gsitransfer[postgresql]'") from None
        self.url = url
        # the pool's own messages repeat every reconnection attempt: this module says it once
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        try:
            given_options = str(conninfo_to_dict(url).get("options") or "")
        except psycopg.ProgrammingError as error:
            raise StateConfigError(f"--state {shown_url(url)} is not a libpq URI: {_one_line(error)}") from None
        self._errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
        self.holder = secrets.randbits(62) + 1
        self._reason: str | None = None
        self._stopping = threading.Event()
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=POOL_TIMEOUT,
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT,
                "application_name": "gsitransfer",
                "options": f"{given_options} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip(),
            },
            reconnect_timeout=0,
            open=False,
            name="gsitransfer-state",
        )
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            self._migrate()
            self._beat()
        except (psycopg.Error, PoolTimeout) as error:
            self.pool.close()
            raise StateConfigError(f"cannot use transfer database {shown_url(url)}: {_one_line(error)}") from None
        #: the one thread that runs the server's table calls, in order, off the reactor (:meth:`deferred`)
        self._calls: ThreadPool | None = None
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(target=self._watch, name="gsitransfer-state", daemon=True)
            self._thread.start()

    # -- statements ---------------------------------------------------------------

    def run(self, step: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``step(connection)`` on a pooled connection; :class:`StateUnavailable` if the database is away."""
        reason = self._reason
        if reason is not None:
            raise StateUnavailable(reason)
        try:
            with self.pool.connection() as connection:
                return step(connection)
        except self._errors as error:
            raise StateUnavailable(self.went_away(error)) from None

    def went_away(self, error: BaseException) -> str:
        """Mark the database away (logged once, when it goes); the reason."""
        reason = f"the transfer database is not reachable: {_one_line(error)}"
        if self._reason is None:
            _log.warn("{reason}; answering 503 until it is back", reason=reason)
        self._reason = reason
        return reason

    def deferred(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """``function(*args)`` on this process's calls thread; a Deferred firing on the reactor with its result.

        One thread: calls run in the order they were made (the order the
        reactor would have run them itself), while the reactor serves others.
        """
        from twisted.internet import reactor

        if self._calls is None:
            self._calls = ThreadPool(minthreads=1, maxthreads=1, name="gsitransfer-state-calls")
            self._calls.start()
            # at shutdown the calls made so far run (the thread drains its queue) before the process ends
            reactor.addSystemEventTrigger("after", "shutdown", self._calls.stop)
        return deferToThreadPool(reactor, self._calls, function, *args)  # type: ignore[arg-type]

    @property
    def unavailable(self) -> str | None:
        """Why the database is away, or None when it answers."""
        return self._reason

    # -- schema -------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.pool.connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            connection.execute("CREATE TABLE IF NOT EXISTS gsitransfer_schema (version INTEGER NOT NULL)")
            row = connection.execute("SELECT max(version) FROM gsitransfer_schema").fetchone()
            version = 0 if row is None or row[0] is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StateConfigError(
                    f"cannot use transfer database {shown_url(self.url)}: its schema version {version} is "
                    f"newer than this gsitransfer's ({SCHEMA_VERSION}): upgrade gsitransfer"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute("INSERT INTO gsitransfer_schema (version) VALUES (%s)", (step,))

    # -- liveness -----------------------------------------------------------------

    def _beat(self) -> None:
        """Record this holder as alive now."""
        with self.pool.connection() as connection:
            connection.execute(
                "INSERT INTO holders (holder, host, pid, seen) VALUES (%s, %s, %s, now()) "
                "ON CONFLICT (holder) DO UPDATE SET seen = now()",
                (self.holder, socket.gethostname(), os.getpid()),
            )

    def release_dead_holders(self) -> int:
        """Files whose holder is not alive are pending again (one statement: exactly once); how many."""

        def release(connection: psycopg.Connection[Any]) -> int:
            with connection.transaction():
                cursor = connection.execute(
                    "UPDATE transfer_files SET state = 'pending', holder = NULL "
                    "WHERE state = 'receiving' AND holder IS NOT NULL AND holder NOT IN "
                    "(SELECT holder FROM holders WHERE seen > now() - make_interval(secs => %s))",
                    (HOLDER_TIMEOUT,),
                )
                connection.execute(
                    "DELETE FROM holders WHERE seen < now() - make_interval(secs => %s)", (4 * HOLDER_TIMEOUT,)
                )
                return cursor.rowcount

        return self.run(release)

    def _watch(self) -> None:
        """The background thread: heartbeats and dead holders' files while up; probes while away."""
        while not self._stopping.wait(PROBE_INTERVAL if self._reason is not None else HEARTBEAT_INTERVAL):
            try:
                self._beat()
            except self._errors as error:
                self.went_away(error)
                continue
            except Exception:  # pragma: no cover - a bug must not stop the heartbeats
                _log.failure("transfer database heartbeat")
                continue
            if self._reason is not None:
                _log.info("the transfer database {url} answers again: serving", url=shown_url(self.url))
                self._reason = None
            try:
                self.release_dead_holders()
            except StateUnavailable:
                pass

    def release_dead_on_this_host(self) -> int:
        """At start-up: files held by processes of this host that are gone (the previous run of this
        node, killed) are pending again now, not after :data:`HOLDER_TIMEOUT`; how many."""

        def release(connection: psycopg.Connection[Any]) -> int:
            rows = connection.execute(
                "SELECT holder, pid FROM holders WHERE host = %s AND holder != %s", (socket.gethostname(), self.holder)
            ).fetchall()
            dead = [int(holder) for holder, pid in rows if not _running(int(pid))]
            if not dead:
                return 0
            with connection.transaction():
                cursor = connection.execute(
                    "UPDATE transfer_files SET state = 'pending', holder = NULL "
                    "WHERE state = 'receiving' AND holder = ANY(%s)",
                    (dead,),
                )
                connection.execute("DELETE FROM holders WHERE holder = ANY(%s)", (dead,))
                return cursor.rowcount

        return self.run(release)

    def hosts_holder(self, pid: int) -> list[int]:
        """The holders of process ``pid`` on this host (a ``--workers`` worker that died)."""
        rows = self.run(
            lambda connection: connection.execute(
                "SELECT holder FROM holders WHERE host = %s AND pid = %s", (socket.gethostname(), pid)
            ).fetchall()
        )
        return [int(holder) for (holder,) in rows]

    def close(self) -> None:
        """Stop the thread, forget this holder (its files stay receiving until released) and close the pool."""
        self._stopping.set()
        if self._calls is not None and self._calls.started:
            self._calls.stop()
        if self._thread is not None:
            self._thread.join(timeout=CONNECT_TIMEOUT + 1)
        self.pool.close()


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
