"""Shared pieces of the integration tests: servers, raw sockets, files, bounded waits."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from tests.support.server import ServerProcess
from tests.support.waiting import wait_for  # noqa: F401  (the tests import it from here)

from .ag_client import AGResponse


HTTP = ["--http", "tcp:0:interface=127.0.0.1"]


def server_args(store: Path, *extra: str) -> list[str]:
    """Arguments of a plain-HTTP server on 127.0.0.1 with ``--store data=<store>``."""
    return [*HTTP, "--store", f"data={store}", *extra]


def recording_args(*extra: str) -> list[str]:
    """Arguments of a plain-HTTP server whose ``data`` prefix is the recording handler."""
    return [*HTTP, "--handler", "data=tests.support.handlers:recording", *extra]


def recording_env(store: Path, record: Path) -> dict[str, str]:
    """The environment the recording handler reads its store and record file from."""
    return {"GSITRANSFER_TEST_STORE": str(store), "GSITRANSFER_TEST_RECORD": str(record)}


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Start ``server``, stop it afterwards; print its log if the test failed inside."""
    server.start()
    try:
        yield server
    except BaseException:
        print(f"--- server log {server.log_path} ---\n{server.log_text()}")
        raise
    finally:
        server.stop()


def read_record(path: Path) -> list[dict[str, Any]]:
    """The recording handler's JSON lines (empty before the first callback)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def calls(path: Path, callback: str) -> list[dict[str, Any]]:
    """The recorded calls of one callback."""
    return [line for line in read_record(path) if line["callback"] == callback]


def write_random_file(path: Path, size: int, block: int = 1024 * 1024) -> str:
    """Write ``size`` bytes of random-looking content quickly; return its MD5.

    One block of ``os.urandom`` is repeated with a different counter in its
    first 8 bytes each time, so no two blocks are equal and the MD5 depends on
    every one of them.
    """
    pattern = bytearray(os.urandom(block))
    digest = hashlib.md5()
    written = 0
    with open(path, "wb") as out:
        counter = 0
        while written < size:
            pattern[:8] = counter.to_bytes(8, "big")
            chunk = memoryview(pattern)[: min(block, size - written)]
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
            counter += 1
    return digest.hexdigest()


def part_files(directory: Path) -> list[str]:
    """Temporaries of uploads in flight (``.gsitransfer-*.part``) in ``directory``."""
    return sorted(
        name
        for name in os.listdir(directory)
        if name.startswith(".gsitransfer-") and name.endswith(".part")
    )


def in_flight(directory: Path) -> list[str]:
    """Files of uploads in flight or held in ``directory``: temporaries and resumable partials
    (``.gsitransfer-*.partial``, kept after a cut-off body while the name is pending)."""
    return sorted(
        name
        for name in os.listdir(directory)
        if name.startswith(".gsitransfer-") and name.endswith((".part", ".partial"))
    )


def upload_holder(store: Path, key: str) -> int | None:
    """The pid of the process receiving file 0 of ``key`` (the transfer table's ``holder``), or None.

    With the servers' state in PostgreSQL (``GSITRANSFER_TEST_STATE``), the holder's pid is read from
    table ``holders`` of whichever test schema holds ``key``.
    """
    import sqlite3

    postgres = os.environ.get("GSITRANSFER_TEST_POSTGRES")
    if postgres:
        return _postgres_upload_holder(postgres, key)
    path = store / ".gsitransfer-transfers.sqlite"
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        row = db.execute("SELECT holder FROM transfer_files WHERE key = ? AND num = 0", (key,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _postgres_upload_holder(url: str, key: str) -> int | None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        schemas = [row[0] for row in connection.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'transfer_files'")]
        for schema in schemas:
            row = connection.execute(
                f'SELECT h.pid FROM "{schema}".transfer_files f JOIN "{schema}".holders h ON h.holder = f.holder '
                "WHERE f.key = %s AND f.num = 0", (key,)).fetchone()
            if row is not None:
                return int(row[0])
    return None


def open_socket(base_url: str, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the server of ``base_url``."""
    parts = urlsplit(base_url)
    assert parts.hostname and parts.port
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    """An HTTP/1.1 request line and headers (no body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(sock: socket.socket, timeout: float = 10.0) -> AGResponse:
    """Read one final (non-1xx) response with a Content-Length from ``sock``, bounded in time."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                data = rest
                continue
            length = int(headers.get("content-length", "0"))
            if len(rest) >= length:
                return AGResponse(status, headers, rest[:length])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no complete response within {timeout} s; got {data[:300]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"no complete response within {timeout} s; got {data[:300]!r}")
        if not chunk:
            raise AssertionError(f"connection closed before a complete response; got {data[:300]!r}")
        data += chunk


def headers_only(base_url: str, method: str, path: str, headers: dict[str, str]) -> AGResponse:
    """Send a request's headers and never its body; the server must answer from the headers."""
    with open_socket(base_url) as sock:
        sock.sendall(request_head(method, path, headers))
        return read_response(sock)
