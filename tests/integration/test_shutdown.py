"""Graceful shutdown: SIGTERM stops accepting, lets uploads in flight finish, then exits."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.http import post_manifest
from tests.support.server import ServerProcess
from tests.support.waiting import refuses_connections, wait_for

from .helpers import in_flight


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path: Path) -> None:
    """An upload mid-body when SIGTERM arrives is stored (200); new connections are refused."""
    store = tmp_path / "store"
    server = ServerProcess(
        tmp_path, ["--http", "tcp:0:interface=127.0.0.1", "--store", f"data={store}", "--shutdown-grace", "20"]
    ).start()
    base = server.url("http")
    content = os.urandom(2_000_000)
    key = post_manifest(base, "data", [("late.bin", content)])
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(
            f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(content)}\r\n\r\n".encode()
            + content[:500_000]
        )
        wait_for(lambda: in_flight(store), 10, "the upload in flight")
        server.signal(signal.SIGTERM)
        wait_for(lambda: "waiting up to" in server.log_text(), 10, "the server waiting for the upload")
        wait_for(lambda: refuses_connections(host, int(port)), 10, "the listener closed")
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
        assert server.process is not None and server.process.poll() is None
        sock.sendall(content[500_000:])
        answer = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert server.process.wait(timeout=15) in (0, -signal.SIGTERM)
    server.stop()
    assert hashlib.md5((store / "late.bin").read_bytes()).digest() == hashlib.md5(content).digest()
    assert not [p for p in store.iterdir() if p.name.endswith(".part")]


def test_sigterm_abandons_after_the_grace(tmp_path: Path) -> None:
    """A stalled upload is abandoned when the grace runs out: no file, no temporary (its partial may be kept)."""
    store = tmp_path / "store"
    server = ServerProcess(
        tmp_path, ["--http", "tcp:0:interface=127.0.0.1", "--store", f"data={store}", "--shutdown-grace", "1"]
    ).start()
    base = server.url("http")
    content = os.urandom(1_000_000)
    key = post_manifest(base, "data", [("stalled.bin", content)])
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(
            f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(content)}\r\n\r\n".encode()
            + content[:1000]
        )
        wait_for(lambda: in_flight(store), 10, "the upload in flight")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.process is not None and server.process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 10
    server.stop()
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".gsitransfer")) == []
    assert not [p for p in store.iterdir() if p.name.endswith(".part")]
