"""A private PostgreSQL server for tests: initdb in a temporary directory, a unix socket, stopped by PID.

Debian's ``postgresql`` package (installed by ``.ci/run``) provides the
binaries under ``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to
run as root, so when the tests run as root the cluster belongs to the
``postgres`` account the package creates. The server listens only on a unix
socket in its own directory (no port to race for); clients use the libpq URI
:attr:`PrivatePostgres.url`. Every wait is bounded.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
DATABASE = "gsitransfer"
ROLE = "gsitransfer"


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's binary directory, or None when none is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _account() -> pwd.struct_passwd | None:
    """The account the cluster runs as: ``postgres`` when we are root, else None (ourselves)."""
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None


class PostgresError(RuntimeError):
    """The private server could not be set up or did not answer in time."""


class PrivatePostgres:
    """One throw-away PostgreSQL cluster with one database, :data:`DATABASE`, owned by :data:`ROLE`."""

    def __init__(self, durable: bool = False) -> None:
        """``durable``: commits are fsync'd, as in production (benchmarks); tests run with ``fsync=off``."""
        self.durable = durable
        bindir = postgres_bindir()
        if bindir is None:
            raise PostgresError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bindir = bindir
        self.account = _account()
        # a short path: a unix socket's path is limited to ~107 bytes
        self.directory = Path(tempfile.mkdtemp(prefix="gsipg-"))
        # the socket is in it: servers running as another account (--uid nobody) connect too
        os.chmod(self.directory, 0o755)
        self.data = self.directory / "data"
        self.socket_dir = self.directory
        self.log = self.directory / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        if self.account is not None:
            os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", ROLE, "-E", "UTF8", "--locale=C", "--no-sync")

    @property
    def url(self) -> str:
        """The libpq URI of the database (what ``--state`` takes)."""
        return f"postgresql://{ROLE}@/{DATABASE}?host={self.socket_dir}"

    def _user(self) -> dict[str, int]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid}

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / program), *args], capture_output=True, text=True, timeout=120, **self._user(),
        )
        if result.returncode != 0:
            raise PostgresError(f"{program} failed ({result.returncode}): {result.stderr.strip()}")

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`) and wait until it accepts connections."""
        assert self.process is None, "already running"
        log = open(self.log, "ab")
        try:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.socket_dir),
                 "-c", "listen_addresses=", "-c", f"fsync={'on' if self.durable else 'off'}",
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, **self._user(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PostgresError(f"postgres exited at start: {self.log.read_text()[-2000:]}")
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", str(self.socket_dir), "-U", ROLE, "-d", "postgres"],
                timeout=30,
            )
            if ready.returncode == 0:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise PostgresError(f"postgres did not accept connections within {START_TIMEOUT:.0f} s")
        if not (self.directory / ".created").exists():
            self._run("createdb", "-h", str(self.socket_dir), "-U", ROLE, "-O", ROLE, DATABASE)
            (self.directory / ".created").touch()

    def stop(self) -> None:
        """Stop the server by its PID (fast shutdown: SIGINT; SIGKILL if it lingers)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def schema_url(url: str, schema: str) -> str:
    """``url`` with every connection working in ``schema`` (created if missing): one test's own tables."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"
