"""A small multi-process TLS load generator: GETs of one file, with a client certificate.

Debian's HTTP load tools (ab, wrk, h2load, siege) cannot present a client
certificate, so this is Python's ``ssl`` (the system OpenSSL) with blocking
sockets: ``procs`` processes, each running ``clients / procs`` threads; every
OpenSSL call releases the GIL, so a thread costs little more than the C work
of its connection. Two modes:

* ``new``: every request is a new TCP connection and a full TLS handshake
  (no session resumption), ``Connection: close``;
* ``keepalive``: each client keeps one connection and sends its requests on
  it one after another (HTTP/1.1 keep-alive, no pipelining).

Timing: the children start, run a warm-up, and count the requests that
complete inside a window ``[t0, t1)`` the parent sets in shared memory
(``CLOCK_MONOTONIC`` is the same in every process). The parent reads the
server's and the generator's own CPU at ``t0`` and ``t1``, so CPU and
request counts cover exactly the same interval. Every loop is bounded by a
hard deadline.

:func:`open_idle` opens many connections (handshake and one request each)
and leaves them open, for the idle-connection memory measurement.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procstat import cpu_seconds  # noqa: E402

_RECV = 256 * 1024


@dataclass(frozen=True)
class Target:
    """Where to send the GETs and with which credentials."""

    host: str
    port: int
    path: str
    cert: str
    key: str
    cafile: str
    #: body length every 200 must have (None: any)
    expected_length: int | None = None


@dataclass
class LoadResult:
    """What a run counted inside the measurement window."""

    mode: str
    clients: int
    seconds: float
    requests: int = 0
    errors: int = 0
    body_bytes: int = 0
    #: CPU seconds the generator itself used inside the window
    client_cpu: float = 0.0
    #: whatever on_window_end returned (the server's CPU, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def client_context(target: Target) -> ssl.SSLContext:
    """A client context that verifies the server and presents the client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=target.cafile)
    context.load_cert_chain(target.cert, target.key)
    return context


def _request(target: Target, close: bool) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"User-Agent: gsitransfer-bench\r\nAccept: */*\r\n"
    ).encode() + connection + b"\r\n"


