"""Helpers the client tests share (plain functions; the fixtures are in conftest.py).

* :func:`clean_env` -- an environment without Globus variables, for a CLI run;
* :func:`tls_env` -- the same with alice's proxy and the test CAs (mutual TLS);
* :func:`make_files` -- distinct files of a given size to upload;
* :func:`announce` -- a manifest posted as alice with a plain HTTP helper (not
  the client under test); the transfer key;
* :class:`Relay` -- a TCP relay on 127.0.0.1 in front of a server port,
  counting the bytes each way, optionally slowing the client's bytes down
  (to catch an upload in the middle of its file).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

from gsitransfer.testca import TestPKI
from tests.support.http import client_tls, request
from tests.support.server import REPO


class HasHTTPSURL(Protocol):
    """A running server's mutual-TLS base URL (conftest's ``Servers``)."""

    @property
    def https(self) -> str: ...


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without any Globus variable, HOME at ``home``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("X509_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def make_files(directory: Path, count: int, size: int) -> list[Path]:
    """``count`` files of ``size`` bytes in ``directory``, with unique names and distinct contents."""
    directory.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    paths = []
    for number in range(count):
        path = directory / f"part-{tag}-{number}.dat"
        path.write_bytes(os.urandom(size // 2) + bytes([number]) * (size - size // 2))
        paths.append(path)
    return paths


def tls_env(tmp_path: Path, pki: TestPKI) -> dict[str, str]:
    """A clean environment whose Globus variables point at alice's proxy and the test CAs."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return clean_env(home, X509_USER_PROXY=str(pki.users["alice"].proxy), X509_CERT_DIR=str(pki.ca_dir))


def announce(servers: HasHTTPSURL, pki: TestPKI, files: list[tuple[str, bytes]], prefix: str = "data",
             sizes: dict[str, int] | None = None, checksums: dict[str, str] | None = None) -> str:
    """Post a manifest as alice (test helper, not the client under test); the transfer key."""
    lines = [f"[manifest]\nnum_files = {len(files)}\n"]
    for num, (name, content) in enumerate(files):
        size = (sizes or {}).get(name, len(content))
        md5 = (checksums or {}).get(name, hashlib.md5(content).hexdigest())
        lines.append(f"[{num}]\nname = {name}\nsize = {size}\nchecksum = {md5}\n")
    alice = pki.users["alice"]
    answer = request(servers.https, "POST", f"/{prefix}/manifest", "\n".join(lines).encode(),
                     tls=client_tls(pki.ca_file, alice.proxy))
    assert answer.status == 200 and answer.fields().get("return_code") == "0", answer.text
    return answer.fields()["transfer_key"]


class Relay:
    """Relays connections from ``port`` (its own, 127.0.0.1) to ``target`` (127.0.0.1), counting bytes.

    ``rate`` bytes per second from the client to the server (None: as fast
    as they come), in 64 KiB steps. ``cut_after``: once that many of the
    client's bytes have been handed over, that connection is dropped (once).
    ``target`` may be changed (a restarted server's port): new connections go
    there. Transparent to TLS (the client still talks to the server). ``upstream``
    counts the client's bytes handed to the server; ``open`` the connections
    not yet closed both ways.
    """

    STEP = 64 * 1024

    def __init__(self, target: int, rate: float | None = None, cut_after: int | None = None) -> None:
        self.target = target
        self.rate = rate
        self.cut_after = cut_after
        self.upstream = 0
        self.open = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self, scheme: str, host: str = "localhost") -> str:
        return f"{scheme}://{host}:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=30)
            except OSError:  # the server is down (a test killed it): so is this connection
                client.close()
                continue
            with self._lock:
                self.open += 1
            done = threading.Barrier(2, action=self._one_closed)
            for source, sink, up in ((client, server, True), (server, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, sink, up, done), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _one_closed(self) -> None:
        with self._lock:
            self.open -= 1

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool, done: threading.Barrier) -> None:
        try:
            while not self._closed.is_set():
                data = source.recv(self.STEP)
                if not data:
                    break
                if up and self.rate:
                    time.sleep(len(data) / self.rate)
                cut = False
                if up:
                    with self._lock:
                        if self.cut_after is not None and self.upstream + len(data) >= self.cut_after:
                            data, cut, self.cut_after = data[:self.cut_after - self.upstream], True, None
                        self.upstream += len(data)
                sink.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        finally:
            for sock in (sink, source):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                done.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
            source.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


__all__ = ["Relay", "announce", "clean_env", "make_files", "tls_env"]
