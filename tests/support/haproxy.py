"""A private HAProxy for tests: ``mode tcp`` in front of gsitransfer nodes, as docs/deploy.md sets it up.

TLS passes through (each node sees the client certificate); each server line
is health-checked on its node's metrics listener (``GET /healthz``). HAProxy
runs in the foreground (``-db``) from a configuration in a temporary
directory, listens on 127.0.0.1 only, and is stopped by its PID. Every wait
is bounded.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 20.0


def free_port() -> int:
    """A loopback TCP port nobody listens on now (HAProxy cannot tell us the one it chose)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tcp_config(port: int, nodes: list[tuple[int, int]]) -> str:
    """The configuration docs/deploy.md shows: ``nodes`` as (service port, metrics port) on 127.0.0.1."""
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{service} check port {metrics} inter 1s fall 2 rise 1"
        for i, (service, metrics) in enumerate(nodes)
    )
    return f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend gsitransfer
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
{servers}
"""


class PrivateHAProxy:
    """One HAProxy balancing TCP connections over ``nodes`` ((service port, metrics port) pairs)."""

    def __init__(self, nodes: list[tuple[int, int]]) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("HAProxy is not installed (Debian: apt-get install haproxy)")
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="gsihaproxy-"))
        self.port = free_port()
        self.config = self.directory / "haproxy.cfg"
        self.config.write_text(tcp_config(self.port, nodes))
        self.log = self.directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the configuration: {check.stdout}{check.stderr}")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited at start: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"haproxy did not listen within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> PrivateHAProxy:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