def connect(target: Target, context: ssl.SSLContext, timeout: float = 30.0) -> ssl.SSLSocket:
    """A TCP connection with a completed TLS handshake."""
    raw = socket.create_connection((target.host, target.port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return context.wrap_socket(raw, server_hostname=target.host)
    except BaseException:
        raw.close()
        raise


def read_response(sock: ssl.SSLSocket, scratch: bytearray) -> tuple[int, int, bool]:
    """(status, body length, connection reusable) of one response with a Content-Length."""
    view = memoryview(scratch)
    have = 0
    while True:
        n = sock.recv_into(view[have:])
        if n == 0:
            raise ConnectionError("connection closed in the headers")
        have += n
        end = scratch.find(b"\r\n\r\n", 0, have)
        if end >= 0:
            break
        if have >= len(scratch):
            raise ValueError("headers too long")
    head = bytes(scratch[:end]).lower()
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    reusable = lines[0].startswith(b"http/1.1")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            reusable = b"close" not in value
    if length is None:
        raise ValueError("response without Content-Length")
    remaining = end + 4 + length - have
    while remaining > 0:
        n = sock.recv_into(view, min(remaining, len(scratch)))
        if n == 0:
            raise ConnectionError("connection closed in the body")
        remaining -= n
    if remaining < 0:
        raise ValueError("more bytes than the response announced")
    return status, length, reusable


def _client_loop(target: Target, context: ssl.SSLContext, mode: str, window: Any,
                 deadline: float, totals: list[int], lock: threading.Lock) -> None:
    request = _request(target, close=(mode == "new"))
    scratch = bytearray(_RECV)
    sock: ssl.SSLSocket | None = None
    count = errors = body = 0
    try:
        while True:
            now = time.monotonic()
            if now >= window[1] or now >= deadline:
                break
            try:
                if sock is None:
                    sock = connect(target, context)
                sock.sendall(request)
                status, length, reusable = read_response(sock, scratch)
                if mode == "new" or not reusable:
                    sock.close()
                    sock = None
                if status != 200 or (target.expected_length is not None
                                     and length != target.expected_length):
                    raise ValueError(f"status {status}, {length} bytes")
            except (OSError, ssl.SSLError, ValueError, IndexError):
                errors += 1
                if sock is not None:
                    sock.close()
                    sock = None
                time.sleep(0.01)
                continue
            done = time.monotonic()
            if window[0] <= done < window[1]:
                count += 1
                body += length
    finally:
        if sock is not None:
            sock.close()
        with lock:
            totals[0] += count
            totals[1] += errors
            totals[2] += body


def _child(target: Target, mode: str, threads: int, window: Any, max_seconds: float,
           ready: Any, results: Any) -> None:
    context = client_context(target)
    deadline = time.monotonic() + max_seconds
    totals, lock = [0, 0, 0], threading.Lock()
    workers = [
        threading.Thread(target=_client_loop,
                         args=(target, context, mode, window, deadline, totals, lock), daemon=True)
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    ready.put(os.getpid())
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()) + 5)
    results.put(tuple(totals))


def run_load(
    target: Target,
    mode: str,
    clients: int,
    procs: int,
    warmup: float,
    duration: float,
    on_window_start: Callable[[], Any] = lambda: None,
    on_window_end: Callable[[Any], dict[str, Any]] = lambda _: {},
) -> LoadResult:
    """Run ``clients`` clients in ``procs`` processes; count what completes in the window."""
    if mode not in ("new", "keepalive"):
        raise ValueError(f"unknown mode {mode!r}")
    procs = max(1, min(procs, clients))
    mp = multiprocessing.get_context("spawn")
    window = mp.Array("d", [math.inf, math.inf], lock=False)
    ready, results = mp.Queue(), mp.Queue()
    max_seconds = warmup + duration + 60
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = [
        mp.Process(target=_child, args=(target, mode, share, window, max_seconds, ready, results),
                   daemon=True)
        for share in shares
    ]
    try:
        for child in children:
            child.start()
        pids = [ready.get(timeout=60) for _ in children]
        t0 = time.monotonic() + warmup
        t1 = t0 + duration
        window[0] = t0
        window[1] = t1
        time.sleep(max(0.0, t0 - time.monotonic()))
        start_state = on_window_start()
        client_cpu0 = cpu_seconds(pids)
        time.sleep(max(0.0, t1 - time.monotonic()))
        client_cpu1 = cpu_seconds(pids)
        extra = on_window_end(start_state)
        result = LoadResult(mode, clients, duration, client_cpu=client_cpu1 - client_cpu0, extra=extra)
        for _ in children:
            count, errors, body = results.get(timeout=90)
            result.requests += count
            result.errors += errors
            result.body_bytes += body
        return result
    except queue.Empty:
        raise RuntimeError("the load generator did not report in time") from None
    except BaseException:
        window[1] = 0.0  # interrupted: every client stops after its current request
        for child in children:
            child.join(timeout=2)
        raise
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)


def open_idle(target: Target, count: int, threads: int = 8,
              timeout: float = 120.0) -> tuple[list[ssl.SSLSocket], int]:
    """Open ``count`` connections, one GET each (kept alive), and leave them open.

    Returns the open sockets and the number of failures. Bounded by ``timeout``.
    """
    context = client_context(target)
    request = _request(target, close=False)
    deadline = time.monotonic() + timeout

    def one(_: int) -> ssl.SSLSocket | None:
        if time.monotonic() > deadline:
            return None
        try:
            sock = connect(target, context)
        except (OSError, ssl.SSLError):
            return None
        try:
            sock.sendall(request)
            status, _, reusable = read_response(sock, bytearray(_RECV))
            if status == 200 and reusable:
                return sock
        except (OSError, ssl.SSLError, ValueError, IndexError):
            pass
        sock.close()
        return None

    with ThreadPoolExecutor(threads) as pool:
        opened = list(pool.map(one, range(count)))
    socks = [sock for sock in opened if sock is not None]
    return socks, count - len(socks)


def close_all(socks: list[ssl.SSLSocket]) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass
