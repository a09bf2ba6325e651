"""The two servers the benchmark compares, as child processes on 127.0.0.1.

* :class:`GsiTransferServer`: ``twistd -n accessgrid-transfer --https
  tcp:0:interface=127.0.0.1 --cert … --key … --ca-dir … --store data=DIR``,
  run from a chosen source tree (``PYTHONPATH=<src>``, so a git worktree can
  be measured with the shared venv); the port is read from its log line.
* :class:`NginxServer`: Debian's nginx with a generated configuration: the
  same host certificate and key, TLS 1.3 only, ``ssl_verify_client on``
  against the same CA bundle and CRLs, the same directory under ``/data/``,
  ``dav_methods PUT`` under ``/up/``, ``client_max_body_size 0``,
  ``sendfile on``.

Both are started in their own session and stopped with SIGTERM, then SIGKILL
after a bounded wait; :func:`stop_all` stops whatever is still running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from procstat import TreeMeter

_LISTENING = re.compile(r"gsitransfer listening: https://(\[[0-9a-f:]+\]|[^\s:/\[]+):(\d+)")

_RUNNING: list["_Server"] = []


class _Server:
    name = "server"
    process: subprocess.Popen[bytes] | None = None
    port = 0

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def meter(self) -> TreeMeter:
        return TreeMeter(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if self in _RUNNING:
            _RUNNING.remove(self)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def stop_all() -> None:
    """Stop every server this module started that is still running."""
    for server in list(_RUNNING):
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}:\n{log.read_text(errors='replace')[-3000:]}")


class GsiTransferServer(_Server):
    """twistd accessgrid-transfer from ``src`` with the venv's interpreter."""

    name = "gsitransfer"

    def __init__(self, venv: Path, src: Path, workdir: Path, cert: Path, key: Path, ca_dir: Path,
                 store: Path, extra_args: list[str]) -> None:
        self.venv, self.src, self.workdir = venv, src, workdir
        self.args = [
            "--https", "tcp:0:interface=127.0.0.1",
            "--cert", str(cert), "--key", str(key), "--ca-dir", str(ca_dir),
            "--store", f"data={store}", *extra_args,
        ]
        self.log_path = workdir / "gsitransfer.log"

    def workers(self) -> int:
        """Worker processes to wait for (``--workers N``; 0 when serving in one process)."""
        for flag, value in zip(self.args, self.args[1:] + [""]):
            if flag == "--workers" and value.isdigit():
                return int(value) if int(value) > 1 else 0
            if flag.startswith("--workers=") and flag[10:].isdigit():
                return int(flag[10:]) if int(flag[10:]) > 1 else 0
        return 0

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.src), os.environ.get("PYTHONPATH", "")) if p)
        return dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")

    def check_source(self) -> str:
        """The directory the gsitransfer package is imported from (must be src/gsitransfer)."""
        out = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c",
             "import gsitransfer, os; print(os.path.dirname(os.path.realpath(gsitransfer.__file__)))"],
            env=self.env(), cwd="/", capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()
        expected = str((self.src / "gsitransfer").resolve())
        if out != expected:
            raise RuntimeError(f"gsitransfer imports from {out}, not {expected}: check PYTHONPATH")
        return out

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        command = [str(self.venv / "bin" / "twistd"), "-n", "--pidfile=", "--logfile=-",
                   "accessgrid-transfer", *self.args]
        self.process = subprocess.Popen(command, cwd=self.workdir, env=self.env(), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as stream:
                stream.seek(offset)
                text = stream.read().decode(errors="replace")
            found = _LISTENING.search(text)
            if found and text.count("gsitransfer worker serving") >= self.workers():
                self.port = int(found.group(2))  # logged once the port is bound
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"gsitransfer exited ({self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"gsitransfer did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log {access_log};
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_max_body_size 0;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_verify_client on;
        ssl_client_certificate {ca_file};
        ssl_verify_depth 10;
        {crl_line}
        ssl_session_cache off;
        ssl_session_tickets off;
        location /data/ {{ alias {store}/; }}
        location /up/ {{
            alias {uploads}/;
            dav_methods PUT;
            create_full_put_path off;
        }}
    }}
}}
"""


class NginxServer(_Server):
    """Debian's nginx with a configuration equivalent to the gsitransfer server's."""

    name = "nginx"

    def __init__(self, workdir: Path, cert: Path, key: Path, ca_file: Path, crl_file: Path | None,
                 store: Path, uploads: Path, workers: str = "auto", access_log: bool = True) -> None:
        self.workdir, self.store, self.uploads = workdir, store, uploads
        self.settings = dict(cert=cert, key=key, ca_file=ca_file, crl_file=crl_file,
                             workers=workers, access_log=access_log)
        self.log_path = workdir / "error.log"

    def start(self) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        crl = self.settings["crl_file"]
        conf = NGINX_CONF.format(
            workers=self.settings["workers"], dir=self.workdir, port=self.port,
            cert=self.settings["cert"], key=self.settings["key"], ca_file=self.settings["ca_file"],
            crl_line=f"ssl_crl {crl};" if crl else "", store=self.store, uploads=self.uploads,
            access_log=f"{self.workdir}/access.log" if self.settings["access_log"] else "off",
        )
        conf_path = self.workdir / "nginx.conf"
        conf_path.write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        check = subprocess.run([nginx, "-t", "-q", "-p", str(self.workdir), "-e", str(self.log_path),
                                "-c", str(conf_path)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration:\n{check.stderr}")
        out = open(self.workdir / "stdout.log", "wb")
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.workdir), "-e", str(self.log_path), "-c", str(conf_path)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()
        _RUNNING.append(self)
        wait_for_port(self.port, self.process, self.log_path)

    def stop(self, timeout: float = 15.0) -> None:
        # SIGTERM is nginx's fast shutdown: master and workers exit
        super().stop(timeout)


def nginx_version() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "nginx not found"
    return (out.stderr or out.stdout).strip().replace("nginx version: ", "")
