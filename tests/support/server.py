"""A real gsitransfer server in a child process (``twistd -n accessgrid-transfer``).

Tests talk to it over real sockets on 127.0.0.1. The server listens on port 0
and the test reads the real port from the log line ``gsitransfer listening:``.
Every wait is bounded.

``GSITRANSFER_TEST_WORKERS=N`` in the environment runs every such server with
``--workers N`` (unless the test chose ``--workers`` itself): the whole suite
can be run against a supervisor and N worker processes.

``GSITRANSFER_TEST_POSTGRES=URL`` (set by ``tests/conftest.py`` when
``GSITRANSFER_TEST_STATE=postgresql``) runs every such server with ``--state``
in that PostgreSQL (unless the test chose ``--state`` itself), in a schema of
its own per work directory: a server restarted in the same directory finds
its state again, as with the SQLite default.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"gsitransfer listening: (https?)://(\[[0-9a-f:]+\]|[^\s:/\[]+):(\d+)")


class ServerProcess:
    """One twistd process; ``url(scheme)`` once it listens."""

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        *,
        twistd_args: list[str] | None = None,
        make_stores: bool = True,
        python: str | None = None,
    ) -> None:
        """``twistd_args`` go before the plugin name (``--uid``, ``--gid``); ``make_stores``:
        create each ``--store`` directory before starting, as an administrator would;
        ``python``: the interpreter (default: this one)."""
        self.workdir = workdir
        self.python = python or sys.executable
        self.twistd_args = list(twistd_args or [])
        self.make_stores = make_stores
        workers = os.environ.get("GSITRANSFER_TEST_WORKERS")
        if workers and not any(a.startswith("--workers") for a in args):
            args = [*args, "--workers", workers]
        postgres = os.environ.get("GSITRANSFER_TEST_POSTGRES")
        if postgres and not any(a.startswith("--state") for a in args):
            from .postgres import schema_url

            schema = "w" + hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:20]
            args = [*args, "--state", schema_url(postgres, schema)]
        self.args = args
        #: worker processes to wait for at start (``--workers N``, N > 1)
        self.workers = 0
        for flag, value in zip(args, [*args[1:], ""]):
            if flag == "--workers" and value.isdigit() and int(value) > 1:
                self.workers = int(value)
        self.env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.env.update(env or {})
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.urls: dict[str, str] = {}

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.make_stores:
            for flag, value in zip(self.args, self.args[1:]):
                if flag == "--store" and "=" in value:
                    (self.workdir / value.partition("=")[2]).mkdir(parents=True, exist_ok=True)
        command = [
            self.python, "-c",
            "import sys; from twisted.scripts.twistd import run; "
            "sys.argv = ['twistd', '-n', '--pidfile=', '--logfile=-'] + sys.argv[1:]; run()",
            *self.twistd_args, "accessgrid-transfer", *self.args,
        ]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        wanted = {"http" if a == "--http" else "https" for a in self.args if a in ("--http", "--https")}
        try:
            wait_for(lambda: self._serving(wanted), timeout, "the server to listen")
        except AssertionError:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.log_path.read_text(errors='replace')}") from None
        return self

    def _serving(self, wanted: set[str]) -> bool:
        """Whether every wanted scheme listens (and every worker serves); raises if the server died."""
        assert self.process is not None
        text = self.log_path.read_text(errors="replace")
        for scheme, host, port in _LISTENING.findall(text):
            self.urls[scheme] = f"{scheme}://{host}:{port}"
        if wanted <= set(self.urls) and text.count("gsitransfer worker serving") >= self.workers:
            return True
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited ({self.process.returncode}):\n{text}")
        return False

    def url(self, scheme: str = "http") -> str:
        return self.urls[scheme]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """Pids of the server's worker processes (none without ``--workers``)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return []
        return sorted(int(pid) for pid in children)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if hasattr(self, "log"):
            self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
