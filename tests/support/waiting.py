"""Bounded polling for tests that wait on a real server, and the things they wait for."""

from __future__ import annotations

import select
import socket
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def refuses_connections(host: str, port: int) -> bool:
    """True once nothing accepts on ``host:port`` (a server that stopped listening)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return True
    return False


def has_answer(sock: socket.socket) -> bool:
    """True once the peer has sent something (or closed): ``sock`` is readable."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
