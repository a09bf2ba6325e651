"""Shared pieces of the adversarial tests: servers, health checks, raw sockets, bounded waits.

Every wait here is bounded; every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from tests.support.http import Response, manifest_for, parse_raw, request
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for  # noqa: F401  (the tests import it from here)


HTTP = ["--http", "tcp:0:interface=127.0.0.1"]


def http_args(store: Path, *extra: str) -> list[str]:
    """A plain-HTTP server on 127.0.0.1 serving ``store`` as ``/data/``."""
    return [*HTTP, "--store", f"data={store}", *extra]


def host_port(base: str) -> tuple[str, int]:
    """(host, port) of a base URL."""
    parts = urlsplit(base)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def connect(base: str, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the server of ``base``."""
    return socket.create_connection(host_port(base), timeout=timeout)


def unique(name: str) -> str:
    """A name no other test uses."""
    return f"{time.monotonic_ns()}-{name}"


def part_files(directory: Path) -> list[str]:
    """Temporaries of uploads in flight in ``directory``."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(".gsitransfer-") and n.endswith(".part"))


def in_flight(directory: Path) -> list[str]:
    """Files of uploads in flight or held in ``directory``: temporaries and resumable partials."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(".gsitransfer-") and n.endswith((".part", ".partial")))


def visible_files(directory: Path) -> list[str]:
    """Files under a final name (not the server's own ``.gsitransfer*`` files)."""
    return sorted(n for n in os.listdir(directory) if not n.startswith(".gsitransfer"))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def file_state(base: str, prefix: str, key: str, num: int = 0, **kwargs: Any) -> str | None:
    """The state of one file of a transfer (None when the key is unknown)."""
    answer = request(base, "GET", f"/{prefix}/{key}", **kwargs)
    if answer.status != 200:
        return None
    return json.loads(answer.body)["files"][num]["state"]


def post_manifest_key(base: str, prefix: str, files: list[tuple[str, bytes]], **kwargs: Any) -> str:
    """Post a manifest, assert it was accepted, return the key."""
    answer = request(base, "POST", f"/{prefix}/manifest", manifest_for(files), **kwargs)
    fields = answer.fields()
    assert answer.status == 200 and fields.get("return_code") == "0", (answer.status, answer.text)
    return fields["transfer_key"]


def upload(base: str, prefix: str, name: str, content: bytes, **kwargs: Any) -> Response:
    """Manifest plus body of one file; the body's answer."""
    key = post_manifest_key(base, prefix, [(name, content)], **kwargs)
    return request(base, "POST", f"/{prefix}/{key}/0", content, **kwargs)


def read_until_closed(sock: socket.socket, timeout: float, limit: int = 1 << 26) -> tuple[bytes, str]:
    """Read until EOF, reset or ``timeout``; return (bytes, how it ended: eof|reset|timeout)."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(data), "timeout"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            return bytes(data), "timeout"
        except OSError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk
    return bytes(data), "limit"


def first_status(data: bytes) -> int | None:
    """The status of the first final response in raw bytes, or None."""
    responses = [r for r in _safe_parse(data) if r.status >= 200]
    return responses[0].status if responses else None


def statuses(data: bytes) -> list[int]:
    """The statuses of every final response in raw bytes."""
    return [r.status for r in _safe_parse(data) if r.status >= 200]


def _safe_parse(data: bytes) -> list[Response]:
    try:
        return parse_raw(data)
    except (ValueError, IndexError):
        return []


def exchange(base: str, data: bytes, timeout: float = 10.0, until: str = "close") -> tuple[bytes, str]:
    """Send ``data`` on a fresh connection and read (bounded) until the server closes
    (``until="close"``), a first final response is complete (``"response"``) or its
    head is in (``"head"``); return the bytes and how reading ended."""
    with connect(base, timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        if until == "close":
            return read_until_closed(sock, timeout)
        deadline = time.monotonic() + timeout
        received = bytearray()
        while True:
            if until == "head" and _final_head(bytes(received)):
                return bytes(received), "head"
            if until == "response" and statuses(bytes(received)) and _complete_final(bytes(received)):
                return bytes(received), "response"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(received), "timeout"
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                return bytes(received), "timeout"
            except OSError:
                return bytes(received), "reset"
            if not chunk:
                return bytes(received), "eof"
            received += chunk


def _final_head(data: bytes) -> bool:
    rest = data
    while b"\r\n\r\n" in rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        try:
            if int(head.split(b" ", 2)[1]) >= 200:
                return True
        except (IndexError, ValueError):
            return True
    return False


def _complete_final(data: bytes) -> bool:
    from tests.support.http import _complete

    try:
        return _complete(data)
    except (IndexError, ValueError):
        return False


def is_closed_by_peer(sock: socket.socket, timeout: float) -> str | None:
    """Wait up to ``timeout`` s for the peer to close (data is drained); eof/reset or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            continue
        try:
            chunk = sock.recv(1 << 16)
        except OSError:
            return "reset"
        if not chunk:
            return "eof"
    return None


# -- the server process ----------------------------------------------------------


def server_pids(pid: int) -> list[int]:
    """``pid`` and its children: a ``--workers`` server's supervisor and workers."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` (and its workers) hold."""
    total = 0
    for each in server_pids(pid):
        try:
            total += len(os.listdir(f"/proc/{each}/fd"))
        except OSError:
            pass
    return total


def open_sockets(pid: int) -> int:
    """How many sockets process ``pid`` (and its workers) hold (the listening ones included)."""
    count = 0
    for each in server_pids(pid):
        try:
            fds = os.listdir(f"/proc/{each}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{each}/fd/{fd}").startswith("socket:"):
                    count += 1
            except OSError:
                pass
    return count


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (and its workers) in KiB."""
    total = 0
    for each in server_pids(pid):
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))
    return total


def assert_healthy(server: ServerProcess, prefix: str = "data", **kwargs: Any) -> None:
    """The server still takes a normal upload and serves it back byte for byte."""
    base = kwargs.pop("base", None) or server.url("http")
    content = os.urandom(50_000)
    name = unique("health.bin")
    answer = upload(base, prefix, name, content, **kwargs)
    assert answer.status == 200, answer.text
    back = request(base, "GET", f"/{prefix}/{name}", **kwargs)
    assert back.status == 200 and back.body == content
    assert_clean_log(server)


def assert_clean_log(server: ServerProcess, since: int = 0, tracebacks: bool = False) -> None:
    """No "Unhandled Error" in the server log (after byte ``since``); with
    ``tracebacks``, no traceback at all (nothing was an unexpected error)."""
    log = server.log_text()[since:]
    assert "Unhandled Error" not in log, log[-4000:]
    if tracebacks:
        assert "Traceback" not in log, log[-4000:]


def log_size(server: ServerProcess) -> int:
    """Where the server log ends now (to look only at what comes next)."""
    return len(server.log_text())


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Start ``server``, stop it afterwards; print its log if the test failed inside."""
    server.start()
    try:
        yield server
    except BaseException:
        print(f"--- server log {server.log_path} ---\n{server.log_text()[-6000:]}")
        raise
    finally:
        server.stop()


# -- a small filesystem of our own -------------------------------------------------


@dataclass
class Tmpfs:
    """A tmpfs mounted for one test (needs root and mount permission)."""

    path: Path

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True,
                       capture_output=True, timeout=10)

    def free(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Tmpfs]:
    """Mount a tmpfs of ``size`` on ``path``; skip the test when mounting is not permitted."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a tmpfs: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)
